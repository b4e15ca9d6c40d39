"""The lockfile protocol: deker 1.1.7's lock files (SPEC §3) without its races (SPEC §3.9).

Every lock is a kernel lock (``flock``, or POSIX record locks with
``DEKER_LOCK_PRIMITIVE=posix``: what an NFS client does) taken through
:mod:`deker.storage.lockprim`.  The kernel drops it when its holder dies (``kill -9``
included), so a lock file nobody holds a lock on is stale and is recovered without
``clear_locks``.  Holders of one process (threads, several acquisitions) exclude each other in
lockprim's registry like processes do, whatever the primitive; no descriptor of a held lock
file is closed while it is held.  Exclusion between deker processes rests on the mutex and the
markers only (files nothing else opens); the data-file lock is for deker 1.1.7.

Files, all in an array's main directory unless said otherwise:

``<id>.lock`` (array mutex)
    Stable per-array file, created on demand and kept while the array exists.  Readers hold
    ``LOCK_SH``, writers ``LOCK_EX`` for the whole operation.
``<id>.hdf5`` (the data file)
    Writers also hold ``LOCK_EX`` on it: deker 1.1.7 readers probe it and 1.1.7 writers lock it.
    It is read and written only through the held descriptor (never a close that would drop a
    POSIX lock), and a new version renamed over it is locked before the rename and kept
    locked until the release (:func:`deker.storage.atomic.replacing`).
``<id>:dk2-<hex>:<pid>:<tid>.arrayreadlock`` (read marker)
    Made by our readers so that deker 1.1.7 writers wait for them; held with ``LOCK_EX`` by its
    owner.  1.1.7 markers (``<id>:<uuid4>:<pid>:<tid>``) hold no lock: they count as live while
    a process with their pid, older than the marker, runs *on this host* (a heuristic used
    only for 1.1.7 interoperability; a 1.1.7 reader on another host is not seen).
``<id>.hdf5:<token>.varraylock`` (VArray write marker)
    Made by :class:`VArrayWriteLock` for each tile it holds, held with ``LOCK_EX``; tile tasks
    (maybe on other hosts) check it with :func:`tile_write_guard`.  1.1.7 markers carry a pid
    instead of a token and are live while the data file is locked by someone else.
``<id>.fence`` (tile fence)
    Stable per-tile file (made by the first VArray write of the tile, removed with the tile,
    unknown to deker 1.1.7).  A tile task holds ``LOCK_EX`` on it for the whole of its write,
    and checks its token's marker only once it holds it; everyone who takes the tile (or an
    array) for writing or reading passes it (takes and drops it) once the array mutex is
    theirs.  So a task whose coordinator died cannot land after the next writer started:
    either it held the fence, and the next writer waited until it finished or gave up, or it
    takes the fence later and finds its coordinator's marker dead (see :func:`tile_write_guard`).
``<md5(key)>.arrlock`` (creation lock, anywhere)
    Serialises the creation of one object (see :func:`creation_lock`); removed on release.
``<collections>/<name>.lock`` (collection lock)
    Kept after release (integrity checks expect it).

Markers are created under a temporary name, locked, then renamed into place, so a visible
marker of ours is always locked while its owner lives.  Owner tokens never end in a digit
(1.1.7 takes a marker ending in ``<its pid>.varraylock`` for its own).  Correctness never
depends on pids or thread ids (they only appear in names for humans and for 1.1.7 markers).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import logging
import os
import re
import stat
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from deker.errors import DekerLockError, DekerReadOnlyError, DekerStorageError, DekerValidationError
from deker.storage import lockprim
from deker.storage.layout import ARRAY_EXT, VARRAY_EXT, ensure_dir, id_dir_parts, remove_empty_parents
from deker.storage.lockinfo import (
    CREATION_LOCK_EXT,
    FENCE_EXT,
    LOCK_EXT,
    OWN_READ_PREFIX,
    READ_LOCK_EXT,
    VARRAY_LOCK_EXT,
    Marker,
    fence_busy,
    held_by_someone,
    legacy_owner_alive,
    marker_alive,
    marker_temp_path,
    parse_marker,
)

__all__ = [
    "CREATION_LOCK_EXT",
    "FENCE_EXT",
    "LOCK_EXT",
    "READ_LOCK_EXT",
    "VARRAY_LOCK_EXT",
    "LockSettings",
    "VArrayWriteLock",
    "array_read_lock",
    "array_write_lock",
    "collection_lock",
    "creation_lock",
    "fence_path",
    "mutex_path",
    "new_token",
    "refuse_read_only",
    "tile_read_guard",
    "tile_write_guard",
]

logger = logging.getLogger(__name__)

_TOKEN_RE = re.compile(r"^[a-z0-9-]{1,80}$")

# Markers held by live VArrayWriteLocks of this process: a tile task running in the
# coordinator's own process trusts this rather than a probe of its own process's lock (with
# process-owned POSIX locks, as on NFS, such a probe would not see the lock).
_OWN_MARKERS: set[str] = set()
_OWN_MARKERS_GUARD = threading.Lock()


def _own_marker(path: Path, held: bool) -> None:
    with _OWN_MARKERS_GUARD:
        if held:
            _OWN_MARKERS.add(str(path))
        else:
            _OWN_MARKERS.discard(str(path))


@dataclass(frozen=True)
class LockSettings:
    """How long to wait for a lock and how often to look again.

    Parameters
    ----------
    timeout : float
        Seconds to wait before giving up with :class:`DekerLockError`.
    interval : float
        Longest pause between two attempts (attempts start about 1 ms apart and back off
        exponentially up to ``interval``).
    read_only : bool
        Lock as a reader of a storage it may not write (see :func:`array_read_lock`): no file
        is created, changed or removed, and every write lock is refused with
        :class:`DekerReadOnlyError`.  It travels with the settings to the tasks of other processes.

    """

    timeout: float = 60.0
    interval: float = 1.0
    read_only: bool = False

    def __post_init__(self) -> None:
        if not self.timeout >= 0:
            raise DekerValidationError(f"Lock timeout must be >= 0 seconds, got {self.timeout!r}")
        if not self.interval > 0:
            raise DekerValidationError(f"Lock check interval must be > 0 seconds, got {self.interval!r}")


def refuse_read_only(settings: LockSettings, what: str) -> None:
    """Raise :class:`DekerReadOnlyError` if ``settings`` are those of a read-only client.

    Parameters
    ----------
    settings : LockSettings
        The lock settings of the operation.
    what : str
        What was asked (for the message), e.g. ``"write array 1234"``.

    Raises
    ------
    DekerReadOnlyError
        If ``settings.read_only``; nothing was touched.

    """
    if settings.read_only:
        raise DekerReadOnlyError(f"Cannot {what}: the client is read-only; nothing was changed")


def new_token() -> str:
    """Return a new owner token (``[a-z0-9-]``, never ending in a digit).

    Returns
    -------
    str
        A unique token.

    """
    return f"{uuid.uuid4().hex}-t"


def _check_token(token: str) -> None:
    if not _TOKEN_RE.match(token) or token[-1].isdigit():
        raise DekerValidationError(f"Invalid lock owner token {token!r}: use new_token()")


def mutex_path(main_dir: Path, array_id: str) -> Path:
    """Return the mutex file of an array (``<main_dir>/<id>.lock``).

    Parameters
    ----------
    main_dir : Path
        The array's main directory.
    array_id : str
        The array id.

    Returns
    -------
    Path
        The mutex file.

    """
    return main_dir / f"{array_id}{LOCK_EXT}"


def fence_path(main_dir: Path, array_id: str) -> Path:
    """Return the tile fence of an array or tile (``<main_dir>/<id>.fence``).

    Parameters
    ----------
    main_dir : Path
        The array's main directory.
    array_id : str
        The array (or tile) id.

    Returns
    -------
    Path
        The fence file (it exists once a VArray write took the tile).

    """
    return main_dir / f"{array_id}{FENCE_EXT}"


# --------------------------------------------------------------------------- low level


class _Waiter:
    """A deadline with exponential backoff sleeps."""

    def __init__(self, settings: LockSettings) -> None:
        self.settings = settings
        self.deadline = time.monotonic() + settings.timeout
        self._delay = 0.001

    def sleep(self) -> bool:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(self._delay, remaining))
        self._delay = min(self._delay * 2, self.settings.interval)
        return True


def _unlock_close(held: lockprim.Hold) -> None:
    lockprim.release(held)


def _timeout(what: str, path: Path, holder: str, settings: LockSettings) -> DekerLockError:
    return DekerLockError(f"{what}: {path} is held by {holder}; gave up after {settings.timeout:g} s")


def _acquire_file(
    path: Path, operation: int, waiter: _Waiter, what: str, holder: str = "another deker reader or writer"
) -> lockprim.Hold:
    """Lock a stable lock file, waiting; retry when the file was replaced or unlinked meanwhile.

    ``operation`` is ``fcntl.LOCK_EX`` or ``fcntl.LOCK_SH`` (only its kind is used).
    """
    exclusive = operation == fcntl.LOCK_EX
    if exclusive:  # every write takes one: refuse a filesystem without working locks up front
        lockprim.check_filesystem(path.parent)
    while True:
        held = lockprim.hold(path, exclusive, create=True)
        while held is None:
            if not waiter.sleep():
                raise _timeout(what, path, holder, waiter.settings)
            held = lockprim.hold(path, exclusive, create=True)
        if lockprim.same_file(held, path):
            return held
        _unlock_close(held)  # unlinked by its previous holder (deleted array, released creation lock)


def _create_marker(path: Path) -> lockprim.Hold:
    """Create ``path`` already locked (temp file, exclusive lock, atomic rename); return its hold."""
    for _ in range(10):
        tmp = marker_temp_path(path)
        held = lockprim.hold_new(tmp)
        try:
            os.rename(tmp, path)
            return held
        except FileNotFoundError:  # a lock cleaner removed the temp file: try again
            _unlock_close(held)
        except BaseException:
            _unlock_close(held)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    raise DekerLockError(f"Cannot create lock marker {path}: its temporary file keeps vanishing")


def _drop_marker(path: Path, held: lockprim.Hold) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # unlink while still locked: a visible marker of ours is always locked
    _unlock_close(held)


def _data_file(main_dir: Path, array_id: str) -> Path:
    return main_dir / f"{array_id}{ARRAY_EXT}"


def _require(path: Path) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(2, "No such array file", str(path)) from None
    except OSError as exc:
        raise DekerStorageError(f"Cannot access {path}: {exc}") from exc
    if not stat.S_ISREG(mode):  # a directory or a FIFO (opening it could block forever)
        raise DekerStorageError(f"{path} is not a regular file: the storage is damaged, run check_integrity")


def _object_file(main_dir: Path, array_id: str, ext: str | None) -> Path:
    """Return the file a lock protects: ``<id><ext>``; by default ``.hdf5``, else ``.json``."""
    if ext is not None:
        return main_dir / f"{array_id}{ext}"
    data = _data_file(main_dir, array_id)
    if not os.path.exists(data):
        meta = main_dir / f"{array_id}{VARRAY_EXT}"
        if os.path.exists(meta):
            return meta
    return data


def _cleanup_if_deleted(main_dir: Path, array_id: str, data: Path | None = None) -> None:
    """Under an exclusive mutex: if the object is gone, remove its mutex, fence and empty directories."""
    if os.path.exists(data or _data_file(main_dir, array_id)):
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(fence_path(main_dir, array_id))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(mutex_path(main_dir, array_id))
    try:
        parts = id_dir_parts(array_id)
    except DekerValidationError:
        return
    if main_dir.parts[-len(parts) :] == parts and len(main_dir.parts) > len(parts):
        # only inside a real id fan-out: never touch directories of some other layout
        remove_empty_parents(main_dir, main_dir.parents[len(parts) - 1])


def _remove_if_stale(marker: Marker) -> bool:
    """Remove a dead marker (ours: unlocked; 1.1.7: its pid is gone from this host).

    A VArray marker of ours stays while a tile task holds the tile's fence (its coordinator
    died, the task still writes): deker 1.1.7 readers, which know no fence, are kept out by
    the marker.  Returns whether it was kept for that reason.
    """
    if not marker.legacy and fence_busy(marker):
        return True
    if marker.legacy:
        if legacy_owner_alive(marker.owner, marker.path):
            return False  # its owner may still unlink it itself
        with contextlib.suppress(FileNotFoundError):
            os.unlink(marker.path)
        return False
    try:
        held = lockprim.hold(marker.path, False)
    except FileNotFoundError:
        return False
    if held is None:
        return False
    try:
        if lockprim.same_file(held, marker.path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(marker.path)
            logger.info("removed stale lock marker %s", marker.path)
    finally:
        _unlock_close(held)
    return False


def _live_foreign_markers(
    main_dir: Path, array_id: str, own: Path | None, kept: list[Path] | None = None
) -> list[Marker]:
    """Live markers of other owners on ``array_id``; stale ones are removed (or added to ``kept``)."""
    prefixes = (f"{array_id}:", f"{array_id}{ARRAY_EXT}:")
    live: list[Marker] = []
    try:
        with os.scandir(main_dir) as entries:
            names = [e.name for e in entries if e.name.startswith(prefixes)]
    except FileNotFoundError:
        return live
    for name in names:
        path = main_dir / name
        if own is not None and path == own:
            continue
        marker = parse_marker(path)
        if marker is None or marker.array_id != array_id:
            continue
        if marker_alive(marker):
            live.append(marker)
        elif _remove_if_stale(marker) and kept is not None:
            kept.append(path)
    return live


def _wait_for_markers(
    main_dir: Path,
    array_id: str,
    waiter: _Waiter,
    what: str,
    own: Path | None = None,
    kept: list[Path] | None = None,
) -> None:
    while True:
        live = _live_foreign_markers(main_dir, array_id, own, kept)
        if not live:
            return
        if not waiter.sleep():
            holders = ", ".join(
                f"{m.kind} of {'deker 1.1.7 pid ' if m.legacy else ''}{m.owner}" for m in live
            )
            raise _timeout(what, live[0].path, holders, waiter.settings)


_FENCE_HOLDER = "a tile task of an earlier VArray operation (its coordinator may have died)"


def _hold_waiting(
    path: Path,
    exclusive: bool,
    waiter: _Waiter,
    what: str,
    holder: str,
    *,
    create: bool = False,
    readonly: bool = False,
) -> lockprim.Hold:
    """Hold ``path`` through the lock registry, waiting up to the waiter's deadline."""
    held = lockprim.hold(path, exclusive, create=create, readonly=readonly)
    while held is None:
        if not waiter.sleep():
            raise _timeout(what, path, holder, waiter.settings)
        held = lockprim.hold(path, exclusive, create=create, readonly=readonly)
    return held


