"""deker.indexing: user keys -> normalised bounds, checked against numpy with hypothesis.

Also, through ``array[key]`` of a real array, the cases where deker 1.1.7 behaved otherwise
(each kept on purpose, see docs/migration.md) or where its message is kept.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from deker import ArraySchema, Client, DimensionSchema, Scale
from deker.indexing import (
    INVALID_INDEX_MESSAGE,
    Selection,
    bounds_to_str,
    full_selection,
    normalize_key,
)

# ----------------------------------------------------------------------------- numpy oracle

shapes = st.lists(st.integers(1, 12), min_size=1, max_size=4).map(tuple)
ints = st.integers(-3, 3) | st.integers(-15, 15)
maybe_ints = st.none() | ints
slices = st.builds(slice, maybe_ints, maybe_ints, st.sampled_from([None, 1]))
elements = ints | slices | st.builds(np.int64, ints) | st.builds(np.int32, ints)


@st.composite
def keys(draw: Any, ndim: int = 4) -> Any:
    items = draw(st.lists(elements, max_size=ndim + 1))
    if draw(st.booleans()):
        items.insert(draw(st.integers(0, len(items))), Ellipsis)
    if len(items) == 1 and draw(st.booleans()):
        return items[0]
    return tuple(items)


def _check_bounds(sel: Selection, shape: tuple[int, ...]) -> None:
    assert len(sel.bounds) == len(shape)
    for bound, size in zip(sel.bounds, shape, strict=True):
        if isinstance(bound, slice):
            assert type(bound.start) is int and type(bound.stop) is int and bound.step is None
            assert 0 <= bound.start < bound.stop <= size
        else:
            assert type(bound) is int and 0 <= bound < size


@given(st.data())
def test_matches_numpy(data: st.DataObject) -> None:
    shape = data.draw(shapes, "shape")
    key = data.draw(keys(len(shape)), "key")
    a = np.arange(math.prod(shape)).reshape(shape)
    try:
        expected = a[key]
    except IndexError:
        with pytest.raises(IndexError):
            normalize_key(key, shape)
        return
    if np.size(expected) == 0:
        with pytest.raises(IndexError, match="zero length"):
            normalize_key(key, shape)
        return
    sel = normalize_key(key, shape)
    _check_bounds(sel, shape)
    got = a[sel.bounds]
    assert sel.shape == np.shape(expected)
    assert np.shape(got) == np.shape(expected)
    assert np.array_equal(got, expected)
    assert sel.size == np.size(expected)
    assert sel.is_scalar == (np.ndim(expected) == 0)


@given(shapes)
def test_everything(shape: tuple[int, ...]) -> None:
    for key in ((), Ellipsis, slice(None), (Ellipsis,), (slice(None),) * len(shape)):
        sel = normalize_key(key, shape)
        assert sel == full_selection(shape)
        assert sel.is_full(shape)
        assert sel.shape == shape


# ----------------------------------------------------------------------------- specific rules


@pytest.mark.parametrize(
    ("key", "bounds", "shape"),
    [
        (0, (0, slice(0, 4), slice(0, 5)), (4, 5)),
        (-1, (2, slice(0, 4), slice(0, 5)), (4, 5)),
        ((..., 0), (slice(0, 3), slice(0, 4), 0), (3, 4)),  # numpy: ... fills the missing dims
        ((0, ..., 0), (0, slice(0, 4), 0), (4,)),
        ((slice(1, 100),), (slice(1, 3), slice(0, 4), slice(0, 5)), (2, 4, 5)),  # clipped like numpy
        (slice(-10, None), (slice(0, 3), slice(0, 4), slice(0, 5)), (3, 4, 5)),
        ((1, 2, 3), (1, 2, 3), ()),
        ((np.int64(-1), np.uint8(1)), (2, 1, slice(0, 5)), (5,)),
    ],
)
def test_examples(key: Any, bounds: tuple[Any, ...], shape: tuple[int, ...]) -> None:
    sel = normalize_key(key, (3, 4, 5))
    assert sel.bounds == bounds
    assert sel.shape == shape


@pytest.mark.parametrize(
    ("key", "match"),
    [
        (3, "index 3 is out of bounds for axis 0 with size 3"),
        (-4, "index -4 is out of bounds for axis 0 with size 3"),
        ((0, 4), "out of bounds for axis 1"),
        ((0, 0, 0), "Too many indices for array: array is 2-dimensional, but 3 were indexed"),
        ((..., 0, ...), "single ellipsis"),
        (slice(0, 3, 2), "step should be equal to 1"),
        (slice(None, None, -1), "step should be equal to 1"),
        (slice(2, 1), "zero length"),
        (slice(5, None), "zero length"),
        ((slice(None), slice(-9, -8)), "zero length"),
    ],
)
def test_errors(key: Any, match: str) -> None:
    with pytest.raises(IndexError, match=match):
        normalize_key(key, (3, 4))


@pytest.mark.parametrize(
    "item",
    [True, False, np.bool_(True), None, [0], [0, 1], np.array([0]), np.array(1), {}, 1j, object(), b"a", {1}],
)
def test_bad_types(item: Any) -> None:
    for key in (item, (0, item), (item, ...)):
        with pytest.raises(IndexError) as info:
            normalize_key(key, (3, 4))
        assert INVALID_INDEX_MESSAGE in str(info.value)


@pytest.mark.parametrize("bad", [slice(0, True), slice([0], None), slice(None, None, 1.0), slice(0, 2, True)])
def test_bad_slices(bad: slice) -> None:
    with pytest.raises(IndexError):
        normalize_key(bad, (3, 4))


@pytest.mark.parametrize(
    "value", [1.0, "a", datetime(2023, 1, 1), np.float64(1.0), np.datetime64("2023-01-01")]
)
def test_coordinates_need_axes(value: Any) -> None:
    with pytest.raises(IndexError, match="Only integers"):
        normalize_key(value, (3, 4))
    with pytest.raises(IndexError):
        normalize_key(slice(value, None), (3, 4))


# ----------------------------------------------------------------------------- coordinate values

START = datetime(2023, 1, 1, tzinfo=timezone.utc)


class FakeAxis:
    """An AxisLike with labels "l0".. , scale 0.5 * i, and hourly times from START."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self.step = timedelta(hours=1)

    def to_index(self, value: Any, *, stop: bool = False) -> int:
        if isinstance(value, str):
            if not value.startswith("l"):
                raise IndexError(f"{self.name} has no label {value!r}")
            pos = int(value[1:])
        elif isinstance(value, float):
            pos = round(value / 0.5)
        elif isinstance(value, datetime):
            pos = (value - START) // self.step
        else:
            raise IndexError(f"bad {value!r}")
        if not 0 <= pos <= (self.size if stop else self.size - 1):
            raise IndexError(f"{self.name}: {value!r} is out of range")
        return pos


