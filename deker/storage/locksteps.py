"""The files one array's (or tile's) lock is made of, and the steps that take them.

An array lock (:mod:`deker.storage.locks`) and a VArray write lock on a tile
(:mod:`deker.storage.varraylock`) are built from the same steps, all in the array's main
directory: the array mutex (:func:`mutex_path`, taken with
:func:`deker.storage.lockwait.acquire_file`), the data file (:func:`lock_data_file`), the
markers of our readers and VArray writes (:func:`create_marker`, :func:`drop_marker`) and the
wait for other owners' live markers (:func:`wait_for_markers`), and the pass through the tile
fence (:func:`pass_fence`).  Under an exclusive mutex, the lock files of an object that was
deleted meanwhile are removed on release (:func:`cleanup_if_deleted`).  See the docstring of
:mod:`deker.storage.locks` for the protocol these steps make.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

from deker.errors import DekerLockError, DekerStorageError, DekerValidationError
from deker.storage import lockprim
from deker.storage.layout import ARRAY_EXT, VARRAY_EXT, id_dir_parts, remove_empty_parents
from deker.storage.lockinfo import (
    FENCE_EXT,
    LOCK_EXT,
    Marker,
    fence_busy,
    legacy_owner_alive,
    marker_alive,
    marker_temp_path,
    parse_marker,
)
from deker.storage.lockwait import Waiter, hold_waiting, lock_timeout

__all__ = [
    "FENCE_HOLDER",
    "cleanup_if_deleted",
    "create_marker",
    "data_file",
    "drop_marker",
    "fence_path",
    "live_foreign_markers",
    "lock_data_file",
    "mutex_path",
    "object_file",
    "pass_fence",
    "require",
    "wait_for_markers",
]

logger = logging.getLogger(__name__)

#: Who holds a busy tile fence, as a timeout message says it.
FENCE_HOLDER = "a tile task of an earlier VArray operation (its coordinator may have died)"


def mutex_path(main_dir: Path, array_id: str) -> Path:
    """Return the mutex file of an array (``<main_dir>/<id>.lock``).

    Parameters
    ----------
    main_dir : Path
        Where the array's files are.
    array_id : str
        The array (or tile) id.

    Returns
    -------
    Path
        The mutex file.

    """
    return main_dir / f"{array_id}{LOCK_EXT}"


def fence_path(main_dir: Path, array_id: str) -> Path:
    """Return the tile fence of an array or tile (``<main_dir>/<id>.fence``; see :func:`mutex_path`).

    The fence file exists once a VArray write took the tile.
    """
    return main_dir / f"{array_id}{FENCE_EXT}"


def data_file(main_dir: Path, array_id: str) -> Path:
    """Return the data file of an array or tile (``<main_dir>/<id>.hdf5``)."""
    return main_dir / f"{array_id}{ARRAY_EXT}"


def require(path: Path) -> None:
    """Check that the file a lock protects exists and is a regular file.

    Parameters
    ----------
    path : Path
        The data file (or a VArray's metadata file).

    Raises
    ------
    FileNotFoundError
        If it does not exist.
    DekerStorageError
        If it cannot be looked at, or is a directory, a FIFO... (the storage is damaged).

    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(2, "No such array file", str(path)) from None
    except OSError as exc:
        raise DekerStorageError(f"Cannot access {path}: {exc}") from exc
    if not stat.S_ISREG(mode):  # a directory or a FIFO (opening it could block forever)
        raise DekerStorageError(f"{path} is not a regular file: the storage is damaged, run check_integrity")


def object_file(main_dir: Path, array_id: str, ext: str | None) -> Path:
    """Return the file a lock protects, checked by :func:`require`: ``<id><ext>``.

    By default ``.hdf5``; without ``ext``, the VArray metadata file ``<id>.json`` when there is
    no data file but it exists (a VArray has no data file of its own).  One ``stat`` when the
    file is there.

    Raises
    ------
    FileNotFoundError
        If neither exists (the error names the data file).
    DekerStorageError
        As :func:`require`.
    """
    if ext is not None:
        path = main_dir / f"{array_id}{ext}"
        require(path)
        return path
    data = data_file(main_dir, array_id)
    try:
        require(data)
    except FileNotFoundError as no_data:
        meta = main_dir / f"{array_id}{VARRAY_EXT}"
        try:
            require(meta)
        except FileNotFoundError:
            raise no_data from None
        return meta
    return data


def cleanup_if_deleted(main_dir: Path, array_id: str, data: Path | None = None) -> None:
    """Under an exclusive mutex: if the object is gone, remove its mutex, fence and empty directories.

    Parameters
    ----------
    main_dir : Path
        The object's main directory.
    array_id : str
        The array (or tile) id.
    data : Path, optional
        The file whose absence means "deleted" (by default the data file).

    """
    if os.path.exists(data or data_file(main_dir, array_id)):
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


def create_marker(path: Path) -> lockprim.Hold:
    """Create ``path`` already locked (temp file, exclusive lock, atomic rename); return its hold.

    Parameters
    ----------
    path : Path
        The marker (a read marker or a VArray write marker).

    Returns
    -------
    Hold
        The exclusive hold on the marker (give it back with :func:`drop_marker`).

    Raises
    ------
    DekerLockError
        If its temporary file vanished ten times (a lock cleaner of another process).

    """
    for _ in range(10):
        tmp = marker_temp_path(path)
        held = lockprim.hold_new(tmp)
        try:
            os.rename(tmp, path)
            return held
        except FileNotFoundError:  # a lock cleaner removed the temp file: try again
            lockprim.release(held)
        except BaseException:
            lockprim.release(held)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    raise DekerLockError(f"Cannot create lock marker {path}: its temporary file keeps vanishing")


def drop_marker(path: Path, held: lockprim.Hold) -> None:
    """Remove a marker of ours, then release it (what :func:`create_marker` returned)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # unlink while still locked: a visible marker of ours is always locked
    lockprim.release(held)


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
        lockprim.release(held)
    return False


def live_foreign_markers(
    main_dir: Path, array_id: str, own: Path | None, kept: list[Path] | None = None
) -> list[Marker]:
    """Return the live markers of other owners on ``array_id``; stale ones are removed.

    Parameters
    ----------
    main_dir, array_id : Path, str
        The array (or tile) and its main directory, where the markers are.
    own : Path or None
        A marker of the caller's own, not counted.
    kept : list of Path, optional
        Where to add the dead VArray markers kept because a tile task holds the fence.

    Returns
    -------
    list of Marker
        The live ones.

    """
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


def wait_for_markers(
    main_dir: Path,
    array_id: str,
    waiter: Waiter,
    what: str,
    own: Path | None = None,
    kept: list[Path] | None = None,
) -> None:
    """Wait until no other owner has a live marker on ``array_id`` (see :func:`live_foreign_markers`).

    Raises
    ------
    DekerLockError
        If one stayed live until the deadline; the message names the markers' owners.

    """
    while True:
        live = live_foreign_markers(main_dir, array_id, own, kept)
        if not live:
            return
        if not waiter.sleep():
            holders = ", ".join(
                f"{m.kind} of {'deker 1.1.7 pid ' if m.legacy else ''}{m.owner}" for m in live
            )
            raise lock_timeout(what, live[0].path, holders, waiter.settings)


def pass_fence(
    main_dir: Path, array_id: str, waiter: Waiter, what: str, *, shared: bool = False, create: bool = False
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
        held = hold_waiting(path, not shared, waiter, what, FENCE_HOLDER, create=create, readonly=readonly)
    except FileNotFoundError:
        if create:
            raise
        return
    except PermissionError:  # a read-only storage: nobody can be writing there with our locks
        return
    lockprim.release(held)


def lock_data_file(data: Path, waiter: Waiter, what: str) -> lockprim.Hold:
    """Hold the data file exclusively, waiting (what deker 1.1.7 processes lock and probe)."""
    return hold_waiting(data, True, waiter, what, "a deker 1.1.7 process (flock on the data file)")
