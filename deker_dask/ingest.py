"""Bring xarray / netCDF data into deker: infer a schema, then store the data into a collection.

- :func:`schema_from_xarray` infers an :class:`~deker.ArraySchema` (or a
  :class:`~deker.VArraySchema`) from a :class:`xarray.DataArray` or a one-variable
  :class:`xarray.Dataset`, one dimension per xarray dimension, in order:

  ========================================  ==================================================
  coordinate of the dimension               dimension schema
  ========================================  ==================================================
  none, or the integers ``0 .. n-1``        :class:`~deker.DimensionSchema` (plain positions)
  datetimes, regularly spaced (n >= 2)      :class:`~deker.TimeDimensionSchema` (start, step)
  numbers, evenly spaced (n >= 2)           a :class:`~deker.Scale` (start, shortest step)
  other numbers, or strings                 labels (numbers become floats)
  ========================================  ==================================================

  A coordinate deker cannot express raises :class:`~deker.errors.DekerValidationError` whose
  message says how to convert it: an irregular or one-point time axis (convert it to ISO
  strings to keep it as labels, or drop it), cftime dates and timezone-aware times (convert
  them to UTC datetime64: ``convert_calendar``, ``to_datetimeindex``, ``tz_convert(None)``), time
  deltas, booleans, objects, a coordinate of more than one dimension or one that is not the
  index of its dimension.  Scalar (0-d)
  coordinates are left out (pass them as attributes if they matter).  A dtype deker refuses
  raises :class:`~deker.errors.DekerArrayTypeError`.

- :func:`store_xarray` creates an Array (or VArray) in a collection and writes the data,
  tile by tile through :func:`deker_dask.store` (on the current dask scheduler or the one
  given).  Everything is checked first (dimension names and order, shape, every coordinate
  against the schema, dtype, fill value, attributes), so a refused object leaves nothing
  behind; if the write itself fails, the new array is deleted again.  Data that marks its
  missing cells (``_FillValue``) with another value than the collection's fill value is
  refused: stored, those cells would read as values.

A scale is checked with the tolerance deker indexes scales with
(:data:`deker.dimensions.SCALE_REL_TOLERANCE` of a step, plus a few ulps of the coordinate's
own float type), so float32 coordinates such as ``0.1, 0.2, ...`` keep their grid.  Read back,
scale coordinates are float64 values rounded to the decimals of the scale; a scale is taken
only when those are its values to a few units in the last place of its own type (integers:
exactly).  Other numbers become
labels (float64; integers beyond ``2**53`` are refused, as they would round).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from deker.arrays import Array, VArray
from deker.attributes import process_attributes
from deker.cf import import_xarray
from deker.collection import Collection
from deker.dimensions import SCALE_REL_TOLERANCE, Dimension, TimeDimension, build_dimensions
from deker.dtypes import ARRAY_DTYPES, casts_exactly, convert_exactly
from deker.errors import DekerArrayTypeError, DekerValidationError
from deker.log import progress_enabled
from deker.schemas import (
    ArraySchema,
    AttributeSchema,
    DimensionSchema,
    TimeDimensionSchema,
    VArraySchema,
)
from deker.types import Scale, to_utc
from deker_dask.writes import store

__all__ = ["schema_from_xarray", "store_xarray"]

logger = logging.getLogger(__name__)

_MAX_STEP_DIGITS = 17  # a float64 is always given back by 17 significant digits


# ----------------------------------------------------------------------------- the object


def _data_array(obj: Any) -> Any:
    """Return the DataArray of ``obj`` (a DataArray, or the data variable of a one-variable Dataset)."""
    xr = import_xarray()
    if isinstance(obj, xr.Dataset):
        names = list(obj.data_vars)
        if not names:
            raise DekerValidationError("The Dataset has no data variable: there is nothing to store")
        if len(names) > 1:
            raise DekerValidationError(
                f"The Dataset has {len(names)} data variables {names}: a deker array holds one; "
                f"pass one of them, e.g. ds[{names[0]!r}]"
            )
        obj = obj[names[0]]
    if not isinstance(obj, xr.DataArray):
        raise DekerValidationError(
            f"Expected an xarray.DataArray or a one-variable xarray.Dataset, got {type(obj).__name__}"
        )
    if obj.ndim == 0:
        raise DekerValidationError(
            "The DataArray has no dimensions: a deker array has at least one; expand it first "
            "(obj.expand_dims('<name>'))"
        )
    return obj


def _check_coordinates(arr: Any) -> None:
    """Refuse coordinates deker cannot keep: not the index of their dimension and not scalar."""
    for name, coord in arr.coords.items():
        if coord.ndim == 0 or (coord.dims == (name,)):
            continue
        swap = (
            f", or make it the coordinate of its dimension (obj.swap_dims({{{coord.dims[0]!r}: {name!r}}}))"
            if coord.ndim == 1 and coord.dims[0] not in arr.coords
            else ""
        )
        raise DekerValidationError(
            f"Coordinate {name!r} along {coord.dims} is not the coordinate of a dimension: deker "
            f"keeps one coordinate per dimension; drop it first (obj.drop_vars({name!r})){swap}"
        )


def _coordinate(arr: Any, dim: str) -> np.ndarray[Any, Any] | None:
    if dim not in arr.coords:
        return None
    if getattr(arr.indexes.get(dim), "tz", None) is not None:  # (a pandas DatetimeIndex with a timezone)
        raise _aware_times(str(dim))
    values = np.asarray(arr.coords[dim].values)
    _refuse_time_objects(str(dim), values)
    return values


def _aware_times(name: str) -> DekerValidationError:
    return DekerValidationError(
        f"Coordinate {name!r} holds timezone-aware times: deker time axes are numpy datetime64 "
        "values in UTC; convert them first (import pandas as pd): "
        f"obj.assign_coords({name}=pd.to_datetime(obj.indexes[{name!r}], utc=True).tz_convert(None))"
    )


def _refuse_time_objects(name: str, values: np.ndarray[Any, Any]) -> None:
    """Refuse cftime dates and timezone-aware times (object values), saying how to make them datetime64."""
    if values.dtype.kind != "O" or values.size == 0:
        return
    cftime = [getattr(v, "calendar", None) for v in values if type(v).__module__.startswith("cftime")]
    if len(cftime) == values.size:
        raise DekerValidationError(
            f"Coordinate {name!r} holds cftime dates (calendar {cftime[0]!r}): deker time axes are "
            "numpy datetime64 values in UTC, in the proleptic Gregorian calendar; convert them first: "
            "obj.convert_calendar('standard', align_on='date') or, for a standard or proleptic_gregorian "
            f"calendar, obj.assign_coords({name}=obj.indexes[{name!r}].to_datetimeindex(time_unit='us')); "
            f"to keep them as labels, "
            f"obj.assign_coords({name}=obj[{name!r}].dt.strftime('%Y-%m-%dT%H:%M:%S'))"
        )
    if all(isinstance(v, datetime) for v in values):  # (xarray makes naive ones datetime64)
        raise _aware_times(name)


# ----------------------------------------------------------------------------- inference


def _eps(values: np.ndarray[Any, Any]) -> float:
    kind = values.dtype.kind
    return float(np.finfo(values.dtype).eps) if kind == "f" else float(np.finfo(np.float64).eps)


def _on_grid(values: np.ndarray[Any, Any], start: float, step: float) -> bool:
    """Return whether every value addresses its position on the scale ``start + i * step``."""
    x = values.astype(np.float64)
    grid = start + np.arange(len(x)) * step
    bound = np.maximum(np.maximum(np.abs(x), abs(start)), np.abs(grid))
    tolerance = SCALE_REL_TOLERANCE * abs(step) + 8 * _eps(values) * bound
    return bool(np.all(np.abs(x - grid) <= tolerance))


def _shortest(value: Any) -> float:
    """Return ``value`` as the float of its shortest decimal form in its own type (float32 0.1: 0.1)."""
    return float(str(value))


def _scale_of(values: np.ndarray[Any, Any]) -> Scale | None:
    """Return the scale of evenly spaced numbers (with the shortest step that fits), or None."""
    if len(values) < 2 or not np.all(np.isfinite(values)):
        return None
    start = _shortest(values[0])
    raw = (float(values[-1]) - float(values[0])) / (len(values) - 1)
    if raw == 0.0 or not math.isfinite(raw):
        return None
    for digits in range(1, _MAX_STEP_DIGITS + 1):
        step = float(f"{raw:.{digits}g}")
        if step != 0.0 and _on_grid(values, start, step) and _reads_back(values, Scale(start, step)):
            return Scale(start, step)
    return None


#: How many units in the last place of the coordinate's own float type a value read back from
#: a scale may differ by (``np.arange(0, 10, 0.1)`` holds 0.30000000000000004, read back 0.3).
_READ_BACK_ULPS = 4


def _reads_back(values: np.ndarray[Any, Any], scale: Scale) -> bool:
    """Return whether the coordinates deker reads from ``scale`` are ``values``, to their precision.

    Within the indexing tolerance is not enough: the values read back (float64, rounded to the
    scale's decimals) must be the given ones to a few units in the last place of their own
    float type (integers: exactly).  So ``np.arange(0, 10, 0.1)`` and float32 ``0.1, 0.2, ...``
    keep a scale, while ``[0, 1000000, 2000001]`` becomes labels and ``linspace(-179.5, 179.5,
    16)`` a scale with a step of enough digits (a 7-digit one read 179.5 back as 179.499995).
    """
    schema = ArraySchema(dtype=float, dimensions=[DimensionSchema("x", len(values), scale=scale)])
    (dimension,) = build_dimensions(schema, {})
    back = np.asarray(dimension.describe(slice(0, len(values))), dtype=np.float64)
    given = values.astype(np.float64)
    if values.dtype.kind != "f":
        return bool(np.array_equal(back, given))
    with np.errstate(all="ignore"):
        ulps = np.spacing(np.abs(values)).astype(np.float64)
        return bool(np.all(np.abs(back - given) <= _READ_BACK_ULPS * ulps))


def _exact_times(values: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], int]:
    """Return datetime64 values in ``[ns]`` if they have that unit, else in ``[us]``, and its ticks in ns.

    ``datetime64[ns]`` holds only about 1677-2262: casting 1500-01-01 to it wraps it around
    without a word, so only values that are ``[ns]`` already are looked at in nanoseconds.
    """
    if np.datetime_data(values.dtype)[0] == "ns":
        return values, 1
    return values.astype("datetime64[us]"), 1000


def _time_axis(name: str, values: np.ndarray[Any, Any]) -> TimeDimensionSchema:
    hint = (
        f"to keep it as labels, convert it to strings first "
        f"(obj.assign_coords({name}=obj[{name!r}].dt.strftime('%Y-%m-%dT%H:%M:%S')))"
    )
    fine, tick = _exact_times(values)
    if np.isnat(fine).any():
        raise DekerValidationError(f"Time coordinate {name!r} has missing values (NaT): {hint}")
    if len(fine) < 2:
        raise DekerValidationError(
            f"Time coordinate {name!r} has one value, so its step is unknown: deker time dimensions "
            f"have a start and a step; drop the dimension (obj.isel({name}=0)) or, {hint}"
        )
    ticks = fine.astype(np.int64)
    steps = np.diff(ticks)
    if not np.all(steps == steps[0]) or steps[0] == 0:
        raise DekerValidationError(
            f"Time coordinate {name!r} is not regularly spaced (steps {_few(np.unique(steps * tick))} ns): "
            f"deker time dimensions have a start and one step; {hint}"
        )
    if tick == 1 and (ticks[0] % 1000 or steps[0] % 1000):
        raise DekerValidationError(
            f"Time coordinate {name!r} has nanoseconds: deker times are exact to the microsecond; "
            f"round it first (obj.assign_coords({name}=obj[{name!r}].dt.round('us')))"
        )
    start: datetime = fine[0].astype("datetime64[us]").item()
    step = timedelta(microseconds=int(steps[0]) * tick // 1000)
    return TimeDimensionSchema(name, len(fine), to_utc(start), step)


def _few(values: np.ndarray[Any, Any]) -> str:
    shown = ", ".join(str(v) for v in values[:4])
    return shown + (", ..." if len(values) > 4 else "")


def _labels_of(name: str, values: np.ndarray[Any, Any]) -> list[Any]:
    kind = values.dtype.kind
    if kind in "iuf":
        labels: list[Any] = [float(v) for v in values]
        if not all(math.isfinite(v) for v in labels):
            raise DekerValidationError(f"Coordinate {name!r} has NaN or infinite values: it cannot be labels")
        if kind in "iu" and any(int(f) != int(v) for f, v in zip(labels, values.tolist(), strict=True)):
            raise DekerValidationError(  # (numeric labels are float64: they would round)
                f"Coordinate {name!r} has integers beyond 2**53 ({_few(values)}), which deker's numeric "
                f"labels (float64) cannot hold exactly; keep them as strings "
                f"(obj.assign_coords({name}=obj[{name!r}].astype(str))) or subtract an offset first"
            )
    elif kind in "US" or (kind == "O" and all(isinstance(v, (str, bytes)) for v in values)):
        labels = [v.decode() if isinstance(v, bytes) else str(v) for v in values]
    else:
        raise DekerValidationError(
            f"Coordinate {name!r} has values of dtype {values.dtype} ({_few(values)}): deker dimensions "
            "have labels (strings or numbers), a scale (evenly spaced numbers) or a time axis "
            "(regular datetime64 values); convert it first (e.g. timedeltas to hours: "
            f"obj.assign_coords({name}=obj[{name!r}] / np.timedelta64(1, 'h')))"
        )
    if len(set(labels)) != len(labels):
        raise DekerValidationError(f"Coordinate {name!r} has repeated values: deker labels are unique")
    return labels


def _infer_dimension(
    name: str, size: int, values: np.ndarray[Any, Any] | None
) -> DimensionSchema | TimeDimensionSchema:
    if values is None:
        return DimensionSchema(name, size)
    kind = values.dtype.kind
    if kind == "M":
        return _time_axis(name, values)
    if kind in "iu" and np.array_equal(values, np.arange(size)):
        return DimensionSchema(name, size)
    if kind in "iuf":
        scale = _scale_of(values)
        if scale is not None:
            return DimensionSchema(name, size, scale=scale)
    return DimensionSchema(name, size, labels=_labels_of(name, values))


def _array_dtype(given: Any, found: np.dtype[Any]) -> type[np.generic]:
    source = found if given is None else given
    try:
        np_type = np.dtype(source).type
    except TypeError as exc:
        raise DekerArrayTypeError(f"Invalid dtype {given!r}: {exc}") from exc
    if np_type not in ARRAY_DTYPES:
        raise DekerArrayTypeError(
            f"deker cannot store {np.dtype(np_type)} data (only numeric types: integers, floats, "
            "complex); convert it first (obj.astype('float32'), or dtype=...)"
        )
    return np_type


def _fill_of(arr: Any, np_type: type[np.generic], given: Any) -> Any:
    """Return the fill value: given, else the one the data marks its missing cells with, else None."""
    if given is not None:
        return given
    mark = _fill_mark(arr, np_type)
    return None if mark is None else mark[1]


def _fill_mark(arr: Any, np_type: type[np.generic]) -> tuple[str, Any] | None:
    """Return where the data marks its missing cells, and with what value (None: nowhere).

    ``_FillValue`` / ``missing_value`` of the attributes, else the encoded one of integer data
    (xarray decoded float data's into NaN).
    """
    for key in ("_FillValue", "missing_value"):
        if key in arr.attrs:
            return f"attrs[{key!r}]", _scalar(arr.attrs[key])
    if not issubclass(np_type, np.inexact):
        for key in ("_FillValue", "missing_value"):
            if arr.encoding.get(key) is not None:
                return f"encoding[{key!r}]", _scalar(arr.encoding[key])
    return None


def _scalar(value: Any) -> Any:
    if isinstance(value, np.ndarray) and value.size == 1:
        return value.reshape(())[()]
    return value


def _attributes(declared: Mapping[str, Any] | None, primary: bool, what: str) -> list[AttributeSchema]:
    if declared is None:
        return []
    if not isinstance(declared, Mapping):
        raise DekerValidationError(
            f"{what} shall be a mapping of attribute names to types, e.g. {{'run': str}}; got {declared!r}"
        )
    return [AttributeSchema(name, dtype, primary) for name, dtype in declared.items()]


def schema_from_xarray(
    obj: Any,
    *,
    vgrid: Sequence[int] | None = None,
    arrays_shape: Sequence[int] | None = None,
    primary_attributes: Mapping[str, type] | None = None,
    custom_attributes: Mapping[str, type] | None = None,
    dtype: Any = None,
    fill_value: Any = None,
) -> ArraySchema | VArraySchema:
    """Infer the schema of a collection that can hold ``obj``.

    Parameters
    ----------
    obj : xarray.DataArray or xarray.Dataset
        The data: a DataArray, or a Dataset with exactly one data variable.
    vgrid, arrays_shape : sequence of int, optional
        Give one to get a :class:`~deker.VArraySchema` (tiles per dimension, or the tile shape).
    primary_attributes, custom_attributes : mapping of str to type, optional
        Attributes to declare, by name and type (``{"run": str, "issued": datetime}``).
    dtype : optional
        The data type (default: the variable's); anything :class:`numpy.dtype` accepts that is
        numeric.
    fill_value : optional
        The fill value; by default the variable's ``_FillValue`` (or ``missing_value``) attribute,
        the encoded one of integer data, else deker's default (NaN for floats).

    Returns
    -------
    ArraySchema or VArraySchema
        One dimension per dimension of ``obj``, in order (see the module documentation).

    Raises
    ------
    DekerValidationError
        If ``obj`` is not one variable, a coordinate cannot be expressed, or the schema is invalid
        (e.g. a vgrid that does not divide the shape).
    DekerArrayTypeError
        If the dtype is not numeric.
    ImportError
        If xarray is not installed.
    """
    arr = _data_array(obj)
    _check_coordinates(arr)
    dimensions = [
        _infer_dimension(str(dim), int(size), _coordinate(arr, dim))
        for dim, size in zip(arr.dims, arr.shape, strict=True)
    ]
    np_type = _array_dtype(dtype, arr.dtype)
    fill = _fill_of(arr, np_type, fill_value)
    attributes = [
        *_attributes(primary_attributes, True, "primary_attributes"),
        *_attributes(custom_attributes, False, "custom_attributes"),
    ]
    if vgrid is not None or arrays_shape is not None:
        return VArraySchema(
            dtype=np_type,
            dimensions=dimensions,
            vgrid=vgrid,
            arrays_shape=arrays_shape,
            fill_value=fill,
            attributes=attributes,
        )
    return ArraySchema(dtype=np_type, dimensions=dimensions, fill_value=fill, attributes=attributes)


# ----------------------------------------------------------------------------- checks


def _disagree(name: str, what: str) -> DekerValidationError:
    return DekerValidationError(f"Coordinate {name!r} disagrees with the collection's schema: {what}")


def _first_difference(got: Sequence[Any], want: Sequence[Any]) -> str:
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if g != w:
            return f"position {i} is {g!r}, the schema has {w!r}"
    return "the values differ"  # pragma: no cover - callers compare first


def _check_time(name: str, dim: TimeDimension, values: np.ndarray[Any, Any]) -> None:
    if values.dtype.kind != "M":
        raise _disagree(name, f"the schema has a time axis, the coordinate has {values.dtype} values")
    start = np.datetime64(dim.start_value.replace(tzinfo=None), "us")
    step = np.timedelta64(dim.step, "us")
    want = start + np.arange(dim.size) * step  # (in microseconds: [ns] holds only 1677-2262)
    got, _ = _exact_times(values)
    if not np.array_equal(got, want):
        raise _disagree(
            name,
            f"the schema's time axis starts at {dim.start_value.isoformat()} with step {dim.step}; "
            + _first_difference([str(v) for v in got], [str(v) for v in want]),
        )


def _check_generic(name: str, dim: Dimension, values: np.ndarray[Any, Any]) -> None:
    kind = values.dtype.kind
    if dim.scale is not None:
        start, step = dim.scale.start_value, dim.scale.step
        if kind not in "iuf" or not _on_grid(values, start, step):
            raise _disagree(
                name,
                f"the schema has the scale start={start!r}, step={step!r}; the coordinate is {_few(values)}",
            )
        return
    if dim.labels is not None:
        labels = list(dim.labels)
        try:
            got = _labels_of(name, values)
        except DekerValidationError as exc:
            raise _disagree(name, f"the schema has labels {_few(np.asarray(labels))}; {exc}") from exc
        if got != labels:
            raise _disagree(name, "its labels differ: " + _first_difference(got, labels))
        return
    if kind not in "iu" or not np.array_equal(values, np.arange(dim.size)):
        raise _disagree(
            name,
            f"the schema's dimension has plain positions (no labels, scale or time), the coordinate "
            f"is {_few(values)}; drop the coordinate (obj.drop_vars({name!r})) to store by position",
        )


def _check_shape(arr: Any, schema: ArraySchema | VArraySchema) -> None:
    names = tuple(d.name for d in schema.dimensions)
    dims = tuple(str(d) for d in arr.dims)
    if dims != names:
        hint = (
            f"; transpose it first (obj.transpose(*{list(names)!r}))" if sorted(dims) == sorted(names) else ""
        )
        raise DekerValidationError(
            f"The dimensions of the data are {dims}, the collection's are {names}{hint}"
        )
    if tuple(arr.shape) != schema.shape:
        sizes = {n: (int(s), w) for n, s, w in zip(names, arr.shape, schema.shape, strict=True) if s != w}
        raise DekerValidationError(
            f"The shape of the data {tuple(arr.shape)} is not the collection's {schema.shape} "
            f"(dimension: (data, collection) {sizes})"
        )


def _check_dtype(arr: Any, schema: ArraySchema | VArraySchema) -> None:
    want = np.dtype(schema.dtype)
    if not casts_exactly(arr.dtype, want):
        raise DekerArrayTypeError(
            f"Cannot store {arr.dtype} data into the {want} collection without changing values: "
            f"convert it first (obj.astype({want.name!r}))"
        )
    if arr.chunks is not None and any(math.isnan(c) for dim in arr.chunks for c in dim):
        raise DekerValidationError("The data has unknown chunk sizes: compute them before storing it")


def _check_fill(arr: Any, schema: ArraySchema | VArraySchema, ref: str) -> None:
    """Refuse data whose missing cells (its ``_FillValue``) would be stored as values: another fill value.

    ``ref`` is how the message names the variable (``obj``, or ``obj['v']`` of a Dataset).
    """
    mark = _fill_mark(arr, arr.dtype.type)
    if mark is None:
        return
    where, value = mark
    fill = schema.fill_value
    try:
        same = bool(np.asarray(value) == fill) or bool(np.isnan(value) and np.isnan(fill))
    except (TypeError, ValueError):  # (not a number)
        same = False
    if same:
        return
    shown, wanted = _plain(value), _plain(fill)
    other = "" if bool(np.isnan(fill)) else f", {wanted}"
    raise DekerValidationError(
        f"The data marks missing cells with {where} = {shown!r}, the collection's fill value is "
        f"{wanted!r}: stored, they would read as {shown!r}, not as absent cells.  Store it into a "
        f"collection with fill_value={shown!r} (schema_from_xarray makes one), turn them into the "
        f"collection's fill value first ({ref} = {ref}.where({ref} != {shown!r}{other}); "
        f"del {ref}.{where}), or drop the mark to store them as values (del {ref}.{where})"
    )


def _plain(value: Any) -> Any:
    """Return a numpy number as a Python one (for messages)."""
    return value.item() if isinstance(value, np.generic) else value


def _from_attrs(arr: Any, schema: ArraySchema | VArraySchema, custom: dict[str, Any]) -> dict[str, Any]:
    out = dict(custom)
    for attr in schema.attributes:
        if attr.primary or attr.name in out or attr.name not in arr.attrs:
            continue
        out[attr.name] = _attribute_value(attr, arr.attrs[attr.name])
    return out


def _attribute_value(attr: AttributeSchema, value: Any) -> Any:
    value = _scalar(value)
    if isinstance(value, np.ndarray):
        value = tuple(value.tolist())
    elif isinstance(value, np.generic):
        value = value.item()
    if attr.dtype is datetime and isinstance(value, str):
        return to_utc(value)
    if attr.dtype is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if attr.dtype is tuple and isinstance(value, list):
        return tuple(value)
    if issubclass(attr.dtype, np.generic) and isinstance(value, (int, float, complex)):
        try:  # (numpy would wrap 300 into int8 around, or refuse it with a bare OverflowError)
            return convert_exactly(np.asarray(value), attr.dtype, f"attribute {attr.name!r}")[()]
        except DekerArrayTypeError as exc:
            raise DekerValidationError(
                f"{exc} ({value!r}): declare the attribute with a dtype that holds it"
            ) from exc
    return value


# ----------------------------------------------------------------------------- store


def store_xarray(
    obj: Any,
    collection: Collection,
    *,
    primary_attributes: Mapping[str, Any] | None = None,
    custom_attributes: Mapping[str, Any] | None = None,
    attrs_as_custom: bool = False,
    progress: bool | None = None,
    **compute_kwargs: Any,
) -> Array | VArray:
    """Create an Array (or VArray) in ``collection`` and store the data of ``obj`` into it.

    Everything is checked before the array is created, so a refused object leaves nothing
    behind: the dimension names and order, the shape, every coordinate against the schema
    (time start and step, scale, labels; a dimension without coordinate is taken by
    position), the dtype (it must cast exactly, :func:`deker.dtypes.casts_exactly`), the fill
    value (a ``_FillValue`` or ``missing_value`` of the data, as :func:`schema_from_xarray` takes
    it, must be the collection's) and the attributes.  The data is then written by
    :func:`deker_dask.store`: a dask-backed object tile by tile where its chunks are, an
    in-memory or lazily loaded one (``xr.open_dataset`` without ``chunks``) chunked on the
    tiles first, so each task reads its own part of the file.  If the write fails, the new
    array is deleted and the error raised.

    Parameters
    ----------
    obj : xarray.DataArray or xarray.Dataset
        The data (a Dataset with exactly one data variable).
    collection : Collection
        Where to create the array; its schema decides (see :func:`schema_from_xarray`).
    primary_attributes, custom_attributes : mapping, optional
        The attribute values of the new array, as for ``collection.create``.
    attrs_as_custom : bool, default False
        Also take each custom attribute the schema declares, and ``custom_attributes`` does not
        give, from ``obj.attrs`` when it is there (numpy values become Python values, ISO-8601
        strings datetimes for ``datetime`` attributes).  Other ``attrs`` are never stored.
    progress : bool or None
        A progress bar on stderr: always (True), never (False), or when stderr is a terminal
        (None, the default).
    **compute_kwargs
        Passed to :func:`dask.compute` (e.g. ``scheduler=`` a distributed Client).

    Returns
    -------
    Array or VArray
        The new array (a VArray in a VArray collection).

    Raises
    ------
    DekerValidationError
        If the dimensions, shape, a coordinate, the fill value or an attribute disagrees with
        the collection, or an array with these primary attributes exists.
    DekerArrayTypeError
        If the data dtype does not cast exactly to the collection's
        (:func:`deker.dtypes.casts_exactly`).
    """
    progress_enabled(progress)  # a wrong value is refused before anything is created
    arr = _data_array(obj)
    if not isinstance(collection, Collection):
        raise DekerValidationError(f"Expected a deker Collection, got {type(collection).__name__}")
    schema = collection.varray_schema or collection.array_schema
    _check_coordinates(arr)
    _check_shape(arr, schema)
    _check_dtype(arr, schema)
    _check_fill(arr, schema, "obj" if arr is obj else f"obj[{arr.name!r}]")
    custom: Any = custom_attributes
    if attrs_as_custom and (custom is None or isinstance(custom, Mapping)):
        custom = _from_attrs(arr, schema, dict(custom or {}))
    kind = "VArray" if isinstance(schema, VArraySchema) else "Array"
    primary, processed = process_attributes(schema, primary_attributes, custom, kind=kind)
    for dim in build_dimensions(schema, {**primary, **processed}):
        values = _coordinate(arr, dim.name)
        if values is None:
            continue
        if isinstance(dim, TimeDimension):
            _check_time(dim.name, dim, values)
        else:
            _check_generic(dim.name, dim, values)
    target = collection.create(primary_attributes, custom)  # type: ignore[arg-type]
    try:
        data = arr.data if arr.chunks is not None else _chunked(arr, schema)
        store(data, target, progress=progress, **compute_kwargs)
    except BaseException:
        logger.warning("store_xarray: writing into %r failed; deleting it", target)
        try:
            target.delete()
        except Exception:  # the first error is the one to report
            logger.exception("store_xarray: could not delete %r after a failed write", target)
        raise
    return target  # type: ignore[no-any-return]


def _chunked(arr: Any, schema: ArraySchema | VArraySchema) -> Any:
    """Return the data of a not-dask-backed DataArray as a dask array with one chunk per tile."""
    shape = schema.arrays_shape if isinstance(schema, VArraySchema) else schema.shape
    return arr.chunk(dict(zip(arr.dims, shape, strict=True))).data
