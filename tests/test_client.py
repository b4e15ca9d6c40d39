"""Client: construction, URIs, settings validation, collections, open/close life cycle.

Also: a new collection cannot be named ``<x>.lock`` (the lock file of a collection ``x``), in
either order of creation; a collection of such a name that deker 1.1.7 made still opens.
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import hdf5plugin
import numpy as np
import pytest

from deker import (
    ArraySchema,
    AttributeSchema,
    Client,
    DimensionSchema,
    HDF5CompressionOpts,
    HDF5Options,
    VArraySchema,
)
from deker.errors import (
    DekerClientError,
    DekerCollectionAlreadyExistsError,
    DekerCollectionNotExistsError,
    DekerMemoryError,
    DekerMetaDataError,
    DekerStorageError,
    DekerURIError,
    DekerValidationError,
)
from deker.storage.identity import STORAGE_ID_FILE


def schema(size: int = 4) -> ArraySchema:
    return ArraySchema(dtype=np.float32, dimensions=[DimensionSchema(name="x", size=size)])


def test_open_creates_collections_dir(tmp_path: Path) -> None:
    with Client(f"file://{tmp_path}/s") as client:
        assert client.is_open and not client.is_closed
        assert client.root_path == tmp_path / "s" / "collections"
        assert client.root_path.is_dir()
        assert client.meta_version == "0.2"
    assert client.is_closed


def test_relative_uri_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    client = Client("file:rel")
    assert client.root_path == tmp_path / "rel" / "collections"
    coll = client.create_collection("c", schema())
    arr = coll.create()
    link = next((tmp_path / "rel/collections/c/array_symlinks").iterdir())
    assert os.readlink(link).startswith(str(tmp_path))
    assert coll.filter({"id": arr.id}).last() == arr
    client.close()


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("", "Empty uri"),
        ("   ", "Empty uri"),
        (42, "Invalid uri type: int"),
        ("http://host/x", "only file:// storages are"),
        ("/plain/path", "write 'file:///plain/path'"),
        ("rel", "write 'file://{cwd}/rel'"),
        ("file://rel", "write 'file://{cwd}/rel'"),
        ("file://otherhost/x", "write 'file://{cwd}/otherhost/x'"),
        ("file://", "it names no path"),
    ],
)
def test_bad_uri(uri: object, says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One rule, one error type (a DekerClientError as in 1.1.7, and a ValueError), saying what to write."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DekerURIError) as info:
        Client(uri)  # type: ignore[arg-type]
    assert isinstance(info.value, DekerClientError) and isinstance(info.value, DekerValidationError)
    assert isinstance(info.value, ValueError)
    assert says.format(cwd=tmp_path) in str(info.value)
    assert "file:///data/deker" in str(info.value) or "file:///" in str(info.value)
    assert list(tmp_path.iterdir()) == []  # nothing was created


def test_read_only_client_creates_no_storage_and_says_why(tmp_path: Path) -> None:
    """Issue 17: ``read_only=True`` never creates a storage; the attributes tell the mode and why."""
    from deker.errors import DekerReadOnlyError

    missing = tmp_path / "missing"
    with pytest.raises(DekerClientError, match="a read-only client creates nothing"):
        Client(missing.as_uri(), read_only=True)
    assert not missing.exists()
    with Client((tmp_path / "st").as_uri()) as writer:
        assert writer.read_only is False and writer.read_only_reason is None
    (tmp_path / "st" / "collections" / STORAGE_ID_FILE).unlink()  # a storage of deker 1.1.7
    with Client((tmp_path / "st").as_uri(), read_only=True) as reader:
        assert reader.read_only is True and reader.read_only_reason == "read_only=True"
        assert "read-only" in repr(reader)
        with pytest.raises(
            DekerReadOnlyError, match=r"Cannot create collection c: .* is read-only \(read_only=True\)"
        ):
            reader.create_collection("c", schema())
        with pytest.raises(PermissionError):
            reader.clear_locks()
    assert sorted(os.listdir(tmp_path / "st" / "collections")) == []  # no identity file, no lock
    with pytest.raises(DekerValidationError, match="'read_only' must be a bool"):
        Client((tmp_path / "st").as_uri(), read_only="yes")  # type: ignore[arg-type]


def test_create_false_refuses_a_missing_storage(tmp_path: Path) -> None:
    typo = tmp_path / "stroage"
    with pytest.raises(DekerClientError, match=f"No deker storage at {typo}: it has no 'collections'"):
        Client(typo.as_uri(), create=False)
    assert not typo.exists()
    with Client((tmp_path / "storage").as_uri()) as client:  # the default creates, as in 1.1.7
        client.create_collection("c", schema())
    with Client((tmp_path / "storage").as_uri(), create=False) as client:
        assert client.get_collection("c") is not None
    client.close()
    (tmp_path / "storage" / "collections" / "c" / "c.json").unlink()
    shutil.rmtree(tmp_path / "storage")
    with pytest.raises(DekerClientError, match="No deker storage"):
        client.__enter__()  # re-opening does not re-create it either
    assert not (tmp_path / "storage").exists()
    with pytest.raises(DekerValidationError, match="'create' must be a bool"):
        Client((tmp_path / "x").as_uri(), create="no")  # type: ignore[arg-type]


def test_uri_through_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(DekerValidationError):
        Client(f"file://{tmp_path}/f/s")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"memory_limit": "1.5G"},
        {"memory_limit": "5X"},
        {"write_lock_timeout": "1"},
        {"write_lock_timeout": -1},
        {"write_lock_check_interval": 0},
        {"workers": 0},
        {"skip_collection_create_memory_check": "yes"},
        {"executor": object()},
    ],
)
def test_bad_settings(tmp_path: Path, kwargs: dict[str, object]) -> None:
    with pytest.raises(DekerValidationError):
        Client(f"file://{tmp_path}", **kwargs)  # type: ignore[arg-type]


def test_bad_loglevel(tmp_path: Path) -> None:
    with pytest.raises(DekerClientError):
        Client(f"file://{tmp_path}", loglevel="LOUD")


@pytest.mark.parametrize("limit", ["100K", "512m", "4G", "1t", 10**9, 0, -1])
def test_memory_limit_forms(tmp_path: Path, limit: object) -> None:
    Client(f"file://{tmp_path}", memory_limit=limit).close()  # type: ignore[arg-type]


def test_create_get_iterate(tmp_path: Path) -> None:
    with Client(f"file://{tmp_path}") as client:
        a = client.create_collection("a", schema())
        b = client.create_collection(
            "b", VArraySchema(dtype=np.int16, dimensions=[DimensionSchema(name="x", size=8)], vgrid=(2,))
        )
        assert client.get_collection("a") == a
        assert client.get_collection("missing") is None
        assert [c.name for c in client] == ["a", "b"]
        assert (client.root_path / "a.lock").exists()
        with pytest.raises(DekerCollectionAlreadyExistsError):
            client.create_collection("a", schema())
        assert b.varray_schema is not None


@pytest.mark.parametrize("name", ["", "  ", "a/b", "..", ".", "x\x00y", "n" * 300, 5])
def test_bad_collection_names(tmp_path: Path, name: object) -> None:
    with Client(f"file://{tmp_path}") as client:
        with pytest.raises(DekerValidationError):
            client.create_collection(name, schema())  # type: ignore[arg-type]
        assert sorted(p.name for p in client.root_path.iterdir()) == [STORAGE_ID_FILE]  # made at open


def _entries(client: Client) -> list[str]:
    # collection directories and lock files; the storage's identity file is always there
    return sorted(p.name for p in client.root_path.iterdir() if p.name != STORAGE_ID_FILE)


@pytest.mark.parametrize("first", ["c", "c.lock"])
@pytest.mark.parametrize("name", ["c.lock", "c.LOCK"])
def test_collection_names_of_lock_files_are_refused(tmp_path: Path, first: str, name: str) -> None:
    """A collection ``c.lock`` would be the lock file of ``c``: refused before anything is written.

    (The old code gave ``IsADirectoryError`` or a false "already exists" and a stray
    ``c.lock.lock``, depending on which came first.)
    """
    with Client(f"file://{tmp_path}") as client:
        if first == "c":
            client.create_collection("c", schema())
        before = _entries(client)
        with pytest.raises(DekerValidationError, match=r"ends with '\.lock'"):
            client.create_collection(name, schema())
        data = {**client.create_collection("d", schema()).as_dict, "name": name}
        with pytest.raises(DekerValidationError, match=r"ends with '\.lock'"):
            client.collection_from_dict(data)
        assert _entries(client) == sorted([*before, "d", "d.lock"])
        if first == "c.lock":
            client.create_collection("c", schema())  # the name is still free, nothing stray
            assert _entries(client) == ["c", "c.lock", "d", "d.lock"]


def _as_deker_117_made(client: Client, made: str, name: str) -> None:
    """Rename collection ``made`` to ``name`` as deker 1.1.7 would have laid it out (SPEC §2.1).

    (``<root>/<name>/<name>.json`` naming it, ``<root>/<name>.lock``; the test of
    ``test_compat_read.py`` reads storages 1.1.7 itself wrote.)
    """
    root = client.root_path
    (root / made).rename(root / name)
    meta_file = root / name / f"{made}.json"
    meta = json.loads(meta_file.read_text())
    meta_file.unlink()
    (root / name / f"{name}.json").write_text(json.dumps({**meta, "name": name}))
    (root / f"{made}.lock").rename(root / f"{name}.lock")


def test_a_collection_named_like_a_lock_file_by_deker_117_still_opens(tmp_path: Path) -> None:
    with Client(f"file://{tmp_path}") as client:
        coll = client.create_collection("tmp", schema())
        arr = coll.create()
        arr[:].update(np.arange(4, dtype=np.float32))
        _as_deker_117_made(client, "tmp", "c.lock")
        assert _entries(client) == ["c.lock", "c.lock.lock"]
        legacy = client.get_collection("c.lock")
        assert legacy is not None and [c.name for c in client] == ["c.lock"]
        assert list(legacy.filter({"id": arr.id}).last()[:].read()) == [0, 1, 2, 3]
        with pytest.raises(DekerValidationError, match=r"lock file .*c\.lock is a directory"):
            client.create_collection("c", schema())  # its lock file would be that directory
        assert _entries(client) == ["c.lock", "c.lock.lock"]  # nothing written
        legacy.clear()
        legacy.delete()
        assert _entries(client) == []
        client.create_collection("c", schema())
        assert _entries(client) == ["c", "c.lock"]


def test_bad_schema_and_adapter(tmp_path: Path) -> None:
    with Client(f"file://{tmp_path}") as client:
        with pytest.raises(DekerValidationError):
            client.create_collection("c", {"dtype": "float"})  # type: ignore[arg-type]
        with pytest.raises(DekerStorageError):
            client.create_collection("c", schema(), storage_adapter_type="Other")
        with pytest.raises(DekerValidationError):
            client.create_collection("c", schema(), collection_options="gzip")  # type: ignore[arg-type]


def test_memory_check_at_creation(tmp_path: Path) -> None:
    with Client(f"file://{tmp_path}", memory_limit="1K") as client:
        with pytest.raises(DekerMemoryError):
            client.create_collection("big", schema(1000))
        assert not (client.root_path / "big").exists()
        assert not (client.root_path / "big.lock").exists()
    with Client(f"file://{tmp_path}", memory_limit="1K", skip_collection_create_memory_check=True) as client:
        client.create_collection("big", schema(1000))


def test_collection_from_dict_roundtrip(tmp_path: Path) -> None:
    with Client(f"file://{tmp_path}") as client:
        c = client.create_collection("c", schema(), HDF5Options(chunks=True))
        data = c.as_dict
        c.delete()
        again = client.collection_from_dict(data)
        assert again.as_dict == data
        old = dict(data, name="old", metadata_version="0.1")
        assert client.collection_from_dict(old).as_dict["metadata_version"] == "0.2"
        with pytest.raises(DekerMetaDataError):
            client.collection_from_dict(dict(data, name="new", metadata_version="0.3"))
        with pytest.raises(DekerMetaDataError):
            client.collection_from_dict({k: v for k, v in data.items() if k != "metadata_version"})


def test_collection_from_dict_takes_the_builtin_dtype_names_of_deker_117(tmp_path: Path) -> None:
    """deker 1.1.7 wrote ``"int"``/``"float"`` for attribute types and accepted them (with or
    without ``numpy.``, like any numpy name without it) for the array dtype too."""
    base = {
        "type": "array",
        "schema": {
            "dimensions": [{"name": "x", "size": 3, "labels": None, "scale": None, "type": "generic"}],
            "dtype": "int",
            "attributes": [{"name": "k", "primary": True, "dtype": "int"}],
            "fill_value": None,
        },
        "options": None,
        "storage_adapter": "HDF5StorageAdapter",
        "metadata_version": "0.2",
    }
    expected = {
        "int": np.int64,
        "float": np.float64,
        "complex": np.complex128,
        "numpy.int": np.int64,
        "numpy.float": np.float64,
        "float32": np.float32,
        "numpy.float32": np.float32,
    }
    with Client(f"file://{tmp_path}") as client:
        for i, (name, dtype) in enumerate(expected.items()):
            data = {**base, "name": f"c{i}", "schema": {**base["schema"], "dtype": name}}  # type: ignore[dict-item]
            coll = client.collection_from_dict(data)
            assert coll.array_schema.dtype is dtype
            assert coll.array_schema.attributes[0].dtype is int
            assert client.get_collection(f"c{i}").array_schema.dtype is dtype  # type: ignore[union-attr]
            stored = (client.root_path / f"c{i}" / f"c{i}.json").read_text()
            assert f'"dtype": "numpy.{dtype.__name__ if dtype is not np.complex128 else "cfloat"}"' in stored
        for bad in ("bool", "str", "string", "datetime", "numpy.bool_", "float65"):
            data = {**base, "name": "bad", "schema": {**base["schema"], "dtype": bad}}  # type: ignore[dict-item]
            with pytest.raises(DekerMetaDataError, match="Unknown dtype name"):
                client.collection_from_dict(data)


def test_garbage_metadata(tmp_path: Path) -> None:
    with Client(f"file://{tmp_path}") as client:
        client.create_collection("c", schema())
        (client.root_path / "c" / "c.json").write_text("{not json")
        with pytest.raises(DekerMetaDataError):
            client.get_collection("c")
        assert [c.name for c in client] == []  # skipped with a warning, iteration survives


def test_closed_client_and_reopen(tmp_path: Path) -> None:
    client = Client(f"file://{tmp_path}")
    coll = client.create_collection("c", schema())
    arr = coll.create()
    client.close()
    client.close()
    for call in (
        lambda: client.get_collection("c"),
        lambda: list(client),
        lambda: arr[:].read(),
        lambda: coll.create(),
        lambda: client.create_collection("d", schema()),
    ):
        with pytest.raises(DekerClientError, match="Client is closed"):
            call()
    for _ in range(3):
        with client:
            again = client.get_collection("c")
            assert again is not None and again.filter({"id": arr.id}).last() is not None
    with pytest.raises(DekerClientError):
        arr[:].read()  # objects of a closed session stay closed


def test_user_executor_is_not_shut_down(tmp_path: Path) -> None:
    pool = ThreadPoolExecutor(1)
    with Client(f"file://{tmp_path}", executor=pool):
        pass
    assert pool.submit(lambda: 3).result() == 3
    pool.shutdown()


def test_storage_size_and_unknown_collection(tmp_path: Path) -> None:
    with Client(f"file://{tmp_path}") as client:
        coll = client.create_collection("c", schema())
        coll.create()[:].update(np.ones(4, dtype=np.float32))
        size = client.calculate_storage_size()
        expected = sum(
            p.stat().st_size for p in client.root_path.rglob("*") if p.is_file() and not p.is_symlink()
        )
        assert size.bytes == expected and size.human
        assert client.calculate_storage_size("c").bytes <= size.bytes
        with pytest.raises(DekerCollectionNotExistsError):
            client.calculate_storage_size("nope")
        with pytest.raises(DekerCollectionNotExistsError):
            client.clear_locks("nope")


def _killed_mid_update(uri: str, collection: str = "j") -> None:
    """Start a partial update of the collection's first Array (or of one tile of its first
    VArray) and die (SIGKILL) after its first journal record."""
    import signal

    from deker.storage import journal

    real_write = journal.UndoJournal.write

    def write(self: journal.UndoJournal, data: object) -> int:
        result = real_write(self, data)  # type: ignore[arg-type]
        os.kill(os.getpid(), signal.SIGKILL)
        return result

    journal.UndoJournal.write = write  # type: ignore[method-assign]
    with Client(uri) as client:
        coll = client.get_collection(collection)
        assert coll is not None
        if collection == "j":
            next(iter(coll))[10:20].update(np.full((10, 64), -1.0))
        else:
            next(iter(coll))[0:2, 0:2].update(np.int16(9))


def test_clear_locks_lists_every_marker_it_removes(tmp_path: Path) -> None:
    """A VArray update killed inside a tile's journal leaves the journal and its VArray marker
    on the tile: the marker was removed by the write lock that rolled the journal back, and
    missing from what clear_locks returned."""
    import multiprocessing as mp

    from deker.storage import atomic, lockinfo

    uri = f"file://{tmp_path}"
    with Client(uri) as client:
        dims = [DimensionSchema("y", 8), DimensionSchema("x", 8)]
        varray = client.create_collection(
            "v", VArraySchema(dtype=np.int16, dimensions=dims, vgrid=(2, 2))
        ).create()
        varray[:].update(np.int16(1))
        varray[0, 0].update(np.int16(2))  # the tiles are stored; the next update is in place
    proc = mp.get_context("spawn").Process(target=_killed_mid_update, args=(uri, "v"))
    proc.start()
    proc.join(60)
    assert proc.exitcode == -9
    left = [item.path for item in atomic.find_leftovers(tmp_path) if item.kind == "journal"]
    markers = [i.path for i in lockinfo.list_locks(tmp_path) if i.stale]
    assert len(left) == 1 and len(markers) == 1 and markers[0].name.endswith(".varraylock")
    with Client(uri) as client:
        assert client.clear_locks() == sorted(left + markers, key=str)
        assert client.list_locks() == [i for i in client.list_locks() if not i.stale]
        assert client.check_integrity(4, stop_on_error=False).problems == []


def test_clear_locks_rolls_back_what_a_killed_writer_left(tmp_path: Path) -> None:
    import multiprocessing as mp

    from deker.storage import atomic

    uri = f"file://{tmp_path}"
    values = np.arange(64 * 64, dtype=np.float64).reshape(64, 64)
    with Client(uri) as client:
        dims = [DimensionSchema("y", 64), DimensionSchema("x", 64)]
        schema = ArraySchema(dtype=np.float64, dimensions=dims)
        array = client.create_collection("j", schema).create()
        array[:].update(values)
        array[0, 0].update(0.5)  # a first in-place write: the data block now exists
        values[0, 0] = 0.5
    proc = mp.get_context("spawn").Process(target=_killed_mid_update, args=(uri,))
    proc.start()
    proc.join(60)
    assert proc.exitcode == -9
    journals = [left.path for left in atomic.find_leftovers(tmp_path) if left.kind == "journal"]
    assert len(journals) == 1
    with Client(uri) as client:
        coll = client.get_collection("j")
        assert coll is not None
        array = next(iter(coll))
        np.testing.assert_array_equal(array[:].read(), values)  # readers see the old version
        assert client.clear_locks() == journals  # rolled back, then removed
        assert not journals[0].exists()
        assert client.clear_locks() == []
        np.testing.assert_array_equal(array[:].read(), values)
        assert client.check_integrity(4, stop_on_error=False).problems == []


@pytest.mark.parametrize("vgrid", [None, (2, 1)])
def test_a_chunk_shape_of_another_rank_is_refused_at_creation(tmp_path: Path, vgrid: object) -> None:
    """Accepted, it made every write into the collection fail."""
    dims = [DimensionSchema("y", 4), DimensionSchema("x", 3)]
    schema = (
        ArraySchema(dtype=np.float32, dimensions=dims)
        if vgrid is None
        else VArraySchema(dtype=np.float32, dimensions=dims, vgrid=vgrid)
    )
    with Client(tmp_path.as_uri()) as client:
        with pytest.raises(DekerValidationError, match="one chunk size per dimension"):
            client.create_collection("c", schema, HDF5Options(chunks=(2,)))
        assert client.get_collection("c") is None


def test_a_filter_hdf5_lacks_is_refused_at_creation(tmp_path: Path) -> None:
    """Accepted, every write into the collection failed with h5py's ValueError."""
    schema = ArraySchema(dtype=np.float32, dimensions=[DimensionSchema("x", 4)])
    with Client(tmp_path.as_uri()) as client:
        with pytest.raises(DekerValidationError, match="HDF5 filter 31999 is not available"):
            client.create_collection("c", schema, HDF5Options(True, HDF5CompressionOpts(31999, None)))
        assert client.get_collection("c") is None
        zstd = HDF5CompressionOpts(**hdf5plugin.Zstd(1))
        client.create_collection("z", schema, HDF5Options(True, zstd)).create()[:].update(np.float32(1))


def test_a_primary_attribute_named_id_is_refused_at_creation(tmp_path: Path) -> None:
    """filter({"id": ...}) is the lookup by array id: arrays could never be found by such an attribute."""
    dims = [DimensionSchema("x", 4)]
    named_id = [AttributeSchema("id", str, primary=True)]
    with Client(tmp_path.as_uri()) as client:
        for made in (
            ArraySchema(dtype=np.float32, dimensions=dims, attributes=named_id),
            VArraySchema(dtype=np.float32, dimensions=dims, vgrid=(2,), attributes=named_id),
        ):
            with pytest.raises(DekerValidationError, match="cannot be named 'id'"):
                client.create_collection("c", made)
            assert client.get_collection("c") is None
        custom = [AttributeSchema("id", str, primary=False)]  # a custom one is harmless
        client.create_collection("c", ArraySchema(dtype=np.float32, dimensions=dims, attributes=custom))
