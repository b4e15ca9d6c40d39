"""Whether this process can write a storage, found out without creating or changing anything.

A client opened on a storage it cannot write (a read-only mount, a shared archive this user may
only read) becomes a read-only client by itself (see :class:`deker.Client`).  The probe, on the
collections directory:

1. ``statvfs``: the filesystem is mounted read-only (``ST_RDONLY``, what ``mount -o ro`` and a
   read-only bind mount set);
2. ``access(W_OK | X_OK)`` with the effective ids: this user may not create files there
   (``EACCES``; ``access`` also answers ``EROFS`` on a read-only mount, and asks the server on
   NFS);
3. an existing file there (the storage identity file, a collection lock) opened ``O_WRONLY``,
   neither created nor truncated, and closed at once: ``EROFS`` means the filesystem refuses
   writes though it is not mounted read-only here (an NFS export that is read-only on the
   server).  Nothing is written, so no time stamp changes.

Only ``EROFS`` counts at step 3: a file this user may not write in a directory it may write
(a lock file of another user) does not stop deker's writes, which open such files read-only.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

__all__ = ["write_problem"]

logger = logging.getLogger(__name__)

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_ACCESS_EFFECTIVE = os.access in os.supports_effective_ids
_PROBE_FILES = 8  # at most this many existing files are tried at step 3


def _existing_files(directory: Path) -> list[Path]:
    try:
        with os.scandir(directory) as entries:
            found = [Path(e.path) for e in entries if e.is_file(follow_symlinks=False)]
    except OSError:
        return []
    return sorted(found)[:_PROBE_FILES]


def write_problem(directory: Path) -> str | None:
    """Return why this process cannot write in ``directory``, or ``None`` if it can.

    Nothing is created, changed or removed (see the module docstring for the probe).

    Parameters
    ----------
    directory : Path
        An existing directory (a storage's collections directory).

    Returns
    -------
    str or None
        A short reason naming the cause (``EROFS`` or ``EACCES``), e.g. ``"the filesystem of
        /data/collections is mounted read-only (EROFS)"``; ``None`` when writes may go on.

    """
    try:
        flags = os.statvfs(directory).f_flag
    except OSError as exc:
        logger.debug("statvfs of %s failed: %s", directory, exc)
        flags = 0
    if flags & os.ST_RDONLY:
        return f"the filesystem of {directory} is mounted read-only (EROFS)"
    if not os.access(directory, os.W_OK | os.X_OK, effective_ids=_ACCESS_EFFECTIVE):
        return f"this user (uid {os.geteuid()}) may not write in {directory} (EACCES)"
    for path in _existing_files(directory):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | _O_CLOEXEC)
        except OSError as exc:
            if exc.errno == errno.EROFS:
                return f"the filesystem of {directory} refuses writes (EROFS opening {path.name})"
            continue  # not writable by this user, or gone: says nothing about the directory
        os.close(fd)
        break
    return None
