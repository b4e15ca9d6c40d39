"""Small public value types: :class:`Scale`, :class:`StorageSize`, :class:`IndexLabels`.

Also :func:`to_utc`, the one conversion of time values used everywhere (naive datetimes are
UTC, ISO-8601 strings and POSIX timestamps are accepted).

deker 1.1.7 kept these classes in ``deker.types.public.classes``; that path re-exports them
(the same objects), and ``deker.types.private.shell`` re-exports the names 1.1.7's shell used.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any, NamedTuple

from deker.errors import DekerValidationError

__all__ = ["IndexLabels", "Scale", "StorageSize", "to_utc"]


class Scale(NamedTuple):
    """A regular coordinate along a dimension: ``start_value + i * step``.

    Parameters
    ----------
    start_value : float
        The coordinate of index 0.
    step : float
        The distance between neighbouring indexes (may be negative, never zero).
    name : str, optional
        The name of the coordinate (e.g. ``"lat"``).
    """

    start_value: float
    step: float
    name: str | None = None


class StorageSize(NamedTuple):
    """The size of a storage or collection: ``bytes`` and a human-readable form."""

    bytes: int
    human: str


class IndexLabels(tuple):  # type: ignore[type-arg]
    """The labels of a dimension, in index order.

    Labels are all strings or all floats, and unique.  ``repr`` names the class
    (``IndexLabels(('a', 'b'))``), ``str`` is the plain tuple's, as in deker 1.1.7.
    """

    def __new__(cls, labels: Iterable[Any]) -> IndexLabels:
        """Validate ``labels`` and freeze them into a tuple."""
        items = tuple(labels)
        if not items:
            raise DekerValidationError("Label cannot be empty, use None instead")
        if all(isinstance(x, str) for x in items):
            pass
        elif all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in items):
            items = tuple(float(x) for x in items)
            if any(math.isnan(x) for x in items):
                raise DekerValidationError("Labels shall not contain NaN")
        else:
            raise DekerValidationError(
                "Labels shall be a list or tuple of unique values of the same type (strings, floats); "
                f"got {list(items)!r}"
            )
        if len(set(items)) != len(items):
            raise DekerValidationError(f"Labels shall be unique; got {list(items)!r}")
        self = super().__new__(cls, items)
        return self

    def __repr__(self) -> str:
        return f"IndexLabels({tuple(self)!r})"

    def __str__(self) -> str:
        return tuple.__repr__(self)

    @property
    def first(self) -> Any:
        """The first label."""
        return self[0]

    @property
    def last(self) -> Any:
        """The last label."""
        return self[-1]

    def name_to_index(self, name: Any) -> int | None:
        """Return the index of a label, or ``None`` when there is no such label."""
        if isinstance(name, bool):
            return None
        if isinstance(name, (int, float)) and not isinstance(self[0], str):
            name = float(name)
        try:
            return self.index(name)
        except ValueError:
            return None

    def index_to_name(self, idx: int) -> Any:
        """Return the label at an index (negative indexes count from the end), or ``None``."""
        try:
            return self[idx]
        except (IndexError, TypeError):
            return None


def to_utc(value: datetime | str | float | int) -> datetime:
    """Convert a time value to an aware UTC :class:`~datetime.datetime`.

    Parameters
    ----------
    value : datetime, str or float
        A datetime (naive means UTC; an offset is converted), an ISO-8601 string, or a POSIX
        timestamp in seconds.

    Returns
    -------
    datetime
        The same instant with ``tzinfo=timezone.utc``.

    Raises
    ------
    DekerValidationError
        If the value is not a time or cannot be parsed.
    """
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            raise DekerValidationError("Empty string is not a valid datetime")
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(text)
        except ValueError as exc:
            raise DekerValidationError(f"{value!r} is not an ISO-8601 datetime") from exc
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(float(value), tz=timezone.utc)
        except (OverflowError, OSError, ValueError) as exc:
            raise DekerValidationError(f"{value!r} is not a valid POSIX timestamp") from exc
    else:
        raise DekerValidationError(
            f"{value!r} is not a datetime: use a datetime, an ISO-8601 string or a POSIX timestamp"
        )
    if dt.tzinfo is None or dt.tzinfo.utcoffset(dt) is None:
        return dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)
