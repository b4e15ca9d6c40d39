"""Tests of deker.schemas: every validation rule of SPEC §1.7 (and the §8.9-8.10 fixes)."""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest

from deker.errors import DekerValidationError
from deker.schemas import (
    ArraySchema,
    AttributeSchema,
    DimensionSchema,
    TimeDimensionSchema,
    VArraySchema,
    tile_schema,
)
from deker.types import Scale

UTC = timezone.utc
HOUR = timedelta(hours=1)


def dims2() -> list[DimensionSchema]:
    return [DimensionSchema("y", 4), DimensionSchema("x", 6)]


# ------------------------------------------------------------------------------ AttributeSchema
def test_attribute_schema_valid_and_as_dict() -> None:
    attr = AttributeSchema("dt", datetime, True)
    assert attr.as_dict == {"name": "dt", "primary": True, "dtype": "datetime"}
    assert list(attr.as_dict) == ["name", "primary", "dtype"]
    assert AttributeSchema(name="n", dtype=np.complex128, primary=False).as_dict["dtype"] == "numpy.cfloat"
    assert AttributeSchema("s", str, False).as_dict["dtype"] == "string"


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("", int, True), "shall be a non-empty string"),
        (("   ", int, True), "shall be a non-empty string"),
        ((None, int, True), "shall be a non-empty string"),
        ((True, int, True), "shall be a non-empty string"),
        ((1, int, True), "shall be a non-empty string"),
        (("a", list, True), "Invalid dtype value"),
        (("a", dict, True), "Invalid dtype value"),
        (("a", bool, True), "Invalid dtype value"),
        (("a", "int", True), "Invalid dtype value"),
        (("a", int, 1), "Invalid primary value"),
        (("a", int, None), "Invalid primary value"),
        (("a", int, np.bool_(True)), "Invalid primary value"),
    ],
)
def test_attribute_schema_invalid(args: tuple[Any, ...], match: str) -> None:
    with pytest.raises(DekerValidationError, match=match):
        AttributeSchema(*args)