def _pass_fence(
    main_dir: Path, array_id: str, waiter: _Waiter, what: str, *, shared: bool = False, create: bool = False
) -> None:
    """Wait until no tile task is working on the file, then go on (the fence is taken and dropped).

    The caller holds the array mutex, so no live operation of another owner holds the file:
    a tile task still running belongs to an operation that ended or died, and a task that
    takes the fence after this call finds its coordinator's marker dead and gives up.  Without
    a fence file no task ever ran there (``create`` makes it, for the tile tasks to come).
    Threads of this process exclude each other here through the lock registry
    (:mod:`deker.storage.lockprim`), whatever the kernel primitive.
    """
    path = fence_path(main_dir, array_id)
    readonly = waiter.settings.read_only  # (then shared and not create: a reader)
    try:
        held = _hold_waiting(path, not shared, waiter, what, _FENCE_HOLDER, create=create, readonly=readonly)
    except FileNotFoundError:
        if create:
            raise
        return
    except PermissionError:  # a read-only storage: nobody can be writing there with our locks
        return
    _unlock_close(held)


def _lock_data_file(data: Path, waiter: _Waiter, what: str) -> lockprim.Hold:
    return _hold_waiting(data, True, waiter, what, "a deker 1.1.7 process (flock on the data file)")


# --------------------------------------------------------------------------- array locks


