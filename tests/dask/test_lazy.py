"""deker_dask.to_dask / to_xarray / from_collection: lazy arrays equal what deker reads (and numpy).

Graph-level properties (chunks, names, which tasks read files) are checked on the graph; data
is computed on the session's LocalCluster of worker processes.
"""

from __future__ import annotations

import itertools
import pickle
from datetime import datetime, timedelta, timezone
from typing import Any

import dask
import numpy as np
import pytest
from dask_helpers import task_args, task_functions, varray
from distributed import get_task_stream
from hypothesis import given, settings
from hypothesis import strategies as st

import deker_dask
from deker import (
    ArraySchema,
    AttributeSchema,
    Client,
    DimensionSchema,
    HDF5Options,
    TimeDimensionSchema,
    VArraySchema,
)
from deker.errors import DekerClientError, DekerInstanceNotExistsError, DekerValidationError
from deker_dask import graph_tasks
from deker_dask.graph_tasks import fill_chunk, read_chunk, read_region
from deker_dask.lazy import TileReader

READS = (read_region, read_chunk)


def filled(v: Any, oracle: np.ndarray, key: Any, seed: int) -> None:
    data = (
        (np.arange(oracle[key].size, dtype=np.int64) + seed).astype(oracle.dtype).reshape(oracle[key].shape)
    )
    v[key].update(data)
    oracle[key] = data


def test_varray_chunks_values_and_workers(storage: Client, cluster: Any) -> None:
    v = varray(storage, (12, 16), (3, 4))
    oracle = np.full((12, 16), np.nan, dtype=np.float32)
    filled(v, oracle, (slice(2, 9), slice(3, 12)), 1)
    arr = deker_dask.to_dask(v)
    assert (arr.shape, arr.dtype, arr.chunks) == ((12, 16), np.float32, ((4, 4, 4), (4, 4, 4, 4)))
    with get_task_stream(client=cluster) as stream:
        np.testing.assert_array_equal(arr.compute(scheduler=cluster), oracle)
    ran = {record["key"]: record["worker"] for record in stream.data if record["key"][0] == arr.name}
    assert set(ran) == {k for row in arr.__dask_keys__() for k in row}  # one task per tile
    assert set(ran.values()) <= set(cluster.scheduler_info()["workers"])
    # subsets: chunks follow the tile grid, integer dimensions drop like read()
    for key in [np.s_[1:11, 5:15], np.s_[5, 2:13], np.s_[3:12, 7], np.s_[4:8, 4:8]]:
        sub = deker_dask.to_dask(v[key])
        assert sub.shape == oracle[key].shape
        np.testing.assert_array_equal(sub.compute(scheduler=cluster), oracle[key])
    assert deker_dask.to_dask(v[1:11, 5:15]).chunks == ((3, 4, 3), (3, 4, 3))
    # several tiles per chunk
    big = deker_dask.to_dask(v, tiles_per_chunk=(2, 3))
    assert big.chunks == ((8, 4), (12, 4))
    np.testing.assert_array_equal(big.compute(scheduler=cluster), oracle)
    np.testing.assert_array_equal(
        deker_dask.to_dask(v[3:10, 1:15], tiles_per_chunk=2).compute(), oracle[3:10, 1:15]
    )
    # a single cell
    assert deker_dask.to_dask(v[3, 4]).compute() == oracle[3, 4]


