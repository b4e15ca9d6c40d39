"""Hostile input: property-based fuzzing of the public API (hypothesis).

Random schemas, collection names, attribute values (``/``, ``..``, empty, NUL, very long,
unicode...), ids, filters, keys, dtypes and payloads go through the public API of one real
storage.  For every call:

* only documented exceptions come out: :class:`~deker.errors.DekerBaseApplicationError`
  subclasses, and the builtins the API documents for the call (``IndexError`` for keys and
  payload shapes, ``NotImplementedError`` for filters without a primary key...);
* nothing is ever written outside the storage root (a sibling directory is watched);
* a rejected call changes nothing on disk: the full listing of the storage (every path, its
  type, size and modification time, directories included) is the same before and after.
"""

from __future__ import annotations

import math
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from deker import (
    ArraySchema,
    AttributeSchema,
    Client,
    DimensionSchema,
    HDF5CompressionOpts,
    HDF5Options,
    Scale,
    TimeDimensionSchema,
    VArraySchema,
)
from deker.errors import DekerBaseApplicationError

pytestmark = pytest.mark.timeout(600)

FUZZ = settings(
    max_examples=int(os.environ.get("DEKER_FUZZ_EXAMPLES", "120")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# --------------------------------------------------------------------------- hostile values

HOSTILE_NAMES = [
            "",
            " ",
            ".",
            "..",
            "/",
            "//",
            "a/b",
            "../x",
            "../../../../tmp/evil",
            "/tmp/evil",
            "x\x00y",
            "\x00",
            "a" * 250,
            "a" * 251,
            "a" * 255,
            "é" * 128,
            "a" * 300,
            "😀",
            "con",
            "*",
            "~",
            "$HOME",
            "a\\b",
            ".hidden",
            "-",
            ":",
            "a:b",
            "\n",
            "\t",
            "x.lock",
            "x.json",
            "x.hdf5",
            "collections",
            "array_data",
            "%2e%2e",
            "\u202e",
            "\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace"),
        ]  # fmt: skip
HOSTILE_TEXT = st.one_of(
    st.sampled_from(HOSTILE_NAMES),
    st.text(max_size=12),
    st.text(min_size=200, max_size=300),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.complex_numbers(allow_nan=True),
    st.datetimes(timezones=st.one_of(st.none(), st.just(timezone.utc))),
    st.binary(max_size=8),
    HOSTILE_TEXT,
    st.sampled_from([np.int64(3), np.float32(1.5), np.uint8(7), np.nan, object(), Ellipsis, int, [], {}]),
)
VALUES = st.one_of(SCALARS, st.tuples(SCALARS, SCALARS), st.lists(SCALARS, max_size=3))
KEYS = st.one_of(HOSTILE_TEXT, SCALARS)
DICTS = st.one_of(
    st.none(),
    st.dictionaries(KEYS.filter(lambda k: isinstance(k, (str, int, float, bytes))), VALUES, max_size=4),
)
DTYPES = st.sampled_from(
    [np.int8, np.uint16, np.int64, np.float16, np.float64, np.complex64, int, float, complex, bool, str,
     object, np.bool_, "float64", np.dtype("int32"), None, list, datetime]
)  # fmt: skip
SIZES = st.one_of(st.integers(-3, 12), st.sampled_from([0, True, 2.0, "3", None, 10**12]))
INDEX_ITEMS = st.one_of(
    st.integers(-15, 15),
    st.sampled_from(
        [10**20, -(10**20), None, Ellipsis, True, np.int64(1), 1.5, "a", "zz", [0, 1], (), [], b"x"]
    ),
    st.builds(
        slice,
        st.one_of(st.none(), st.integers(-15, 15), st.sampled_from(["a", 0.5, 10**20])),
        st.one_of(st.none(), st.integers(-15, 15), st.sampled_from(["b", 2.5, -(10**20)])),
        st.one_of(st.none(), st.integers(-3, 3), st.just("s")),
    ),
    st.datetimes(timezones=st.just(timezone.utc)),
    HOSTILE_TEXT,
)
INDEXES = st.one_of(
    INDEX_ITEMS,
    st.tuples(INDEX_ITEMS),
    st.tuples(INDEX_ITEMS, INDEX_ITEMS),
    st.tuples(INDEX_ITEMS, INDEX_ITEMS, INDEX_ITEMS),
    st.lists(INDEX_ITEMS, max_size=3),
)


@st.composite
def payloads(draw: Any) -> Any:
    kind = draw(st.sampled_from(["array", "scalar", "list", "junk"]))
    if kind == "array":
        shape = tuple(draw(st.lists(st.integers(0, 5), max_size=3)))
        dtype = draw(
            st.sampled_from(
                [np.int8, np.int64, np.float32, np.float64, np.complex128, np.bool_, "U3", object]
            )
        )
        return np.zeros(shape, dtype=dtype)
    if kind == "scalar":
        return draw(SCALARS)
    if kind == "list":
        return draw(st.lists(st.one_of(st.integers(-5, 5), st.floats(), st.text(max_size=2)), max_size=6))
    return draw(st.sampled_from([None, "abc", b"abc", {"a": 1}, {1, 2}, object(), Ellipsis]))


class Recipe:
    """A constructor call drawn by hypothesis, made only inside :func:`attempt`."""

    def __init__(self, cls: Any, **kwargs: Any) -> None:
        self.cls, self.kwargs = cls, kwargs

    def build(self) -> Any:
        return self.cls(**{k: build(v) for k, v in self.kwargs.items()})

    def __repr__(self) -> str:
        return f"{self.cls.__name__}({self.kwargs!r})"


def build(value: Any) -> Any:
    if isinstance(value, Recipe):
        return value.build()
    if isinstance(value, list):
        return [build(v) for v in value]
    return value


@st.composite
def dimension_schemas(draw: Any) -> Recipe:
    if draw(st.booleans()):
        return Recipe(
            TimeDimensionSchema,
            name=draw(st.one_of(HOSTILE_TEXT, SCALARS)),
            size=draw(SIZES),
            start_value=draw(st.one_of(st.datetimes(), HOSTILE_TEXT, st.just("$dt"), SCALARS)),
            step=draw(st.one_of(st.just(timedelta(hours=1)), st.just(timedelta(0)), SCALARS)),
        )
    labels = draw(
        st.one_of(st.none(), st.lists(HOSTILE_TEXT, max_size=4), st.lists(st.floats(), max_size=3), DICTS)
    )
    scale = draw(
        st.one_of(
            st.none(),
            st.builds(Scale, st.floats(), st.floats(), st.one_of(st.none(), HOSTILE_TEXT)),
            st.dictionaries(st.sampled_from(["start_value", "step", "name", "bogus"]), SCALARS, max_size=3),
        )
    )
    name = draw(st.one_of(HOSTILE_TEXT, SCALARS))
    return Recipe(DimensionSchema, name=name, size=draw(SIZES), labels=labels, scale=scale)


@st.composite
def schemas(draw: Any) -> Recipe:
    dims = draw(st.lists(dimension_schemas(), min_size=0, max_size=3))
    attrs = draw(
        st.lists(
            st.builds(
                lambda n, d, p: Recipe(AttributeSchema, name=n, dtype=d, primary=p),
                st.one_of(HOSTILE_TEXT, SCALARS),
                DTYPES,
                st.one_of(st.booleans(), SCALARS),
            ),
            max_size=3,
        )
    )
    common = {"dtype": draw(DTYPES), "dimensions": dims, "fill_value": draw(SCALARS), "attributes": attrs}
    if draw(st.booleans()):
        return Recipe(ArraySchema, **common)
    grid = draw(st.one_of(st.none(), st.lists(st.one_of(st.integers(-2, 4), SCALARS), max_size=3)))
    if draw(st.booleans()):
        return Recipe(VArraySchema, **common, vgrid=grid)
    return Recipe(VArraySchema, **common, arrays_shape=grid)


# --------------------------------------------------------------------------- the storage


def listing(root: Path) -> dict[str, tuple[str, int, int]]:
    """Every entry under ``root``: kind, size and modification time (symlinks not followed)."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            st_ = os.lstat(path)
            kind = "l" if os.path.islink(path) else "d" if os.path.isdir(path) else "f"
            out[os.path.relpath(path, root)] = (kind, st_.st_size if kind == "f" else 0, st_.st_mtime_ns)
    return out


class Env:
    """One storage shared by the examples of a test, with its objects and a watched sibling."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "storage"
        self.client = Client(f"file://{self.root}", write_lock_timeout=5, write_lock_check_interval=0.01)
        attrs = [
            AttributeSchema("name", str, primary=True),
            AttributeSchema("n", int, primary=False),
            AttributeSchema("dt", datetime, primary=False),
            AttributeSchema("tup", tuple, primary=False),
        ]
        dims = [
            TimeDimensionSchema("time", 6, start_value="$dt", step=timedelta(hours=1)),
            DimensionSchema("y", 4, labels=["a", "b", "c", "d"]),
            DimensionSchema("x", 6, scale=Scale(0.0, 0.5)),
        ]
        self.arrays = self.client.create_collection(
            "arrays", ArraySchema(dtype=np.float32, dimensions=dims, attributes=attrs)
        )
        self.varrays = self.client.create_collection(
            "varrays",
            VArraySchema(dtype=np.int16, dimensions=dims, attributes=attrs, vgrid=(2, 2, 3)),
            HDF5Options(chunks=True, compression_opts=HDF5CompressionOpts("gzip", 4)),
        )
        start = datetime(2024, 1, 1, tzinfo=timezone.utc)
        self.array = self.arrays.create({"name": "a"}, {"n": 1, "dt": start})
        self.array[0, 0:2].update(np.ones((2, 6), dtype=np.float32))
        self.varray = self.varrays.create({"name": "v"}, {"n": 1, "dt": start})
        self.varray[0:3, 0:2, 0:2].update(np.ones((3, 2, 2), dtype=np.int16))
        (base / "outside").mkdir()
        (base / "outside" / "witness").write_text("untouched")

    def outside(self) -> dict[str, tuple[str, int, int]]:
        """The listing of everything next to the storage root."""
        out = listing(self.base)
        return {k: v for k, v in out.items() if k != "storage" and not k.startswith("storage" + os.sep)}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Any:
    e = Env(tmp_path_factory.mktemp("fuzz"))
    yield e
    e.client.close()


def attempt(env: Env, call: Any, allowed: tuple[type[BaseException], ...] = ()) -> Any:
    """Run ``call``; a rejection must be documented and must leave the disk untouched."""
    before, outside = listing(env.root), env.outside()
    try:
        result = call()
        event("accepted")
    except DekerBaseApplicationError as exc:
        event(f"rejected: {type(exc).__name__}")
        assert listing(env.root) == before, "a rejected call changed the storage"
        result = None
    except allowed as exc:
        event(f"rejected: {type(exc).__name__}")
        assert listing(env.root) == before, "a rejected call changed the storage"
        result = None
    assert env.outside() == outside, "something was written outside the storage root"
    return result


# --------------------------------------------------------------------------- the properties

SIMPLE_SCHEMA = st.builds(
    lambda fill, grid: Recipe(
        VArraySchema if grid else ArraySchema,
        dtype=np.float64,
        dimensions=[Recipe(DimensionSchema, name="x", size=4)],
        fill_value=fill,
        **({"vgrid": grid} if grid else {}),
    ),
    st.one_of(st.none(), SCALARS),
    st.one_of(st.none(), st.just([2])),
)
PRIMARY = st.one_of(
    DICTS,
    st.fixed_dictionaries({"name": st.one_of(HOSTILE_TEXT, SCALARS)}),
    st.fixed_dictionaries({"name": st.text(min_size=1, max_size=40)}),
)
CUSTOM = st.one_of(
    DICTS,
    st.fixed_dictionaries(
        {"dt": st.datetimes(timezones=st.just(timezone.utc))},
        optional={"n": st.integers(-(2**63), 2**63 - 1), "tup": st.tuples(HOSTILE_TEXT, st.integers())},
    ),
    st.fixed_dictionaries(
        {"dt": st.one_of(st.datetimes(timezones=st.just(timezone.utc)), SCALARS)},
        optional={"n": SCALARS, "tup": st.one_of(VALUES, st.tuples(HOSTILE_TEXT, st.integers()))},
    ),
)
IDS = st.one_of(st.none(), st.uuids().map(str), HOSTILE_TEXT, SCALARS)


@FUZZ
@given(
    name=st.one_of(HOSTILE_TEXT, SCALARS),
    schema=st.one_of(SIMPLE_SCHEMA, schemas(), SCALARS),
    options=st.one_of(st.none(), SCALARS),
)
def test_create_collection(env: Env, name: Any, schema: Any, options: Any) -> None:
    coll = attempt(env, lambda: env.client.create_collection(name, build(schema), options), (TypeError,))
    if coll is not None:
        assert (env.root / "collections" / name / f"{name}.json").is_file()
        assert env.client.get_collection(name) == coll
        coll.delete()


@FUZZ
@given(dims=st.lists(dimension_schemas(), max_size=2), dtype=DTYPES, fill=SCALARS)
def test_schema_constructors(env: Env, dims: Any, dtype: Any, fill: Any) -> None:
    """Schemas reject bad fields with DekerValidationError (scale dicts may raise TypeError)."""
    attempt(env, lambda: ArraySchema(dtype=dtype, dimensions=build(dims), fill_value=fill), (TypeError,))
    grid = (1,) * len(dims)
    attempt(
        env,
        lambda: VArraySchema(dtype=dtype, dimensions=build(dims), fill_value=fill, vgrid=grid),
        (TypeError,),
    )


@FUZZ
@given(name=st.one_of(HOSTILE_TEXT, SCALARS))
def test_collection_lookups(env: Env, name: Any) -> None:
    assert attempt(env, lambda: env.client.get_collection(name)) is None or name in ("arrays", "varrays")
    attempt(env, lambda: env.client.calculate_storage_size(name))
    attempt(env, lambda: env.client.clear_locks(name))


@FUZZ
@given(primary=PRIMARY, custom=CUSTOM, id_=IDS, varray=st.booleans())
def test_create_arrays(env: Env, primary: Any, custom: Any, id_: Any, varray: bool) -> None:
    coll = env.varrays if varray else env.arrays
    obj = attempt(env, lambda: coll.create(primary, custom, id_))
    if obj is not None:
        found = coll.filter({"name": obj.primary_attributes["name"]}).last()
        assert found is not None and found.id == obj.id
        obj.delete()
        assert coll.filter({"id": obj.id}).last() is None


@FUZZ
@given(filters=st.one_of(PRIMARY, st.fixed_dictionaries({"id": IDS})).filter(bool), varray=st.booleans())
def test_filters(env: Env, filters: Any, varray: bool) -> None:
    coll = env.varrays if varray else env.arrays
    attempt(env, lambda: coll.filter(filters).last(), (NotImplementedError,))


@FUZZ
@given(
    key=INDEXES,
    payload=payloads(),
    varray=st.booleans(),
    op=st.sampled_from(["read", "update", "clear", "describe"]),
)
def test_subsets(env: Env, key: Any, payload: Any, varray: bool, op: str) -> None:
    obj = env.varray if varray else env.array

    def call() -> Any:
        subset = obj[key]
        if op == "read":
            return subset.read()
        if op == "update":
            return subset.update(payload)
        if op == "clear":
            return subset.clear()
        return subset.describe()

    attempt(env, call, (IndexError,))


@FUZZ
@given(attributes=st.one_of(CUSTOM, SCALARS), varray=st.booleans())
def test_custom_attribute_updates(env: Env, attributes: Any, varray: bool) -> None:
    obj = env.varray if varray else env.array
    before = dict(obj.custom_attributes)
    attempt(env, lambda: obj.update_custom_attributes(attributes))
    stored = (env.varrays if varray else env.arrays).filter({"id": obj.id}).last()
    assert stored.custom_attributes == obj.custom_attributes  # what is kept is what was written
    if obj.custom_attributes != before:
        assert isinstance(attributes, dict) and attributes


def test_fuzzed_storage_is_sound(env: Env) -> None:
    """After the fuzzing (runs last in this module): every object still reads, the storage checks."""
    assert math.prod(env.array.shape) == 144
    for coll in (env.arrays, env.varrays):
        for obj in coll:
            obj[:].read()
    env.client.check_integrity(level=4, stop_on_error=True)