@contextlib.contextmanager
def array_read_lock(
    main_dir: Path, array_id: str, settings: LockSettings, *, ext: str | None = None
) -> Iterator[None]:
    """Hold the read lock of one array (shared with other readers, exclusive of writers).

    Waits (up to ``settings.timeout``) for writers, for VArray writes holding the array and
    for deker 1.1.7 writers; leaves a read marker that deker 1.1.7 writers wait for.  With
    ``settings.read_only``, or where the lock files cannot be made (``EROFS``, ``EACCES``),
    it creates nothing: a shared lock on the existing mutex opened ``O_RDONLY``, no marker.

    Parameters
    ----------
    main_dir : Path
        The array's main directory.
    array_id : str
        The array id.
    settings : LockSettings
        Timeout and polling interval.
    ext : str, optional
        Extension of the protected file; by default ``.hdf5`` (an Array or tile), or
        ``.json`` when only that exists (a VArray's metadata).

    Yields
    ------
    None
        While the lock is held.

    Raises
    ------
    FileNotFoundError
        If the array's data file does not exist (or vanished while waiting).
    DekerLockError
        If the lock could not be taken in time (nothing stays locked).

    """
    if not settings.read_only:
        stack = contextlib.ExitStack()
        try:
            _take_read_lock(stack, main_dir, array_id, settings, ext)
        except OSError as exc:
            stack.close()
            if exc.errno not in _UNWRITABLE:
                raise
            # This directory may not be written (read permission only below a writable root,
            # a read-only mount made after the client opened): read as a read-only reader.
            logger.debug("cannot make the read lock of %s (%s): locking read-only", array_id, exc)
            settings = dataclasses.replace(settings, read_only=True)
        else:
            with stack:
                yield
            return
    with _read_only_read_lock(main_dir, array_id, settings, ext):
        yield


_UNWRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}


def _take_read_lock(
    stack: contextlib.ExitStack, main_dir: Path, array_id: str, settings: LockSettings, ext: str | None
) -> None:
    """Take the read lock of a reader that may write lock files; ``stack`` releases it."""
    data = _object_file(main_dir, array_id, ext)
    _require(data)
    what = f"Array {array_id} read lock"
    waiter = _Waiter(settings)
    stack.callback(_unlock_close, _acquire_file(mutex_path(main_dir, array_id), fcntl.LOCK_SH, waiter, what))
    _require(data)
    marker = main_dir / (
        f"{array_id}:{OWN_READ_PREFIX}{uuid.uuid4().hex}:{os.getpid()}:{threading.get_native_id()}"
        f"{READ_LOCK_EXT}"
    )
    while True:
        marker_held = _create_marker(marker)
        if not held_by_someone(data):  # no deker 1.1.7 writer / VArray write holds the file
            break
        _drop_marker(marker, marker_held)
        if not waiter.sleep():
            raise _timeout(what, data, "a deker 1.1.7 writer (exclusive flock)", settings)
    stack.callback(_drop_marker, marker, marker_held)
    _pass_fence(main_dir, array_id, waiter, what, shared=True)


@contextlib.contextmanager
def _read_only_read_lock(
    main_dir: Path, array_id: str, settings: LockSettings, ext: str | None
) -> Iterator[None]:
    """Hold the read lock of a reader that may not write: the best it can take, making no file.

    A shared lock on the array mutex opened ``O_RDONLY`` when it exists (so deker writers
    wait for this reader, and it waits for them); without a mutex nobody wrote the array
    with deker's locks, and the read goes on without one.  No read marker can be made, so
    deker 1.1.7 writers do not wait for this reader; it only waits while one holds the data
    file.  The fence is passed like any reader does, opened ``O_RDONLY``.  Nothing is
    created, changed or removed.
    """
    data = _object_file(main_dir, array_id, ext)
    _require(data)
    what = f"Array {array_id} read lock (read-only)"
    waiter = _Waiter(settings)
    path = mutex_path(main_dir, array_id)
    with contextlib.ExitStack() as stack:
        while True:
            try:
                held = _hold_waiting(path, False, waiter, what, "a deker writer", readonly=True)
            except FileNotFoundError:  # no mutex: read without it (nothing may be created)
                break
            if lockprim.same_file(held, path):
                stack.callback(_unlock_close, held)
                break
            _unlock_close(held)  # replaced or unlinked meanwhile: take the current one
        _require(data)
        while held_by_someone(data):  # a deker 1.1.7 writer (or a VArray write) holds the file
            if not waiter.sleep():
                raise _timeout(what, data, "a deker 1.1.7 writer (exclusive flock)", settings)
        _pass_fence(main_dir, array_id, waiter, what, shared=True)
        yield


