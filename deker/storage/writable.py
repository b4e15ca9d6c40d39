"""Whether this process can write a storage, found out without creating or changing anything.

A client opened on a storage it cannot write (a read-only mount, a shared archive this user may
only read) becomes a read-only client by itself (see :class:`deker.Client`).  The probe, on the
collections directory:

1. ``statvfs``: the filesystem is mounted read-only (``ST_RDONLY``, what ``mount -o ro`` and a
   read-only bind mount set);
2. ``access(W_OK | X_OK)`` with the effective ids: this user may not create files there
   (``EACCES``; ``access`` also answers ``EROFS`` on a read-only mount, and asks the server on
   NFS);
3. the storage identity file (:data:`~deker.storage.identity.STORAGE_ID_FILE`), when there is
   one, opened ``O_WRONLY``, neither created nor truncated, and closed at once: ``EROFS``
   means the filesystem refuses writes though it is not mounted read-only here (an NFS export
   that is read-only on the server).  Nothing is written, so no time stamp changes.  Only that
   file: no process ever locks it, so closing a descriptor of it cannot drop a POSIX lock of
   this process (as closing one of a lock file would, see :mod:`deker.storage.lockprim`).

Only ``EROFS`` counts at step 3: an identity file this user may not write says nothing about
the directory.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

from deker.storage.identity import STORAGE_ID_FILE

__all__ = ["write_problem"]

logger = logging.getLogger(__name__)

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_ACCESS_EFFECTIVE = os.access in os.supports_effective_ids


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
    path = directory / STORAGE_ID_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_NOFOLLOW | _O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.EROFS:
            return f"the filesystem of {directory} refuses writes (EROFS opening {path.name})"
        return None  # missing, or not writable by this user: says nothing about the directory
    os.close(fd)
    return None
