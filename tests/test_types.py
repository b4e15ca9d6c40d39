"""deker/types/: ``Scale``, ``StorageSize``, ``IndexLabels`` and ``to_utc``, and deker 1.1.7's import
paths ``deker.types.public.classes`` and ``deker.types.private.shell``.

Covered: the public names, the 1.1.7 paths (the same objects, not copies), ``IndexLabels``'s
``repr``/``str`` as 1.1.7 printed them, the NamedTuples' fields, defaults and pickling, ``IndexLabels``
validation (empty, mixed types, bools, NaN, duplicates after int-to-float conversion) with
its messages, label lookups both ways (hypothesis against ``list.index``), and ``to_utc`` for
every accepted input kind (naive, aware, ISO strings with ``Z``/``z``/offsets, POSIX numbers)
and every refusal, with a hypothesis round trip through ``isoformat`` and ``timestamp``.
"""

from __future__ import annotations

import math
import pickle
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deker import types
from deker.errors import DekerValidationError
from deker.types import IndexLabels, Scale, StorageSize, to_utc

UTC = timezone.utc


def test_public_names() -> None:
    assert types.__all__ == ["IndexLabels", "Scale", "StorageSize", "to_utc"]
    import deker

    assert deker.Scale is Scale  # re-exported at the top level


def test_deker_117_import_path_of_the_value_types() -> None:
    """Code written for deker 1.1.7 imports the value types from ``deker.types.public.classes``."""
    import deker
    from deker.types.public import classes
    from deker.types.public.classes import IndexLabels as LegacyLabels
    from deker.types.public.classes import Scale as LegacyScale
    from deker.types.public.classes import StorageSize as LegacySize

    assert classes.__all__ == ["IndexLabels", "Scale", "StorageSize"]  # what 1.1.7 defined there
    assert LegacyScale is Scale is deker.Scale
    assert LegacySize is StorageSize and LegacyLabels is IndexLabels
    assert isinstance(LegacyScale(0.0, 1.0), Scale)


