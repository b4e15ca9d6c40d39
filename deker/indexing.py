"""User keys of ``array[key]`` turned into normalised bounds and a result shape.

The rules are numpy's basic indexing (SPEC §5, fixing §8 items 3, 4 and 6):

- an element is an integer (Python or numpy, not ``bool``), a slice with step ``None`` or 1,
  ``...`` (at most one, standing for as many full dimensions as are missing), or a coordinate
  value converted by the dimension it lands on (a label ``str``, a scale ``float``, a time as
  ``datetime``, ISO string or POSIX ``float``);
- negative integers count from the end; an integer out of range raises :class:`IndexError`;
- slices are clipped to the axis exactly as numpy clips them, but an empty result on any axis
  raises :class:`IndexError` (deker 1.1.7 keeps that rule);
- a key shorter than the number of dimensions selects the missing trailing dimensions whole.

Everything here is pure: no I/O, no state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import numpy as np

__all__ = [
    "INVALID_INDEX_MESSAGE",
    "AxisLike",
    "Selection",
    "bounds_to_str",
    "full_selection",
    "normalize_key",
]

INVALID_INDEX_MESSAGE = (
    "Only integers, floats, strings, datetime, tuples, slices (`:`) and ellipsis (`...`) are valid indices"
)

Bound = int | slice


class AxisLike(Protocol):
    """What :func:`normalize_key` needs from a dimension to convert coordinate values."""

    @property
    def name(self) -> str:
        """The name of the dimension."""
        ...

    @property
    def size(self) -> int:
        """The number of positions along the dimension."""
        ...

    def to_index(self, value: Any, *, stop: bool = False) -> int:
        """Return the position of ``value``; with ``stop=True`` the axis end gives ``size``.

        Raises
        ------
        IndexError
            If ``value`` does not name a position of the dimension.

        """
        ...


@dataclass(frozen=True)
class Selection:
    """A normalised key: one bound per dimension and the shape of the result.

    Parameters
    ----------
    bounds : tuple of int or slice
        One entry per dimension: an int in ``[0, size)`` (the dimension is dropped from the
        result) or ``slice(start, stop)`` with ``0 <= start < stop <= size`` and no step.
    shape : tuple of int
        The shape of the result: the lengths of the slices, in order.

    """

    bounds: tuple[Bound, ...]
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        lengths = []
        for bound in self.bounds:
            if isinstance(bound, slice):
                if (
                    not isinstance(bound.start, int)
                    or not isinstance(bound.stop, int)
                    or bound.step is not None
                ):
                    raise ValueError(f"a normalised slice needs int start and stop and no step, not {bound}")
                lengths.append(bound.stop - bound.start)
            elif not isinstance(bound, int) or isinstance(bound, bool):
                raise ValueError(f"a normalised bound is an int or a slice, not {bound!r}")
        if tuple(lengths) != tuple(self.shape):
            raise ValueError(f"shape {self.shape} does not match bounds {self.bounds}")

    @property
    def is_scalar(self) -> bool:
        """True when every dimension is indexed by an integer (the result is one value)."""
        return all(not isinstance(b, slice) for b in self.bounds)

    @property
    def size(self) -> int:
        """The number of cells selected."""
        return math.prod(self.shape)

    def is_full(self, shape: Sequence[int]) -> bool:
        """Return True when the selection covers every cell of an array of ``shape``.

        Parameters
        ----------
        shape : sequence of int
            The shape of the indexed array.

        Returns
        -------
        bool
            Whether nothing of the array is left out.

        """
        if len(shape) != len(self.bounds):
            return False
        for bound, size in zip(self.bounds, shape, strict=True):
            if isinstance(bound, slice):
                if bound.start != 0 or bound.stop != size:
                    return False
            elif size != 1:
                return False
        return True


def full_selection(shape: Sequence[int]) -> Selection:
    """Return the selection of every cell of an array of ``shape``.

    Parameters
    ----------
    shape : sequence of int
        The shape of the array.

    Returns
    -------
    Selection
        ``slice(0, size)`` on every dimension.

    """
    dims = tuple(int(s) for s in shape)
    return Selection(tuple(slice(0, s) for s in dims), dims)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _value_kind(value: Any) -> str | None:
    """Name the family of a coordinate value ("fancy" element), or None if it is not one."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, str):
        return "str"
    if isinstance(value, (float, np.floating)):
        return "float"
    if isinstance(value, datetime):
        return "datetime"
    if isinstance(value, np.datetime64):
        return "datetime64"
    return None


def _check_element(item: Any) -> None:
    if item is Ellipsis or isinstance(item, slice) or _is_int(item) or _value_kind(item) is not None:
        return
    raise IndexError(f"{INVALID_INDEX_MESSAGE}, not {type(item).__name__} {item!r}")


def _axis(axes: Sequence[AxisLike] | None, dim: int, value: Any) -> AxisLike:
    if axes is None:
        raise IndexError(
            f"{INVALID_INDEX_MESSAGE}: {type(value).__name__} {value!r} at dimension {dim} needs a "
            "dimension that converts coordinate values, and none is known here"
        )
    return axes[dim]


def _converted(axes: Sequence[AxisLike] | None, dim: int, value: Any, size: int, *, stop: bool) -> int:
    pos = _axis(axes, dim, value).to_index(value, stop=stop)
    if not _is_int(pos) or not 0 <= int(pos) <= (size if stop else size - 1):
        raise IndexError(f"dimension {dim}: {value!r} gives position {pos!r}, out of range for size {size}")
    return int(pos)


