"""The storage protocol of array files: what one file of an array holds and what can be done to it.

This module owns the contract between deker's array operations and the files that store them,
and nothing of any file format:

- :class:`ArrayLayout`, a small frozen value describing what one array (or tile) file holds:
  the array's shape, numpy dtype, fill value and the dataset options of its collection.  It
  travels with a task (it pickles) and answers the questions an implementation asks of it
  (the number of cells, whether its files can hold their data as one contiguous block);
- :class:`ArrayFiles`, the operations on one file: create it (empty, or holding every cell),
  read, write and clear a region, read and replace its metadata, count its empty cells, say
  whether it stores any data, and delete it;
- :func:`count_fill`, what "a cell holding the fill value" means (NaN-aware), by which every
  implementation keeps its empty-cell count;
- :func:`os_errors`, how an operating-system error met on a file becomes a deker error.

The HDF5 implementation is :class:`deker.storage.hdf5files.HDF5Files` (SPEC §2.4).  Every
implementation passes the conformance suite of the tests (``tests/storage_helpers/
conformance.py``).  Locking is not part of this protocol: the caller holds the file's read
lock around a read and its write lock around every change (:mod:`deker.storage.locks`), and an
implementation never waits for a lock.  Bounds are normalised (:data:`Bounds`): one entry per
dimension, an int in range or a slice with explicit ``start`` and ``stop``, step 1; cell values are
:data:`Values` (an array or a numpy scalar).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from deker.errors import DekerBaseApplicationError, DekerStorageError

__all__ = ["ArrayFiles", "ArrayLayout", "Bounds", "Values", "count_fill", "os_errors", "selection_shape"]

#: Normalised bounds of a region: per dimension an int in range or a ``slice(start, stop)``.
Bounds = tuple[int | slice, ...]

#: Cell values: an array, or a numpy scalar that stands for every cell of a region.
Values = np.ndarray[Any, Any] | np.generic


def selection_shape(bounds: Bounds) -> tuple[int, ...]:
    """Return the shape of a selection: one length per slice (integer bounds drop their axis).

    Parameters
    ----------
    bounds : tuple of int or slice
        Normalised bounds (slices with step 1).

    Returns
    -------
    tuple of int
        The lengths, never negative.

    """
    return tuple(max(0, b.stop - b.start) for b in bounds if isinstance(b, slice))


@dataclass(frozen=True)
class ArrayLayout:
    """What one array file holds: the array's shape, dtype, fill value and dataset options.

    Build it once per array or collection (not per call): its derived answers are computed at
    their first use and kept.  It pickles, with what it has computed.

    Parameters
    ----------
    shape : tuple of int
        The shape of the array stored in the file.
    dtype : str
        Its numpy dtype string (e.g. ``"<f8"``); another spelling numpy accepts is normalised.
    fill_value : Any
        The fill value: what every cell holds until written, and again once cleared.
    dataset_kwargs : Mapping, optional
        The collection's dataset options (``chunks``, ``compression``, ``compression_opts``,
        as h5py takes them); empty for none.  Kept as a copy.

    """

    shape: tuple[int, ...]
    dtype: str
    fill_value: Any
    dataset_kwargs: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "dtype", np.dtype(self.dtype).str)
        object.__setattr__(self, "dataset_kwargs", dict(self.dataset_kwargs))

    @cached_property
    def np_dtype(self) -> np.dtype[Any]:
        """The numpy dtype of the cells."""
        return np.dtype(self.dtype)

    @cached_property
    def cells(self) -> int:
        """The number of cells of the array."""
        return math.prod(self.shape)

    @cached_property
    def contiguous(self) -> bool:
        """Whether the files hold their data as one contiguous, unfiltered block.

        True when the collection has no dataset options: such a file can be written whole
        from a template and read with ``preadv``, without the file format's library.
        """
        return not self.dataset_kwargs


def _nan_equal(values: np.ndarray[Any, Any], fill: Any) -> np.ndarray[Any, Any]:
    if isinstance(fill, float) and math.isnan(fill):
        return np.asarray(np.isnan(values))
    mask = np.asarray(values == fill)
    if isinstance(fill, float) and fill == 0.0:
        # -0.0 == 0.0, but a file left without data reads every cell as the fill value itself:
        # a zero of the other sign is data, or dropping the data would flip its sign
        mask = mask & (np.signbit(values) == (math.copysign(1.0, fill) < 0))
    return mask


def count_fill(values: Values, fill_value: Any) -> int:
    """Count the cells of ``values`` that hold ``fill_value``.

    NaN counts as fill when the fill value is NaN; a zero only when its sign is the fill
    value's (``-0.0`` is data in an array filled with ``0.0``: the fill value is what cells read
    as once a file stores no data); complex values compare their real and imaginary parts
    separately, each so (``nan+0j`` matches ``nan+0j``).

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
        fill = float(fill_value)
        if math.isnan(fill) and arr.size and not np.isnan(np.min(arr)):
            return 0  # NaN propagates through min: none here (one pass, no mask allocated)
        mask = _nan_equal(arr, fill)
    else:
        mask = np.asarray(arr == fill_value)
    return int(np.count_nonzero(mask))


