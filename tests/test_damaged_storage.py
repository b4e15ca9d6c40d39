"""Damaged storage: every public call fails with a clear deker error naming the file, or works.

A storage with two Arrays and two VArrays is damaged in one place (a truncated, emptied or
overwritten HDF5 file; a directory or a FIFO where a file should be; broken metadata inside a
valid HDF5 file; garbage JSON; missing directories; dangling symlinks; files that may not be
read or written).  Then each public call on the damaged object either works or raises a
:class:`~deker.errors.DekerBaseApplicationError` whose message names the damaged file; none
crashes the interpreter or hangs (every test runs under a timeout, locks time out fast); and
the other objects keep working.

Permissions: tests run as root in CI containers, where ``chmod 000`` does not stop reads.
Then the unreadable-file cases are skipped (with that reason) and write protection is tested
with the immutable attribute (``chattr +i``) instead, when the filesystem and the process
allow it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from deker import ArraySchema, AttributeSchema, Client, DimensionSchema, VArraySchema
from deker.errors import DekerBaseApplicationError, DekerInstanceNotExistsError, DekerMetaDataError

pytestmark = pytest.mark.timeout(120)

ROOT_USER = os.geteuid() == 0
SHAPE = (4, 6)


@dataclass
class Storage:
    root: Path
    client: Client
    arrays: Any
    varrays: Any
    a1: Any
    a2: Any
    v1: Any
    v2: Any

    def tile_file(self, varray: Any, position: tuple[int, int]) -> Path:
        tile = self.varrays.arrays.filter({"vid": varray.id, "v_position": position}).last()
        return Path(tile._main_file)


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    root = tmp_path / "storage"
    client = Client(f"file://{root}", write_lock_timeout=2, write_lock_check_interval=0.01)
    attrs = [AttributeSchema("name", str, primary=True), AttributeSchema("n", int, primary=False)]
    dims = [DimensionSchema("y", SHAPE[0]), DimensionSchema("x", SHAPE[1])]
    arrays = client.create_collection("a", ArraySchema(dtype=np.float64, dimensions=dims, attributes=attrs))
    varrays = client.create_collection(
        "v", VArraySchema(dtype=np.float64, dimensions=dims, attributes=attrs, vgrid=(2, 2))
    )
    objs = []
    for coll, prefix in ((arrays, "a"), (varrays, "v")):
        for i in (1, 2):
            obj = coll.create({"name": f"{prefix}{i}"}, {"n": i})
            obj[:].update(np.full(SHAPE, float(i)))
            objs.append(obj)
    yield Storage(root, client, arrays, varrays, *objs)
    client.close()
    for path in root.rglob("*"):  # undo chattr +i / chmod so that the directory can be removed
        if not path.is_symlink():
            subprocess.run(["chattr", "-i", str(path)], capture_output=True, check=False)
            os.chmod(path, 0o755)


# --------------------------------------------------------------------------- damages


def _truncate(path: Path) -> None:
    os.truncate(path, os.path.getsize(path) // 2)


def _empty(path: Path) -> None:
    os.truncate(path, 0)


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(4096))


def _directory(path: Path) -> None:
    os.unlink(path)
    path.mkdir()


def _fifo(path: Path) -> None:
    os.unlink(path)
    os.mkfifo(path)


def _bad_meta(path: Path) -> None:
    with h5py.File(path, "r+", locking=False) as f:
        del f["meta"]
        f.create_dataset("meta", data=np.array(b"{not json", dtype="S40"))


def _no_counter(path: Path) -> None:
    with h5py.File(path, "r+", locking=False) as f:
        del f["empty_cells"]


def _unreadable(path: Path) -> None:
    if ROOT_USER:
        pytest.skip("running as root: chmod 000 does not stop root from reading")
    os.chmod(path, 0)


def _immutable(path: Path) -> None:
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot make a file immutable here (chattr: {done.stderr.decode().strip()})")


UNREADABLE = ("truncated", "empty", "garbage", "directory", "fifo", "unreadable")
DAMAGES: dict[str, Callable[[Path], None]] = {
    "truncated": _truncate,
    "empty": _empty,
    "garbage": _garbage,
    "directory": _directory,
    "fifo": _fifo,
    "bad-meta": _bad_meta,
    "no-counter": _no_counter,
    "unreadable": _unreadable,
    "immutable": _immutable,
}


def _calls(s: Storage) -> dict[str, Callable[[], Any]]:
    a, coll = s.a1, s.arrays
    return {
        "filter by id": lambda: coll.filter({"id": a.id}).last(),
        "filter by key": lambda: coll.filter({"name": "a1"}).last(),
        "iterate": lambda: [x.id for x in coll],
        "read": lambda: a[:].read(),
        "read a cell": lambda: a[1, 2].read(),
        "update part": lambda: a[0:1].update(np.zeros((1, SHAPE[1]))),
        "update whole": lambda: a[:].update(np.zeros(SHAPE)),
        "clear part": lambda: a[0:2, 0:2].clear(),
        "clear whole": lambda: a[:].clear(),
        "custom attributes": lambda: a.update_custom_attributes({"n": 7}),
        "read_meta": lambda: a.read_meta(),
        "read_xarray": lambda: a[:].read_xarray(),
        "delete": lambda: a.delete(),
    }


def _check_call(name: str, call: Callable[[], Any], damaged: Path) -> str:
    """Run a call: it works or raises a deker error naming the damaged file."""
    try:
        call()
    except DekerBaseApplicationError as exc:
        assert damaged.name in str(exc), f"{name}: {type(exc).__name__} does not name {damaged}: {exc}"
        return "failed clearly"
    return "worked"


def _others_work(s: Storage) -> None:
    assert s.arrays.filter({"name": "a2"}).last()[:].read().sum() == 2.0 * np.prod(SHAPE)
    s.a2[0:1].update(np.full((1, SHAPE[1]), 5.0))
    assert s.varrays.filter({"name": "v2"}).last()[:].read().sum() == 2.0 * np.prod(SHAPE)
    s.v2[0:1].update(np.full((1, SHAPE[1]), 5.0))
    assert s.client.get_collection("a") is not None


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_array_file(storage: Storage, damage: str) -> None:
    path = Path(storage.a1._main_file)
    DAMAGES[damage](path)
    outcomes = {name: _check_call(name, call, path) for name, call in _calls(storage).items()}
    if damage in UNREADABLE:
        assert outcomes["read"] == "failed clearly", outcomes
        assert outcomes["update part"] == "failed clearly", outcomes
    elif damage == "immutable":
        assert outcomes["read"] == "worked" and outcomes["update part"] == "failed clearly", outcomes
    elif damage == "bad-meta":  # the data is intact, the metadata is not
        assert outcomes["read"] == "worked" and outcomes["filter by id"] == "failed clearly", outcomes
    else:  # no counter of empty cells: reads work, writes (which need it) fail clearly
        assert outcomes["read"] == "worked" and outcomes["update part"] == "failed clearly", outcomes
    _others_work(storage)


@pytest.mark.parametrize(
    "damage", ["truncated", "empty", "garbage", "directory", "fifo", "no-counter", "immutable"]
)
def test_damaged_tile_file(storage: Storage, damage: str) -> None:
    path = storage.tile_file(storage.v1, (0, 0))
    DAMAGES[damage](path)
    v = storage.v1
    calls = {
        "read all": lambda: v[:].read(),
        "read the tile": lambda: v[0:2, 0:3].read(),
        "update all": lambda: v[:].update(np.zeros(SHAPE)),
        "update in the tile": lambda: v[0:1, 0:1].update(np.zeros((1, 1))),
        "clear in the tile": lambda: v[0:1, 0:1].clear(),
        "tile lookup": lambda: storage.varrays.arrays.filter({"vid": v.id, "v_position": (0, 0)}).last(),
    }
    np.testing.assert_array_equal(v[2:4, 3:6].read(), np.full((2, 3), 1.0))  # the other tiles read
    outcomes = {name: _check_call(name, call, path) for name, call in calls.items()}
    if damage in UNREADABLE:
        assert outcomes["read the tile"] == "failed clearly", outcomes
    else:  # no counter, or immutable: reads work, writes fail clearly
        assert outcomes["read the tile"] == "worked" and outcomes["update in the tile"] == "failed clearly"
    assert outcomes["update all"] == "failed clearly", outcomes
    other = v[2:4, 3:6].read()  # another tile: written (the failure was the damaged tile's) or not at all
    assert (other == 0).all() or (other == 1).all(), other
    _others_work(storage)
    _check_call("delete", v.delete, path)


def test_garbage_varray_json(storage: Storage) -> None:
    path = Path(storage.v1._main_file)
    path.write_text("{garbage")
    for name, call in {
        "filter by key": lambda: storage.varrays.filter({"name": "v1"}).last(),
        "filter by id": lambda: storage.varrays.filter({"id": storage.v1.id}).last(),
        "read_meta": storage.v1.read_meta,
        "iterate": lambda: list(storage.varrays),
    }.items():
        with pytest.raises(DekerMetaDataError) as info:
            call()
        assert path.name in str(info.value), name
    storage.v1.update_custom_attributes({"n": 3})  # rewrites the whole JSON: the remedy
    assert storage.varrays.filter({"name": "v1"}).last().custom_attributes["n"] == 3
    _others_work(storage)


@pytest.mark.parametrize("content", ["{garbage", "", '{"name": "a"}', "[]", '{"metadata_version": "0.2"}'])
def test_garbage_collection_json(storage: Storage, content: str) -> None:
    path = storage.root / "collections" / "a" / "a.json"
    path.write_text(content)
    with pytest.raises(DekerMetaDataError):
        storage.client.get_collection("a")  # (the message does not name the file: see the report)
    assert [c.name for c in storage.client] == ["v"]  # iteration skips it, the others work
    assert storage.client.get_collection("v").filter({"name": "v2"}).last()[:].read().sum() == 48.0


def test_missing_directories(storage: Storage) -> None:
    shutil.rmtree(storage.root / "collections" / "a" / "array_data")
    assert storage.arrays.filter({"name": "a1"}).last() is None  # its symlink names nothing: absent
    assert storage.arrays.filter({"id": storage.a1.id}).last() is None
    assert list(storage.arrays) == []
    for call in (storage.a1[:].read, lambda: storage.a1[:].update(np.zeros(SHAPE)), storage.a1.read_meta):
        with pytest.raises(DekerInstanceNotExistsError):
            call()
    shutil.rmtree(storage.root / "collections" / "v" / "array_data")  # every tile gone: fill
    assert np.isnan(storage.v1[:].read()).all()
    storage.v1[0:1, 0:1].update(np.ones((1, 1)))  # tiles are made again
    assert storage.v1[0, 0].read() == 1.0
    shutil.rmtree(storage.root / "collections" / "v")
    assert storage.client.get_collection("v") is None
    with pytest.raises(DekerInstanceNotExistsError):
        storage.v2[:].read()
    with pytest.raises(DekerInstanceNotExistsError):
        storage.varrays.create({"name": "v3"})


def test_dangling_and_wrong_symlinks(storage: Storage) -> None:
    link = next((storage.root / "collections" / "a" / "array_symlinks" / "a1").iterdir())
    os.unlink(link)
    os.symlink("/nonexistent/moved/storage/file.hdf5", link)  # a storage copied elsewhere
    assert storage.arrays.filter({"name": "a1"}).last()[:].read().sum() == 24.0  # found by id
    os.unlink(storage.a1._main_file)  # now the link names a file that does not exist
    assert storage.arrays.filter({"name": "a1"}).last() is None
    again = storage.arrays.create({"name": "a1"}, {"n": 9})  # the stale link is replaced
    assert storage.arrays.filter({"name": "a1"}).last().id == again.id
    assert sorted(p.name for p in link.parent.iterdir()) == [f"{again.id}.hdf5"]
    _others_work(storage)


def test_unreadable_directory(storage: Storage) -> None:
    if ROOT_USER:
        pytest.skip("running as root: a directory without permissions is still readable")
    main_dir = Path(storage.a1._main_dir)
    os.chmod(main_dir, 0)
    for name, call in _calls(storage).items():
        _check_call(name, call, main_dir)
    os.chmod(main_dir, 0o755)
    _others_work(storage)


def test_write_protected_directory(storage: Storage) -> None:
    """A directory where nothing may be created (immutable, or read-only for a normal user).

    Writes fail clearly and change nothing.  Reads work (issue 17): where its read marker
    cannot be created, a reader locks as a read-only reader (a shared lock on the existing
    mutex, no marker) and creates nothing.
    """
    main_dir = Path(storage.a1._main_dir)
    if ROOT_USER:
        _immutable(main_dir)
    else:
        os.chmod(main_dir, 0o555)
    for name in ("update part", "update whole", "clear part", "custom attributes", "delete"):
        assert _check_call(name, _calls(storage)[name], main_dir) == "failed clearly", name
    assert _check_call("read", _calls(storage)["read"], main_dir) == "worked"
    _others_work(storage)
    subprocess.run(["chattr", "-i", str(main_dir)], capture_output=True, check=False)
    os.chmod(main_dir, 0o755)
    np.testing.assert_array_equal(storage.a1[:].read(), np.full(SHAPE, 1.0))  # unchanged


def test_write_protected_collection(storage: Storage) -> None:
    """Creations in a collection folder where nothing may be created fail clearly."""
    folder = storage.root / "collections" / "a"
    if ROOT_USER:
        _immutable(folder)
    else:
        os.chmod(folder, 0o555)
    with pytest.raises(DekerBaseApplicationError) as info:
        storage.arrays.create({"name": "a3"})
    assert str(folder) in str(info.value)
    assert storage.arrays.filter({"name": "a3"}).last() is None
    _others_work(storage)