def test_deker_117_shell_module_re_exports_the_session_names() -> None:
    import deker
    from deker.log import set_logging_level
    from deker.types.private import shell

    assert shell.__all__ == (
        "Client",
        "DimensionSchema",
        "TimeDimensionSchema",
        "ArraySchema",
        "AttributeSchema",
        "VArraySchema",
        "Scale",
        "set_logging_level",
    )
    for name in shell.__all__[:-1]:
        assert getattr(shell, name) is getattr(deker, name)
    assert shell.set_logging_level is set_logging_level
    assert shell.shell_completions == tuple(f"{name}(" for name in shell.__all__)
    namespace: dict[str, Any] = {}
    exec("from deker.types.private.shell import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(shell.__all__)


def test_scale_fields_defaults_and_pickle() -> None:
    scale = Scale(0.5, -0.25)
    assert scale._fields == ("start_value", "step", "name")
    assert scale == (0.5, -0.25, None) and scale.name is None
    named = Scale(start_value=10.0, step=2.0, name="lat")
    assert named._asdict() == {"start_value": 10.0, "step": 2.0, "name": "lat"}
    assert pickle.loads(pickle.dumps(named)) == named
    assert type(pickle.loads(pickle.dumps(named))) is Scale
    with pytest.raises(AttributeError):
        named.step = 3.0  # type: ignore[misc]


def test_storage_size_fields() -> None:
    size = StorageSize(2048, "2.0 KiB")
    assert size._fields == ("bytes", "human")
    assert size.bytes == 2048 and size.human == "2.0 KiB"
    assert size == (2048, "2.0 KiB")
    assert pickle.loads(pickle.dumps(size)) == size


def test_index_labels_strings_are_kept() -> None:
    labels = IndexLabels(["850", "500", "250"])
    assert isinstance(labels, tuple) and type(labels) is IndexLabels
    assert labels == ("850", "500", "250")
    assert labels.first == "850" and labels.last == "250"
    assert labels.name_to_index("500") == 1
    assert labels.name_to_index(500) is None  # a number never matches a string label
    assert labels.name_to_index(500.0) is None
    assert labels.name_to_index("nope") is None


def test_index_labels_numbers_become_floats() -> None:
    labels = IndexLabels((850, 500.5, -3))
    assert labels == (850.0, 500.5, -3.0)
    assert all(type(x) is float for x in labels)
    assert labels.name_to_index(850) == 0  # an int is looked up as a float
    assert labels.name_to_index(-3.0) == 2
    assert labels.name_to_index("850") is None
    assert labels.name_to_index(True) is None  # bools are never labels
    assert labels.name_to_index(1.0) is None
    labels_from_generator = IndexLabels(x for x in (1, 2))
    assert labels_from_generator == (1.0, 2.0)


def test_index_to_name() -> None:
    labels = IndexLabels(["a", "b", "c"])
    assert [labels.index_to_name(i) for i in (0, 2, -1, -3)] == ["a", "c", "c", "a"]
    assert labels.index_to_name(3) is None
    assert labels.index_to_name(-4) is None
    assert labels.index_to_name("a") is None  # type: ignore[arg-type]
    assert labels.index_to_name(1.0) is None  # type: ignore[arg-type]


def test_index_labels_repr_names_the_class_like_deker_117() -> None:
    assert repr(IndexLabels(["a", "b"])) == "IndexLabels(('a', 'b'))"
    assert repr(IndexLabels([1, 2.5])) == "IndexLabels((1.0, 2.5))"
    assert str(IndexLabels(["a", "b"])) == "('a', 'b')"  # str stays the tuple's
    assert eval(repr(IndexLabels(["x"])), {"IndexLabels": IndexLabels}) == IndexLabels(["x"])


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ([], r"^Label cannot be empty, use None instead$"),
        ((), r"^Label cannot be empty"),
        ([1, "a"], r"^Labels shall be a list or tuple of unique values of the same type .*got \[1, 'a'\]$"),
        ([True, 2], r"same type \(strings, floats\); got \[True, 2\]$"),
        ([None], r"same type"),
        ([1.0, 2j], r"same type"),
        ([1.0, float("nan")], r"^Labels shall not contain NaN$"),
        ([1, 1.0], r"^Labels shall be unique; got \[1.0, 1.0\]$"),
        (["x", "y", "x"], r"^Labels shall be unique; got \['x', 'y', 'x'\]$"),
    ],
)
def test_index_labels_refusals(labels: Any, message: str) -> None:
    with pytest.raises(DekerValidationError, match=message):
        IndexLabels(labels)


def test_index_labels_pickle() -> None:
    for labels in (IndexLabels(["a", "b"]), IndexLabels([1, 2.5])):
        back = pickle.loads(pickle.dumps(labels))
        assert type(back) is IndexLabels and back == labels
        assert back.name_to_index(labels.last) == len(labels) - 1


@settings(max_examples=60, deadline=None)
@given(
    st.one_of(
        st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=20, unique=True),
        st.lists(st.text(max_size=5), min_size=1, max_size=20, unique=True),
    )
)
def test_label_lookups_agree_with_list_index(values: list[Any]) -> None:
    if len(set(values)) != len(values):  # e.g. 0.0 and -0.0
        with pytest.raises(DekerValidationError, match="unique"):
            IndexLabels(values)
        return
    labels = IndexLabels(values)
    for i, value in enumerate(values):
        assert labels.name_to_index(value) == values.index(value) == i
        assert labels.index_to_name(i) == value
        assert labels.index_to_name(i - len(values)) == value
    assert labels.first == values[0] and labels.last == values[-1]


# ------------------------------------------------------------------------------------- to_utc


