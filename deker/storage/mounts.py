"""Which mount holds a directory, and whether its filesystem is local to this host.

Read from ``/proc/self/mounts`` (Linux).  Two parts of deker ask: the lock layer, whether a
mount's options keep locks on one host (:func:`deker.storage.kernellock.mount_problem`), and
the tile pipeline, whether opening and locking a file costs microseconds (a local disk) or
network round trips (NFS, Lustre, SMB, FUSE): on a local filesystem a small operation runs
its tiles in one task, since handing a few cheap files to other threads costs more than it
saves; on a network filesystem the tiles' round trips overlap in parallel tasks.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from pathlib import Path

__all__ = ["LOCAL_FILESYSTEMS", "is_local_filesystem", "mount_of"]

logger = logging.getLogger(__name__)

#: Filesystem types whose metadata operations stay on this host.  Anything else (nfs, nfs4,
#: lustre, cifs, smb3, ceph, gpfs, beegfs, 9p, fuse.*) counts as a network filesystem.
LOCAL_FILESYSTEMS = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "jfs", "reiserfs", "tmpfs", "ramfs",
     "overlay", "apfs", "hfs", "ntfs3", "vfat", "exfat"}
)  # fmt: skip


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_of(mounts: str, directory: str) -> tuple[str, str, list[str]] | None:
    """Return the mount holding ``directory``: its mount point, type and options.

    Parameters
    ----------
    mounts : str
        The text of ``/proc/self/mounts``.
    directory : str
        A resolved absolute path.

    Returns
    -------
    tuple of (str, str, list of str) or None
        The innermost mount point whose tree holds ``directory``, its filesystem type and
        its options; None when no line matches.
    """
    best: tuple[str, str, list[str]] | None = None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        point, fstype, options = _unescape(fields[1]), fields[2], fields[3].split(",")
        inside = directory == point or directory.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best[0])):
            best = (point, fstype, options)
    return best


@functools.lru_cache(maxsize=256)
def _local(directory: str) -> bool:
    try:
        with open("/proc/self/mounts") as fh:
            mounts = fh.read()
    except OSError:  # not Linux: no way to tell, so no assumption that files are cheap
        return False
    found = mount_of(mounts, directory)
    local = found is not None and found[1] in LOCAL_FILESYSTEMS
    logger.debug("%s: %s filesystem (%s)", directory, "a local" if local else "a network", found)
    return local


def is_local_filesystem(directory: Path | str) -> bool:
    """Return whether ``directory`` lies on a filesystem local to this host (answer kept).

    Parameters
    ----------
    directory : Path or str
        A directory (resolved here).

    Returns
    -------
    bool
        True for the types of :data:`LOCAL_FILESYSTEMS`; False for any other, and where
        ``/proc/self/mounts`` cannot be read.
    """
    return _local(os.path.realpath(directory))
