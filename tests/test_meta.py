"""Tests of deker.meta: collection and array metadata codecs, byte-compatible with deker 1.1.7."""

from __future__ import annotations

import copy
import json
import string
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from deker.dtypes import ARRAY_DTYPES
from deker.errors import DekerMetaDataError
from deker.meta import (
    CURRENT_METADATA_VERSION,
    CollectionMeta,
    as_read_back,
    collection_meta_as_dict,
    decode_array_meta,
    decode_collection_meta,
    deserialize_attributes,
    encode_array_meta,
    encode_collection_meta,
    meta_storage_dtype,
    serialize_attribute_value,
)
from deker.options import HDF5CompressionOpts, HDF5Options
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

# ------------------------------------------------------------------------------- strategies
names = st.text(alphabet=string.ascii_letters + string.digits + "_.-é☃", min_size=1, max_size=6)
ATTR_TYPES = [int, float, complex, str, tuple, datetime, np.int32, np.float32, np.complex128, np.uint8]
naive_datetimes = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1))
steps = st.timedeltas(min_value=timedelta(days=-400), max_value=timedelta(days=400)).filter(bool)
finite = st.floats(allow_nan=False, allow_infinity=False)
non_zero = st.floats(min_value=1e-300, max_value=1e300) | st.floats(min_value=-1e300, max_value=-1e-300)


def fill_values(dtype: type) -> st.SearchStrategy[Any]:
    if dtype in (int, float, complex):
        dtype = {int: np.int64, float: np.float64, complex: np.complex128}[dtype]
    if issubclass(dtype, np.integer):
        info = np.iinfo(dtype)
        return st.none() | st.integers(int(info.min), int(info.max))
    if issubclass(dtype, np.complexfloating):
        width = 64 if dtype is np.complex64 else 128
        # a partly-NaN complex is stored as null by deker 1.1.7 (lossy): not generated here
        return st.none() | st.just(complex("nan")) | st.complex_numbers(width=width, allow_nan=False)
    width = {np.float16: 16, np.float32: 32}.get(dtype, 64)
    return st.none() | st.floats(width=width)


@st.composite
def dimensions(draw: st.DrawFn, datetime_attrs: list[str]) -> list[DimensionSchema | TimeDimensionSchema]:
    dim_names = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    dims: list[DimensionSchema | TimeDimensionSchema] = []
    for name in dim_names:
        size = draw(st.sampled_from([1, 2, 3, 4, 6, 12]))
        kind = draw(st.sampled_from(["plain", "labels", "scale", "time"]))
        if kind == "time":
            refs = [f"${a}" for a in datetime_attrs]
            start = draw(st.sampled_from(refs) | naive_datetimes if refs else naive_datetimes)
            dims.append(TimeDimensionSchema(name, size, start, draw(steps)))
        elif kind == "labels":
            labels = draw(
                st.lists(names, min_size=size, max_size=size, unique=True)
                | st.lists(finite, min_size=size, max_size=size, unique_by=lambda x: x + 0.0)
            )
            dims.append(DimensionSchema(name, size, labels=labels))
        elif kind == "scale":
            scale = Scale(draw(finite), draw(non_zero), draw(st.none() | names))
            dims.append(DimensionSchema(name, size, scale=scale if draw(st.booleans()) else scale._asdict()))
        else:
            dims.append(DimensionSchema(name, size))
    return dims


@st.composite
def schemas(draw: st.DrawFn) -> ArraySchema | VArraySchema:
    attr_names = draw(st.lists(names, max_size=5, unique=True))
    attrs = [AttributeSchema(n, draw(st.sampled_from(ATTR_TYPES)), draw(st.booleans())) for n in attr_names]
    dims = draw(dimensions([a.name for a in attrs if a.dtype is datetime]))
    dtype = draw(st.sampled_from([*ARRAY_DTYPES, int, float, complex]))
    fill = draw(fill_values(dtype))
    attributes = attrs if attrs or draw(st.booleans()) else None
    if draw(st.booleans()):
        return ArraySchema(dtype=dtype, dimensions=dims, fill_value=fill, attributes=attributes)
    splitter = [
        draw(st.sampled_from([d for d in range(1, dim.size + 1) if dim.size % d == 0])) for dim in dims
    ]
    if draw(st.booleans()):
        return VArraySchema(
            dtype=dtype, dimensions=dims, vgrid=splitter, fill_value=fill, attributes=attributes
        )
    return VArraySchema(
        dtype=dtype, dimensions=dims, arrays_shape=splitter, fill_value=fill, attributes=attributes
    )


