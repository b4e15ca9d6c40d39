"""The VArray write lock: a coordinator's lock on tiles, and the guards its tile tasks check it with.

A VArray update or clear runs as tile tasks, maybe in other processes or on other hosts.  Its
coordinator holds every tile it changes with a :class:`VArrayWriteLock`: per tile the array
mutex, the data file and a VArray write marker ``<id>.hdf5:<token>.varraylock`` named by the
operation's owner token (:func:`deker.storage.lockwait.new_token`).  A tile task checks that
marker before it reads (:func:`tile_read_guard`) and, holding the tile's fence, before it
writes (:func:`tile_write_guard`): a task whose coordinator died gives up, and one that still
writes keeps every later writer out until it ends.  See :mod:`deker.storage.locks` for the
whole protocol; the steps are in :mod:`deker.storage.locksteps`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

from deker.errors import DekerLockError
from deker.storage import lockprim
from deker.storage.layout import ARRAY_EXT, ensure_dir
from deker.storage.lockinfo import VARRAY_LOCK_EXT, held_by_someone
from deker.storage.locksteps import (
    FENCE_HOLDER,
    cleanup_if_deleted,
    create_marker,
    data_file,
    drop_marker,
    fence_path,
    live_foreign_markers,
    lock_data_file,
    mutex_path,
    pass_fence,
    wait_for_markers,
)
from deker.storage.lockwait import (
    LockSettings,
    Waiter,
    acquire_file,
    acquire_in,
    check_token,
    hold_waiting,
    refuse_read_only,
)

__all__ = ["VArrayWriteLock", "tile_read_guard", "tile_write_guard"]

logger = logging.getLogger(__name__)

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


def _marker_path(main_dir: Path, tile_id: str, token: str) -> Path:
    return main_dir / f"{tile_id}{ARRAY_EXT}:{token}{VARRAY_LOCK_EXT}"


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
        check_token(token)
        refuse_read_only(settings, "write a VArray")
        self.settings = settings
        self.token = token
        self._held: dict[tuple[Path, str], contextlib.ExitStack] = {}
        self._guard = threading.Lock()

    def marker(self, main_dir: Path, tile_id: str) -> Path:
        """Return the marker file this lock makes for the tile ``tile_id`` of ``main_dir``.

        That is ``<main_dir>/<tile_id>.hdf5:<token>.varraylock``.
        """
        return _marker_path(main_dir, tile_id, self.token)

    @property
    def tiles(self) -> list[tuple[Path, str]]:
        """The tiles held, in acquisition order."""
        return list(self._held)

    def holds(self, main_dir: Path, tile_id: str) -> bool:
        """Return whether this lock holds the tile ``tile_id`` (in its main directory ``main_dir``).

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
        waiter = Waiter(self.settings)
        what = f"VArray write lock on new tile {tile_id}"
        stack = contextlib.ExitStack()
        try:
            stack.callback(
                lockprim.release, acquire_in(ensure_dir, mutex_path(main_dir, tile_id), waiter, what)
            )
            stack.callback(cleanup_if_deleted, main_dir, tile_id)
            self._mark(stack, main_dir, tile_id)
            pass_fence(main_dir, tile_id, waiter, what, create=True)  # a new tile: never waits
            yield
            stack.callback(lockprim.release, lock_data_file(data_file(main_dir, tile_id), waiter, what))
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
        waiter = Waiter(self.settings if wait else LockSettings(0.0, self.settings.interval))
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

    def _take(self, main_dir: Path, tile_id: str, waiter: Waiter) -> bool:
        data = data_file(main_dir, tile_id)
        if not os.path.exists(data):
            return False
        what = f"VArray write lock on tile {tile_id}"
        stack = contextlib.ExitStack()
        try:
            try:
                mutex = acquire_file(mutex_path(main_dir, tile_id), True, waiter, what)
            except FileNotFoundError:  # its directory vanished: deleted meanwhile
                return False
            stack.callback(lockprim.release, mutex)
            stack.callback(cleanup_if_deleted, main_dir, tile_id)
            if not os.path.exists(data):
                stack.close()
                return False
            try:
                data_fd = lock_data_file(data, waiter, what)
            except FileNotFoundError:  # deleted while we waited for its lock (a deker 1.1.7 clear)
                stack.close()
                return False
            stack.callback(lockprim.release, data_fd)
            marker = self._mark(stack, main_dir, tile_id)
            kept: list[Path] = []
            wait_for_markers(main_dir, tile_id, waiter, what, own=marker, kept=kept)
            if not lockprim.same_file(data_fd, data):
                # Deleted while we waited for its lock (a deker 1.1.7 clear locks the data file
                # itself, not our mutex): what we hold is a dead file.  The caller lists again.
                stack.close()
                return False
            pass_fence(main_dir, tile_id, waiter, what, create=True)
            if kept:  # the markers of a dead coordinator whose task held the fence: stale now
                live_foreign_markers(main_dir, tile_id, marker)
        except BaseException:
            stack.close()
            raise
        self._held[(main_dir, tile_id)] = stack
        return True

    def _mark(self, stack: contextlib.ExitStack, main_dir: Path, tile_id: str) -> Path:
        """Make this lock's marker on a tile, removed by ``stack``; return it."""
        marker = self.marker(main_dir, tile_id)
        stack.callback(drop_marker, marker, create_marker(marker))
        _own_marker(marker, True)
        stack.callback(_own_marker, marker, False)
        return marker

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
    check_token(token)
    marker = _marker_path(main_dir, tile_id, token)
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
    check_token(token)
    refuse_read_only(settings or LockSettings(), f"write tile {tile_id}")
    waiter = Waiter(settings or LockSettings())
    path = fence_path(main_dir, tile_id)
    what = f"Tile {tile_id} fence"
    with _fence_file(main_dir, tile_id, token, path, waiter, what):
        yield


@contextlib.contextmanager
def _fence_file(
    main_dir: Path, tile_id: str, token: str, path: Path, waiter: Waiter, what: str
) -> Iterator[None]:
    try:
        held = hold_waiting(path, True, waiter, what, FENCE_HOLDER)
    except FileNotFoundError:
        _guard(main_dir, tile_id, token, "write")  # the tile was deleted, its lock released...
        try:  # ...or its coordinator made no fence: make it (the coordinator holds the mutex)
            held = hold_waiting(path, True, waiter, what, FENCE_HOLDER, create=True)
        except FileNotFoundError:
            _guard(main_dir, tile_id, token, "write")
            raise
    try:
        _guard(main_dir, tile_id, token, "write")  # decided only while the fence is ours
        yield
    finally:
        lockprim.release(held)


@contextlib.contextmanager
def tile_read_guard(main_dir: Path, tile_id: str, token: str) -> Iterator[None]:
    """Check that the operation ``token`` still holds a tile before a task reads it.

    The parameters are those of :func:`tile_write_guard` (no fence is taken: no wait).

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
