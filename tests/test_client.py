"""Client: construction, URIs, settings validation, collections, open/close life cycle."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from deker import ArraySchema, Client, DimensionSchema, HDF5Options, VArraySchema
from deker.errors import (
    DekerClientError,
    DekerCollectionAlreadyExistsError,
    DekerCollectionNotExistsError,
    DekerMemoryError,
    DekerMetaDataError,
    DekerStorageError,
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
    ("uri", "exc"),
    [
        ("", DekerValidationError),
        ("   ", DekerValidationError),
        (42, DekerValidationError),
        ("http://host/x", DekerClientError),
        ("/plain/path", DekerClientError),
        ("file://otherhost/x", DekerValidationError),
    ],
)
def test_bad_uri(uri: object, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        Client(uri)  # type: ignore[arg-type]


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


def _killed_mid_update(uri: str) -> None:
    """Start a partial update of the Array and die (SIGKILL) after its first journal record."""
    import signal

    from deker.storage import journal

    real_write = journal.UndoJournal.write

    def write(self: journal.UndoJournal, data: object) -> int:
        result = real_write(self, data)  # type: ignore[arg-type]
        os.kill(os.getpid(), signal.SIGKILL)
        return result

    journal.UndoJournal.write = write  # type: ignore[method-assign]
    with Client(uri) as client:
        coll = client.get_collection("j")
        assert coll is not None
        next(iter(coll))[10:20].update(np.full((10, 64), -1.0))


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