compressions = st.sampled_from(
    [
        HDF5CompressionOpts(None, None),
        HDF5CompressionOpts("gzip", 4),
        HDF5CompressionOpts("gzip", None),
        HDF5CompressionOpts("lzf", None),
        HDF5CompressionOpts("szip", ("nn", 16)),
        HDF5CompressionOpts(32015, (3,)),
        HDF5CompressionOpts(32001, (0, 0, 0, 0, 5, 1, 1)),
    ]
)
options = st.none() | st.builds(
    HDF5Options,
    chunks=st.none() | st.just(True) | st.lists(st.integers(1, 100), min_size=1, max_size=4),
    compression_opts=compressions,
)


@given(name=names, schema=schemas(), opts=options)
def test_collection_meta_round_trip(
    name: str, schema: ArraySchema | VArraySchema, opts: HDF5Options | None
) -> None:
    meta = CollectionMeta(name, schema, opts)
    text = encode_collection_meta(meta)
    decoded = decode_collection_meta(text)
    assert decoded == meta
    assert encode_collection_meta(decoded) == text
    assert decode_collection_meta(text.encode("utf-8")) == meta
    as_dict = collection_meta_as_dict(meta)
    frozen = copy.deepcopy(as_dict)
    assert decode_collection_meta(as_dict) == meta  # tuples (not lists) are accepted too
    assert as_dict == frozen  # the input is not modified
    assert json.loads(text)["type"] == meta.kind
    if isinstance(schema, VArraySchema):
        tiles = tile_schema(schema)
        assert tiles.shape == schema.arrays_shape
        assert tile_schema(decoded.schema) == tiles  # type: ignore[arg-type]


def test_collection_meta_defaults() -> None:
    schema = ArraySchema(dtype=float, dimensions=[DimensionSchema("x", 2)])
    meta = CollectionMeta("c", schema)
    assert meta.kind == "array"
    assert meta.options is None and meta.storage_adapter == "HDF5StorageAdapter"
    assert meta.metadata_version == CURRENT_METADATA_VERSION == "0.2"
    assert encode_collection_meta(meta) == (
        '{"name": "c", "type": "array", "schema": {"dimensions": [{"name": "x", "size": 2, "labels": null, '
        '"scale": null, "type": "generic"}], "dtype": "numpy.float64", "attributes": [], '
        '"fill_value": null}, '
        '"options": null, "storage_adapter": "HDF5StorageAdapter", "metadata_version": "0.2"}'
    )
    v = CollectionMeta("v", VArraySchema(dtype=float, dimensions=[DimensionSchema("x", 2)], vgrid=[2]))
    assert v.kind == "varray"


# ---------------------------------------------------------------------------- decoding rules
BASE: dict[str, Any] = {
    "name": "coll",
    "type": "array",
    "schema": {
        "dimensions": [{"name": "x", "size": 3, "labels": None, "scale": None, "type": "generic"}],
        "dtype": "numpy.int16",
        "attributes": [{"name": "a", "primary": True, "dtype": "int"}],
        "fill_value": "-32768",
    },
    "options": None,
    "storage_adapter": "HDF5StorageAdapter",
    "metadata_version": "0.2",
}


