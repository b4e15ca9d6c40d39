"""Tests of deker.dimensions: validation, value -> index, describe, build_dimensions."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from deker.dimensions import Dimension, TimeDimension, build_dimensions
from deker.errors import DekerValidationError
from deker.schemas import ArraySchema, AttributeSchema, DimensionSchema, TimeDimensionSchema
from deker.types import IndexLabels, Scale

UTC = timezone.utc
T0 = datetime(2023, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


# ----------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": 1, "size": 3}, "Name shall be str"),
        ({"name": None, "size": 3}, "Name shall be str"),
        ({"name": "", "size": 3}, "Name cannot be empty"),
        ({"name": "   ", "size": 3}, "Name cannot be empty"),
        ({"name": "x", "size": 0}, "Size shall be a positive int"),
        ({"name": "x", "size": -2}, "Size shall be a positive int"),
        ({"name": "x", "size": True}, "Size shall be a positive int"),
        ({"name": "x", "size": 2.0}, "Size shall be a positive int"),
        ({"name": "x", "size": "3"}, "Size shall be a positive int"),
        ({"name": "x", "size": 2, "labels": ["a", "b"], "scale": Scale(0.0, 1.0)}, "not both"),
        ({"name": "x", "size": 2, "labels": []}, "Label cannot be empty"),
        ({"name": "x", "size": 2, "labels": ()}, "Label cannot be empty"),
        ({"name": "x", "size": 2, "labels": ["a"]}, "quantity do not match"),
        ({"name": "x", "size": 2, "labels": ["a", "a"]}, "unique"),
        ({"name": "x", "size": 2, "labels": ["a", 1.0]}, "same type"),
        ({"name": "x", "size": 2, "labels": {"a": 0, "b": 1}}, "list or tuple"),
        ({"name": "x", "size": 2, "labels": "ab"}, "list or tuple"),
        ({"name": "x", "size": 2, "labels": [float("nan"), 1.0]}, "NaN"),
        ({"name": "x", "size": 2, "scale": {"start_value": 0.0, "step": 1.0, "bad": 1}}, "unknown keys"),
        ({"name": "x", "size": 2, "scale": Scale(0, 1.0)}, "'start_value' value shall be float"),
        ({"name": "x", "size": 2, "scale": Scale(0.0, 1)}, "'step' value shall be float"),
        ({"name": "x", "size": 2, "scale": Scale(0.0, True)}, "'step' value shall be float"),
        ({"name": "x", "size": 2, "scale": Scale(0.0, 0.0)}, "shall not be zero"),
        ({"name": "x", "size": 2, "scale": Scale(float("nan"), 1.0)}, "finite"),
        ({"name": "x", "size": 2, "scale": Scale(0.0, float("inf"))}, "finite"),
        ({"name": "x", "size": 2, "scale": Scale(0.0, 1.0, " ")}, "name"),
        ({"name": "x", "size": 2, "scale": (0.0, 1.0)}, "Scale or a dict"),
    ],
)
def test_dimension_validation(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(DekerValidationError, match=match):
        Dimension(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "", "size": 3, "start_value": T0, "step": HOUR}, "Name cannot be empty"),
        ({"name": "t", "size": 0, "start_value": T0, "step": HOUR}, "Size shall be a positive int"),
        ({"name": "t", "size": 3, "start_value": "$dt", "step": HOUR}, "attribute reference"),
        ({"name": "t", "size": 3, "start_value": 12.0, "step": HOUR}, "datetime or an ISO-8601"),
        ({"name": "t", "size": 3, "start_value": "yesterday", "step": HOUR}, "ISO-8601"),
        ({"name": "t", "size": 3, "start_value": "", "step": HOUR}, "Empty"),
        ({"name": "t", "size": 3, "start_value": T0, "step": timedelta(0)}, "non-zero"),
        ({"name": "t", "size": 3, "start_value": T0, "step": 3600}, "timedelta"),
    ],
)
def test_time_dimension_validation(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(DekerValidationError, match=match):
        TimeDimension(**kwargs)


def test_dimension_properties() -> None:
    plain = Dimension("x", 3)
    assert (plain.name, plain.size, plain.step, plain.labels, plain.scale) == ("x", 3, 1, None, None)
    assert len(plain) == 3
    assert str(plain) == "3"
    assert repr(plain) == "Dimension(name='x', size=3, step=1)"
    assert plain.as_dict == {"name": "x", "size": 3, "step": 1}

    labelled = Dimension("w", 3, labels=["a", "b", "c"])
    assert isinstance(labelled.labels, IndexLabels)
    assert labelled.labels == ("a", "b", "c")
    assert labelled.as_dict == {"name": "w", "size": 3, "step": 1, "labels": ["a", "b", "c"]}
    assert repr(labelled) == "Dimension(name='w', size=3, step=1, labels=('a', 'b', 'c'))"

    scaled = Dimension("y", 4, scale={"start_value": 0.1, "step": 0.1, "name": "lat"})
    assert scaled.scale == Scale(0.1, 0.1, "lat")
    assert scaled.as_dict == {
        "name": "y",
        "size": 4,
        "step": 1,
        "scale": {"start_value": 0.1, "step": 0.1, "name": "lat"},
    }
    assert (
        repr(scaled)
        == "Dimension(name='y', size=4, step=1, scale=Scale(start_value=0.1, step=0.1, name='lat'))"
    )
    assert Dimension("y", 4, scale=Scale(0.1, 0.1, "lat")) == scaled
    assert Dimension("y", 4, scale=Scale(0.1, 0.2, "lat")) != scaled


def test_time_dimension_properties() -> None:
    naive = TimeDimension("t", 5, datetime(2023, 1, 1), HOUR)
    assert naive.start_value == T0 and naive.start_value.tzinfo is not None
    offset = TimeDimension("t", 5, "2023-01-01T03:00:00+03:00", HOUR)
    assert offset.start_value == T0
    assert offset == naive
    assert (offset.name, offset.size, offset.step, len(offset), str(offset)) == ("t", 5, HOUR, 5, "5")
    assert offset.as_dict == {
        "name": "t",
        "size": 5,
        "step": HOUR,
        "start_value": "2023-01-01T00:00:00+00:00",
    }
    assert "TimeDimension(name='t', size=5" in repr(offset)


# ------------------------------------------------------------------------------------ to_index
def test_labels_to_index() -> None:
    dim = Dimension("w", 3, labels=["a", "b", "c"])
    assert [dim.to_index(v) for v in "abc"] == [0, 1, 2]
    with pytest.raises(IndexError, match="has no label 'z'"):
        dim.to_index("z")
    with pytest.raises(IndexError, match="has no scale"):
        dim.to_index(1.0)
    with pytest.raises(IndexError, match="out of range"):
        dim.to_index(3, stop=False)
    # the exclusive end of the axis is never a label
    with pytest.raises(IndexError, match="has no label"):
        dim.to_index("d", stop=True)


def test_float_labels_addressable() -> None:
    dim = Dimension("f", 3, labels=[0.5, 1.5, 2.5])
    assert dim.to_index(1.5) == 1
    assert dim.to_index(np.float64(2.5)) == 2
    with pytest.raises(IndexError, match="has no label"):
        dim.to_index(2.0)
    with pytest.raises(IndexError, match="float labels"):
        dim.to_index("1.5")


def test_plain_dimension_errors() -> None:
    dim = Dimension("x", 4)
    with pytest.raises(IndexError, match="x has no labels"):
        dim.to_index("a")
    with pytest.raises(IndexError, match="x has no scale"):
        dim.to_index(1.0)
    with pytest.raises(IndexError, match="time dimensions only"):
        dim.to_index(T0)
    with pytest.raises(IndexError, match="invalid index type bool"):
        dim.to_index(True)
    with pytest.raises(IndexError, match="invalid index type"):
        dim.to_index([1])
    assert dim.to_index(3) == 3
    assert dim.to_index(np.int64(2)) == 2
    assert dim.to_index(4, stop=True) == 4
    with pytest.raises(IndexError, match="out of range"):
        dim.to_index(4)
    with pytest.raises(IndexError, match="out of range"):
        dim.to_index(-1)


def test_scale_to_index_non_dyadic() -> None:
    dim = Dimension("y", 5, scale=Scale(0.1, 0.1))
    # 0.3 was rejected by deker 1.1.7 (binary floating point); it is position 2 here
    assert dim.to_index(0.3) == 2
    assert dim.to_index(0.1 + 0.1 + 0.1) == 2
    assert dim.to_index(np.float32(0.3)) == 2
    assert dim.to_index(0.5) == 4
    assert dim.to_index(0.6, stop=True) == 5
    with pytest.raises(IndexError, match="out of range"):
        dim.to_index(0.6)
    with pytest.raises(IndexError, match="out of range"):
        dim.to_index(0.0)
    with pytest.raises(IndexError, match="out of range"):
        dim.to_index(0.7, stop=True)
    with pytest.raises(IndexError, match="has no index"):
        dim.to_index(0.25)
    with pytest.raises(IndexError, match="has no index"):
        dim.to_index(0.3 + 1e-6)
    with pytest.raises(IndexError, match="has no index"):
        dim.to_index(float("nan"))
    with pytest.raises(IndexError, match="has no index"):
        dim.to_index(float("inf"))


def test_scale_negative_step() -> None:
    dim = Dimension("lat", 181, scale=Scale(90.0, -1.0))
    assert dim.to_index(90.0) == 0
    assert dim.to_index(-90.0) == 180
    assert dim.to_index(-91.0, stop=True) == 181
    assert dim.describe(slice(0, 3)) == [90.0, 89.0, 88.0]


def test_time_to_index() -> None:
    dim = TimeDimension("t", 24, T0, HOUR)
    assert dim.to_index(datetime(2023, 1, 1, 5, tzinfo=UTC)) == 5
    assert dim.to_index(datetime(2023, 1, 1, 5)) == 5  # naive = UTC
    assert dim.to_index("2023-01-01T02:00:00") == 2
    assert dim.to_index("2023-01-01T05:00:00+03:00") == 2
    assert dim.to_index("2023-01-01T02:00:00Z") == 2
    assert dim.to_index(datetime(2023, 1, 1, 1, tzinfo=UTC).timestamp()) == 1
    assert dim.to_index(np.float64(datetime(2023, 1, 1, 1, tzinfo=UTC).timestamp())) == 1
    assert dim.to_index(np.datetime64("2023-01-01T07:00")) == 7
    assert dim.to_index(3) == 3  # integers are positions, never timestamps
    assert dim.to_index(datetime(2023, 1, 2, tzinfo=UTC), stop=True) == 24
    with pytest.raises(IndexError, match="out of range"):
        dim.to_index(datetime(2023, 1, 2, tzinfo=UTC))
    with pytest.raises(IndexError, match="out of range"):
        dim.to_index(datetime(2022, 12, 31, 23, tzinfo=UTC))
    with pytest.raises(IndexError, match="has no index"):
        dim.to_index(datetime(2023, 1, 1, 0, 30, tzinfo=UTC))
    with pytest.raises(IndexError, match="wrong value"):
        dim.to_index("not a date")
    with pytest.raises(IndexError, match="invalid index type"):
        dim.to_index(HOUR)
    with pytest.raises(IndexError, match="invalid index type bool"):
        dim.to_index(False)


# ------------------------------------------------------------------------------------ describe
def test_describe_kinds() -> None:
    time = TimeDimension("t", 3, T0, HOUR)
    assert time.describe(1) == [T0 + HOUR]
    assert time.describe(slice(0, 3)) == [T0, T0 + HOUR, T0 + 2 * HOUR]
    assert time.describe(-1) == [T0 + 2 * HOUR]
    labels = Dimension("w", 3, labels=["a", "b", "c"])
    assert labels.describe(-1) == ["c"]
    assert labels.describe(slice(1, None)) == ["b", "c"]
    scale = Dimension("y", 4, scale=Scale(0.1, 0.1))
    assert scale.describe(slice(1, 3)) == [0.2, 0.3]
    assert scale.describe(slice(None, None)) == [0.1, 0.2, 0.3, 0.4]
    assert scale.describe(2) == [0.3]
    assert all(type(v) is float for v in scale.describe(slice(0, 4)))
    odd = Dimension("f", 3, scale=Scale(0.05, 0.1))
    assert odd.describe(slice(0, 3)) == [0.05, 0.15, 0.25]
    plain = Dimension("i", 5)
    assert plain.describe(0) == [0]
    assert plain.describe(slice(2, 4)) == [2, 3]
    assert plain.describe(slice(3, 100)) == [3, 4]  # clipped
    with pytest.raises(IndexError):
        plain.describe(5)


# ------------------------------------------------------------------------------ build_dimensions
def test_build_dimensions_resolves_references() -> None:
    schema = ArraySchema(
        dtype=float,
        dimensions=[
            TimeDimensionSchema("t", 4, "$dt", HOUR),
            DimensionSchema("w", 2, labels=["a", "b"]),
            DimensionSchema("y", 3, scale=Scale(0.0, 0.5)),
            TimeDimensionSchema("fixed", 2, T0, timedelta(days=1)),
        ],
        attributes=[AttributeSchema("dt", datetime, False)],
    )
    start = datetime(2024, 5, 1, tzinfo=UTC)
    dims = build_dimensions(schema, {"dt": start})
    assert [type(d) for d in dims] == [TimeDimension, Dimension, Dimension, TimeDimension]
    t, w, y, fixed = dims
    assert isinstance(t, TimeDimension) and t.start_value == start
    assert w.labels == ("a", "b")
    assert y.scale == Scale(0.0, 0.5)
    assert isinstance(fixed, TimeDimension) and fixed.start_value == T0
    with pytest.raises(DekerValidationError, match="'dt'"):
        build_dimensions(schema, {"dt": None})
    with pytest.raises(DekerValidationError, match="'dt'"):
        build_dimensions(schema, {})
    with pytest.raises(DekerValidationError, match="shall be a datetime"):
        build_dimensions(schema, {"dt": "2024-05-01"})


# ---------------------------------------------------------------------------------- hypothesis
STEPS = [0.1, 0.01, 0.001, 0.2, 0.3, 0.05, 0.25, 0.5, 0.7, 1.0, 2.5, 10.0, 0.125]


@st.composite
def scale_grids(draw: st.DrawFn) -> tuple[float, float, int]:
    start = draw(st.integers(-100_000, 100_000)) / 1000
    step = draw(st.sampled_from(STEPS)) * draw(st.sampled_from([1, -1]))
    size = draw(st.integers(1, 1000))
    return start, step, size


@given(scale_grids())
def test_scale_coordinates_map_back(grid: tuple[float, float, int]) -> None:
    start, step, size = grid
    dim = Dimension("y", size, scale=Scale(start, step))
    arange = start + np.arange(size) * step
    linspace = np.linspace(start, start + (size - 1) * step, size)
    for i in range(size):
        for value in (start + i * step, round(start + i * step, 10), arange[i], linspace[i]):
            assert dim.to_index(value) == i, (value, i)
    assert dim.to_index(start + size * step, stop=True) == size
    assert dim.to_index(round(start + size * step, 10), stop=True) == size
    with pytest.raises(IndexError, match="out of range"):
        dim.to_index(start + size * step)
    with pytest.raises(IndexError, match="out of range"):
        dim.to_index(start - step)


@given(scale_grids(), st.data())
def test_scale_off_grid_rejected(grid: tuple[float, float, int], data: st.DataObject) -> None:
    start, step, size = grid
    dim = Dimension("y", size, scale=Scale(start, step))
    i = data.draw(st.integers(0, size - 1))
    frac = data.draw(st.floats(0.001, 0.999))
    with pytest.raises(IndexError, match="has no index"):
        dim.to_index(start + (i + frac) * step)


@given(scale_grids())
def test_scale_describe_is_exact_decimal_grid(grid: tuple[float, float, int]) -> None:
    start, step, size = grid
    dim = Dimension("y", size, scale=Scale(start, step))
    described = dim.describe(slice(0, size))
    expected = [float(Decimal(repr(start)) + i * Decimal(repr(step))) for i in range(size)]
    assert described == expected
    assert [dim.to_index(v) for v in described] == list(range(size))
    assert dim.describe(slice(None, None)) == described
    k = size // 2
    assert dim.describe(k) == [described[k]]


TIME_STEPS = [
    timedelta(microseconds=1),
    timedelta(milliseconds=250),
    timedelta(seconds=1),
    timedelta(minutes=15),
    timedelta(hours=1),
    timedelta(hours=3),
    timedelta(days=1),
    timedelta(days=7),
    timedelta(hours=-1),
]


@given(
    st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2090, 1, 1)),
    st.sampled_from(TIME_STEPS),
    st.integers(1, 300),
    st.sampled_from([0, 5, -8, 14]),
)
def test_time_coordinates_map_back(naive: datetime, step: timedelta, size: int, offset_hours: int) -> None:
    start = naive.replace(tzinfo=UTC)
    dim = TimeDimension("t", size, start, step)
    zone = timezone(timedelta(hours=offset_hours))
    whole_ms = step % timedelta(milliseconds=1) == timedelta(0) and start.microsecond % 1000 == 0
    for i in range(size):
        moment = start + i * step
        assert dim.to_index(moment) == i
        assert dim.to_index(moment.replace(tzinfo=None)) == i
        assert dim.to_index(moment.astimezone(zone)) == i
        assert dim.to_index(moment.isoformat()) == i
        assert dim.to_index(moment.replace(tzinfo=None).isoformat()) == i
        assert dim.to_index(moment.astimezone(zone).isoformat()) == i
        if whole_ms:
            assert dim.to_index(moment.timestamp()) == i
    end = start + size * step
    assert dim.to_index(end, stop=True) == size
    assert dim.to_index(end.isoformat(), stop=True) == size
    with pytest.raises(IndexError, match="out of range"):
        dim.to_index(end)
    assert dim.describe(slice(0, size)) == [start + i * step for i in range(size)]


@given(st.integers(1, 40), st.data())
def test_labels_round_trip(size: int, data: st.DataObject) -> None:
    labels = data.draw(st.lists(st.text(min_size=1, max_size=8), min_size=size, max_size=size, unique=True))
    dim = Dimension("w", size, labels=labels)
    assert [dim.to_index(label) for label in labels] == list(range(size))
    assert dim.describe(slice(0, size)) == labels
    floats = data.draw(
        st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=size, max_size=size, unique=True)
    )
    assume(len({*floats}) == size)  # 0.0 and -0.0 are equal
    fdim = Dimension("f", size, labels=floats)
    assert [fdim.to_index(v) for v in floats] == list(range(size))


@given(st.integers(1, 1000), st.text(max_size=5), st.randoms(use_true_random=False))
def test_many_labels_round_trip(size: int, prefix: str, rnd: Any) -> None:
    order = list(range(size))
    rnd.shuffle(order)
    labels = [f"{prefix}{k}" for k in order]
    dim = Dimension("w", size, labels=labels)
    assert [dim.to_index(label) for label in labels] == list(range(size))
    assert dim.describe(slice(0, size)) == labels


def test_a_datetime64_between_two_microseconds_is_off_the_grid() -> None:
    """Truncating it to microseconds (a datetime's precision) would select a grid point."""
    dim = TimeDimension("t", 24, T0, HOUR)
    assert dim.to_index(np.datetime64("2023-01-01T07:00:00.000000000")) == 7
    with pytest.raises(IndexError, match="has no index"):
        dim.to_index(np.datetime64("2023-01-01T07:00:00.000000999"))
    with pytest.raises(IndexError, match="wrong value"):
        dim.to_index(np.datetime64("NaT"))