@contextlib.contextmanager
def array_write_lock(
    main_dir: Path, array_id: str, settings: LockSettings, *, ext: str | None = None
) -> Iterator[None]:
    """Hold the write lock of one array (exclusive of readers and writers).

    When the operation deleted the data file, the mutex and the empty directories are removed
    on release.

    Parameters
    ----------
    main_dir : Path
        The array's main directory.
    array_id : str
        The array id.
    settings : LockSettings
        Timeout and polling interval.
    ext : str, optional
        Extension of the protected file; by default ``.hdf5`` (an Array or tile), or
        ``.json`` when only that exists (a VArray's metadata).

    Yields
    ------
    None
        While the lock is held.

    Raises
    ------
    FileNotFoundError
        If the array's data file does not exist (or vanished while waiting).
    DekerLockError
        If the lock could not be taken in time (nothing stays locked).

    """
    refuse_read_only(settings, f"write array {array_id}")
    data = _object_file(main_dir, array_id, ext)
    _require(data)
    what = f"Array {array_id} write lock"
    waiter = _Waiter(settings)
    with contextlib.ExitStack() as stack:
        stack.callback(
            _unlock_close, _acquire_file(mutex_path(main_dir, array_id), fcntl.LOCK_EX, waiter, what)
        )
        stack.callback(_cleanup_if_deleted, main_dir, array_id, data)
        _require(data)
        try:
            data_held = _lock_data_file(data, waiter, what)
        except FileNotFoundError:  # deleted while we waited for its lock
            _require(data)
            raise
        stack.callback(_unlock_close, data_held)
        kept: list[Path] = []
        _wait_for_markers(main_dir, array_id, waiter, what, kept=kept)
        _pass_fence(main_dir, array_id, waiter, what)
        if kept:  # the markers of a dead coordinator whose task held the fence: stale now
            _live_foreign_markers(main_dir, array_id, None)
        yield


