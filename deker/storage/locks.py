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

This module holds the array locks (:func:`array_read_lock`, :func:`array_write_lock`) and the
creation and collection locks, and is where callers import the whole protocol from: the
settings and tokens are :mod:`deker.storage.lockwait`'s, the VArray write lock and the tile
guards :mod:`deker.storage.varraylock`'s, the per-array steps (mutex, markers, fence)
:mod:`deker.storage.locksteps`'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import logging
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

from deker.storage import lockprim
from deker.storage.lockinfo import (
    CREATION_LOCK_EXT,
    FENCE_EXT,
    LOCK_EXT,
    OWN_READ_PREFIX,
    READ_LOCK_EXT,
    VARRAY_LOCK_EXT,
    held_by_someone,
)
from deker.storage.locksteps import (
    cleanup_if_deleted,
    create_marker,
    drop_marker,
    fence_path,
    live_foreign_markers,
    lock_data_file,
    mutex_path,
    object_file,
    pass_fence,
    require,
    wait_for_markers,
)
from deker.storage.lockwait import (
    LockSettings,
    Waiter,
    acquire_file,
    acquire_in,
    lock_timeout,
    new_token,
    refuse_read_only,
)
from deker.storage.varraylock import VArrayWriteLock, tile_read_guard, tile_write_guard

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
_LEGACY_WRITER = "a deker 1.1.7 writer (exclusive flock)"


def _take_read_lock(
    stack: contextlib.ExitStack, main_dir: Path, array_id: str, settings: LockSettings, ext: str | None
) -> None:
    """Take the read lock of a reader that may write lock files; ``stack`` releases it."""
    data = object_file(main_dir, array_id, ext)
    what = f"Array {array_id} read lock"
    waiter = Waiter(settings)
    stack.callback(lockprim.release, acquire_file(mutex_path(main_dir, array_id), False, waiter, what))
    try:
        require(data)  # deleted or damaged while this reader waited (a FIFO would block the probe's open)
    except FileNotFoundError:
        stack.close()
        _remove_mutex_of_deleted(main_dir, array_id, data)
        raise
    marker = main_dir / (
        f"{array_id}:{OWN_READ_PREFIX}{uuid.uuid4().hex}:{os.getpid()}:{threading.get_native_id()}"
        f"{READ_LOCK_EXT}"
    )
    while True:
        marker_held = create_marker(marker)
        if not held_by_someone(data):  # no deker 1.1.7 writer / VArray write holds the file
            break
        drop_marker(marker, marker_held)
        if not waiter.sleep():
            raise lock_timeout(what, data, _LEGACY_WRITER, settings)
    stack.callback(drop_marker, marker, marker_held)
    pass_fence(main_dir, array_id, waiter, what, shared=True)


def _remove_mutex_of_deleted(main_dir: Path, array_id: str, data: Path) -> None:
    """Remove the mutex a reader made again for an array deleted while it waited, if nobody holds it.

    The deleting writer removed the mutex on release; the waiting reader's next try created
    it anew.  Taken exclusively once (no wait, not created), the mutex is removed with the
    fence and the empty directories as a deleting writer does (:func:`cleanup_if_deleted`);
    held by someone else, it is left to them.  Best effort: failures are ignored.
    """
    path = mutex_path(main_dir, array_id)
    try:
        held = lockprim.hold(path, True)
    except OSError:  # gone already (or cannot be opened): nothing to remove
        return
    if held is None:
        return
    try:
        if lockprim.same_file(held, path):
            with contextlib.suppress(OSError):
                cleanup_if_deleted(main_dir, array_id, data)
    finally:
        lockprim.release(held)


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
    data = object_file(main_dir, array_id, ext)
    what = f"Array {array_id} read lock (read-only)"
    waiter = Waiter(settings)
    path = mutex_path(main_dir, array_id)
    with contextlib.ExitStack() as stack:
        try:  # (a mutex replaced or unlinked meanwhile: the current one is taken)
            held = acquire_file(path, False, waiter, what, "a deker writer", readonly=True)
        except FileNotFoundError:  # no mutex: read without it (nothing may be created)
            pass
        else:
            stack.callback(lockprim.release, held)
        require(data)
        while held_by_someone(data):  # a deker 1.1.7 writer (or a VArray write) holds the file
            if not waiter.sleep():
                raise lock_timeout(what, data, _LEGACY_WRITER, settings)
        pass_fence(main_dir, array_id, waiter, what, shared=True)
        yield


@contextlib.contextmanager
def array_write_lock(
    main_dir: Path, array_id: str, settings: LockSettings, *, ext: str | None = None
) -> Iterator[None]:
    """Hold the write lock of one array (exclusive of readers and writers).

    When the operation deleted the data file, the mutex and the empty directories are removed
    on release.  The parameters, what it yields and what it raises are those of
    :func:`array_read_lock`; with ``settings.read_only`` it raises
    :class:`~deker.errors.DekerReadOnlyError` before it touches anything.
    """
    refuse_read_only(settings, f"write array {array_id}")
    data = object_file(main_dir, array_id, ext)
    what = f"Array {array_id} write lock"
    waiter = Waiter(settings)
    with contextlib.ExitStack() as stack:
        stack.callback(lockprim.release, acquire_file(mutex_path(main_dir, array_id), True, waiter, what))
        stack.callback(cleanup_if_deleted, main_dir, array_id, data)
        require(data)
        try:
            data_held = lock_data_file(data, waiter, what)
        except FileNotFoundError:  # deleted while we waited for its lock
            require(data)
            raise
        stack.callback(lockprim.release, data_held)
        kept: list[Path] = []
        wait_for_markers(main_dir, array_id, waiter, what, kept=kept)
        pass_fence(main_dir, array_id, waiter, what)
        if kept:  # the markers of a dead coordinator whose task held the fence: stale now
            live_foreign_markers(main_dir, array_id, None)
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
        While the creation lock is held (its file is removed afterwards).

    Raises
    ------
    DekerLockError
        If another creator held it until the deadline.

    """
    refuse_read_only(settings, f"create {key!r}")
    path = lock_dir / f"{hashlib.md5(key.encode(), usedforsecurity=False).hexdigest()}{CREATION_LOCK_EXT}"
    waiter = Waiter(settings)
    what = f"Creation lock for {key!r}"
    held = acquire_in(_mkdir, path, waiter, what, "another creator")  # (again if lock_dir is removed)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        lockprim.release(held)


def _mkdir(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)


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
        While the collection's lock is held.

    Raises
    ------
    DekerLockError
        If another client held it until the deadline.
    DekerReadOnlyError
        With read-only settings (nothing is created).

    """
    refuse_read_only(settings, f"change collection {name}")
    collections_root.mkdir(parents=True, exist_ok=True)
    path = collections_root / f"{name}{LOCK_EXT}"
    held = acquire_file(path, True, Waiter(settings), f"Collection {name} lock", "another client")
    try:
        yield
    finally:
        lockprim.release(held)
