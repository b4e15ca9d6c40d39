"""Tests of deker.dtypes: accepted types, stored names (SPEC §1.7.6), default fill values (§7.1)."""

from __future__ import annotations

from datetime import datetime
from fractions import Fraction
from typing import Any

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from deker.dtypes import (
    ARRAY_DTYPES,
    ATTRIBUTE_DTYPES,
    attribute_dtype_to_name,
    attribute_name_to_dtype,
    casts_exactly,
    check_integer_range,
    convert_exactly,
    default_fill_value,
    dtype_to_name,
    is_attribute_dtype,
    name_to_dtype,
    normalize_array_dtype,
)
from deker.errors import DekerArrayTypeError, DekerValidationError

# The names deker 1.1.7 writes on Linux x86-64 (SPEC §1.7.6).
EXPECTED_NAMES = [
    (np.int8, "numpy.int8"),
    (np.int16, "numpy.int16"),
    (np.int32, "numpy.int32"),
    (np.int64, "numpy.int64"),
    (np.longlong, "numpy.longlong"),
    (np.uint8, "numpy.uint8"),
    (np.uint16, "numpy.uint16"),
    (np.uint32, "numpy.uint32"),
    (np.uint64, "numpy.uint"),
    (np.ulonglong, "numpy.ulonglong"),
    (np.float16, "numpy.float16"),
    (np.float32, "numpy.float32"),
    (np.float64, "numpy.float64"),
    (np.longdouble, "numpy.float128"),
    (np.complex64, "numpy.complex64"),
    (np.complex128, "numpy.cfloat"),
    (np.clongdouble, "numpy.clongfloat"),
    (int, "numpy.int64"),
    (float, "numpy.float64"),
    (complex, "numpy.cfloat"),
    (np.byte, "numpy.int8"),
    (np.short, "numpy.int16"),
    (np.intc, "numpy.int32"),
    (np.intp, "numpy.int64"),
    (np.int_, "numpy.int64"),
    (np.ubyte, "numpy.uint8"),
    (np.uintc, "numpy.uint32"),
    (np.uintp, "numpy.uint"),
    (np.double, "numpy.float64"),
    (np.cdouble, "numpy.cfloat"),
]


@pytest.mark.parametrize(("dtype", "name"), EXPECTED_NAMES)
def test_dtype_names_match_deker_117(dtype: type, name: str) -> None:
    assert dtype_to_name(dtype) == name
    expected = normalize_array_dtype(dtype)
    assert name_to_dtype(name) is expected


@pytest.mark.parametrize("dtype", ARRAY_DTYPES)
def test_every_accepted_dtype_round_trips_its_name(dtype: type[np.generic]) -> None:
    assert normalize_array_dtype(dtype) is dtype
    name = dtype_to_name(dtype)
    assert name.startswith("numpy.")
    assert name_to_dtype(name) is dtype


def test_python_types_become_numpy() -> None:
    assert normalize_array_dtype(int) is np.int64
    assert normalize_array_dtype(float) is np.float64
    assert normalize_array_dtype(complex) is np.complex128


@pytest.mark.parametrize(
    "bad",
    [
        bool,
        np.bool_,
        str,
        np.str_,
        "float",
        "numpy.float64",
        np.dtype("float32"),
        object,
        None,
        3,
        list,
        datetime,
    ],
)
def test_invalid_array_dtypes_rejected(bad: object) -> None:
    with pytest.raises(DekerValidationError, match="Invalid dtype"):
        normalize_array_dtype(bad)
    with pytest.raises(DekerValidationError):
        dtype_to_name(bad)


LEGACY_NAMES = {
    "cfloat": np.complex128,
    "complex_": np.complex128,
    "cdouble": np.complex128,
    "complex128": np.complex128,
    "clongfloat": np.clongdouble,
    "longcomplex": np.clongdouble,
    "complex256": np.clongdouble,
    "singlecomplex": np.complex64,
    "longfloat": np.longdouble,
    "float128": np.longdouble,
    "longdouble": np.longdouble,
    "float_": np.float64,
    "double": np.float64,
    "int_": np.int64,
    "intp": np.int64,
    "uint": np.uint64,
    "uintp": np.uint64,
    "byte": np.int8,
    "ubyte": np.uint8,
    "short": np.int16,
    "ushort": np.uint16,
    "intc": np.int32,
    "uintc": np.uint32,
    "longlong": np.longlong,
    "ulonglong": np.ulonglong,
}


