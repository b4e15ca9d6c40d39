"""Chunked datasets read with their codecs outside h5py's lock, in parallel threads.

h5py makes every HDF5 call under one lock of the process, and HDF5 runs a dataset's filters
(deflate, zstd, blosc...) inside those calls: however many threads read compressed tiles, one
decodes at a time.  This module asks HDF5 only *where* the chunks of a dataset are (one
``chunk_iter`` call gives the offset, size and filter mask of every stored chunk), reads the raw
chunks a region touches with ``os.pread`` and decodes them itself, with codecs that release the
GIL (:mod:`deker.storage.filters`), in a pool of threads of its own (:func:`decode_threads`).

A pipeline made only of the filters listed there, in any order, is decoded here, unfiltered chunked datasets
too; the filters a chunk's mask says were skipped are skipped.  Anything else (other filters,
fletcher32, scaleoffset, szip, non-numeric or byte-swapped types, a chunk that does not decode
to its size) returns "not handled" and the caller reads through h5py.  A stored chunk that is cut
short or does not decode is reported as damage (:class:`~deker.errors.DekerStorageError`), also
where h5py would hand back its bytes without error (hdf5plugin's zstd filter does).
Chunks never written read as the dataset's fill value, as HDF5 gives them.  Edge chunks are
stored whole (HDF5's default), so every chunk decodes to the chunk shape.

The index of a file is learnt while h5py has it open (:func:`read_open`) and kept, like
:mod:`deker.storage.rawio`'s layouts, keyed by the file's change stamps, once the file has
settled (:func:`rawio.settled <deker.storage.rawio.settled>`); :func:`read_cached` then reads
the next regions of the file without opening it in HDF5 at all.  Callers hold the file's read
lock; a file with an undo journal is read through h5py (its old version), never from here.

Writes go the other way (:func:`write_whole`): when a new dataset gets its whole content (a
tile created holding its data, a new version of a file, an Array's whole write), its chunks
are encoded here with the same codecs, in the same pool, and handed to HDF5 as they are
(``write_direct_chunk``), so HDF5 runs no filter.  Edge chunks are padded with the fill value,
as HDF5 pads them.  The files are those HDF5's filters read.  A partial write
(:func:`write_region`) makes each chunk it touches here: from the new values where it covers
the chunk, else patched into the stored chunk decoded here; only reading and writing the stored
bytes runs under h5py's lock.  A pipeline this module cannot encode goes through h5py.
:func:`first_damaged_chunk` decodes every stored chunk for the integrity check.

The pool threads only decode, encode and copy into disjoint parts of the destination: they
never wait for other tasks, so a caller running in any other pool (the client's, a Dask
worker's) cannot deadlock on them, and the calling thread does its share of the chunks too.
"""

import itertools
import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np

from deker.errors import DekerStorageError
from deker.sizes import coding_threads
from deker.storage import filters, rawio
from deker.storage.arrayfile import Bounds, count_fill, selection_shape

__all__ = [
    "SUPPORTED_FILTERS",
    "ChunkIndex",
    "chunk_index",
    "decode_threads",
    "first_damaged_chunk",
    "forget",
    "read_cached",
    "read_into",
    "read_open",
    "write_region",
    "write_whole",
]


#: The HDF5 filter ids this module decodes and encodes (:mod:`deker.storage.filters`).
SUPPORTED_FILTERS = filters.SUPPORTED_FILTERS


# Regions whose chunks hold fewer compressed bytes than this are decoded by the calling thread
# alone: handing them to the pool costs more than it saves.
_PARALLEL_BYTES = 128 * 1024
# A whole write encodes and writes its chunks in batches of about this many bytes of cells.
_WRITE_BATCH_BYTES = 32 * 1024 * 1024
_MAX_INDEXES = 4096


