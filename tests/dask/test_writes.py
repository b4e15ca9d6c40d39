"""deker_dask.store: dask arrays written into VArrays / Arrays equal numpy, whatever their chunks.

Computed on the session's LocalCluster of worker processes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest
import xarray
from dask.delayed import Delayed
from dask_helpers import lock_files, task_args, varray
from hypothesis import given, settings
from hypothesis import strategies as st
from storage_helpers.other_user import needs_root

import deker_dask
from deker import ArraySchema, Client, DimensionSchema, HDF5Options, VArraySchema
from deker.errors import (
    DekerArrayTypeError,
    DekerClientError,
    DekerInstanceNotExistsError,
    DekerStorageError,
    DekerValidationError,
)
from deker_dask.graph_tasks import store_array_block, store_tiles


def source(
    shape: tuple[int, ...], chunks: Any, dtype: Any = np.float32, seed: int = 0
) -> tuple[Any, np.ndarray]:
    data = np.random.default_rng(seed).integers(0, 1000, size=shape).astype(dtype)
    return da.from_array(data, chunks=chunks), data


def test_misaligned_chunks_store_exactly(storage: Client, cluster: Any) -> None:
    v = varray(storage, (20, 18), (4, 3))  # tiles of (5, 6)
    oracle = np.full((20, 18), np.nan, dtype=np.float32)
    src, data = source((20, 18), (7, 4))
    deker_dask.store(src, v, scheduler=cluster)
    oracle[:] = data
    np.testing.assert_array_equal(v[:].read(), oracle)
    src, data = source((14, 13), (3, 5), seed=1)
    deker_dask.store(src, v[3:17, 2:15], scheduler=cluster)
    oracle[3:17, 2:15] = data
    src, data = source((16,), 5, seed=2)
    deker_dask.store(src, v[4, 1:17], scheduler=cluster)  # an integer-indexed dimension
    oracle[4, 1:17] = data
    np.testing.assert_array_equal(v[:].read(), oracle)
    np.testing.assert_array_equal(deker_dask.to_dask(v).compute(scheduler=cluster), oracle)
    assert not lock_files(storage.root_path)


def test_each_tile_in_one_task_with_unique_keys(storage: Client, cluster: Any) -> None:
    v = varray(storage, (12, 12), (3, 3))  # tiles of (4, 4)
    src, data = source((10, 7), (3, 3))
    first = deker_dask.store(src, v[1:11, 2:9], compute=False)
    second = deker_dask.store(src, v[1:11, 2:9], compute=False)
    assert isinstance(first, Delayed) and isinstance(second, Delayed)
    calls = task_args(first, store_tiles)
    positions = sorted(plan.position for call in calls for plan in call[2])
    assert positions == [(i, j) for i in range(3) for j in range(3)]  # each touched tile once
    first_keys = {
        k for k in dict(first.__dask_graph__()) if isinstance(k, tuple) and k[0].startswith("deker-store")
    }
    second_keys = {
        k for k in dict(second.__dask_graph__()) if isinstance(k, tuple) and k[0].startswith("deker-store")
    }
    assert len(first_keys) == len(calls) and not first_keys & second_keys  # never merged by the scheduler
    assert not v.tiles.ids()  # nothing written before compute
    assert first.compute(scheduler=cluster) == 70
    assert second.compute(scheduler=cluster) == 70  # a repeated store runs again
    expected = np.full((12, 12), np.nan, dtype=np.float32)
    expected[1:11, 2:9] = data
    np.testing.assert_array_equal(v[:].read(), expected)


def test_unaligned_store_batches_tiles_without_a_rechunk(storage: Client, cluster: Any) -> None:
    """Small tiles are batched into a bounded number of tasks; the source is never rechunked.

    Counted from the distributed scheduler's task stream: what really ran, not the graph.
    """
    from distributed import get_task_stream

    v = varray(storage, (64, 64), (16, 16))  # 256 tiles of (4, 4)
    src, data = source((64, 64), (7, 9))  # chunks unaligned to the tiles
    with get_task_stream(cluster) as stream:
        deker_dask.store(src, v, scheduler=cluster)
    names = [str(task["key"]) for task in stream.data]
    writes = [k for k in names if "deker-store-" in k and "done" not in k]
    assert 1 <= len(writes) <= 16  # 256 tiles in at most 16 tasks (deker_dask.writes.MIN_TASKS)
    assert not [k for k in names if "rechunk" in k]  # no shuffle through the scheduler
    np.testing.assert_array_equal(v[:].read(), data)
    assert not lock_files(storage.root_path)


def test_a_computed_source_runs_fused_one_task_per_chunk(storage: Client, cluster: Any) -> None:
    """The source's elementwise steps are fused as ``dask.array.store`` fuses them.

    ``(y * 31 + x * 17) % 1009`` as float32 is four elementwise layers; unfused, each ran as a
    task per chunk and kept its result until the next step ran.  Counted from the task stream.
    """
    from distributed import get_task_stream

    v = varray(storage, (40, 48), (4, 4), dtype=np.float32)
    y = da.arange(40, dtype=np.int64, chunks=7)[:, None]
    x = da.arange(48, dtype=np.int64, chunks=9)[None, :]
    src = ((y * 31 + x * 17) % 1009).astype(np.float32)
    steps = {name for name in src.dask.layers if name.split("-")[0] in ("mul", "add", "mod")}
    assert len(steps) >= 3  # the source really has separate elementwise layers
    with get_task_stream(cluster) as stream:
        deker_dask.store(src, v, scheduler=cluster)
    ran = {task["key"][0] for task in stream.data if isinstance(task["key"], tuple)}
    assert not ran & steps
    assert src.name in ran  # the fused chunks carry the source's name
    want = ((np.arange(40)[:, None] * 31 + np.arange(48)[None, :] * 17) % 1009).astype(np.float32)
    np.testing.assert_array_equal(v[:].read(), want)


def test_fill_blocks_create_no_tiles(storage: Client, cluster: Any) -> None:
    v = varray(storage, (8, 8), (2, 2), dtype=np.int32)
    data = np.full((8, 8), v.fill_value, dtype=np.int32)
    data[0, 0] = 5
    deker_dask.store(da.from_array(data, chunks=4), v, scheduler=cluster)
    assert set(v.tiles.ids()) == {(0, 0)}
    np.testing.assert_array_equal(v[:].read(), data)
    # fill values over an existing tile are written (they clear it)
    deker_dask.store(da.full((8, 8), v.fill_value, dtype=np.int32, chunks=4), v, scheduler=cluster)
    np.testing.assert_array_equal(v[:].read(), np.full((8, 8), v.fill_value, dtype=np.int32))


def test_store_into_arrays(storage: Client, cluster: Any) -> None:
    dims = [DimensionSchema(name="x", size=9), DimensionSchema(name="y", size=10)]
    coll = storage.create_collection(
        "a", ArraySchema(dtype=np.int64, dimensions=dims), HDF5Options(chunks=(3, 3))
    )
    arr = coll.create()
    src, data = source((9, 10), (4, 3), dtype=np.int64)
    delayed = deker_dask.store(src, arr, compute=False)
    assert delayed is not None
    assert len(task_args(delayed, store_array_block)) == 3 * 4  # one chained task per block
    assert delayed.compute(scheduler=cluster) == 90
    np.testing.assert_array_equal(arr[:].read(), data)
    src, part = source((5,), 2, dtype=np.int32, seed=3)  # int32 casts safely to int64
    deker_dask.store(src, arr[2:7, 4], scheduler=cluster)
    data[2:7, 4] = part
    np.testing.assert_array_equal(arr[:].read(), data)
    assert not lock_files(storage.root_path)


def test_a_0_d_source_stores_into_a_single_cell(storage: Client, cluster: Any) -> None:
    """A region of integer indices only is 0-d: its block once came out 1-d and was refused."""
    dims = [DimensionSchema(name="a", size=4), DimensionSchema(name="b", size=6)]
    arr = storage.create_collection("a", ArraySchema(dtype=np.float64, dimensions=dims)).create()
    v = varray(storage, (4, 6), (2, 2), dtype=np.float64)
    for target, value in ((arr[1, 2], 5.0), (v[1, 2], 6.0), (v[3, 5], 7.0)):
        deker_dask.store(da.from_array(np.float64(value)), target, scheduler=cluster)
        assert target.read() == value
    assert np.count_nonzero(~np.isnan(arr[:].read())) == 1
    assert np.count_nonzero(~np.isnan(v[:].read())) == 2
    assert not lock_files(storage.root_path)


def test_an_integer_source_that_the_float_target_would_round_is_refused(storage: Client) -> None:
    """numpy calls int64 into float64 a "safe" cast, but 2**53 + 1 would be stored as 2**53."""
    v = varray(storage, (4,), (2,), dtype=np.float64)
    data = np.array([2**53 + 1, 1, 2, 3], dtype=np.int64)
    with pytest.raises(
        DekerArrayTypeError, match=r"int64 data into an array of dtype float64 .*astype\('float64'\)"
    ):
        deker_dask.store(da.from_array(data, chunks=2), v, scheduler="sync")
    assert np.isnan(v[:].read()).all()  # nothing was written
    deker_dask.store(da.from_array(data.astype(np.int32), chunks=2) * 0 + 7, v, scheduler="sync")  # exact
    np.testing.assert_array_equal(v[:].read(), np.full(4, 7.0))


def _int64_blocks(block: np.ndarray, value: int) -> np.ndarray:
    """A map_blocks function whose blocks are int64, whatever dtype the caller declares."""
    return np.full(block.shape, value, dtype=np.int64)


def _lying(shape: tuple[int, ...], chunks: int, value: int, declared: Any) -> Any:
    return da.zeros(shape, chunks=chunks, dtype=np.int8).map_blocks(_int64_blocks, value, dtype=declared)


def test_blocks_of_another_dtype_than_declared_store_only_when_no_value_changes(
    storage: Client, cluster: Any
) -> None:
    """map_blocks(dtype=int8) over a function that returns int64: 300 must not become 44."""
    v = varray(storage, (4, 4), (2, 2), dtype=np.int8)
    refused = (
        r"some values of a block of the source \(int64\) change when stored as int8; the source's "
        r"dask array declares int8 but this block is int64: .*map_blocks\(\.\.\., dtype='int64'\)"
    )
    with pytest.raises(DekerArrayTypeError, match=refused):
        deker_dask.store(_lying((4, 4), 2, 300, np.int8), v, scheduler=cluster)
    np.testing.assert_array_equal(v[:].read(), np.full((4, 4), np.iinfo(np.int8).min))  # nothing written
    deker_dask.store(_lying((4, 4), 3, 100, np.int8), v, scheduler=cluster)  # they fit: stored exactly
    np.testing.assert_array_equal(v[:].read(), np.full((4, 4), 100))
    # declared int8 into an int16 VArray: the blocks' own values are checked, not the declared
    # dtype's cast of them (dask's astype would have wrapped 70000 to 4464 before any check)
    wide = varray(storage, (4, 4), (2, 2), dtype=np.int16, name="wide")
    with pytest.raises(
        DekerArrayTypeError, match=r"change when stored as int16.*declares int8 but this block is int64"
    ):
        deker_dask.store(_lying((4, 4), 4, 70000, np.int8), wide, scheduler=cluster)
    np.testing.assert_array_equal(wide[:].read(), np.full((4, 4), np.iinfo(np.int16).min))
    deker_dask.store(_lying((4, 4), 4, 300, np.int8), wide, scheduler=cluster)
    np.testing.assert_array_equal(wide[:].read(), np.full((4, 4), 300))
    assert not lock_files(storage.root_path)


def test_an_array_refuses_blocks_whose_values_its_dtype_cannot_hold(storage: Client, cluster: Any) -> None:
    dims = [DimensionSchema(name="x", size=4)]
    arr = storage.create_collection("lying", ArraySchema(dtype=np.uint8, dimensions=dims)).create()
    with pytest.raises(DekerArrayTypeError, match=r"\(int64\) change when stored as uint8"):
        deker_dask.store(_lying((4,), 4, -1, np.uint8), arr, scheduler=cluster)  # -1 is 255 as uint8
    np.testing.assert_array_equal(arr[:].read(), np.zeros(4, dtype=np.uint8))
    deker_dask.store(_lying((4,), 2, 255, np.uint8), arr, scheduler=cluster)
    np.testing.assert_array_equal(arr[:].read(), np.full(4, 255, dtype=np.uint8))


def test_store_validation(storage: Client) -> None:
    v = varray(storage, (4, 4), (2, 2), dtype=np.int16)
    for not_numbers in (np.array([[None] * 4] * 4, dtype=object), np.full((4, 4), "a")):
        with pytest.raises(DekerArrayTypeError, match="the source must hold numbers"):  # (dask's error)
            deker_dask.store(not_numbers, v)
    with pytest.raises(DekerValidationError, match="shape"):
        deker_dask.store(da.zeros((4, 3), dtype=np.int16), v)
    wrong_dtype = r"Cannot store float64 data into an array of dtype int16 .*source\.astype\('int16'\)"
    with pytest.raises(DekerArrayTypeError, match=wrong_dtype):
        deker_dask.store(da.zeros((4, 4), dtype=np.float64), v)
    unknown = da.zeros((4, 4), dtype=np.int16, chunks=2)
    unknown = unknown[unknown[:, 0] == 0]
    with pytest.raises(DekerValidationError, match="unknown chunk"):
        deker_dask.store(unknown, v[0:4])
    deker_dask.store(np.ones((2, 4), dtype=np.int16), v[1:3], scheduler="sync")  # numpy is wrapped
    np.testing.assert_array_equal(v[1:3].read(), np.ones((2, 4), dtype=np.int16))
    later = deker_dask.store(da.ones((4, 4), dtype=np.int16, chunks=2), v, compute=False)
    assert later is not None
    v.delete()
    with pytest.raises(DekerInstanceNotExistsError):
        later.compute(scheduler="sync")
    with pytest.raises(DekerInstanceNotExistsError):
        deker_dask.store(da.ones((4, 4), dtype=np.int16), v)


@st.composite
def store_case(draw: st.DrawFn) -> tuple[Any, ...]:
    ndim = draw(st.integers(1, 3))
    vgrid = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
    tile = tuple(draw(st.integers(1, 4)) for _ in range(ndim))
    shape = tuple(g * t for g, t in zip(vgrid, tile, strict=True))
    key = []
    for size in shape:
        if size > 1 and draw(st.booleans()) and ndim > 1 and not any(isinstance(k, int) for k in key):
            key.append(draw(st.integers(0, size - 1)))
            continue
        a = draw(st.integers(0, size - 1))
        key.append(slice(a, draw(st.integers(a + 1, size))))
    sub_shape = tuple(k.stop - k.start for k in key if isinstance(k, slice))
    chunks = tuple(draw(st.integers(1, max(1, s))) for s in sub_shape)
    per_chunk = tuple(draw(st.integers(1, 2)) for _ in range(ndim))
    return shape, vgrid, tuple(key), chunks, per_chunk


@settings(max_examples=10, deadline=None)
@given(case=store_case())
def test_random_store_and_read_match_numpy(
    tmp_path_factory: pytest.TempPathFactory, dask_cluster_client: Any, case: tuple[Any, ...]
) -> None:
    shape, vgrid, key, chunks, per_chunk = case
    root: Path = tmp_path_factory.mktemp("hyp")
    with Client(f"file://{root}") as client:
        v = varray(client, shape, vgrid, dtype=np.int32)
        oracle = np.full(shape, v.fill_value, dtype=np.int32)
        base = np.arange(int(np.prod(shape)), dtype=np.int32).reshape(shape)
        v[:].update(base)
        oracle[:] = base
        region = oracle[key]
        data = (np.arange(region.size, dtype=np.int32) * 3 - 7).reshape(region.shape)
        deker_dask.store(da.from_array(data, chunks=chunks), v[key], scheduler=dask_cluster_client)
        oracle[key] = data
        lazy = deker_dask.to_dask(v, tiles_per_chunk=per_chunk)
        np.testing.assert_array_equal(lazy.compute(scheduler=dask_cluster_client), oracle)
        np.testing.assert_array_equal(deker_dask.to_dask(v[key]).compute(scheduler=dask_cluster_client), data)
        assert not lock_files(root)


def test_delayed_store_after_close_writes_nothing(tmp_path: Path, cluster: Any) -> None:
    client = Client((tmp_path / "s").as_uri())
    v = varray(client, (4, 4), (2, 2))
    coll = client.create_collection("a", ArraySchema(dtype=np.float32, dimensions=[DimensionSchema("n", 4)]))
    array = coll.create()
    pending = [
        deker_dask.store(np.ones((4, 4), np.float32), v, compute=False),
        deker_dask.store(np.ones(4, np.float32), array, compute=False),
    ]
    client.close()
    for delayed in pending:
        for scheduler in ("sync", cluster):
            with pytest.raises(DekerClientError, match="Client is closed"):
                delayed.compute(scheduler=scheduler)
    with Client((tmp_path / "s").as_uri()) as again:
        for name in ("v", "a"):
            coll_ = again.get_collection(name)
            assert coll_ is not None
            (obj,) = list(coll_)
            assert np.isnan(obj[:].read()).all()  # nothing was written


@pytest.mark.parametrize("kind", ["varray", "array"])
def test_store_on_a_worker_seeing_another_storage_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """store's tasks carry the storage identity, like deker's own tile tasks.

    The worker (here: this process's tasks, whose view of the storage path DEKER_ROOT_MAP
    sends elsewhere, as on a node where another filesystem is mounted there) finds another
    storage holding a collection of the same name.  Its collection file proves nothing: the
    storage identity does, and the store fails with the clear error, writing nothing.
    """
    dims = [DimensionSchema(name="x", size=4), DimensionSchema(name="y", size=6)]
    if kind == "varray":
        schema: Any = VArraySchema(dtype=np.float32, dimensions=dims, vgrid=(2, 2))
    else:
        schema = ArraySchema(dtype=np.float32, dimensions=dims)
    with Client((tmp_path / "other").as_uri()) as other:
        other.create_collection("c", schema)
    with Client((tmp_path / "storage").as_uri()) as client:
        obj = client.create_collection("c", schema).create()
        if kind == "array":  # the other storage even holds a file of that id
            other_file = Path(str(obj._main_file).replace(str(tmp_path / "storage"), str(tmp_path / "other")))
            other_file.parent.mkdir(parents=True)
            other_file.write_bytes(obj._main_file.read_bytes())
        monkeypatch.setenv("DEKER_ROOT_MAP", f"{tmp_path / 'storage'}={tmp_path / 'other'}")
        src = da.from_array(np.ones((4, 6), dtype=np.float32), chunks=(2, 3))
        with pytest.raises(DekerStorageError, match=r"does not see the storage at .*other.*another storage"):
            deker_dask.store(src, obj, scheduler="sync")
        monkeypatch.delenv("DEKER_ROOT_MAP")
        np.testing.assert_array_equal(obj[:].read(), np.full((4, 6), np.nan, dtype=np.float32))


def _in_place_sources(v: Any, arr: Any, collection: Any) -> list[tuple[str, Any, Any]]:
    """Stores whose source reads cells the store rewrites: (what, source, target)."""
    lazy = deker_dask.to_dask(v)
    return [
        ("reversed", lazy[::-1], v),  # read tiles another task may already have rewritten
        ("shifted", deker_dask.to_dask(v[0:12]), v[4:16]),
        ("a row into itself", deker_dask.to_dask(v[3])[::-1], v[3, 0:6]),
        ("elementwise", lazy * 2, v),  # a dead worker's tiles would be read again, doubled
        ("fancy", lazy[[3, 1, 2]], v[0:3]),
        ("optimized", dask.optimize(lazy[::-1])[0], v),  # the reader inlined into its tasks
        ("stacked", deker_dask.from_collection(collection)[0], v),
        ("array", deker_dask.to_dask(arr)[::-1], arr),
        ("delayed", da.from_delayed(dask.delayed(_read)(v[2:6]), (4, 6), dtype=np.float32), v[0:4]),
        # a task's function holding the read: a bound method, a partial
        ("bound method", da.from_delayed(dask.delayed(v[2:6].read)(), (4, 6), dtype=np.float32), v[0:4]),
        (
            "partial",
            da.from_delayed(dask.delayed(partial(_read, v[2:6]))(), (4, 6), dtype=np.float32),
            v[0:4],
        ),
        ("partial in map_blocks", lazy.map_blocks(partial(_plus, v[:]), dtype=np.float32), v),
    ]


def _read(subset: Any) -> Any:
    return subset.read()


def _plus(subset: Any, block: Any, block_info: Any = None) -> Any:
    return block + subset.read()[tuple(slice(a, b) for a, b in block_info[0]["array-location"])]


def test_a_source_that_reads_the_cells_it_rewrites_is_refused(storage: Client) -> None:
    """An in-place store cannot be right: it is refused before anything is written.

    ``store(to_dask(v)[::-1], v)`` used to store a mix of old and already-reversed rows.
    """
    v = varray(storage, (16, 6), (4, 2))  # tiles of (4, 3)
    dims = [DimensionSchema(name="x", size=5), DimensionSchema(name="y", size=6)]
    arr = storage.create_collection("a", ArraySchema(dtype=np.float32, dimensions=dims)).create()
    before = np.arange(96, dtype=np.float32).reshape(16, 6)
    v[:].update(before)
    arr[:].update(before[:5])
    for what, src, target in _in_place_sources(v, arr, storage.get_collection("v")):
        with pytest.raises(DekerValidationError, match=r"the source reads it .*another VArray or Array"):
            deker_dask.store(src, target, scheduler="sync")
        np.testing.assert_array_equal(v[:].read(), before, err_msg=what)
        np.testing.assert_array_equal(arr[:].read(), before[:5], err_msg=what)
    path = storage.root_path.parent
    (path.parent / "link").symlink_to(path)  # the same storage, opened through another path
    with Client((path.parent / "link").as_uri()) as other:
        again = other.get_collection("v").filter({"id": v.id}).last()
        with pytest.raises(DekerValidationError, match=r"the source reads it"):
            deker_dask.store(deker_dask.to_dask(again)[::-1], v, scheduler="sync")
    with (
        xarray.open_dataset(path, engine="deker", group="v", chunks={}) as ds,
        pytest.raises(DekerValidationError, match=r"the source reads it"),  # the backend's reads
    ):
        deker_dask.store(ds["v"].data[0, ::-1], v, scheduler="sync")
    np.testing.assert_array_equal(v[:].read(), before)
    assert not lock_files(storage.root_path)


def test_a_source_reading_other_cells_or_objects_stores(storage: Client, cluster: Any) -> None:
    v = varray(storage, (16, 6), (4, 2))
    other = storage.get_collection("v").create()
    before = np.arange(96, dtype=np.float32).reshape(16, 6)
    v[:].update(before)
    deker_dask.store(deker_dask.to_dask(v)[::-1], other, scheduler=cluster)
    np.testing.assert_array_equal(other[:].read(), before[::-1])
    deker_dask.store(deker_dask.to_dask(v[0:8]), v[8:16], scheduler=cluster)  # disjoint regions
    deker_dask.store(deker_dask.to_dask(v[3]), v[2, 0:6], scheduler=cluster)
    deker_dask.store(deker_dask.to_dask(other[12:16]) + 1, v[4:8], scheduler=cluster)
    expected = before.copy()
    expected[8:16] = before[0:8]
    expected[4:8] = before[::-1][12:16] + 1
    expected[2] = before[3]
    np.testing.assert_array_equal(v[:].read(), expected)


class _Proxy:
    """A foreign object in a graph whose attribute lookups fail with something else than AttributeError."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # (what dask itself asks of it)
            raise AttributeError(name)
        raise RuntimeError(f"no {name} here")


