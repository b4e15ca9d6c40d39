"""Tests of deker.attributes: attribute rules, custom updates, filters, ids and path components.

Also: primary keys without ``-0.0`` (one key for values that compare equal, stored as deker
1.1.7 stored ``0.0``), the other spellings of such a key (``equal_key_components``), NaN keys,
and names of new collections (``check_new_collection_name``: not ``<x>.lock``).
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from datetime import datetime, timedelta, timezone
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from deker.attributes import (
    MAX_EQUAL_KEY_SPELLINGS,
    check_new_collection_name,
    check_path_component,
    equal_key_components,
    normalize_filters,
    primary_key_components,
    process_attributes,
    process_custom_update,
    validate_id,
)
from deker.errors import DekerFilterError, DekerUnknownFilterError, DekerValidationError
from deker.schemas import ArraySchema, AttributeSchema, DimensionSchema, TimeDimensionSchema

UTC = timezone.utc
T0 = datetime(2023, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
DIMS = [DimensionSchema("x", 3)]


def make_schema(*attrs: AttributeSchema, dims: list[Any] | None = None) -> ArraySchema:
    return ArraySchema(dtype=float, dimensions=dims or DIMS, attributes=list(attrs))


# schema: primary "a" (int), "b" (str); custom "c" (float), "dt" (datetime, time start), "tup" (tuple)
FULL = make_schema(
    AttributeSchema("a", int, True),
    AttributeSchema("b", str, True),
    AttributeSchema("c", float, False),
    AttributeSchema("dt", datetime, False),
    AttributeSchema("tup", tuple, False),
    dims=[TimeDimensionSchema("t", 4, "$dt", HOUR), DimensionSchema("x", 3)],
)
NO_ATTRS = make_schema()
CUSTOM_ONLY = make_schema(AttributeSchema("c", float, False))
GOOD_PRIMARY = {"a": 1, "b": "x"}
GOOD_CUSTOM = {"dt": T0}


# ------------------------------------------------------------------------------ process_attributes
@pytest.mark.parametrize(
    ("schema", "primary", "custom", "kind", "match"),
    [
        # §1.5 rule 2: attribute containers must be dicts
        (FULL, [("a", 1)], None, "Array", "Invalid attributes type"),
        (FULL, GOOD_PRIMARY, "dt", "Array", "Invalid attributes type"),
        # 1. attributes without a schema for them
        (NO_ATTRS, {"a": 1}, None, "Array", "^Array attributes schema is missing"),
        (NO_ATTRS, None, {"c": 1.0}, "VArray", "^Varray attributes schema is missing"),
        # 2. primary attributes required
        (FULL, None, GOOD_CUSTOM, "Array", "No primary attributes provided"),
        (FULL, {}, GOOD_CUSTOM, "Array", "No primary attributes provided"),
        # 3. same name in both
        (FULL, GOOD_PRIMARY, {"a": 1, "dt": T0}, "Array", "shall not have same names"),
        # 4. unknown names
        (FULL, {**GOOD_PRIMARY, "zz": 1}, GOOD_CUSTOM, "Array", "not listed in schema.*zz"),
        (FULL, GOOD_PRIMARY, {"dt": T0, "yy": 1}, "Array", "not listed in schema.*yy"),
        # 5. per attribute
        (FULL, {"a": 1}, GOOD_CUSTOM, "Array", "Key attribute missing: b"),
        (FULL, {"a": 1}, {"b": "x", "dt": T0}, "Array", 'Key attribute "b" was passed in the custom'),
        (FULL, {"a": "1", "b": "x"}, GOOD_CUSTOM, "Array", 'Key attribute "a" invalid type'),
        (FULL, {"a": np.int64(1), "b": "x"}, GOOD_CUSTOM, "Array", 'Key attribute "a" invalid type'),
        (FULL, {"a": 1.0, "b": "x"}, GOOD_CUSTOM, "Array", 'Key attribute "a" invalid type'),
        (FULL, {"a": None, "b": "x"}, GOOD_CUSTOM, "Array", 'Key attribute "a" invalid type'),
        (FULL, GOOD_PRIMARY, {"dt": None}, "Array", 'Custom attribute "dt" cannot be None'),
        (FULL, GOOD_PRIMARY, {}, "Array", 'Custom attribute "dt" cannot be None'),
        (FULL, GOOD_PRIMARY, {"dt": "2023-01-01T00:00:00"}, "Array", 'Custom attribute "dt" invalid type'),
        (FULL, GOOD_PRIMARY, {"dt": T0, "c": 1}, "Array", 'Custom attribute "c" invalid type'),
        (FULL, GOOD_PRIMARY, {"dt": T0, "tup": [1, 2]}, "Array", 'Custom attribute "tup" invalid type'),
        (FULL, GOOD_PRIMARY, {"dt": T0, "tup": (1, [2])}, "Array", "Invalid dtype value <class 'list'>"),
        (FULL, GOOD_PRIMARY, {"dt": T0, "tup": (1, (2, [3]))}, "Array", "Invalid dtype value <class 'list'>"),
        (FULL, GOOD_PRIMARY, {"dt": T0, "tup": (1, {2: 3})}, "Array", "Invalid dtype value <class 'dict'>"),
        (FULL, GOOD_PRIMARY, {"dt": T0, "tup": (True,)}, "Array", "Invalid dtype value <class 'bool'>"),
    ],
)
def test_process_attributes_rules(
    schema: ArraySchema, primary: Any, custom: Any, kind: str, match: str
) -> None:
    with pytest.raises(DekerValidationError, match=match):
        process_attributes(schema, primary, custom, kind=kind)


def test_rule_order() -> None:
    # rule 3 (same names) is reported before rule 4 (unknown names)
    with pytest.raises(DekerValidationError, match="same names"):
        process_attributes(FULL, {**GOOD_PRIMARY, "zz": 1}, {"a": 1, "zz": 2})
    # rule 2 before rule 3
    with pytest.raises(DekerValidationError, match="No primary"):
        process_attributes(FULL, None, {"a": 1})
    # rule 1 before everything
    with pytest.raises(DekerValidationError, match="schema is missing"):
        process_attributes(NO_ATTRS, None, {"a": 1})


def test_process_attributes_converts_in_schema_order() -> None:
    primary, custom = process_attributes(
        FULL,
        {"b": "x", "a": True},
        {"tup": (1, (2.5, None), "s", np.int32(4), datetime(2023, 1, 1)), "dt": datetime(2023, 1, 1, 3)},
    )
    assert list(primary) == ["a", "b"] and list(custom) == ["c", "dt", "tup"]
    assert primary == {"a": 1, "b": "x"} and type(primary["a"]) is int
    assert custom["c"] is None
    assert custom["dt"] == datetime(2023, 1, 1, 3, tzinfo=UTC) and custom["dt"].tzinfo is not None
    assert custom["tup"] == (1, (2.5, None), "s", np.int32(4), T0)
    assert type(custom["tup"][3]) is np.int32
    offset = datetime(2023, 1, 1, 5, tzinfo=timezone(timedelta(hours=5)))
    _, custom = process_attributes(FULL, GOOD_PRIMARY, {"dt": offset})
    assert custom["dt"] == datetime(2023, 1, 1, tzinfo=UTC) and custom["dt"].utcoffset() == timedelta(0)


def test_no_attributes() -> None:
    assert process_attributes(NO_ATTRS, None, None) == ({}, {})
    assert process_attributes(NO_ATTRS, {}, {}) == ({}, {})
    assert process_attributes(CUSTOM_ONLY, None, None) == ({}, {"c": None})
    assert process_attributes(CUSTOM_ONLY, None, OrderedDict(c=2.0)) == ({}, {"c": 2.0})


@pytest.mark.parametrize(
    ("dtype", "good", "bad"),
    [
        (int, [1, True, -5], [1.0, np.int64(1), "1"]),
        (float, [1.0, np.float64(2.0)], [1, np.float32(1.0), "1.0"]),
        (complex, [1j, complex(1, 2)], [1, 1.0]),
        (str, ["x", np.str_("y")], [1, b"x"]),
        (np.int32, [np.int32(3)], [3, np.int64(3)]),
        (np.float32, [np.float32(3)], [3.0]),
        (tuple, [(1,), ()], [[1], "ab"]),
        (datetime, [T0, datetime(2023, 1, 1)], ["2023-01-01", 0.0]),
    ],
)
def test_strict_types(dtype: type, good: list[Any], bad: list[Any]) -> None:
    schema = make_schema(AttributeSchema("p", dtype, True), AttributeSchema("q", dtype, False))
    for value in good:
        primary, custom = process_attributes(schema, {"p": value}, {"q": value})
        assert primary["p"] == custom["q"]
    for value in bad:
        with pytest.raises(DekerValidationError, match='Key attribute "p" invalid type'):
            process_attributes(schema, {"p": value}, None)
        with pytest.raises(DekerValidationError, match='Custom attribute "q" invalid type'):
            process_attributes(schema, {"p": good[0]}, {"q": value})


def test_reference_is_exact_not_prefix() -> None:
    schema = make_schema(
        AttributeSchema("dt", datetime, False),
        AttributeSchema("dt2", datetime, False),
        dims=[TimeDimensionSchema("t", 2, "$dt2", HOUR)],
    )
    _, custom = process_attributes(schema, None, {"dt2": T0})
    assert custom == {"dt": None, "dt2": T0}
    with pytest.raises(DekerValidationError, match='"dt2" cannot be None'):
        process_attributes(schema, None, {"dt": T0})


# -------------------------------------------------------------------------- process_custom_update
CURRENT = process_attributes(FULL, GOOD_PRIMARY, {"c": 1.5, "dt": T0, "tup": (1,)})


@pytest.mark.parametrize(
    ("update", "match"),
    [
        (None, "No attributes passed for update"),
        ({}, "No attributes passed for update"),
        ([("c", 1.0)], "Invalid attributes type"),
        ({"a": 2}, r"Primary attributes cannot change: \['a'\] identifies the Array"),
        ({"zz": 2}, "not listed in schema"),
        ({"c": 2}, 'Custom attribute "c" invalid type'),
        ({"dt": None}, '"dt" cannot be None'),
    ],
)
def test_custom_update_rules(update: Any, match: str) -> None:
    primary, custom = CURRENT
    with pytest.raises(DekerValidationError, match=match):
        process_custom_update(FULL, primary, custom, update)


def test_custom_update_is_partial() -> None:
    primary, custom = CURRENT
    new = process_custom_update(FULL, primary, custom, {"tup": (2, 3), "c": None})
    assert list(new.items()) == [("c", None), ("dt", T0), ("tup", (2, 3))]
    assert custom == {"c": 1.5, "dt": T0, "tup": (1,)}  # not mutated
    new = process_custom_update(FULL, primary, custom, {"dt": datetime(2024, 1, 1)})
    assert new == {"c": 1.5, "dt": datetime(2024, 1, 1, tzinfo=UTC), "tup": (1,)}


def test_custom_update_every_dimension_is_time_reference() -> None:
    # deker 1.1.7 reset "c" and "tup" to None here (SPEC §1.9.2 quirk); we keep them
    schema = make_schema(
        AttributeSchema("dt", datetime, False),
        AttributeSchema("c", float, False),
        AttributeSchema("tup", tuple, False),
        dims=[TimeDimensionSchema("t", 2, "$dt", HOUR)],
    )
    _, custom = process_attributes(schema, None, {"dt": T0, "c": 2.0, "tup": ("a",)})
    new = process_custom_update(schema, {}, custom, {"c": 3.0}, kind="VArray")
    assert new == {"dt": T0, "c": 3.0, "tup": ("a",)}


# ----------------------------------------------------------------------------- normalize_filters
FILTER_SCHEMA = make_schema(
    AttributeSchema("i", int, True),
    AttributeSchema("q", float, True),
    AttributeSchema("z", complex, True),
    AttributeSchema("s", str, True),
    AttributeSchema("when", datetime, True),
    AttributeSchema("v_position", tuple, True),
    AttributeSchema("n32", np.int32, True),
    AttributeSchema("extra", float, False),
)
FILTER = {"i": 1, "q": 2.0, "z": 1 + 0j, "s": "a", "when": T0, "v_position": (0, 1), "n32": np.int32(3)}


def test_filter_by_id() -> None:
    ident = str(uuid.uuid4())
    assert normalize_filters(FILTER_SCHEMA, {"id": ident}) == {"id": ident}
    assert normalize_filters(NO_ATTRS, {"id": ident}) == {"id": ident}
    for bad in ("abc", 1, None, ident.replace("-", ""), "{" + ident + "}", "x" * 36):
        with pytest.raises(DekerValidationError, match="uuid"):
            normalize_filters(FILTER_SCHEMA, {"id": bad})


@pytest.mark.parametrize(
    ("schema", "filters", "exc", "match"),
    [
        (NO_ATTRS, {"a": 1}, DekerUnknownFilterError, "Unknown filter key 'a': not an attribute"),
        (CUSTOM_ONLY, {"c": 1.0}, NotImplementedError, "not implemented yet"),
        (FILTER_SCHEMA, {**FILTER, "nope": 1}, DekerUnknownFilterError, "Unknown filter key 'nope'"),
        (FILTER_SCHEMA, {"nope": 1, "zz": 2}, DekerFilterError, "Unknown filter keys 'nope', 'zz'"),
        (
            FILTER_SCHEMA,
            {k: v for k, v in FILTER.items() if k != "q"},
            NotImplementedError,
            "not implemented",
        ),
        (FILTER_SCHEMA, {**FILTER, "q": None}, NotImplementedError, "not implemented"),
        (FILTER_SCHEMA, {**FILTER, "extra": 1.0}, NotImplementedError, "not implemented"),
        (FILTER_SCHEMA, {}, NotImplementedError, "not implemented"),
        (FILTER_SCHEMA, {**FILTER, "i": 1.5}, DekerValidationError, '"i" is invalid'),
        (FILTER_SCHEMA, {**FILTER, "i": "1"}, DekerValidationError, '"i" is invalid'),
        (FILTER_SCHEMA, {**FILTER, "q": "2"}, DekerValidationError, '"q" is invalid'),
        (FILTER_SCHEMA, {**FILTER, "q": True}, DekerValidationError, '"q" is invalid'),
        (FILTER_SCHEMA, {**FILTER, "q": 1 + 1j}, DekerValidationError, '"q" is invalid'),
        (FILTER_SCHEMA, {**FILTER, "s": 1}, DekerValidationError, '"s" is invalid'),
        (FILTER_SCHEMA, {**FILTER, "when": "tomorrow"}, DekerValidationError, '"when" is invalid'),
        (FILTER_SCHEMA, {**FILTER, "when": 5}, DekerValidationError, '"when" is invalid'),
        (FILTER_SCHEMA, {**FILTER, "v_position": "0-1"}, DekerValidationError, '"v_position" is invalid'),
        (FILTER_SCHEMA, {**FILTER, "v_position": (0, {1})}, DekerValidationError, '"v_position" is invalid'),
        (FILTER_SCHEMA, {**FILTER, "n32": 2**40}, DekerValidationError, '"n32" is invalid'),
        (FILTER_SCHEMA, [("i", 1)], DekerValidationError, "shall be a dict"),
    ],
)
def test_filter_errors(schema: ArraySchema, filters: Any, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        normalize_filters(schema, filters)


def test_filter_coercion() -> None:
    query = normalize_filters(
        FILTER_SCHEMA,
        {
            "n32": 3.0,
            "v_position": [np.int64(0), 1],
            "when": "2023-01-01T03:00:00+03:00",
            "s": np.str_("a"),
            "z": 1,
            "q": 2,
            "i": np.float64(1.0),
        },
    )
    assert list(query) == list(FILTER)  # schema order
    assert query == FILTER
    assert type(query["i"]) is int and type(query["q"]) is float and type(query["z"]) is complex
    assert type(query["n32"]) is np.int32 and query["v_position"] == (0, 1)
    assert query["when"].tzinfo is not None
    naive = normalize_filters(FILTER_SCHEMA, {**FILTER, "when": datetime(2023, 1, 1), "i": True})
    assert naive["when"] == T0 and naive["i"] == 1


def test_a_datetime64_filter_finer_than_a_microsecond_is_refused() -> None:
    """Truncated to a datetime, it found the array keyed by the microsecond below it."""
    exact = np.datetime64("2023-01-01T00:00:00.000001", "ns")
    found = normalize_filters(FILTER_SCHEMA, {**FILTER, "when": exact})
    assert found["when"] == T0 + timedelta(microseconds=1)
    finer = np.datetime64("2023-01-01T00:00:00.000000999", "ns")
    with pytest.raises(DekerValidationError, match="finer than a microsecond"):
        normalize_filters(FILTER_SCHEMA, {**FILTER, "when": finer})


@given(
    st.integers(-(2**53), 2**53),
    st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1)),
    st.lists(st.integers(0, 50), min_size=1, max_size=4),
)
def test_filter_finds_what_creation_stored(number: int, when: datetime, position: list[int]) -> None:
    schema = make_schema(
        AttributeSchema("q", float, True),
        AttributeSchema("i", int, True),
        AttributeSchema("when", datetime, True),
        AttributeSchema("v_position", tuple, True),
    )
    stored, _ = process_attributes(
        schema, {"q": float(number), "i": number, "when": when, "v_position": tuple(position)}, None
    )
    as_ints = {"q": number, "i": float(number), "when": when.isoformat(), "v_position": position}
    for filters in (stored, as_ints, {**as_ints, "q": np.int64(number), "when": when.replace(tzinfo=UTC)}):
        query = normalize_filters(schema, filters)
        assert query == stored
        assert primary_key_components(schema, query) == primary_key_components(schema, stored)


# ------------------------------------------------------------------------------------ validate_id
def test_validate_id() -> None:
    for good in (str(uuid.uuid4()), str(uuid.uuid1()), str(uuid.uuid5(uuid.NAMESPACE_DNS, "x")).upper()):
        assert validate_id(good, "Array") == good
    for bad in (
        "",
        "abc",
        5,
        None,
        uuid.uuid4(),
        str(uuid.uuid4())[:-1] + "g",
        "-" * 36,
        "a-b-c-d-" + "e" * 28,
    ):
        with pytest.raises(DekerValidationError, match=r"^VArray id shall be a non-empty uuid"):
            validate_id(bad, "VArray")


# ------------------------------------------------------------------------------ path components
def test_primary_key_components() -> None:
    schema = make_schema(
        AttributeSchema("when", datetime, True),
        AttributeSchema("v_position", tuple, True),
        AttributeSchema("q", float, True),
        AttributeSchema("tup", tuple, True),
        AttributeSchema("flag", int, True),
        AttributeSchema("z", complex, True),
        AttributeSchema("custom", str, False),
    )
    primary, _ = process_attributes(
        schema,
        {
            "when": T0,
            "v_position": (1, 0, 2),
            "q": 1.0,
            "tup": (np.int64(1), np.float64(0.5), "s", (2,)),
            "flag": True,
            "z": 1 + 2j,
        },
        {"custom": "ignored"},
    )
    assert primary_key_components(schema, primary) == (
        "2023-01-01T00:00:00+00:00",
        "1-0-2",
        "1.0",
        "(1, 0.5, 's', (2,))",  # as deker 1.1.7 printed it on numpy 1.x
        "1",
        "(1+2j)",
    )
    with pytest.raises(DekerValidationError, match="Key attribute missing: z"):
        primary_key_components(schema, {k: v for k, v in primary.items() if k != "z"})


@pytest.mark.parametrize("value", ["", " ", ".", "..", "a/b", "/", "../x", "a\x00b", "x" * 256, "é" * 128])
def test_hostile_primary_values_rejected(value: str) -> None:
    schema = make_schema(AttributeSchema("name", str, True))
    primary, _ = process_attributes(schema, {"name": value}, None)
    with pytest.raises(DekerValidationError, match='Primary attribute "name" value'):
        primary_key_components(schema, primary)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty or blank"),
        ("  \t", "empty or blank"),
        (".", "special directory"),
        ("..", "special directory"),
        ("a/b", "'/'"),
        ("\x00", "NUL"),
        ("x" * 256, "256 bytes"),
        ("é" * 128, "256 bytes"),
        ("\ud800", "UTF-8"),
        (5, "shall be a string"),
    ],
)
def test_check_path_component_rejects(text: Any, match: str) -> None:
    with pytest.raises(DekerValidationError, match=match):
        check_path_component(text, "Collection name")


@pytest.mark.parametrize("text", ["a", "...", ".hidden", "x" * 255, "é" * 127, "日本語", "a b", "a\\b", "-"])
def test_check_path_component_accepts(text: str) -> None:
    assert check_path_component(text, "Collection name") == text


HOSTILE = st.one_of(
    st.text(),
    st.text(alphabet=st.sampled_from(["/", ".", "\x00", "a", " ", "é", "\\", "\ud800"]), max_size=300),
    st.sampled_from([".", "..", "/", "../..", "a/../b"]),
    st.text(min_size=200, max_size=300),
)


@given(HOSTILE)
def test_check_path_component_is_one_safe_component(text: str) -> None:
    root = PurePosixPath("/root")
    try:
        result = check_path_component(text, "Collection name")
    except DekerValidationError:
        unsafe = (
            not text.strip()
            or text in (".", "..")
            or "/" in text
            or "\x00" in text
            or len(text.encode("utf-8", "surrogatepass")) > 255
            or any(0xD800 <= ord(ch) <= 0xDFFF for ch in text)
        )
        assert unsafe
    else:
        assert result == text
        joined = root / result
        assert joined.parent == root and joined.name == text
        assert len(text.encode("utf-8")) <= 255 and "\x00" not in text


# ------------------------------------------------------------------------ signed zeros, NaN keys
ZERO_KEYS = make_schema(
    AttributeSchema("q", float, True),
    AttributeSchema("z", complex, True),
    AttributeSchema("tup", tuple, True),
    AttributeSchema("f4", np.float32, True),
    AttributeSchema("note", float, False),
)


def _signs(value: Any) -> Any:
    """The sign bits of every float inside ``value``, to tell ``-0.0`` from ``0.0``."""
    if isinstance(value, (tuple, list)):
        return type(value)(_signs(v) for v in value)
    if isinstance(value, (complex, np.complexfloating)):
        return (np.signbit(value.real), np.signbit(value.imag))
    if isinstance(value, (float, np.floating)):
        return bool(np.signbit(value))
    return value


def test_negative_zeros_of_a_primary_key_become_zeros() -> None:
    primary, custom = process_attributes(
        ZERO_KEYS,
        {
            "q": -0.0,
            "z": complex(-0.0, -0.0),
            "tup": (-0.0, (1, np.float64(-0.0)), "s"),
            "f4": np.float32(-0.0),
        },
        {"note": -0.0},
    )
    assert primary == {"q": 0.0, "z": 0j, "tup": (0.0, (1, 0.0), "s"), "f4": 0.0}
    assert _signs(list(primary.values())) == [False, (False, False), (False, (1, False), "s"), False]
    assert type(primary["f4"]) is np.float32 and type(primary["tup"][1][1]) is np.float64  # types kept
    assert np.signbit(custom["note"])  # a custom value is not a key: kept as given
    assert primary_key_components(ZERO_KEYS, primary) == ("0.0", "0j", "(0.0, (1, 0.0), 's')", "0.0")
    other, _ = process_attributes(
        ZERO_KEYS, {"q": 0.0, "z": 0j, "tup": (0.0, (1, 0.0), "s"), "f4": np.float32(0)}, {}
    )
    assert primary_key_components(ZERO_KEYS, other) == primary_key_components(ZERO_KEYS, primary)


def test_filter_values_lose_their_negative_zeros() -> None:
    query = normalize_filters(ZERO_KEYS, {"q": -0.0, "z": complex(1, -0.0), "tup": [-0.0], "f4": -0})
    assert _signs(list(query.values())) == [False, (False, False), (False,), False]
    assert primary_key_components(ZERO_KEYS, query) == ("0.0", "(1+0j)", "(0.0,)", "0.0")


def test_other_values_are_unchanged() -> None:
    values = {"q": float("-inf"), "z": complex(-1.5, float("nan")), "tup": (-2.0, None), "f4": np.float32(-3)}
    primary, _ = process_attributes(ZERO_KEYS, values, {})
    assert primary["q"] == float("-inf") and primary["tup"] == (-2.0, None) and primary["f4"] == -3
    assert primary["z"].real == -1.5 and np.isnan(primary["z"].imag)
    assert equal_key_components(ZERO_KEYS, {"q": 1.0, "z": 2 + 3j, "tup": (1.5,), "f4": np.float32(2)}) == []


def test_nan_keys_are_one_key() -> None:
    """``nan != nan``, yet every NaN is spelt ``nan``: a NaN key names one array (as in 1.1.7)."""
    schema = make_schema(AttributeSchema("q", float, True))
    spellings = set()
    for nan in (float("nan"), -float("nan"), np.float64("nan"), float(np.float32("nan"))):
        primary, _ = process_attributes(schema, {"q": nan}, {})
        spellings.add(primary_key_components(schema, primary))
        spellings.add(primary_key_components(schema, normalize_filters(schema, {"q": nan})))
        assert equal_key_components(schema, primary) == []
    assert spellings == {("nan",)}


def test_equal_key_components_are_the_spellings_with_negative_zeros() -> None:
    schema = make_schema(AttributeSchema("q", float, True), AttributeSchema("k", int, True))
    assert equal_key_components(schema, {"q": 0.0, "k": 0}) == [("-0.0", "0")]
    assert equal_key_components(schema, {"q": 1.0, "k": 0}) == []
    assert equal_key_components(schema, {"q": 0.0}) == []  # incomplete key: nothing to look for
    primary, _ = process_attributes(
        ZERO_KEYS, {"q": 0.0, "z": 1j, "tup": (0.0, 5.0), "f4": np.float32(1)}, {}
    )
    found = equal_key_components(ZERO_KEYS, primary)
    assert len(found) == 2 * 2 * 2 - 1 and len(set(found)) == len(found)
    assert ("0.0", "1j", "(0.0, 5.0)", "1.0") not in found  # the key's own spelling is not repeated
    assert ("-0.0", "(-0+1j)", "(-0.0, 5.0)", "1.0") in found
    many, _ = process_attributes(ZERO_KEYS, {"q": 0.0, "z": 0j, "tup": (0.0,) * 40, "f4": np.float32(0)}, {})
    assert len(equal_key_components(ZERO_KEYS, many)) == MAX_EQUAL_KEY_SPELLINGS  # bounded


@pytest.mark.parametrize("name", ["c.lock", "x.LOCK", "a.b.Lock", ".lock"])
def test_new_collection_names_ending_with_lock_are_refused(name: str) -> None:
    with pytest.raises(DekerValidationError, match=r"ends with '\.lock'.*lock files of collections"):
        check_new_collection_name(name)


@pytest.mark.parametrize("name", ["c", "lock", "c.locks", "c.lock.json", "clock", "c-lock"])
def test_other_new_collection_names_are_accepted(name: str) -> None:
    assert check_new_collection_name(name) == name


def test_new_collection_names_follow_the_component_rules_too() -> None:
    with pytest.raises(DekerValidationError, match="'/'"):
        check_new_collection_name("a/b")
