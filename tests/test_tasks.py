"""deker/tasks.py: the per-file task functions and their picklable ``FileSpec``.

Covered: every task is a module-level function that pickles by reference; ``FileSpec`` pickles
and resolves its paths in the receiving process; ``resolve_root`` with ``DEKER_ROOT_MAP``
(prefix boundaries, several pairs, trailing slashes), also end to end on a storage moved to
another path and read from a real worker process; ``read_piece``/``read_piece_into`` on files
made through ``deker.Client`` (with and without the operation's token, into views, fill values
for deleted files, refused while a VArray write holds the tile); ``write_piece``/``clear_piece``
run in forkserver worker processes under the coordinator's ``VArrayWriteLock`` (idempotent
writes, partial and full clears, lost locks, a file deleted under a write);
``storage_errors``; ``delete_files`` and ``tile_file_name``.  Specs are built the way
deker/arrays.py builds them (``VArray.tiles.for_tile`` -> ``deker.records.file_spec``).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import FrozenInstanceError, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deker import ArraySchema, Client, DimensionSchema, VArraySchema, tasks
from deker.errors import DekerInstanceNotExistsError, DekerLockError, DekerStorageError, DekerValidationError
from deker.records import file_spec, tile_ids
from deker.storage import hdf5
from deker.storage.layout import CollectionPaths
from deker.storage.locks import LockSettings, VArrayWriteLock, new_token
from deker.tasks import (
    FileSpec,
    clear_array,
    clear_piece,
    delete_files,
    read_array,
    read_piece,
    read_piece_into,
    resolve_root,
    storage_errors,
    tile_file_name,
    write_array,
    write_piece,
)

LOCKS = LockSettings(timeout=10, interval=0.01)
FUNCTIONS = [
    read_array,
    write_array,
    clear_array,
    read_piece,
    read_piece_into,
    write_piece,
    clear_piece,
    resolve_root,
    delete_files,
    tile_file_name,
]


@pytest.fixture(scope="module")
def pool() -> Iterator[ProcessPoolExecutor]:
    with ProcessPoolExecutor(2, mp_context=mp.get_context("forkserver")) as executor:
        yield executor


@pytest.fixture(autouse=True)
def _no_root_map(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEKER_ROOT_MAP", raising=False)


def _varray(tmp_path: Path, name: str = "v") -> tuple[Client, Any]:
    """A VArray 6 x 8 of float64 tiles 3 x 4 (fill NaN) whose four tiles all exist."""
    client = Client(tmp_path.as_uri(), write_lock_timeout=10)
    schema = VArraySchema(
        dtype=np.float64, dimensions=[DimensionSchema("y", 6), DimensionSchema("x", 8)], vgrid=(2, 2)
    )
    varray = client.create_collection(name, schema).create()
    varray[:].update(np.arange(48, dtype=np.float64).reshape(6, 8))
    return client, varray


def _spec(varray: Any, position: tuple[int, int]) -> FileSpec:
    tid = varray.tiles.ids()[position]
    spec = varray.tiles.for_tile(tid, position)
    ctx = varray._ctx
    same = file_spec(ctx.settings.root, varray._meta, tid, ctx.locks, spec.symlink, ctx.storage_id)
    assert replace(spec, fill_value=None) == replace(same, fill_value=None)  # (NaN != NaN)
    assert np.isnan(spec.fill_value) and np.isnan(same.fill_value)
    assert spec.symlink == (varray.id, "-".join(map(str, position)))
    return spec


# ------------------------------------------------------------------------------ picklability


def test_public_names() -> None:
    assert sorted(tasks.__all__) == sorted(
        [
            "FileSpec",
            "storage_errors",
            "clear_piece",
            "read_piece",
            "read_piece_into",
            "resolve_root",
            "write_piece",
            "check_storage",
            "check_storage_at",
            "process_name",
            "write_piece_broadcast",
            # the Array tasks (a Subset's file, deker_dask's Array blocks)
            "read_array",
            "write_array",
            "clear_array",
        ]
    )


@pytest.mark.parametrize("fn", FUNCTIONS, ids=lambda f: f.__name__)
def test_tasks_are_module_level_functions(fn: Any) -> None:
    assert fn.__module__ == "deker.tasks" and fn.__qualname__ == fn.__name__
    assert pickle.loads(pickle.dumps(fn)) is fn
    assert getattr(tasks, fn.__name__) is fn


def test_file_spec_is_a_frozen_picklable_value() -> None:
    spec = FileSpec("/r/collections", "c", "ab-cd", (3, 4), "<f4", np.float32(1.5))
    assert spec.dataset_kwargs == {} and spec.locks == LockSettings() and spec.symlink == ()
    with pytest.raises(FrozenInstanceError):
        spec.root = "/elsewhere"  # type: ignore[misc]
    full = replace(
        spec, dataset_kwargs={"chunks": (1, 4), "compression": "gzip"}, locks=LOCKS, symlink=("v", "0-1")
    )
    back = pickle.loads(pickle.dumps(full))
    assert back == full and type(back.locks) is LockSettings
    nan = replace(spec, fill_value=float("nan"))
    back = pickle.loads(pickle.dumps(nan))
    assert np.isnan(back.fill_value) and replace(back, fill_value=0) == replace(nan, fill_value=0)
    assert spec.paths == CollectionPaths(Path("/r/collections"), "c")
    assert spec.main_dir == Path("/r/collections/c/array_data/a/b/cd")
    assert spec.main_file == Path("/r/collections/c/array_data/a/b/cd/ab-cd.hdf5")
    assert tile_file_name("ab-cd") == "ab-cd.hdf5"


# --------------------------------------------------------------------------------- root map


@pytest.mark.parametrize(
    ("raw", "root", "expected"),
    [
        ("", "/data/s/collections", "/data/s/collections"),
        ("/data=/mnt/data", "/data/s/collections", "/mnt/data/s/collections"),
        ("/data=/mnt/data", "/data", "/mnt/data"),
        ("/data=/mnt/data", "/database/collections", "/database/collections"),  # not a path prefix
        ("/data/=/mnt/data/", "/data/s", "/mnt/data/s"),  # trailing slashes ignored
        ("/other=/x;/data=/mnt/d", "/data/s", "/mnt/d/s"),  # several pairs
        ("/data=/first;/data=/second", "/data/s", "/first/s"),  # the first match wins
        ("garbage;/data=/mnt/d;", "/data/s", "/mnt/d/s"),  # items without "=" are ignored
        ("/data=/a=b", "/data/s", "/a=b/s"),  # split at the first "="
    ],
)
def test_resolve_root(monkeypatch: pytest.MonkeyPatch, raw: str, root: str, expected: str) -> None:
    monkeypatch.setenv("DEKER_ROOT_MAP", raw)
    assert resolve_root(root) == Path(expected)


def test_resolve_root_reads_the_environment_at_each_call(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_root("/data/s") == Path("/data/s")
    monkeypatch.setenv("DEKER_ROOT_MAP", "/data=/mnt")
    assert resolve_root("/data/s") == Path("/mnt/s")
    spec = FileSpec("/data/collections", "c", "ab-cd", (1,), "<f8", 0.0)
    assert spec.main_file == Path("/mnt/collections/c/array_data/a/b/cd/ab-cd.hdf5")
    monkeypatch.setenv("DEKER_ROOT_MAP", "/data=/elsewhere")
    assert spec.main_dir == Path("/elsewhere/collections/c/array_data/a/b/cd")


def _read_with_map(root_map: str, spec: FileSpec, bounds: Any) -> Any:
    """Run in a forkserver worker whose mount of the storage differs from the coordinator's."""
    os.environ["DEKER_ROOT_MAP"] = root_map
    try:
        return read_piece(spec, bounds)
    finally:
        del os.environ["DEKER_ROOT_MAP"]


