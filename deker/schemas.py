"""The declared shape of a collection: attribute, dimension and array schemas.

Schemas are immutable value objects validated at construction (SPEC §1.7): a schema that exists
is valid.  Inputs are normalised once (lists become tuples, Python dtypes become numpy types,
fill values become numpy scalars of the dtype, times become aware UTC datetimes), and two schemas
are equal when their fields are (a NaN fill value equals a NaN fill value).

Deviations from deker 1.1.7 (all reject input 1.1.7 accepted but could not use, SPEC §8.9-8.10):

- Dimension sizes must be positive (1.1.7 accepted negative sizes).
- Labels are validated at declaration: a list or tuple of unique strings or of unique numbers
  (numbers become floats), as many as the dimension size.  Dict labels are rejected.
- Scale values may be ints (they become floats); the step must be finite and non-zero; a dict
  with unknown or missing keys raises :class:`~deker.errors.DekerValidationError` (1.1.7 raised
  a raw ``TypeError``; the new error is still a ``ValueError``).
- A fill value that the dtype cannot hold unchanged (``300`` for ``int8``, ``1.5`` or NaN for an
  integer dtype, ``1e300`` for ``float32``) is rejected instead of silently converted.
- ``vgrid`` / ``arrays_shape`` elements may not be ``bool``.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeAlias

import numpy as np

from deker.dtypes import (
    attribute_dtype_to_name,
    default_fill_value,
    dtype_to_name,
    is_attribute_dtype,
    normalize_array_dtype,
)
from deker.errors import DekerValidationError
from deker.types import IndexLabels, Scale, to_utc

__all__ = [
    "AnyDimensionSchema",
    "ArraySchema",
    "AttributeSchema",
    "DimensionSchema",
    "SchemaLike",
    "TimeDimensionSchema",
    "VArraySchema",
    "tile_schema",
]

_NAME_MESSAGE = 'Dimension schema "name" shall be a non-empty string'


def _check_name(name: Any, what: str = "") -> str:
    if not isinstance(name, str) or not name.strip():
        raise DekerValidationError(f"{_NAME_MESSAGE}{what}; got {name!r}")
    return name


def _check_size(size: Any, name: str) -> int:
    if isinstance(size, (bool, np.bool_)) or not isinstance(size, numbers.Integral) or int(size) <= 0:
        raise DekerValidationError(
            f'Dimension schema "size" shall be a positive integer; got {size!r} for dimension {name!r}'
        )
    return int(size)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttributeSchema:
    """The declaration of one attribute of the arrays of a collection.

    Parameters
    ----------
    name : str
        The attribute name (non-blank).
    dtype : type
        ``int``, ``float``, ``complex``, ``str``, ``tuple``, ``datetime.datetime`` or a numeric
        numpy scalar type (not ``bool``).
    primary : bool
        Whether the attribute is part of the primary key (a path component of the symlinks).

    Raises
    ------
    DekerValidationError
        If a field is invalid.
    """

    name: str
    dtype: type
    primary: bool

    def __post_init__(self) -> None:
        _check_name(self.name, " (attribute)")
        if not is_attribute_dtype(self.dtype):
            attribute_dtype_to_name(self.dtype)  # raises the "Invalid dtype value" error
        if not isinstance(self.primary, bool):
            raise DekerValidationError(f"Invalid primary value {self.primary!r}; boolean expected")

    @property
    def as_dict(self) -> dict[str, Any]:
        """The stored form: ``{"name", "primary", "dtype"}``."""
        return {"name": self.name, "primary": self.primary, "dtype": attribute_dtype_to_name(self.dtype)}


# --------------------------------------------------------------------------------------------------
def _check_labels(labels: Any, name: str, size: int) -> tuple[Any, ...]:
    if isinstance(labels, Mapping):
        raise DekerValidationError(
            f"Labels of dimension {name!r} shall be a list or tuple of unique strings or numbers, "
            "one per index; a dict is not accepted: pass list(labels) in index order"
        )
    if not isinstance(labels, (list, tuple)) or isinstance(labels, Scale):
        raise DekerValidationError(
            f"Labels of dimension {name!r} shall be a list or tuple of unique strings or numbers; "
            f"got {labels!r}"
        )
    valid = IndexLabels(labels)
    if len(valid) != size:
        raise DekerValidationError(
            f"Labels quantity do not match dimension size: dimension {name!r} has size {size}, "
            f"got {len(valid)} labels"
        )
    return tuple(valid)


def _check_scale(scale: Any, name: str) -> Scale:
    if isinstance(scale, Scale):
        fields: dict[str, Any] = scale._asdict()
    elif isinstance(scale, Mapping):
        fields = dict(scale)
        unknown = sorted(str(k) for k in fields if k not in Scale._fields)
        if unknown:
            raise DekerValidationError(
                f"Scale of dimension {name!r} has unknown keys {unknown}; "
                "use 'start_value', 'step' and optionally 'name'"
            )
        missing = [k for k in ("start_value", "step") if k not in fields]
        if missing:
            raise DekerValidationError(f"Scale of dimension {name!r} misses {missing}")
    else:
        raise DekerValidationError(f"Scale of dimension {name!r} shall be a Scale or a dict; got {scale!r}")
    for key in ("start_value", "step"):
        value = fields[key]
        if not _is_real(value) or not math.isfinite(float(value)):
            raise DekerValidationError(
                f"Scale attribute {key!r} value shall be a finite float; got {value!r} for dimension {name!r}"
            )
    if float(fields["step"]) == 0.0:
        raise DekerValidationError(f"Scale attribute 'step' shall not be zero (dimension {name!r})")
    scale_name = fields.get("name")
    if scale_name is not None and (not isinstance(scale_name, str) or not scale_name.strip()):
        raise DekerValidationError(
            f"Scale attribute 'name' shall be None or a non-empty string; got {scale_name!r}"
        )
    return Scale(float(fields["start_value"]), float(fields["step"]), scale_name)


@dataclass(frozen=True, init=False)
class DimensionSchema:
    """The declaration of a generic dimension.

    Parameters
    ----------
    name : str
        The dimension name (non-blank).
    size : int
        The number of indexes (positive).
    labels : list or tuple, optional
        One unique label per index: all strings, or all numbers (stored as floats).
    scale : Scale or dict, optional
        A regular coordinate ``start_value + i * step`` (ints are converted to floats; a dict
        with other keys than ``start_value``, ``step``, ``name`` raises
        :class:`~deker.errors.DekerValidationError`, where deker 1.1.7 raised ``TypeError``).
        Not together with ``labels``.

    Raises
    ------
    DekerValidationError
        If a field is invalid.
    """

    name: str
    size: int
    labels: tuple[Any, ...] | None
    scale: Scale | None

    def __init__(self, name: str, size: int, labels: Sequence[Any] | None = None, scale: Any = None) -> None:
        _check_name(name)
        size = _check_size(size, name)
        if _truthy(labels) and _truthy(scale):
            raise DekerValidationError(
                f"Invalid DimensionSchema {name} arguments: either `labels` or `scale` or none of them "
                "should be passed, not both"
            )
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "labels", None if labels is None else _check_labels(labels, name, size))
        object.__setattr__(self, "scale", None if scale is None else _check_scale(scale, name))

    @property
    def as_dict(self) -> dict[str, Any]:
        """The stored form: ``{"name", "size", "labels", "scale", "type": "generic"}``."""
        return {
            "name": self.name,
            "size": self.size,
            "labels": None if self.labels is None else list(self.labels),
            "scale": None if self.scale is None else self.scale._asdict(),
            "type": "generic",
        }


def _truthy(value: Any) -> bool:
    if value is None:
        return False
    try:
        return bool(value)
    except ValueError:  # numpy arrays
        return True


@dataclass(frozen=True, init=False)
class TimeDimensionSchema:
    """The declaration of a time dimension: index ``i`` is the time ``start_value + i * step``.

    Parameters
    ----------
    name, size
        As for :class:`DimensionSchema`.
    start_value : datetime or str
        The time of index 0: a datetime (naive means UTC), an ISO-8601 string, or ``"$<attr>"``
        naming a ``datetime`` attribute of each array that holds its start.
    step : timedelta
        The non-zero time between two indexes.

    Raises
    ------
    DekerValidationError
        If a field is invalid.
    """

    name: str
    size: int
    start_value: datetime | str
    step: timedelta

    def __init__(self, name: str, size: int, start_value: datetime | str, step: timedelta) -> None:
        _check_name(name)
        size = _check_size(size, name)
        if not isinstance(step, timedelta) or not step:
            raise DekerValidationError(
                f'TimeDimension schema "step" shall be a datetime.timedelta instance (non-zero); got {step!r}'
            )
        start: datetime | str
        if isinstance(start_value, str) and start_value.startswith("$"):
            if not start_value[1:].strip():
                raise DekerValidationError(
                    f"Time dimension {name!r} start_value {start_value!r} shall name an attribute after '$'"
                )
            start = start_value
        elif isinstance(start_value, (str, datetime)):
            start = to_utc(start_value)
        else:
            raise DekerValidationError(
                f"Time dimension {name!r} start_value shall be a datetime, an ISO-8601 string or "
                f"'$<attribute name>'; got {start_value!r}"
            )
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "start_value", start)
        object.__setattr__(self, "step", step)

    @property
    def as_dict(self) -> dict[str, Any]:
        """The stored form: ``{"name", "size", "type": "time", "start_value", "step"}``."""
        start = self.start_value
        return {
            "name": self.name,
            "size": self.size,
            "type": "time",
            "start_value": start if isinstance(start, str) else start.isoformat(),
            "step": {
                "days": self.step.days,
                "seconds": self.step.seconds,
                "microseconds": self.step.microseconds,
            },
        }


AnyDimensionSchema: TypeAlias = DimensionSchema | TimeDimensionSchema


# --------------------------------------------------------------------------------------------------
def _convert_fill_value(dtype: type[np.generic], value: Any) -> np.generic:
    if value is None:
        return default_fill_value(dtype)
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    message = f"Invalid `fill_value` value for dtype {dtype.__name__}: {value!r}"
    if isinstance(value, (bool, np.bool_)):  # (a Python int subclass: True silently became 1)
        raise DekerValidationError(f"{message}: a bool is no fill value; give a number of the dtype")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            converted = dtype(value)
            np.array(converted, dtype)
    except (ValueError, TypeError, OverflowError, ArithmeticError, Warning) as exc:
        raise DekerValidationError(message) from exc
    if not isinstance(converted, np.generic) or converted.shape != ():
        raise DekerValidationError(message)
    if _changed(value, converted):
        raise DekerValidationError(f"{message} (the dtype cannot hold it unchanged)")
    if _flushed_to_zero(value, converted):
        raise DekerValidationError(
            f"{message}: too small for {dtype.__name__}, it would round to {converted}, so cells "
            f"holding {converted} would read as absent ones; give a fill value {dtype.__name__} "
            f"holds (its smallest positive number is {np.finfo(converted).smallest_subnormal})"
        )
    nan_part = isinstance(converted, np.complexfloating) and bool(np.isnan(converted))
    if nan_part and not (np.isnan(converted.real) and converted.imag == 0):  # type: ignore[union-attr]
        raise DekerValidationError(  # (stored as null, it would read back as nan+0j)
            f"{message}: the storage keeps a NaN fill value as null, which reads back as "
            "the default nan+0j, so a complex fill value with a NaN part must be nan+0j "
            "(fill_value=None), or have no NaN"
        )
    return converted


def _changed(value: Any, converted: np.generic) -> bool:
    """Return whether converting ``value`` to ``converted`` changed more than its precision."""
    if isinstance(value, (str, bytes)):
        text = value.decode() if isinstance(value, bytes) else value
        if isinstance(converted, np.integer):  # numpy 1.26 wraps out-of-range texts
            try:
                return int(converted) != int(text)
            except ValueError:
                return True
        # an inexact text is parsed by the dtype itself; only an overflow to infinity is a change
        return bool(np.isinf(converted)) and "inf" not in text.lower()
    if isinstance(converted, np.integer):
        original = value.item() if isinstance(value, np.generic) else value
        try:
            return bool(int(converted) != original)
        except TypeError:  # pragma: no cover - exotic number types
            return True
    # inexact: rounding is fine, overflow to infinity is not
    return bool(np.isinf(converted)) and not _is_infinite(value)


def _flushed_to_zero(value: Any, converted: np.generic) -> bool:
    """Return whether a part of a non-zero number became 0 in an inexact dtype (1e-8 in float16).

    A text (the stored form, parsed by the dtype as deker 1.1.7 did) is left as it is.
    """
    if not isinstance(converted, np.inexact) or isinstance(value, (str, bytes)):
        return False
    try:
        number = complex(value)
    except (OverflowError, TypeError, ValueError):  # a huge finite number (an overflow, refused above)
        return False
    pairs = ((number.real, np.real(converted)), (number.imag, np.imag(converted)))
    return any(given != 0 and bool(got == 0) for given, got in pairs)


def _is_infinite(value: Any) -> bool:
    if isinstance(value, np.generic):
        return bool(np.isinf(value))
    try:
        number = complex(value)
    except (OverflowError, TypeError, ValueError):  # a huge finite number
        return False
    return math.isinf(number.real) or math.isinf(number.imag)


def _same_fill(a: np.generic, b: np.generic) -> bool:
    if type(a) is not type(b):
        return False
    pairs = ((np.real(a), np.real(b)), (np.imag(a), np.imag(b)))
    return all(bool(x == y) or (bool(np.isnan(x)) and bool(np.isnan(y))) for x, y in pairs)


def _check_dimensions(dimensions: Any) -> tuple[DimensionSchema | TimeDimensionSchema, ...]:
    if (
        not isinstance(dimensions, (list, tuple))
        or not dimensions
        or not all(isinstance(d, (DimensionSchema, TimeDimensionSchema)) for d in dimensions)
    ):
        raise DekerValidationError(
            "Dimensions shall be a list or tuple of DimensionSchemas or TimeDimensionSchemas"
        )
    names = [d.name for d in dimensions]
    if len(set(names)) != len(names):
        raise DekerValidationError(f"Dimensions shall have unique names; got {names}")
    return tuple(dimensions)


def _check_attributes(attributes: Any) -> tuple[AttributeSchema, ...]:
    if attributes is None:
        return ()
    if not isinstance(attributes, (list, tuple)) or not all(
        isinstance(a, AttributeSchema) for a in attributes
    ):
        raise DekerValidationError("Attributes shall be a list or tuple of AttributeSchema")
    names = [a.name for a in attributes]
    if len(set(names)) != len(names):
        raise DekerValidationError(f"Attribute name shall be unique; got {names}")
    return tuple(attributes)


def _check_time_references(
    dimensions: tuple[DimensionSchema | TimeDimensionSchema, ...], attributes: tuple[AttributeSchema, ...]
) -> None:
    dt_names = {a.name for a in attributes if a.dtype is datetime}
    for dim in dimensions:
        if isinstance(dim, TimeDimensionSchema) and isinstance(dim.start_value, str):
            ref = dim.start_value[1:]
            if ref not in dt_names:
                raise DekerValidationError(f"No {ref} attribute with dtype `datetime.datetime` is provided")


@dataclass(frozen=True, init=False, eq=False)
class _BaseArraySchema:
    """Fields, checks and properties common to :class:`ArraySchema` and :class:`VArraySchema`."""

    dtype: type[np.generic]
    dimensions: tuple[DimensionSchema | TimeDimensionSchema, ...]
    fill_value: np.generic
    attributes: tuple[AttributeSchema, ...]

    def _validate(self, dtype: Any, dimensions: Any, fill_value: Any, attributes: Any) -> None:
        dims = _check_dimensions(dimensions)
        np_dtype = normalize_array_dtype(dtype)
        fill = _convert_fill_value(np_dtype, fill_value)
        attrs = _check_attributes(attributes)
        _check_time_references(dims, attrs)
        object.__setattr__(self, "dtype", np_dtype)
        object.__setattr__(self, "dimensions", dims)
        object.__setattr__(self, "fill_value", fill)
        object.__setattr__(self, "attributes", attrs)

    def _fields_equal(self, other: _BaseArraySchema) -> bool:
        return (
            self.dtype is other.dtype
            and self.dimensions == other.dimensions
            and self.attributes == other.attributes
            and _same_fill(self.fill_value, other.fill_value)
        )

    def __hash__(self) -> int:  # consistent with __eq__: the fill value is left out
        return hash((type(self), self.dtype, self.dimensions, self.attributes))

    @property
    def shape(self) -> tuple[int, ...]:
        """The sizes of the dimensions."""
        return tuple(d.size for d in self.dimensions)

    @property
    def named_shape(self) -> tuple[tuple[str, int], ...]:
        """``(name, size)`` of every dimension."""
        return tuple((d.name, d.size) for d in self.dimensions)

    @property
    def ndim(self) -> int:
        """The number of dimensions."""
        return len(self.dimensions)

    @property
    def primary_attributes(self) -> tuple[AttributeSchema, ...] | None:
        """The primary attributes in schema order, or ``None`` when there is none."""
        found = tuple(a for a in self.attributes if a.primary)
        return found or None

    @property
    def custom_attributes(self) -> tuple[AttributeSchema, ...] | None:
        """The custom (non-primary) attributes in schema order, or ``None`` when there is none."""
        found = tuple(a for a in self.attributes if not a.primary)
        return found or None

    @property
    def as_dict(self) -> dict[str, Any]:
        """The stored form: ``{"dimensions", "dtype", "attributes", "fill_value"}``.

        ``fill_value`` is ``None`` when it is NaN (as in deker 1.1.7; read back as the default,
        so a complex fill value with a NaN part other than ``nan+0j`` is refused when the schema
        is made), otherwise ``str(fill_value)``.
        """
        return {
            "dimensions": tuple(d.as_dict for d in self.dimensions),
            "dtype": dtype_to_name(self.dtype),
            "attributes": tuple(a.as_dict for a in self.attributes),
            "fill_value": None if bool(np.isnan(self.fill_value)) else str(self.fill_value),
        }


@dataclass(frozen=True, init=False, eq=False)
class ArraySchema(_BaseArraySchema):
    """The schema of an Array collection.

    Parameters
    ----------
    dtype : type
        ``int``, ``float``, ``complex`` or a numeric numpy scalar type (SPEC §1.7.6).
    dimensions : list or tuple of DimensionSchema or TimeDimensionSchema
        At least one, with unique names.
    fill_value : number, optional
        The value of cells never written; by default NaN for floating types, the minimum for
        integer types.  It must be representable by the dtype.
    attributes : list or tuple of AttributeSchema, optional
        With unique names.  A time dimension starting at ``"$name"`` needs a ``datetime``
        attribute ``name``.

    Raises
    ------
    DekerValidationError
        If a field is invalid (checked in the order of SPEC §1.7).
    """

    def __init__(
        self,
        *,
        dtype: type,
        dimensions: Sequence[DimensionSchema | TimeDimensionSchema],
        fill_value: Any = None,
        attributes: Sequence[AttributeSchema] | None = None,
    ) -> None:
        self._validate(dtype, dimensions, fill_value, attributes)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, ArraySchema)
        return self._fields_equal(other)

    __hash__ = _BaseArraySchema.__hash__


def _given(value: Any) -> bool:
    return _truthy(value)


def _check_splitter(value: Any, label: str, ndim: int) -> tuple[int, ...]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != ndim
        or not all(
            isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)) and int(v) >= 1
            for v in value
        )
    ):
        raise DekerValidationError(
            f"{label} shall be a list or tuple of positive integers, with total elements quantity equal "
            f"to dimensions quantity ({ndim}); got {value!r}"
        )
    return tuple(int(v) for v in value)


@dataclass(frozen=True, init=False, eq=False)
class VArraySchema(_BaseArraySchema):
    """The schema of a VArray collection: big virtual arrays stored as a grid of tiles.

    Parameters
    ----------
    dtype, dimensions, fill_value, attributes
        As for :class:`ArraySchema`.
    vgrid : list or tuple of int, optional
        How many tiles along each dimension.
    arrays_shape : list or tuple of int, optional
        The shape of one tile.  Exactly one of ``vgrid`` and ``arrays_shape`` is given, and it
        must split every dimension into equal parts.

    Raises
    ------
    DekerValidationError
        If a field is invalid.
    """

    vgrid: tuple[int, ...]
    arrays_shape: tuple[int, ...]

    def __init__(
        self,
        *,
        dtype: type,
        dimensions: Sequence[DimensionSchema | TimeDimensionSchema],
        vgrid: Sequence[int] | None = None,
        arrays_shape: Sequence[int] | None = None,
        fill_value: Any = None,
        attributes: Sequence[AttributeSchema] | None = None,
    ) -> None:
        self._validate(dtype, dimensions, fill_value, attributes)
        has_grid, has_shape = _given(vgrid), _given(arrays_shape)
        if not has_grid and not has_shape:
            raise DekerValidationError("Either `vgrid` or `arrays_shape` shall be passed")
        if has_grid and has_shape:
            raise DekerValidationError("Either `vgrid` or `arrays_shape` shall be passed, not both")
        key, label, given = (
            ("vgrid", "Vgrid", vgrid) if has_grid else ("arrays_shape", "Arrays_shape", arrays_shape)
        )
        splitter = _check_splitter(given, label, self.ndim)
        for dim, part in zip(self.dimensions, splitter, strict=True):
            if dim.size % part:
                raise DekerValidationError(
                    f"Dimensions shall be split by {key} into equal parts without remainder: "
                    f"{dim.name} size % {key} element = {dim.size} % {part} = {dim.size % part}"
                )
        other = tuple(s // p for s, p in zip(self.shape, splitter, strict=True))
        object.__setattr__(self, "vgrid", splitter if has_grid else other)
        object.__setattr__(self, "arrays_shape", other if has_grid else splitter)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, VArraySchema)
        return self._fields_equal(other) and self.vgrid == other.vgrid

    __hash__ = _BaseArraySchema.__hash__

    @property
    def as_dict(self) -> dict[str, Any]:
        """The stored form: the :class:`ArraySchema` form plus ``"vgrid"``."""
        data = super().as_dict
        data["vgrid"] = self.vgrid
        return data


SchemaLike: TypeAlias = ArraySchema | VArraySchema


def tile_schema(vschema: VArraySchema) -> ArraySchema:
    """Return the schema of the tiles (Arrays) of a VArray collection (SPEC §2.6).

    Tiles have the primary attributes ``vid`` (``str``) and ``v_position`` (``tuple``), then a
    custom ``datetime`` attribute ``parent.X`` for every time dimension starting at ``"$X"``.
    Each dimension has the tile size; generic dimensions lose labels and scale, time dimensions
    keep their step and fixed start, or start at ``"$parent.X"``.

    Parameters
    ----------
    vschema : VArraySchema
        The collection schema.

    Returns
    -------
    ArraySchema
        The tile schema, with the same dtype and fill value.
    """
    attributes = [AttributeSchema("vid", str, True), AttributeSchema("v_position", tuple, True)]
    dimensions: list[DimensionSchema | TimeDimensionSchema] = []
    for dim, size in zip(vschema.dimensions, vschema.arrays_shape, strict=True):
        if isinstance(dim, TimeDimensionSchema):
            start = dim.start_value
            if isinstance(start, str):
                ref = f"parent.{start[1:]}"
                if all(a.name != ref for a in attributes):  # two axes may share one start attribute
                    attributes.append(AttributeSchema(ref, datetime, False))
                start = f"${ref}"
            dimensions.append(TimeDimensionSchema(dim.name, size, start, dim.step))
        else:
            dimensions.append(DimensionSchema(dim.name, size))
    return ArraySchema(
        dtype=vschema.dtype, dimensions=dimensions, fill_value=vschema.fill_value, attributes=attributes
    )