class _NoOffset(tzinfo):
    """A tzinfo that knows no offset: such a datetime counts as naive."""

    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        return None

    def dst(self, dt: datetime | None) -> timedelta | None:
        return None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (datetime(2024, 3, 1, 12, 30), datetime(2024, 3, 1, 12, 30, tzinfo=UTC)),
        (datetime(2024, 3, 1, 12, 30, tzinfo=UTC), datetime(2024, 3, 1, 12, 30, tzinfo=UTC)),
        (
            datetime(2024, 3, 1, 12, 30, tzinfo=timezone(timedelta(hours=-5))),
            datetime(2024, 3, 1, 17, 30, tzinfo=UTC),
        ),
        (datetime(2024, 3, 1, 12, 30, tzinfo=_NoOffset()), datetime(2024, 3, 1, 12, 30, tzinfo=UTC)),
        ("2024-03-01T12:00:00Z", datetime(2024, 3, 1, 12, tzinfo=UTC)),
        ("2024-03-01T12:00:00z", datetime(2024, 3, 1, 12, tzinfo=UTC)),
        ("2024-03-01T12:00:00+02:00", datetime(2024, 3, 1, 10, tzinfo=UTC)),
        ("2024-03-01T12:00:00.250000", datetime(2024, 3, 1, 12, 0, 0, 250000, tzinfo=UTC)),
        ("  2024-03-01  ", datetime(2024, 3, 1, tzinfo=UTC)),
        (0, datetime(1970, 1, 1, tzinfo=UTC)),
        (1_709_294_400, datetime(2024, 3, 1, 12, tzinfo=UTC)),
        (-1.5, datetime(1969, 12, 31, 23, 59, 58, 500000, tzinfo=UTC)),
    ],
)
def test_to_utc_accepts(value: Any, expected: datetime) -> None:
    got = to_utc(value)
    assert got == expected
    assert got.tzinfo is UTC
    assert got.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", r"^Empty string is not a valid datetime$"),
        ("   ", r"^Empty string is not a valid datetime$"),
        ("2024-13-01", r"^'2024-13-01' is not an ISO-8601 datetime$"),
        ("yesterday", r"^'yesterday' is not an ISO-8601 datetime$"),
        (1e20, r"^1e\+20 is not a valid POSIX timestamp$"),
        (float("nan"), r"^nan is not a valid POSIX timestamp$"),
        (float("inf"), r"^inf is not a valid POSIX timestamp$"),
        (True, r"^True is not a datetime: use a datetime, an ISO-8601 string or a POSIX timestamp$"),
        (None, r"^None is not a datetime"),
        (b"2024-03-01", r"is not a datetime"),
        (timedelta(hours=1), r"is not a datetime"),
    ],
)
def test_to_utc_refuses(value: Any, message: str) -> None:
    with pytest.raises(DekerValidationError, match=message):
        to_utc(value)


def test_to_utc_keeps_the_cause_of_parse_errors() -> None:
    with pytest.raises(DekerValidationError) as info:
        to_utc("2024-02-30")
    assert isinstance(info.value.__cause__, ValueError)


@settings(max_examples=80, deadline=None)
@given(
    moment=st.datetimes(
        min_value=datetime(1900, 1, 2), max_value=datetime(2200, 12, 30), timezones=st.just(None)
    ),
    offset_minutes=st.integers(-14 * 60, 14 * 60),
)
def test_to_utc_round_trips(moment: datetime, offset_minutes: int) -> None:
    aware = moment.replace(tzinfo=timezone(timedelta(minutes=offset_minutes)))
    expected = (moment - timedelta(minutes=offset_minutes)).replace(tzinfo=UTC)
    assert to_utc(aware) == expected
    assert to_utc(aware.isoformat()) == expected
    assert to_utc(aware.isoformat(sep=" ")) == expected
    assert to_utc(expected.isoformat().replace("+00:00", "Z")) == expected
    assert to_utc(moment) == moment.replace(tzinfo=UTC)  # naive means UTC
    from_stamp = to_utc(aware.timestamp())
    assert from_stamp.tzinfo is UTC
    assert math.isclose((from_stamp - expected).total_seconds(), 0.0, abs_tol=1e-5)
