"""The two kernel lock primitives, the calls on one descriptor, and whether a filesystem's locks work.

``flock`` (default)
    ``flock(2)``: a lock belongs to an open file description.  What local filesystems do.
``posix``
    Whole-file POSIX record locks (``fcntl`` ``F_SETLK`` / ``F_GETLK``): a lock belongs to the
    *process*, two descriptors of one process never conflict, and closing *any* descriptor of
    the file drops every lock the process holds on it (what a Linux NFS client does with
    ``flock``).

The environment variable ``DEKER_LOCK_PRIMITIVE`` chooses one (:func:`primitive`).  Nothing
here knows which holder of the process a lock is for: :mod:`deker.storage.lockprim`, the
process-wide registry, makes every call on a descriptor it owns (the only caller outside it is
:func:`probe_exclusion`, on a file nobody else knows).  :func:`probe_exclusion` and
:func:`mount_problem_at` tell whether locks exclude each other on a filesystem at all (ENOLCK,
ENOSYS, EOPNOTSUPP; Lustre without ``-o flock``; NFS with local locks).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import time
import uuid
from pathlib import Path

from deker.errors import DekerValidationError
from deker.storage.mounts import mount_of

__all__ = [
    "FLOCK",
    "POSIX",
    "PRIMITIVE_ENV",
    "conflict",
    "lock_new",
    "mount_problem",
    "mount_problem_at",
    "primitive",
    "probe_exclusion",
    "try_lock",
    "unlock",
]

#: The environment variable choosing the kernel primitive (``flock`` or ``posix``).
PRIMITIVE_ENV = "DEKER_LOCK_PRIMITIVE"
FLOCK = "flock"
POSIX = "posix"

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_UNSUPPORTED = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}
if hasattr(errno, "ENOTSUP"):
    _UNSUPPORTED.add(errno.ENOTSUP)
_FLOCK_STRUCT = "hhqqi"  # struct flock on Linux: l_type, l_whence, l_start, l_len, l_pid


def primitive() -> str:
    """Return the kernel primitive in use (``DEKER_LOCK_PRIMITIVE``, default ``flock``).

    Returns
    -------
    str
        ``"flock"`` or ``"posix"``.

    Raises
    ------
    DekerValidationError
        If the variable holds anything else.

    """
    value = os.environ.get(PRIMITIVE_ENV, FLOCK).strip().lower() or FLOCK
    if value not in (FLOCK, POSIX):
        raise DekerValidationError(f"{PRIMITIVE_ENV} must be {FLOCK!r} or {POSIX!r}, got {value!r}")
    return value


# --------------------------------------------------------------------------- kernel calls


def try_lock(fd: int, exclusive: bool, prim: str) -> bool:
    """Try the kernel lock once, without waiting.

    Parameters
    ----------
    fd : int
        An open descriptor of the file.
    exclusive : bool
        Exclusive (writer) or shared (reader) lock.
    prim : str
        :data:`FLOCK` or :data:`POSIX`.

    Returns
    -------
    bool
        False on a conflict.

    Raises
    ------
    OSError
        For anything else (e.g. ENOLCK where the filesystem has no locks).

    """
    try:
        if prim == POSIX:
            fcntl.lockf(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        else:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except (BlockingIOError, PermissionError):  # EAGAIN / EWOULDBLOCK; EACCES (POSIX, some NFS)
        return False
    return True


#: How long a file just created may stay locked by someone else: a sweeper, or a prober of
#: markers, that found it (a leftover-looking temporary file, a new marker) locks it for a moment.
NEW_FILE_BUSY_SECONDS = 1.0


def lock_new(fd: int, prim: str) -> bool:
    """Lock a file just created exclusively, waiting out someone's momentary probe of it.

    Parameters
    ----------
    fd : int
        A descriptor of the new file.
    prim : str
        :data:`FLOCK` or :data:`POSIX`.

    Returns
    -------
    bool
        False if it stayed busy for :data:`NEW_FILE_BUSY_SECONDS`.

    Raises
    ------
    OSError
        As :func:`try_lock`.
    """
    deadline = time.monotonic() + NEW_FILE_BUSY_SECONDS
    while not try_lock(fd, True, prim):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.0005)
    return True


def unlock(fd: int, prim: str) -> None:
    """Drop the kernel lock ``prim`` of ``fd`` (errors are ignored: the descriptor closes next)."""
    with contextlib.suppress(OSError):
        if prim == POSIX:
            fcntl.lockf(fd, fcntl.LOCK_UN)
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)


def _posix_conflict(fd: int, exclusive: bool, cmd: int = fcntl.F_GETLK) -> bool:
    """Whether a POSIX lock of another process conflicts with one of the given kind (F_GETLK)."""
    query = struct.pack(_FLOCK_STRUCT, fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK, os.SEEK_SET, 0, 0, 0)
    answer = fcntl.fcntl(fd, cmd, query)
    return bool(struct.unpack(_FLOCK_STRUCT, answer)[0] != fcntl.F_UNLCK)


def conflict(fd: int, exclusive: bool, prim: str) -> bool:
    """Return whether a lock of another open file description / process conflicts (no lock kept).

    Parameters
    ----------
    fd : int
        A descriptor of the file that this process holds no lock on (its close drops nothing).
    exclusive : bool
        The kind of lock one would want.
    prim : str
        The primitive in use; under :data:`POSIX` an ``flock`` conflicts too.

    Returns
    -------
    bool
        True if such a lock would be refused now.

    """
    if prim == POSIX and _posix_conflict(fd, exclusive):
        return True
    # also under posix: an earlier deker flocked its temp files and journals (on NFS: one lock)
    if try_lock(fd, exclusive, FLOCK):
        unlock(fd, FLOCK)
        return False
    return True


# --------------------------------------------------------------------------- filesystem check


def probe_exclusion(directory: Path, prim: str) -> str | None:
    """Lock a fresh file with ``prim`` and check a second open file description is refused.

    Parameters
    ----------
    directory : Path
        An existing directory (the probe file is made and removed there).
    prim : str
        The primitive to probe.

    Returns
    -------
    str or None
        Why locks do not work there, or None (also where no file may be created: nothing
        can be written there anyway).

    Raises
    ------
    FileNotFoundError
        If ``directory`` (or the probe file in it) vanished meanwhile: a concurrent cleanup
        removed it, which says nothing about the locks there.

    """
    path = directory / f".deker-lockcheck.{uuid.uuid4().hex}.tmp"  # a leftover is garbage (layout)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o666)
    except FileNotFoundError:
        raise
    except OSError as exc:
        return (
            None if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) else f"cannot create {path}: {exc}"
        )
    try:
        try:
            if not lock_new(fd, prim):
                return "a lock on a new file nobody else knows was refused"
        except OSError as exc:
            if exc.errno in _UNSUPPORTED:
                code = errno.errorcode.get(exc.errno, str(exc.errno))
                return f"{prim} locks are not supported there ({code}: {exc.strerror})"
            raise
        other = os.open(path, os.O_RDWR | _O_CLOEXEC)
        try:
            if prim == POSIX:  # an OFD lock conflicts with a POSIX lock even of the same process
                f_ofd_getlk = getattr(fcntl, "F_OFD_GETLK", None)
                excluded = True if f_ofd_getlk is None else _posix_conflict(other, True, f_ofd_getlk)
            else:
                excluded = not try_lock(other, True, FLOCK)
        finally:
            os.close(other)  # drops the POSIX lock too: the probe is over anyway
        return None if excluded else f"{prim} locks there do not exclude each other (they are local or fake)"
    finally:
        unlock(fd, prim)
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)


def mount_problem(mounts: str, directory: str, prim: str) -> str | None:
    """Return why the mount holding ``directory`` keeps locks on each host, or None.

    Locks that work but only on the host that takes them cannot be seen from one host by
    probing; the mount options say so (``/proc/self/mounts`` format).

    Parameters
    ----------
    mounts, directory
        As for :func:`deker.storage.mounts.mount_of`.
    prim : str
        The primitive in use (``flock`` or ``posix``).

    Returns
    -------
    str or None
        The problem, naming the mount point, type and option.

    """
    best = mount_of(mounts, directory)
    if best is None:
        return None
    point, fstype, options = best
    where = f"{point} is a {fstype} mount with"
    if fstype == "lustre" and "flock" not in options:
        option = " localflock" if "localflock" in options else "out flock"
        return f"{where}{option}: its locks are not seen by other hosts"
    if fstype.startswith("nfs"):
        local = {"flock": ("flock",), "posix": ("posix",)}[prim] + ("all",)
        for option in options:
            if option == "nolock" or (option.startswith("local_lock=") and option[11:] in local):
                return f"{where} {option}: its locks are not seen by other hosts"
    return None


def mount_problem_at(directory: Path, prim: str) -> str | None:
    """Return :func:`mount_problem` for ``directory`` from this host's ``/proc/self/mounts``.

    Not on Linux (no such file) the answer is None: only :func:`probe_exclusion` can tell.
    """
    try:
        with open("/proc/self/mounts") as fh:
            mounts = fh.read()
    except OSError:  # not Linux: only the probe
        return None
    return mount_problem(mounts, os.path.realpath(directory), prim)
