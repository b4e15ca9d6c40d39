"""Array and VArray handles: properties, attributes, pickling, deletion."""

from __future__ import annotations

import pickle
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from deker import (
    ArraySchema,
    AttributeSchema,
    Client,
    DimensionSchema,
    TimeDimensionSchema,
    VArraySchema,
)
from deker.errors import DekerInstanceNotExistsError, DekerValidationError


@pytest.fixture()
def client(tmp_path: Path):
    with Client(f"file://{tmp_path}", write_lock_timeout=5) as c:
        yield c


def timed_schema(cls: type = ArraySchema, **extra: object):
    return cls(
        dtype=np.float32,
        dimensions=[
            TimeDimensionSchema(name="t", size=4, start_value="$start", step=timedelta(hours=1)),
            DimensionSchema(name="band", size=2, labels=["red", "nir"]),
            DimensionSchema(name="x", size=6, scale={"start_value": 0.0, "step": 0.1}),
        ],
        attributes=[
            AttributeSchema(name="k", dtype=int, primary=True),
            AttributeSchema(name="start", dtype=datetime, primary=False),
            AttributeSchema(name="tag", dtype=str, primary=False),
            AttributeSchema(name="extra", dtype=tuple, primary=False),
        ],
        **extra,
    )


START = datetime(2024, 1, 1, tzinfo=timezone.utc)


def test_properties(client: Client) -> None:
    coll = client.create_collection("c", timed_schema())
    arr = coll.create({"k": 1}, {"start": START, "tag": "a"})
    assert arr.shape == (4, 2, 6)
    assert arr.named_shape == (("t", 4), ("band", 2), ("x", 6))
    assert arr.dtype is np.float32
    assert np.isnan(arr.fill_value)
    assert arr.collection == "c"
    assert arr.primary_attributes == {"k": 1}
    assert arr.custom_attributes == {"start": START, "tag": "a", "extra": None}
    assert [d.name for d in arr.dimensions] == ["t", "band", "x"]
    assert arr.as_dict["id"] == arr.id
    meta = arr.read_meta()
    assert meta["custom_attributes"]["start"] == "2024-01-01T00:00:00+00:00"
    assert str(arr) == f"Array({arr.id})"
    assert repr(arr).startswith(f"Array(id={arr.id!r}, collection='c', primary_attributes=")


def test_partial_custom_update_keeps_others(client: Client) -> None:
    coll = client.create_collection("c", timed_schema())
    arr = coll.create({"k": 1}, {"start": START, "tag": "a", "extra": (1, "x")})
    arr.update_custom_attributes({"tag": "b"})
    again = coll.filter({"k": 1}).last()
    assert again is not None
    assert again.custom_attributes == {"start": START, "tag": "b", "extra": (1, "x")}
    later = START + timedelta(days=1)
    arr.update_custom_attributes({"start": later})
    assert arr.dimensions[0].start_value == later
    with pytest.raises(DekerValidationError):
        arr.update_custom_attributes({})
    with pytest.raises(DekerValidationError):
        arr.update_custom_attributes({"k": 3})
    with pytest.raises(DekerValidationError):
        arr.update_custom_attributes({"start": None})


@pytest.mark.parametrize("varray", [False, True])
def test_the_writing_handle_holds_tuple_values_as_every_reader_reads_them(
    client: Client, varray: bool
) -> None:
    """A datetime inside a tuple is stored as its ISO string (deker 1.1.7's format) and every
    read gives that string; the handle that wrote it held the datetime, so two handles of one
    array disagreed (and so did a string that reads back as a complex number)."""
    schema = timed_schema(VArraySchema, vgrid=(2, 1, 3)) if varray else timed_schema()
    coll = client.create_collection("c", schema)
    when = START + timedelta(minutes=5)
    obj = coll.create({"k": 1}, {"start": START, "extra": ("a", when, "(1+2j)")})
    expected = ("a", when.isoformat(), 1 + 2j)
    assert obj.custom_attributes["extra"] == expected
    again = coll.filter({"k": 1}).last()
    assert again is not None and again.custom_attributes == obj.custom_attributes
    obj.update_custom_attributes({"extra": (when,)})
    assert obj.custom_attributes["extra"] == (when.isoformat(),)
    again = coll.filter({"k": 1}).last()
    assert again is not None and again.custom_attributes == obj.custom_attributes