@contextmanager
def os_errors(path: Path | str, doing: str) -> Iterator[None]:
    """Turn an operating-system error met while working on ``path`` into a deker error.

    :class:`~deker.errors.DekerStorageError` says ``"Cannot <doing> <path>: <error>"`` (a
    directory where a file should be, a file that may not be written, a full disk...).
    ``FileNotFoundError`` (the callers' "deleted") and deker's own errors pass unchanged.

    Parameters
    ----------
    path : Path or str
        The file (or directory) the work is about.
    doing : str
        What was being done to it, e.g. ``"write array file"``.

    Yields
    ------
    None
        While the work runs.

    Raises
    ------
    DekerStorageError
        For any other ``OSError``.

    """
    try:
        yield
    except (DekerBaseApplicationError, FileNotFoundError):
        raise
    except OSError as exc:
        raise DekerStorageError(f"Cannot {doing} {path}: {exc}") from exc


@runtime_checkable
class ArrayFiles(Protocol):
    """The operations on one array file, whatever its format.

    An implementation is cheap to make and pickles (tasks carry it to other processes); it
    keeps no state a caller could see between calls, and picks its own fast paths from the
    :class:`ArrayLayout`.  A missing file raises ``FileNotFoundError`` from every operation but
    :meth:`create` and :meth:`delete`; a damaged one, :class:`~deker.errors.DekerStorageError`.
    A change is all or nothing: one that fails (bad data, a full disk, a crash) leaves the
    file as it was.  Empty cells are counted exactly (:func:`count_fill`).

    The methods' parameters mean the same in each: ``path`` (:class:`~pathlib.Path`) is the
    file, ``layout`` (:class:`ArrayLayout`) what it holds, ``bounds`` (:data:`Bounds`) the
    region; a method's own docstring documents the others.
    """

    def create(
        self, path: Path, layout: ArrayLayout, meta: bytes, meta_dtype: str, data: Values | None = None
    ) -> None:
        """Create the file of an array: with its metadata, empty or holding every cell.

        Readers never see a half-made file, and creation fails if ``path`` exists.

        Parameters
        ----------
        path : Path
            The file to create (its parents are created).
        meta : bytes
            The metadata (UTF-8 JSON).
        meta_dtype : str
            The stored type of the metadata, ``"S<n>"`` (SPEC §2.4).
        data : numpy.ndarray or numpy scalar, optional
            Every cell's value: an array of the layout's shape and dtype, or a scalar of its
            dtype to broadcast.  Without it every cell holds the fill value.

        Raises
        ------
        FileExistsError
            If ``path`` exists.

        """

    def read(
        self, path: Path, layout: ArrayLayout, bounds: Bounds, out: np.ndarray[Any, Any] | None = None
    ) -> np.ndarray[Any, Any]:
        """Read a region; cells never written (or cleared) read as the fill value.

        Parameters
        ----------
        out : numpy.ndarray, optional
            Where to put the region (the selection's shape), possibly a view into a larger
            array.

        Returns
        -------
        numpy.ndarray
            The region, of the layout's dtype and the selection's shape (int bounds drop
            their axis: 0-d for one cell); ``out`` itself when given.

        """

    def write(self, path: Path, layout: ArrayLayout, bounds: Bounds, data: Values) -> None:
        """Write a region (upsert), keeping the empty-cell count exact.

        Cells outside ``bounds`` keep their values; when every cell holds the fill value
        afterwards, the file stores no data (:meth:`has_data`).

        Parameters
        ----------
        data : numpy.ndarray or numpy scalar
            Values of the layout's dtype: of the selection's shape, or a scalar to broadcast.

        Raises
        ------
        TypeError or ValueError
            If ``data`` is an array of another shape (nothing is written).

        """

    def clear(self, path: Path, layout: ArrayLayout, bounds: Bounds) -> None:
        """Reset a region to the fill value, keeping the empty-cell count exact."""

    def read_meta(self, path: Path) -> bytes:
        """Return the metadata of the file, as given to :meth:`create` or :meth:`write_meta`.

        Returns
        -------
        bytes
            The metadata.

        """

    def write_meta(self, path: Path, meta: bytes, meta_dtype: str) -> None:
        """Replace the metadata of the file (its cells do not change).

        Parameters
        ----------
        meta : bytes
            The new metadata (UTF-8 JSON).
        meta_dtype : str
            Its stored type, ``"S<n>"``.

        """

    def empty_cells(self, path: Path) -> int:
        """Return how many cells of the file hold the fill value.

        Returns
        -------
        int
            The stored count (exact for files this protocol wrote; deker 1.1.7 may have left
            an inexact one, which the next change that could empty the file verifies).

        """

    def has_data(self, path: Path) -> bool:
        """Return whether the file stores any cell (``False``: every cell is the fill value).

        Returns
        -------
        bool
            Whether it stores data.

        """

    def delete(self, path: Path) -> None:
        """Delete the file and what an interrupted change of it left; a missing file is no error."""