AXES = [FakeAxis("x", 4), FakeAxis("y", 5), FakeAxis("z", 6)]
SHAPE = (4, 5, 6)


@pytest.mark.parametrize(
    ("key", "bounds"),
    [
        ("l1", (1, slice(0, 5), slice(0, 6))),
        ((..., "l2"), (slice(0, 4), slice(0, 5), 2)),  # after ... a value goes to the right dimension
        ((0, ..., 1.5), (0, slice(0, 5), 3)),
        ((slice("l1", "l3"), np.float64(1.0)), (slice(1, 3), 2, slice(0, 6))),
        ((slice(None), slice(None), slice(0.5, 3.0)), (slice(0, 4), slice(0, 5), slice(1, 6))),  # stop at end
        (slice(START + timedelta(hours=1), None), (slice(1, 4), slice(0, 5), slice(0, 6))),
        (slice(START, START + timedelta(hours=4)), (slice(0, 4), slice(0, 5), slice(0, 6))),
        (slice(START, None, timedelta(hours=1)), (slice(0, 4), slice(0, 5), slice(0, 6))),
        ((slice(1, 3), -1, "l0"), (slice(1, 3), 4, 0)),
    ],
)
def test_coordinates(key: Any, bounds: tuple[Any, ...]) -> None:
    sel = normalize_key(key, SHAPE, AXES)
    assert sel.bounds == bounds
    assert sel.shape == tuple(b.stop - b.start for b in bounds if isinstance(b, slice))


@pytest.mark.parametrize(
    ("key", "match"),
    [
        (slice("l1", 3), "same type"),
        (slice(0.5, "l3"), "same type"),
        (slice("l3", "l1"), "zero length"),
        ("nope", "has no label"),
        ("l4", "out of range"),
        (slice("l0", "l5"), "out of range"),
        (slice(START, None, timedelta(hours=2)), "step should be equal to 1"),
        ((0, 0, 0, "l0"), "Too many indices"),
    ],
)
def test_coordinate_errors(key: Any, match: str) -> None:
    with pytest.raises(IndexError, match=match):
        normalize_key(key, SHAPE, AXES)