def test_absent_tiles_are_not_read(storage: Client, cluster: Any) -> None:
    v = varray(storage, (12, 16), (3, 4), dtype=np.int32)
    oracle = np.full((12, 16), v.fill_value, dtype=np.int32)
    filled(v, oracle, (slice(0, 4), slice(0, 4)), 10)
    filled(v, oracle, (slice(9, 11), slice(13, 15)), 20)
    existing = {tid for tid in v.tiles.ids().values()}
    assert len(existing) == 2
    arr = deker_dask.to_dask(v)
    funcs = task_functions(arr)
    assert len(funcs) == 12
    assert sum(f in READS for f in funcs) == 2 and funcs.count(fill_chunk) == 10
    assert {args[0].array_id for args in task_args(arr, read_region)} == existing
    total = arr.sum()
    assert int(total.compute(scheduler=cluster)) == int(oracle.sum(dtype=np.int64))
    # Write 7 into every absent tile: the graph built before never looks at them.
    present = set(v.tiles.ids())
    after = oracle.copy()
    for i, j in itertools.product(range(3), range(4)):
        if (i, j) not in present:
            v[4 * i : 4 * i + 4, 4 * j : 4 * j + 4].update(np.int32(7))
            after[4 * i : 4 * i + 4, 4 * j : 4 * j + 4] = 7
    assert int(total.compute(scheduler=cluster)) == int(oracle.sum(dtype=np.int64))
    again = deker_dask.to_dask(v)
    assert again.name != arr.name
    assert task_functions(again).count(fill_chunk) == 0
    np.testing.assert_array_equal(again.compute(scheduler=cluster), after)


def test_names_are_deterministic_and_follow_writes(storage: Client) -> None:
    v = varray(storage, (8, 8), (2, 2))
    first = deker_dask.to_dask(v).name
    assert deker_dask.to_dask(v).name == first
    assert first.startswith("deker-varray-")
    assert deker_dask.to_dask(v[0:4]).name != first
    assert deker_dask.to_dask(v, tiles_per_chunk=2).name != first
    v[0:4, 0:4].update(np.float32(1))  # creates a tile
    second = deker_dask.to_dask(v).name
    assert second != first
    v[0:2, 0:2].update(np.float32(2))  # writes into the existing tile
    assert deker_dask.to_dask(v).name != second
    assert deker_dask.to_dask(v, name=False).name != deker_dask.to_dask(v, name=False).name
    assert deker_dask.to_dask(v, name="mine").name == "mine"
    with pytest.raises(DekerValidationError):
        deker_dask.to_dask(v, name=3)  # type: ignore[arg-type]


def test_array_chunks(storage: Client, cluster: Any) -> None:
    dims = [DimensionSchema(name="x", size=10), DimensionSchema(name="y", size=12)]
    coll = storage.create_collection(
        "a", ArraySchema(dtype=np.float64, dimensions=dims), HDF5Options(chunks=(2, 4))
    )
    arr = coll.create()
    data = np.arange(120, dtype=np.float64).reshape(10, 12)
    arr[:].update(data)
    whole = deker_dask.to_dask(arr)
    assert whole.chunks == ((10,), (12,))
    np.testing.assert_array_equal(whole.compute(scheduler=cluster), data)
    three = deker_dask.to_dask(arr, chunks=3)  # rounded to whole HDF5 chunks: (4, 4)
    assert three.chunks == ((4, 4, 2), (4, 4, 4))
    np.testing.assert_array_equal(three.compute(scheduler=cluster), data)
    sub = deker_dask.to_dask(arr[3:9, 5], chunks=(2, 4))
    assert sub.chunks == ((1, 2, 2, 1),)  # aligned on the file's HDF5 chunks
    np.testing.assert_array_equal(sub.compute(), data[3:9, 5])
    with dask.config.set({"array.chunk-size": "200B"}):  # too big for one chunk: auto, HDF5-aligned
        auto = deker_dask.to_dask(arr)
    assert len(auto.chunks[0]) > 1 and all(c % 2 == 0 for c in auto.chunks[0][:-1])
    assert all(c % 4 == 0 for c in auto.chunks[1][:-1])
    for zero in (0, (0, 4)):  # dask's own chunking divided by it: a raw ZeroDivisionError
        with pytest.raises(DekerValidationError, match="Invalid chunks"):
            deker_dask.to_dask(arr, chunks=zero)
    np.testing.assert_array_equal(auto.compute(), data)
    with pytest.raises(DekerValidationError, match="tiles_per_chunk"):
        deker_dask.to_dask(arr, tiles_per_chunk=2)
    v = varray(storage, (4, 4), (2, 2), name="v")
    with pytest.raises(DekerValidationError, match="tiles_per_chunk"):
        deker_dask.to_dask(v, chunks=2)
    with pytest.raises(DekerValidationError):
        deker_dask.to_dask(v, tiles_per_chunk=(1, 0))
    for wrong in (1.5, "2", object()):  # neither an int nor a sequence of ints (1.5 was a TypeError)
        with pytest.raises(DekerValidationError, match="tiles_per_chunk must be a positive int"):
            deker_dask.to_dask(v, tiles_per_chunk=wrong)  # type: ignore[arg-type]
    coll = storage.get_collection("v")
    assert coll is not None
    with pytest.raises(DekerValidationError, match="arrays_per_chunk must be a positive int"):
        deker_dask.from_collection(coll, arrays_per_chunk=1.5)  # type: ignore[arg-type]
    with pytest.raises(DekerValidationError):
        deker_dask.to_dask(np.zeros(3))
    arr.delete()
    with pytest.raises(DekerInstanceNotExistsError):
        deker_dask.to_dask(arr)