def test_varray_properties_and_custom_update(client: Client) -> None:
    coll = client.create_collection("v", timed_schema(VArraySchema, vgrid=(2, 1, 3)))
    v = coll.create({"k": 7}, {"start": START})
    assert v.vgrid == (2, 1, 3) and v.arrays_shape == (2, 2, 2)
    assert v.as_dict["vgrid"] == (2, 1, 3)
    v.update_custom_attributes({"tag": "z"})
    again = coll.filter({"k": 7}).last()
    assert again is not None and again.custom_attributes["tag"] == "z"
    assert again.custom_attributes["start"] == START


def test_tile_time_offset_is_the_real_tile_start(client: Client) -> None:
    coll = client.create_collection("v", timed_schema(VArraySchema, vgrid=(2, 1, 3)))
    v = coll.create({"k": 7}, {"start": START})
    v[3, 0, 5].update(np.float32(1))
    tile = coll.arrays.filter({"vid": v.id, "v_position": (1, 0, 2)}).last()
    assert tile is not None
    assert tile.custom_attributes["parent.start"] == START + timedelta(hours=2)  # SPEC §8 item 7 fixed
    assert tile.dimensions[0].start_value == START + timedelta(hours=2)


def test_pickle_roundtrip(client: Client) -> None:
    coll = client.create_collection("c", timed_schema())
    arr = coll.create({"k": 1}, {"start": START})
    arr[0, "red", :].update(np.arange(6, dtype=np.float32))
    clone = pickle.loads(pickle.dumps(arr))
    assert clone == arr
    np.testing.assert_array_equal(clone[0, 0, :].read(), np.arange(6, dtype=np.float32))


def test_delete_array(client: Client) -> None:
    coll = client.create_collection("c", timed_schema())
    arr = coll.create({"k": 1}, {"start": START})
    arr[:].update(np.zeros(arr.shape, dtype=np.float32))
    arr.delete()
    assert coll.filter({"k": 1}).last() is None
    with pytest.raises(DekerInstanceNotExistsError):
        arr[:].read()
    assert not any(p.is_file() for p in (coll.path / "array_data").rglob("*"))
    assert not any((coll.path / "array_symlinks").rglob("*"))
    coll.create({"k": 1}, {"start": START})  # the key is free again


@pytest.mark.parametrize("kind", ["array", "varray"])
@pytest.mark.parametrize("deleted_by", ["this handle", "another handle"])
def test_every_method_of_a_deleted_object_says_it_was_deleted(
    client: Client, kind: str, deleted_by: str
) -> None:
    """Defect: a second ``delete()`` raised a raw ``FileNotFoundError`` from the lock layer
    (deker 1.1.7 silently did nothing); every method now raises DekerInstanceNotExistsError."""
    extra = {"vgrid": (2, 1, 3)} if kind == "varray" else {}
    coll = client.create_collection(
        "c", timed_schema(VArraySchema if kind == "varray" else ArraySchema, **extra)
    )
    obj = coll.create({"k": 1}, {"start": START})
    obj[:].update(np.ones(obj.shape, dtype=np.float32))
    subset = obj[0]
    target = coll.filter({"k": 1}).last() if deleted_by == "another handle" else obj
    assert target is not None
    target.delete()
    calls = {
        "delete": obj.delete,
        "read": lambda: obj[:].read(),
        "clear": lambda: obj[:].clear(),
        "update": lambda: obj[:].update(np.zeros(obj.shape, dtype=np.float32)),
        "update of an older subset": lambda: subset.update(np.float32(2)),
        "update_custom_attributes": lambda: obj.update_custom_attributes({"tag": "x"}),
        "read_meta": obj.read_meta,
    }
    for name, call in calls.items():
        with pytest.raises(DekerInstanceNotExistsError, match=r"deleted|does not exist"):
            call()
        assert not [p for p in coll.path.rglob("*") if p.is_file() and p.name != "c.json"], name
    coll.create({"k": 1}, {"start": START})  # the key is free


def test_delete_varray_removes_tiles(client: Client) -> None:
    coll = client.create_collection("v", timed_schema(VArraySchema, vgrid=(2, 1, 3)))
    v = coll.create({"k": 7}, {"start": START})
    v[:].update(np.ones(v.shape, dtype=np.float32))
    assert len(list(coll.arrays)) == 6
    v.delete()
    assert list(coll.arrays) == [] and list(coll.varrays) == []
    assert not [p for p in coll.path.rglob("*") if p.is_file() and p.name != "v.json"]
    with pytest.raises(DekerInstanceNotExistsError):
        v[:].read()
