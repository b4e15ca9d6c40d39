"""Regression tests: one per defect found by the reliability tests (stress, crash, fuzz, damage).

Each test names the defect it guards against and the test that found it.  Concurrent events
are injected at a precise point by running a real operation of a second client from inside a
method of the first (no mock: both run the real code on real files).
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deker import ArraySchema, AttributeSchema, Client, DimensionSchema, VArraySchema, tileindex
from deker.arrays import VArray
from deker.errors import (
    DekerFilterError,
    DekerInstanceNotExistsError,
    DekerMetaDataError,
    DekerStorageError,
    DekerValidationError,
)
from deker.executors import TaskRunner
from deker.sizes import usable_cores
from deker.storage import atomic, hdf5
from deker.tileindex import TileIndex

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def clients(tmp_path: Path) -> Any:
    root = tmp_path / "s"
    with (
        Client(f"file://{root}", write_lock_timeout=5, write_lock_check_interval=0.01) as one,
        Client(f"file://{root}", write_lock_timeout=5, write_lock_check_interval=0.01) as two,
    ):
        schema = VArraySchema(
            dtype=np.float64,
            dimensions=[DimensionSchema("y", 4), DimensionSchema("x", 4)],
            vgrid=(2, 2),
            attributes=[AttributeSchema("name", str, primary=True)],
        )
        one.create_collection("v", schema)
        arrays = ArraySchema(
            dtype=np.float64,
            dimensions=[DimensionSchema("y", 2), DimensionSchema("x", 3)],
            attributes=[AttributeSchema("name", str, primary=True)],
        )
        one.create_collection("a", arrays)
        yield root, one, two


def _clear_once_after_listing(
    monkeypatch: pytest.MonkeyPatch, other: Any, key: Any, nth: int = 1
) -> list[int]:
    """Make the ``nth`` tile listing of a VArray be followed at once by a real concurrent clear."""
    real = TileIndex.ids
    done: list[int] = []

    def listing(self: TileIndex, *args: Any, **kwargs: Any) -> dict[tuple[int, ...], str]:
        tiles = real(self, *args, **kwargs)
        done.append(1)
        if len(done) == nth:
            other[key].clear()  # another client deletes the tile between listing and locking
        return tiles

    monkeypatch.setattr(TileIndex, "ids", listing)
    return done


def test_update_after_a_concurrent_clear_deleted_its_tile(
    clients: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect (stress/test_concurrency): VSubset.update failed with "VArray lock lost" when a
    concurrent clear deleted one of its tiles between the tile listing and the lock; its
    tasks then wrote tiles they did not hold.  Fixed: missing tiles make it release, list and
    create the tiles again, and retry in grid order.
    """
    _root, one, two = clients
    mine = one.get_collection("v").create({"name": "v"})
    mine[:].update(np.ones((4, 4)))
    other = two.get_collection("v").filter({"name": "v"}).last()
    done = _clear_once_after_listing(monkeypatch, other, (slice(0, 2), slice(0, 2)))
    mine[0:2, 0:4].update(np.full((2, 4), 5.0))
    assert done
    np.testing.assert_array_equal(mine[:].read(), [[5, 5, 5, 5], [5, 5, 5, 5], [1, 1, 1, 1], [1, 1, 1, 1]])


