"""CF- and netCDF-safe labels for the xarray views of deker data (pure values; no xarray import).

netCDF (and zarr) attributes hold strings, numbers and numeric arrays only, so the xarray
objects deker gives in their *CF form* (``read_xarray(cf=True)``, ``deker_dask.to_xarray``,
``xr.open_dataset(..., engine="deker")``) follow these rules:

- every primary and custom attribute of an array becomes one scalar attribute of its name
  (:func:`attribute_value`): strings and real numbers as they are, datetimes as ISO 8601
  strings (UTC, with the offset), complex numbers as strings (``"(1+2j)"``), tuples of two or
  more real numbers as numeric arrays and other tuples as JSON strings; a ``None`` value is
  left out.  So ``units``, ``long_name`` or ``standard_name`` attributes pass through;
- time coordinates are ``datetime64[ns]`` (UTC; ``[us]`` when an instant lies outside the
  about 1677-2262 that ``[ns]`` holds) with ``standard_name: time`` and a CF encoding
  (``"<unit> since <first instant>"``, the largest unit that keeps every instant an integer,
  ``proleptic_gregorian``, int64), so netCDF files store them as CF times.  Along the stacking
  dimension of a collection, a datetime attribute a time dimension starts at (``"$run"``) is
  the ``forecast_reference_time`` instead;
- a scale's name (``Scale(..., name="lat")``) becomes the coordinate's ``long_name``;
- coordinates along the stacking dimension of a collection hold strings, real numbers or
  datetimes (:func:`coordinate_values`; a missing custom value is ``NaN``, ``NaT`` or ``""``);
- ``deker_collection`` and ``deker_id`` attributes say where the data comes from;
- the data variable has a ``_FillValue`` attribute, the fill value absent cells read as
  (:func:`fill_attributes`), so netCDF readers take those cells for missing ones: xarray's
  default decoding gives NaN there (``mask_and_scale=False`` reads the values back as they
  were).  Not for a NaN fill value (xarray writes NaN as the ``_FillValue`` of float data
  itself), complex data (CF has no complex fill value) or the 0 of an unsigned type (its
  default fill value, where 0 is a real value too);
- the variable is named after the collection (``<name>_data`` if a dimension or coordinate has
  that name); an attribute coordinate named like a dimension or ``id`` gets ``_attribute``
  appended.

The builders here return :class:`Coordinate` values; :func:`to_variables` turns them into
``xarray.Variable`` objects with the xarray module the caller imported.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from numbers import Integral, Real
from typing import Any, Literal

import numpy as np

from deker.dimensions import build_dimensions

__all__ = [
    "REFERENCE_TIME_ATTRS",
    "TIME_ATTRS",
    "Coordinate",
    "Layout",
    "array_attributes",
    "array_layout",
    "attribute_value",
    "collection_layout",
    "coordinate_values",
    "data_array",
    "datetime64_values",
    "dimension_coordinate",
    "fill_attributes",
    "import_xarray",
    "one_time_unit",
    "stacking_order",
    "time_encoding",
    "to_variables",
]

logger = logging.getLogger(__name__)

#: Attributes of every time coordinate.
TIME_ATTRS: dict[str, str] = {"standard_name": "time"}

#: Attributes of a datetime attribute a time dimension starts at (``start_value="$run"``): the
#: time a forecast was made from (each array's time axis holds the times it is valid for).
REFERENCE_TIME_ATTRS: dict[str, str] = {"standard_name": "forecast_reference_time"}

#: Nanoseconds per tick of the datetime64 units a time coordinate may have.
_TICK_NS = {"ns": 1, "us": 10**3, "ms": 10**6, "s": 10**9}

# The CF time units tried, largest first, with their length in nanoseconds.
_UNITS: tuple[tuple[str, int], ...] = (
    ("days", 86_400 * 10**9),
    ("hours", 3_600 * 10**9),
    ("minutes", 60 * 10**9),
    ("seconds", 10**9),
    ("milliseconds", 10**6),
    ("microseconds", 10**3),
    ("nanoseconds", 1),
)


def _is_real(value: Any) -> bool:
    return isinstance(value, (Real, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, (complex, np.complexfloating)):
        return str(complex(value))
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _iso(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat()


def attribute_value(value: Any) -> str | int | float | np.generic | np.ndarray[Any, Any] | None:
    """Return the netCDF-safe form of one attribute value (``None`` for a value left out).

    Parameters
    ----------
    value : Any
        A value of a primary or custom attribute (``int``, ``float``, ``complex``, ``str``,
        ``tuple``, ``datetime``, a numpy number, or ``None``).

    Returns
    -------
    str, int, float, numpy.ndarray or None
        Strings and real numbers unchanged (numpy integers, float32 and float64 keep their
        type; float16, which netCDF lacks, becomes a Python float), datetimes as ISO 8601
        strings in UTC, complex numbers as strings, tuples of two or more real numbers as a
        numeric array, other tuples as a JSON string; ``None`` stays ``None``.
    """
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, datetime):
        return _iso(value)
    if _is_real(value):
        if isinstance(value, (np.integer, np.float32, np.float64)):
            return value  # type: ignore[no-any-return]  # its netCDF type (float16 has none)
        if isinstance(value, Integral):
            return int(value)
        return float(value)
    if isinstance(value, (complex, np.complexfloating)):
        return str(complex(value))
    if isinstance(value, (tuple, list)):
        if len(value) >= 2 and all(_is_real(v) for v in value):
            return np.asarray(value, dtype=np.result_type(*[np.asarray(v).dtype for v in value]))
        return json.dumps(_jsonable(value))
    return str(value)


def fill_attributes(fill_value: Any) -> dict[str, Any]:
    """Return ``{"_FillValue": fill_value}`` for the CF view of data whose absent cells read as it.

    Parameters
    ----------
    fill_value : numpy.generic
        The fill value of the collection (``schema.fill_value``, of its dtype).

    Returns
    -------
    dict
        ``{"_FillValue": fill_value}``, or ``{}`` for NaN (xarray writes NaN as the
        ``_FillValue`` of float data itself), complex data (CF has no complex fill value) and 0
        of an unsigned integer type (its default fill value, where 0 is mostly real data).
    """
    value = np.asarray(fill_value)
    if value.dtype.kind == "f" and bool(np.isnan(value)):
        return {}
    if value.dtype.kind not in "iuf" or (value.dtype.kind == "u" and int(value) == 0):
        return {}
    return {"_FillValue": value.dtype.type(value)}


def array_attributes(primary: Mapping[str, Any], custom: Mapping[str, Any]) -> dict[str, Any]:
    """Return the primary, then the custom attributes of an array as netCDF-safe scalar attributes.

    Parameters
    ----------
    primary, custom : mapping
        The array's ``primary_attributes`` and ``custom_attributes``.

    Returns
    -------
    dict
        ``{name: attribute_value(value)}``, without the ``None`` values.
    """
    out: dict[str, Any] = {}
    for name, value in [*primary.items(), *custom.items()]:
        safe = attribute_value(value)
        if safe is not None:
            out[name] = safe
    return out


def coordinate_values(values: Sequence[Any], *, cf: bool = True) -> np.ndarray[Any, Any]:
    """Return coordinate values as an array (datetimes: UTC ``datetime64``, :func:`datetime64_values`).

    Parameters
    ----------
    values : sequence
        Labels, scale values, positions, datetimes or attribute values (one per array).
    cf : bool, default True
        Make the result netCDF-safe: datetimes (``None`` → ``NaT``), real numbers (``None`` →
        ``NaN``), or else strings (:func:`attribute_value` of each value, ``None`` → ``""``).
        With ``False``, values that are none of these (tuples, ``None``) stay Python objects.

    Returns
    -------
    numpy.ndarray
        One-dimensional.
    """
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, datetime) for v in present) and (len(present) == len(values) or cf):
        return datetime64_values(values)
    if present and all(_is_real(v) for v in present) and (len(present) == len(values) or cf):
        if len(present) == len(values):
            return np.asarray(values)
        return np.asarray([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    if not values:
        return np.asarray(values)
    if cf:
        if all(isinstance(v, str) for v in values):
            return np.asarray(values, dtype=str)
        texts = ["" if v is None else _text(v) for v in values]
        return np.asarray(texts, dtype=str)
    if all(isinstance(v, str) for v in values) or all(_is_real(v) for v in values):
        return np.asarray(values)
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


def _text(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return json.dumps(_jsonable(value))
    return str(attribute_value(value))


#: The largest count of microseconds from 1970 that ``datetime64[ns]`` holds (its range is
#: about 1677-09-21 to 2262-04-11).
_NS_RANGE_US = (2**63 - 1) // 1000


def datetime64_values(values: Sequence[datetime | None]) -> np.ndarray[Any, Any]:
    """Return datetimes as UTC ``datetime64``: ``[ns]`` when every one fits it, else ``[us]``.

    ``datetime64[ns]`` (what xarray and pandas use by default) holds only about 1677 to 2262;
    numpy wraps an instant outside around without a word (1500-01-01 became 2084-07-20).
    Python datetimes are exact in microseconds, so ``[us]`` loses nothing.

    Parameters
    ----------
    values : sequence of datetime or None
        Aware (converted to UTC) or naive (taken as UTC) datetimes; ``None`` becomes ``NaT``.

    Returns
    -------
    numpy.ndarray
        One-dimensional ``datetime64[ns]`` or ``datetime64[us]``.
    """
    micro = np.asarray(
        [np.datetime64("NaT", "us") if v is None else np.datetime64(_utc_naive(v), "us") for v in values],
        dtype="datetime64[us]",
    )
    ticks = micro[~np.isnat(micro)].astype(np.int64)
    if ticks.size and (int(ticks.min()) < -_NS_RANGE_US or int(ticks.max()) > _NS_RANGE_US):
        return micro
    return micro.astype("datetime64[ns]")


def one_time_unit(rows: Sequence[np.ndarray[Any, Any]]) -> list[np.ndarray[Any, Any]]:
    """Return coordinate rows with one datetime64 unit, ``[us]`` if any row has it.

    numpy joins ``[ns]`` and ``[us]`` arrays in ``[ns]``, which wraps an instant outside about
    1677-2262 around without a word; rows of other dtypes are returned as they are.

    Parameters
    ----------
    rows : sequence of numpy.ndarray
        Coordinate values (from :func:`coordinate_values` or :func:`datetime64_values`).

    Returns
    -------
    list of numpy.ndarray
        The rows, every datetime64 one in a common unit.
    """
    micro = np.dtype("datetime64[us]")
    if any(r.dtype == micro for r in rows):
        return [r.astype(micro) if r.dtype.kind == "M" else r for r in rows]
    return list(rows)


def _utc_naive(value: datetime) -> datetime:
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value


def time_encoding(values: np.ndarray[Any, Any]) -> dict[str, Any]:
    """Return the CF encoding of ``datetime64`` values: integer counts since the first instant.

    Parameters
    ----------
    values : numpy.ndarray
        ``datetime64`` values of any shape (``NaT`` allowed).

    Returns
    -------
    dict
        ``{"units": "<unit> since <first instant>", "calendar": "proleptic_gregorian",
        "dtype": "int64"}`` with the largest unit in which every instant is a whole number
        (no ``dtype`` when there is a ``NaT``, which xarray then encodes itself); ``{}`` if
        there is no instant.
    """
    flat = np.asarray(values).reshape(-1)
    if flat.dtype.kind != "M":
        flat = flat.astype("datetime64[ns]")
    tick = _TICK_NS[np.datetime_data(flat.dtype)[0]]  # ([ns], or [us] outside its range)
    valid = flat[~np.isnat(flat)]
    if valid.size == 0:
        return {}
    ref = valid.min()
    offsets = (valid - ref).astype(np.int64)  # in ticks
    unit = next(name for name, ns in _UNITS if ns <= tick or not np.any(offsets % (ns // tick)))
    ref_ns = int(ref.astype(np.int64)) * tick  # (a Python int: no overflow)
    precision: Literal["s", "us", "ns"] = (
        "s" if ref_ns % 10**9 == 0 else "us" if ref_ns % 10**3 == 0 else "ns"
    )
    stamp = str(np.datetime_as_string(ref.astype(f"datetime64[{precision}]"), unit=precision))
    encoding: dict[str, Any] = {"units": f"{unit} since {stamp}", "calendar": "proleptic_gregorian"}
    if valid.size == flat.size:
        encoding["dtype"] = "int64"
    return encoding


@dataclass(frozen=True)
class Coordinate:
    """A coordinate variable as plain values.

    Parameters
    ----------
    dims : tuple of str
        Its dimensions.
    values : numpy.ndarray
        Its values.
    attrs : dict
        Its attributes.
    encoding : dict
        How to store it (the CF time encoding).
    """

    dims: tuple[str, ...]
    values: np.ndarray[Any, Any]
    attrs: dict[str, Any] = field(default_factory=dict)
    encoding: dict[str, Any] = field(default_factory=dict)


def _time_coordinate(dims: tuple[str, ...], values: np.ndarray[Any, Any]) -> Coordinate:
    return Coordinate(dims, values, dict(TIME_ATTRS), time_encoding(values))


def dimension_coordinate(
    dimension: Any, described: Sequence[Any], *, cf: bool = True, dims: tuple[str, ...] | None = None
) -> Coordinate:
    """Return the coordinate of a dimension from the values ``dimension.describe(...)`` gave.

    Parameters
    ----------
    dimension : Dimension or TimeDimension
        The array's dimension.
    described : sequence
        Its coordinate values (positions, labels, scale values or instants).
    cf : bool, default True
        Add the CF attributes and encoding (time: ``standard_name`` and units; scale: its name
        as ``long_name``).
    dims : tuple of str, optional
        The coordinate's dimensions (default: the dimension alone).

    Returns
    -------
    Coordinate
        The coordinate.
    """
    dims = (dimension.name,) if dims is None else dims
    values = coordinate_values(described, cf=cf)
    if not cf:
        return Coordinate(dims, values)
    if values.dtype.kind == "M":
        return _time_coordinate(dims, values)
    scale = getattr(dimension, "scale", None)
    name = getattr(scale, "name", None)
    return Coordinate(dims, values, {"long_name": name} if name else {})


def stacking_order(items: Iterable[Any]) -> list[Any]:
    """Return arrays in the order xarray views stack them: by primary-attribute values, then id.

    Parameters
    ----------
    items : iterable of Array or VArray
        The arrays of one collection.

    Returns
    -------
    list
        Sorted (NaN values last).
    """
    out = list(items)
    out.sort(key=lambda a: (tuple(_sortable(v) for v in a.primary_attributes.values()), a.id))
    return out


def _sortable(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return (1, 0.0)
    if isinstance(value, (list, tuple)):
        return (0, tuple(_sortable(v) for v in value))
    return (0, value)


def import_xarray() -> Any:
    """Import and return xarray, or raise an ImportError that says how to install it.

    Returns
    -------
    module
        The ``xarray`` module.

    Raises
    ------
    ImportError
        If xarray is not installed.
    """
    try:
        import xarray
    except ImportError as exc:
        raise ImportError(
            "No module named 'xarray' found: install it with `pip install xarray` or "
            "`pip install 'deker[xarray]'`"
        ) from exc
    return xarray


def data_array(xarray: Any, data: Any, layout: Layout) -> Any:
    """Return the CF-form ``xarray.DataArray`` of ``data`` (numpy or dask) laid out by ``layout``.

    Parameters
    ----------
    xarray : module
        The xarray module (see :func:`import_xarray`).
    data : array-like
        The values, shaped like ``layout.dims``.
    layout : Layout
        Its dimensions, coordinates, name and attributes.

    Returns
    -------
    xarray.DataArray
        The labelled array.
    """
    return xarray.DataArray(
        data,
        coords=to_variables(xarray, layout.coords),
        dims=layout.dims,
        name=layout.name,
        attrs=layout.attrs,
    )


def to_variables(xarray: Any, coords: Mapping[str, Coordinate]) -> dict[str, Any]:
    """Return ``{name: xarray.Variable}`` of coordinates (with their attributes and encoding).

    Parameters
    ----------
    xarray : module
        The imported xarray module.
    coords : mapping of str to Coordinate
        The coordinates.

    Returns
    -------
    dict
        For the ``coords`` argument of ``xarray.DataArray`` or ``xarray.Dataset``.
    """
    return {
        name: xarray.Variable(c.dims, c.values, attrs=dict(c.attrs), encoding=dict(c.encoding))
        for name, c in coords.items()
    }


@dataclass(frozen=True)
class Layout:
    """The labels of one xarray variable over deker data, as plain values.

    Parameters
    ----------
    name : str
        The variable name.
    dims : tuple of str
        Its dimensions.
    coords : dict of str to Coordinate
        Its coordinates.
    attrs : dict
        Its attributes.
    """

    name: str
    dims: tuple[str, ...]
    coords: dict[str, Coordinate]
    attrs: dict[str, Any]


def array_layout(obj: Any, bounds: Sequence[int | slice], *, positions: bool = True) -> Layout:
    """Return the CF labels of a region of one Array or VArray (integer bounds keep their dimension).

    Parameters
    ----------
    obj : Array or VArray
        The array.
    bounds : sequence of int or slice
        Normalised bounds (an int keeps its dimension, with one coordinate).
    positions : bool, default True
        Give dimensions without labels, scale or time their positions as coordinates.

    Returns
    -------
    Layout
        Named after the collection, with the attributes of :func:`array_attributes` and
        ``deker_collection`` / ``deker_id``.
    """
    coords: dict[str, Coordinate] = {}
    for dim, bound in zip(obj.dimensions, bounds, strict=True):
        if positions or _labelled(dim):
            coords[dim.name] = dimension_coordinate(dim, dim.describe(bound))
    attrs = {
        **fill_attributes(obj.fill_value),
        **array_attributes(obj.primary_attributes, obj.custom_attributes),
    }
    attrs.setdefault("deker_collection", obj.collection)
    attrs.setdefault("deker_id", obj.id)
    dims = tuple(d.name for d in obj.dimensions)
    return Layout(_variable_name(obj.collection, {*dims, *coords}), dims, coords, attrs)


def _labelled(dim: Any) -> bool:
    return hasattr(dim, "start_value") or dim.labels is not None or dim.scale is not None


def _free_name(name: str, taken: set[str]) -> str:
    while name in taken:
        name = f"{name}_attribute"
    return name


def _variable_name(name: str, taken: set[str]) -> str:
    while name in taken:  # a collection named like one of its dimensions or coordinates
        name = f"{name}_data"
    return name


def _same(values: list[Any]) -> bool:
    first = values[0]
    for v in values[1:]:
        if isinstance(first, np.ndarray) or isinstance(v, np.ndarray):
            if not (isinstance(first, np.ndarray) and isinstance(v, np.ndarray) and np.array_equal(first, v)):
                return False
        elif type(first) is not type(v) or first != v:
            return False
    return True


def _start_attributes(schema: Any) -> set[str]:
    """Return the names of the attributes time dimensions of ``schema`` start at (``"$name"``)."""
    starts = (getattr(d, "start_value", None) for d in schema.dimensions)
    return {s[1:] for s in starts if isinstance(s, str) and s.startswith("$")}


def _stacked(lead: str, values: np.ndarray[Any, Any], reference: bool) -> Coordinate:
    """Return an attribute's coordinate along the stacking dimension (datetimes: CF time attributes)."""
    if values.dtype.kind != "M":
        return Coordinate((lead,), values)
    attrs = REFERENCE_TIME_ATTRS if reference else TIME_ATTRS
    return Coordinate((lead,), values, dict(attrs), time_encoding(values))


