"""deker/records.py: Array, VArray and tile records on disk, called directly on real collections.

Covered: ``array_schema_of`` and ``file_spec`` (tile schema and HDF5 options of a VArray
collection); ``create_record`` (main file, symlink naming it, components,
the objects visible through ``deker.Client``), refusals of a second object with the same key
or id (nothing left behind), an interrupted creation's dangling link ignored and replaced,
``read_record`` (typed attributes; missing, damaged JSON, non-HDF5 file), ``write_varray_meta``,
``find_by_primary``, ``delete_record`` (every file and emptied directory gone, neighbours
untouched), ``tile_custom_attributes`` (the tile-size factor of SPEC §8 item 7),
``create_tile_with``/``tile_ids`` (idempotent, data written only at creation),
and creation races between real forkserver processes: one winner per key or tile; a key
stored under another spelling of an equal key (``-0.0`` for ``0.0``) refuses it.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import uuid
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deker import (
    ArraySchema,
    AttributeSchema,
    Client,
    DimensionSchema,
    HDF5CompressionOpts,
    HDF5Options,
    TimeDimensionSchema,
    VArraySchema,
)
from deker.errors import (
    DekerArrayError,
    DekerInstanceNotExistsError,
    DekerMetaDataError,
    DekerStorageError,
    DekerValidationError,
)
from deker.meta import CollectionMeta
from deker.records import (
    array_schema_of,
    create_record,
    create_tile_with,
    delete_record,
    file_spec,
    find_by_primary,
    json_dumps,
    read_record,
    tile_custom_attributes,
    tile_ids,
    write_varray_meta,
)
from deker.storage import hdf5
from deker.storage.layout import CollectionPaths
from deker.storage.locks import LockSettings
from deker.tasks import FileSpec

LOCKS = LockSettings(timeout=10, interval=0.01)
T0 = datetime(2024, 3, 1, 12, tzinfo=timezone.utc)


class Storage:
    """A real storage with an Array collection ``arr`` and a VArray collection ``var``."""

    def __init__(self, path: Path) -> None:
        self.client = Client(path.as_uri(), write_lock_timeout=10)
        self.root = self.client.root_path
        arr_schema = ArraySchema(
            dtype=np.int16,
            dimensions=[DimensionSchema("y", 3), DimensionSchema("x", 4)],
            attributes=[
                AttributeSchema("k", int, primary=True),
                AttributeSchema("day", datetime, primary=True),
                AttributeSchema("note", str, primary=False),
            ],
            fill_value=-1,
        )
        var_schema = VArraySchema(
            dtype=np.float32,
            dimensions=[
                TimeDimensionSchema("time", 8, "$start", timedelta(hours=1)),
                DimensionSchema("x", 6),
            ],
            vgrid=(2, 3),
            attributes=[AttributeSchema("start", datetime, primary=True)],
        )
        self.arr = self.client.create_collection("arr", arr_schema)
        self.var = self.client.create_collection(
            "var",
            var_schema,
            HDF5Options(chunks=(2, 2), compression_opts=HDF5CompressionOpts("gzip", 4)),
        )
        self.arr_meta: CollectionMeta = self.arr._meta
        self.var_meta: CollectionMeta = self.var._meta
        self.arr_paths = CollectionPaths(self.root, "arr")
        self.var_paths = CollectionPaths(self.root, "var")


@pytest.fixture
def storage(tmp_path: Path) -> Any:
    made = Storage(tmp_path / "s")
    yield made
    made.client.close()


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# ----------------------------------------------------------------------------- schemas, specs


def test_array_schema_of_and_file_spec(storage: Storage) -> None:
    assert array_schema_of(storage.arr_meta) is storage.arr_meta.schema
    tile = array_schema_of(storage.var_meta)
    assert isinstance(tile, ArraySchema)
    assert tuple(tile.shape) == (4, 2)
    assert [(a.name, a.primary) for a in tile.attributes] == [
        ("vid", True),
        ("v_position", True),
        ("parent.start", False),
    ]
    spec = file_spec(str(storage.root), storage.arr_meta, "0a-b", LOCKS, ("1", "x"))
    assert spec == FileSpec(
        root=str(storage.root),
        collection="arr",
        array_id="0a-b",
        shape=(3, 4),
        dtype="<i2",
        fill_value=-1,
        dataset_kwargs={},
        locks=LOCKS,
        symlink=("1", "x"),
    )
    vspec = file_spec(str(storage.root), storage.var_meta, "0a-b", LOCKS)
    assert vspec.shape == (4, 2) and vspec.dtype == "<f4"
    assert np.isnan(vspec.fill_value)
    assert vspec.dataset_kwargs == {"chunks": (2, 2), "compression": "gzip", "compression_opts": 4}
    assert vspec.symlink == ()
    assert vspec.main_file == storage.var_paths.main_file("array", "0a-b")


# ------------------------------------------------------------------------------------ arrays


def test_create_array_with_primary_key(storage: Storage) -> None:
    array_id = str(uuid.uuid4())
    primary = {"k": 7, "day": T0}
    components = create_record(
        storage.root, storage.arr_meta, "array", array_id, primary, {"note": "hi"}, LOCKS
    )
    assert components == ("7", "2024-03-01T12:00:00+00:00")
    main = storage.arr_paths.main_file("array", array_id)
    link = storage.arr_paths.symlink_file("array", components, array_id)
    assert main.is_file() and link.is_symlink()
    assert os.readlink(link) == str(main)
    assert hdf5.read_empty_cells(main) == 12 and not hdf5.has_data(main)
    assert json.loads(hdf5.read_meta(main)) == {
        "id": array_id,
        "primary_attributes": {"k": 7, "day": "2024-03-01T12:00:00+00:00"},
        "custom_attributes": {"note": "hi"},
    }
    assert read_record(storage.root, storage.arr_meta, "array", array_id, LOCKS) == (
        array_id,
        {"k": 7, "day": T0},
        {"note": "hi"},
    )
    assert find_by_primary(storage.root, storage.arr_meta, "array", components) == array_id
    assert find_by_primary(storage.root, storage.arr_meta, "array", ("8", components[1])) is None
    found = storage.arr.filter({"k": 7, "day": "2024-03-01T12:00:00Z"}).last()  # the public API sees it
    assert found is not None and found.id == array_id and found.custom_attributes == {"note": "hi"}


def test_a_second_object_with_the_same_key_or_id_is_refused(storage: Storage) -> None:
    first = str(uuid.uuid4())
    primary = {"k": 1, "day": T0}
    create_record(storage.root, storage.arr_meta, "array", first, primary, {}, LOCKS)
    before = _tree(storage.arr_paths.path)
    second = str(uuid.uuid4())
    with pytest.raises(
        DekerValidationError, match=rf"an object with these primary attributes is stored \(id {first}\)"
    ):
        create_record(storage.root, storage.arr_meta, "array", second, primary, {}, LOCKS)
    assert _tree(storage.arr_paths.path) == before
    with pytest.raises(
        DekerArrayError, match=rf"File .*{first}\.hdf5 already exists: an object with id {first}"
    ):
        create_record(storage.root, storage.arr_meta, "array", first, {"k": 2, "day": T0}, {}, LOCKS)
    assert _tree(storage.arr_paths.path) == before  # no link made for the refused key


def test_an_equal_key_under_another_spelling_is_refused(storage: Storage) -> None:
    """``equal_keys``: an object stored under ``-0.0`` (as deker 1.1.7 did) refuses key ``0.0``."""
    schema = ArraySchema(
        dtype=np.int8,
        dimensions=[DimensionSchema("x", 2)],
        attributes=[AttributeSchema("q", float, primary=True), AttributeSchema("k", int, primary=True)],
    )
    meta = storage.client.create_collection("zeros", schema)._meta
    paths = CollectionPaths(storage.root, "zeros")
    first = str(uuid.uuid4())
    assert create_record(storage.root, meta, "array", first, {"q": -0.0, "k": 0}, {}, LOCKS) == ("-0.0", "0")
    before = _tree(paths.path)
    with pytest.raises(DekerValidationError, match=rf"-0\.0/0 already exists: .*\(id {first}\)"):
        create_record(storage.root, meta, "array", str(uuid.uuid4()), {"q": 0.0, "k": 0}, {}, LOCKS)
    assert _tree(paths.path) == before
    assert find_by_primary(storage.root, meta, "array", ("0.0", "0")) is None
    assert find_by_primary(storage.root, meta, "array", ("-0.0", "0")) == first
    other = str(uuid.uuid4())  # another key is not blocked
    assert create_record(storage.root, meta, "array", other, {"q": 0.0, "k": 1}, {}, LOCKS) == ("0.0", "1")


def test_a_dangling_link_of_an_interrupted_creation_is_ignored_then_replaced(storage: Storage) -> None:
    """An interrupted creation leaves its symlink naming a missing file: the object is absent."""
    components = ("3", T0.isoformat())
    ghost = str(uuid.uuid4())
    link = storage.arr_paths.symlink_file("array", components, ghost)
    link.parent.mkdir(parents=True)
    link.symlink_to(storage.arr_paths.main_file("array", ghost))
    assert find_by_primary(storage.root, storage.arr_meta, "array", components) is None
    assert storage.arr.filter({"k": 3, "day": T0}).last() is None
    real = str(uuid.uuid4())
    assert (
        create_record(storage.root, storage.arr_meta, "array", real, {"k": 3, "day": T0}, {}, LOCKS)
        == components
    )
    assert not os.path.lexists(link)
    assert sorted(p.name for p in link.parent.iterdir()) == [f"{real}.hdf5"]
    assert find_by_primary(storage.root, storage.arr_meta, "array", components) == real


def test_create_array_without_primary_attributes(tmp_path: Path) -> None:
    with Client(tmp_path.as_uri()) as client:
        schema = ArraySchema(dtype=np.uint8, dimensions=[DimensionSchema("x", 5)])
        meta = client.create_collection("plain", schema)._meta
        array_id = str(uuid.uuid4())
        assert create_record(client.root_path, meta, "array", array_id, {}, {}, LOCKS) == ()
        paths = CollectionPaths(client.root_path, "plain")
        assert paths.symlink_file("array", (), array_id) == paths.symlinks_dir("array") / f"{array_id}.hdf5"
        assert os.readlink(paths.symlink_file("array", (), array_id)) == str(
            paths.main_file("array", array_id)
        )
        assert read_record(client.root_path, meta, "array", array_id, LOCKS) == (array_id, {}, {})
        assert [a.id for a in client.get_collection("plain")] == [array_id]  # type: ignore[union-attr]


def test_read_record_errors(storage: Storage) -> None:
    missing = str(uuid.uuid4())
    with pytest.raises(
        DekerInstanceNotExistsError, match=rf"^Array {missing} does not exist in collection arr$"
    ):
        read_record(storage.root, storage.arr_meta, "array", missing, LOCKS)
    with pytest.raises(
        DekerInstanceNotExistsError, match=rf"^VArray {missing} does not exist in collection var$"
    ):
        read_record(storage.root, storage.var_meta, "varray", missing, LOCKS)
    vid = str(uuid.uuid4())
    create_record(storage.root, storage.var_meta, "varray", vid, {"start": T0}, {}, LOCKS)
    storage.var_paths.main_file("varray", vid).write_bytes(b"{not json")
    with pytest.raises(DekerMetaDataError, match=rf"^Metadata of .*{vid}\.json is invalid: "):
        read_record(storage.root, storage.var_meta, "varray", vid, LOCKS)
    storage.var_paths.main_file("varray", vid).write_bytes(b'{"primary_attributes": {}}')  # no id
    with pytest.raises(DekerMetaDataError, match=r"is invalid: Array metadata has no valid 'id': None$"):
        read_record(storage.root, storage.var_meta, "varray", vid, LOCKS)
    aid = str(uuid.uuid4())
    create_record(storage.root, storage.arr_meta, "array", aid, {"k": 5, "day": T0}, {}, LOCKS)
    storage.arr_paths.main_file("array", aid).write_bytes(b"garbage, not HDF5")
    with pytest.raises(DekerStorageError, match=rf"Cannot (open array file|read) .*{aid}\.hdf5"):
        read_record(storage.root, storage.arr_meta, "array", aid, LOCKS)


# ----------------------------------------------------------------------------------- varrays


def test_create_and_rewrite_a_varray(storage: Storage) -> None:
    vid = str(uuid.uuid4())
    components = create_record(storage.root, storage.var_meta, "varray", vid, {"start": T0}, {}, LOCKS)
    assert components == ("2024-03-01T12:00:00+00:00",)
    main = storage.var_paths.main_file("varray", vid)
    assert json.loads(main.read_bytes()) == {
        "id": vid,
        "primary_attributes": {"start": "2024-03-01T12:00:00+00:00"},
        "custom_attributes": {},
    }
    assert os.readlink(storage.var_paths.symlink_file("varray", components, vid)) == str(main)
    assert find_by_primary(storage.root, storage.var_meta, "varray", components) == vid
    assert read_record(storage.root, storage.var_meta, "varray", vid, LOCKS) == (vid, {"start": T0}, {})
    payload = json_dumps(
        {"id": vid, "primary_attributes": {"start": T0.isoformat()}, "custom_attributes": {}}
    )
    write_varray_meta(storage.root, storage.var_meta, vid, payload.encode() + b"\n")
    assert main.read_bytes() == payload.encode() + b"\n"
    assert [p.name for p in main.parent.iterdir()] == [main.name]  # no temporary file left
    with pytest.raises(DekerValidationError, match="primary attributes must be unique"):
        create_record(storage.root, storage.var_meta, "varray", str(uuid.uuid4()), {"start": T0}, {}, LOCKS)
    other = str(uuid.uuid4())
    with pytest.raises(
        DekerInstanceNotExistsError, match=rf"^VArray {other} does not exist in collection var$"
    ):
        write_varray_meta(storage.root, storage.var_meta, other, b"{}")
    assert not storage.var_paths.main_file("varray", other).exists()


# ---------------------------------------------------------------------------------- deletion


def test_delete_record_removes_everything_it_made(storage: Storage) -> None:
    keep = str(uuid.uuid4())
    create_record(storage.root, storage.arr_meta, "array", keep, {"k": 1, "day": T0}, {}, LOCKS)
    with_one = _tree(storage.arr_paths.path)
    gone = str(uuid.uuid4())
    components = create_record(storage.root, storage.arr_meta, "array", gone, {"k": 2, "day": T0}, {}, LOCKS)
    array = storage.arr.filter({"k": 2, "day": T0}).last()
    assert array is not None
    array[0, 0].update(np.int16(9))  # takes the array's lock: its mutex file appears
    assert storage.arr_paths.main_file("array", gone).with_suffix(".lock").exists()
    delete_record(storage.root, storage.arr_meta, "array", gone, components)
    assert _tree(storage.arr_paths.path) == with_one
    assert find_by_primary(storage.root, storage.arr_meta, "array", components) is None
    delete_record(storage.root, storage.arr_meta, "array", gone, components)  # again: nothing to do
    delete_record(storage.root, storage.arr_meta, "array", keep, ("1", T0.isoformat()))
    assert _tree(storage.arr_paths.path) == ["arr.json", "array_data", "array_symlinks"]  # the roots stay


# ------------------------------------------------------------------------------------- tiles


def test_tile_custom_attributes(storage: Storage) -> None:
    schema = storage.var_meta.schema
    assert tile_custom_attributes(schema, {"start": T0}, (0, 2)) == {"parent.start": T0}
    assert tile_custom_attributes(schema, {"start": T0}, (1, 0)) == {"parent.start": T0 + timedelta(hours=4)}
    with pytest.raises(
        DekerValidationError, match=r"^VArray attribute 'start' must hold the start datetime of 'time'$"
    ):
        tile_custom_attributes(schema, {"start": "2024-03-01"}, (0, 0))
    with pytest.raises(DekerValidationError, match="must hold the start datetime"):
        tile_custom_attributes(schema, {}, (0, 0))


def test_tiles_are_created_once_and_listed(storage: Storage) -> None:
    vid = str(uuid.uuid4())
    create_record(storage.root, storage.var_meta, "varray", vid, {"start": T0}, {}, LOCKS)
    values = {"start": T0}
    assert tile_ids(storage.root, storage.var_meta, vid) == {}
    tid = create_tile_with(storage.root, storage.var_meta, vid, (1, 2), values, LOCKS, None)[0]
    assert (
        create_tile_with(storage.root, storage.var_meta, vid, (1, 2), values, LOCKS, None)[0] == tid
    )  # idempotent
    assert tile_ids(storage.root, storage.var_meta, vid) == {(1, 2): tid}
    link = storage.var_paths.symlink_file("array", (vid, "1-2"), tid)
    assert os.readlink(link) == str(storage.var_paths.main_file("array", tid))
    assert read_record(storage.root, storage.var_meta, "array", tid, LOCKS) == (
        tid,
        {"vid": vid, "v_position": (1, 2)},
        {"parent.start": T0 + timedelta(hours=4)},
    )
    assert not hdf5.has_data(storage.var_paths.main_file("array", tid))
    block = np.arange(8, dtype=np.float32).reshape(4, 2)
    other, created = create_tile_with(storage.root, storage.var_meta, vid, (0, 1), values, LOCKS, block)
    assert created is True
    main = storage.var_paths.main_file("array", other)
    np.testing.assert_array_equal(
        hdf5.read_region(main, (slice(0, 4), slice(0, 2)), np.float32, np.nan), block
    )
    assert hdf5.read_empty_cells(main) == 0
    again = create_tile_with(storage.root, storage.var_meta, vid, (0, 1), values, LOCKS, block * 0 + 5)
    assert again == (other, False)  # exists: the data is not written
    np.testing.assert_array_equal(
        hdf5.read_region(main, (slice(0, 4), slice(0, 2)), np.float32, np.nan), block
    )
    assert tile_ids(storage.root, storage.var_meta, vid) == {(1, 2): tid, (0, 1): other}
    assert tile_ids(storage.root, storage.var_meta, vid, [(0, 1), (1, 1)]) == {(0, 1): other}
    assert tile_ids(storage.root, storage.var_meta, str(uuid.uuid4())) == {}
    # The public API reads the tile written here.
    varray = storage.var.filter({"start": T0}).last()
    assert varray is not None
    np.testing.assert_array_equal(varray[0:4, 2:4].read(), block)


def test_a_dangling_tile_link_is_replaced(storage: Storage) -> None:
    vid = str(uuid.uuid4())
    create_record(storage.root, storage.var_meta, "varray", vid, {"start": T0}, {}, LOCKS)
    ghost = str(uuid.uuid4())
    link = storage.var_paths.symlink_file("array", (vid, "0-0"), ghost)
    link.parent.mkdir(parents=True)
    link.symlink_to(storage.var_paths.main_file("array", ghost))
    (link.parent.parent / "not-a-position").mkdir()  # ignored by the listing
    assert tile_ids(storage.root, storage.var_meta, vid) == {}
    tid = create_tile_with(storage.root, storage.var_meta, vid, (0, 0), {"start": T0}, LOCKS, None)[0]
    assert tid != ghost and not os.path.lexists(link)
    assert tile_ids(storage.root, storage.var_meta, vid) == {(0, 0): tid}


# ------------------------------------------------------------------------------------- races


def _create_key_in_child(root: str, meta: CollectionMeta, array_id: str) -> str:
    """Run in a forkserver worker: try to create the Array of key (k=42, T0)."""
    try:
        create_record(Path(root), meta, "array", array_id, {"k": 42, "day": T0}, {}, LOCKS)
    except DekerValidationError as exc:
        return f"refused: {exc}"
    return "created"


def _create_tile_in_child(root: str, meta: CollectionMeta, vid: str) -> tuple[str, bool]:
    """Run in a forkserver worker: get or create the tile (1, 1) with data."""
    data = np.full((4, 2), 3.0, dtype=np.float32)
    return create_tile_with(Path(root), meta, vid, (1, 1), {"start": T0}, LOCKS, data)


def test_creation_races_between_processes_have_one_winner(storage: Storage) -> None:
    vid = str(uuid.uuid4())
    create_record(storage.root, storage.var_meta, "varray", vid, {"start": T0}, {}, LOCKS)
    ids = [str(uuid.uuid4()) for _ in range(4)]
    with ProcessPoolExecutor(4, mp_context=mp.get_context("forkserver")) as pool:
        keys = [pool.submit(_create_key_in_child, str(storage.root), storage.arr_meta, i) for i in ids]
        tiles = [
            pool.submit(_create_tile_in_child, str(storage.root), storage.var_meta, vid) for _ in range(4)
        ]
        key_results = [f.result(timeout=60) for f in keys]
        tile_results = [f.result(timeout=60) for f in tiles]
    assert key_results.count("created") == 1
    winner = ids[key_results.index("created")]
    for result in key_results:
        if result != "created":
            assert result.startswith("refused: File ") and f"(id {winner})" in result
    components = ("42", T0.isoformat())
    assert find_by_primary(storage.root, storage.arr_meta, "array", components) == winner
    assert sorted(p.name for p in storage.arr_paths.symlink_dir("array", components).iterdir()) == [
        f"{winner}.hdf5"
    ]
    assert [a.id for a in storage.arr] == [winner]
    tile_id = tile_results[0][0]
    assert {tid for tid, _ in tile_results} == {tile_id}
    assert sorted(created for _, created in tile_results) == [False, False, False, True]
    assert tile_ids(storage.root, storage.var_meta, vid) == {(1, 1): tile_id}
    main = storage.var_paths.main_file("array", tile_id)
    np.testing.assert_array_equal(
        hdf5.read_region(main, (slice(0, 4), slice(0, 2)), np.float32, np.nan), np.full((4, 2), 3.0)
    )