def variant(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        target = data
        *path, last = dotted.split("__")
        for key in path:
            target = target[key] if not key.isdigit() else target[int(key)]
        if value is KeyError:
            del target[last]
        else:
            target[last] = value
    return data


def test_decode_defaults_and_old_version() -> None:
    data = variant(options=KeyError, schema__fill_value=KeyError, schema__attributes=KeyError)
    data["schema"]["dimensions"] = [{"name": "x", "size": 3}]
    data["metadata_version"] = "0.1"
    frozen = copy.deepcopy(data)
    meta = decode_collection_meta(data)
    assert data == frozen
    assert meta.options is None
    assert meta.schema == ArraySchema(dtype=np.int16, dimensions=[DimensionSchema("x", 3)])
    assert meta.metadata_version == "0.2"  # read as the current version, as deker 1.1.7 does


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ("{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        ("[1, 2]", "shall be a JSON object"),
        (variant(metadata_version=KeyError), 'Collection "coll" metadata has no metadata_version'),
        (variant(metadata_version="0.3"), "newer than the supported 0.2"),
        (variant(metadata_version="0.10"), "newer than the supported"),  # FIX §8.13: numeric comparison
        (variant(metadata_version="1.0"), "newer than the supported"),
        (variant(metadata_version="zero"), "invalid metadata_version"),
        (variant(name=KeyError), "'name' shall be a non-empty string"),
        (variant(type="table"), 'Collection "coll" metadata is invalid/corrupted: unknown collection type'),
        (variant(type=KeyError), "unknown collection type"),
        (variant(schema=KeyError), "missing 'schema'"),
        (variant(schema=[1]), "'schema' has an invalid value"),
        (variant(schema__dtype="numpy.bool_"), "Unknown dtype name"),
        (variant(schema__dtype="string"), "Unknown dtype name"),
        (variant(schema__dtype=KeyError), "missing 'dtype'"),
        (variant(schema__dimensions=KeyError), "missing 'dimensions'"),
        (variant(schema__dimensions=[]), "Dimensions shall be"),
        (variant(schema__dimensions=[5]), "a dimension shall be an object"),
        (variant(schema__dimensions__0__name=KeyError), "missing 'name'"),
        (variant(schema__dimensions__0__size=KeyError), "missing 'size'"),
        (variant(schema__dimensions__0__size=-3), "positive integer"),
        (variant(schema__dimensions__0__labels=["a"]), "do not match dimension size"),
        (variant(schema__dimensions__0__scale={"start": 1}), "unknown keys"),
        (variant(schema__dimensions__0__type="time"), "missing 'step'"),
        (variant(schema__fill_value="abc"), "invalid/corrupted"),
        (variant(schema__fill_value="70000"), "invalid/corrupted"),
        (
            variant(schema__attributes=[{"name": "a", "primary": True, "dtype": "list"}]),
            "Invalid dtype value|Unknown",
        ),
        (variant(schema__attributes=[{"name": "a", "dtype": "int"}]), "missing 'primary'"),
        (variant(schema__attributes=[5]), "an attribute shall be an object"),
        (variant(schema__vgrid=[1]), "unknown schema keys"),
        (variant(type="varray"), "Either `vgrid` or `arrays_shape`"),
        (variant(type="varray", schema__vgrid=[2]), "split by vgrid"),
        (variant(options={"chunks": {"mode": "manual", "size": [0]}}), "Invalid chunks"),
        (
            variant(options={"compression": {"compression": "blosc", "options": []}}),
            "Unknown stored compression",
        ),
        (variant(options=[1]), "Options shall be an object"),
        (variant(storage_adapter=5), "'storage_adapter' shall be a string"),
    ],
)
def test_decode_errors(data: Any, match: str) -> None:
    with pytest.raises(DekerMetaDataError, match=match):
        decode_collection_meta(data if isinstance(data, (str, bytes)) else json.dumps(data))


def test_decode_time_dimensions() -> None:
    data = variant()
    data["schema"]["dimensions"] = [
        {"name": "t", "size": 2, "type": "time", "start_value": "$a_dt", "step": {"days": 1}},
        {"name": "u", "size": 2, "start_value": "2023-01-01T00:00:00", "step": {"seconds": 60}},
    ]
    data["schema"]["attributes"] = [{"name": "a_dt", "primary": False, "dtype": "datetime"}]
    meta = decode_collection_meta(data)
    t, u = meta.schema.dimensions
    assert t == TimeDimensionSchema("t", 2, "$a_dt", timedelta(days=1))
    assert u == TimeDimensionSchema("u", 2, datetime(2023, 1, 1, tzinfo=UTC), timedelta(minutes=1))