def test_axis_returning_out_of_range_is_caught() -> None:
    class Liar(FakeAxis):
        def to_index(self, value: Any, *, stop: bool = False) -> int:
            return 99

    with pytest.raises(IndexError, match="out of range"):
        normalize_key("l0", (4,), [Liar("x", 4)])


# ----------------------------------------------------------------------------- Selection and strings


def test_selection_properties() -> None:
    sel = normalize_key((1, 2), (3, 4))
    assert sel.is_scalar and sel.shape == () and sel.size == 1 and not sel.is_full((3, 4))
    one = normalize_key(0, (1, 1))
    assert one.is_full((1, 1)) and not one.is_full((1, 1, 1))
    part = normalize_key(slice(0, 2), (3, 4))
    assert not part.is_scalar and part.size == 8 and not part.is_full((3, 4))
    with pytest.raises(ValueError):
        Selection((slice(0, 2),), (3,))
    with pytest.raises(ValueError):
        Selection((slice(0, 2, 1),), (2,))
    with pytest.raises(ValueError):
        Selection((True,), ())
    assert full_selection((2, 3)) == Selection((slice(0, 2), slice(0, 3)), (2, 3))


@pytest.mark.parametrize(
    ("bounds", "shape", "text"),
    [
        ((slice(1, 3), 0), (5, 4), "[1:3, 0]"),
        ((slice(0, 5), slice(0, 4)), (5, 4), "[:]"),
        ((slice(0, 5), 2, slice(0, 3)), (5, 4, 3), "[:, 2]"),
        ((0, slice(0, 4)), (5, 4), "[0]"),
        ((slice(None), slice(1, None)), (5, 4), "[:, 1:]"),
        ((), (5,), "[:]"),
        ((slice(0, 5), slice(0, 3)), (5, 4), "[:, 0:3]"),
    ],
)
def test_bounds_to_str(bounds: tuple[Any, ...], shape: tuple[int, ...], text: str) -> None:
    assert bounds_to_str(bounds, shape) == text


# ------------------------------------------------------------- through the public API
def test_array_keys_compared_with_deker_117(tmp_path: Path) -> None:
    with Client(f"file://{tmp_path}") as client:
        dims = [
            DimensionSchema("layers", 3),
            DimensionSchema("y", 4, scale=Scale(0.0, 0.5)),
            DimensionSchema("z", 5, labels=["a", "b", "c", "d", "e"]),
        ]
        arr = client.create_collection("c", ArraySchema(dtype=float, dimensions=dims)).create()
        arr[:].update(np.arange(60.0).reshape(3, 4, 5))
        expected = np.arange(60.0).reshape(3, 4, 5)
        # deviation (migration.md row 5): an ellipsis may stand for no axis, as in numpy;
        # deker 1.1.7 raised IndexError("tuple index out of range")
        for key in [(0, slice(None), slice(None), ...), (..., 0, slice(None), slice(None))]:
            np.testing.assert_array_equal(arr[key].read(), expected[key])
        # deviation (migration.md row 8): within 10**-6 of a step of a grid point is that point
        # (float32 coordinates); deker 1.1.7 raised IndexError for 0.5000001
        assert arr[:, 0.5000001, :].bounds == arr[:, 0.5, :].bounds == (slice(0, 3), 1, slice(0, 5))
        assert arr[:, np.float32(1.1) - np.float32(0.1), :].bounds == arr[:, 1.0, :].bounds
        with pytest.raises(IndexError, match=r"y has no index for 0\.50001"):
            arr[:, 0.50001, :]
        # as deker 1.1.7: a float on a dimension without a scale is an IndexError naming it,
        # alone, in a slice or among other coordinates
        for key in [1.0, (1.0, 0.5, "a"), slice(0.0, 1.0), (0.5, 0.5, "a")]:
            with pytest.raises(
                IndexError, match=r"^Dimension layers wrong indexing: .*: layers has no scale"
            ):
                arr[key]
        with pytest.raises(IndexError, match="z has no scale"):
            arr[0, 0, 1.0]