def test_a_worker_reads_a_storage_mounted_elsewhere(tmp_path: Path, pool: ProcessPoolExecutor) -> None:
    coordinator = tmp_path / "coordinator"
    with Client(coordinator.as_uri()) as client:
        schema = ArraySchema(dtype=np.int32, dimensions=[DimensionSchema("y", 4), DimensionSchema("x", 5)])
        coll = client.create_collection("c", schema)
        array = coll.create()
        array[:].update(np.arange(20, dtype=np.int32).reshape(4, 5))
        spec = file_spec(str(client.root_path), coll._meta, array.id, LOCKS)
    worker = tmp_path / "worker"
    os.rename(coordinator, worker)  # what the worker sees at another path
    bounds = (slice(1, 3), slice(0, 5))
    mapped = pool.submit(_read_with_map, f"{coordinator}={worker}", spec, bounds).result(timeout=60)
    np.testing.assert_array_equal(mapped, np.arange(20).reshape(4, 5)[1:3])
    assert mapped.dtype == np.int32
    # No storage where the coordinator's path points: an error naming the process and the path,
    # never fill values (before, this read returned fill).
    with pytest.raises(
        DekerStorageError, match=r"process \d+ on host .* does not see the storage at .*coordinator"
    ):
        pool.submit(_read_with_map, "", spec, bounds).result(timeout=60)


