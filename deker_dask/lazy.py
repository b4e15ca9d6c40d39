"""Lazy dask arrays over deker Arrays, VArrays, their subsets and whole collections.

The graph is built directly, one task per chunk, from what exists on disk when it is built:

- a VArray chunk is one tile (or a block of ``tiles_per_chunk`` tiles); a tile that does not
  exist becomes a fill-value chunk made without any I/O (:func:`deker_dask.graph_tasks.fill_chunk`);
- an Array chunk is the whole array, or a block aligned on the collection's HDF5 chunks;
- every read task opens its file on the worker that runs it and takes the file's read lock
  there (:func:`deker.tasks.read_piece`); only the chunk travels back.

The graph is a snapshot of which tiles exist: a tile created later reads as fill through it,
and so does a tile deleted later.  Its name is deterministic: a token of the storage location,
the ids, the region, the chunking and a data version (the set of existing files with their
``mtime``, ``ctime``, size and inode).  A write changes the version, hence the name, so Dask
never reuses a result computed before it.  (Filesystems whose timestamps are coarser than the
interval between two writes of one file, e.g. Linux before 6.13, may keep a name across a
write that changes neither the size nor the inode of any file: pass ``name=False`` for a
unique name then.)
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.array.core import normalize_chunks
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from dask.utils import parse_bytes

from deker.collection import Collection
from deker.errors import DekerValidationError
from deker.storage.arrayfile import Bounds, selection_shape
from deker.tasks import FileSpec
from deker.tiling import tile_pieces
from deker_dask.geometry import chunks_of, grid, regions
from deker_dask.graph_tasks import Part, Session, fill_chunk, read_chunk, read_region
from deker_dask.handles import Target, collection_items, resolve

__all__ = ["TARGET_CHUNK_BYTES", "from_collection", "to_dask"]

logger = logging.getLogger(__name__)

#: ``from_collection`` groups small tiles of consecutive arrays until a chunk holds about this much.
TARGET_CHUNK_BYTES = 32 * 1024 * 1024

Files = dict[tuple[int, ...], FileSpec]


# ----------------------------------------------------------------------------- tasks


def _parts(files: Files, region: Bounds, tile: tuple[int, ...], prefix: tuple[int, ...] = ()) -> list[Part]:
    """Return the existing files' pieces of ``region``, each with its place in the chunk."""
    return [
        (files[p.position], p.local, prefix + p.out) for p in tile_pieces(region, tile) if p.position in files
    ]


def _task(
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
    fill: Any,
    parts: list[Part],
    stacked: bool,
    session: Session,
) -> tuple[Any, ...]:
    if not parts:
        return (fill_chunk, shape, dtype.str, fill, session)
    if not stacked and len(parts) == 1 and selection_shape(parts[0][1]) == shape:
        return (read_region, parts[0][0], parts[0][1], session)
    return (read_chunk, shape, dtype.str, fill, tuple(parts), session)


def _meta(ndim: int, dtype: np.dtype[Any]) -> np.ndarray:
    return np.empty((0,) * ndim, dtype=dtype)


# ----------------------------------------------------------------------------- chunking rules


def _per_dim(value: int | Sequence[int], ndim: int, what: str) -> tuple[int, ...]:
    values = (value,) * ndim if isinstance(value, (int, np.integer)) else tuple(value)
    if len(values) != ndim or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in values
    ):
        raise DekerValidationError(
            f"{what} must be a positive int or one positive int per dimension, not {value!r}"
        )
    return tuple(int(v) for v in values)


def _round_to(step: int, unit: int) -> int:
    return max(1, round(step / unit)) * unit


def _array_steps(target: Target, chunks: Any) -> tuple[int, ...]:
    """Chunk sizes of an Array along every dimension (file coordinates, aligned on HDF5 chunks)."""
    shape = target.tile_shape
    hdf5 = target.hdf5_chunks
    limit = parse_bytes(str(_chunk_size_setting()))
    if chunks is None:
        nbytes = math.prod(target.shape) * target.dtype.itemsize
        if nbytes <= limit:
            return shape
        chunks = "auto"
    try:
        normal = normalize_chunks(  # type: ignore[no-untyped-call]
            chunks, shape, limit=limit, dtype=target.dtype, previous_chunks=hdf5 if hdf5 else None
        )
    except (ValueError, TypeError, NotImplementedError) as exc:
        raise DekerValidationError(f"Invalid chunks {chunks!r} for an Array of shape {shape}: {exc}") from exc
    steps = tuple(max(1, c[0]) for c in normal)
    if hdf5:
        steps = tuple(min(s, _round_to(st, h)) for st, h, s in zip(steps, hdf5, shape, strict=True))
    return steps