# --------------------------------------------------------------------------- VArray locks


class VArrayWriteLock:
    """The coordinator's lock on the tiles of one VArray update or clear.

    Parameters
    ----------
    settings : LockSettings
        Timeout and polling interval (one deadline per :meth:`acquire` / :meth:`extend`).
    token : str
        The operation's owner token (:func:`new_token`); tile tasks check it with
        :func:`tile_write_guard`.

    """

    def __init__(self, settings: LockSettings, token: str) -> None:
        _check_token(token)
        refuse_read_only(settings, "write a VArray")
        self.settings = settings
        self.token = token
        self._held: dict[tuple[Path, str], contextlib.ExitStack] = {}
        self._guard = threading.Lock()

    def marker(self, main_dir: Path, tile_id: str) -> Path:
        """Return the marker file this lock makes for a tile.

        Parameters
        ----------
        main_dir : Path
            The tile's main directory.
        tile_id : str
            The tile id.

        Returns
        -------
        Path
            ``<main_dir>/<tile_id>.hdf5:<token>.varraylock``.

        """
        return main_dir / f"{tile_id}{ARRAY_EXT}:{self.token}{VARRAY_LOCK_EXT}"

    @property
    def tiles(self) -> list[tuple[Path, str]]:
        """The tiles held, in acquisition order."""
        return list(self._held)

    def holds(self, main_dir: Path, tile_id: str) -> bool:
        """Return whether this lock holds a tile.

        Parameters
        ----------
        main_dir : Path
            The tile's main directory.
        tile_id : str
            The tile id.

        Returns
        -------
        bool
            True while the tile is held.

        """
        with self._guard:
            return (Path(main_dir), tile_id) in self._held

    @contextlib.contextmanager
    def claiming(self, main_dir: Path, tile_id: str) -> Iterator[None]:
        """Hold a tile that the body creates, from before anyone can find it.

        The tile's mutex and marker are taken before the body runs (the tile id must be new,
        its files not yet published), its data file once the body has created it.  Nobody
        waits on a tile that does not exist yet, so this never waits on another operation and
        may run out of grid order without risking a deadlock.  If the body fails, the tile is
        released.

        Parameters
        ----------
        main_dir : Path
            The new tile's main directory (created if missing).
        tile_id : str
            The new tile's id.

        Yields
        ------
        None
            The body creates the tile's data file.

        """
        main_dir = Path(main_dir)
        waiter = _Waiter(self.settings)
        what = f"VArray write lock on new tile {tile_id}"
        stack = contextlib.ExitStack()
        try:
            for attempt in range(5):
                ensure_dir(main_dir)
                try:
                    mutex = _acquire_file(mutex_path(main_dir, tile_id), fcntl.LOCK_EX, waiter, what)
                    break
                except FileNotFoundError:  # a concurrent cleanup removed the empty directory
                    if attempt == 4:
                        raise
            stack.callback(_unlock_close, mutex)
            stack.callback(_cleanup_if_deleted, main_dir, tile_id)
            marker = self.marker(main_dir, tile_id)
            stack.callback(_drop_marker, marker, _create_marker(marker))
            _own_marker(marker, True)
            stack.callback(_own_marker, marker, False)
            _pass_fence(main_dir, tile_id, waiter, what, create=True)  # a new tile: never waits
            yield
            stack.callback(_unlock_close, _lock_data_file(_data_file(main_dir, tile_id), waiter, what))
        except BaseException:
            stack.close()
            raise
        with self._guard:
            self._held[(main_dir, tile_id)] = stack

    def acquire(self, tiles: Sequence[tuple[Path, str]], *, wait: bool = True) -> list[tuple[Path, str]]:
        """Lock tiles in the given order (the caller sorts them by grid position).

        Tiles already held are skipped.  On timeout (or any error) everything this lock holds
        is released before the error propagates.

        Parameters
        ----------
        tiles : sequence of (Path, str)
            ``(main_dir, tile_id)`` of each tile.
        wait : bool, default True
            False tries each tile once (no waiting, so tiles may be taken out of grid order):
            a busy tile raises :class:`DekerLockError` at once, with everything released.

        Returns
        -------
        list of (Path, str)
            Tiles that do not exist (not locked).

        Raises
        ------
        DekerLockError
            If a tile stayed busy until the deadline; the message names it.

        """
        waiter = _Waiter(self.settings if wait else LockSettings(0.0, self.settings.interval))
        missing: list[tuple[Path, str]] = []
        with self._guard:
            try:
                for main_dir, tile_id in tiles:
                    key = (Path(main_dir), tile_id)
                    if key in self._held:
                        continue
                    if not self._take(key[0], tile_id, waiter):
                        missing.append(key)
            except BaseException:
                self._release_all()
                raise
        return missing

    extend = acquire

    def _take(self, main_dir: Path, tile_id: str, waiter: _Waiter) -> bool:
        data = _data_file(main_dir, tile_id)
        if not os.path.exists(data):
            return False
        what = f"VArray write lock on tile {tile_id}"
        stack = contextlib.ExitStack()
        try:
            try:
                mutex = _acquire_file(mutex_path(main_dir, tile_id), fcntl.LOCK_EX, waiter, what)
            except FileNotFoundError:  # its directory vanished: deleted meanwhile
                return False
            stack.callback(_unlock_close, mutex)
            stack.callback(_cleanup_if_deleted, main_dir, tile_id)
            if not os.path.exists(data):
                stack.close()
                return False
            try:
                data_fd = _lock_data_file(data, waiter, what)
            except FileNotFoundError:  # deleted while we waited for its lock (a deker 1.1.7 clear)
                stack.close()
                return False
            stack.callback(_unlock_close, data_fd)
            marker = self.marker(main_dir, tile_id)
            stack.callback(_drop_marker, marker, _create_marker(marker))
            _own_marker(marker, True)
            stack.callback(_own_marker, marker, False)
            kept: list[Path] = []
            _wait_for_markers(main_dir, tile_id, waiter, what, own=marker, kept=kept)
            if not lockprim.same_file(data_fd, data):
                # Deleted while we waited for its lock (a deker 1.1.7 clear locks the data file
                # itself, not our mutex): what we hold is a dead file.  The caller lists again.
                stack.close()
                return False
            _pass_fence(main_dir, tile_id, waiter, what, create=True)
            if kept:  # the markers of a dead coordinator whose task held the fence: stale now
                _live_foreign_markers(main_dir, tile_id, marker)
        except BaseException:
            stack.close()
            raise
        self._held[(main_dir, tile_id)] = stack
        return True

    def _release_all(self) -> None:
        held, self._held = self._held, {}
        for stack in reversed(list(held.values())):
            try:
                stack.close()
            except OSError:  # pragma: no cover - releasing must not stop at one tile
                logger.exception("failed to release a tile lock")

    def release(self) -> None:
        """Release every tile (idempotent)."""
        with self._guard:
            self._release_all()

    def __enter__(self) -> VArrayWriteLock:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def __del__(self) -> None:
        if getattr(self, "_held", None):  # forgotten without release(): do not keep tiles locked
            with contextlib.suppress(Exception):
                self._release_all()


