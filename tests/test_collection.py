"""Collections: creation of arrays, lookups, iteration, managers, clear and delete."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from deker import Array, ArraySchema, AttributeSchema, Client, DimensionSchema, VArray, VArraySchema
from deker.errors import (
    DekerArrayError,
    DekerFilterError,
    DekerInstanceNotExistsError,
    DekerInvalidManagerCallError,
    DekerValidationError,
)


@pytest.fixture()
def client(tmp_path: Path):
    with Client(f"file://{tmp_path}", write_lock_timeout=5) as c:
        yield c


def keyed_schema() -> ArraySchema:
    return ArraySchema(
        dtype=np.float64,
        dimensions=[DimensionSchema(name="x", size=3)],
        attributes=[
            AttributeSchema(name="q", dtype=float, primary=True),
            AttributeSchema(name="when", dtype=datetime, primary=True),
            AttributeSchema(name="note", dtype=str, primary=False),
        ],
    )


def test_create_and_filter(client: Client) -> None:
    coll = client.create_collection("c", keyed_schema())
    when = datetime(2024, 5, 1, tzinfo=timezone.utc)
    arr = coll.create({"q": 1.0, "when": when}, {"note": "n"})
    assert isinstance(arr, Array)
    assert coll.filter({"id": arr.id}).first() == arr
    assert coll.filter({"q": 1, "when": "2024-05-01T00:00:00Z"}).last() == arr  # coerced values
    assert coll.filter({"q": 2.0, "when": when}).last() is None
    with pytest.raises(DekerFilterError):
        coll.filter({"q": 1.0, "when": when, "zzz": 1}).last()
    with pytest.raises(NotImplementedError):
        coll.filter({"q": 1.0}).last()
    with pytest.raises(DekerValidationError):
        coll.filter({"id": "not-a-uuid"}).last()


def test_duplicate_primary_key_and_id(client: Client) -> None:
    coll = client.create_collection("c", keyed_schema())
    when = datetime(2024, 5, 1, tzinfo=timezone.utc)
    arr = coll.create({"q": 1.0, "when": when})
    with pytest.raises(DekerValidationError):
        coll.create({"q": 1.0, "when": when})
    plain = client.create_collection(
        "p", ArraySchema(dtype=np.int8, dimensions=[DimensionSchema(name="x", size=2)])
    )
    a = plain.create(id_=arr.id)
    with pytest.raises(DekerArrayError):
        plain.create(id_=a.id)
    assert len(list(plain)) == 1


@pytest.mark.parametrize("value", ["a/b", "..", "", "x\x00", "é" * 200])
def test_hostile_primary_values_are_rejected(client: Client, value: str) -> None:
    coll = client.create_collection(
        "s",
        ArraySchema(
            dtype=np.int8,
            dimensions=[DimensionSchema(name="x", size=2)],
            attributes=[AttributeSchema(name="k", dtype=str, primary=True)],
        ),
    )
    before = sorted(p.relative_to(client.root_path) for p in client.root_path.rglob("*"))
    with pytest.raises(DekerValidationError):
        coll.create({"k": value})
    after = sorted(p.relative_to(client.root_path) for p in client.root_path.rglob("*"))
    assert before == after


def test_iteration_and_managers(client: Client) -> None:
    coll = client.create_collection(
        "c", ArraySchema(dtype=np.int32, dimensions=[DimensionSchema(name="x", size=2)])
    )
    ids = {coll.create().id for _ in range(5)}
    assert {a.id for a in coll} == ids
    assert {a.id for a in coll.arrays} == ids
    with pytest.raises(DekerInvalidManagerCallError):
        coll.varrays  # noqa: B018
    vcoll = client.create_collection(
        "v", VArraySchema(dtype=np.int32, dimensions=[DimensionSchema(name="x", size=4)], vgrid=(2,))
    )
    v = vcoll.create()
    assert isinstance(v, VArray)
    v[:].update(np.arange(4, dtype=np.int32))
    assert [x.id for x in vcoll.varrays] == [v.id]
    tiles = list(vcoll.arrays)
    assert len(tiles) == 2 and all(t.primary_attributes["vid"] == v.id for t in tiles)
    tile = vcoll.arrays.filter({"vid": v.id, "v_position": (1,)}).last()
    assert tile is not None and list(tile[:].read()) == [2, 3]
    with pytest.raises(DekerArrayError):
        vcoll.arrays.create({"vid": "1f0c2c6e-6d6e-4bb3-8a1a-1d7f0e2c3b4a", "v_position": (0,)})


def test_clear_and_delete(client: Client) -> None:
    coll = client.create_collection(
        "c", ArraySchema(dtype=np.int32, dimensions=[DimensionSchema(name="x", size=2)])
    )
    coll.create()
    coll.clear()
    assert list(coll) == []
    assert sorted(p.name for p in coll.path.iterdir()) == ["c.json"]
    coll.create()
    coll.delete()
    coll.delete()
    assert not coll.path.exists()
    assert not (client.root_path / "c.lock").exists()
    with pytest.raises(DekerInstanceNotExistsError):
        coll.create()
    assert client.get_collection("c") is None


def test_repr(client: Client) -> None:
    coll = client.create_collection(
        "v", VArraySchema(dtype=np.int32, dimensions=[DimensionSchema(name="x", size=4)], vgrid=(2,))
    )
    assert str(coll) == "v"
    assert repr(coll).startswith("Collection(name=v, array_schema=") and "varray_schema=" in repr(coll)