def _chunk_size_setting() -> Any:
    return dask.config.get("array.chunk-size", "128MiB")


def _steps(target: Target, tiles_per_chunk: Any, chunks: Any) -> tuple[int, ...]:
    if target.is_varray:
        if chunks is not None:
            raise DekerValidationError(
                "A VArray is chunked by tiles: use tiles_per_chunk (an int or one int per dimension), "
                "not chunks"
            )
        per = _per_dim(
            1 if tiles_per_chunk is None else tiles_per_chunk, len(target.tile_shape), "tiles_per_chunk"
        )
        return tuple(t * n for t, n in zip(target.tile_shape, per, strict=True))
    if tiles_per_chunk is not None:
        raise DekerValidationError("tiles_per_chunk applies to VArrays; chunk an Array with chunks=")
    return _array_steps(target, chunks)


def _name(prefix: str, name: Any, *token_parts: Any) -> str:
    if name is False:
        return f"{prefix}-{uuid.uuid4().hex}"
    if name is None:
        return f"{prefix}-{tokenize(*token_parts)}"
    if isinstance(name, str) and name:
        return name
    raise DekerValidationError(
        f"name must be None (deterministic), False (unique) or a non-empty str, not {name!r}"
    )


# ----------------------------------------------------------------------------- public API


def _build(
    target: Target, tiles_per_chunk: Any, chunks: Any, name: Any, bounds: Bounds | None = None
) -> da.Array:
    target.check()
    bounds = target.bounds if bounds is None else bounds
    steps = _steps(target, tiles_per_chunk, chunks)
    files, version = target.files()
    g = grid(bounds, steps)
    kind = "varray" if target.is_varray else "array"
    key = _name(f"deker-{kind}", name, target.identity(), bounds, steps, version)
    dtype, fill, tile = target.dtype, target.fill_value, target.tile_shape
    session = target.session()
    dsk: dict[Any, Any] = {}
    for index, region in regions(g):
        chunk_key = (key, *index)
        parts = _parts(files, region, tile)
        dsk[chunk_key] = _task(selection_shape(region), dtype, fill, parts, False, session)
    graph = HighLevelGraph.from_collections(key, dsk, dependencies=())
    chunk_shape = chunks_of(g)
    return da.Array(  # type: ignore[no-untyped-call]
        graph, key, chunk_shape, dtype=dtype, meta=_meta(len(chunk_shape), dtype)
    )


def to_dask(
    obj: Any,
    *,
    tiles_per_chunk: int | Sequence[int] | None = None,
    chunks: Any = None,
    name: str | bool | None = None,
) -> da.Array:
    """Return a lazy dask array over an Array, VArray, Subset or VSubset.

    Nothing is read now: the tiles that exist are listed (and their files stat'ed, for the
    name).  Chunks of absent tiles are fill values made without I/O; the others are read on
    the workers when computed.

    Parameters
    ----------
    obj : Array, VArray, Subset or VSubset
        What to read.  A subset's integer-indexed dimensions are dropped, like ``read()``.
    tiles_per_chunk : int or sequence of int, optional
        VArrays only: how many tiles along each dimension make one chunk (default 1: one chunk
        per tile).  Chunks are aligned on the tile grid, so a subset's first and last chunks
        may be smaller.
    chunks : optional
        Arrays only: by default the whole array is one chunk, or, above dask's
        ``array.chunk-size``, blocks of whole HDF5 chunks.  Anything
        :func:`dask.array.core.normalize_chunks` accepts (``"auto"``, an int, a tuple) gives
        regular chunk sizes, rounded to whole HDF5 chunks when the collection declares them,
        and aligned on them.
    name : str, False or None
        The graph name: None derives it from the storage location, ids, region, chunking and
        data version (it changes after a write); False makes a unique name; a string is used as is.

    Returns
    -------
    dask.array.Array
        Shape, dtype and content of ``obj.read()``.

    Raises
    ------
    DekerValidationError
        If ``obj`` is not a deker array or subset, or an option does not apply to it.
    DekerInstanceNotExistsError
        If the object was deleted.
    DekerClientError
        If the client is closed; also when the array is computed after the client that made
        it was closed (a graph already submitted to a cluster while it was open completes).
    """
    return _build(resolve(obj), tiles_per_chunk, chunks, name)