def test_schemas_are_frozen() -> None:
    """deviation (docs/migration.md): deker 1.1.7's schemas took any attribute assignment
    unchecked; here every schema is immutable (``FrozenInstanceError``, an ``AttributeError``)."""
    attr = AttributeSchema("a", int, True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        attr.name = "b"  # type: ignore[misc]
    schema = ArraySchema(dtype=float, dimensions=dims2())
    with pytest.raises(dataclasses.FrozenInstanceError):
        schema.dtype = np.int8  # type: ignore[misc]
    assert issubclass(dataclasses.FrozenInstanceError, AttributeError)
    cases: list[tuple[Any, str, Any]] = [
        (DimensionSchema("x", 3), "size", 5),
        (TimeDimensionSchema("t", 3, datetime(2023, 1, 1, tzinfo=UTC), HOUR), "step", 2 * HOUR),
        (schema, "fill_value", 5.0),
        (VArraySchema(dtype=float, dimensions=[DimensionSchema("x", 4)], vgrid=(2,)), "vgrid", (4,)),
        (attr, "primary", False),
    ]
    for obj, name, value in cases:
        before = getattr(obj, name)
        with pytest.raises(AttributeError):
            setattr(obj, name, value)
        assert getattr(obj, name) is before


# ------------------------------------------------------------------------------ DimensionSchema
def test_dimension_schema_as_dict() -> None:
    d = DimensionSchema("x", 3)
    assert d.as_dict == {"name": "x", "size": 3, "labels": None, "scale": None, "type": "generic"}
    assert list(d.as_dict) == ["name", "size", "labels", "scale", "type"]
    labelled = DimensionSchema("w", 2, labels=["a", "b"])
    assert labelled.labels == ("a", "b") and type(labelled.labels) is tuple
    assert labelled.as_dict["labels"] == ["a", "b"]
    scaled = DimensionSchema("lat", 3, scale=Scale(90, -1, "lat"))
    assert scaled.scale == Scale(90.0, -1.0, "lat")
    assert isinstance(scaled.scale.start_value, float) and isinstance(scaled.scale.step, float)  # type: ignore[union-attr]
    assert scaled.as_dict["scale"] == {"start_value": 90.0, "step": -1.0, "name": "lat"}


def test_dimension_numeric_labels_become_floats() -> None:
    d = DimensionSchema("x", 3, labels=(1, 2.5, 3))
    assert d.labels == (1.0, 2.5, 3.0) and all(type(v) is float for v in d.labels)


def test_dimension_scale_from_dict_and_ints() -> None:
    d = DimensionSchema("x", 3, scale={"start_value": 1, "step": 2})
    assert d.scale == Scale(1.0, 2.0, None)
    assert DimensionSchema("x", 3, scale={"start_value": 0.5, "step": 0.25, "name": "lon"}).scale == Scale(
        0.5, 0.25, "lon"
    )


def test_dimension_accepts_numpy_int_size() -> None:
    d = DimensionSchema("x", np.int64(5))
    assert d.size == 5 and type(d.size) is int


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "", "size": 3}, "shall be a non-empty string"),
        ({"name": " ", "size": 3}, "shall be a non-empty string"),
        ({"name": None, "size": 3}, "shall be a non-empty string"),
        ({"name": False, "size": 3}, "shall be a non-empty string"),
        ({"name": "x", "size": 0}, "positive integer"),
        ({"name": "x", "size": -3}, "positive integer"),  # FIX §8.9
        ({"name": "x", "size": True}, "positive integer"),
        ({"name": "x", "size": 3.0}, "positive integer"),
        ({"name": "x", "size": "3"}, "positive integer"),
        ({"name": "x", "size": None}, "positive integer"),
        ({"name": "x", "size": 2, "labels": ["a", "b"], "scale": Scale(0.0, 1.0)}, "not both"),
        ({"name": "x", "size": 2, "labels": {"a": 0, "b": 1}}, "dict is not accepted"),  # FIX §8.9
        ({"name": "x", "size": 2, "labels": "ab"}, "Labels"),
        ({"name": "x", "size": 2, "labels": Scale(0.0, 1.0)}, "Labels"),
        ({"name": "x", "size": 2, "labels": []}, "Label cannot be empty"),
        ({"name": "x", "size": 2, "labels": ["a", "a"]}, "unique"),  # FIX §8.9
        ({"name": "x", "size": 3, "labels": ["a", "b"]}, "do not match dimension size"),  # FIX §8.9
        ({"name": "x", "size": 2, "labels": ["a", 1]}, "same type"),
        ({"name": "x", "size": 2, "labels": [True, False]}, "same type"),
        ({"name": "x", "size": 2, "labels": [1.0, float("nan")]}, "NaN"),
        ({"name": "x", "size": 2, "scale": (0.0, 1.0)}, "Scale or a dict"),
        ({"name": "x", "size": 2, "scale": 1.0}, "Scale or a dict"),
        ({"name": "x", "size": 2, "scale": {"start_value": 0.0, "step": 1.0, "foo": 1}}, "unknown keys"),
        ({"name": "x", "size": 2, "scale": {"start": 0.0, "step": 1.0}}, "unknown keys"),
        ({"name": "x", "size": 2, "scale": {"step": 1.0}}, "misses"),
        ({"name": "x", "size": 2, "scale": {}}, "misses"),
        ({"name": "x", "size": 2, "scale": Scale("0", 1.0)}, "'start_value' value shall be"),
        ({"name": "x", "size": 2, "scale": Scale(0.0, None)}, "'step' value shall be"),  # type: ignore[arg-type]
        ({"name": "x", "size": 2, "scale": Scale(True, 1.0)}, "'start_value' value shall be"),
        ({"name": "x", "size": 2, "scale": Scale(0.0, float("inf"))}, "'step' value shall be"),
        ({"name": "x", "size": 2, "scale": Scale(float("nan"), 1.0)}, "'start_value' value shall be"),
        ({"name": "x", "size": 2, "scale": Scale(0.0, 0)}, "shall not be zero"),
        ({"name": "x", "size": 2, "scale": Scale(0.0, 1.0, "")}, "'name' shall be None or a non-empty"),
        ({"name": "x", "size": 2, "scale": Scale(0.0, 1.0, 5)}, "'name' shall be None or a non-empty"),  # type: ignore[arg-type]
    ],
)
def test_dimension_schema_invalid(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(DekerValidationError, match=match):
        DimensionSchema(**kwargs)


def test_unknown_scale_key_is_still_a_value_error() -> None:
    with pytest.raises(ValueError):
        DimensionSchema("x", 2, scale={"start_value": 0.0, "step": 1.0, "bad": 1})


# -------------------------------------------------------------------------- TimeDimensionSchema
def test_time_dimension_normalises_start() -> None:
    # a naive start (datetime or ISO string) is UTC, as deker 1.1.7 took it
    naive = TimeDimensionSchema("t", 3, datetime(2023, 1, 1), HOUR)
    assert naive.start_value == datetime(2023, 1, 1, tzinfo=UTC)
    assert TimeDimensionSchema("t", 3, "2023-01-01T00:00:00", HOUR) == naive
    offset = TimeDimensionSchema("t", 3, "2023-01-01T03:00:00+03:00", HOUR)
    assert offset.start_value == datetime(2023, 1, 1, tzinfo=UTC)
    assert offset.start_value.tzinfo is UTC  # type: ignore[union-attr]
    ref = TimeDimensionSchema("t", 3, "$dt", HOUR)
    assert ref.start_value == "$dt"
    assert naive == offset


def test_time_dimension_as_dict() -> None:
    d = TimeDimensionSchema(
        "t", 24, datetime(2023, 1, 1, tzinfo=UTC), timedelta(days=1, seconds=5, microseconds=7)
    )
    assert d.as_dict == {
        "name": "t",
        "size": 24,
        "type": "time",
        "start_value": "2023-01-01T00:00:00+00:00",
        "step": {"days": 1, "seconds": 5, "microseconds": 7},
    }
    assert list(d.as_dict) == ["name", "size", "type", "start_value", "step"]
    assert TimeDimensionSchema("t", 2, "$dt", HOUR).as_dict["start_value"] == "$dt"


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("", 3, "$dt", HOUR), "shall be a non-empty string"),
        (("t", 0, "$dt", HOUR), "positive integer"),
        (("t", -1, "$dt", HOUR), "positive integer"),
        (("t", 3, "$dt", timedelta(0)), "timedelta"),
        (("t", 3, "$dt", 3600), "timedelta"),
        (("t", 3, "$dt", None), "timedelta"),
        (("t", 3, "", HOUR), "Empty string"),
        (("t", 3, "   ", HOUR), "Empty string"),
        (("t", 3, "not a date", HOUR), "ISO-8601"),
        (("t", 3, "$", HOUR), "shall name an attribute"),
        (("t", 3, 1672531200, HOUR), "start_value shall be"),
        (("t", 3, None, HOUR), "start_value shall be"),
        (("t", 3, datetime(2023, 1, 1).date(), HOUR), "start_value shall be"),
    ],
)
def test_time_dimension_invalid(args: tuple[Any, ...], match: str) -> None:
    with pytest.raises(DekerValidationError, match=match):
        TimeDimensionSchema(*args)