def _second(_ignored: Any, values: Any) -> Any:
    return values


def test_the_search_for_reads_passes_over_objects_it_cannot_look_into(storage: Client) -> None:
    v = varray(storage, (4, 6), (2, 2))
    data = np.arange(24, dtype=np.float32).reshape(4, 6)
    src = da.from_delayed(dask.delayed(_second)(_Proxy(), data), (4, 6), dtype=np.float32)
    deker_dask.store(src, v, scheduler="sync")
    np.testing.assert_array_equal(v[:].read(), data)


_TWO_MOUNTS = """
import sys
import deker_dask
from deker import Client
from deker.errors import DekerValidationError
first, second, vid = sys.argv[1:]
with Client(first) as a, Client(second) as b:
    target = a.get_collection("v").filter({"id": vid}).last()
    same = b.get_collection("v").filter({"id": vid}).last()
    try:
        deker_dask.store(deker_dask.to_dask(same)[::-1], target, scheduler="sync")
    except DekerValidationError as exc:
        print("refused" if "the source reads it" in str(exc) else f"other: {exc}")
    else:
        print("stored")
"""


@needs_root
def test_a_source_reading_the_target_through_another_mount_is_refused(
    storage: Client, tmp_path: Path
) -> None:
    """The storage seen at two paths (a bind mount): its identity, not its path, says it is the same."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    v = varray(storage, (8, 4), (2, 2))
    before = np.arange(32, dtype=np.float32).reshape(8, 4)
    v[:].update(before)
    path, view = storage.root_path.parent, tmp_path / "view"
    view.mkdir()
    script = f'mount --bind {path} {view} && exec "$0" -c "$1" {path.as_uri()} {view.as_uri()} {v.id}'
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, sys.executable, _TWO_MOUNTS],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0 and "unshare" in done.stderr and "Operation not permitted" in done.stderr:
        pytest.skip(f"mount namespaces are not allowed here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "refused"
    np.testing.assert_array_equal(v[:].read(), before)


def test_a_source_reading_a_copy_of_the_storage_stores(storage: Client, cluster: Any) -> None:
    """A restore from a backup copy (same storage id, same object ids, other files) is no in-place store."""
    v = varray(storage, (8, 4), (2, 2))
    before = np.arange(32, dtype=np.float32).reshape(8, 4)
    v[:].update(before)
    path = storage.root_path.parent
    shutil.copytree(path, path.parent / "backup", symlinks=True)
    v[:].update(np.zeros((8, 4), dtype=np.float32))  # the day after the backup
    with Client((path.parent / "backup").as_uri()) as backup:
        saved = backup.get_collection("v").filter({"id": v.id}).last()
        deker_dask.store(deker_dask.to_dask(saved), v, scheduler=cluster)
    np.testing.assert_array_equal(v[:].read(), before)