# ------------------------------------------------------------------------------------- reads


def test_read_piece_of_an_array(tmp_path: Path) -> None:
    with Client(tmp_path.as_uri()) as client:
        schema = ArraySchema(
            dtype=np.int16, dimensions=[DimensionSchema("y", 4), DimensionSchema("x", 5)], fill_value=-9
        )
        coll = client.create_collection("c", schema)
        array = coll.create()
        values = np.arange(20, dtype=np.int16).reshape(4, 5)
        array[:].update(values)
        spec = file_spec(str(client.root_path), coll._meta, array.id, LOCKS)
        assert spec.main_file == array._main_file
        got = read_piece(spec, (slice(1, 3), slice(2, 5)))
        assert got.dtype == np.int16 and got.tolist() == values[1:3, 2:5].tolist()
        assert read_piece(spec, (2, slice(0, 5))).tolist() == values[2].tolist()
        assert read_piece(spec, (3, 4)) == values[3, 4] and read_piece(spec, (3, 4)).shape == ()
        out = np.zeros((6, 7), dtype=np.int16)
        assert read_piece_into(spec, (slice(0, 4), slice(1, 4)), out, (slice(2, 6), slice(3, 6))) is None
        expected = np.zeros((6, 7), dtype=np.int16)
        expected[2:6, 3:6] = values[:, 1:4]
        np.testing.assert_array_equal(out, expected)
        array.delete()
        gone = read_piece(spec, (slice(0, 2), 1))
        assert gone.dtype == np.int16 and gone.tolist() == [-9, -9]  # deleted meanwhile: fill values
        read_piece_into(spec, (slice(0, 4), slice(1, 4)), out, (slice(2, 6), slice(3, 6)))
        assert (out[2:6, 3:6] == -9).all() and (out[:2] == 0).all()
        assert not [p for p in coll.path.rglob("*readlock")]  # read markers are gone


def test_reads_while_a_varray_write_holds_the_tile(tmp_path: Path) -> None:
    client, varray = _varray(tmp_path)
    with client:
        spec = _spec(varray, (1, 0))
        token = new_token()
        with VArrayWriteLock(LOCKS, token) as lock:
            assert lock.acquire([(spec.main_dir, spec.array_id)]) == []
            got = read_piece(spec, (slice(0, 3), slice(0, 2)), token)  # the operation's own read
            np.testing.assert_array_equal(got, np.arange(48).reshape(6, 8)[3:6, 0:2])
            impatient = replace(spec, locks=LockSettings(timeout=0.2, interval=0.01))
            with pytest.raises(DekerLockError, match=f"Array {spec.array_id} read lock"):
                read_piece(impatient, (0, 0))  # anyone else waits for the write
        with pytest.raises(DekerLockError, match=r"^VArray lock lost: cannot read tile "):
            read_piece(spec, (0, 0), token)  # the operation is over: its token is void
        assert read_piece(spec, (0, 0)) == 24.0


# ------------------------------------------------------------------------------ writes, clears


def test_writes_and_clears_from_worker_processes(tmp_path: Path, pool: ProcessPoolExecutor) -> None:
    client, varray = _varray(tmp_path)
    with client:
        expected = np.arange(48, dtype=np.float64).reshape(6, 8)
        specs = {pos: _spec(varray, pos) for pos in ((0, 0), (0, 1), (1, 1))}
        token = new_token()
        block = np.full((2, 2), -5.0)
        with VArrayWriteLock(LOCKS, token) as lock:
            lock.acquire([(s.main_dir, s.array_id) for s in specs.values()])
            calls = [
                pool.submit(write_piece, specs[(0, 0)], (slice(1, 3), slice(0, 2)), block, token),
                pool.submit(write_piece, specs[(0, 1)], (0, slice(0, 4)), np.float64(7.0), token),
                pool.submit(clear_piece, specs[(1, 1)], (slice(0, 1), slice(0, 4)), False, token),
            ]
            assert [c.result(timeout=60) for c in calls] == [None, None, False]
            main = specs[(0, 0)].main_file
            first = hdf5.read_region(main, (slice(0, 3), slice(0, 4)), np.float64, np.nan)
            again = pool.submit(write_piece, specs[(0, 0)], (slice(1, 3), slice(0, 2)), block, token)
            again.result(timeout=60)  # a retried task: same content
            np.testing.assert_array_equal(
                hdf5.read_region(main, (slice(0, 3), slice(0, 4)), np.float64, np.nan), first
            )
            assert hdf5.read_empty_cells(main) == 0
        expected[1:3, 0:2] = -5.0
        expected[0, 4:8] = 7.0
        expected[3, 4:8] = np.nan
        np.testing.assert_array_equal(varray[:].read(), expected)
        assert hdf5.read_empty_cells(specs[(1, 1)].main_file) == 4
        with pytest.raises(DekerLockError, match=r"^VArray lock lost: cannot write tile .* no longer held"):
            pool.submit(write_piece, specs[(0, 0)], (0, 0), np.float64(1.0), token).result(timeout=60)
        with pytest.raises(DekerLockError, match=r"^VArray lock lost"):
            clear_piece(specs[(0, 0)], (0, 0), False, token)
        with pytest.raises(DekerValidationError, match="Invalid lock owner token"):
            write_piece(specs[(0, 0)], (0, 0), np.float64(1.0), "not a token!")
        np.testing.assert_array_equal(varray[:].read(), expected)