# --------------------------------------------------------------------------- array metadata
def test_encode_array_meta_values() -> None:
    payload = encode_array_meta(
        "id-1",
        {"dt": datetime(2023, 1, 1, tzinfo=UTC), "v_position": (0, 1)},
        {
            "c": 1 + 2j,
            "nc": np.complex64(0.5 - 1j),
            "i": np.int32(3),
            "f": np.float32(0.5),
            "ld": np.longdouble(2.0),
            "arr": np.array([[1, 2], [3, 4]]),
            "nested": (1, (2.5, "x"), [None, 1j], True),
            "none": None,
            "s": "é",
            "b": np.bool_(True),
        },
    )
    assert isinstance(payload, bytes)
    assert json.loads(payload) == {
        "id": "id-1",
        "primary_attributes": {"dt": "2023-01-01T00:00:00+00:00", "v_position": [0, 1]},
        "custom_attributes": {
            "c": "(1+2j)",
            "nc": "(0.5-1j)",
            "i": 3,
            "f": 0.5,
            "ld": 2.0,
            "arr": [[1, 2], [3, 4]],
            "nested": [1, [2.5, "x"], [None, "(0+1j)"], True],  # 1.1.7 wrote "1j": read as a str
            "none": None,
            "s": "é",
            "b": True,
        },
    }
    assert payload.startswith(b'{"id": "id-1", "primary_attributes": {"dt": "2023-01-01T00:00:00+00:00"')
    with pytest.raises(Exception, match="Cannot store attribute value"):
        serialize_attribute_value({1, 2})


def test_meta_storage_dtype_is_getsizeof() -> None:
    for payload in (b"", b"{}", encode_array_meta("x", {"a": 1}, {})):
        assert meta_storage_dtype(payload) == f"S{sys.getsizeof(payload)}"


def test_decode_array_meta_forms() -> None:
    payload = encode_array_meta("abc", {"a": 1}, {"b": None})
    expected = {"id": "abc", "primary_attributes": {"a": 1}, "custom_attributes": {"b": None}}
    assert decode_array_meta(payload) == expected
    assert decode_array_meta(payload + b"\0" * 33) == expected
    assert decode_array_meta(np.bytes_(payload)) == expected
    assert decode_array_meta(payload.decode()) == expected


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"garbage",
        b"\xff\xfe{}",
        b"[]",
        b'{"primary_attributes": {}, "custom_attributes": {}}',
        b'{"id": 5, "primary_attributes": {}, "custom_attributes": {}}',
        b'{"id": "x", "primary_attributes": [], "custom_attributes": {}}',
        b'{"id": "x", "primary_attributes": {}}',
    ],
)
def test_decode_array_meta_garbage(bad: bytes) -> None:
    with pytest.raises(DekerMetaDataError):
        decode_array_meta(bad)


ALL_ATTRS = [
    AttributeSchema("dt", datetime, True),
    AttributeSchema("t", tuple, False),
    AttributeSchema("c", complex, False),
    AttributeSchema("s", str, False),
    AttributeSchema("i", int, False),
    AttributeSchema("f", float, False),
    AttributeSchema("n", np.int16, False),
    AttributeSchema("nc", np.complex64, False),
    AttributeSchema("missing", int, False),
]


def test_deserialize_attributes_types_and_order() -> None:
    raw = {
        "f": 1.5,
        "i": 7,
        "s": "(1+2j)",
        "c": "(1+2j)",
        "t": [1, [2.5, "(3-4j)", "x"], None, "2j"],
        "dt": "2023-01-01T00:00:00+00:00",
        "n": 12,
        "nc": "(0.5-1j)",
        "extra": "ignored",
    }
    typed = deserialize_attributes(raw, ALL_ATTRS)
    assert list(typed) == [a.name for a in ALL_ATTRS]
    assert typed["dt"] == datetime(2023, 1, 1, tzinfo=UTC) and typed["dt"].tzinfo is not None
    # deker 1.1.7's quirk when reading: a complex-looking string inside a tuple becomes complex
    assert typed["t"] == (1, (2.5, 3 - 4j, "x"), None, "2j")
    assert typed["c"] == 1 + 2j and type(typed["c"]) is complex
    assert typed["s"] == "(1+2j)"  # only inside tuples
    assert typed["i"] == 7 and type(typed["i"]) is int
    assert type(typed["f"]) is float
    assert type(typed["n"]) is np.int16 and typed["n"] == 12
    assert type(typed["nc"]) is np.complex64 and typed["nc"] == np.complex64(0.5 - 1j)
    assert typed["missing"] is None