# ------------------------------------------------------------------------------- ArraySchema
def test_array_schema_properties() -> None:
    attrs = [AttributeSchema("dt", datetime, True), AttributeSchema("n", int, False)]
    dims = [TimeDimensionSchema("t", 24, "$dt", HOUR), DimensionSchema("y", 3), DimensionSchema("x", 2)]
    schema = ArraySchema(dtype=float, dimensions=dims, attributes=attrs)
    assert schema.dtype is np.float64
    assert type(schema.fill_value) is np.float64 and np.isnan(schema.fill_value)
    assert schema.dimensions == tuple(dims) and isinstance(schema.dimensions, tuple)
    assert schema.attributes == tuple(attrs) and isinstance(schema.attributes, tuple)
    assert schema.shape == (24, 3, 2)
    assert schema.named_shape == (("t", 24), ("y", 3), ("x", 2))
    assert schema.ndim == 3
    assert schema.primary_attributes == (attrs[0],)
    assert schema.custom_attributes == (attrs[1],)
    plain = ArraySchema(dtype=np.int16, dimensions=dims2())
    assert plain.primary_attributes is None and plain.custom_attributes is None
    assert plain.attributes == ()
    assert plain.fill_value == -32768 and type(plain.fill_value) is np.int16


def test_array_schema_as_dict() -> None:
    schema = ArraySchema(
        dtype=complex,
        dimensions=[DimensionSchema("x", 2)],
        fill_value=1 + 2j,
        attributes=[AttributeSchema("a", str, True)],
    )
    data = schema.as_dict
    assert list(data) == ["dimensions", "dtype", "attributes", "fill_value"]
    assert data["dtype"] == "numpy.cfloat"
    assert data["fill_value"] == "(1+2j)"
    assert isinstance(data["dimensions"], tuple) and isinstance(data["attributes"], tuple)
    assert data["attributes"] == ({"name": "a", "primary": True, "dtype": "string"},)
    assert ArraySchema(dtype=np.int64, dimensions=dims2()).as_dict["fill_value"] == "-9223372036854775808"
    assert ArraySchema(dtype=np.float32, dimensions=dims2()).as_dict["fill_value"] is None
    assert ArraySchema(dtype=np.float32, dimensions=dims2(), fill_value=0).as_dict["fill_value"] == "0.0"
    # deker 1.1.7: None whenever np.isnan, so a partly-NaN complex was stored as null and read back as
    # nan+0j by every other client (cells of absent tiles read differently from this client's): refused
    nan = float("nan")
    for partly in (complex(nan, 1), complex(1, nan), complex(nan, nan)):
        with pytest.raises(DekerValidationError, match="must be nan\\+0j"):
            ArraySchema(dtype=complex, dimensions=dims2(), fill_value=partly)
    default = ArraySchema(dtype=complex, dimensions=dims2(), fill_value=complex(nan, 0))
    assert default.as_dict["fill_value"] is None