class ChunkIndex(NamedTuple):
    """Where the chunks of a dataset are and how they are encoded.

    Attributes
    ----------
    shape, chunks : tuple of int
        The dataset's shape and chunk shape.
    dtype : numpy.dtype
        Its (native, numeric) type.
    fill : numpy.ndarray
        Its fill value (0-d), what chunks never written hold.
    filters : tuple of (int, tuple of int)
        The filter pipeline in writing order: HDF5 filter id and client values.
    offsets, sizes, masks : numpy.ndarray
        Per chunk of the chunk grid: file offset (-1 when not allocated), stored size, filter
        mask (bit ``i`` set: filter ``i`` was not applied to that chunk).

    """

    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: np.dtype[Any]
    fill: np.ndarray[Any, Any]
    filters: filters.Pipeline
    offsets: np.ndarray[Any, Any]
    sizes: np.ndarray[Any, Any]
    masks: np.ndarray[Any, Any]


def _pipeline(dataset: h5py.Dataset) -> filters.Pipeline | None:
    """Return the filter pipeline of a chunked numeric dataset, if this module handles it all."""
    dtype = dataset.dtype
    if dataset.chunks is None or dtype.kind not in "iufc" or not dtype.isnative or not dataset.size:
        return None
    dsid = dataset.id
    if dsid.get_type().get_size() != dtype.itemsize:
        return None
    dcpl = dsid.get_create_plist()
    if dcpl.get_layout() != h5py.h5d.CHUNKED or dcpl.get_external_count():
        return None
    found = []
    for i in range(dcpl.get_nfilters()):
        code, _flags, values, _name = dcpl.get_filter(i)
        if code not in filters.SUPPORTED_FILTERS:
            return None
        found.append((int(code), tuple(int(v) for v in values)))
    return tuple(found)


