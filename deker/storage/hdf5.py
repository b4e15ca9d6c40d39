"""Array data files (SPEC §2.4): create, read and write one HDF5 file.

A file holds three root datasets and no HDF5 attributes: ``meta`` (scalar fixed-length bytes,
UTF-8 JSON), ``empty_cells`` (scalar int64: how many cells hold the fill value) and ``data``
(created at the first write that leaves a non-fill cell, deleted when every cell is fill).

Unlike deker 1.1.7 (SPEC §7.4-7.5, §8 items 1-2) ``empty_cells`` is kept exact: a write or a
clear subtracts the fill cells the region held and adds those it holds now, so a clear of an
empty region can never delete data.  Files written by deker 1.1.7 may carry an inexact count;
before ``data`` is deleted because the count says "all fill" after a partial operation, the
whole dataset is checked (in bounded slabs) and the true count is stored instead if it is not.

Every file is opened with ``locking=False``: concurrency is the lockfile protocol's business
(:mod:`deker.storage.locks`).  A file this process holds locked (a writer's data file) is
never opened by name, which would make h5py close a descriptor of it and so drop a POSIX
record lock (NFS): it is read and written through file objects over the held descriptor
(:class:`~deker.storage.journal.HeldFile`, :class:`~deker.storage.journal.UndoJournal`,
:class:`~deker.storage.journal.NewFile`).  Importing this module imports :mod:`hdf5plugin` so compressed
datasets (Zstd, ...) can be read and written; it changes no environment variable.

Crash safety (:mod:`deker.storage.atomic`): a file is never left half-written.  A creation, and
a write or clear covering every cell of a file that holds data, build a complete new file
under a temporary name and rename it into place (the old data is neither read nor copied).
Every other change (partial writes and clears, the first write into a file without data,
metadata updates) is made in place under an undo journal, which saves the bytes it overwrites
first, so only the touched bytes are rewritten.  Writers (who hold the array's exclusive
lock) first deal with what an interrupted write left (roll back a journal, delete temporary
files); readers read the old version through a stale journal until then.  A file lacking its
``meta`` or ``empty_cells`` dataset is refused for writing (HDF5 opens an empty file in mode
``"r+"`` as a new one).

The functions' parameters mean the same in each: ``path`` is the data file, ``bounds`` the
normalised bounds of a region (:data:`~deker.storage.arrayfile.Bounds`), ``shape`` and
``fill_value`` those of the whole array; a function's docstring documents the others.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (registers the compression filters with HDF5)
import numpy as np

from deker.errors import DekerStorageError, DekerValidationError
from deker.storage import atomic, chunkcodec, lockprim, rawio, templates
from deker.storage.arrayfile import Bounds, Values, count_fill, os_errors, selection_shape
from deker.storage.layout import ensure_dir

__all__ = [
    "check_filter_available",
    "clear_region",
    "count_fill",
    "create_array_file",
    "has_data",
    "read_empty_cells",
    "read_meta",
    "read_region",
    "write_meta",
    "write_region",
]

DATA = "data"
META = "meta"
EMPTY_CELLS = "empty_cells"

# Scalars broadcast over regions up to this many cells are expanded in memory (h5py's own
# broadcasting is several times slower); larger regions are broadcast by h5py.
_EXPAND_SCALAR_CELLS = 1 << 22
# Cells per slab when a whole dataset is scanned to verify an inexact legacy counter.
_SCAN_CELLS = 1 << 22


def _missing(path: Path, exc: BaseException | None = None) -> FileNotFoundError:
    err = FileNotFoundError(2, "No such array file", str(path))
    if exc is not None:
        err.__cause__ = exc
    return err


@contextmanager
def _handle(source: Path | io.RawIOBase, path: Path, mode: str) -> Iterator[h5py.File]:
    """Open ``source`` (the file or a file object over it) with h5py; map damage to errors."""
    try:
        handle = h5py.File(source, mode, locking=False)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if not os.path.exists(path):
            raise _missing(path, exc) from exc
        raise DekerStorageError(f"Cannot open array file {path}: {exc}") from exc
    if mode == "r+" and (META not in handle or EMPTY_CELLS not in handle):
        handle.close()  # e.g. an empty file, which HDF5 opens as a new one in mode "r+"
        raise DekerStorageError(
            f"Array file {path} is damaged: it lacks its '{META}' or '{EMPTY_CELLS}' dataset"
        )
    try:
        with handle:
            yield handle
    except (KeyError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise DekerStorageError(f"Array file {path} is damaged or incomplete: {exc}") from exc


@contextmanager
def _fresh(tmp: Path, path: Path) -> Iterator[h5py.File]:
    """Open the new, empty temporary file ``tmp`` (a new version of ``path``) for h5py to write.

    Through :class:`~deker.storage.journal.NewFile`: a write that fails (a full disk...) never
    reaches HDF5, which would be left in a state that crashes the process later; the failure
    is raised here once h5py has closed the file (the caller's :func:`atomic.replacing
    <deker.storage.atomic.replacing>` then deletes the temporary file).
    """
    with atomic.NewFile(tmp) as fileobj:
        with _handle(fileobj, path, "w") as handle:
            yield handle
        fileobj.raise_failure()


@contextmanager
def _open(path: Path, mode: str) -> Iterator[h5py.File]:
    """Open ``path`` for reading (mode ``"r"``), as it was before any interrupted write."""
    assert mode == "r"
    try:
        view = atomic.old_version(path)
    except PermissionError as exc:
        raise DekerStorageError(f"Cannot open array file {path}: {exc}") from exc
    if view is None:
        if not lockprim.holds(path):
            with _handle(path, path, "r") as handle:
                yield handle
            return
        view = atomic.HeldFile(path)  # a writer reading its locked file: h5py closes no descriptor
    with view, _handle(view, path, "r") as handle:
        yield handle


def _write_errors(path: Path) -> AbstractContextManager[None]:
    """Map OS errors of a write (a read-only or immutable file, a full disk...) to deker errors."""
    return os_errors(path, "write array file")


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Start a change of ``path``: OS errors mapped, an interrupted write's leftovers dealt with."""
    with _write_errors(path):
        try:
            atomic.clean_leftovers(path)
        except FileNotFoundError as exc:
            raise _missing(path, exc) from exc
        yield


@contextmanager
def _modify(path: Path) -> Iterator[h5py.File]:
    """Open ``path`` for an all-or-nothing change in place (the caller holds its write lock).

    Through an undo journal (:mod:`deker.storage.journal`): the bytes it overwrites are saved
    first, and a change that does not finish is rolled back.  A change that writes nothing
    costs nothing more than opening the file.
    """
    with _writing(path), atomic.journaled(path) as journal, _handle(journal, path, "r+") as handle:
        yield handle


def _create_data(
    handle: h5py.File,
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
    fill_value: Any,
    kwargs: Mapping[str, Any],
) -> h5py.Dataset:
    return handle.create_dataset(
        DATA, shape=shape, dtype=dtype, fillvalue=np.asarray(fill_value, dtype=dtype)[()], **dict(kwargs)
    )


def _fill_new(dataset: h5py.Dataset, values: np.ndarray[Any, Any], shape: tuple[int, ...]) -> None:
    """Write every cell of a new dataset: chunks encoded in parallel (chunkcodec), else h5py."""
    if not chunkcodec.write_whole(dataset, values):
        dataset[...] = _expand(values, shape)


def _write_whole(
    path: Path,
    values: np.ndarray[Any, Any] | None,
    empty_cells: int,
    shape: tuple[int, ...],
    fill_value: Any,
    dataset_kwargs: Mapping[str, Any],
) -> None:
    """Give every cell of ``path`` new content (the caller holds its write lock).

    ``values`` is the whole array of ``shape`` (or a scalar to broadcast), ``None`` when every
    cell is fill (no ``data`` dataset).  A file without data gets it appended in place (under
    the journal, which then saves only a little metadata); a file with data is written anew
    with its old metadata and renamed over the old one, whose data is neither read nor saved.
    """
    if (
        values is not None
        and values.ndim
        and not dataset_kwargs
        and _write_whole_fast(path, values, empty_cells, shape, fill_value)
    ):
        return
    stored_meta: np.ndarray[Any, Any] | None = None
    with _modify(path) as handle:
        if DATA in handle:
            meta = handle[META]
            stored_meta = np.array(meta[()], dtype=meta.dtype)  # then write a new file, below
        elif values is not None:
            handle[EMPTY_CELLS][()] = np.int64(empty_cells)
            _fill_new(_create_data(handle, shape, values.dtype, fill_value, dataset_kwargs), values, shape)
    if stored_meta is None:
        return
    with _write_errors(path), atomic.replacing(path) as tmp, _fresh(tmp, path) as handle:
        handle.create_dataset(META, data=stored_meta)
        handle.create_dataset(EMPTY_CELLS, data=np.int64(empty_cells))
        if values is not None:
            _fill_new(_create_data(handle, shape, values.dtype, fill_value, dataset_kwargs), values, shape)


def _write_whole_fast(
    path: Path, values: np.ndarray[Any, Any], empty_cells: int, shape: tuple[int, ...], fill_value: Any
) -> bool:
    """Give every cell of ``path`` new content without HDF5 writing the data.

    The new content is the per-process template of its metadata type, shape, dtype and fill
    value (:func:`deker.storage.templates.data_array_parts`) around the data.  A file without
    data (a few KiB) is overwritten in place under the undo journal, which saves those few KiB
    (the data is appended); a file with data gets a new version renamed over it, whose old
    data is neither read nor saved.  (Renaming over a file makes ext4 start writing the new
    file to disk at once, which costs as much as writing it: an overwrite in place of a file
    without data avoids that for first writes.)  Returns ``False`` (nothing done) when no
    template fits: then h5py writes.
    """
    with _writing(path):
        with _open(path, "r") as handle:
            if EMPTY_CELLS not in handle:
                raise KeyError(f"no '{EMPTY_CELLS}' dataset")
            meta = handle[META]
            meta_bytes, meta_dtype, had_data = bytes(meta[()]), meta.dtype.str, DATA in handle
        parts = templates.data_array_parts(
            meta_bytes, meta_dtype, empty_cells, shape, values.dtype, fill_value
        )
        if parts is None:
            return False
        head, tail = parts
        if had_data:
            with atomic.replacing(path) as tmp:
                templates.write_new_file(tmp, head, values, tail)
            return True
        with atomic.journaled(path) as journal:
            journal.write(head)
            journal.write(templates.raw_bytes(values))
            journal.write(tail)
            journal.truncate()
    return True


def create_array_file(
    path: Path,
    meta: bytes,
    meta_dtype: str,
    total_cells: int,
    *,
    data: Values | None = None,
    shape: tuple[int, ...] | None = None,
    fill_value: Any = None,
    dataset_kwargs: Mapping[str, Any] | None = None,
) -> None:
    """Create an array file holding ``meta`` and ``empty_cells`` (and ``data`` if given).

    The file is written under a temporary name in the same directory, flushed, and linked into
    place atomically: readers never see a half-written file, and creation fails if ``path``
    exists.  With ``data`` the new file already holds the whole array: a first write that
    covers every cell costs one file instead of a creation and a rewrite.

    Parameters
    ----------
    path : Path
        The data file to create (parents are created).
    meta : bytes
        The UTF-8 JSON metadata.
    meta_dtype : str
        Its HDF5 type, ``"S<n>"`` (SPEC §2.4).
    total_cells : int
        The number of cells of the array (initial ``empty_cells``).
    data : numpy.ndarray or numpy scalar, optional
        Every cell's value (an array of ``shape``, or a scalar to broadcast), already of the
        array's dtype.
    shape : tuple of int, optional
        The shape of the array (required with ``data``).
    fill_value : Any, optional
        The fill value (required with ``data``).
    dataset_kwargs : Mapping, optional
        h5py creation options of ``data``.

    Raises
    ------
    FileExistsError
        If ``path`` already exists.

    """
    values: np.ndarray[Any, Any] | None = None
    empty = total_cells
    if data is not None:
        if shape is None:
            raise ValueError("create_array_file: 'shape' is required with 'data'")
        arr = np.asarray(data)
        fill = count_fill(arr, fill_value) * (total_cells if arr.ndim == 0 else 1)
        if fill < total_cells:
            values, empty = (arr if arr.ndim == 0 else arr.reshape(shape)), fill
    image = templates.empty_array_image(meta, meta_dtype, empty) if values is None else None
    parts = None
    if values is not None and values.ndim and shape is not None and not dataset_kwargs:
        parts = templates.data_array_parts(meta, meta_dtype, empty, shape, values.dtype, fill_value)
    for attempt in range(5):
        ensure_dir(path.parent)
        try:
            atomic.discard_leftovers(path)  # of an earlier file of that name: never to apply
            if image is not None:  # the bytes h5py would write, from a per-process template
                with atomic.replacing(path, exclusive=True) as tmp:
                    templates.write_new_file(tmp, image, np.empty(0, np.uint8), b"")
                return
            if parts is not None and values is not None:
                with atomic.replacing(path, exclusive=True) as tmp:
                    templates.write_new_file(tmp, parts[0], values, parts[1])
                return
            with atomic.replacing(path, exclusive=True) as tmp, _fresh(tmp, path) as handle:
                handle.create_dataset(META, data=np.array(meta, dtype=meta_dtype))
                handle.create_dataset(EMPTY_CELLS, data=np.int64(empty))
                if values is not None and shape is not None:
                    dataset = _create_data(handle, shape, values.dtype, fill_value, dataset_kwargs or {})
                    _fill_new(dataset, values, shape)
            return
        except FileNotFoundError:  # a concurrent cleanup removed the empty parent: retry
            if attempt == 4 or os.path.exists(path.parent):
                raise


def check_filter_available(compression: Any) -> None:
    """Refuse an HDF5 filter id that this process's HDF5 cannot write with.

    Parameters
    ----------
    compression : Any
        The ``compression`` of a collection's options: a filter id (an int) is checked; names
        (``"gzip"``...) and ``None`` are HDF5's own.

    Raises
    ------
    DekerValidationError
        If HDF5 knows no filter of that id (none registered, none found in its plugin path).
    """
    if not isinstance(compression, int) or isinstance(compression, bool):
        return
    if not 0 <= compression <= 65535 or not h5py.h5z.filter_avail(compression):
        raise DekerValidationError(
            f"HDF5 filter {compression} is not available here: its datasets could not be written "
            "(use a filter of hdf5plugin, or set HDF5_PLUGIN_PATH to the directory of its plugin)"
        )


def read_meta(path: Path) -> bytes:
    """Return the ``meta`` bytes of an array file.

    Returns
    -------
    bytes
        The stored JSON (trailing NUL padding removed).

    """
    with _open(path, "r") as handle:
        return bytes(handle[META][()])


def write_meta(path: Path, meta: bytes, meta_dtype: str) -> None:
    """Replace the ``meta`` of an array file.

    The dataset is rewritten in place when its type is unchanged, else re-created; either way
    all or nothing (undo journal).

    Parameters
    ----------
    meta : bytes
        The new UTF-8 JSON.
    meta_dtype : str
        Its HDF5 type, ``"S<n>"``.

    """
    value = np.array(meta, dtype=meta_dtype)
    with _modify(path) as handle:
        current = handle.get(META)
        if current is not None and current.dtype == value.dtype and current.shape == ():
            current[()] = value
            return
        if current is not None:
            del handle[META]
        handle.create_dataset(META, data=value)


def read_empty_cells(path: Path) -> int:
    """Return the ``empty_cells`` count of an array file.

    Returns
    -------
    int
        The number of cells holding the fill value.

    """
    with _open(path, "r") as handle:
        return int(handle[EMPTY_CELLS][()])


def has_data(path: Path) -> bool:
    """Return whether an array file has a ``data`` dataset.

    Returns
    -------
    bool
        ``False`` when every cell is the fill value and nothing is stored.

    """
    with _open(path, "r") as handle:
        return DATA in handle


def read_region(
    path: Path,
    bounds: Bounds,
    dtype: np.dtype[Any] | type | str,
    fill_value: Any,
    out: np.ndarray[Any, Any] | None = None,
    *,
    file_shape: tuple[int, ...] | None = None,
) -> np.ndarray[Any, Any]:
    """Read a region of an array file.

    Parameters
    ----------
    dtype : numpy dtype
        The array dtype.
    fill_value : Any
        The fill value, returned where nothing is stored.
    out : numpy.ndarray, optional
        Where to put the result (shape of the selection); read into directly when possible.
    file_shape : tuple of int, optional
        The shape of the array in the file, given when the file may have been written whole
        from a template (its collection has no chunking or compression options): such a
        file is read without HDF5 even while it is new (:func:`rawio.read_templated
        <deker.storage.rawio.read_templated>`).

    Returns
    -------
    numpy.ndarray
        The selection: shape of the slices (integer dimensions dropped; 0-d for a single cell).
        ``out`` itself when given.

    """
    shape = selection_shape(bounds)
    if math.prod(shape):  # the file's layout known and unchanged: no HDF5 open (rawio)
        cached = rawio.read_cached(path, bounds, np.dtype(dtype), fill_value, out)
        if cached is None:  # chunked: decoded outside h5py's lock (chunkcodec)
            cached = chunkcodec.read_cached(path, bounds, np.dtype(dtype), out)
        if cached is None and file_shape is not None:
            cached = rawio.read_templated(path, bounds, file_shape, np.dtype(dtype), fill_value, out)
        if cached is not None:
            return cached
    with _open(path, "r") as handle:
        dataset = handle.get(DATA)
        rawio.remember(path, handle, dataset)
        if dataset is None:
            if out is None:
                return np.full(shape, fill_value, dtype=np.dtype(dtype))
            out[...] = fill_value
            return out
        if math.prod(shape) == 0:
            if out is None:
                return np.empty(shape, dtype=dataset.dtype)
            return out
        decoded = chunkcodec.read_open(path, handle, dataset, bounds, out)
        if decoded is not None:
            return decoded
        if out is None:
            if math.prod(shape) * np.dtype(dtype).itemsize >= rawio.MIN_BYTES:
                raw = np.empty(shape, dtype=dataset.dtype)
                if rawio.read_region_into(handle, dataset, bounds, raw):
                    return raw
            return np.asarray(dataset[bounds])
        if out.shape == shape and rawio.read_region_into(handle, dataset, bounds, out):
            return out
        if (
            out.shape == shape
            and out.dtype == dataset.dtype
            and out.flags.c_contiguous
            and out.flags.writeable
        ):
            dataset.read_direct(out, source_sel=bounds)
        else:
            out[...] = dataset[bounds]
        return out


def _expand(value: np.ndarray[Any, Any], shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    if value.ndim == 0 and shape and math.prod(shape) <= _EXPAND_SCALAR_CELLS:
        return np.full(shape, value, dtype=value.dtype)
    return value


def _count_all_fill(dataset: h5py.Dataset, fill_value: Any) -> int:
    """Count the fill cells of a whole dataset, reading bounded slabs along the first axis."""
    shape = dataset.shape
    row_cells = math.prod(shape[1:]) if len(shape) > 1 else 1
    step = max(1, _SCAN_CELLS // max(1, row_cells))
    total = 0
    for start in range(0, shape[0], step):
        total += count_fill(dataset[start : start + step], fill_value)
    return total


def _known_fill(empty: int, cells: int, total: int) -> int | None:
    """Fill cells a region of ``cells`` holds now, if the counter tells (else None: read it)."""
    if cells == total:
        return empty
    if empty <= 0:
        return 0
    if empty >= total:
        return cells
    return None


def _store(
    handle: h5py.File, dataset: h5py.Dataset | None, empty: int, total: int, whole: bool, fill: Any
) -> None:
    """Store the new counter; drop ``data`` when every cell is fill (verified if partial)."""
    if dataset is not None and empty >= total:
        if not whole:
            empty = _count_all_fill(dataset, fill)
        if empty >= total:
            del handle[DATA]
    handle[EMPTY_CELLS][()] = np.int64(min(max(empty, 0), total))


def write_region(
    path: Path,
    bounds: Bounds,
    data: Values,
    shape: tuple[int, ...],
    fill_value: Any,
    dataset_kwargs: Mapping[str, Any],
) -> None:
    """Write ``data`` into a region of an array file, keeping ``empty_cells`` exact.

    The ``data`` dataset is created at the first write that stores a non-fill cell, with
    ``fillvalue=fill_value`` and ``dataset_kwargs``; only the region is written (HDF5 fills the
    rest).  When every cell holds the fill value afterwards, ``data`` is deleted.

    Parameters
    ----------
    data : numpy.ndarray or numpy scalar
        Values of the array dtype, of the selection's shape, or a scalar to broadcast.
    dataset_kwargs : Mapping
        h5py creation options of ``data`` (``chunks``, ``compression``, ``compression_opts``).

    """
    sel_shape = selection_shape(bounds)
    cells = math.prod(sel_shape)
    total = math.prod(shape)
    value = np.asarray(data)
    if cells == 0:
        if not os.path.exists(path):
            raise _missing(path)
        return
    if cells == total:  # a whole new version: the old data is neither read nor journaled
        new_fill = count_fill(value, fill_value) * (cells if value.ndim == 0 else 1)
        whole = None if new_fill >= total else (value if value.ndim == 0 else value.reshape(shape))
        _write_whole(path, whole, min(new_fill, total), shape, fill_value, dataset_kwargs)
        return
    with _modify(path) as handle:
        new_fill = count_fill(value, fill_value) * (cells if value.ndim == 0 else 1)
        dataset = handle.get(DATA)
        empty = int(handle[EMPTY_CELLS][()])
        if dataset is None:
            if new_fill >= cells:
                return  # only fill written where nothing is stored: nothing changes
            empty = total  # (then the counter tells: the region held fill only)
            dataset = _create_data(handle, shape, value.dtype, fill_value, dataset_kwargs)
        old_fill = _known_fill(empty, cells, total)  # None: the counter cannot tell, count
        counted = chunkcodec.write_region(dataset, bounds, value, fill_value, count_old=old_fill is None)
        if counted is None:  # not for the codec path: h5py writes (counting first if need be)
            if old_fill is None:
                old_fill = count_fill(dataset[bounds], fill_value)
            dataset[bounds] = _expand(value, sel_shape)
        elif old_fill is None:
            old_fill = counted
        new_empty = min(max(empty - old_fill + new_fill, 0), total)
        _store(handle, dataset, new_empty, total, False, fill_value)


def clear_region(path: Path, bounds: Bounds, shape: tuple[int, ...], fill_value: Any) -> None:
    """Reset a region of an array file to the fill value, keeping ``empty_cells`` exact.

    Nothing outside ``bounds`` changes.  A clear of the whole array, or one that leaves every
    cell empty, deletes ``data`` (a whole clear writes a new file without it, which also
    gives its space back).
    """
    sel_shape = selection_shape(bounds)
    cells = math.prod(sel_shape)
    total = math.prod(shape)
    if cells == total and total > 0:
        _write_whole(path, None, total, shape, fill_value, {})
        return
    with _modify(path) as handle:
        dataset = handle.get(DATA)
        if dataset is None or cells == 0:
            return
        empty = int(handle[EMPTY_CELLS][()])
        # Read the region unless the counter proves it holds no fill (a legacy counter may
        # over-estimate, so "all empty" is never trusted here).
        old_fill = 0 if empty <= 0 else count_fill(dataset[bounds], fill_value)
        if old_fill == cells:  # already empty: nothing to write
            return
        fill = np.asarray(fill_value, dtype=dataset.dtype)
        # through the codec path where it can: HDF5's own filtered write, like a direct one,
        # keeps the old filter mask of a chunk rewritten at the same size (chunkcodec knows)
        if chunkcodec.write_region(dataset, bounds, fill, fill_value, count_old=False) is None:
            dataset[bounds] = _expand(fill, sel_shape)
        _store(handle, dataset, empty - old_fill + cells, total, False, fill_value)