def test_deserialize_datetime_str_form() -> None:
    # update_custom_attributes of deker 1.1.7 writes str(dt) (space separator)
    iso = deserialize_attributes({"dt": "2023-01-01T05:00:00+00:00"}, ALL_ATTRS[:1])
    spaced = deserialize_attributes({"dt": "2023-01-01 05:00:00+00:00"}, ALL_ATTRS[:1])
    assert iso == spaced == {"dt": datetime(2023, 1, 1, 5, tzinfo=UTC)}
    # the typed value re-encodes in the isoformat form (deker's own writing form)
    assert b'"dt": "2023-01-01T05:00:00+00:00"' in encode_array_meta("x", spaced, {})


@pytest.mark.parametrize(
    ("raw", "attr"),
    [
        ({"i": "abc"}, AttributeSchema("i", int, False)),
        ({"i": 1.5}, AttributeSchema("i", int, False)),
        ({"dt": "yesterday"}, AttributeSchema("dt", datetime, False)),
        ({"dt": [1]}, AttributeSchema("dt", datetime, False)),
        ({"t": "abc"}, AttributeSchema("t", tuple, False)),
        ({"c": "1+"}, AttributeSchema("c", complex, False)),
        ({"n": 70000}, AttributeSchema("n", np.int16, False)),
    ],
)
def test_deserialize_invalid(raw: dict[str, Any], attr: AttributeSchema) -> None:
    with pytest.raises(DekerMetaDataError, match=attr.name):
        deserialize_attributes(raw, [attr])


@given(
    dt=naive_datetimes,
    t=st.recursive(
        st.none() | st.integers() | finite | st.text(alphabet=string.ascii_letters, max_size=4),
        lambda inner: st.lists(inner, max_size=3).map(tuple),
        max_leaves=6,
    ).map(lambda v: v if isinstance(v, tuple) else (v,)),
    c=st.complex_numbers(allow_nan=False),
    i=st.integers(),
    f=finite,
)
def test_array_meta_typed_round_trip(dt: datetime, t: tuple[Any, ...], c: complex, i: int, f: float) -> None:
    attrs = ALL_ATTRS[:6]
    primary = {"dt": dt.replace(tzinfo=UTC)}
    custom = {"t": t, "c": c, "s": "x", "i": i, "f": f}
    payload = encode_array_meta("some-id", primary, custom)
    raw = decode_array_meta(payload)
    assert deserialize_attributes(raw["primary_attributes"], attrs[:1]) == primary
    assert deserialize_attributes(raw["custom_attributes"], attrs[1:]) == custom
    again = encode_array_meta(
        raw["id"],
        deserialize_attributes(raw["primary_attributes"], attrs[:1]),
        deserialize_attributes(raw["custom_attributes"], attrs[1:]),
    )
    assert again == payload


# ------------------------------------------------------------------ deker 1.1.7 fixture files
def _collection_files(legacy_storage: Path) -> list[Path]:
    files = sorted((legacy_storage / "collections").glob("*/*.json"))
    assert len(files) >= 6
    return files


def test_fixture_collection_files_round_trip(legacy_storage: Path) -> None:
    for path in _collection_files(legacy_storage):
        text = path.read_bytes()
        meta = decode_collection_meta(text)
        assert meta.name == path.stem
        assert encode_collection_meta(meta).encode("utf-8") == text, path


def _check_payload(payload: bytes, schema: ArraySchema | VArraySchema) -> None:
    raw = decode_array_meta(payload)
    assert encode_array_meta(raw["id"], raw["primary_attributes"], raw["custom_attributes"]) == payload
    primary = deserialize_attributes(raw["primary_attributes"], schema.primary_attributes or ())
    custom = deserialize_attributes(raw["custom_attributes"], schema.custom_attributes or ())
    assert list(primary) == list(raw["primary_attributes"])
    assert list(custom) == list(raw["custom_attributes"])
    if b" 00:00:00+" in payload:  # pragma: no cover - str(dt) written by update_custom_attributes
        assert decode_array_meta(encode_array_meta(raw["id"], primary, custom)) is not None
    else:
        assert encode_array_meta(raw["id"], primary, custom) == payload