def chunk_index(dataset: h5py.Dataset) -> ChunkIndex | None:
    """Learn the chunk index of a dataset, if this module can decode it.

    Parameters
    ----------
    dataset : h5py.Dataset
        An open dataset: one walk of its HDF5 chunk index reads every chunk's offset, size
        and filter mask (not its data).

    Returns
    -------
    ChunkIndex or None
        ``None`` when the dataset is not chunked, is empty, has a filter outside
        :data:`SUPPORTED_FILTERS`, or a type whose stored bytes are not numpy's.

    """
    pipeline = _pipeline(dataset)
    if pipeline is None:
        return None
    dtype = dataset.dtype
    dsid = dataset.id
    shape = tuple(int(s) for s in dataset.shape)
    chunks = tuple(int(c) for c in dataset.chunks)
    grid = tuple(-(-s // c) for s, c in zip(shape, chunks, strict=True))
    offsets = np.full(grid, -1, dtype=np.int64)
    sizes = np.zeros(grid, dtype=np.int64)
    masks = np.zeros(grid, dtype=np.int64)

    def visit(info: Any) -> None:
        where = tuple(int(o) // c for o, c in zip(info.chunk_offset, chunks, strict=True))
        offsets[where] = int(info.byte_offset)
        sizes[where] = int(info.size)
        masks[where] = int(info.filter_mask)

    try:
        dsid.chunk_iter(visit)
    except (AttributeError, NotImplementedError):  # HDF5 < 1.12.3: one call per chunk
        for i in range(dsid.get_num_chunks()):
            visit(dsid.get_chunk_info(i))
    fill = np.asarray(dataset.fillvalue, dtype=dtype)
    return ChunkIndex(shape, chunks, dtype, fill, pipeline, offsets, sizes, masks)


class _Damaged(Exception):
    """A stored chunk that is cut short or does not decode to its size."""


def _damage(path: Path | str, exc: _Damaged) -> DekerStorageError:
    """Return the error a damaged chunk of the array file ``path`` is reported as."""
    return DekerStorageError(f"Array file {path} is damaged or incomplete: {exc}")


def _fetch(fd: int, index: ChunkIndex, where: tuple[int, ...]) -> np.ndarray[Any, Any]:
    """Read and decode one stored chunk.

    A chunk that does not decode is damage, raised as such: h5py would not always say so
    (hdf5plugin's zstd filter hands back a corrupted chunk's bytes undecoded, without error).
    """
    offset, size = int(index.offsets[where]), int(index.sizes[where])
    raw = os.pread(fd, size, offset)
    if len(raw) != size:
        raise _Damaged(f"chunk {where} at byte {offset} is cut short ({len(raw)} of {size} bytes)")
    return _decoded(raw, int(index.masks[where]), index, f"chunk {where} at byte {offset}")


def _decoded(raw: bytes, mask: int, index: ChunkIndex, name: str) -> np.ndarray[Any, Any]:
    """Decode one stored chunk to the chunk shape.

    Raises :class:`_Damaged`, naming the chunk ``name``, when it does not decode, or not to a
    whole chunk.
    """
    try:
        data = filters.decode(raw, index.filters, mask, index.dtype.itemsize)
        chunk = np.frombuffer(data, dtype=index.dtype)
    except Exception as exc:  # each codec raises its own errors; numpy a partial element
        raise _Damaged(f"{name} does not decode: {exc}") from exc
    cells = math.prod(index.chunks)
    if chunk.size != cells:
        raise _Damaged(f"{name} decodes to {chunk.size} cells, not {cells}")
    return chunk.reshape(index.chunks)


def _read_region(
    path: Path, fd: int, index: ChunkIndex, bounds: Bounds, out: np.ndarray[Any, Any] | None
) -> np.ndarray[Any, Any] | None:
    """Read a region into ``out`` (or a new array); ``None`` if it does not fit: read with h5py."""
    target = rawio.destination(selection_shape(bounds), index.dtype, out)
    if target is None:
        return None
    try:
        return target if read_into(fd, index, bounds, target) else None
    except _Damaged as exc:
        raise _damage(path, exc) from exc


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def decode_threads() -> int:
    """Return how many threads decode (or encode) the chunks of one region at most.

    Returns
    -------
    int
        :func:`deker.sizes.coding_threads`: the size of the module's decoding pool (the
        calling thread decodes too).

    """
    return coding_threads()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:  # (a forked child starts without one: _after_fork_in_child)
            _pool = ThreadPoolExecutor(max_workers=decode_threads(), thread_name_prefix="deker-decode")
        return _pool


#: How many threads are in :func:`_run` now (each decoding or encoding a region).
_busy = 0
_busy_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # The child has only the forking thread: the pool's threads are gone, no region is in
    # progress there, and a lock another thread held at the fork would stay held for ever.
    global _busy, _busy_lock, _pool, _pool_lock
    _pool = None
    _busy = 0
    _busy_lock = threading.Lock()
    _pool_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _run(jobs: Sequence[Any], work: Callable[[Sequence[Any]], bool], weight: int) -> bool:
    """Run ``work`` over ``jobs``: in this thread, or split with the decoding pool.

    A region is split into as many parts as there are cores per region being decoded or
    encoded at this moment: one tile read alone uses every core, while the tiles of a VArray
    read by a pool of as many threads as cores are each decoded by the thread that reads it
    (splitting those too only handed the GIL around: a full read of 64 zstd tiles took 7 %
    longer on two cores).
    """
    global _busy
    with _busy_lock:
        _busy += 1
        regions = _busy
    try:
        threads = decode_threads() // regions
        if len(jobs) < 2 or threads < 2 or weight < _PARALLEL_BYTES:
            return work(jobs)
        parts = [jobs[i::threads] for i in range(min(threads, len(jobs)))]
        futures: list[Future[bool]] = [_executor().submit(work, part) for part in parts[1:]]
        try:
            mine = work(parts[0])
        finally:
            wait(futures)  # nothing is left writing into the destination once this returns
        return mine and all(f.result() for f in futures)
    finally:
        with _busy_lock:
            _busy -= 1


#: One chunk a region touches: its grid position, its part in the chunk, where that part is in
#: the region (both in the file's axes).
_Piece = tuple[tuple[int, ...], tuple[slice, ...], tuple[slice, ...]]


def _region_chunks(bounds: Bounds, chunks: tuple[int, ...]) -> list[_Piece]:
    """Return the chunks that normalised ``bounds`` touch, each with its overlap (see _Piece)."""
    starts = [b.start if isinstance(b, slice) else b for b in bounds]
    stops = [b.stop if isinstance(b, slice) else b + 1 for b in bounds]
    ranges = [range(s // c, (e - 1) // c + 1) for s, e, c in zip(starts, stops, chunks, strict=True)]
    pieces = []
    for where in itertools.product(*ranges):
        source, dest = [], []
        for p, s, e, c in zip(where, starts, stops, chunks, strict=True):
            low, high = max(s, p * c), min(e, (p + 1) * c)
            source.append(slice(low - p * c, high - p * c))
            dest.append(slice(low - s, high - s))
        pieces.append((where, tuple(source), tuple(dest)))
    return pieces


def _origin(where: tuple[int, ...], chunks: tuple[int, ...]) -> tuple[int, ...]:
    """Return the first cell of the chunk at grid position ``where``."""
    return tuple(p * c for p, c in zip(where, chunks, strict=True))


def _in_file_axes(values: np.ndarray[Any, Any], bounds: Bounds) -> np.ndarray[Any, Any] | None:
    """View a region's values (integer bounds dropped) with every axis of the file; None if unfit."""
    dropped = tuple(d for d, b in enumerate(bounds) if not isinstance(b, slice))
    view = np.expand_dims(values, dropped) if dropped else values
    want = tuple(b.stop - b.start if isinstance(b, slice) else 1 for b in bounds)
    return view if view.shape == want else None


def read_into(fd: int, index: ChunkIndex, bounds: Bounds, out: np.ndarray[Any, Any]) -> bool:
    """Read ``bounds`` of the dataset indexed by ``index`` from ``fd`` into ``out``.

    Parameters
    ----------
    fd : int
        A descriptor of the file (read with ``os.pread``; not closed).
    index : ChunkIndex
        The dataset's chunk index.
    bounds : tuple of int or slice
        Normalised bounds (one per dimension, slices with step 1, in range, not empty).
    out : numpy.ndarray
        The destination: the selection's shape (integer bounds dropped), the dataset's dtype.

    Returns
    -------
    bool
        ``True`` when ``out`` holds the region; ``False`` when the caller must read it through
        h5py (``out`` does not fit).

    Raises
    ------
    Exception
        An internal error naming the chunk when a stored chunk is cut short or does not
        decode; :func:`read_open` and :func:`read_cached` raise it as a DekerStorageError.

    """
    if out.dtype != index.dtype or not out.flags.writeable or len(bounds) != len(index.shape):
        return False
    view = _in_file_axes(out, bounds)  # a view of ``out`` in the file's axes
    if view is None:
        return False
    jobs = _region_chunks(bounds, index.chunks)
    weight = sum(int(index.sizes[where]) for where, _, _ in jobs)

    def work(part: Sequence[_Piece]) -> bool:
        for where, source, dest in part:
            if index.offsets[where] < 0:
                view[dest] = index.fill
                continue
            view[dest] = _fetch(fd, index, where)[source]
        return True

    return _run(jobs, work, weight)


# ------------------------------------------------------------------------------ index cache

_indexes: rawio.FileCache[ChunkIndex] = rawio.FileCache(_MAX_INDEXES)


def forget(path: Path | str | None = None) -> None:
    """Drop the remembered chunk index of ``path`` (of every file when ``None``).

    Parameters
    ----------
    path : Path or str, optional
        As for :func:`deker.storage.rawio.forget` (which drops remembered layouts).

    """
    _indexes.forget(path)


def read_open(
    path: Path, handle: h5py.File, dataset: h5py.Dataset, bounds: Bounds, out: np.ndarray[Any, Any] | None
) -> np.ndarray[Any, Any] | None:
    """Read a region of a dataset h5py has open, decoding its chunks here; keep its index.

    Parameters
    ----------
    path : Path
        The data file (the key of the kept index).
    handle : h5py.File
        The file, opened by name (the ``sec2`` driver: its descriptor is read).  A file opened
        through a file object (a journal's old version, a writer's held file) is not handled.
    dataset : h5py.Dataset
        The ``data`` dataset.
    bounds : tuple of int or slice
        Normalised bounds, in range, not empty.
    out : numpy.ndarray, optional
        The destination (the selection's shape); else a new array is returned.

    Returns
    -------
    numpy.ndarray or None
        The region (``out`` itself when given); ``None`` when the caller must read it with h5py.

    Raises
    ------
    DekerStorageError
        When a chunk the region needs is cut short or does not decode.

    """
    if handle.driver != "sec2":
        return None
    fd = handle.id.get_vfd_handle()
    if not isinstance(fd, int):
        return None
    index = chunk_index(dataset)
    if index is None:
        return None
    st = os.fstat(fd)
    if rawio.settled(st):
        _indexes.keep(path, rawio.file_stamp(st), index)
    return _read_region(path, fd, index, bounds, out)


def read_cached(
    path: Path, bounds: Bounds, dtype: np.dtype[Any], out: np.ndarray[Any, Any] | None = None
) -> np.ndarray[Any, Any] | None:
    """Read a region of ``path`` with its kept chunk index, without HDF5.

    The caller holds the file's read lock.

    Parameters
    ----------
    path, bounds, out
        As for :func:`read_open`.
    dtype : numpy.dtype
        The array dtype.

    Returns
    -------
    numpy.ndarray or None
        The region (``out`` itself when given); ``None`` when no index is kept for the file,
        it changed since, it has a journal, or anything else is unusual: then read with h5py.

    Raises
    ------
    DekerStorageError
        When a chunk the region needs is cut short or does not decode.

    """
    index = _indexes.get(path)
    if index is None or np.dtype(dtype) != index.dtype:
        return None
    with _indexes.opened(path) as found:
        if found is None:
            return None
        fd, index = found
        return _read_region(path, fd, index, bounds, out)


# ------------------------------------------------------------------------------ writes


def write_whole(dataset: h5py.Dataset, values: np.ndarray[Any, Any]) -> bool:
    """Give every chunk of a new, empty dataset its content, encoded here, in parallel.

    The chunks are encoded outside h5py's lock, split between the calling thread and the
    module's pool, then handed to HDF5 as they are (``write_direct_chunk``), so HDF5 runs no
    filter.  The file is what HDF5 would write with its own filters: its readers (h5py, deker
    1.1.7, this module) decode it with the pipeline the dataset declares.

    Parameters
    ----------
    dataset : h5py.Dataset
        A dataset just created (no chunk written), chunked with filters this module handles.
    values : numpy.ndarray
        The whole content: the dataset's shape (or broadcastable to it), its dtype.

    Returns
    -------
    bool
        ``False`` (nothing written) when the dataset or the values are not handled here: then
        write with h5py.

    """
    pipeline = _pipeline(dataset)
    if pipeline is None or not filters.encodable(pipeline) or np.asarray(values).dtype != dataset.dtype:
        return False
    if dataset.id.get_num_chunks():
        return False
    shape = tuple(int(n) for n in dataset.shape)
    chunks = tuple(int(c) for c in dataset.chunks)
    try:
        source = np.broadcast_to(values, shape)
    except ValueError:
        return False
    dtype = dataset.dtype  # read here: the pool threads make no h5py call (h5py's lock)
    fill = np.asarray(dataset.fillvalue, dtype=dtype)
    grid = [range(-(-n // c)) for n, c in zip(shape, chunks, strict=True)]
    positions = list(itertools.product(*grid))
    encoded: list[bytes | None] = [None] * len(positions)

    def work(part: Sequence[tuple[int, tuple[int, ...]]]) -> bool:
        for i, where in part:
            region = tuple(
                slice(p * c, min((p + 1) * c, n)) for p, c, n in zip(where, chunks, shape, strict=True)
            )
            piece = source[region]
            if piece.shape == chunks:
                chunk = np.ascontiguousarray(piece)
            else:  # an edge chunk is stored whole; HDF5 pads it with the fill value
                chunk = np.full(chunks, fill, dtype=dtype)
                chunk[tuple(slice(0, n) for n in piece.shape)] = piece
            encoded[i] = filters.encode(chunk, pipeline)
        return True

    # In batches of about _WRITE_BATCH_BYTES of cells: the encoded chunks of a large array are
    # not all held at once.
    chunk_bytes = math.prod(chunks) * dtype.itemsize
    step = max(2 * decode_threads(), _WRITE_BATCH_BYTES // max(1, chunk_bytes))
    dsid = dataset.id
    jobs = list(enumerate(positions))
    for start in range(0, len(jobs), step):
        batch = jobs[start : start + step]
        _run(batch, work, len(batch) * chunk_bytes)
        for i, where in batch:
            dsid.write_direct_chunk(_origin(where, chunks), encoded[i])
            encoded[i] = None
    return True


def write_region(
    dataset: h5py.Dataset,
    bounds: Bounds,
    values: np.ndarray[Any, Any] | np.generic,
    fill_value: Any,
    count_old: bool,
) -> int | None:
    """Write a region of a chunked dataset, its chunks decoded and encoded here, in parallel.

    Each chunk the region touches is made here: one the region covers from the new values
    alone, one it covers in part from its stored content (read as stored with
    ``read_direct_chunk``, decoded here) or the fill value (never written), patched with the
    new values; it is encoded with the dataset's pipeline and handed to HDF5 as it is
    (``write_direct_chunk``).  h5py's lock is held only to read and write stored bytes, never
    while a codec runs.  The file is what h5py's own partial write would make of it.

    Parameters
    ----------
    dataset : h5py.Dataset
        A chunked dataset with filters this module handles, open for writing.
    bounds : tuple of int or slice
        Normalised bounds (one per dimension, in range, not empty).
    values : numpy.ndarray or numpy scalar
        The dataset's dtype; the selection's shape (integer bounds dropped) or a scalar.
    fill_value : Any
        The fill value of the array, for ``count_old``.
    count_old : bool
        Also count the fill cells the region held before (the chunks the region covers whole
        are then decoded too).

    Returns
    -------
    int or None
        The fill cells the region held before (0 without ``count_old``); ``None`` (nothing
        written) when the dataset or the values are not handled here: then write with h5py.

    Raises
    ------
    DekerStorageError
        If a stored chunk the write must keep in part is cut short or does not decode.

    """
    pipeline = _pipeline(dataset)
    if not pipeline or not filters.encodable(pipeline):  # (no filter: nothing to take out of the lock)
        return None
    index = chunk_index(dataset)
    value = np.asarray(values)
    if index is None or value.dtype != index.dtype or len(bounds) != len(index.shape):
        return None
    source = _in_file_axes(value, bounds) if value.ndim else value
    if source is None:
        return None
    chunks, shape = index.chunks, index.shape
    dsid = dataset.id
    plan = _region_chunks(bounds, chunks)
    chunk_bytes = math.prod(chunks) * index.dtype.itemsize
    step = max(2 * decode_threads(), _WRITE_BATCH_BYTES // max(1, chunk_bytes))
    stored: dict[tuple[int, ...], tuple[int, bytes]] = {}  # of the batch: (filter mask, bytes)
    kept: dict[tuple[int, ...], tuple[int, int]] = {}  # stored with filters skipped: (mask, size)
    encoded: dict[tuple[int, ...], tuple[int, bytes]] = {}  # (filter mask, bytes)
    counts: list[int] = []

    def work(part_of_batch: Sequence[_Piece]) -> bool:
        for where, part, dest in part_of_batch:
            if where in stored:
                mask, raw = stored[where]
                chunk = _decoded(raw, mask, index, f"chunk {where}").copy()
            else:
                chunk = np.full(chunks, index.fill, dtype=index.dtype)
            if count_old:
                counts.append(count_fill(chunk[part], fill_value))
            chunk[part] = source[dest] if source.ndim else source
            new = filters.encode(chunk, index.filters)
            old_mask, old_size = kept.get(where, (0, -1))
            # HDF5 overwrites a chunk of the same size in place, keeping its filter mask (the
            # index entry is not rewritten): such bytes must be of that mask
            mask = old_mask if len(new) == old_size else 0
            encoded[where] = (mask, filters.encode(chunk, index.filters, mask) if mask else new)
        return True

    for start in range(0, len(plan), step):
        batch = plan[start : start + step]
        stored.clear()
        kept.clear()
        encoded.clear()
        for where, part, _ in batch:
            origin = _origin(where, chunks)
            info = dsid.get_chunk_info_by_coord(origin)  # (as stored now, not as first indexed)
            if info.byte_offset is None:
                continue
            if info.filter_mask:
                kept[where] = (int(info.filter_mask), int(info.size))
            extent = tuple(min(c, n - p * c) for p, c, n in zip(where, chunks, shape, strict=True))
            whole = all(s.start == 0 and s.stop == e for s, e in zip(part, extent, strict=True))
            if count_old or not whole:  # its stored content counts
                stored[where] = dsid.read_direct_chunk(origin)  # (no filter runs)
        try:
            _run(batch, work, len(batch) * chunk_bytes)
        except _Damaged as exc:
            raise _damage(dataset.file.filename, exc) from exc
        for where, _, _ in batch:
            mask, data = encoded[where]
            origin = _origin(where, chunks)
            dsid.write_direct_chunk(origin, data, filter_mask=mask)
            if where in kept and dsid.get_chunk_info_by_coord(origin).filter_mask != mask:  # (never seen)
                raise DekerStorageError(
                    f"HDF5 kept the old filter mask of chunk {where} in {dataset.file.filename}"
                )
    return sum(counts)


def first_damaged_chunk(dataset: h5py.Dataset) -> tuple[bool, str | None]:
    """Decode every stored chunk of ``dataset``; say what is wrong with the first bad one.

    For the integrity check: h5py's own reading does not always notice damage (hdf5plugin's
    zstd filter hands a corrupted chunk back undecoded), so the chunks are decoded here.

    Parameters
    ----------
    dataset : h5py.Dataset
        An open dataset, of any driver: its raw chunks are read through h5py
        (``read_direct_chunk``).

    Returns
    -------
    handled : bool
        ``False`` when this module does not handle the dataset: then read it with h5py.
    damage : str or None
        ``None`` when every stored chunk decodes to its size, else what is wrong.

    """
    index = chunk_index(dataset)
    if index is None:
        return False, None
    for where in zip(*np.nonzero(index.offsets >= 0), strict=True):
        position = tuple(int(p) for p in where)
        start = tuple(p * c for p, c in zip(position, index.chunks, strict=True))
        name = "chunk {} (cells [{}])".format(
            position,
            ", ".join(
                f"{a}:{min(a + c, n)}" for a, c, n in zip(start, index.chunks, index.shape, strict=True)
            ),
        )
        try:
            mask, raw = dataset.id.read_direct_chunk(start)
        except Exception as exc:
            return True, f"{name} does not decode: {exc}"
        try:
            _decoded(raw, int(mask), index, name)
        except _Damaged as exc:
            return True, str(exc)
    return True, None
