"""Subsets: a rectangular region of an Array (:class:`Subset`) or a VArray (:class:`VSubset`).

A subset reads, updates (upserts), clears, describes and converts its region.  An Array's
subset works on one file in the calling thread.  A VArray's subset fans out into one task per
tile on the client's executor: reads take each tile's read lock; updates and clears first take
the write lock of exactly the tiles they touch (in grid order, under one owner token that the
tile tasks carry), then run the tasks, then release.  Failed tiles are reported together in a
:class:`~deker.errors.DekerVSubsetError` holding the real exceptions.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Iterator
from decimal import Decimal
from fractions import Fraction
from numbers import Number, Rational
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from deker import pipeline
from deker.cf import array_layout, data_array, datetime64_values, import_xarray
from deker.dimensions import Dimension, TimeDimension
from deker.dtypes import check_integer_range, convert_exactly
from deker.errors import (
    DekerArrayError,
    DekerArrayTypeError,
    DekerInstanceNotExistsError,
    DekerShapeError,
    DekerSubsetError,
)
from deker.indexing import Selection, bounds_to_str
from deker.sizes import check_memory
from deker.tasks import FileSpec, clear_array, read_array, write_array
from deker.tileindex import TileIndex
from deker.tiling import tile_pieces

if TYPE_CHECKING:
    import xarray

    from deker.context import StorageContext

__all__ = ["ArrayHandle", "Subset", "VArrayHandle", "VSubset", "prepare_update_data"]

logger = logging.getLogger(__name__)


def _is_scalar(data: Any) -> bool:
    return isinstance(data, (np.generic, Number)) and not isinstance(data, (str, bytes))


def prepare_update_data(
    data: Any, dtype: np.dtype[Any], shape: tuple[int, ...]
) -> np.ndarray[Any, Any] | np.generic:
    """Validate update data and bring it to ``dtype`` and (broadcast) ``shape``.

    Rules (SPEC §7.3, with numpy broadcasting): ``None`` is refused; scalars, lists, tuples and
    ndarrays are accepted; scalars and Python lists are converted when no value changes;
    ndarrays must already have the array's dtype; smaller arrays broadcast like numpy.

    Parameters
    ----------
    data : Any
        What the user passed to ``update``.
    dtype : numpy.dtype
        The array's dtype.
    shape : tuple of int
        The subset's shape.

    Returns
    -------
    numpy.ndarray or numpy.generic
        A scalar of ``dtype`` or an array of ``dtype`` and ``shape`` (maybe a broadcast view).

    Raises
    ------
    DekerArrayError
        ``data`` is None.
    DekerArrayTypeError
        The type or dtype cannot be stored without changing values.
    DekerShapeError
        The shape does not broadcast to the subset's shape (an :class:`IndexError`).
    """
    if data is None:
        raise DekerArrayError("Updating data shall not be None")
    if isinstance(data, (bool, np.bool_)):
        raise DekerArrayTypeError(f"Invalid data type: {type(data)}; {dtype} expected")
    if _is_scalar(data):
        value = _scalar_unchanged(data, dtype)
        if shape == ():
            return value
        return np.broadcast_to(np.asarray(value, dtype=dtype), shape)
    if isinstance(data, (list, tuple)):
        try:
            raw = np.asarray(data)
        except ValueError as exc:
            raise DekerArrayTypeError(f"Invalid data: {exc}") from exc
        if raw.dtype.kind not in "biufc" or raw.dtype.kind == "b":
            raise DekerArrayTypeError(f"Invalid data type: lists of {raw.dtype} values; {dtype} expected")
        if _rounded_integers(data, raw):
            raise DekerArrayTypeError(
                f"Invalid data: some integers of the list change as {raw.dtype}, the type numpy gives "
                f"the list; {dtype} expected"
            )
        arr = convert_exactly(raw, dtype, f"the {raw.dtype} list")
    elif isinstance(data, np.ndarray):
        if data.dtype != dtype:
            raise DekerArrayTypeError(f"Invalid data dtype: {data.dtype}; {dtype} expected")
        arr = data
    else:
        raise DekerArrayTypeError(f"Invalid data type: {type(data)}; {dtype} expected")
    if arr.shape == shape:
        return arr
    try:
        return np.broadcast_to(arr, shape)
    except ValueError as exc:
        raise DekerShapeError(
            f"Invalid data shape: {arr.shape}; {shape} expected (or a shape that broadcasts)"
        ) from exc


#: Every integer of at most this magnitude is a float64 (and a wider float); numpy's own
#: promotions to a smaller float type keep their integers (int16 and float16 make float32).
_EXACT_FLOAT_INTEGERS = 2**53


def _rounded_integers(data: list[Any] | tuple[Any, ...], raw: np.ndarray[Any, Any]) -> bool:
    """Whether numpy rounded an integer of the list ``data`` in making ``raw`` (``np.asarray(data)``).

    A list mixing integers with floats, or negative integers with integers above ``int64``'s
    range (Python's or numpy's), becomes a float array, where an integer beyond 2**53 may
    already be another number before :func:`~deker.dtypes.convert_exactly` sees it.
    """
    if raw.dtype.kind not in "fc" or raw.size == 0 or raw.real.dtype.itemsize < 8:
        return False  # (numpy makes float16 and float32 lists only of integers they hold)
    with np.errstate(invalid="ignore"):  # (NaN)
        if not bool(np.any(np.abs(raw.real) >= _EXACT_FLOAT_INTEGERS)):
            return False  # (the usual case: one vectorised look)
    items = np.array(data, dtype=object)
    if items.shape != raw.shape:  # pragma: no cover - one nesting makes both
        return True
    for item, value in zip(items.flat, raw.flat, strict=True):
        integer = isinstance(item, (int, np.integer)) and not isinstance(item, (bool, np.bool_))
        if integer and _exact(value) != _exact(int(item)):  # (as fractions: longdouble too)
            return True
    return False


#: An exact number: a fraction, or the name of a value that is none ("nan", "+inf", "-inf").
_Exact = Fraction | str


def _exact_real(x: Any) -> _Exact:
    """Return the real number ``x`` exactly (any int, float, numpy number, Fraction or Decimal)."""
    if isinstance(x, (int, np.integer)):
        return Fraction(int(x))
    if isinstance(x, (float, np.floating)):
        if np.isnan(x):
            return "nan"
        if np.isinf(x):
            return "+inf" if x > 0 else "-inf"
        return Fraction(*x.as_integer_ratio())  # (exact for every float type, longdouble too)
    if isinstance(x, Decimal):
        if x.is_nan():
            return "nan"
        if x.is_infinite():
            return "+inf" if x > 0 else "-inf"
        return Fraction(x)
    if isinstance(x, Rational):
        return Fraction(int(x.numerator), int(x.denominator))
    raise TypeError(f"{type(x).__name__} is not a number deker can compare exactly")


def _exact(x: Any) -> tuple[_Exact, _Exact]:
    """Return the real and imaginary parts of the number ``x`` exactly."""
    if isinstance(x, (complex, np.complexfloating)):
        return _exact_real(x.real), _exact_real(x.imag)
    return _exact_real(x), Fraction(0)


def _scalar_unchanged(data: Any, dtype: np.dtype[Any]) -> np.generic:
    """Return the scalar ``data`` as a ``dtype`` scalar, or refuse it if that changes its value.

    The stored value and ``data`` are compared as exact fractions (a NaN with a NaN, part by
    part for complex numbers): numpy's own comparison rounds one side first (an int to float64,
    and under NumPy 2 a Python float to the array's precision), and a conversion back can wrap
    around (``-1`` as uint8 is 255, which converts back to ``np.int8(-1)``), so either would let
    a changed value through.  A complex number without an imaginary part fits a real array, as
    in a list.
    """
    loss = f"Invalid data value: {data!r} cannot be stored as {dtype} without loss"
    try:
        wanted = _exact(data)
    except TypeError as exc:
        raise DekerArrayTypeError(f"Invalid data type: {type(data)}; {dtype} expected: {exc}") from exc
    source = data
    if dtype.kind != "c" and isinstance(data, (complex, np.complexfloating)):
        if wanted[1] != 0:
            raise DekerArrayTypeError(loss)
        source = data.real
    try:
        with np.errstate(all="ignore"):
            check_integer_range(dtype, source)
            value = dtype.type(source)
        same = _exact(value) == wanted
    except OverflowError as exc:  # a number out of the dtype's range (or an infinity for an int)
        raise DekerArrayTypeError(f"{loss}: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise DekerArrayTypeError(f"Invalid data type: {type(data)}; {dtype} expected: {exc}") from exc
    if not same:
        raise DekerArrayTypeError(loss)
    scalar: np.generic = value
    return scalar


class _Handle(Protocol):
    """What a subset needs of the Array or VArray it belongs to (its public face)."""

    @property
    def id(self) -> str: ...
    @property
    def collection(self) -> str: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def dtype(self) -> type[np.generic]: ...
    @property
    def fill_value(self) -> Any: ...
    @property
    def dimensions(self) -> tuple[Dimension | TimeDimension, ...]: ...
    @property
    def primary_attributes(self) -> OrderedDict[str, Any]: ...
    @property
    def custom_attributes(self) -> dict[str, Any]: ...
    @property
    def storage_context(self) -> StorageContext: ...


class ArrayHandle(_Handle, Protocol):
    """An Array as its subsets see it (:class:`deker.Array` is one): its data file's spec."""

    @property
    def spec(self) -> FileSpec: ...  # noqa: D102