@pytest.mark.parametrize(("name", "dtype"), sorted(LEGACY_NAMES.items()))
def test_legacy_names_are_read(name: str, dtype: type) -> None:
    assert name_to_dtype(f"numpy.{name}") is dtype


@pytest.mark.parametrize(
    ("name", "dtype"),
    [
        ("int", np.int64),
        ("float", np.float64),
        ("complex", np.complex128),
        ("numpy.int", np.int64),
        ("numpy.float", np.float64),
        ("numpy.complex", np.complex128),
        ("float64", np.float64),
        ("cfloat", np.complex128),
        ("uint", np.uint64),
    ],
)
def test_names_deker_117_accepted_without_the_prefix(name: str, dtype: type) -> None:
    """deker 1.1.7 looked a name up without its ``numpy.`` prefix, builtin names included."""
    assert name_to_dtype(name) is dtype


@pytest.mark.parametrize(
    "bad", ["numpy.bool_", "bool", "numpy.str_", "string", "datetime", "tuple", "numpy.", "numpy.foo", ""]
)
def test_unknown_names_rejected(bad: str) -> None:
    with pytest.raises(DekerValidationError, match="Unknown dtype name"):
        name_to_dtype(bad)


@pytest.mark.parametrize("dtype", ARRAY_DTYPES)
def test_default_fill_value(dtype: type[np.generic]) -> None:
    fill = default_fill_value(dtype)
    assert type(fill) is dtype
    if issubclass(dtype, np.complexfloating):
        assert np.isnan(fill.real) and fill.imag == 0
    elif issubclass(dtype, np.floating):
        assert np.isnan(fill)
    elif issubclass(dtype, np.signedinteger):
        assert fill == np.iinfo(dtype).min < 0
    else:
        assert fill == 0


def test_default_fill_value_known_values() -> None:
    assert default_fill_value(np.int8) == -128
    assert default_fill_value(np.int16) == -32768
    assert default_fill_value(int) == -9223372036854775808
    assert default_fill_value(np.uint8) == 0
    assert str(default_fill_value(complex)) == "(nan+0j)"


ATTRIBUTE_NAMES = [
    (int, "int"),
    (float, "float"),
    (complex, "complex"),
    (str, "string"),
    (tuple, "tuple"),
    (datetime, "datetime"),
    (np.int32, "numpy.int32"),
    (np.complex128, "numpy.cfloat"),
    (np.float64, "numpy.float64"),
]


def test_attribute_names_with_a_numpy_prefix_are_plain_types() -> None:
    assert attribute_name_to_dtype("numpy.int") is int  # as deker 1.1.7 read it
    assert attribute_name_to_dtype("numpy.string") is str
    assert attribute_name_to_dtype("float32") is np.float32


@pytest.mark.parametrize(("dtype", "name"), ATTRIBUTE_NAMES)
def test_attribute_dtype_names(dtype: type, name: str) -> None:
    assert attribute_dtype_to_name(dtype) == name
    assert attribute_name_to_dtype(name) is dtype


@pytest.mark.parametrize("dtype", ATTRIBUTE_DTYPES)
def test_every_attribute_dtype_round_trips(dtype: type) -> None:
    assert is_attribute_dtype(dtype)
    assert attribute_name_to_dtype(attribute_dtype_to_name(dtype)) is dtype


@pytest.mark.parametrize("bad", [bool, list, dict, bytes, np.bool_, np.dtype("int8"), "int", None, set])
def test_invalid_attribute_dtypes(bad: object) -> None:
    assert not is_attribute_dtype(bad)
    with pytest.raises(DekerValidationError, match="Invalid dtype value"):
        attribute_dtype_to_name(bad)


@pytest.mark.parametrize("bad", ["str", "bool", "list", "numpy.bool_", ""])
def test_invalid_attribute_dtype_names(bad: str) -> None:
    with pytest.raises(DekerValidationError):
        attribute_name_to_dtype(bad)


@pytest.mark.parametrize(
    ("dtype", "value"),
    [(np.int8, 128), (np.int8, -129), (np.uint8, -1), (np.dtype("uint16"), 70_000), (np.int64, 2**63)],
)
def test_a_python_int_out_of_an_integer_dtypes_range_overflows(dtype: object, value: int) -> None:
    """What NumPy 2's conversion raises; NumPy 1.26 wrapped the value around (and only warned)."""
    with pytest.raises(OverflowError, match=f"{value} is out of the range"):
        check_integer_range(dtype, value)


