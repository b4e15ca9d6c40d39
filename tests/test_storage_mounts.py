"""deker.storage.mounts: the mount holding a directory, and whether its filesystem is local."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from storage_helpers.small_fs import cannot_mount, mounted

from deker.storage import mounts

MOUNTS = """\
/dev/sda1 / ext4 rw,relatime 0 0
tmpfs /tmp tmpfs rw,nosuid 0 0
10.0.0.1:/export /tmp/shared nfs4 rw,vers=4.2,hard 0 0
/dev/sdb1 /tmp/shared/local xfs rw 0 0
sshfs#me@host: /mnt/my\\040files fuse.sshfs rw 0 0
"""


@pytest.mark.parametrize(
    ("directory", "point", "fstype"),
    [
        ("/", "/", "ext4"),
        ("/home/me", "/", "ext4"),
        ("/tmp", "/tmp", "tmpfs"),
        ("/tmp/shared/storage", "/tmp/shared", "nfs4"),
        ("/tmp/sharedx", "/tmp", "tmpfs"),  # /tmp/shared is not a parent of /tmp/sharedx
        ("/tmp/shared/local/s", "/tmp/shared/local", "xfs"),  # the innermost mount wins
        ("/mnt/my files/s", "/mnt/my files", "fuse.sshfs"),  # escaped blanks
    ],
)
def test_the_innermost_mount_holds_a_directory(directory: str, point: str, fstype: str) -> None:
    found = mounts.mount_of(MOUNTS, directory)
    assert found is not None and found[:2] == (point, fstype)


def test_no_mount_line_no_answer() -> None:
    assert mounts.mount_of("", "/x") is None
    assert mounts.mount_of("garbage\n", "/x") is None


def test_network_types_are_not_local() -> None:
    for fstype in ("nfs", "nfs4", "lustre", "cifs", "fuse.sshfs", "ceph", "9p"):
        assert fstype not in mounts.LOCAL_FILESYSTEMS
    for fstype in ("ext4", "xfs", "btrfs", "tmpfs", "overlay"):
        assert fstype in mounts.LOCAL_FILESYSTEMS


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/mounts is Linux's")
def test_this_hosts_mounts(tmp_path: Path) -> None:
    # /proc is a filesystem of its own and not a local disk: not counted as local
    assert mounts.is_local_filesystem("/proc") is False
    if reason := cannot_mount("tmpfs"):
        pytest.skip(reason)
    with mounted("tmpfs", tmp_path) as mnt:
        (mnt / "storage").mkdir()
        assert mounts.is_local_filesystem(mnt / "storage") is True