@pytest.mark.parametrize(
    ("dtype", "fill", "expected"),
    [
        (np.int8, 5, np.int8(5)),
        (np.int8, -128, np.int8(-128)),
        (np.uint8, 255, np.uint8(255)),
        (int, 2.0, np.int64(2)),
        (int, "3", np.int64(3)),
        (float, "3", np.float64(3.0)),
        (np.float32, 0.1, np.float32(0.1)),
        (float, np.float32(0.5), np.float64(0.5)),
        (complex, 1, np.complex128(1)),
        (np.int16, np.int64(7), np.int16(7)),
        (float, float("inf"), np.float64("inf")),
        (float, np.array(2.5), np.float64(2.5)),
    ],
)
def test_fill_value_conversion(dtype: type, fill: Any, expected: np.generic) -> None:
    schema = ArraySchema(dtype=dtype, dimensions=dims2(), fill_value=fill)
    assert type(schema.fill_value) is type(expected)
    assert schema.fill_value == expected


@pytest.mark.parametrize(
    ("dtype", "fill", "rounded"),
    [
        (np.float16, 1e-8, "0.0"),
        (np.float32, 1e-50, "0.0"),
        (np.float32, np.float64(-1e-50), "-0.0"),
        (np.complex64, complex(1, 1e-50), "(1+0j)"),
    ],
)
def test_a_fill_value_that_rounds_to_zero_is_refused(dtype: type, fill: Any, rounded: str) -> None:
    # it became 0 without a word, so every real zero read as an absent cell (xarray's
    # _FillValue=1e-8 of float16 data through deker_dask.schema_from_xarray)
    with pytest.raises(
        DekerValidationError, match=f"dtype {dtype.__name__}: .*round to {re.escape(rounded)}"
    ):
        ArraySchema(dtype=dtype, dimensions=dims2(), fill_value=fill)
    tiny = np.finfo(dtype).smallest_subnormal
    assert ArraySchema(dtype=dtype, dimensions=dims2(), fill_value=float(tiny)).fill_value == tiny
    assert ArraySchema(dtype=dtype, dimensions=dims2(), fill_value=0.0).fill_value == 0
    # the stored form is parsed as before, so a collection made by deker 1.1.7 still opens
    assert ArraySchema(dtype=dtype, dimensions=dims2(), fill_value="1e-80").fill_value == 0


