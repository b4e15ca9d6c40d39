"""Lazy dask arrays over deker Arrays, VArrays, their subsets and whole collections.

Every array is :func:`dask.array.from_array` over a :class:`TileReader`, which holds what
exists on disk when the array is built, so its read tasks form a blockwise layer that dask
fuses with the blockwise steps after it (a tile's read and its share of a reduction are one
task):

- a VArray chunk is one tile (or a block of ``tiles_per_chunk`` tiles); a tile that does not
  exist becomes a fill-value chunk made without any I/O (:func:`deker_dask.graph_tasks.fill_chunk`);
- an Array chunk is the whole array, or a block aligned on the collection's HDF5 chunks;
- a collection stacks its arrays along a new leading axis, ``arrays_per_chunk`` per chunk;
- every read task opens its file on the worker that runs it and takes the file's read lock
  there (:func:`deker.tasks.read_piece`); only the chunk (or what the fused steps make of it)
  travels back.

The graph is a snapshot of which tiles exist: a tile created later reads as fill through it,
and so does a tile deleted later; the Array or VArray itself deleted later makes every read
raise :class:`~deker.errors.DekerInstanceNotExistsError`
(:func:`deker_dask.graph_tasks.check_owner`), as deker's own ``read()`` does, rather than
answer fill values.  Its name is deterministic: a token of the storage location, the ids,
the region, the chunking and a data version (the set of existing files with their
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
from dask.utils import parse_bytes

from deker.collection import Collection
from deker.errors import DekerValidationError
from deker.storage.arrayfile import Bounds, selection_shape
from deker.tasks import FileSpec
from deker.tiling import tile_pieces
from deker_dask.geometry import chunks_of, grid
from deker_dask.graph_tasks import Owner, Part, Session, check_owner, fill_chunk, read_chunk, read_region
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


def _meta(ndim: int, dtype: np.dtype[Any]) -> np.ndarray[Any, Any]:
    return np.empty((0,) * ndim, dtype=dtype)


# ----------------------------------------------------------------------------- chunking rules


def _per_dim(value: int | Sequence[int], ndim: int, what: str) -> tuple[int, ...]:
    values: tuple[Any, ...] | None
    try:
        values = (value,) * ndim if isinstance(value, (int, np.integer)) else tuple(value)
    except TypeError:  # neither an int nor a sequence (a float, say)
        values = None
    if (
        values is None
        or len(values) != ndim
        or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in values)
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
    except (ValueError, TypeError, NotImplementedError, ZeroDivisionError) as exc:  # (chunks=0: division)
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


# ----------------------------------------------------------------------------- the reader


def _is_mask(k: Any) -> bool:
    if isinstance(k, np.ndarray):
        return k.dtype == bool and k.ndim > 0
    return isinstance(k, list) and bool(k) and all(isinstance(b, bool | np.bool_) for b in k)


def _expand(items: tuple[Any, ...], shape: tuple[int, ...]) -> tuple[Any, ...]:
    """Return ``items`` with one entry per dimension: Ellipsis filled, boolean masks as integer arrays."""
    ndim = len(shape)
    ellipses = [i for i, k in enumerate(items) if k is Ellipsis]  # (identity: == on arrays fails)
    if len(ellipses) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    used = sum(np.ndim(k) if _is_mask(k) else 1 for k in items if k is not Ellipsis)
    if used > ndim:
        raise IndexError(f"too many indices ({used}) for a lazy deker array of {ndim} dimensions")
    if ellipses:
        at = ellipses[0]
        items = (*items[:at], *(slice(None),) * (ndim - used), *items[at + 1 :])
    out: list[Any] = []
    for k in items:
        if _is_mask(k):  # a k-d mask: k integer arrays, as numpy reads it
            mask = np.asarray(k, dtype=bool)
            covered = shape[len(out) : len(out) + mask.ndim]
            if mask.shape != covered:
                raise IndexError(f"a boolean index of shape {mask.shape} does not match dimensions {covered}")
            out.extend(np.nonzero(mask))
        else:
            out.append(k)
    return (*out, *(slice(None),) * (ndim - len(out)))


def _cover(k: Any, n: int) -> tuple[int, int, Any]:
    """Return the cells ``[lo, hi)`` index ``k`` touches in ``n`` cells, and ``k`` minus ``lo``."""
    if isinstance(k, slice):
        cells = range(*k.indices(n))
        if not cells:
            return 0, 0, slice(0, 0)
        lo, hi = min(cells), max(cells) + 1
        stop = cells.stop - lo
        return lo, hi, slice(cells.start - lo, stop if stop >= 0 else None, cells.step)
    if isinstance(k, bool | np.bool_) or k is None:
        raise IndexError(f"a lazy deker array takes ints, slices and integer arrays, not {k!r}")
    if isinstance(k, int | np.integer):
        i = int(k) + n if k < 0 else int(k)
        if not 0 <= i < n:
            raise IndexError(f"index {int(k)} is out of bounds for a dimension of length {n}")
        return i, i + 1, 0
    try:
        idx = np.asarray(k)
    except (TypeError, ValueError) as exc:
        raise IndexError(f"a lazy deker array takes ints, slices and integer arrays, not {k!r}") from exc
    if idx.dtype.kind not in "iu" and not (idx.size == 0 and idx.dtype.kind == "f"):
        raise IndexError(f"a lazy deker array takes ints, slices and integer arrays, not {k!r}")
    idx = idx.astype(np.int64)
    if idx.ndim == 0:
        return _cover(int(idx), n)
    idx = np.where(idx < 0, idx + n, idx)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise IndexError(f"index {k!r} is out of bounds for a dimension of length {n}")
    if not idx.size:
        return 0, 0, idx
    lo = int(idx.min())
    return lo, int(idx.max()) + 1, idx - lo


class TileReader:
    """The array-like a lazy dask array over one Array or VArray region reads through.

    :func:`to_dask` hands it to :func:`dask.array.from_array`, so the read tasks form a
    blockwise layer, which dask fuses with the blockwise operations that follow: a tile's read
    and its share of a ``sum`` run as one task, and the tile is never kept as a task result of
    its own (with a graph of separate read tasks, every tile cost the cluster one more task
    and result).  Indexing it (ints, slices, integer and boolean arrays: numpy's semantics)
    reads the box that covers the cells asked for, through the task functions of
    :mod:`deker_dask.graph_tasks`: the existing files' pieces under their read locks, absent
    tiles as fill without any I/O.  Dask folds a later slice of the lazy array into that
    index (``fancy=True``), so ``to_dask(v)[:, 5]`` reads one column of each tile, not the
    tiles.  It holds only plain
    picklable values, the files that existed when the graph was built (a snapshot, as the
    module docstring says): on a distributed cluster it is one key of the graph, which each
    worker fetches once.

    With ``stacked``, it reads the same region of several arrays (``listing`` holds each
    one's files, in order) along a new leading axis, as :func:`from_collection` stacks them.

    Parameters
    ----------
    bounds : tuple of int or slice
        The region read, in file-grid coordinates (integer bounds drop their dimension).
    listing : tuple of dict
        The existing files by grid position: of the one array, or of each stacked array.
    tile : tuple of int
        The shape of one file.
    dtype : numpy.dtype
        The array dtype.
    fill_value : Any
        What absent cells read as.
    session : Session
        The client's session (reads raise once it is closed).
    stacked : bool, default False
        Whether the arrays of ``listing`` are stacked along a new leading axis.
    owners : tuple of Owner or None, optional
        The Array or VArray of each entry of ``listing``, checked to still exist on every read
        (:func:`deker_dask.graph_tasks.check_owner`); none checked when empty.

    Attributes
    ----------
    shape : tuple of int
        The shape of the region read (stacked: the number of arrays first).
    ndim : int
        Its number of dimensions.
    dtype : numpy.dtype
        The array dtype.
    fill_value : Any
        What absent cells read as.
    session : Session
        The client's session.
    """

    __slots__ = (
        "_bounds",
        "_dims",
        "_listing",
        "_owners",
        "_stacked",
        "_tile",
        "dtype",
        "fill_value",
        "session",
        "shape",
    )

    def __init__(
        self,
        bounds: Bounds,
        listing: tuple[Files, ...],
        tile: tuple[int, ...],
        dtype: np.dtype[Any],
        fill_value: Any,
        session: Session,
        stacked: bool = False,
        owners: tuple[Owner | None, ...] = (),
    ) -> None:
        if not stacked and len(listing) != 1:
            raise ValueError(f"one array's files are read unless stacked, not {len(listing)}")
        if owners and len(owners) != len(listing):
            raise ValueError(f"one owner per array read, not {len(owners)} for {len(listing)}")
        self._owners = tuple(owners)
        self._bounds = ((slice(0, len(listing)),) if stacked else ()) + tuple(bounds)
        self._dims = [d for d, b in enumerate(self._bounds) if isinstance(b, slice)]
        self._listing = tuple(listing)
        self._stacked = stacked
        self._tile = tile
        self.dtype = np.dtype(dtype)
        self.fill_value = fill_value
        self.session = session
        self.shape = selection_shape(self._bounds)

    @property
    def ndim(self) -> int:
        """Number of dimensions (of the region read)."""
        return len(self.shape)

    def __reduce__(self) -> tuple[Any, ...]:
        bounds = self._bounds[1:] if self._stacked else self._bounds
        state = (
            bounds,
            self._listing,
            self._tile,
            self.dtype,
            self.fill_value,
            self.session,
            self._stacked,
            self._owners,
        )
        return (TileReader, state)

    def reads(self) -> tuple[tuple[Owner | None, Bounds], ...]:
        """Return each array read (its owner, None if unknown) with the region read of it.

        Returns
        -------
        tuple of (Owner or None, tuple of int or slice)
            One entry per array of ``listing``, the region in the array's own coordinates
            (the whole region this reader covers, whatever part a task asks for).
        """
        region = self._bounds[1:] if self._stacked else self._bounds
        owners = self._owners or (None,) * len(self._listing)
        return tuple((owner, region) for owner in owners)

    def region(self, key: Any) -> tuple[Bounds, tuple[Any, ...]]:
        """Return the file-grid box covering ``key`` and the index that picks ``key`` from it.

        Indexing the box read with that index gives what indexing the whole region with
        ``key`` gives in numpy (the same dimensions dropped, the same advanced-indexing
        rules): every int, slice and integer array of ``key`` is shifted to the box's origin.

        Parameters
        ----------
        key : int, slice, integer or boolean array, Ellipsis, or a tuple of them
            An index into the region read (what dask's getter passes: a chunk's slices, with a
            later slice or list of the user folded in).

        Returns
        -------
        tuple
            The box (one slice with step 1 per dimension of the file grid, integers where the
            region has them) and the index into the box read.

        Raises
        ------
        IndexError
            If ``key`` is not such an index of this shape, or is out of bounds.
        """
        items = _expand(key if isinstance(key, tuple) else (key,), self.shape)
        box: list[int | slice] = list(self._bounds)
        pick: list[Any] = []
        for d, n, k in zip(self._dims, self.shape, items, strict=True):
            start = self._bounds[d].start  # type: ignore[union-attr]
            lo, hi, shifted = _cover(k, n)
            box[d] = slice(start + lo, start + hi)
            pick.append(shifted)
        return tuple(box), tuple(pick)

    def task(self, bounds: Bounds) -> tuple[Any, ...]:
        """Return the task reading ``bounds``: a function of :mod:`deker_dask.graph_tasks` and its arguments.

        Parameters
        ----------
        bounds : tuple of int or slice
            Non-empty file-grid bounds inside the region read, as :meth:`region` gives them
            (stacked: led by a slice of the arrays' positions).

        Returns
        -------
        tuple
            ``(fill_chunk, ...)`` when no file covers them (no I/O); ``(read_region, ...)`` when
            one file's piece covers them all (not stacked); else ``(read_chunk, ...)``.
        """
        if not self._stacked:
            parts = _parts(self._listing[0], bounds, self._tile)
            return _task(selection_shape(bounds), self.dtype, self.fill_value, parts, False, self.session)
        lead, rest = bounds[0], bounds[1:]
        members = range(lead.start, lead.stop)  # type: ignore[union-attr]
        parts = []
        for k in members:
            parts.extend(_parts(self._listing[k], rest, self._tile, (k - members.start,)))
        shape = (len(members), *selection_shape(rest))
        return _task(shape, self.dtype, self.fill_value, parts, True, self.session)

    def __getitem__(self, key: Any) -> np.ndarray[Any, Any]:
        box, pick = self.region(key)
        shape = selection_shape(box)
        if self._owners:  # the arrays read (not only their tiles) must still exist
            lead = box[0] if self._stacked else slice(0, 1)
            members = range(len(self._owners))[lead] if isinstance(lead, slice) else (lead,)
            for k in members:
                owner = self._owners[k]
                if owner is not None:
                    check_owner(owner)
        if not math.prod(shape):
            self.session.check()
            piece = np.empty(shape, dtype=self.dtype)
        else:
            func, *args = self.task(box)
            piece = np.asarray(func(*args))
        if all(isinstance(p, slice) and p == slice(0, n, 1) for p, n in zip(pick, shape, strict=True)):
            return piece
        picked: np.ndarray[Any, Any] = piece[pick]
        return picked

    def __repr__(self) -> str:
        files = sum(len(f) for f in self._listing)
        return f"TileReader(shape={self.shape}, dtype={self.dtype}, files={files})"


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
    reader = TileReader(
        bounds,
        (files,),
        target.tile_shape,
        target.dtype,
        target.fill_value,
        target.session(),
        owners=(target.owner(),),
    )
    return _lazy(reader, chunks_of(g), key)


def _lazy(reader: TileReader, chunks: tuple[tuple[int, ...], ...], key: str) -> da.Array:
    """Return the dask array reading through ``reader`` in ``chunks`` (a blockwise layer named ``key``)."""
    lazy: da.Array = da.from_array(  # type: ignore[no-untyped-call]
        reader,
        chunks=chunks,
        name=key,
        lock=False,
        asarray=False,
        fancy=True,
        inline_array=False,
        meta=_meta(len(chunks), reader.dtype),
    )
    return lazy


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
    starts = range(0, len(items), group)
    lead = tuple(min(group, len(items) - i0) for i0 in starts)
    reader = TileReader(
        first.bounds,
        tuple(files for files, _ in listing),
        first.tile_shape,
        dtype,
        first.fill_value,
        first.session(),
        stacked=True,
        owners=tuple(t.owner() for t in targets),
    )
    return _lazy(reader, (lead, *cell_chunks), key)


def build_keepdims(
    obj: Any, tiles_per_chunk: Any = None, chunks: Any = None, name: Any = None
) -> tuple[da.Array, Target]:
    """Like :func:`to_dask`, but integer-indexed dimensions stay, with length 1 (for xarray)."""
    target = resolve(obj)
    bounds = tuple(slice(b, b + 1) if isinstance(b, int) else b for b in target.bounds)
    return _build(target, tiles_per_chunk, chunks, name, bounds), target