def test_fixture_array_meta_round_trip(legacy_storage: Path) -> None:
    checked = 0
    for coll_file in _collection_files(legacy_storage):
        meta = decode_collection_meta(coll_file.read_bytes())
        schema = tile_schema(meta.schema) if isinstance(meta.schema, VArraySchema) else meta.schema
        for data_file in sorted((coll_file.parent / "array_data").glob("**/*.hdf5")):
            with h5py.File(data_file, "r", locking=False) as f:
                dataset = f["meta"]
                stored = dataset[()]
                payload = stored.rstrip(b"\0")
                assert dataset.dtype == np.dtype(meta_storage_dtype(payload))
                assert decode_array_meta(stored) == decode_array_meta(payload)
            assert decode_array_meta(payload)["id"] == data_file.stem
            _check_payload(payload, schema)
            checked += 1
    assert checked >= 25


def test_fixture_varray_meta_round_trip(legacy_storage: Path) -> None:
    checked = 0
    for coll_file in _collection_files(legacy_storage):
        meta = decode_collection_meta(coll_file.read_bytes())
        for json_file in sorted((coll_file.parent / "varray_data").glob("**/*.json")):
            payload = json_file.read_bytes()
            assert decode_array_meta(payload)["id"] == json_file.stem
            _check_payload(payload, meta.schema)
            checked += 1
    assert checked == 3


def test_fixture_typed_values(legacy_storage: Path) -> None:
    coll = legacy_storage / "collections" / "tiles"
    meta = decode_collection_meta((coll / "tiles.json").read_bytes())
    payload = next(
        p.read_bytes()
        for p in (coll / "varray_data").glob("**/*.json")
        if p.stem == "260d1ec6-b0d6-4bb1-8ba7-97f7ca197bc5"
    )
    raw = decode_array_meta(payload)
    custom = deserialize_attributes(raw["custom_attributes"], meta.schema.custom_attributes or ())
    assert custom == {"note": "region", "where": (1, 2.5, "x")}
    weather = legacy_storage / "collections" / "weather"
    wmeta = decode_collection_meta((weather / "weather.json").read_bytes())
    assert wmeta.schema.dimensions[0] == TimeDimensionSchema("day_hours", 24, "$dt", timedelta(hours=1))
    assert wmeta.schema.dimensions[1].scale == Scale(90.0, -1.0, "lat")  # type: ignore[union-attr]
    zstd = decode_collection_meta(
        (legacy_storage / "collections" / "zstd_complex" / "zstd_complex.json").read_bytes()
    )
    assert zstd.schema.dtype is np.complex128
    assert zstd.options == HDF5Options(chunks=True, compression_opts=HDF5CompressionOpts(32015, (3,)))
    assert zstd.schema.arrays_shape == (3, 2)  # type: ignore[union-attr]


def test_a_pure_imaginary_number_in_a_tuple_reads_back_as_a_complex() -> None:
    """``str(2j)`` is ``"2j"``, which reads back as a string: inside tuples it is written ``"(0+2j)"``."""
    value = (2j, complex(0, -1.5), np.complex64(3j), (complex(0, float("inf")),), 1 + 2j, complex(-0.0, 1))
    stored = serialize_attribute_value(value)
    assert stored[:3] == ["(0+2j)", "(0-1.5j)", "(0+3j)"] and stored[4:] == ["(1+2j)", "(-0+1j)"]
    back = deserialize_attributes({"t": stored}, [AttributeSchema("t", tuple, primary=False)])["t"]
    assert back == (2j, complex(0, -1.5), 3j, (complex(0, float("inf")),), 1 + 2j, complex(-0.0, 1))
    assert all(type(v) is complex for v in back[:3])


def test_as_read_back_changes_only_tuples_as_their_stored_form_reads() -> None:
    from datetime import datetime, timezone

    from deker import AttributeSchema

    when = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    attrs = [AttributeSchema("t", tuple, primary=False), AttributeSchema("d", datetime, primary=False)]
    given = {"t": (when, "(1+2j)", ("x", 2.5)), "d": when}
    assert as_read_back(given, attrs) == {"t": (when.isoformat(), 1 + 2j, ("x", 2.5)), "d": when}
    plain = {"d": when, "t": None}
    assert as_read_back(plain, attrs) == plain and as_read_back(plain, attrs) is not plain
