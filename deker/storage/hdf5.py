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
(:mod:`deker.storage.locks`).  Importing this module imports :mod:`hdf5plugin` so compressed
datasets (Zstd, ...) can be read and written; it changes no environment variable.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (registers the compression filters with HDF5)
import numpy as np

from deker.errors import DekerStorageError

__all__ = [
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

Bounds = tuple[int | slice, ...]

DATA = "data"
META = "meta"
EMPTY_CELLS = "empty_cells"

# Scalars broadcast over regions up to this many cells are expanded in memory (h5py's own
# broadcasting is several times slower); larger regions are broadcast by h5py.
_EXPAND_SCALAR_CELLS = 1 << 22
# Cells per slab when a whole dataset is scanned to verify an inexact legacy counter.
_SCAN_CELLS = 1 << 22


@contextmanager
def _open(path: Path, mode: str) -> Iterator[h5py.File]:
    """Open ``path`` with HDF5 file locking off; map damage to :class:`DekerStorageError`."""
    try:
        handle = h5py.File(path, mode, locking=False)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if not os.path.exists(path):
            raise FileNotFoundError(2, "No such array file", str(path)) from exc
        raise DekerStorageError(f"Cannot open array file {path}: {exc}") from exc
    try:
        with handle:
            yield handle
    except (KeyError, OSError) as exc:
        raise DekerStorageError(f"Array file {path} is damaged or incomplete: {exc}") from exc


def _selection_shape(bounds: Bounds) -> tuple[int, ...]:
    return tuple(max(0, b.stop - b.start) for b in bounds if isinstance(b, slice))


def _nan_equal(values: np.ndarray, fill: Any) -> np.ndarray:
    if isinstance(fill, float) and math.isnan(fill):
        return np.asarray(np.isnan(values))
    return np.asarray(values == fill)


def count_fill(values: np.ndarray | np.generic, fill_value: Any) -> int:
    """Count the cells of ``values`` that hold ``fill_value``.

    NaN counts as fill when the fill value is NaN; complex values compare their real and
    imaginary parts separately, each NaN-aware (so ``nan+0j`` matches ``nan+0j``).

    Parameters
    ----------
    values : numpy.ndarray or numpy scalar
        The cells.
    fill_value : Any
        The fill value of the array.

    Returns
    -------
    int
        The number of fill cells.

    """
    arr = np.asarray(values)
    if arr.dtype.kind == "c":
        fill = complex(fill_value)
        mask = _nan_equal(arr.real, fill.real) & _nan_equal(arr.imag, fill.imag)
    elif arr.dtype.kind == "f":
        mask = _nan_equal(arr, float(fill_value))
    else:
        mask = np.asarray(arr == fill_value)
    return int(np.count_nonzero(mask))


def create_array_file(path: Path, meta: bytes, meta_dtype: str, total_cells: int) -> None:
    """Create an array file holding ``meta`` and ``empty_cells`` only (no ``data``).

    The file is written under a temporary name in the same directory and linked into place
    atomically: readers never see a half-written file, and creation fails if ``path`` exists.

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

    Raises
    ------
    FileExistsError
        If ``path`` already exists.

    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    for attempt in range(5):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with h5py.File(tmp, "w", locking=False) as handle:
                handle.create_dataset(META, data=np.array(meta, dtype=meta_dtype))
                handle.create_dataset(EMPTY_CELLS, data=np.int64(total_cells))
            break
        except FileNotFoundError:  # a concurrent cleanup removed the empty parent: retry
            if attempt == 4:
                raise
        except OSError:
            if attempt == 4 or path.parent.exists():
                with suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
    try:
        os.link(tmp, path)
    finally:
        with suppress(FileNotFoundError):
            os.unlink(tmp)


def read_meta(path: Path) -> bytes:
    """Return the ``meta`` bytes of an array file.

    Parameters
    ----------
    path : Path
        The data file.

    Returns
    -------
    bytes
        The stored JSON (trailing NUL padding removed).

    """
    with _open(path, "r") as handle:
        return bytes(handle[META][()])


def write_meta(path: Path, meta: bytes, meta_dtype: str) -> None:
    """Replace the ``meta`` of an array file.

    The dataset is rewritten in place when its type is unchanged, else re-created.

    Parameters
    ----------
    path : Path
        The data file.
    meta : bytes
        The new UTF-8 JSON.
    meta_dtype : str
        Its HDF5 type, ``"S<n>"``.

    """
    value = np.array(meta, dtype=meta_dtype)
    with _open(path, "r+") as handle:
        current = handle.get(META)
        if current is not None and current.dtype == value.dtype and current.shape == ():
            current[()] = value
            return
        if current is not None:
            del handle[META]
        handle.create_dataset(META, data=value)


def read_empty_cells(path: Path) -> int:
    """Return the ``empty_cells`` count of an array file.

    Parameters
    ----------
    path : Path
        The data file.

    Returns
    -------
    int
        The number of cells holding the fill value.

    """
    with _open(path, "r") as handle:
        return int(handle[EMPTY_CELLS][()])


def has_data(path: Path) -> bool:
    """Return whether an array file has a ``data`` dataset.

    Parameters
    ----------
    path : Path
        The data file.

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
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Read a region of an array file.

    Parameters
    ----------
    path : Path
        The data file.
    bounds : tuple of int or slice
        Normalised bounds (one entry per dimension, ints in range, slices with explicit
        ``start``/``stop`` and step 1).
    dtype : numpy dtype
        The array dtype.
    fill_value : Any
        The fill value, returned where nothing is stored.
    out : numpy.ndarray, optional
        Where to put the result (shape of the selection); read into directly when possible.

    Returns
    -------
    numpy.ndarray
        The selection: shape of the slices (integer dimensions dropped; 0-d for a single cell).
        ``out`` itself when given.

    """
    shape = _selection_shape(bounds)
    with _open(path, "r") as handle:
        dataset = handle.get(DATA)
        if dataset is None:
            if out is None:
                return np.full(shape, fill_value, dtype=np.dtype(dtype))
            out[...] = fill_value
            return out
        if math.prod(shape) == 0:
            if out is None:
                return np.empty(shape, dtype=dataset.dtype)
            return out
        if out is None:
            return np.asarray(dataset[bounds])
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


def _expand(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
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


def _old_fill(dataset: h5py.Dataset, bounds: Bounds, empty: int, cells: int, total: int, fill: Any) -> int:
    """Fill cells the region holds now, reading it only when the counter cannot tell."""
    if cells == total:
        return empty
    if empty <= 0:
        return 0
    if empty >= total:
        return cells
    return count_fill(dataset[bounds], fill)


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
    data: np.ndarray | np.generic,
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
    path : Path
        The data file.
    bounds : tuple of int or slice
        Normalised bounds of the region.
    data : numpy.ndarray or numpy scalar
        Values of the array dtype, of the selection's shape, or a scalar to broadcast.
    shape : tuple of int
        The shape of the whole array.
    fill_value : Any
        The fill value of the array.
    dataset_kwargs : Mapping
        h5py creation options of ``data`` (``chunks``, ``compression``, ``compression_opts``).

    """
    sel_shape = _selection_shape(bounds)
    cells = math.prod(sel_shape)
    total = math.prod(shape)
    value = np.asarray(data)
    with _open(path, "r+") as handle:
        if cells == 0:
            return
        new_fill = count_fill(value, fill_value) * (cells if value.ndim == 0 else 1)
        dataset = handle.get(DATA)
        empty = int(handle[EMPTY_CELLS][()])
        if dataset is None:
            empty, old_fill = total, cells
        else:
            old_fill = _old_fill(dataset, bounds, empty, cells, total, fill_value)
        new_empty = min(max(empty - old_fill + new_fill, 0), total)
        if new_empty >= total and (dataset is None or cells == total):
            if dataset is not None:
                del handle[DATA]
            handle[EMPTY_CELLS][()] = np.int64(total)
            return
        if dataset is None:
            dataset = handle.create_dataset(
                DATA,
                shape=shape,
                dtype=value.dtype,
                fillvalue=np.asarray(fill_value, dtype=value.dtype)[()],
                **dict(dataset_kwargs),
            )
        dataset[bounds] = _expand(value, sel_shape)
        _store(handle, dataset, new_empty, total, cells == total, fill_value)


def clear_region(path: Path, bounds: Bounds, shape: tuple[int, ...], fill_value: Any) -> None:
    """Reset a region of an array file to the fill value, keeping ``empty_cells`` exact.

    Nothing outside ``bounds`` changes.  A clear of the whole array, or one that leaves every
    cell empty, deletes ``data``.

    Parameters
    ----------
    path : Path
        The data file.
    bounds : tuple of int or slice
        Normalised bounds of the region.
    shape : tuple of int
        The shape of the whole array.
    fill_value : Any
        The fill value of the array.

    """
    sel_shape = _selection_shape(bounds)
    cells = math.prod(sel_shape)
    total = math.prod(shape)
    with _open(path, "r+") as handle:
        dataset = handle.get(DATA)
        if dataset is None or cells == 0:
            return
        empty = int(handle[EMPTY_CELLS][()])
        if cells == total:
            del handle[DATA]
            handle[EMPTY_CELLS][()] = np.int64(total)
            return
        # Read the region unless the counter proves it holds no fill (a legacy counter may
        # over-estimate, so "all empty" is never trusted here).
        old_fill = 0 if empty <= 0 else count_fill(dataset[bounds], fill_value)
        if old_fill == cells:  # already empty: nothing to write
            return
        fill = np.asarray(fill_value, dtype=dataset.dtype)
        dataset[bounds] = _expand(fill, sel_shape)
        _store(handle, dataset, empty - old_fill + cells, total, False, fill_value)