def test_from_collection_of_arrays(storage: Client, cluster: Any) -> None:
    schema = ArraySchema(
        dtype=np.float32,
        dimensions=[
            TimeDimensionSchema(name="time", size=4, start_value="$day", step=timedelta(hours=6)),
            DimensionSchema(name="x", size=5),
        ],
        attributes=[AttributeSchema(name="day", dtype=datetime, primary=True)],
    )
    coll = storage.create_collection("days", schema)
    days = [datetime(2024, 1, d, tzinfo=timezone.utc) for d in (3, 1, 2)]
    for day in days:  # created out of order
        a = coll.create({"day": day})
        a[:].update(np.full((4, 5), day.day, dtype=np.float32))
    stacked = deker_dask.from_collection(coll)
    assert stacked.shape == (3, 4, 5) and stacked.chunks[0] == (3,)  # small arrays: one batch
    expected = np.stack([np.full((4, 5), d, dtype=np.float32) for d in (1, 2, 3)])
    np.testing.assert_array_equal(stacked.compute(scheduler=cluster), expected)
    assert deker_dask.from_collection(coll, arrays_per_chunk=2).chunks[0] == (2, 1)
    labelled = deker_dask.to_xarray(coll, arrays_per_chunk=1)
    assert labelled.dims == ("day", "time", "x")
    assert list(labelled["day"].values) == [np.datetime64(f"2024-01-0{d}T00:00", "ns") for d in (1, 2, 3)]
    assert labelled["time_values"].shape == (3, 4)  # each array's time axis starts at its day
    assert labelled["time_values"].values[2, 1] == np.datetime64("2024-01-03T06:00", "ns")
    mean = labelled.mean(dim=("time", "x")).compute(scheduler=cluster)
    np.testing.assert_array_equal(mean.values, [1.0, 2.0, 3.0])
    assert list(mean["day"].values) == list(labelled["day"].values)


def test_from_collection_of_varrays(storage: Client, cluster: Any) -> None:
    schema = VArraySchema(
        dtype=np.int16,
        dimensions=[DimensionSchema(name="y", size=6), DimensionSchema(name="x", size=4)],
        attributes=[AttributeSchema(name="run", dtype=int, primary=True)],
        vgrid=(3, 2),
        fill_value=-1,
    )
    coll = storage.create_collection("runs", schema)
    expected = []
    for run in (2, 0, 1):
        v = coll.create({"run": run})
        oracle = np.full((6, 4), -1, dtype=np.int16)
        filled(v, oracle, (slice(0, 2 + run * 2), slice(0, 2)), run * 100)
        expected.append((run, oracle))
    stacked = deker_dask.from_collection(coll, arrays_per_chunk=2)
    assert stacked.chunks == ((2, 1), (2, 2, 2), (2, 2))
    # runs 0 and 1 share chunks: 4 of their 6 tile positions have no tile in either; run 2 has 3
    funcs = task_functions(stacked)
    assert funcs.count(fill_chunk) == 4 + 3 and funcs.count(read_chunk) == 2 + 3
    want = np.stack([o for _, o in sorted(expected, key=lambda t: t[0])])
    np.testing.assert_array_equal(stacked.compute(scheduler=cluster), want)
    labelled = deker_dask.to_xarray(coll)
    assert list(labelled["run"].values) == [0, 1, 2]
    np.testing.assert_array_equal(labelled.values, want)
    empty = storage.create_collection("none", schema)
    assert deker_dask.from_collection(empty).shape == (0, 6, 4)


