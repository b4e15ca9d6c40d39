"""The dimensions of a concrete array: :class:`Dimension` and :class:`TimeDimension`.

A dimension is built from its schema and, for a time axis whose start is an attribute reference
(``"$name"``), from the attribute values of the array (:func:`build_dimensions`).  Dimensions
translate coordinate values (labels, scale coordinates, times) to integer positions
(:meth:`Dimension.to_index`) and positions back to coordinates (:meth:`Dimension.describe`).

Deviations from deker 1.1.7 (SPEC §8.5):

- Scale coordinates are matched with a tolerance instead of an exact float modulo, so grids with
  non-dyadic steps (0.1, 0.01, ...) can be indexed by value.  A value addresses position
  ``round((value - start) / step)`` when it lies within :data:`SCALE_REL_TOLERANCE` of a step
  (plus a few ulps of the magnitudes involved) from that grid point.
- Float labels are addressable by value.
- The exclusive end of a scale or time axis (``start + size * step``) is accepted as a slice stop.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np

from deker.dtypes import datetime64_moment
from deker.errors import DekerValidationError
from deker.schemas import ArraySchema, DimensionSchema, VArraySchema
from deker.types import IndexLabels, Scale, to_utc

__all__ = ["SCALE_REL_TOLERANCE", "Dimension", "TimeDimension", "build_dimensions"]

#: A scale value addresses grid point ``i`` when ``|value - (start + i*step)|`` is at most this
#: fraction of ``|step|`` (plus 8 ulps of the largest magnitude involved).  One millionth of a
#: step absorbs the error of any usual way of computing coordinates (``start + i*step``,
#: ``np.arange``, ``np.linspace``, rounding to 10 decimals, float32 values) while staying far from
#: the neighbouring grid points, so no value can address the wrong position.
SCALE_REL_TOLERANCE = 1e-6

_EPS = float(np.finfo(np.float64).eps)
_MAX_DECIMALS = 350  # beyond the smallest float exponent: never truncates a real value


def _check_name(name: Any) -> str:
    if not isinstance(name, str):
        raise DekerValidationError(f"Name shall be str, got {type(name).__name__}")
    if not name.strip():
        raise DekerValidationError("Name cannot be empty")
    return name


def _check_size(size: Any) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
        raise DekerValidationError(f"Size shall be a positive int, got {size!r}")
    return int(size)


def _decimals(value: float) -> int:
    """Return the number of decimals of the shortest representation of ``value``."""
    exponent = Decimal(repr(value)).as_tuple().exponent
    if not isinstance(exponent, int):  # pragma: no cover - finite values only
        return 0
    return min(max(-exponent, 0), _MAX_DECIMALS)


def _check_scale(scale: Any, name: str) -> Scale:
    if isinstance(scale, Mapping) and not isinstance(scale, Scale):
        try:
            scale = Scale(**scale)
        except TypeError as exc:
            raise DekerValidationError(
                f"Scale of dimension {name!r} has unknown keys: {sorted(scale)}; "
                "use 'start_value', 'step' and optionally 'name'"
            ) from exc
    if not isinstance(scale, Scale):
        raise DekerValidationError(f"Scale of dimension {name!r} shall be a Scale or a dict, got {scale!r}")
    for field in ("start_value", "step"):
        value = getattr(scale, field)
        if isinstance(value, bool) or not isinstance(value, float):
            raise DekerValidationError(f"Scale attribute {field!r} value shall be float, got {value!r}")
        if not math.isfinite(value):
            raise DekerValidationError(f"Scale attribute {field!r} value shall be finite, got {value!r}")
    if scale.step == 0.0:
        raise DekerValidationError(f"Scale step of dimension {name!r} shall not be zero")
    if scale.name is not None and (not isinstance(scale.name, str) or not scale.name.strip()):
        raise DekerValidationError(f"Scale name of dimension {name!r} shall be None or a non-empty string")
    return Scale(float(scale.start_value), float(scale.step), scale.name)


def _check_labels(labels: Any, size: int) -> IndexLabels:
    if isinstance(labels, IndexLabels):
        items: Any = labels
    elif isinstance(labels, (list, tuple)):
        items = labels
    elif isinstance(labels, Mapping):
        raise DekerValidationError(
            "Labels shall be a list or tuple of unique values of the same type (strings, floats); "
            f"got a mapping {dict(labels)!r}"
        )
    else:
        raise DekerValidationError(
            "Labels shall be a list or tuple of unique values of the same type (strings, floats); "
            f"got {labels!r}"
        )
    if not items:
        raise DekerValidationError("Label cannot be empty, use None instead")
    if len(items) != size:
        raise DekerValidationError(f"Labels quantity do not match dimension size: {len(items)} != {size}")
    return items if isinstance(items, IndexLabels) else IndexLabels(items)


def _bound_range(bound: int | slice, size: int) -> range:
    """Return the positions a normalised bound covers (negatives count from the end; clipped)."""
    if isinstance(bound, slice):
        start, stop, _ = slice(bound.start, bound.stop).indices(size)
        return range(start, max(start, stop))
    if isinstance(bound, bool) or not isinstance(bound, (int, np.integer)):
        raise TypeError(f"A bound shall be an int or a slice, got {bound!r}")
    pos = int(bound)
    if pos < 0:
        pos += size
    if not 0 <= pos < size:
        raise IndexError(f"Index {bound} is out of range for a dimension of size {size}")
    return range(pos, pos + 1)


class _BaseDimension:
    """Name, size and range checks shared by both dimension kinds."""

    __slots__ = ("_name", "_size")

    def __init__(self, name: str, size: int) -> None:
        self._name = _check_name(name)
        self._size = _check_size(size)

    @property
    def name(self) -> str:
        """The name of the dimension."""
        return self._name

    @property
    def size(self) -> int:
        """The number of positions along the dimension."""
        return self._size

    def __len__(self) -> int:
        return self._size

    def __str__(self) -> str:
        return str(self._size)

    def _where(self, value: Any) -> str:
        return f"{type(self).__name__} {self._name} wrong indexing: {value!r}"

    def _in_range(self, pos: int, value: Any, *, allow_end: bool) -> int:
        upper = self._size if allow_end else self._size - 1
        if not 0 <= pos <= upper:
            raise IndexError(
                f"{self._where(value)} is out of range (position {pos}, valid positions 0..{upper})"
            )
        return pos

    def _position(self, value: Any, stop: bool) -> int:
        return self._in_range(int(value), value, allow_end=stop)

    def _key(self) -> tuple[Any, ...]:
        raise NotImplementedError  # what makes two dimensions of a kind equal

    def _coordinates(self, positions: range) -> list[Any]:
        raise NotImplementedError  # the coordinates of these positions (see describe)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, type(self)):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def describe(self, bound: int | slice) -> list[Any]:
        """Return the coordinates of the positions a normalised bound covers.

        Parameters
        ----------
        bound : int or slice
            A position, or a slice whose step is ignored (negatives count from the end).

        Returns
        -------
        list
            Labels, scale coordinates (floats rounded to the decimals of the scale) or
            positions; for a time dimension the instants (aware UTC datetimes)
            ``start_value + k * step`` of the covered positions ``k``.

        """
        return self._coordinates(_bound_range(bound, self._size))


class Dimension(_BaseDimension):
    """A generic dimension, optionally with labels or a regular scale.

    Parameters
    ----------
    name : str
        The name of the dimension.
    size : int
        The number of positions (positive).
    labels : list or tuple or IndexLabels, optional
        One unique label (all strings or all floats) per position.
    scale : Scale or dict, optional
        A regular coordinate ``start_value + i * step`` (floats); not together with labels.

    Raises
    ------
    DekerValidationError
        If an argument is invalid.

    """

    __slots__ = ("_decimals", "_label_pos", "_labels", "_scale")

    def __init__(self, name: str, size: int, labels: Any = None, scale: Any = None) -> None:
        super().__init__(name, size)
        if labels is not None and scale is not None:
            raise DekerValidationError(
                f"Invalid Dimension {name} arguments: either `labels` or `scale` or none of them "
                "should be passed, not both"
            )
        self._labels: IndexLabels | None = None if labels is None else _check_labels(labels, self._size)
        self._scale: Scale | None = None if scale is None else _check_scale(scale, self._name)
        self._label_pos: dict[Any, int] | None = None
        self._decimals = 0
        if self._scale is not None:
            self._decimals = max(_decimals(self._scale.step), _decimals(self._scale.start_value))

    @property
    def step(self) -> int:
        """The index step (always 1)."""
        return 1

    @property
    def labels(self) -> IndexLabels | None:
        """The labels of the positions, or ``None``."""
        return self._labels

    @property
    def scale(self) -> Scale | None:
        """The regular coordinate of the positions, or ``None``."""
        return self._scale

    @property
    def as_dict(self) -> dict[str, Any]:
        """``{"name", "size", "step": 1}`` plus ``"labels"`` (list) or ``"scale"`` (dict) when set."""
        out: dict[str, Any] = {"name": self._name, "size": self._size, "step": 1}
        if self._labels is not None:
            out["labels"] = list(self._labels)
        if self._scale is not None:
            out["scale"] = self._scale._asdict()
        return out

    def __repr__(self) -> str:
        text = f"Dimension(name={self._name!r}, size={self._size}, step=1"
        if self._labels is not None:
            text += f", labels={tuple(self._labels)!r}"
        if self._scale is not None:
            text += f", scale={self._scale!r}"
        return text + ")"

    def _key(self) -> tuple[Any, ...]:
        return (self._name, self._size, self._labels, self._scale)

    def _label_index(self, value: Any) -> int | None:
        if self._label_pos is None:
            assert self._labels is not None
            self._label_pos = {label: i for i, label in enumerate(self._labels)}
        return self._label_pos.get(value)

    def to_index(self, value: Any, *, stop: bool = False) -> int:
        """Return the position of a coordinate value along this dimension.

        Parameters
        ----------
        value : int, str or float
            A position (int), a label (str, or float for float labels) or a scale coordinate
            (float, matched within :data:`SCALE_REL_TOLERANCE` of a step).
        stop : bool
            The value is the exclusive stop of a slice: the end of the scale
            (``start + size * step``) is then accepted and gives ``size`` (never for labels).

        Returns
        -------
        int
            The position, in ``[0, size)`` (``[0, size]`` for a scale stop).

        Raises
        ------
        IndexError
            If the value has the wrong type, is not a label / grid point, or is out of range.

        """
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return self._position(value, stop)
        if isinstance(value, str):
            if self._labels is None:
                raise IndexError(f"{self._where(value)}: {self._name} has no labels")
            if not isinstance(self._labels[0], str):
                raise IndexError(f"{self._where(value)}: {self._name} has float labels, not {value!r}")
            pos = self._label_index(value)
            if pos is None:
                raise IndexError(f"{self._where(value)}: {self._name} has no label {value!r}")
            return pos
        if isinstance(value, (float, np.floating)):
            number = float(value)
            if self._labels is not None and not isinstance(self._labels[0], str):
                pos = self._label_index(number)
                if pos is None:
                    raise IndexError(f"{self._where(value)}: {self._name} has no label {value!r}")
                return pos
            if self._scale is None:
                raise IndexError(
                    f"{self._where(value)}: {self._name} has no scale "
                    "(a float addresses a scale coordinate or a float label; a position is an int)"
                )
            return self._scale_index(number, value, stop)
        if isinstance(value, datetime):
            raise IndexError(f"{self._where(value)}: datetimes index time dimensions only")
        raise IndexError(f"{self._where(value)}: invalid index type {type(value).__name__}")

    def _scale_index(self, number: float, value: Any, stop: bool) -> int:
        assert self._scale is not None
        start, step = self._scale.start_value, self._scale.step
        ratio = (number - start) / step
        if not math.isfinite(ratio):
            raise IndexError(f"{self._where(value)}: {self._name} has no index for {value!r}")
        pos = round(ratio)
        grid = start + pos * step
        tolerance = SCALE_REL_TOLERANCE * abs(step) + 8 * _EPS * max(abs(number), abs(start), abs(grid))
        if abs(number - grid) > tolerance:
            raise IndexError(
                f"{self._where(value)}: {self._name} has no index for {value!r} "
                f"(not on the scale start={start!r}, step={step!r})"
            )
        return self._in_range(pos, value, allow_end=stop)

    def _coordinates(self, positions: range) -> list[Any]:
        if self._labels is not None:
            return list(self._labels[positions.start : positions.stop])
        if self._scale is not None:
            start, step, digits = self._scale.start_value, self._scale.step, self._decimals
            return [round(start + k * step, digits) for k in positions]
        return list(positions)


class TimeDimension(_BaseDimension):
    """A time dimension: position ``i`` is the instant ``start_value + i * step`` (UTC).

    Parameters
    ----------
    name : str
        The name of the dimension.
    size : int
        The number of positions (positive).
    start_value : datetime or str
        The instant of position 0: a datetime (naive means UTC) or an ISO-8601 string.
        Attribute references (``"$name"``) are resolved by :func:`build_dimensions`.
    step : timedelta
        The time between neighbouring positions (non-zero).

    Raises
    ------
    DekerValidationError
        If an argument is invalid.

    """

    __slots__ = ("_start", "_step")

    def __init__(self, name: str, size: int, start_value: datetime | str, step: timedelta) -> None:
        super().__init__(name, size)
        if isinstance(start_value, str) and start_value.startswith("$"):
            raise DekerValidationError(
                f"TimeDimension {name} start value {start_value!r} is an attribute reference; "
                "resolve it to a datetime first"
            )
        if not isinstance(start_value, (datetime, str)):
            raise DekerValidationError(
                f"TimeDimension {name} start value shall be a datetime or an ISO-8601 string, "
                f"got {start_value!r}"
            )
        self._start = to_utc(start_value)
        if not isinstance(step, timedelta) or not step:
            raise DekerValidationError(
                f"TimeDimension {name} step shall be a non-zero datetime.timedelta, got {step!r}"
            )
        self._step = step

    @property
    def start_value(self) -> datetime:
        """The instant of position 0 (aware, UTC)."""
        return self._start

    @property
    def step(self) -> timedelta:
        """The time between neighbouring positions."""
        return self._step

    @property
    def as_dict(self) -> dict[str, Any]:
        """``{"name", "size", "step": timedelta, "start_value": isoformat}``."""
        return {
            "name": self._name,
            "size": self._size,
            "step": self._step,
            "start_value": self._start.isoformat(),
        }

    def __repr__(self) -> str:
        return (
            f"TimeDimension(name={self._name!r}, size={self._size}, "
            f"start_value={self._start!r}, step={self._step!r})"
        )

    def _key(self) -> tuple[Any, ...]:
        return (self._name, self._size, self._start, self._step)

    def to_index(self, value: Any, *, stop: bool = False) -> int:
        """Return the position of a time along this dimension.

        Parameters
        ----------
        value : int, datetime, str, float or numpy.datetime64
            A position (int), or a time: datetime (naive means UTC), ISO-8601 string or POSIX
            timestamp (float).  It must be a whole number of steps from the start.
        stop : bool
            The value is the exclusive stop of a slice: the end of the axis
            (``start + size * step``) is then accepted and gives ``size``.

        Returns
        -------
        int
            The position, in ``[0, size)`` (``[0, size]`` for a stop).

        Raises
        ------
        IndexError
            If the value has the wrong type, cannot be parsed, is off the time grid or is out of
            range.

        """
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return self._position(value, stop)
        if isinstance(value, np.datetime64):
            try:
                moment: Any = datetime64_moment(value)
            except ValueError:  # finer than a datetime: on no grid
                raise IndexError(
                    f"{self._where(value)}: {self._name} has no index for {value!r} (a time between "
                    "two microseconds is not a whole number of steps from the start)"
                ) from None
        elif isinstance(value, (datetime, str)):
            moment = value
        elif isinstance(value, (float, np.floating)):
            moment = float(value)
        else:
            raise IndexError(f"{self._where(value)}: invalid index type {type(value).__name__}")
        try:
            when = to_utc(moment)
        except (DekerValidationError, TypeError) as exc:
            raise IndexError(f"TimeDimension {self._name} wrong value: {value!r} ({exc})") from exc
        steps, rest = divmod(when - self._start, self._step)
        if rest:
            raise IndexError(
                f"{self._where(value)}: {self._name} has no index for {when.isoformat()} "
                f"(not a whole number of steps {self._step} from {self._start.isoformat()})"
            )
        return self._in_range(steps, value, allow_end=stop)

    def _coordinates(self, positions: range) -> list[Any]:
        return [self._start + k * self._step for k in positions]


def build_dimensions(
    schema: ArraySchema | VArraySchema, attributes: Mapping[str, Any]
) -> tuple[Dimension | TimeDimension, ...]:
    """Build the dimensions of an array from its schema and attribute values.

    Parameters
    ----------
    schema : ArraySchema or VArraySchema
        The schema of the array.
    attributes : Mapping
        The processed (typed) primary and custom attribute values of the array; time dimensions
        starting at ``"$name"`` take their start from ``attributes[name]``.

    Returns
    -------
    tuple of Dimension or TimeDimension
        One per schema dimension, in order.

    Raises
    ------
    DekerValidationError
        If a referenced attribute has no datetime value, or a dimension is invalid.

    """
    out: list[Dimension | TimeDimension] = []
    for dim in schema.dimensions:
        if isinstance(dim, DimensionSchema):
            out.append(Dimension(dim.name, dim.size, labels=dim.labels, scale=dim.scale))
            continue
        start = dim.start_value
        if isinstance(start, str) and start.startswith("$"):
            ref = start[1:]
            value = attributes.get(ref)
            if value is None:
                raise DekerValidationError(
                    f"Time dimension {dim.name!r} starts at attribute {ref!r}, which has no value; "
                    f"pass a datetime for {ref!r}"
                )
            if not isinstance(value, datetime):
                raise DekerValidationError(
                    f"Time dimension {dim.name!r} starts at attribute {ref!r}, which shall be a datetime, "
                    f"got {value!r}"
                )
            start = value
        out.append(TimeDimension(dim.name, dim.size, start, dim.step))
    return tuple(out)