def _int_bound(value: Any, dim: int, size: int) -> int:
    index = int(value)
    if not -size <= index < size:
        raise IndexError(f"index {index} is out of bounds for axis {dim} with size {size}")
    return index + size if index < 0 else index


def _unit_step(step: Any, axes: Sequence[AxisLike] | None, dim: int) -> bool:
    if step is None:
        return True
    if _is_int(step):
        return int(step) == 1
    if isinstance(step, timedelta) and axes is not None:
        # A time dimension may be sliced with its own step (deker 1.1.7 accepts it as step 1).
        return bool(getattr(axes[dim], "step", None) == step)
    return False


def _slice_bound(item: slice, axes: Sequence[AxisLike] | None, dim: int, size: int) -> range:
    if not _unit_step(item.step, axes, dim):
        raise IndexError(f"step should be equal to 1, not {item.step!r} (dimension {dim})")
    start, stop = item.start, item.stop
    for value in (start, stop):
        if value is not None and not _is_int(value) and _value_kind(value) is None:
            raise IndexError(
                f"slice start and stop must be None, integers or coordinate values, not "
                f"{type(value).__name__} {value!r} (dimension {dim})"
            )
    kinds = {"int" if _is_int(v) else _value_kind(v) for v in (start, stop) if v is not None}
    if len(kinds) > 1:
        raise IndexError(
            f"'start' and 'stop' of the slice on dimension {dim} shall be of the same type, "
            f"not {type(start).__name__} and {type(stop).__name__}: {item}"
        )
    if start is not None:
        start = int(start) if _is_int(start) else _converted(axes, dim, start, size, stop=False)
    if stop is not None:
        stop = int(stop) if _is_int(stop) else _converted(axes, dim, stop, size, stop=True)
    return range(size)[slice(start, stop)]


def normalize_key(key: Any, shape: Sequence[int], axes: Sequence[AxisLike] | None = None) -> Selection:
    """Normalise the key of ``array[key]`` following numpy's basic-indexing rules.

    Parameters
    ----------
    key : Any
        One element or a tuple of elements: int (numpy integers too, not bool), slice with step
        None or 1, ``...``, or a coordinate value (str, float, datetime, numpy.datetime64)
        converted with ``axes[d].to_index``.  ``()`` and ``...`` select everything.
    shape : sequence of int
        The shape of the indexed array.
    axes : sequence of AxisLike, optional
        The dimensions, one per axis, used to convert coordinate values.  Without them a
        coordinate value is an invalid index.

    Returns
    -------
    Selection
        The bounds (one per dimension) and the result shape.

    Raises
    ------
    IndexError
        For an invalid element type, more than one ``...``, too many indices, an integer out of
        range, a step other than 1, a coordinate value that names no position, start and stop
        of different kinds, or a selection of zero length on some axis.

    """
    dims = tuple(int(s) for s in shape)
    ndim = len(dims)
    items = key if isinstance(key, tuple) else (key,)
    for item in items:
        _check_element(item)
    n_ellipsis = sum(1 for item in items if item is Ellipsis)
    if n_ellipsis > 1:
        raise IndexError("An index can only have a single ellipsis (`...`)")
    n_indexed = len(items) - n_ellipsis
    if n_indexed > ndim:
        raise IndexError(
            f"Too many indices for array: array is {ndim}-dimensional, but {n_indexed} were indexed"
        )
    if n_ellipsis:
        at = next(i for i, item in enumerate(items) if item is Ellipsis)
        items = items[:at] + (slice(None),) * (ndim - n_indexed) + items[at + 1 :]
    else:
        items = items + (slice(None),) * (ndim - n_indexed)

    bounds: list[Bound] = []
    out_shape: list[int] = []
    for dim, (item, size) in enumerate(zip(items, dims, strict=True)):
        if isinstance(item, slice):
            selected = _slice_bound(item, axes, dim, size)
            bounds.append(slice(selected.start, selected.start + len(selected)))
            out_shape.append(len(selected))
        elif _is_int(item):
            bounds.append(_int_bound(item, dim, size))
        else:
            bounds.append(_converted(axes, dim, item, size, stop=False))
    if any(length == 0 for length in out_shape):
        raise IndexError(
            "Invalid indexing: some of the axes result in zero length: "
            f"subset shape {tuple(out_shape)}, item {key!r}"
        )
    return Selection(tuple(bounds), tuple(out_shape))


def bounds_to_str(bounds: Sequence[Bound], shape: Sequence[int]) -> str:
    """Render bounds the way they would be typed: ``"[1:3, 0]"``.

    Parameters
    ----------
    bounds : sequence of int or slice
        Normalised bounds (see :class:`Selection`); slices with None parts are accepted.
    shape : sequence of int
        The shape of the indexed array: slices covering a whole axis render as ``":"``.

    Returns
    -------
    str
        The bounds in brackets, trailing whole axes omitted; ``"[:]"`` when everything is whole.

    """
    parts: list[str] = []
    for dim, bound in enumerate(bounds):
        if isinstance(bound, slice):
            size = shape[dim] if dim < len(shape) else None
            start = 0 if bound.start is None else bound.start
            stop = size if bound.stop is None else bound.stop
            if start == 0 and stop == size and bound.step in (None, 1):
                parts.append(":")
                continue
            text = f"{'' if bound.start is None else bound.start}:{'' if bound.stop is None else bound.stop}"
            if bound.step not in (None, 1):
                text += f":{bound.step}"
            parts.append(text)
        else:
            parts.append(str(bound))
    while parts and parts[-1] == ":":
        parts.pop()
    return f"[{', '.join(parts)}]" if parts else "[:]"