def _guard(main_dir: Path, tile_id: str, token: str, action: str) -> None:
    _check_token(token)
    marker = main_dir / f"{tile_id}{ARRAY_EXT}:{token}{VARRAY_LOCK_EXT}"
    with _OWN_MARKERS_GUARD:
        own = str(marker) in _OWN_MARKERS
    if own and os.path.exists(marker):
        return  # held by a live VArrayWriteLock of this very process
    if not held_by_someone(marker):
        raise DekerLockError(
            f"VArray lock lost: cannot {action} tile {tile_id}, its marker {marker} is missing or no "
            "longer held by the operation's coordinator"
        )


@contextlib.contextmanager
def tile_write_guard(
    main_dir: Path, tile_id: str, token: str, settings: LockSettings | None = None
) -> Iterator[None]:
    """Hold a tile's fence for a task's write, once the operation ``token`` is known to hold the tile.

    The task may run in another process or on another host.  It takes the tile's fence
    (``<id>.fence``, exclusive, waiting up to ``settings.timeout``), then checks that the
    coordinator's marker is still held, and keeps the fence until the body (the write) has
    ended.  Whoever takes the tile next passes the fence first (see
    :meth:`VArrayWriteLock.acquire`), so a write of a coordinator that died cannot land after
    a later write: it either finished before the next writer passed, or it finds the dead
    marker and gives up.

    Parameters
    ----------
    main_dir : Path
        The tile's main directory.
    tile_id : str
        The tile id.
    token : str
        The coordinator's owner token.
    settings : LockSettings, optional
        How long to wait for the fence (default :class:`LockSettings`).

    Yields
    ------
    None
        While the fence is held and the coordinator's marker was live when it was taken.

    Raises
    ------
    DekerLockError
        If the marker is missing or nobody holds it ("lock lost"), or the fence stayed busy
        until the deadline.

    """
    _check_token(token)
    refuse_read_only(settings or LockSettings(), f"write tile {tile_id}")
    waiter = _Waiter(settings or LockSettings())
    path = fence_path(main_dir, tile_id)
    what = f"Tile {tile_id} fence"
    with _fence_file(main_dir, tile_id, token, path, waiter, what):
        yield