@pytest.mark.parametrize(
    ("dtype", "value"),
    [
        (np.int8, 127),
        (np.int8, -128),
        (np.uint64, 2**64 - 1),
        (int, 2**70),  # Python's int has no range
        (np.float32, 2**70),  # not an integer dtype: the conversion decides
        (np.int8, np.int64(300)),  # not a Python int: the conversion decides
        (np.int8, 300.0),
    ],
)
def test_values_in_range_or_not_python_ints_pass(dtype: object, value: object) -> None:
    check_integer_range(dtype, value)


def _changes_a_value(source: np.dtype[Any], target: np.dtype[Any]) -> bool:
    """Whether casting one of the integer extremes of ``source`` (or their neighbours) changes it."""
    info = np.iinfo(source)
    values = np.array([info.min, info.min + 1, info.max - 1, info.max], dtype=source)
    cast = values.astype(target)
    return any(int(c.real) != int(v) for c, v in zip(cast.tolist(), values.tolist(), strict=True))


@pytest.mark.parametrize("target", ARRAY_DTYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("source", ARRAY_DTYPES, ids=lambda t: np.dtype(t).name)
def test_casts_exactly_is_numpys_safe_rule_less_the_casts_that_round(source: Any, target: Any) -> None:
    """The oracle: numpy's rule, and for an integer source the round trip of its extremes."""
    src, dst = np.dtype(source), np.dtype(target)
    expected = bool(np.can_cast(src, dst, casting="safe"))
    if expected and src.kind in "iu" and dst.kind in "fc":
        expected = not _changes_a_value(src, dst)
    assert casts_exactly(source, target) is expected


def test_casts_exactly_refuses_int64_into_float64_and_takes_int32() -> None:
    assert np.can_cast(np.int64, np.float64, casting="safe")  # numpy's rule would round 2**53 + 1
    assert not casts_exactly(np.int64, np.float64)
    assert not casts_exactly(np.uint64, np.complex128)
    assert casts_exactly(np.int32, np.float64)
    assert casts_exactly(np.bool_, np.float16)
    assert not casts_exactly(np.float64, np.float32)


#: Numeric dtypes for the conversion oracle (bool and every kind and width of number).
NUMERIC = [np.dtype(t) for t in (np.bool_, *ARRAY_DTYPES)]


def _exact_part(x: Any) -> Fraction | str:
    """One real number exactly: a Fraction, or "nan", "+inf", "-inf" (independent of numpy's casts)."""
    if isinstance(x, (bool, np.bool_, int, np.integer)):
        return Fraction(int(x))
    if np.isnan(x):  # (numpy's tests, not math's: those convert a longdouble to float64 first)
        return "nan"
    if np.isinf(x):
        return "+inf" if x > 0 else "-inf"
    return Fraction(*x.as_integer_ratio())


def _exact(x: Any) -> tuple[Fraction | str, Fraction | str]:
    if isinstance(x, np.complexfloating):
        return _exact_part(x.real), _exact_part(x.imag)
    return _exact_part(x), Fraction(0)


def _representable(value: tuple[Fraction | str, Fraction | str], dtype: np.dtype[Any]) -> bool:
    """Whether the exact number ``value`` is a value of ``dtype`` (NaN counts as one for floats)."""
    real, imag = value
    if dtype.kind != "c" and imag != 0:
        return False
    parts = [real, imag] if dtype.kind == "c" else [real]
    part_type = np.empty(0, dtype=dtype).real.dtype
    for part in parts:
        if isinstance(part, str):  # NaN or an infinity
            if dtype.kind not in "fc":
                return False
            continue
        if dtype.kind == "b":
            if part not in (0, 1):
                return False
        elif dtype.kind in "iu":
            info = np.iinfo(dtype)
            if part.denominator != 1 or not info.min <= part <= info.max:
                return False
        elif not _float_holds(part, part_type):
            return False
    return True


def _float_holds(part: Fraction, dtype: Any) -> bool:
    """Whether a binary float type holds ``part`` exactly, from its format (no cast)."""
    if part == 0:
        return True
    info = np.finfo(dtype)
    num, den = abs(part.numerator), part.denominator
    if den & (den - 1):  # not a power of two: no binary float is it
        return False
    low = -(den.bit_length() - 1)
    while num % 2 == 0:
        num //= 2
        low += 1
    # part = +-num * 2**low with num odd: its digits must fit the significand, its lowest digit
    # must not be below the smallest subnormal, its magnitude must be below 2**maxexp
    return (
        num.bit_length() <= info.nmant + 1
        and low >= info.minexp - info.nmant
        and low + num.bit_length() <= info.maxexp
    )


@st.composite
def _values_and_target(draw: st.DrawFn) -> tuple[np.ndarray[Any, Any], np.dtype[Any]]:
    source = draw(st.sampled_from(NUMERIC))
    target = draw(st.sampled_from(NUMERIC))
    elements = hnp.from_dtype(source)
    if source.kind != "b":  # small integers too, so that a narrowing pair often fits
        elements = st.one_of(elements, st.integers(0 if source.kind == "u" else -3, 3).map(source.type))
    values = draw(hnp.arrays(source, st.integers(0, 6), elements=elements))
    return values, target


@given(_values_and_target())
def test_convert_exactly_stores_exactly_the_values_that_fit_and_refuses_the_others(
    case: tuple[np.ndarray[Any, Any], np.dtype[Any]],
) -> None:
    """The oracle: each value's exact number, and whether the target dtype holds it."""
    values, target = case
    wanted = [_exact(v) for v in list(values)]
    if all(_representable(w, target) for w in wanted):
        got = convert_exactly(values, target, "the values")
        assert got.dtype == target and got.shape == values.shape
        assert [_exact(g) for g in list(got)] == wanted
    else:
        with pytest.raises(DekerArrayTypeError, match="some values of the values change when stored as"):
            convert_exactly(values, target, "the values")


def test_convert_exactly_refuses_a_wrap_around_that_gives_the_number_back() -> None:
    # -1 as uint8 is 255, and 255 back to int8 is -1: the round trip alone would let it through
    with pytest.raises(DekerArrayTypeError, match=r"the int8 data change when stored as uint8"):
        convert_exactly(np.array([-1], dtype=np.int8), np.uint8, "the int8 data")
    # 300 as int8 wraps to 44
    with pytest.raises(DekerArrayTypeError, match="change when stored as int8"):
        convert_exactly(np.array([300, 1]), np.int8, "the block")


def test_convert_exactly_keeps_an_array_of_its_dtype_and_refuses_what_is_not_numbers() -> None:
    values = np.arange(3, dtype=np.int16)
    assert convert_exactly(values, np.int16, "x") is values
    assert convert_exactly(np.array([np.nan, 0.5]), np.float32, "x").dtype == np.float32  # they fit
    with pytest.raises(DekerArrayTypeError, match="holds <U1 values; float64 expected"):
        convert_exactly(np.array(["a"]), np.float64, "the list")


FLOATS = [np.dtype(t) for t in (np.float16, np.float32, np.float64, np.longdouble)]
INTEGERS = [np.dtype(t) for t in ARRAY_DTYPES if np.dtype(t).kind in "iu"]


@pytest.mark.parametrize("target", INTEGERS, ids=str)
@pytest.mark.parametrize("source", FLOATS, ids=str)
def test_convert_exactly_refuses_floats_out_of_an_integer_range(
    source: np.dtype[Any], target: np.dtype[Any]
) -> None:
    """The cast of such a float is undefined in C: on x86 -inf becomes INT_MIN, which casts back
    to float16's -inf, and elsewhere it saturates, so a round trip alone would let it through."""
    info = np.iinfo(target)
    below = float(info.min) * 2 if info.min < 0 else -1.0
    outside = [np.inf, -np.inf, np.nan]
    with np.errstate(over="ignore"):
        outside += [v for v in (float(info.max) * 2, below) if np.isfinite(source.type(v))]
    for value in outside:
        with pytest.raises(DekerArrayTypeError, match="change when stored as"):
            convert_exactly(np.array([value], dtype=source), target, "the floats")
    edge = np.array([0, 1, -1 if target.kind == "i" else 2], dtype=source)
    np.testing.assert_array_equal(convert_exactly(edge, target, "the floats"), edge.astype(target))


def test_datetime64_moment_is_exact_or_refused() -> None:
    from datetime import datetime

    from deker.dtypes import datetime64_moment

    assert datetime64_moment(np.datetime64("2023-01-01T07:00:00.000001000", "ns")) == datetime(
        2023, 1, 1, 7, 0, 0, 1
    )
    assert datetime64_moment(np.datetime64("2023-01-01", "D")) == datetime(2023, 1, 1)
    assert datetime64_moment(np.datetime64("NaT")) is None
    with pytest.raises(ValueError, match="finer than a microsecond"):
        datetime64_moment(np.datetime64("2023-01-01T07:00:00.000000999", "ns"))