def test_a_lazy_array_of_an_object_deleted_since_raises_instead_of_reading_fill(
    storage: Client, cluster: Any
) -> None:
    """A deleted tile reads as fill; a deleted Array or VArray read as fill too (a wrong answer)."""
    v = varray(storage, (4, 4), (2, 2), dtype=np.int32, name="gone_v")
    v[:].update(np.arange(16, dtype=np.int32).reshape(4, 4))
    dims = [DimensionSchema(name="x", size=4)]
    a = storage.create_collection("gone_a", ArraySchema(dtype=np.int32, dimensions=dims)).create()
    a[:].update(np.arange(4, dtype=np.int32))
    schema = ArraySchema(
        dtype=np.int32, dimensions=dims, attributes=[AttributeSchema("k", int, primary=True)]
    )
    coll = storage.create_collection("gone_c", schema)
    members = [coll.create({"k": k}) for k in range(3)]
    for k, member in enumerate(members):
        member[:].update(np.full(4, k, dtype=np.int32))
    lazy_v, lazy_a = deker_dask.to_dask(v), deker_dask.to_dask(a)
    stacked = deker_dask.from_collection(coll, arrays_per_chunk=1)
    v[0:2, 0:2].clear()  # a tile removed, the VArray still there: fill, as documented
    assert lazy_v[0, 0].compute(scheduler=cluster) == np.iinfo(np.int32).min
    members[2].delete()
    np.testing.assert_array_equal(
        stacked[:2].compute(scheduler=cluster), [[0] * 4, [1] * 4]
    )  # the others read
    for lazy, obj in ((lazy_v, v), (lazy_a, a), (stacked, members[2])):
        if obj is not members[2]:
            obj.delete()
        for scheduler in ("sync", cluster):
            with pytest.raises(DekerInstanceNotExistsError, match="was deleted after the lazy array"):
                lazy.compute(scheduler=scheduler)


def test_computing_after_close_raises_like_every_object(tmp_path: Any, cluster: Any) -> None:
    """docs/quickstart.md: after close() every object of the client stops working; lazy arrays too."""
    client = Client((tmp_path / "s").as_uri())
    v = varray(client, (8, 8), (2, 2))
    oracle = np.full((8, 8), np.nan, dtype=np.float32)
    filled(v, oracle, (slice(0, 4), slice(0, 4)), 1)  # one tile exists, three read as fill
    coll = client.create_collection(
        "plain", ArraySchema(dtype=np.float64, dimensions=[DimensionSchema("n", 3)])
    )
    array = coll.create()
    array[:].update(np.arange(3.0))
    lazies = [
        deker_dask.to_dask(v),
        deker_dask.to_dask(v[1:7, 5]),
        deker_dask.to_dask(array),
        deker_dask.from_collection(coll),
        deker_dask.to_xarray(v),
    ]
    # while the client is open, the graph runs on the workers, which never had the client
    np.testing.assert_array_equal(lazies[0].compute(scheduler=cluster), oracle)
    submitted = cluster.compute(lazies[2] * 2)  # submitted while open: it completes
    client.close()
    np.testing.assert_array_equal(submitted.result(), np.arange(3.0) * 2)
    for lazy in [*lazies, lazies[0] + 1, lazies[0][4:, 4:]]:  # derived arrays too, absent tiles too
        for scheduler in ("sync", "threads", cluster):
            with pytest.raises(DekerClientError, match="Client is closed"):
                lazy.compute(scheduler=scheduler)
    with Client((tmp_path / "s").as_uri()) as again:  # re-opening does not revive them (1.1.7 rule)
        with pytest.raises(DekerClientError, match="Client is closed"):
            lazies[0].compute(scheduler="sync")
        fresh = again.get_collection("v")
        assert fresh is not None
        (v2,) = list(fresh)
        np.testing.assert_array_equal(deker_dask.to_dask(v2).compute(scheduler=cluster), oracle)