@contextlib.contextmanager
def _fence_file(
    main_dir: Path, tile_id: str, token: str, path: Path, waiter: _Waiter, what: str
) -> Iterator[None]:
    try:
        held = _hold_waiting(path, True, waiter, what, _FENCE_HOLDER)
    except FileNotFoundError:
        _guard(main_dir, tile_id, token, "write")  # the tile was deleted, its lock released...
        try:  # ...or its coordinator made no fence: make it (the coordinator holds the mutex)
            held = _hold_waiting(path, True, waiter, what, _FENCE_HOLDER, create=True)
        except FileNotFoundError:
            _guard(main_dir, tile_id, token, "write")
            raise
    try:
        _guard(main_dir, tile_id, token, "write")  # decided only while the fence is ours
        yield
    finally:
        _unlock_close(held)


@contextlib.contextmanager
def tile_read_guard(main_dir: Path, tile_id: str, token: str) -> Iterator[None]:
    """Check that the operation ``token`` still holds a tile before a task reads it.

    Parameters
    ----------
    main_dir : Path
        The tile's main directory.
    tile_id : str
        The tile id.
    token : str
        The coordinator's owner token.

    Yields
    ------
    None
        When the coordinator's marker is live.

    Raises
    ------
    DekerLockError
        If the marker is missing or nobody holds it ("lock lost").

    """
    _guard(main_dir, tile_id, token, "read")
    yield


# --------------------------------------------------------------------------- other locks


@contextlib.contextmanager
def creation_lock(lock_dir: Path, key: str, settings: LockSettings) -> Iterator[None]:
    """Serialise the creation of one object (a primary key, a missing tile) across processes.

    The lock file ``<lock_dir>/<md5(key)>.arrlock`` is removed on release.

    Parameters
    ----------
    lock_dir : Path
        Where the lock file lives (created if missing).
    key : str
        What is being created (e.g. the encoded primary key).
    settings : LockSettings
        Timeout and polling interval.

    Yields
    ------
    None
        While the lock is held.

    Raises
    ------
    DekerLockError
        If another creator held it until the deadline.

    """
    refuse_read_only(settings, f"create {key!r}")
    path = lock_dir / f"{hashlib.md5(key.encode(), usedforsecurity=False).hexdigest()}{CREATION_LOCK_EXT}"
    waiter = _Waiter(settings)
    what = f"Creation lock for {key!r}"
    for attempt in range(5):
        lock_dir.mkdir(parents=True, exist_ok=True)
        try:
            held = _acquire_file(path, fcntl.LOCK_EX, waiter, what, "another creator")
            break
        except FileNotFoundError:  # the directory was removed meanwhile
            if attempt == 4:
                raise
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        _unlock_close(held)


@contextlib.contextmanager
def collection_lock(collections_root: Path, name: str, settings: LockSettings) -> Iterator[None]:
    """Hold the lock of a collection (creation, clear); the file is kept afterwards.

    Parameters
    ----------
    collections_root : Path
        The collections directory.
    name : str
        The collection name.
    settings : LockSettings
        Timeout and polling interval.

    Yields
    ------
    None
        While the lock is held.

    Raises
    ------
    DekerLockError
        If another process held it until the deadline.

    """
    refuse_read_only(settings, f"change collection {name}")
    collections_root.mkdir(parents=True, exist_ok=True)
    path = collections_root / f"{name}{LOCK_EXT}"
    held = _acquire_file(path, fcntl.LOCK_EX, _Waiter(settings), f"Collection {name} lock", "another client")
    try:
        yield
    finally:
        _unlock_close(held)
