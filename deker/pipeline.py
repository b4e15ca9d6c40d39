"""The tile pipeline: how one VArray operation becomes per-tile tasks, and their results one answer.

Every VArray read, update, clear and deletion goes through here, in the same steps:
plan (the tiles a region touches, :func:`deker.tiling.tile_pieces`), lock (an update or clear
takes the write lock of exactly the tiles it touches, in grid order, under one owner token the
tasks carry), create the missing tiles (an update only), run the tasks on the client's executor
(:mod:`deker.tasks`), gather the results, release.  Failed tiles are reported together in a
:class:`~deker.errors.DekerVSubsetError` holding the real exceptions.

:func:`lock_tiles` is also what deker_dask's store tasks use for their tile, on a worker.
Everything here works on a :class:`~deker.tileindex.TileIndex` and plain values: it knows
nothing of handles or subsets.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from deker.context import StorageContext
from deker.errors import DekerInstanceNotExistsError, DekerLockError, DekerVSubsetError
from deker.executors import TaskRunner
from deker.storage.arrayfile import Bounds, selection_shape
from deker.storage.locks import VArrayWriteLock, new_token
from deker.storage.mounts import is_local_filesystem
from deker.tasks import (
    clear_piece,
    read_piece,
    read_piece_into,
    storage_errors,
    write_piece,
    write_piece_broadcast,
)
from deker.tileindex import TileIndex
from deker.tiling import TilePiece, tile_pieces

__all__ = [
    "clear",
    "compact_for_transport",
    "delete_tiles",
    "lock_tiles",
    "raise_group",
    "read",
    "require",
    "task_plan",
    "update",
]

logger = logging.getLogger(__name__)

# Attempts to lock the tiles of an update or clear while concurrent clears delete them.
LOCK_ROUNDS = 100

Position = tuple[int, ...]


def raise_group(message: str, failures: Sequence[tuple[Position, BaseException]]) -> None:
    """Raise the failures of some tiles together (nothing if there are none).

    Parameters
    ----------
    message : str
        What failed, e.g. ``"Reading <subset> failed in 2 tile(s)"``.
    failures : sequence of (position, exception)
        The failed tiles.

    Raises
    ------
    DekerVSubsetError
        Holding the exceptions and the positions, if they are all ``Exception`` instances.
    BaseException
        The first one that is not (a ``KeyboardInterrupt``, a ``SystemExit``), as it is.
    """
    if failures:
        excs = [e for _, e in failures]
        if all(isinstance(e, Exception) for e in excs):
            raise DekerVSubsetError(message, excs, [p for p, _ in failures])
        raise next(e for e in excs if not isinstance(e, Exception))


def require(index: TileIndex, who: str) -> None:
    """Raise :class:`DekerInstanceNotExistsError` if the VArray of ``index`` was deleted.

    Parameters
    ----------
    index : TileIndex
        The VArray's tiles.
    who : str
        The VArray as the message names it (its ``repr``).
    """
    if not index.exists():
        raise DekerInstanceNotExistsError(f"{who} was deleted")


def task_plan(
    runner: TaskRunner, index: TileIndex, n_calls: int, nbytes: int | None = None
) -> tuple[int, int | None]:
    """Return how many tile calls make one task, and the most tasks to run at once.

    The runner's ``suggest_batch_size`` and ``suggest_parallelism``, with one answer of the
    storage's filesystem (whether files are cheap) for both.  ``nbytes`` is the size of the
    operation's region when it is known (a read), else each call counts a whole tile.
    """
    cheap = is_local_filesystem(index.root)
    per_call = index.tile_bytes if nbytes is None or not n_calls else -(-int(nbytes) // n_calls)
    size = int(runner.suggest_batch_size(n_calls, per_call, cheap_files=cheap))
    return size, runner.suggest_parallelism(cheap_files=cheap)


def _create_missing(
    lock: VArrayWriteLock,
    index: TileIndex,
    missing: list[Position],
    values: dict[str, Any],
    payloads: dict[Position, Any],
    runner: TaskRunner | None,
) -> list[tuple[str, bool]]:
    args = [(pos, values, payloads.get(pos), lock.claiming) for pos in missing]
    if runner is not None and len(missing) > 1:  # each waits on its own files, in this process
        limit = runner.suggest_parallelism(cheap_files=is_local_filesystem(index.root), here=True)
        made: list[Any] = runner.run_here(index.create, args, max_parallel=limit)
    else:
        made = [index.create(*arg) for arg in args]
    for result in made:
        if isinstance(result, BaseException):
            raise result
    return made


def lock_tiles(
    lock: VArrayWriteLock,
    index: TileIndex,
    positions: Sequence[Position],
    values: dict[str, Any] | None,
    payloads: dict[Position, Any] | None = None,
    *,
    runner: TaskRunner | None = None,
    what: str = "",
) -> tuple[dict[Position, str], set[Position]]:
    """Lock the tiles at ``positions``, creating the missing ones when ``values`` is given.

    Two-phase locking, so that an update is isolated: the existing tiles are locked in grid
    order (no deadlock), then the missing ones are created, each held by ``lock`` from before
    anyone can find it (:meth:`VArrayWriteLock.claiming`); every tile stays held until the
    operation ends.  A missing tile with an entry in ``payloads`` (its every cell) is created
    holding it: it is written already and not returned for writing.

    A tile created by someone else after the listing is locked without waiting; if it is
    busy, everything is released and the tiles are listed again (tiles this round created
    holding their data are then written again by the tasks).  So is a tile deleted by a
    concurrent clear before its lock.

    Parameters
    ----------
    lock : VArrayWriteLock
        The operation's lock (entered).
    index : TileIndex
        The VArray's tiles.
    positions : sequence of tuple of int
        The tiles to lock, in grid order.
    values : dict, optional
        The VArray's attribute values: missing tiles are created (an update); ``None``: they
        are left missing (a clear).
    payloads : dict, optional
        Every cell of some tiles, by position: a missing one is created holding it.
    runner : TaskRunner, optional
        Creates several missing tiles at once, in threads of this process (which holds the
        lock), whatever executor runs the tasks.
    what : str
        The operation, for the error message.

    Returns
    -------
    tuple of (dict, set)
        The ids of the locked tiles by position, and the positions created with their data.

    Raises
    ------
    DekerLockError
        If concurrent writers and clears kept changing the tiles for too long.
    """
    for _ in range(LOCK_ROUNDS + len(positions)):
        tiles = index.ids(positions)
        if lock.acquire([index.lock_key(tiles[p]) for p in positions if p in tiles]):
            lock.release()  # some vanished: a concurrent clear
            continue
        missing = [p for p in positions if p not in tiles]
        if values is None or not missing:
            return tiles, set()
        made = _create_missing(lock, index, missing, values, payloads or {}, runner)
        written: set[Position] = set()
        others = []
        for position, (tid, filled) in zip(missing, made, strict=True):
            tiles[position] = tid
            key = index.lock_key(tid)
            if not lock.holds(*key):
                others.append(key)  # created by someone else meanwhile
            elif filled:
                written.add(position)
        try:
            if others and lock.acquire(others, wait=False):
                lock.release()  # deleted again by a concurrent clear
                continue
        except DekerLockError:  # busy: everything was released; start over
            continue
        for position in written:
            del tiles[position]
        return tiles, written
    raise DekerLockError(
        f"{what}: concurrent writers and clears kept changing its tiles while it tried to lock them"
    )


def read(
    ctx: StorageContext, index: TileIndex, bounds: Bounds, fill_value: Any, what: str
) -> np.ndarray[Any, Any]:
    """Read ``bounds`` of a VArray; absent tiles read as fill without being created.

    The output is allocated once; with a thread pool the tiles are read straight into it.

    Parameters
    ----------
    ctx : StorageContext
        The client's context (its runner runs the tasks).
    index : TileIndex
        The VArray's tiles.
    bounds : tuple
        Normalised bounds of the region.
    fill_value : Any
        The value empty cells read as.
    what : str
        The subset, for error messages.

    Returns
    -------
    numpy.ndarray
        The region (a 0-d array for a single cell).
    """
    out = np.empty(selection_shape(bounds), dtype=index.schema.dtype)
    pieces = tile_pieces(bounds, index.schema.arrays_shape)
    tiles = index.ids(p.position for p in pieces)
    todo: list[tuple[TilePiece, str]] = []
    for piece in pieces:
        tid = tiles.get(piece.position)
        if tid is None:
            out[piece.out] = fill_value
        else:
            todo.append((piece, tid))
    runner = ctx.runner
    size, limit = task_plan(runner, index, len(todo), out.nbytes)
    if runner.in_process:
        calls = [(index.for_tile(tid), p.local, out, p.out) for p, tid in todo]
        results: list[Any] = list(runner.run_all(read_piece_into, calls, batch_size=size, max_parallel=limit))
    else:  # each piece goes into ``out`` as it arrives: the answer is never here twice

        def place(i: int, piece: np.ndarray[Any, Any]) -> None:
            out[todo[i][0].out] = piece

        remote = [(index.for_tile(tid), p.local) for p, tid in todo]
        each = out.nbytes // max(1, len(todo))
        results = runner.run_into(read_piece, remote, place, batch_size=size, result_bytes=each)
    failures = [
        (piece.position, res) for (piece, _), res in zip(todo, results, strict=True) if res is not None
    ]
    raise_group(f"Reading {what} failed in {len(failures)} tile(s)", failures)
    return out


def compact_for_transport(chunk: Any) -> Any:
    """Return the smallest form of an update's piece that broadcasts back to it.

    A scalar update (or data smaller than the region) is a broadcast view with zero strides:
    copying it would make a whole tile of equal values, to be pickled, scattered and sent to a
    worker.  Instead the task gets a numpy scalar (every cell equal) or the distinct values
    (length 1 on each broadcast axis), and :func:`deker.tasks.write_piece_broadcast` broadcasts
    them on arrival.  Other pieces are made contiguous.

    Parameters
    ----------
    chunk : numpy.ndarray or numpy scalar
        A piece of the prepared update data.

    Returns
    -------
    numpy.ndarray or numpy scalar
        What the task receives.
    """
    if not isinstance(chunk, np.ndarray):
        return chunk
    if chunk.size > 1 and 0 in chunk.strides:
        index = tuple(slice(0, 1) if step == 0 else slice(None) for step in chunk.strides)
        small = np.ascontiguousarray(chunk[index])
        if small.size == 1:
            return small.dtype.type(small.reshape(-1)[0])
        return small
    if not chunk.flags.c_contiguous:
        return np.ascontiguousarray(chunk)
    return chunk


def update(
    ctx: StorageContext,
    index: TileIndex,
    bounds: Bounds,
    prepared: np.ndarray[Any, Any] | np.generic,
    values: dict[str, Any],
    what: str,
) -> None:
    """Write ``prepared`` into ``bounds`` of a VArray (upsert), creating the missing tiles.

    Parameters
    ----------
    ctx, index, bounds
        As for :func:`read` (its runner runs the tasks).
    prepared : numpy.ndarray or numpy scalar
        The data, of the VArray's dtype and the region's shape (or a scalar).
    values : dict
        The VArray's attribute values (new tiles' time axes start from them).
    what : str
        The subset, for error messages.

    Raises
    ------
    DekerVSubsetError
        Some tiles failed: it holds their exceptions; the other tiles were written.
    """
    pieces = tile_pieces(bounds, index.schema.arrays_shape)
    token = new_token()
    runner = ctx.runner
    in_process = runner.in_process

    def chunk_of(piece: TilePiece) -> Any:
        return prepared if isinstance(prepared, np.generic) else prepared[piece.out]

    # With threads, a missing tile covered entirely is created holding its data (one file
    # written once); elsewhere the data is written by the tile tasks, on the workers, and it
    # is compacted (and scattered to Dask workers) in a thread while the tiles are created.
    payloads = {p.position: chunk_of(p) for p in pieces if p.full} if in_process else None
    shipment = (
        None if in_process else runner.ship(lambda: [compact_for_transport(chunk_of(p)) for p in pieces])
    )
    try:
        with storage_errors(index.varray_file), VArrayWriteLock(ctx.locks, token) as lock:
            positions = [p.position for p in pieces]
            tiles, written = lock_tiles(lock, index, positions, values, payloads, runner=runner, what=what)
            todo = [(n, p) for n, p in enumerate(pieces) if p.position not in written]
            compact = shipment.values() if shipment is not None else None
            calls = []
            task: Any = write_piece
            for n, p in todo:
                chunk = piece = chunk_of(p)  # (threads copy their own piece, in parallel)
                if compact is not None:
                    chunk = compact[n]
                    if isinstance(chunk, np.ndarray) and chunk.shape != np.shape(piece):
                        task = write_piece_broadcast  # distinct values only: broadcast on arrival
                calls.append((index.for_tile(tiles[p.position]), p.local, chunk, token))
            size, limit = task_plan(runner, index, len(calls))
            results = runner.run_all(task, calls, batch_size=size, max_parallel=limit, shipment=shipment)
    except BaseException:
        if shipment is not None:
            shipment.abandon()  # e.g. the lock timed out: send the workers no more data
        raise
    failures = [
        (p.position, r) for (_, p), r in zip(todo, results, strict=True) if isinstance(r, BaseException)
    ]
    raise_group(f"Updating {what} failed in {len(failures)} tile(s); the other tiles were written", failures)


def _clear_tasks(
    ctx: StorageContext, index: TileIndex, work: list[tuple[Position, str, Bounds, bool]], token: str
) -> list[Any]:
    """Run the clear tasks of tiles the operation holds locked; return their results."""
    calls = [(index.for_tile(tid, pos), local, full, token) for pos, tid, local, full in work]
    runner = ctx.runner
    size, limit = task_plan(runner, index, len(calls))
    return list(runner.run_all(clear_piece, calls, batch_size=size, max_parallel=limit))


def _forget_deleted(
    index: TileIndex, work: list[tuple[Position, str, Bounds, bool]], results: list[Any]
) -> list[tuple[Position, BaseException]]:
    """Forget the tiles the clear tasks deleted (once their locks are released); return the failures."""
    failures = []
    for (pos, tid, _, _), res in zip(work, results, strict=True):
        if res is True:
            index.forget(tid, pos)
        elif isinstance(res, BaseException):
            failures.append((pos, res))
    return failures


def clear(ctx: StorageContext, index: TileIndex, bounds: Bounds, what: str) -> None:
    """Reset ``bounds`` of a VArray to the fill value; tiles covered entirely are deleted.

    The caller skips a region without tiles (it would only take and release the lock).

    Parameters
    ----------
    ctx, index, bounds, what
        As for :func:`update`.
    """
    every = tile_pieces(bounds, index.schema.arrays_shape)
    token = new_token()
    with storage_errors(index.varray_file), VArrayWriteLock(ctx.locks, token) as lock:
        tiles, _written = lock_tiles(lock, index, [p.position for p in every], None, what=what)
        work = [(p.position, tiles[p.position], p.local, p.full) for p in every if p.position in tiles]
        results = _clear_tasks(ctx, index, work, token)
    failures = _forget_deleted(index, work, results)
    raise_group(f"Clearing {what} failed in {len(failures)} tile(s)", failures)


def delete_tiles(ctx: StorageContext, index: TileIndex, tiles: Iterable[tuple[Position, str]]) -> None:
    """Delete the tiles ``tiles`` (position, id), each under its write lock.

    Raises
    ------
    BaseException
        The first failure of a tile, as it is.
    """
    listed = list(tiles)
    if not listed:
        return
    token = new_token()
    full: Bounds = tuple(slice(0, s) for s in index.schema.arrays_shape)
    with storage_errors(index.varray_file), VArrayWriteLock(ctx.locks, token) as lock:
        missing = lock.acquire([index.lock_key(tid) for _, tid in listed])
        gone = {tid for _, tid in missing}  # deleted by a concurrent clear meanwhile
        work = [(pos, tid, full, True) for pos, tid in listed if tid not in gone]
        results = _clear_tasks(ctx, index, work, token)
    failures = _forget_deleted(index, work, results)
    if failures:
        raise failures[0][1]