def _none_of(dtype: type) -> np.ndarray[Any, Any]:
    """Return the coordinate no array gives an attribute of ``dtype``: empty, of the dtype its values get."""
    if dtype is datetime:
        return np.empty(0, dtype="datetime64[ns]")
    if dtype in (int, float) or issubclass(dtype, (np.integer, np.floating)):
        return np.empty(0, dtype=dtype)
    return np.empty(0, dtype=str)  # (str, and complex numbers and tuples as strings)


def _empty_coordinates(schema: Any, lead: str, positions: bool) -> dict[str, Coordinate]:
    """Return the dimension coordinates of a collection without arrays, 0 long along ``lead``.

    Those every array would have; a time axis starting at an attribute, which differs between
    arrays, is an empty ``<dimension>_values`` coordinate, as for arrays of different starts.
    """
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)  # (a stand-in start: not used)
    dimensions = build_dimensions(schema, dict.fromkeys(_start_attributes(schema), epoch))
    coords: dict[str, Coordinate] = {}
    for spec, dim in zip(schema.dimensions, dimensions, strict=True):
        if isinstance(getattr(spec, "start_value", None), str):  # ("$name")
            none = np.empty((0, dim.size), dtype="datetime64[ns]")
            coords[f"{dim.name}_values"] = _time_coordinate((lead, dim.name), none)
        elif positions or _labelled(dim):
            coords[dim.name] = dimension_coordinate(dim, dim.describe(slice(0, dim.size)))
    return coords


