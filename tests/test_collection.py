"""Collections: creation of arrays, lookups, iteration, managers, clear and delete.

Keys that compare equal are one key: ``0.0`` and ``-0.0`` (stored as ``0.0``, where deker
1.1.7 looks for it), every NaN; an equal key deker 1.1.7 stored spelt ``-0.0`` is found and
blocks a new one until it is deleted.
"""

from __future__ import annotations

import functools
import math
import shutil
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

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
from deker.records import create_record
from deker.storage.locks import LockSettings


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


def test_a_collection_created_while_its_namesake_is_deleted_keeps_its_lock(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deletion unlinked ``<name>.lock`` after the tree, without holding it: a collection of
    the same name created in between (the name is free once the directory is renamed away)
    lost its lock file.  Now the deletion holds the lock and the creation waits for it."""
    schema = ArraySchema(dtype=np.int32, dimensions=[DimensionSchema(name="x", size=2)])
    coll = client.create_collection("c", schema)
    coll.create()
    deleting, go = threading.Event(), threading.Event()
    real = shutil.rmtree

    def slow_rmtree(path: Any, *args: Any, **kwargs: Any) -> None:
        deleting.set()
        go.wait(10)
        real(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", slow_rmtree)
    deleter = threading.Thread(target=coll.delete)
    deleter.start()
    assert deleting.wait(10)
    created: list[Any] = []
    creator = threading.Thread(target=lambda: created.append(client.create_collection("c", schema)))
    creator.start()
    creator.join(0.5)
    waited = creator.is_alive()
    go.set()
    deleter.join(10)
    creator.join(10)
    assert waited and len(created) == 1
    assert (client.root_path / "c.lock").is_file() and list(created[0]) == []
    assert client.check_integrity(1, stop_on_error=False, progress=False).ok


def test_repr(client: Client) -> None:
    coll = client.create_collection(
        "v", VArraySchema(dtype=np.int32, dimensions=[DimensionSchema(name="x", size=4)], vgrid=(2,))
    )
    assert str(coll) == "v"
    assert repr(coll).startswith("Collection(name=v, array_schema=") and "varray_schema=" in repr(coll)


WHEN = datetime(2024, 5, 1, tzinfo=timezone.utc)


def _key_dirs(coll: Any, kind: str = "array") -> list[str]:
    return sorted(p.name for p in (coll.path / f"{kind}_symlinks").iterdir())


@pytest.mark.parametrize(("first", "second"), [(-0.0, 0.0), (0.0, -0.0)])
def test_zero_and_negative_zero_are_one_key(client: Client, first: float, second: float) -> None:
    coll = client.create_collection("c", keyed_schema())
    arr = coll.create({"q": first, "when": WHEN})
    assert arr.primary_attributes["q"] == 0.0 and math.copysign(1, arr.primary_attributes["q"]) == 1
    assert _key_dirs(coll) == ["0.0"]  # where deker 1.1.7 looks for 0.0
    with pytest.raises(DekerValidationError, match="primary attributes must be unique"):
        coll.create({"q": second, "when": WHEN})
    assert [a.id for a in coll] == [arr.id] and _key_dirs(coll) == ["0.0"]
    for value in (0.0, -0.0, 0, -0):
        assert coll.filter({"q": value, "when": WHEN}).last() == arr
    again = client.get_collection("c")
    assert again is not None
    stored = again.filter({"q": -0.0, "when": WHEN}).last()
    assert stored is not None and math.copysign(1, stored.primary_attributes["q"]) == 1  # read back


def test_zero_keys_of_varrays(client: Client) -> None:
    coll = client.create_collection(
        "v",
        VArraySchema(
            dtype=np.int32,
            dimensions=[DimensionSchema(name="x", size=4)],
            vgrid=(2,),
            attributes=[AttributeSchema(name="z", dtype=complex, primary=True)],
        ),
    )
    varray = coll.create({"z": complex(-0.0, -0.0)})
    assert _key_dirs(coll, "varray") == ["0j"]
    with pytest.raises(DekerValidationError, match="primary attributes must be unique"):
        coll.create({"z": 0j})
    assert coll.filter({"z": complex(0.0, -0.0)}).last() == varray


def test_nan_is_one_key(client: Client) -> None:
    """``nan != nan``; deker 1.1.7 spelt every NaN ``nan``, so a NaN key names one array."""
    coll = client.create_collection("c", keyed_schema())
    arr = coll.create({"q": float("nan"), "when": WHEN})
    assert _key_dirs(coll) == ["nan"]
    with pytest.raises(DekerValidationError, match="primary attributes must be unique"):
        coll.create({"q": -float("nan"), "when": WHEN})
    found = coll.filter({"q": np.float64("nan"), "when": WHEN}).last()
    assert found == arr and math.isnan(found.primary_attributes["q"])


@pytest.mark.parametrize("kind", ["array", "varray"])
def test_a_negative_zero_key_that_deker_117_stored_is_found(client: Client, kind: str) -> None:
    """deker 1.1.7 stored ``-0.0`` as given: metadata ``-0.0``, key directory ``-0.0``.

    (The store's own creation with an unprocessed ``-0.0`` writes exactly that.)  Both lookups
    find it, an equal key is refused while it exists, and its deletion removes its directory.
    """
    if kind == "array":
        coll = client.create_collection("c", keyed_schema())
        create: Any = functools.partial(create_record, kind="array")
    else:
        schema = VArraySchema(
            dtype=np.float32,
            dimensions=[DimensionSchema(name="x", size=3)],
            vgrid=(1,),
            attributes=[
                AttributeSchema(name="q", dtype=float, primary=True),
                AttributeSchema("when", datetime, True),
            ],
        )
        coll = client.create_collection("c", schema)
        create = functools.partial(create_record, kind="varray")
    legacy_id = str(uuid.uuid4())
    create(
        client.root_path,
        coll._meta,
        array_id=legacy_id,
        primary={"q": -0.0, "when": WHEN},
        custom={},
        locks=LockSettings(timeout=5),
    )
    assert _key_dirs(coll, kind) == ["-0.0"]
    for value in (0.0, -0.0):
        found = coll.filter({"q": value, "when": WHEN}).last()
        assert found is not None and found.id == legacy_id
        assert math.copysign(1, found.primary_attributes["q"]) == -1  # as stored
    with pytest.raises(
        DekerValidationError, match=r"/-0\.0/2024-05-01T00:00:00\+00:00 already exists.*must be unique"
    ):
        coll.create({"q": 0.0, "when": WHEN})
    assert _key_dirs(coll, kind) == ["-0.0"]  # nothing left by the refusal
    found.delete()
    assert not (coll.path / f"{kind}_symlinks").exists() or _key_dirs(coll, kind) == []
    new = coll.create({"q": -0.0, "when": WHEN})
    assert _key_dirs(coll, kind) == ["0.0"] and coll.filter({"q": -0.0, "when": WHEN}).last() == new


def test_a_handle_of_a_deleted_collection_refuses_the_new_one_of_its_name(tmp_path: Path) -> None:
    """Its schema is the old one: it would read and write the new collection's files with it."""
    with Client(tmp_path.as_uri()) as client, Client(tmp_path.as_uri()) as other:
        old = client.create_collection(
            "c", ArraySchema(dtype=np.float32, dimensions=[DimensionSchema("x", 4)])
        )
        seen_elsewhere = other.get_collection("c")
        assert seen_elsewhere is not None
        old.delete()
        new = client.create_collection("c", ArraySchema(dtype=np.int16, dimensions=[DimensionSchema("x", 8)]))
        array = new.create()
        for stale in (old, seen_elsewhere):
            with pytest.raises(DekerInstanceNotExistsError, match="new collection of that name"):
                stale.filter({"id": array.id}).last()
            with pytest.raises(DekerInstanceNotExistsError):
                stale.create()
            with pytest.raises(DekerInstanceNotExistsError):
                list(stale)
            with pytest.raises(DekerInstanceNotExistsError):
                stale.delete()
        assert (new.filter({"id": array.id}).last()[:].read() == np.iinfo(np.int16).min).all()
        again = other.get_collection("c")
        assert again is not None and again.filter({"id": array.id}).last() is not None
        again.delete()
        again.delete()  # deleting twice is harmless


def test_deleting_an_array_whose_key_reads_back_otherwise_removes_its_symlink(client: Client) -> None:
    """A float32 in a tuple key names the folder ``(0.1,)`` but reads back as 0.10000000149011612."""
    schema = ArraySchema(
        dtype=np.float32,
        dimensions=[DimensionSchema("x", 2)],
        attributes=[AttributeSchema("k", tuple, primary=True)],
    )
    collection = client.create_collection("tuple_keys", schema)
    created = collection.create({"k": (np.float32(0.1), 1)})
    (reread,) = list(collection)
    assert reread.primary_attributes["k"] == (float(np.float32(0.1)), 1)
    reread.delete()
    links = collection.path / "array_symlinks"
    assert not links.exists() or not any(p.is_symlink() for p in links.rglob("*"))
    assert collection.filter({"k": (np.float32(0.1), 1)}).last() is None
    again = collection.create({"k": (np.float32(0.1), 1)})
    assert again.id != created.id and collection.filter({"k": (np.float32(0.1), 1)}).last() == again