def test_clear_after_a_concurrent_clear_deleted_its_tile(
    clients: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect (stress/test_concurrency): the same race made VSubset.clear fail "lock lost"."""
    _root, one, two = clients
    mine = one.get_collection("v").create({"name": "v"})
    mine[:].update(np.ones((4, 4)))
    other = two.get_collection("v").filter({"name": "v"}).last()
    done = _clear_once_after_listing(monkeypatch, other, (slice(0, 2), slice(0, 2)), nth=2)
    mine[0:1, :].clear()  # (its first listing only checks whether any tile exists)
    assert len(done) >= 2
    expected = np.ones((4, 4))
    expected[0:2, 0:2] = np.nan
    expected[0, :] = np.nan
    np.testing.assert_array_equal(mine[:].read(), expected)


def test_delete_after_a_concurrent_clear_deleted_a_tile(
    clients: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect (found reviewing the same race): VArray.delete failed "lock lost" for such a tile."""
    _root, one, two = clients
    mine = one.get_collection("v").create({"name": "v"})
    mine[:].update(np.ones((4, 4)))
    other = two.get_collection("v").filter({"name": "v"}).last()
    _clear_once_after_listing(monkeypatch, other, (slice(2, 4), slice(2, 4)))
    mine.delete()
    assert one.get_collection("v").filter({"name": "v"}).last() is None
    assert list(one.get_collection("v").arrays) == []


def test_concurrent_first_updates_are_isolated(clients: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect (docs/concurrency.md example, in a CI run): two updates of one whole VArray
    whose tiles did not exist yet could leave a mix of both values.  Each created some tiles
    holding its data without keeping them locked, then locked and overwrote the tiles the
    other had created.  Fixed: a creator holds a new tile from before it is published
    until its operation ends (two-phase locking); a tile someone else created meanwhile is
    locked without waiting, or everything is released and locked again in grid order.

    Here update A (value 1) creates tile (0, 0) first and update B (value 2) tile (0, 1),
    then each meets the other's tile; whatever the order after that, one value must win.
    (Both firsts are among the first two tiles in grid order, so this also runs where only
    two creations of an update run at once: the cap of two cores.)
    """
    _root, one, two = clients
    first = {1.0: (0, 0), 2.0: (0, 1)}
    firsts_done = threading.Event()
    both_listed = threading.Barrier(2)  # neither publishes a tile before both listed the tiles
    made: list[float] = []
    guard = threading.Lock()
    real = TileIndex.create

    def create(self: TileIndex, position: tuple[int, ...], values: Any, data: Any = None, *extra: Any) -> Any:
        value = float(np.asarray(data).flat[0])
        if position != first[value]:
            assert firsts_done.wait(10), "the other update never created its first tile"
            return real(self, position, values, data, *extra)
        both_listed.wait(10)
        result = real(self, position, values, data, *extra)
        with guard:
            made.append(value)
            if len(made) == 2:
                firsts_done.set()
        return result

    monkeypatch.setattr(TileIndex, "create", create)
    if usable_cores() < 2:  # the hook needs an update's first two creations at once
        monkeypatch.setattr(TaskRunner, "suggest_parallelism", lambda self, **kwargs: None)
    mine = one.get_collection("v").create({"name": "v"})
    theirs = two.get_collection("v").filter({"name": "v"}).last()
    errors: list[BaseException] = []

    def update(varray: VArray, value: float) -> None:
        try:
            varray[:].update(np.full((4, 4), value))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=update, args=(mine, 1.0)),
        threading.Thread(target=update, args=(theirs, 2.0)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    assert sorted(made) == [1.0, 2.0]
    values = np.unique(mine[:].read())
    assert len(values) == 1, f"a mix of both updates: {mine[:].read()}"


def test_fifo_instead_of_a_data_file_does_not_hang(clients: Any) -> None:
    """Defect (test_damaged_storage): a FIFO where a data file should be made every call hang
    forever (the lock probe opened it for reading and waited for a writer).  Fixed: a data
    file that is not a regular file is refused with DekerStorageError before it is opened.
    """
    _root, one, _two = clients
    arr = one.get_collection("a").create({"name": "x"})
    path = Path(arr._main_file)
    os.unlink(path)
    os.mkfifo(path)
    for call in (arr[:].read, lambda: arr[:].update(np.zeros((2, 3))), arr.read_meta):
        with pytest.raises(DekerStorageError, match="not a regular file"):
            call()


def test_os_errors_become_storage_errors_naming_the_file(clients: Any) -> None:
    """Defect (test_damaged_storage): a directory where a data file should be leaked raw
    IsADirectoryError from updates, clears, attribute updates and deletes.  Fixed: every OS
    error of an operation becomes a DekerStorageError naming the file.
    """
    _root, one, _two = clients
    arr = one.get_collection("a").create({"name": "x"})
    path = Path(arr._main_file)
    os.unlink(path)
    path.mkdir()
    for call in (lambda: arr[:].update(np.zeros((2, 3))), arr[:].clear, arr.delete):
        with pytest.raises(DekerStorageError) as info:
            call()
        assert path.name in str(info.value)


def test_empty_file_is_not_silently_turned_into_a_new_one(clients: Any) -> None:
    """Defect (test_damaged_storage): HDF5 opens a zero-length file in mode "r+" as a new file,
    so a clear or an attribute update "succeeded" and replaced the damaged file by an HDF5
    file without its datasets.  Fixed: a file lacking ``meta`` or ``empty_cells`` is refused.
    """
    _root, one, _two = clients
    arr = one.get_collection("a").create({"name": "x"})
    arr[:].update(np.ones((2, 3)))
    path = Path(arr._main_file)
    os.truncate(path, 0)
    for call in (arr[0:1].clear, lambda: arr.update_custom_attributes({})):
        with pytest.raises((DekerStorageError, DekerValidationError)):
            call()
    with pytest.raises(DekerStorageError, match="lacks"):
        arr[0:1].update(np.zeros((1, 3)))
    assert path.stat().st_size == 0


def test_interrupted_creation_or_deletion_leaves_an_absent_object(clients: Any) -> None:
    """Defect (stress/test_crash, by review of the file order): creation wrote the main file
    before its symlink and deletion removed the symlink first, so a crash in between left an
    orphan file reachable by id but not by key (a second object with the same key could be
    created); a symlink naming a missing file made lookups raise DekerBrokenSymlinkError.
    Fixed: creation makes the symlink first, deletion removes the main file first; a symlink
    naming a missing file means "absent" and the next creation of that key removes it.
    """
    root, one, _two = clients
    coll = one.get_collection("a")
    arr = coll.create({"name": "x"})
    os.unlink(arr._main_file)  # the state a deletion killed after its first step leaves
    assert coll.filter({"name": "x"}).last() is None
    assert coll.filter({"id": arr.id}).last() is None
    assert list(coll) == []
    again = coll.create({"name": "x"})
    links = list((root / "collections" / "a" / "array_symlinks" / "x").iterdir())
    assert [p.name for p in links] == [f"{again.id}.hdf5"]


def test_leftovers_of_a_deleted_file_are_not_applied_to_a_new_one(tmp_path: Path) -> None:
    """Defect (review of the journal): a journal left by a file deleted meanwhile could be
    applied to a new file of the same name.  Fixed: creation discards such leftovers.
    """
    target = tmp_path / "f.hdf5"
    target.write_bytes(b"old file")
    jpath = atomic.journal_path(target)
    jpath.write_bytes(b"DKUNDO01" + b"\0" * 12)  # a journal with a wrong checksum: still removed
    os.unlink(target)
    from deker.storage import hdf5

    hdf5.create_array_file(target, b'{"id": 1}', "S40", 6)
    assert not jpath.exists()
    assert hdf5.read_meta(target) == b'{"id": 1}'


@pytest.mark.parametrize("bad", [None, 5, "id", ["id"]])
def test_filter_of_a_non_dict_is_a_deker_error(clients: Any, bad: Any) -> None:
    """Defect (test_fuzz_api): ``filter(None)`` / ``filter(5)`` raised a raw TypeError (deker
    1.1.7 raised TypeError/AttributeError); a DekerFilterError saying a dict is expected is
    what the API documents.  Fixed in ``FilteredManager``.
    """
    _root, one, _two = clients
    with pytest.raises(DekerFilterError, match="shall be a dict"):
        one.get_collection("a").filter(bad).last()


def test_broken_collection_metadata_error_names_the_file(clients: Any) -> None:
    """Defect (test_damaged_storage): garbage in ``<name>.json`` gave a DekerMetaDataError
    that did not say which file is broken.  Fixed in ``Client._load``.
    """
    root, one, _two = clients
    (root / "collections" / "a" / "a.json").write_text("{garbage")
    with pytest.raises(DekerMetaDataError, match=r"a\.json"):
        one.get_collection("a")


def test_creation_survives_concurrent_removal_of_empty_parents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect (stress/test_concurrency): a tile creation failed with a raw FileNotFoundError
    when the deletion of another tile removed their shared, empty fan-out directories while
    ``mkdir -p`` ran (twice in a row: pathlib retries once).  Fixed: ``layout.ensure_dir``.
    """
    from deker.storage import hdf5

    base = tmp_path / "array_data"
    target = base / "a" / "b" / "c" / "x.hdf5"
    (base / "a" / "b").mkdir(parents=True)
    real_mkdir = os.mkdir
    removals: list[int] = []

    def mkdir(path: Any, mode: int = 0o777, *args: Any, **kwargs: Any) -> None:
        if Path(path) == target.parent and len(removals) < 2 and (base / "a").exists():
            removals.append(1)
            shutil.rmtree(base / "a")  # a deletion elsewhere removes the empty parents right now
        real_mkdir(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    hdf5.create_array_file(target, b'{"id": 1}', "S40", 1)
    assert len(removals) == 2
    assert hdf5.read_meta(target) == b'{"id": 1}'


def test_symlink_creation_survives_a_directory_removed_during_mkdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect (stress/test_concurrency): ``mkdir -p`` raised FileExistsError when the directory
    existed at its ``mkdir`` and was removed (by a deletion cleaning empty directories) before
    its ``is_dir`` check.  Fixed: ``layout.ensure_dir`` retries that too.
    """
    from deker.storage.layout import make_symlink

    link_dir = tmp_path / "array_symlinks" / "vid" / "0-2"
    link_dir.mkdir(parents=True)
    real_mkdir = os.mkdir
    done: list[int] = []

    def mkdir(path: Any, mode: int = 0o777, *args: Any, **kwargs: Any) -> None:
        if Path(path) == link_dir and not done:
            done.append(1)
            try:
                real_mkdir(path, mode)  # it exists...
            finally:
                os.rmdir(path)  # ...and is removed before pathlib checks it
        real_mkdir(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    make_symlink(tmp_path / "target.hdf5", link_dir / "x.hdf5")
    assert done and (link_dir / "x.hdf5").is_symlink()


@pytest.mark.parametrize("size", [251, 255])
def test_collection_name_that_makes_too_long_file_names_is_rejected(clients: Any, size: int) -> None:
    """Defect (test_fuzz_api): a collection name of 251 to 255 bytes passed validation (one
    path component is at most 255 bytes), but ``<name>.json`` and ``<name>.lock`` are longer,
    so creation failed with a raw ``OSError`` (ENAMETOOLONG) instead of DekerValidationError.
    Fixed: ``attributes.check_collection_name`` allows 250 bytes, which still works.
    """
    root, one, _two = clients
    schema = ArraySchema(dtype=np.float64, dimensions=[DimensionSchema("x", 2)])
    before = sorted(p.name for p in (root / "collections").iterdir())
    with pytest.raises(DekerValidationError, match="at most 250 bytes"):
        one.create_collection("a" * size, schema)
    with pytest.raises(DekerValidationError, match="at most 250 bytes"):
        one.get_collection("é" * (size // 2 + 1))
    assert sorted(p.name for p in (root / "collections").iterdir()) == before
    array = one.create_collection("b" * 250, schema).create()
    array[:].update(np.arange(2.0))
    again = one.get_collection("b" * 250)
    assert again is not None
    np.testing.assert_array_equal(next(iter(again))[:].read(), [0.0, 1.0])


def test_a_tile_created_while_its_varray_is_deleted_is_deleted_too(
    clients: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect (tests/dask/test_ingest.py::test_a_failed_write_deletes_the_new_array, after a
    merge changed its timing): ``VArray.delete`` while another writer created a missing tile
    left that tile behind, a file and a symlink of a VArray that no longer existed.  The
    delete had listed the tiles before the creation published its file.  Fixed: a tile is
    created only while the VArray's record exists (checked under the creation lock), and the
    delete, once the record is gone, waits out the creations that began and deletes their
    tiles.

    Here update A creates tile (1, 1) and is held inside the creation (its file not yet
    written) while client two deletes the VArray; A goes on once the delete has ended (old
    code) or waits for A's creation (fixed code).
    """
    _root, one, two = clients
    mine = one.get_collection("v").create({"name": "v"})
    mine[:2, :2].update(np.ones((2, 2)))  # tile (0, 0) exists
    theirs = two.get_collection("v").filter({"name": "v"}).last()
    creating, go, ready = threading.Event(), threading.Event(), threading.Event()
    real_create = hdf5.create_array_file
    real_pass = getattr(tileindex, "pass_tile_creations", None)  # (absent before the fix)

    def create(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name == "A":
            creating.set()
            assert go.wait(20), "the delete never got to the creations"
        return real_create(*args, **kwargs)

    def passing(*args: Any, **kwargs: Any) -> Any:
        ready.set()  # the delete is about to wait out the running creations
        assert real_pass is not None
        return real_pass(*args, **kwargs)

    monkeypatch.setattr(hdf5, "create_array_file", create)
    monkeypatch.setattr(tileindex, "pass_tile_creations", passing, raising=False)  # (absent before the fix)
    outcome: dict[str, Any] = {}

    def run(name: str, action: Any) -> None:
        try:
            action()
            outcome[name] = "ok"
        except BaseException as exc:  # reported below
            outcome[name] = exc
        finally:
            if name == "B":
                ready.set()

    a = threading.Thread(target=run, args=("A", lambda: mine[2:, 2:].update(np.full((2, 2), 7.0))), name="A")
    a.start()
    assert creating.wait(20)
    b = threading.Thread(target=run, args=("B", theirs.delete), name="B")
    b.start()
    assert ready.wait(20)
    go.set()
    a.join(30)
    b.join(30)
    assert outcome["B"] == "ok", outcome
    assert outcome["A"] == "ok" or isinstance(outcome["A"], DekerInstanceNotExistsError), outcome
    collection = one.get_collection("v")
    assert list(collection) == []
    left = [p for p in collection.path.rglob("*") if p.is_file() and p.suffix == ".hdf5"]
    assert left == [], f"tiles of a deleted VArray left behind: {left}"