def collection_layout(collection: Any, items: Sequence[Any], *, positions: bool = True) -> Layout:
    """Return the CF labels of a collection stacked along a new leading dimension.

    The leading dimension is named after the primary attribute when there is exactly one (and
    it is not a dimension name), else ``array``.  Along it: ``id``, one coordinate per primary
    attribute, and one per custom attribute whose value differs between arrays (datetimes with
    :data:`TIME_ATTRS`, or :data:`REFERENCE_TIME_ATTRS` for one a time dimension starts at);
    custom attributes equal in every array are attributes of the variable.  A time dimension whose
    start differs between arrays gets a two-dimensional ``<dimension>_values`` coordinate.  A
    collection without arrays has the same coordinates, 0 long along the leading dimension, of
    the dtypes its attribute values would give (an attribute-started time axis: an empty
    ``<dimension>_values``).

    Parameters
    ----------
    collection : Collection
        The collection.
    items : sequence of Array or VArray
        Its arrays, in stacking order (:func:`stacking_order`).
    positions : bool, default True
        Give dimensions without labels, scale or time their positions as coordinates.

    Returns
    -------
    Layout
        Named after the collection.
    """
    schema = collection.varray_schema or collection.array_schema
    dims = [d.name for d in schema.dimensions]
    primary = [a.name for a in schema.attributes if a.primary]
    custom = [a.name for a in schema.attributes if not a.primary]
    lead = primary[0] if len(primary) == 1 and primary[0] not in dims else _free_name("array", set(dims))
    taken = {*dims, lead}
    coords: dict[str, Coordinate] = {}
    if "id" not in primary:
        coords[_free_name("id", taken)] = Coordinate((lead,), np.asarray([a.id for a in items], dtype=str))
    starts = _start_attributes(schema)
    types = {a.name: a.dtype for a in schema.attributes}
    for name in primary:
        values = (
            coordinate_values([a.primary_attributes[name] for a in items]) if items else _none_of(types[name])
        )
        key = name if name == lead else _free_name(name, taken | set(coords))
        coords[key] = _stacked(lead, values, name in starts)
    attrs: dict[str, Any] = fill_attributes(schema.fill_value)
    for name in custom:
        raw = [a.custom_attributes.get(name) for a in items]
        safe = [attribute_value(v) for v in raw]
        if items and _same(safe):
            if safe[0] is not None:
                attrs[name] = safe[0]
            continue
        values = coordinate_values(raw) if items else _none_of(types[name])
        coords[_free_name(name, taken | set(coords))] = _stacked(lead, values, name in starts)
    if items:
        full = [slice(0, s) for s in schema.shape]
        first = items[0]
        for axis, dim in enumerate(first.dimensions):
            if not (positions or _labelled(dim)):
                continue
            rows = [a.dimensions[axis].describe(full[axis]) for a in items]
            if all(r == rows[0] for r in rows[1:]):
                coords[dim.name] = dimension_coordinate(dim, rows[0])
            else:
                stacked = np.stack(one_time_unit([coordinate_values(r) for r in rows]))
                coords[f"{dim.name}_values"] = _time_coordinate((lead, dim.name), stacked)
    else:
        coords.update(_empty_coordinates(schema, lead, positions))
    attrs.setdefault("deker_collection", collection.name)
    return Layout(_variable_name(collection.name, {lead, *dims, *coords}), (lead, *dims), coords, attrs)
