"""The functions deker_dask puts in Dask graphs: module-level, over plain picklable values.

A worker needs nothing but the installed packages: unpickling a task imports this module,
which imports :mod:`deker.tasks` and :mod:`deker.storage.hdf5` (registering the hdf5plugin
filters); every HDF5 file is opened with HDF5 file locking off; locks are deker's lockfiles,
taken by the task itself.

Every task carries the :class:`Session` of the client its graph was built from: a graph
computed after that client was closed raises :class:`~deker.errors.DekerClientError`, like
every other object of the client.

Reads (:func:`fill_chunk`, :func:`read_region`, :func:`read_chunk`) return numpy arrays.
Writes (:func:`store_tile`, :func:`store_array_block`) are idempotent: a task that runs twice
(a retry after a worker died) leaves the same content, and holds no lock when it ends, however
it ends (a killed worker's locks are dropped by the kernel and recovered by the next writer).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from deker.context import StorageContext
from deker.dtypes import convert_exactly
from deker.errors import DekerArrayTypeError, DekerClientError, DekerInstanceNotExistsError
from deker.pipeline import lock_tiles
from deker.storage.arrayfile import Bounds, count_fill, selection_shape
from deker.storage.locks import VArrayWriteLock, new_token
from deker.tasks import (
    FileSpec,
    check_storage,
    check_storage_at,
    read_piece,
    read_piece_into,
    resolve_root,
    write_array,
    write_piece,
)
from deker.tileindex import TileIndex

__all__ = [
    "Owner",
    "Part",
    "Session",
    "cast_block",
    "check_owner",
    "fill_chunk",
    "finish",
    "read_chunk",
    "read_region",
    "store_array_block",
    "store_tile",
    "store_tiles",
    "TilePlan",
]

logger = logging.getLogger(__name__)

#: One file's share of a chunk: the file, the bounds inside it, where it goes in the chunk.
Part = tuple[FileSpec, Bounds, tuple[Any, ...]]

# ----------------------------------------------------------------------------- session


class Session:
    """Whether the client a graph was built from is still open, as every task of it sees it.

    In the process of the client (the ``sync`` and ``threads`` schedulers) it asks the
    client's context each time.  Pickled (a graph submitted to a distributed cluster or to the
    ``processes`` scheduler), it carries the state of that moment, in the process that submits
    the graph: workers never see the client, and a graph submitted while the client is open
    runs to its end there.

    Parameters
    ----------
    ctx : StorageContext, optional
        The client's context; ``None`` for a copy on a worker.
    closed : bool, default False
        The state recorded when this copy was pickled.
    """

    __slots__ = ("_closed", "_ctx")

    def __init__(self, ctx: StorageContext | None = None, closed: bool = False) -> None:
        self._ctx = ctx
        self._closed = closed

    @property
    def closed(self) -> bool:
        """Whether the client was closed (when this copy was made, for a pickled copy)."""
        return self._closed or (self._ctx is not None and self._ctx.is_closed)

    def check(self) -> None:
        """Raise :class:`DekerClientError` ``"Client is closed"`` if the client was closed."""
        if self.closed:
            raise DekerClientError("Client is closed")

    def __reduce__(self) -> tuple[Any, ...]:
        return (Session, (None, self.closed))

    def __dask_tokenize__(self) -> Any:
        return ("deker_dask.Session", self.closed)

    def __repr__(self) -> str:
        return f"Session({'closed' if self.closed else 'open'})"


def _check(session: Session | None) -> None:
    if session is not None:
        session.check()


# ----------------------------------------------------------------------------- reads


def fill_chunk(
    shape: tuple[int, ...], dtype: str, fill_value: Any, session: Session | None = None
) -> np.ndarray[Any, Any]:
    """Return a chunk of fill values (an absent tile: no I/O).

    Parameters
    ----------
    shape : tuple of int
        The chunk shape.
    dtype : str
        The numpy dtype string.
    fill_value : Any
        The fill value.
    session : Session, optional
        The client's session (the task raises if the client was closed).

    Returns
    -------
    numpy.ndarray
        A new array full of ``fill_value``.
    """
    _check(session)
    return np.full(shape, fill_value, dtype=np.dtype(dtype))


def read_region(spec: FileSpec, bounds: Bounds, session: Session | None = None) -> np.ndarray[Any, Any]:
    """Read ``bounds`` of one file under its read lock (a chunk that is one file's piece).

    Parameters
    ----------
    spec, bounds
        As for :func:`deker.tasks.read_piece`.
    session : Session, optional
        As for :func:`fill_chunk`.

    Returns
    -------
    numpy.ndarray
        The piece (fill values if the file vanished meanwhile).
    """
    _check(session)
    return np.asarray(read_piece(spec, bounds))


def read_chunk(
    shape: tuple[int, ...],
    dtype: str,
    fill_value: Any,
    parts: Sequence[Part],
    session: Session | None = None,
) -> np.ndarray[Any, Any]:
    """Assemble a chunk from pieces of several files; cells no part covers are fill.

    Parameters
    ----------
    shape, dtype, fill_value, session
        As for :func:`fill_chunk`.
    parts : sequence of (FileSpec, bounds, out index)
        The existing files' pieces and where each goes in the chunk.

    Returns
    -------
    numpy.ndarray
        The chunk.
    """
    _check(session)
    dt = np.dtype(dtype)
    covered = sum(math.prod(selection_shape(bounds)) for _, bounds, _ in parts)
    out = np.empty(shape, dtype=dt) if covered >= math.prod(shape) else np.full(shape, fill_value, dt)
    for spec, bounds, index in parts:
        read_piece_into(spec, bounds, out, index)
    return out


@dataclass(frozen=True)
class Owner:
    """The Array or VArray a lazy read is of: its own file, to tell it deleted from absent tiles.

    Parameters
    ----------
    root : str
        The collections directory as the coordinator sees it (a worker may remap it).
    collection : str
        The collection name.
    relative : str
        The Array's data file or the VArray's metadata file, relative to ``root``.
    storage_id : str or None
        The storage id the coordinator knows.
    what : str
        The object, as messages name it.
    """

    root: str
    collection: str
    relative: str
    storage_id: str | None
    what: str


def check_owner(owner: Owner) -> None:
    """Raise if the object a lazy array reads was deleted since the graph was built.

    A missing tile reads as fill values; a missing Array or VArray is no answer at all (deker's
    own ``read()`` raises the same error).  A process that does not see the storage says so
    (:func:`deker.tasks.check_storage_at`) rather than call the object deleted.

    Parameters
    ----------
    owner : Owner
        The object.

    Raises
    ------
    DekerInstanceNotExistsError
        If its file is gone.
    DekerStorageError
        If this process does not see the storage.
    """
    if (resolve_root(owner.root) / owner.relative).exists():
        return
    check_storage_at(owner.root, owner.collection, owner.storage_id)
    raise DekerInstanceNotExistsError(f"{owner.what} was deleted after the lazy array over it was made")


# ----------------------------------------------------------------------------- writes


def _exactly(data: Any, dtype: np.dtype[Any], declared: np.dtype[Any]) -> np.ndarray[Any, Any]:
    """Return a block of the source as ``dtype``, refusing it if that changes any of its values.

    The store checked the dtype the source's dask array declares (``declared``, with
    :func:`deker.dtypes.casts_exactly`); a block's own dtype may still differ
    (``map_blocks(f, dtype=np.int8)`` with an ``f`` that returns int64), and numpy's cast would
    wrap 300 around to 44: such a block converts only when every value stays the same.
    """
    values = np.asarray(data)
    try:
        return convert_exactly(values, dtype, f"a block of the source ({values.dtype})")
    except DekerArrayTypeError as exc:
        raise DekerArrayTypeError(
            f"{exc}; the source's dask array declares {declared} but this block is {values.dtype}: "
            f"declare the dtype its blocks really have (map_blocks(..., dtype={values.dtype.name!r})), "
            f"or make the function that computes them return {declared}"
        ) from exc


def cast_block(block: Any, dtype: str, declared: str) -> np.ndarray[Any, Any]:
    """Return a block of a store's source converted to the target's dtype (a blockwise step).

    The store adds it to the source's graph when the declared dtype differs from the target's,
    in place of dask's ``astype`` (which would wrap the values of a block whose own dtype is
    not the declared one, before anything could check them): each chunk is converted once,
    where it is computed, from the dtype it really has, and refused if a value would change.

    Parameters
    ----------
    block : array-like
        The computed chunk.
    dtype, declared : str
        The target's dtype and the one the source declares (numpy dtype strings).

    Returns
    -------
    numpy.ndarray
        The chunk as ``dtype``.

    Raises
    ------
    DekerArrayTypeError
        If some value of the chunk changes when stored as ``dtype``.
    """
    return _exactly(block, np.dtype(dtype), np.dtype(declared))


def _as_block(data: Any, dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    # np.ascontiguousarray would make a 0-d block 1-d
    block = np.asarray(_exactly(data, dtype, dtype), order="C")
    if block.shape != shape:
        raise ValueError(f"A block of shape {block.shape} was produced for a region of shape {shape}")
    return block


def _all_fill(block: np.ndarray[Any, Any], fill_value: Any) -> bool:
    return count_fill(block, fill_value) == block.size


def store_tile(
    index: TileIndex,
    values: dict[str, Any],
    position: tuple[int, ...],
    local: Bounds,
    data: Any,
    session: Session | None = None,
) -> int:
    """Write one tile's block of a store: create the tile if missing, lock it, write, unlock.

    The tile goes through the tile pipeline's locking (:func:`deker.pipeline.lock_tiles`), with
    a token of this task's own; a task that runs again (a retry) takes a new one.  A block
    that covers the whole of a missing tile is created holding it (one file written once).
    A block that holds only fill values for a tile that does not exist writes nothing (the
    tile reads as fill already).

    Parameters
    ----------
    index : TileIndex
        The VArray's tiles, as this worker sees them (:meth:`TileIndex.on_worker`).
    values : dict
        The VArray's attribute values (a new tile's time axes start from them).
    position : tuple of int
        The tile's grid position.
    local : tuple
        Normalised bounds inside the tile.
    data : array-like
        The block (converted to the VArray dtype, which must not change values).
    session : Session, optional
        As for :func:`fill_chunk`.

    Returns
    -------
    int
        The number of cells written (0 when nothing had to be written).

    Raises
    ------
    DekerInstanceNotExistsError
        If the VArray was deleted.
    DekerLockError
        If another writer kept the tile locked longer than the lock timeout.
    """
    _check(session)
    schema = index.schema
    shape = selection_shape(local)
    block = _as_block(data, np.dtype(schema.dtype), shape)
    check_storage_at(index.root, index.meta.name, index.storage_id)  # a worker without it says so
    if not index.exists():
        raise DekerInstanceNotExistsError(
            f"VArray {index.vid} does not exist in collection {index.meta.name}"
        )
    if _all_fill(block, schema.fill_value) and not index.ids([position]):
        return 0
    whole = all(isinstance(b, slice) for b in local) and shape == tuple(schema.arrays_shape)
    token = new_token()
    with VArrayWriteLock(index.locks, token) as lock:
        what = f"Tile {position} of VArray {index.vid}"
        tiles, written = lock_tiles(
            lock, index, [position], values, {position: block} if whole else None, what=what
        )
        if position not in written:
            write_piece(index.for_tile(tiles[position]), local, block, token)
    return int(block.size)


def store_array_block(
    spec: FileSpec, bounds: Bounds, data: Any, previous: Any = None, session: Session | None = None
) -> int:
    """Write one block into an Array's file under the Array's write lock.

    An Array is one file: its blocks are chained (``previous`` is the result of the block
    written before) so that they never wait for each other's lock.

    Parameters
    ----------
    spec, bounds
        As for :func:`deker.tasks.write_array`.
    data : array-like
        The block.
    previous : Any
        Ignored: the dependency on the previous block's task.
    session : Session, optional
        As for :func:`fill_chunk`.

    Returns
    -------
    int
        The number of cells written.
    """
    _check(session)
    dtype = np.dtype(spec.dtype)
    shape = selection_shape(bounds)
    block = _as_block(data, dtype, shape)
    check_storage(spec)  # a worker without the storage says so (not "was deleted")
    try:
        write_array(spec, bounds, block)
    except FileNotFoundError as exc:
        raise DekerInstanceNotExistsError(f"Array {spec.array_id} was deleted: {spec.main_file}") from exc
    return int(block.size)


def finish(counts: Sequence[int]) -> int:
    """Return the total number of cells a store wrote (the last task of a store graph)."""
    return int(sum(counts))


@dataclass(frozen=True)
class TilePlan:
    """Where one tile's block of a store comes from: pieces of the source chunks it overlaps.

    Parameters
    ----------
    position : tuple of int
        The tile's grid position.
    local : tuple
        Normalised bounds inside the tile.
    pieces : tuple of (int, tuple of slice, tuple of slice)
        For each overlapping source chunk: its index among the task's chunks, the slices to
        take from that chunk and where they go in the tile's block.
    """

    position: tuple[int, ...]
    local: Bounds
    pieces: tuple[tuple[int, tuple[slice, ...], tuple[slice, ...]], ...]


def store_tiles(
    index: TileIndex,
    values: dict[str, Any],
    plans: Sequence[TilePlan],
    chunks: Sequence[Any],
    session: Session | None = None,
) -> int:
    """Write several tiles of a store, each assembled from the source chunks it overlaps.

    The source is not rechunked onto the tiles: the task gets the chunks its tiles overlap
    (as dask dependencies, computed or fetched by the worker that runs it) and copies each
    tile's block out of them; each tile is then written as :func:`store_tile` does (its own
    lock and token, created if missing).  Running it again (a retry) leaves the same content.

    Parameters
    ----------
    index, values
        As for :func:`store_tile`.
    plans : sequence of TilePlan
        The tiles of this task.
    chunks : sequence of array-like
        The source chunks the plans refer to (by index).
    session : Session, optional
        As for :func:`fill_chunk`.

    Returns
    -------
    int
        The number of cells written.
    """
    _check(session)
    dtype = np.dtype(index.schema.dtype)
    # (chunks arrive as the target's dtype, or as the declared one when that is the target's:
    # only a block that is neither is converted, all of them before any tile is written)
    arrays = [_exactly(c, dtype, dtype) for c in chunks]
    written = 0
    for plan in plans:
        shape = selection_shape(plan.local)
        if len(plan.pieces) == 1:
            i, take, _ = plan.pieces[0]
            block = arrays[i][take]  # (store_tile makes it contiguous)
        else:
            block = np.empty(shape, dtype=dtype)
            for i, take, put in plan.pieces:
                block[put] = arrays[i][take]
        written += store_tile(index, values, plan.position, plan.local, block, session)
    return written