def _auto_group(n_items: int, chunk_bytes: int) -> int:
    return max(1, min(n_items, TARGET_CHUNK_BYTES // max(1, chunk_bytes)))


def from_collection(
    collection: Collection,
    *,
    tiles_per_chunk: int | Sequence[int] | None = None,
    chunks: Any = None,
    arrays_per_chunk: int | None = None,
    name: str | bool | None = None,
) -> da.Array:
    """Stack every Array (or VArray) of a collection into one lazy dask array.

    The new leading axis follows the order of the primary attributes (then ids).  Each chunk
    holds the same tile (or Array chunk) of ``arrays_per_chunk`` consecutive arrays, so there is
    one task per tile, grouped when tiles are small.

    Parameters
    ----------
    collection : Collection
        An Array or VArray collection (for a VArray collection its VArrays are stacked).
    tiles_per_chunk, chunks : optional
        The chunking of each array, as for :func:`to_dask`.
    arrays_per_chunk : int, optional
        How many consecutive arrays one chunk spans; by default as many as keep a chunk under
        :data:`TARGET_CHUNK_BYTES` (at least one).
    name : str, False or None
        As for :func:`to_dask`.

    Returns
    -------
    dask.array.Array
        Shape ``(number of arrays, *array shape)``.
    """
    return stack(
        collection,
        collection_items(collection),
        tiles_per_chunk=tiles_per_chunk,
        chunks=chunks,
        arrays_per_chunk=arrays_per_chunk,
        name=name,
    )


def stack(
    collection: Collection,
    items: Sequence[Any],
    *,
    tiles_per_chunk: Any = None,
    chunks: Any = None,
    arrays_per_chunk: int | None = None,
    name: Any = None,
) -> da.Array:
    """Stack ``items`` (arrays of ``collection``, in this order) as :func:`from_collection` does."""
    schema = collection.varray_schema or collection.array_schema
    dtype = np.dtype(schema.dtype)
    shape = tuple(schema.shape)
    if not items:
        empty: da.Array = da.full((0, *shape), schema.fill_value, dtype=dtype)  # type: ignore[no-untyped-call]
        return empty
    targets = [resolve(item) for item in items]
    first = targets[0]
    steps = _steps(first, tiles_per_chunk, chunks)
    g = grid(first.bounds, steps)
    cell_chunks = chunks_of(g)
    chunk_bytes = math.prod(max(c) for c in cell_chunks) * dtype.itemsize
    if arrays_per_chunk is None:
        group = _auto_group(len(items), chunk_bytes)
    else:
        group = _per_dim(arrays_per_chunk, 1, "arrays_per_chunk")[0]
    listing = []
    for target in targets:
        target.check()
        listing.append(target.files())
    versions = [(t.identity(), v) for t, (_, v) in zip(targets, listing, strict=True)]
    key = _name("deker-collection", name, first.root, collection.name, steps, group, versions)
    fill, tile = first.fill_value, first.tile_shape
    session = first.session()
    dsk: dict[Any, Any] = {}
    starts = range(0, len(items), group)
    for block, i0 in enumerate(starts):
        members = range(i0, min(i0 + group, len(items)))
        for index, region in regions(g):
            parts: list[Part] = []
            for k in members:
                parts.extend(_parts(listing[k][0], region, tile, (k - i0,)))
            shape_ = (len(members), *selection_shape(region))
            chunk_key = (key, block, *index)
            dsk[chunk_key] = _task(shape_, dtype, fill, parts, True, session)
    lead = tuple(min(group, len(items) - i0) for i0 in starts)
    graph = HighLevelGraph.from_collections(key, dsk, dependencies=())
    all_chunks = (lead, *cell_chunks)
    return da.Array(  # type: ignore[no-untyped-call]
        graph, key, all_chunks, dtype=dtype, meta=_meta(len(all_chunks), dtype)
    )


def build_keepdims(
    obj: Any, tiles_per_chunk: Any = None, chunks: Any = None, name: Any = None
) -> tuple[da.Array, Target]:
    """Like :func:`to_dask`, but integer-indexed dimensions stay, with length 1 (for xarray)."""
    target = resolve(obj)
    bounds = tuple(slice(b, b + 1) if isinstance(b, int) else b for b in target.bounds)
    return _build(target, tiles_per_chunk, chunks, name, bounds), target
