"""Write a dask array into a VArray, VSubset, Array or Subset.

The plan (built on the client, no data moves):

- **VArray targets.**  The source is not rechunked onto the tiles.  Each touched tile's block
  is cut out of the source chunks it overlaps, and the tiles are batched into tasks
  (:func:`deker_dask.graph_tasks.store_tiles`: about :data:`TASK_BYTES` of tiles per task, at least
  :data:`MIN_TASKS` tasks per store); a task's dependencies are the chunks its tiles overlap,
  which Dask computes on, or moves to, the worker that runs it.  For each of its tiles the task
  creates the tile if it is missing (race-free, under deker's creation lock), takes that tile's
  write lock with a token of its own, writes and releases.  There is no global lock: two
  stores, or a store and a ``VSubset.update``, touching one tile wait for each other on that
  tile only (up to the lock timeout of the client that opened the target, then
  :class:`~deker.errors.DekerLockError`).
- **Array targets.**  An Array is one file: its blocks are written by a chain of tasks, one
  after the other, each under the Array's write lock, so they never wait for each other and
  only one block needs to be in memory at a time.

Task keys are unique to each call (never cached or merged by the scheduler); each task can
run again after a worker died and leaves the same content.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import os
import sys
import types
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import dask.array as da
import numpy as np
from dask.array.utils import meta_from_array
from dask.core import flatten
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from deker.arrays import Array, VArray
from deker.dtypes import casts_exactly
from deker.errors import DekerArrayTypeError, DekerValidationError
from deker.indexing import bounds_to_str
from deker.storage.arrayfile import Bounds
from deker.subset import Subset, VSubset
from deker.tiling import tile_pieces
from deker_dask.geometry import grid, regions
from deker_dask.graph_tasks import Owner, TilePlan, cast_block, finish, store_array_block, store_tiles
from deker_dask.handles import Target, resolve
from deker_dask.lazy import TileReader
from deker_dask.progress import compute_with_progress, progress_enabled

__all__ = ["store"]

logger = logging.getLogger(__name__)


def _source(source: Any, target: Target) -> da.Array:
    if not isinstance(source, da.Array):
        values = np.asarray(source)
        if values.dtype.kind not in "biufc":  # (dask's own chunking of object data fails obscurely)
            raise DekerArrayTypeError(
                f"Cannot store {values.dtype} data into {target.obj!r}: the source must hold numbers"
            )
        source = da.asarray(values)  # type: ignore[no-untyped-call]
    src: da.Array = source
    if any(math.isnan(c) for dim in src.chunks for c in dim):
        raise DekerValidationError(
            "The source has unknown chunk sizes: call compute_chunk_sizes() on it before storing it"
        )
    if tuple(src.shape) != target.shape:
        raise DekerValidationError(
            f"Cannot store an array of shape {tuple(src.shape)} into {target.obj!r} region of shape "
            f"{target.shape}: the shapes must be equal"
        )
    dtype = target.dtype
    if src.dtype == dtype:
        return src
    if not casts_exactly(src.dtype, dtype):
        raise DekerArrayTypeError(
            f"Cannot store {src.dtype} data into an array of dtype {dtype} without changing values: "
            f"convert it first (source.astype({dtype.name!r}))"
        )
    # each chunk converted once, from the dtype it really has (not dask's astype)
    meta = np.empty((0,) * src.ndim, dtype=dtype)
    cast: da.Array = da.map_blocks(  # type: ignore[no-untyped-call]
        cast_block, src, dtype.str, src.dtype.str, dtype=dtype, meta=meta
    )
    return cast


#: The attributes that hold more of a graph (dask's task objects: func, args, kwargs, a data
#: node's value; xarray's lazy-indexing wrappers: array).  A task's function may hold a read
#: too: ``delayed(v[0:4].read)()`` (a bound method), ``map_blocks(partial(f, v[:]))``.
_INNER = ("func", "args", "kwargs", "value", "array")
_SEQUENCE, _MAPPING, _READER, _DEKER, _BACKEND = "sequence", "mapping", "reader", "deker", "backend"
#: What :func:`_reads` does with an item, by type: one of the kinds above, or the attributes to
#: look into (none: a leaf).
_kinds: dict[type, str | tuple[str, ...]] = {}
_MISSING = object()


def _inner(item: Any, name: str, default: Any = None) -> Any:
    """Return ``item.name``, or ``default`` where it has none (or a foreign object fails to say)."""
    try:
        return getattr(item, name, default)
    except Exception:  # (a proxy's __getattr__ may raise anything: it holds no deker read then)
        return default


def _kind_of(item: Any, backend: Any) -> str | tuple[str, ...]:
    found = _kinds.get(type(item))
    if found is not None:
        return found
    if isinstance(item, (str, bytes, int, float, complex, slice, np.ndarray, np.generic)):
        found = ()
    elif isinstance(item, (tuple, list)):
        found = _SEQUENCE
    elif isinstance(item, Mapping):
        found = _MAPPING
    elif isinstance(item, TileReader):
        found = _READER
    elif isinstance(item, functools.partial):
        found = ("func", "args", "keywords")
    elif isinstance(item, types.MethodType):
        found = ("__self__",)
    elif isinstance(item, (Array, VArray, Subset, VSubset)):
        found = _DEKER
    elif backend is not None and isinstance(item, backend.DekerBackendArray):
        found = _BACKEND
    else:
        found = tuple(n for n in _INNER if _inner(item, n, _MISSING) is not _MISSING)
    _kinds[type(item)] = found
    return found


def _reads(values: Iterable[Any]) -> Iterator[tuple[Any, Owner | None, Bounds]]:
    """Yield the deker arrays graph values read (key, owner and region), looking inside tasks.

    The readers are deker_dask's :class:`~deker_dask.lazy.TileReader` (a key of its own in a
    graph, or inlined into the tasks of an optimized one), the xarray backend's array, under
    xarray's lazy-indexing wrappers (each holds the next one as ``.array``), and any deker
    Array, VArray or subset a task is given (``delayed(read)(v[:])``).
    """
    backend = sys.modules.get("deker.xarray_backend")  # (its arrays exist only once it is imported)
    seen: set[int] = set()
    for key, value in values:
        stack = [value]
        while stack:
            item = stack.pop()
            kind = _kind_of(item, backend)
            if kind == () or id(item) in seen:
                continue
            seen.add(id(item))
            if kind is _SEQUENCE:
                stack.extend(item)
            elif kind is _MAPPING:
                stack.extend(item.values())
            elif kind is _READER:
                for owner, region in item.reads():
                    yield key, owner, region
            elif kind is _DEKER:
                target = resolve(item)
                yield key, target.owner(), target.bounds
            elif kind is _BACKEND:
                stack.extend(item.items)
            else:
                stack.extend(_inner(item, name) for name in kind)


def _meets(a: Bounds, b: Bounds) -> bool:
    """Whether two regions of one array (ints and step-1 slices, same dimensions) share a cell."""
    for x, y in zip(a, b, strict=True):
        lo_x, hi_x = (x, x + 1) if isinstance(x, int) else (int(x.start), int(x.stop))
        lo_y, hi_y = (y, y + 1) if isinstance(y, int) else (int(y.start), int(y.stop))
        if max(lo_x, lo_y) >= min(hi_x, hi_y):
            return False
    return True


def _same_object(a: Owner, b: Owner) -> bool:
    """Whether two owners are one Array or VArray, seen through any path or mount of its storage.

    Its file is the same inode: through a symlink or a bind mount, the same device too; through
    another mount of a network filesystem (another device), the storage id says it is the same
    storage.  A copy of the storage (a backup, with the same ids) is another object.
    """
    if a.relative != b.relative:
        return False
    try:
        first = os.stat(os.path.join(a.root, a.relative))
        second = os.stat(os.path.join(b.root, b.relative))
    except OSError:  # (gone: compare where they are)
        return os.path.realpath(a.root) == os.path.realpath(b.root)
    if first.st_ino != second.st_ino:
        return False
    return first.st_dev == second.st_dev or (a.storage_id is not None and a.storage_id == b.storage_id)


def _refuse_reading_target(src: da.Array, target: Target) -> None:
    """Refuse a source that reads cells of the region the store writes.

    Nothing orders a cell's reads before the task that rewrites it (``store(to_dask(v)[::-1],
    v)`` read tiles another task had already rewritten), and when a worker dies Dask
    recomputes the lost results, re-reading cells already rewritten (so even an elementwise
    ``to_dask(v) * 2`` would double some tiles twice).  No store can be both in place and
    correct, so it is refused before anything is written.
    """
    own = target.owner()
    if own is None:
        return
    for key, owner, region in _reads(dict(src.__dask_graph__()).items()):
        if owner is None or not _same_object(owner, own):
            continue
        if _meets(region, target.bounds):
            where = bounds_to_str(region, target.obj.shape)
            raise DekerValidationError(
                f"Cannot store into {target.obj!r}: the source reads it ({where}, "
                f"graph key {key!r}), which the store rewrites.  Dask may run a tile's write "
                "before another task reads that tile, and recomputes lost results from "
                "rewritten cells after a worker dies.  Store into another VArray or Array, read "
                "only cells the store does not write (to_dask(obj[...])), or compute the source "
                "first when it fits in memory (store(source.compute(), target))"
            )


#: A store task writes tiles until it holds about this many bytes of them (small tiles are
#: batched; a tile larger than this is a task of its own).
TASK_BYTES = 4 * 1024 * 1024

#: ... but a store of many small tiles keeps at least this many tasks, so that every worker
#: thread of a cluster gets work.
MIN_TASKS = 16


def _batch_size(n_tiles: int, tile_bytes: int) -> int:
    by_bytes = max(1, TASK_BYTES // max(1, tile_bytes))
    by_tasks = max(1, n_tiles // MIN_TASKS)
    return max(1, min(by_bytes, by_tasks))


#: (source block index, slices taken from it, where they go in the tile's block)
_Piece = tuple[tuple[int, ...], tuple[slice, ...], tuple[slice, ...]]


def _overlaps(offsets: np.ndarray[Any, Any], lo: int, hi: int) -> range:
    """Return the source chunks (along one axis) that overlap ``[lo, hi)``."""
    first = int(np.searchsorted(offsets, lo, side="right")) - 1
    last = int(np.searchsorted(offsets, hi, side="left")) - 1
    return range(first, last + 1)


def _plan_varray(src: da.Array, target: Target, name: str) -> tuple[da.Array, dict[Any, Any], list[Any]]:
    session = target.session()
    tile = target.tile_shape
    g = grid(target.bounds, tile)
    slice_dims = [d for d, b in enumerate(target.bounds) if isinstance(b, slice)]
    starts = [int(target.bounds[d].start) for d in slice_dims]  # type: ignore[union-attr]
    offsets = [np.cumsum((0, *c)) for c in src.chunks]
    index = target.tiles().on_worker()
    values = target.values
    # per tile: its position, local bounds and (source block, take, put) pieces
    tiles: list[tuple[tuple[int, ...], Any, list[_Piece]]] = []
    for _index, region in regions(g):
        (piece,) = tile_pieces(region, tile)
        spans = [  # the region in source coordinates, per slice dimension
            (int(region[d].start) - s, int(region[d].stop) - s)  # type: ignore[union-attr]
            for d, s in zip(slice_dims, starts, strict=True)
        ]
        pieces: list[_Piece] = []
        for block in itertools.product(
            *(_overlaps(off, lo, hi) for off, (lo, hi) in zip(offsets, spans, strict=True))
        ):
            take: list[slice] = []
            put: list[slice] = []
            for axis, k in enumerate(block):
                lo, hi = spans[axis]
                c_lo, c_hi = int(offsets[axis][k]), int(offsets[axis][k + 1])
                a, b = max(lo, c_lo), min(hi, c_hi)
                take.append(slice(a - c_lo, b - c_lo))
                put.append(slice(a - lo, b - lo))
            pieces.append((tuple(block), tuple(take), tuple(put)))
        tiles.append((piece.position, piece.local, pieces))
    itemsize = np.dtype(target.dtype).itemsize
    size = _batch_size(len(tiles), math.prod(tile) * itemsize)
    dsk: dict[Any, Any] = {}
    keys: list[Any] = []
    for n in range(0, len(tiles), size):
        blocks: list[tuple[int, ...]] = []
        where: dict[tuple[int, ...], int] = {}
        plans: list[TilePlan] = []
        for position, local, tile_pieces_ in tiles[n : n + size]:
            for block, _, _ in tile_pieces_:
                if block not in where:
                    where[block] = len(blocks)
                    blocks.append(block)
            plans.append(TilePlan(position, local, tuple((where[b], t, p) for b, t, p in tile_pieces_)))
        key = (name, n // size)
        dsk[key] = (store_tiles, index, values, tuple(plans), [(src.name, *b) for b in blocks], session)
        keys.append(key)
    return src, dsk, keys


def _plan_array(src: da.Array, target: Target, name: str) -> tuple[da.Array, dict[Any, Any], list[Any]]:
    spec = target.array_spec()
    session = target.session()
    slice_dims = [d for d, b in enumerate(target.bounds) if isinstance(b, slice)]
    offsets = [np.cumsum((0, *c)) for c in src.chunks]
    dsk: dict[Any, Any] = {}
    keys: list[Any] = []
    previous: Any = None
    for n, index in enumerate(np.ndindex(*src.numblocks)):
        bounds: list[int | slice] = list(target.bounds)
        for axis, d in enumerate(slice_dims):
            start = target.bounds[d].start  # type: ignore[union-attr]
            lo, hi = offsets[axis][index[axis]], offsets[axis][index[axis] + 1]
            bounds[d] = slice(int(start + lo), int(start + hi))
        key = (name, n)
        dsk[key] = (store_array_block, spec, tuple(bounds), (src.name, *index), previous, session)
        keys.append(key)
        previous = key
    return src, dsk, keys


def _optimized(src: da.Array) -> da.Array:
    """Return ``src`` with dask's array optimizations applied to its graph (keys unchanged).

    The store's graph is computed as a ``Delayed``, whose optimizer does not fuse blockwise
    array layers: without this, every elementwise step of a computed source (``((y * 31 + x *
    17) % 1009).astype(np.float32)`` has four) would run as a task of its own per chunk, each
    result kept until the next step ran.  :func:`dask.array.store` optimizes its sources the
    same way.
    """
    keys = list(flatten(src.__dask_keys__()))  # type: ignore[no-untyped-call]
    optimized = src.__dask_optimize__(src.__dask_graph__(), keys)
    graph = HighLevelGraph.from_collections(src.name, optimized, dependencies=())  # one layer, the array's
    meta = meta_from_array(src)  # type: ignore[no-untyped-call]
    out: da.Array = da.Array(graph, src.name, src.chunks, meta=meta)  # type: ignore[no-untyped-call]
    return out


def store(
    source: Any,
    target: Any,
    *,
    compute: bool = True,
    progress: bool | None = None,
    **compute_kwargs: Any,
) -> Delayed | None:
    """Write a dask array into a deker VArray, VSubset, Array or Subset of the same shape.

    Parameters
    ----------
    source : dask.array.Array or array-like
        The data (a numpy array is wrapped); its dtype must cast exactly to the target's
        (:func:`deker.dtypes.casts_exactly`: no value may change).
    target : VArray, VSubset, Array or Subset
        Where to write; its shape (integer-indexed dimensions dropped) must equal the source's.
    compute : bool, default True
        Write now (with the current dask scheduler, or ``compute_kwargs``); otherwise return a
        :class:`dask.delayed.Delayed` that writes when computed and yields the number of cells
        written (blocks of fill values for absent tiles write nothing).
    progress : bool or None
        When ``compute`` is True: a progress bar on stderr counting the write tasks (True),
        none (False), or one only when stderr is a terminal (None, the default).  See
        :mod:`deker_dask.progress`.
    **compute_kwargs
        Passed to :func:`dask.compute` (e.g. ``scheduler=``).

    Returns
    -------
    dask.delayed.Delayed or None
        The delayed write when ``compute`` is False.

    Raises
    ------
    DekerValidationError
        If the shapes differ, the source has unknown chunk sizes, or it reads cells of the
        region it would write (an in-place store: docs/cluster.md says why).
    DekerArrayTypeError
        If the source dtype does not cast exactly to the target's.
    DekerInstanceNotExistsError
        If the target was deleted (now, or while tasks ran).
    DekerLockError
        If another writer kept a tile (or the Array) locked longer than the lock timeout.
    DekerClientError
        If the client is closed, now or when the delayed write is computed.
    DekerReadOnlyError
        If the client is read-only (nothing is built, nothing written).
    """
    show = progress_enabled(progress)  # a wrong value is refused before anything is built
    tgt = resolve(target)
    tgt.check()
    ctx = tgt.obj.storage_context
    ctx.check_writable(f"store into {tgt.obj!r}")  # before any task is built
    ctx.ensure_storage_id()  # the tasks prove they see this storage (a 1.1.7 one gets an id now)
    src = _source(source, tgt)
    _refuse_reading_target(src, tgt)
    token = uuid.uuid4().hex
    name = f"deker-store-{token}"
    done = f"deker-store-done-{token}"
    if math.prod(tgt.shape) == 0:
        dsk: dict[Any, Any] = {}
        keys: list[Any] = []
    elif tgt.is_varray:
        src, dsk, keys = _plan_varray(src, tgt, name)
    else:
        src, dsk, keys = _plan_array(src, tgt, name)
    dsk[done] = (finish, keys)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[_optimized(src)])  # type: ignore[list-item]
    delayed = Delayed(done, graph, layer=name)  # type: ignore[no-untyped-call]
    logger.debug("store into %r: %d write tasks", tgt.obj, len(keys))
    if not compute:
        return delayed
    compute_with_progress(delayed, keys, progress=show, desc="deker store", **compute_kwargs)
    return None