def test_a_full_clear_deletes_the_tile(tmp_path: Path, pool: ProcessPoolExecutor) -> None:
    client, varray = _varray(tmp_path)
    with client:
        spec = _spec(varray, (0, 1))
        link = spec.paths.symlink_file("array", spec.symlink, spec.array_id)
        assert os.readlink(link) == str(spec.main_file)
        token = new_token()
        with VArrayWriteLock(LOCKS, token) as lock:
            lock.acquire([(spec.main_dir, spec.array_id)])
            deleted = pool.submit(clear_piece, spec, (slice(0, 3), slice(0, 4)), True, token).result(
                timeout=60
            )
        assert deleted is True
        assert not spec.main_file.exists() and not os.path.lexists(link)
        assert not link.parent.exists()  # its position folder went too
        assert sorted(varray.tiles.ids()) == [(0, 0), (1, 0), (1, 1)]
        assert np.isnan(varray[0:3, 4:8].read()).all()
        assert read_piece(spec, (0, slice(0, 4))).tolist() == [pytest.approx(np.nan, nan_ok=True)] * 4


def test_a_file_deleted_under_a_write(tmp_path: Path) -> None:
    """The tile file vanishes while the operation holds its lock (a concurrent delete)."""
    client, varray = _varray(tmp_path)
    with client:
        spec = _spec(varray, (1, 1))
        token = new_token()
        with VArrayWriteLock(LOCKS, token) as lock:
            lock.acquire([(spec.main_dir, spec.array_id)])
            os.unlink(spec.main_file)
            with pytest.raises(
                DekerInstanceNotExistsError, match=r"^Tile file .* vanished during the write$"
            ):
                write_piece(spec, (0, slice(0, 4)), np.ones(4), token)
            assert clear_piece(spec, (0, slice(0, 4)), False, token) is False  # nothing to clear
            assert not spec.main_file.exists()


def test_delete_files_removes_the_file_and_its_link(tmp_path: Path) -> None:
    client, varray = _varray(tmp_path)
    with client:
        spec = _spec(varray, (1, 0))
        stray = spec.main_file.with_name(f".{spec.main_file.name}.{uuid.uuid4().hex}.tmp")
        stray.write_bytes(b"half a new version")
        delete_files(spec)
        assert not spec.main_file.exists() and not stray.exists()
        assert not os.path.lexists(spec.paths.symlink_file("array", spec.symlink, spec.array_id))
        delete_files(spec)  # again: nothing left, no error
        assert (1, 0) not in tile_ids(varray._ctx.root, varray._meta, varray.id)


# ----------------------------------------------------------------------------- storage_errors


def test_storage_errors(tmp_path: Path) -> None:
    with (
        pytest.raises(
            DekerStorageError, match=rf"^Cannot work on {tmp_path}/d: \[Errno 21\] Is a directory"
        ) as info,
        storage_errors(tmp_path / "d"),
    ):
        raise IsADirectoryError(21, "Is a directory")
    assert isinstance(info.value.__cause__, IsADirectoryError)
    with (
        pytest.raises(DekerStorageError, match=r"Cannot work on x: .*Permission denied"),
        storage_errors("x"),
    ):
        raise PermissionError(13, "Permission denied")
    for passing in (
        FileNotFoundError(2, "gone"),
        DekerLockError("busy"),  # a TimeoutError, hence an OSError: still passes unchanged
        DekerInstanceNotExistsError("deleted"),
        ValueError("not an OS error"),
    ):
        with pytest.raises(type(passing)) as raised, storage_errors(tmp_path):
            raise passing
        assert raised.value is passing
    with storage_errors(tmp_path):
        pass
