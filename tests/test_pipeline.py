"""The tile pipeline (deker.pipeline): lock, create, run, gather, release, on real tile files.

The VArray operations as a whole are tested under four executors in test_varray.py; here the
pipeline's own steps are called directly on a real storage.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from deker import Client, DimensionSchema, VArraySchema
from deker.errors import DekerInstanceNotExistsError, DekerVSubsetError
from deker.pipeline import compact_for_transport, delete_tiles, lock_tiles, raise_group, require
from deker.storage.locks import VArrayWriteLock, new_token
from deker.subset import prepare_update_data


@pytest.fixture()
def client(tmp_path: Path) -> Iterator[Client]:
    with Client((tmp_path / "s").as_uri()) as c:
        yield c


def _varray(client: Client):  # type: ignore[no-untyped-def]
    schema = VArraySchema(
        dtype=np.float32,
        dimensions=[DimensionSchema(name="y", size=4), DimensionSchema(name="x", size=6)],
        vgrid=(2, 3),
    )
    return client.create_collection("c", schema).create()


def test_pieces_travel_compact() -> None:
    # What a VArray update sends to a worker: a scalar as a number, broadcast data as its
    # distinct values; the worker broadcasts them back (deker.tasks.write_piece_broadcast).
    dtype = np.dtype(np.float32)
    whole = prepare_update_data(2.5, dtype, (8, 512, 512))
    piece = whole[2:4]
    small = compact_for_transport(piece)
    assert isinstance(small, np.float32) and small == 2.5
    rows = prepare_update_data(np.arange(512, dtype=np.float32), dtype, (8, 100, 512))[0:4, 10:60]
    small = compact_for_transport(rows)
    assert isinstance(small, np.ndarray) and small.shape == (1, 1, 512) and small.flags.c_contiguous
    np.testing.assert_array_equal(np.broadcast_to(small, rows.shape), rows)
    plain = np.arange(24, dtype=np.float32).reshape(4, 6)
    assert compact_for_transport(plain) is plain
    strided = compact_for_transport(plain[:, ::2])
    assert strided.flags.c_contiguous and np.array_equal(strided, plain[:, ::2])
    assert compact_for_transport(np.float64(1.0)) == 1.0
    one = np.ones((1, 1), dtype=np.float32)
    assert compact_for_transport(one) is one


def test_lock_tiles_creates_the_missing_ones_held_and_writes_payloads(client: Client) -> None:
    varray = _varray(client)
    index = varray.tiles
    full = np.full((2, 2), 7, dtype=np.float32)
    with VArrayWriteLock(client_locks(varray), new_token()) as lock:
        tiles, written = lock_tiles(lock, index, [(0, 0), (1, 2)], {}, {(1, 2): full})
        assert written == {(1, 2)}  # created holding its data: not returned for writing
        assert set(tiles) == {(0, 0)}
        assert lock.holds(*index.lock_key(tiles[(0, 0)]))
    assert set(index.ids()) == {(0, 0), (1, 2)}
    np.testing.assert_array_equal(varray[2:4, 4:6].read(), full)
    assert np.isnan(varray[0:2, 0:2].read()).all()  # created empty


def test_lock_tiles_for_a_clear_creates_nothing(client: Client) -> None:
    varray = _varray(client)
    with VArrayWriteLock(client_locks(varray), new_token()) as lock:
        tiles, written = lock_tiles(lock, varray.tiles, [(0, 0), (0, 1)], None)
    assert tiles == {} and written == set()
    assert varray.tiles.ids() == {}


def test_delete_tiles_removes_files_and_records(client: Client) -> None:
    varray = _varray(client)
    varray[:].update(np.ones((4, 6), dtype=np.float32))
    index = varray.tiles
    files = [index.for_tile(tid).main_file for tid in index.ids().values()]
    assert len(files) == 6 and all(f.exists() for f in files)
    delete_tiles(varray.storage_context, index, sorted(index.ids().items()))
    assert index.ids() == {}
    assert not any(f.exists() for f in files)
    assert not any(f.with_suffix(".lock").exists() for f in files)  # forgotten after release
    assert np.isnan(varray[:].read()).all()


def test_raise_group_keeps_the_real_exceptions() -> None:
    raise_group("nothing failed", [])
    boom = ValueError("boom")
    with pytest.raises(DekerVSubsetError) as info:
        raise_group("Reading failed in 1 tile(s)", [((0, 1), boom)])
    assert list(info.value.exceptions) == [boom] and tuple(info.value.tiles) == ((0, 1),)
    with pytest.raises(KeyboardInterrupt):
        raise_group("stopped", [((0,), ValueError("x")), ((1,), KeyboardInterrupt())])


def test_require_names_the_deleted_varray(client: Client) -> None:
    varray = _varray(client)
    index = varray.tiles
    require(index, repr(varray))
    varray.delete()
    with pytest.raises(DekerInstanceNotExistsError, match="was deleted"):
        require(index, repr(varray))


def client_locks(varray):  # type: ignore[no-untyped-def]
    return varray.storage_context.locks


def test_a_small_read_on_a_local_disk_runs_in_the_callers_thread(tmp_path: Path) -> None:
    # Opening and locking a tile costs microseconds on a local filesystem: a read of one task's
    # worth of bytes (here 4 of 6 tiles, 96 bytes) reads its tiles in the caller's thread; the
    # thread pool (made on first use) is not even started.  A read of more than that uses it.
    from deker.executors import TARGET_TASK_BYTES
    from deker.storage.mounts import is_local_filesystem

    if not is_local_filesystem(tmp_path):
        pytest.skip(f"{tmp_path} is not on a local filesystem: tiles are read in parallel there")
    with Client((tmp_path / "s").as_uri(), workers=4) as c:
        varray = _varray(c)
        data = np.arange(24, dtype=np.float32).reshape(4, 6)
        varray[:].update(data)
        runner = c._ctx.runner
        runner.shutdown()
        np.testing.assert_array_equal(varray[1:3, 1:5].read(), data[1:3, 1:5])
        assert runner._executor is None
        side = 1024  # 4 tiles of 2 MiB: more than one task's worth
        assert 4 * (side * side // 4) * 4 * 2 > TARGET_TASK_BYTES
        big_schema = VArraySchema(
            dtype=np.float32,
            dimensions=[DimensionSchema(name="y", size=2 * side), DimensionSchema(name="x", size=2 * side)],
            vgrid=(2, 2),
        )
        big = c.create_collection("big", big_schema).create()
        big[:].update(1.0)
        runner.shutdown()
        assert big[:].read().sum() == 4 * side * side
        assert runner._executor is not None


@pytest.mark.parametrize("operation", ["read", "update", "clear", "create"])
def test_on_a_local_disk_no_more_tile_tasks_run_at_once_than_there_are_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, operation: str
) -> None:
    # Tile tasks on a local disk are bound by the CPU and the GIL: the pool's extra threads
    # (its default is cores + 4) would only make them wait for each other.
    from storage_helpers.overlap import Overlap

    from deker import pipeline
    from deker.sizes import usable_cores
    from deker.storage.mounts import is_local_filesystem

    if not is_local_filesystem(tmp_path):
        pytest.skip(f"{tmp_path} is not on a local filesystem: there every pool thread may work")
    cores = usable_cores()
    side = 512  # 8 tiles of 1 MiB: more than one task's worth, one tile per task
    schema = VArraySchema(
        dtype=np.float32,
        dimensions=[DimensionSchema(name="y", size=2 * side), DimensionSchema(name="x", size=4 * side)],
        vgrid=(2, 4),
    )
    data = np.arange(8 * side * side, dtype=np.float32).reshape(2 * side, 4 * side)
    with Client((tmp_path / "s").as_uri(), workers=cores + 3) as c:
        collection = c.create_collection("c", schema)
        probe = Overlap(expect=min(cores, 8), hold=0.2)
        if operation == "create":  # a first write creates its 8 tiles in this process
            from deker.tileindex import TileIndex

            create = TileIndex.create
            monkeypatch.setattr(TileIndex, "create", lambda self, *a: probe.inside_while(create, self, *a))
            varray = collection.create()
            varray[:].update(data)
            monkeypatch.undo()
            np.testing.assert_array_equal(varray[:].read(), data)
            assert probe.entered == 8 and probe.most == min(cores, 8)
            return
        varray = collection.create()
        varray[:].update(data)
        name = {"read": "read_piece_into", "update": "write_piece", "clear": "clear_piece"}[operation]
        task = getattr(pipeline, name)
        monkeypatch.setattr(pipeline, name, lambda *args: probe.inside_while(task, *args))
        if operation == "read":
            np.testing.assert_array_equal(varray[:].read(), data)
        elif operation == "update":
            varray[:].update(data + 1)
            monkeypatch.undo()
            np.testing.assert_array_equal(varray[:].read(), data + 1)
        else:
            varray[:, 1:].clear()
            monkeypatch.undo()
            assert np.isnan(varray[:, 1:].read()).all()
            np.testing.assert_array_equal(varray[:, :1].read(), data[:, :1])
        assert probe.entered == 8 and probe.most == min(cores, 8)