# ----------------------------------------------------------------------------- the tile reader


def _index(n: int) -> st.SearchStrategy[Any]:
    """One basic index into a dimension of length ``n``: an int, or a slice with any step."""
    bound = st.none() | st.integers(-n - 3, n + 3)
    step = st.none() | st.integers(1, 4) | st.integers(-4, -1)
    return st.integers(-n, n - 1) | st.builds(slice, bound, bound, step)


def test_slices_of_a_lazy_varray_and_of_its_reader_match_the_oracles(storage: Client) -> None:
    """Any basic index of the lazy array gives dask's own answer; of its reader, numpy's."""
    v = varray(storage, (12, 16), (3, 4))
    oracle = np.full((12, 16), np.nan, dtype=np.float32)
    filled(v, oracle, (slice(0, 4), slice(0, 4)), 1)
    filled(v, oracle, (slice(5, 11), slice(3, 9)), 100)
    whole = deker_dask.to_dask(v)
    sub = deker_dask.to_dask(v[2:10, 1:15])
    peers = (
        (whole, dask.array.from_array(oracle, chunks=(4, 4)), oracle),
        (
            sub,
            dask.array.from_array(oracle[2:10, 1:15], chunks=((2, 4, 2), (3, 4, 4, 3))),
            oracle[2:10, 1:15],
        ),
    )

    @settings(max_examples=150, deadline=None)
    @given(which=st.integers(0, 1), data=st.data())
    def check(which: int, data: st.DataObject) -> None:
        lazy, peer, cells = peers[which]
        key = tuple(data.draw(_index(n)) for n in lazy.shape)
        np.testing.assert_array_equal(
            lazy[key].compute(scheduler="sync"), peer[key].compute(scheduler="sync")
        )
        np.testing.assert_array_equal(_reader(lazy)[key], cells[key])
        # integer arrays (one per dimension at most, numpy's advanced-indexing rules)
        advanced = tuple(
            data.draw(st.lists(st.integers(-n, n - 1), max_size=5) | _index(n)) for n in lazy.shape
        )
        try:
            want = cells[advanced]
        except IndexError:  # arrays that do not broadcast together: refused alike
            with pytest.raises(IndexError):
                _reader(lazy)[advanced]
        else:
            np.testing.assert_array_equal(_reader(lazy)[advanced], want)

    check()


def test_reads_fuse_with_the_blockwise_steps_after_them(storage: Client, cluster: Any) -> None:
    """A tile's read and its share of a sum are one task: no tile is kept as a result of its own."""
    v = varray(storage, (12, 16), (3, 4), dtype=np.int32)
    oracle = np.zeros((12, 16), dtype=np.int32)
    v[:].update(oracle)
    filled(v, oracle, (slice(1, 11), slice(2, 15)), 5)
    lazy = deker_dask.to_dask(v)
    total = lazy.sum(dtype=np.int64)
    (optimized,) = dask.optimize(total)
    keys = dict(optimized.__dask_graph__())
    assert not [k for k in keys if isinstance(k, tuple) and k[0] == lazy.name]  # fused into the sum
    with get_task_stream(client=cluster) as stream:
        assert int(total.compute(scheduler=cluster)) == int(oracle.sum(dtype=np.int64))
    assert not [r for r in stream.data if isinstance(r["key"], tuple) and r["key"][0] == lazy.name]
    # a collection's stack too
    stacked = deker_dask.from_collection(storage.get_collection(v.collection), arrays_per_chunk=1)
    (optimized,) = dask.optimize(stacked.sum(dtype=np.int64))
    assert not [k for k in dict(optimized.__dask_graph__()) if isinstance(k, tuple) and k[0] == stacked.name]
    assert int(stacked.sum(dtype=np.int64).compute(scheduler=cluster)) == int(oracle.sum(dtype=np.int64))