DIMS = [DimensionSchema("x", 2)]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dtype": float, "dimensions": []}, "Dimensions shall be a list or tuple"),
        ({"dtype": float, "dimensions": None}, "Dimensions shall be a list or tuple"),
        ({"dtype": float, "dimensions": DimensionSchema("x", 2)}, "Dimensions shall be a list or tuple"),
        ({"dtype": float, "dimensions": [{"name": "x", "size": 2}]}, "Dimensions shall be a list or tuple"),
        ({"dtype": float, "dimensions": [DimensionSchema("x", 2), DimensionSchema("x", 3)]}, "unique names"),
        ({"dtype": str, "dimensions": DIMS}, "Invalid dtype"),
        ({"dtype": bool, "dimensions": DIMS}, "Invalid dtype"),
        ({"dtype": "float", "dimensions": DIMS}, "Invalid dtype"),
        ({"dtype": np.dtype("float32"), "dimensions": DIMS}, "Invalid dtype"),
        ({"dtype": int, "dimensions": DIMS, "fill_value": np.nan}, "Invalid `fill_value`"),
        ({"dtype": float, "dimensions": DIMS, "fill_value": "x"}, "Invalid `fill_value`"),
        ({"dtype": np.int8, "dimensions": DIMS, "fill_value": 300}, "Invalid `fill_value`"),  # FIX
        ({"dtype": np.int8, "dimensions": DIMS, "fill_value": np.int64(300)}, "Invalid `fill_value`"),  # FIX
        ({"dtype": np.uint8, "dimensions": DIMS, "fill_value": -1}, "Invalid `fill_value`"),  # FIX
        ({"dtype": int, "dimensions": DIMS, "fill_value": 1.5}, "Invalid `fill_value`"),  # FIX
        ({"dtype": np.int8, "dimensions": DIMS, "fill_value": "300"}, "Invalid `fill_value`"),
        ({"dtype": int, "dimensions": DIMS, "fill_value": "1.5"}, "Invalid `fill_value`"),
        ({"dtype": np.float32, "dimensions": DIMS, "fill_value": 1e300}, "Invalid `fill_value`"),  # FIX
        ({"dtype": float, "dimensions": DIMS, "fill_value": 1 + 2j}, "Invalid `fill_value`"),
        ({"dtype": float, "dimensions": DIMS, "fill_value": [1.0]}, "Invalid `fill_value`"),
        ({"dtype": int, "dimensions": DIMS, "fill_value": 2**70}, "Invalid `fill_value`"),
        (
            {"dtype": float, "dimensions": DIMS, "attributes": AttributeSchema("a", int, True)},
            "Attributes shall be",
        ),
        ({"dtype": float, "dimensions": DIMS, "attributes": [{"name": "a"}]}, "Attributes shall be"),
        (
            {
                "dtype": float,
                "dimensions": DIMS,
                "attributes": [AttributeSchema("a", int, True), AttributeSchema("a", str, False)],
            },
            "Attribute name shall be unique",
        ),
        ({"dtype": float, "dimensions": [TimeDimensionSchema("t", 2, "$dt", HOUR)]}, "No dt attribute"),
        (
            {
                "dtype": float,
                "dimensions": [TimeDimensionSchema("t", 2, "$dt", HOUR)],
                "attributes": [AttributeSchema("dt", str, True)],
            },
            "No dt attribute with dtype `datetime.datetime`",
        ),
        (
            {  # the reference must match exactly, not by prefix
                "dtype": float,
                "dimensions": [TimeDimensionSchema("t", 2, "$dt", HOUR)],
                "attributes": [AttributeSchema("dt2", datetime, True)],
            },
            "No dt attribute",
        ),
    ],
)
def test_array_schema_invalid(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(DekerValidationError, match=match):
        ArraySchema(**kwargs)


def test_array_schema_validation_order() -> None:
    # dimensions are checked before dtype, dtype before fill_value, fill_value before attributes
    with pytest.raises(DekerValidationError, match="Dimensions"):
        ArraySchema(dtype=str, dimensions=[], fill_value="x", attributes=5)  # type: ignore[arg-type]
    with pytest.raises(DekerValidationError, match="Invalid dtype"):
        ArraySchema(dtype=str, dimensions=DIMS, fill_value="x", attributes=5)  # type: ignore[arg-type]
    with pytest.raises(DekerValidationError, match="fill_value"):
        ArraySchema(dtype=int, dimensions=DIMS, fill_value="x", attributes=5)  # type: ignore[arg-type]


def test_array_schema_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        ArraySchema(float, DIMS)  # type: ignore[misc]


def test_time_reference_to_custom_attribute() -> None:
    schema = ArraySchema(
        dtype=float,
        dimensions=[TimeDimensionSchema("t", 2, "$start", HOUR)],
        attributes=[AttributeSchema("start", datetime, False)],
    )
    assert schema.custom_attributes == (AttributeSchema("start", datetime, False),)


def test_schema_equality_nan_fill() -> None:
    a = ArraySchema(dtype=float, dimensions=dims2())
    b = ArraySchema(dtype=float, dimensions=tuple(dims2()), fill_value=float("nan"))
    assert a == b and hash(a) == hash(b)
    assert a != ArraySchema(dtype=float, dimensions=dims2(), fill_value=0.0)
    assert a != ArraySchema(dtype=np.float32, dimensions=dims2())
    assert ArraySchema(dtype=complex, dimensions=dims2()) == ArraySchema(
        dtype=complex, dimensions=dims2(), fill_value=complex(float("nan"), 0)
    )
    assert ArraySchema(dtype=complex, dimensions=dims2()) != ArraySchema(
        dtype=complex, dimensions=dims2(), fill_value=complex(1, 1)
    )
    v = VArraySchema(dtype=float, dimensions=dims2(), vgrid=(2, 3))
    assert v != a and a != v
    assert v == VArraySchema(dtype=float, dimensions=dims2(), arrays_shape=[2, 2])


# ------------------------------------------------------------------------------ VArraySchema
def test_varray_schema_splitters() -> None:
    v = VArraySchema(dtype=np.int16, dimensions=dims2(), vgrid=[2, 3])
    assert v.vgrid == (2, 3) and v.arrays_shape == (2, 2)
    assert all(type(i) is int for i in v.vgrid + v.arrays_shape)
    w = VArraySchema(dtype=np.int16, dimensions=dims2(), arrays_shape=(np.int64(1), 6))
    assert w.vgrid == (4, 1) and w.arrays_shape == (1, 6)
    data = v.as_dict
    assert list(data) == ["dimensions", "dtype", "attributes", "fill_value", "vgrid"]
    assert list(data["vgrid"]) == [2, 3]
    assert "arrays_shape" not in data


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "Either `vgrid` or `arrays_shape` shall be passed"),
        ({"vgrid": []}, "Either `vgrid` or `arrays_shape` shall be passed"),
        ({"vgrid": None, "arrays_shape": ()}, "Either `vgrid` or `arrays_shape` shall be passed"),
        ({"vgrid": (2, 3), "arrays_shape": (2, 2)}, "not both"),
        ({"vgrid": (2,)}, r"Vgrid shall be a list or tuple of positive integers.*\(2\)"),
        ({"vgrid": (2, 3, 1)}, "Vgrid shall be a list or tuple"),
        ({"vgrid": (2.0, 3)}, "Vgrid shall be a list or tuple"),
        ({"vgrid": (0, 3)}, "Vgrid shall be a list or tuple"),
        ({"vgrid": (-2, 3)}, "Vgrid shall be a list or tuple"),
        ({"vgrid": (True, 3)}, "Vgrid shall be a list or tuple"),  # FIX: bools rejected
        ({"vgrid": "23"}, "Vgrid shall be a list or tuple"),
        ({"vgrid": 2}, "Vgrid shall be a list or tuple"),
        ({"arrays_shape": (2, "3")}, "Arrays_shape shall be a list or tuple"),
        ({"arrays_shape": (2,)}, "Arrays_shape shall be a list or tuple"),
        (
            {"vgrid": (3, 3)},
            r"split by vgrid into equal parts without remainder: y size % vgrid element = 4 % 3 = 1",
        ),
        (
            {"arrays_shape": (4, 4)},
            r"split by arrays_shape into equal parts without remainder: "
            r"x size % arrays_shape element = 6 % 4 = 2",
        ),
    ],
)
def test_varray_schema_invalid(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(DekerValidationError, match=match):
        VArraySchema(dtype=float, dimensions=dims2(), **kwargs)


def test_varray_schema_runs_array_checks_first() -> None:
    with pytest.raises(DekerValidationError, match="Invalid dtype"):
        VArraySchema(dtype=str, dimensions=dims2())


# -------------------------------------------------------------------------------- tile_schema
def test_tile_schema() -> None:
    v = VArraySchema(
        dtype=np.float32,
        dimensions=[
            TimeDimensionSchema("t", 8, "$dt", HOUR),
            DimensionSchema("y", 6, labels=list("abcdef")),
            DimensionSchema("x", 4, scale=Scale(0.0, 0.5)),
            TimeDimensionSchema("u", 2, datetime(2024, 1, 1), timedelta(minutes=5)),
        ],
        vgrid=(2, 3, 1, 2),
        fill_value=-1.0,
        attributes=[AttributeSchema("name", str, True), AttributeSchema("dt", datetime, False)],
    )
    t = tile_schema(v)
    assert isinstance(t, ArraySchema)
    assert t.dtype is np.float32 and t.fill_value == np.float32(-1.0)
    assert t.attributes == (
        AttributeSchema("vid", str, True),
        AttributeSchema("v_position", tuple, True),
        AttributeSchema("parent.dt", datetime, False),
    )
    assert t.dimensions == (
        TimeDimensionSchema("t", 4, "$parent.dt", HOUR),
        DimensionSchema("y", 2),
        DimensionSchema("x", 4),
        TimeDimensionSchema("u", 1, datetime(2024, 1, 1, tzinfo=UTC), timedelta(minutes=5)),
    )
    assert t.shape == v.arrays_shape


def test_tile_schema_shared_time_attribute() -> None:
    v = VArraySchema(
        dtype=float,
        dimensions=[TimeDimensionSchema("a", 2, "$dt", HOUR), TimeDimensionSchema("b", 2, "$dt", HOUR)],
        arrays_shape=(1, 2),
        attributes=[AttributeSchema("dt", datetime, True)],
    )
    t = tile_schema(v)
    assert [a.name for a in t.attributes] == ["vid", "v_position", "parent.dt"]
    assert [d.start_value for d in t.dimensions] == ["$parent.dt", "$parent.dt"]  # type: ignore[union-attr]


def test_tile_schema_without_time() -> None:
    v = VArraySchema(dtype=np.int16, dimensions=dims2(), vgrid=(2, 2))
    t = tile_schema(v)
    assert t.shape == (2, 3)
    assert [a.name for a in t.attributes] == ["vid", "v_position"]
    assert np.isnan(ArraySchema(dtype=float, dimensions=dims2()).fill_value)
    assert t.fill_value == np.int16(-32768)


@pytest.mark.parametrize("fill", [True, False, np.bool_(True)])
@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.float64, np.complex64])
def test_a_bool_fill_value_is_refused(dtype: type, fill: Any) -> None:
    """True was taken as 1 (and False as 0) without a word."""
    dims = [DimensionSchema("x", 3)]
    with pytest.raises(DekerValidationError, match="a bool is no fill value"):
        ArraySchema(dtype=dtype, dimensions=dims, fill_value=fill)
    assert ArraySchema(dtype=dtype, dimensions=dims, fill_value=1).fill_value == 1