class VArrayHandle(_Handle, Protocol):
    """A VArray as its subsets see it (:class:`deker.VArray` is one): its tiles."""

    @property
    def arrays_shape(self) -> tuple[int, ...]: ...  # noqa: D102
    @property
    def tiles(self) -> TileIndex: ...  # noqa: D102


class _SubsetBase:
    """What Subset and VSubset share: geometry, description, xarray."""

    _type_name = "Subset"
    _array: ArrayHandle | VArrayHandle

    def __init__(self, array: ArrayHandle | VArrayHandle, selection: Selection) -> None:
        self._array = array
        self._selection = selection

    @property
    def array(self) -> ArrayHandle | VArrayHandle:
        """The Array or VArray this subset is a region of."""
        return self._array

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the data the subset reads (integer-indexed dimensions dropped)."""
        return self._selection.shape

    @property
    def bounds(self) -> tuple[int | slice, ...]:
        """The normalised bounds: one int or ``slice(start, stop)`` per dimension."""
        return self._selection.bounds

    @property
    def dtype(self) -> type[np.generic]:
        """Numpy scalar type of the data."""
        return self._array.dtype

    @property
    def fill_value(self) -> Any:
        """The value empty cells read as."""
        return self._array.fill_value

    def _np_dtype(self) -> np.dtype[Any]:
        return np.dtype(self._array.dtype)

    def describe(self) -> OrderedDict[str, list[Any]]:
        """Return the coordinates of the region, per dimension name.

        Integer-indexed dimensions are kept, as one-element lists.
        """
        dims = self._array.dimensions
        return OrderedDict((dim.name, dim.describe(b)) for dim, b in zip(dims, self.bounds, strict=True))

    def read(self) -> Any:
        """Read the region (implemented by :class:`Subset` and :class:`VSubset`)."""
        raise NotImplementedError

    def read_xarray(self, *, cf: bool = False) -> xarray.DataArray:
        """Read the region as a labelled :class:`xarray.DataArray`.

        Parameters
        ----------
        cf : bool, default False
            ``False``: deker 1.1.7's form (named ``"Deker Subset of Array(id=...) from
            collection `...`"``, with ``primary_attributes`` and ``custom_attributes`` dict
            attributes, which netCDF cannot store).  ``True``: the CF- and netCDF-safe form of
            :mod:`deker.cf` (named after the collection, one scalar attribute per primary and
            custom attribute, CF-encoded time coordinates), which ``to_netcdf`` and
            ``to_zarr`` write as is.

        Raises
        ------
        ImportError
            If xarray is not installed (``pip install 'deker[xarray]'``).
        DekerSubsetError
            If the subset is a single cell.
        """
        xarray = import_xarray()
        if self.shape == ():
            raise DekerSubsetError(f"Cannot convert a scalar deker.{self._type_name} to xarray.DataArray")
        description = self.describe()
        full_shape = tuple(len(v) for v in description.values())
        check_memory(full_shape, self._np_dtype(), self._array.storage_context.memory_limit)
        data = np.asarray(self.read()).reshape(full_shape)
        if cf:
            layout = array_layout(self._array, self.bounds)
            return data_array(xarray, data, layout)  # type: ignore[no-any-return]
        kind = "VArray" if self._type_name == "VSubset" else "Array"
        return xarray.DataArray(  # type: ignore[no-any-return]
            data,
            coords={
                name: np.asarray(values)
                if not values or not hasattr(values[0], "tzinfo")
                else datetime64_values(values)
                for name, values in description.items()
            },
            dims=list(description.keys()),
            name=(
                f"Deker {self._type_name} of {kind}(id={self._array.id}) "
                f"from collection `{self._array.collection}`"
            ),
            attrs={
                "primary_attributes": self._array.primary_attributes,
                "custom_attributes": self._array.custom_attributes,
            },
        )

    def __repr__(self) -> str:
        return (
            f"{self._type_name}(bounds={bounds_to_str(self.bounds, self._array.shape)}, shape={self.shape}, "
            f"array={self._array.id})"
        )

    def __str__(self) -> str:
        return f"{self._array}{bounds_to_str(self.bounds, self._array.shape)}"


class Subset(_SubsetBase):
    """A region of an :class:`~deker.arrays.Array`, returned by ``array[...]``.

    It works on the Array's one file in the calling thread, through the same task functions
    as a VArray's tiles (:func:`deker.tasks.read_array` and the like).
    """

    _type_name = "Subset"
    _array: ArrayHandle

    @contextlib.contextmanager
    def _on_file(self, writing: str | None = None) -> Iterator[FileSpec]:
        """Yield the Array's file spec once the client may work (``writing``: and write) on it.

        The file missing under the work means the Array was deleted.
        """
        ctx = self._array.storage_context
        ctx.check_open()
        if writing is not None:
            ctx.check_writable(f"{writing} {self}")
        spec = self._array.spec
        try:
            yield spec
        except FileNotFoundError as exc:
            raise DekerInstanceNotExistsError(f"{self._array!r} was deleted") from exc

    def read(self) -> Any:
        """Read the region: an ndarray of :attr:`shape`, or a numpy scalar for a single cell.

        Empty cells read as :attr:`fill_value`.
        """
        with self._on_file() as spec:
            data = read_array(spec, self.bounds)
        return data[()] if self.shape == () else data

    def update(self, data: Any) -> None:
        """Write ``data`` into the region (upsert).

        Parameters
        ----------
        data : scalar, list, tuple or numpy.ndarray
            Values of the array's dtype; scalars and smaller arrays broadcast like numpy.
        """
        with self._on_file("update") as spec:
            write_array(spec, self.bounds, prepare_update_data(data, self._np_dtype(), self.shape))

    def clear(self) -> None:
        """Reset the region to the fill value."""
        with self._on_file("clear") as spec:
            clear_array(spec, self.bounds)


class VSubset(_SubsetBase):
    """A region of a :class:`~deker.arrays.VArray`, returned by ``varray[...]``.

    Every operation fans out into one task per touched tile on the client's executor, through
    the tile pipeline (:mod:`deker.pipeline`).
    """

    _type_name = "VSubset"
    _array: VArrayHandle

    def _start(self, writing: str | None = None) -> StorageContext:
        ctx = self._array.storage_context
        ctx.check_open()
        if writing is not None:
            ctx.check_writable(f"{writing} {self}")
        return ctx

    def _tiles(self) -> TileIndex:
        index = self._array.tiles
        pipeline.require(index, repr(self._array))
        return index

    def read(self) -> Any:
        """Read the region; absent tiles read as fill without being created.

        The output is allocated once; with a thread pool the tiles are read straight into it.
        """
        ctx = self._start()
        out = pipeline.read(ctx, self._tiles(), self.bounds, self.fill_value, str(self))
        return out[()] if self.shape == () else out

    def update(self, data: Any) -> None:
        """Write ``data`` into the region (upsert), creating missing tiles.

        The parameters are those of :meth:`Subset.update` (values of the VArray's dtype).

        Raises
        ------
        DekerVSubsetError
            Some tiles failed: it holds their exceptions; the other tiles were written.
        DekerLockError
            Another writer kept a touched tile locked longer than ``write_lock_timeout``.
        """
        ctx = self._start("update")
        prepared = prepare_update_data(data, self._np_dtype(), self.shape)
        self._tiles()
        varray = self._array
        values = {**varray.primary_attributes, **varray.custom_attributes}
        ctx.ensure_storage_id()  # the tasks prove they see this storage (a 1.1.7 one gets an id now)
        pipeline.update(ctx, varray.tiles, self.bounds, prepared, values, str(self))

    def clear(self) -> None:
        """Reset the region to the fill value; tiles covered entirely are deleted."""
        ctx = self._start("clear")
        index = self._tiles()
        if not index.ids(p.position for p in tile_pieces(self.bounds, index.schema.arrays_shape)):
            return
        ctx.ensure_storage_id()
        pipeline.clear(ctx, self._array.tiles, self.bounds, str(self))