def _reader(lazy: Any) -> TileReader:
    reader = dict(lazy.__dask_graph__())[f"original-{lazy.name}"]
    assert isinstance(reader, TileReader)
    return reader


def test_the_reader_reads_only_the_cells_asked_for(storage: Client, monkeypatch: Any) -> None:
    """``reader[1:3, 5:7]`` reads those cells of one tile, not the tile; absent tiles no file."""
    v = varray(storage, (8, 8), (2, 2))
    oracle = np.full((8, 8), np.nan, dtype=np.float32)
    filled(v, oracle, (slice(0, 4), slice(0, 8)), 3)  # tiles (0, 0) and (0, 1)
    seen: list[Any] = []
    real_into, real_piece = graph_tasks.read_piece_into, graph_tasks.read_piece

    def spy_into(spec: Any, bounds: Any, *args: Any, **kwargs: Any) -> None:
        seen.append(bounds)
        real_into(spec, bounds, *args, **kwargs)

    def spy_piece(spec: Any, bounds: Any) -> np.ndarray:
        seen.append(bounds)
        return real_piece(spec, bounds)

    monkeypatch.setattr(graph_tasks, "read_piece_into", spy_into)
    monkeypatch.setattr(graph_tasks, "read_piece", spy_piece)
    reader = _reader(deker_dask.to_dask(v))
    np.testing.assert_array_equal(reader[1:3, 5:7], oracle[1:3, 5:7])
    assert seen == [(slice(1, 3), slice(1, 3))]  # tile (0, 1), its cells 1:3 x 1:3
    seen.clear()
    np.testing.assert_array_equal(reader[2, ::3], oracle[2, ::3])
    assert seen == [(slice(2, 3), slice(0, 4)), (slice(2, 3), slice(0, 3))]  # row 2, cells 0..6
    seen.clear()
    np.testing.assert_array_equal(reader[[3, 1], 6], oracle[[3, 1], 6])
    assert seen == [(slice(1, 4), slice(2, 3))]  # rows 1..3 of column 6
    seen.clear()
    np.testing.assert_array_equal(reader[5:7, 1:7], oracle[5:7, 1:7])
    assert seen == []  # tiles (1, 0) and (1, 1) do not exist: fill, no file opened
    # through dask: a later slice is folded into the read of its chunk
    np.testing.assert_array_equal(deker_dask.to_dask(v)[1:3, 5:7].compute(scheduler="sync"), oracle[1:3, 5:7])
    assert seen == [(slice(1, 3), slice(1, 3))]
    seen.clear()
    np.testing.assert_array_equal(deker_dask.to_dask(v)[:, 5].compute(scheduler="sync"), oracle[:, 5])
    assert seen == [(slice(0, 4), slice(1, 2))]  # one column of tile (0, 1); tile (1, 1) absent


def test_the_reader_refuses_what_is_not_an_index_it_reads(storage: Client) -> None:
    v = varray(storage, (8, 8), (2, 2))
    reader = _reader(deker_dask.to_dask(v))
    assert reader.shape == (8, 8) and reader.ndim == 2
    np.testing.assert_array_equal(reader[..., 3], np.full(8, np.nan, dtype=np.float32))
    mask = np.arange(64).reshape(8, 8) % 3 == 0
    np.testing.assert_array_equal(reader[mask], np.full(int(mask.sum()), np.nan, dtype=np.float32))
    for bad, says in [
        ((1, 2, 3), "too many indices"),
        ((8,), "out of bounds"),
        ((1.5,), "ints, slices and integer arrays"),
        (("a",), "ints, slices and integer arrays"),
        ((None,), "ints, slices and integer arrays"),
        ((np.array([1.0, 2.0]), ...), "ints, slices and integer arrays"),
        (([0, 8],), "out of bounds"),
        (([True, False],), "boolean index of shape"),  # a mask must match its dimension
        ((..., 1, ...), "single ellipsis"),
    ]:
        with pytest.raises(IndexError, match=says):
            reader[bad]
    assert pickle.loads(pickle.dumps(reader)).shape == (8, 8)
