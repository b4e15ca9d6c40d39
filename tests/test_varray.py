"""VArrays end to end, under four executors: the client's own thread pool, a user
``ProcessPoolExecutor`` (every task must pickle), a user ``ThreadPoolExecutor(1)`` and a Dask
``distributed.Client`` of the session's LocalCluster (tasks run on its worker processes).

numpy is the oracle: random shapes, vgrids and sequences of update / clear / read give the
same content as the same operations on a numpy array.
"""

from __future__ import annotations

import multiprocessing
import tracemalloc
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deker import (
    AttributeSchema,
    Client,
    DimensionSchema,
    HDF5CompressionOpts,
    HDF5Options,
    TimeDimensionSchema,
    VArraySchema,
    executors,
)
from deker.errors import DekerInstanceNotExistsError, DekerVSubsetError


@pytest.fixture(scope="module", params=["own-threads", "processes", "one-thread", "dask-cluster"])
def executor(request: pytest.FixtureRequest) -> Iterator[Executor | None]:
    if request.param == "own-threads":
        yield None
    elif request.param == "dask-cluster":  # a distributed.Client of the session's LocalCluster
        yield request.getfixturevalue("dask_cluster_client")
    elif request.param == "processes":
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
            yield pool
    else:
        with ThreadPoolExecutor(1) as pool:
            yield pool


@pytest.fixture()
def client(tmp_path: Path, executor: Executor | None) -> Iterator[Client]:
    with Client(f"file://{tmp_path}", executor=executor, write_lock_timeout=10) as c:
        yield c


def vcoll(
    client: Client,
    shape: tuple[int, ...],
    vgrid: tuple[int, ...],
    dtype: type = np.float32,
    options: HDF5Options | None = None,
    name: str = "v",
):
    dims = [DimensionSchema(name=f"d{i}", size=s) for i, s in enumerate(shape)]
    return client.create_collection(name, VArraySchema(dtype=dtype, dimensions=dims, vgrid=vgrid), options)


def tile_count(coll) -> int:
    return len(list(coll.arrays))


def test_write_read_across_tiles(client: Client) -> None:
    coll = vcoll(client, (12, 16), (3, 4))
    v = coll.create()
    oracle = np.full((12, 16), np.nan, dtype=np.float32)
    data = np.arange(7 * 9, dtype=np.float32).reshape(7, 9)
    v[2:9, 3:12].update(data)
    oracle[2:9, 3:12] = data
    np.testing.assert_array_equal(v[:].read(), oracle)
    np.testing.assert_array_equal(v[5].read(), oracle[5])
    np.testing.assert_array_equal(v[..., 4].read(), oracle[..., 4])
    assert v[3, 4].read() == oracle[3, 4]
    assert tile_count(coll) == 9  # only touched tiles exist


def test_a_read_holds_its_answer_here_once(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tiles read in other processes (a process pool, Dask workers) go into the answer as they
    # arrive: this process never holds every tile beside the answer (before: twice the answer).
    # 64 MiB in 64 tiles; results straight from the Dask workers come in requests of about
    # 2 MiB; a process pool gets two tasks per process at a time.  The margin covers the tiles
    # in flight (a pickled one is here about three times while it arrives from a pool process)
    # and a 1 MiB read scratch per thread of the client.
    monkeypatch.setattr(executors, "GATHER_BYTES", 2 << 20, raising=False)
    coll = vcoll(client, (4096, 4096), (8, 8))
    v = coll.create()
    v[:].update(np.arange(4096 * 4096, dtype=np.float32).reshape(4096, 4096))
    v[:256, :256].read()  # warm: the first read in a process allocates what it keeps
    tracemalloc.start()
    try:
        got = v[:].read()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(got, np.arange(4096 * 4096, dtype=np.float32).reshape(4096, 4096))
    assert peak < 1.75 * got.nbytes, f"{peak / 2**20:.1f} MiB for an answer of {got.nbytes >> 20} MiB"


def test_absent_tiles_are_not_created_by_reads(client: Client) -> None:
    coll = vcoll(client, (8, 8), (2, 2))
    v = coll.create()
    assert np.isnan(v[:].read()).all()
    assert tile_count(coll) == 0


def test_no_phantom_tiles_and_clipping(client: Client) -> None:
    coll = vcoll(client, (4, 4), (2, 2), dtype=np.int16)
    v = coll.create()
    v[0:100, :].update(np.int16(3))  # clipped like numpy: a scalar broadcast
    assert v[0:100].read().shape == (4, 4)
    assert tile_count(coll) == 4
    assert sorted(t.primary_attributes["v_position"] for t in coll.arrays) == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_clear_removes_full_tiles(client: Client) -> None:
    coll = vcoll(client, (12, 16), (3, 4), dtype=np.int16)
    v = coll.create()
    data = (np.arange(12 * 16) % 1000).astype(np.int16).reshape(12, 16)
    v[:].update(data)
    v[0:4, 0:8].clear()
    v[5:6, 10:14].clear()
    data[0:4, 0:8] = v.fill_value
    data[5:6, 10:14] = v.fill_value
    np.testing.assert_array_equal(v[:].read(), data)
    assert tile_count(coll) == 10
    assert not list((coll.path / "array_symlinks" / v.id).glob("0-0"))


def test_compression_options_apply_to_tiles(client: Client) -> None:
    import hdf5plugin

    coll = vcoll(
        client,
        (8, 6),
        (2, 3),
        dtype=np.complex128,
        options=HDF5Options(chunks=True, compression_opts=HDF5CompressionOpts(**hdf5plugin.Zstd(3))),
    )
    v = coll.create()
    data = (np.arange(48) + 1j).reshape(8, 6)
    v[:].update(data)
    np.testing.assert_array_equal(v[:].read(), data)


def test_partial_failure_is_grouped(client: Client) -> None:
    coll = vcoll(client, (4, 4), (2, 2))
    v = coll.create()
    v[:].update(np.zeros((4, 4), dtype=np.float32))
    tile = coll.arrays.filter({"vid": v.id, "v_position": (1, 1)}).last()
    assert tile is not None
    tile._main_file.write_bytes(b"garbage, not HDF5")
    with pytest.raises(DekerVSubsetError) as info:
        v[:].update(np.ones((4, 4), dtype=np.float32))
    assert info.value.tiles == ((1, 1),)
    assert len(info.value.exceptions) == 1
    np.testing.assert_array_equal(v[0:2, 0:2].read(), np.ones((2, 2), dtype=np.float32))
    with pytest.raises(DekerVSubsetError):
        v[2:, 2:].read()
    assert not [p for p in coll.path.rglob("*lock") if p.suffix != ".lock"]


def test_deleted_varray(client: Client) -> None:
    coll = vcoll(client, (4,), (2,))
    v = coll.create()
    v.delete()
    with pytest.raises(DekerInstanceNotExistsError):
        v[:].read()
    with pytest.raises(DekerInstanceNotExistsError):
        v[:].update(np.float32(1))


@st.composite
def scenario(draw: st.DrawFn) -> tuple[tuple[int, ...], tuple[int, ...], list[tuple[str, tuple[slice, ...]]]]:
    ndim = draw(st.integers(1, 3))
    vgrid = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
    tile = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
    shape = tuple(g * t for g, t in zip(vgrid, tile, strict=True))
    ops = []
    for _ in range(draw(st.integers(1, 5))):
        op = draw(st.sampled_from(["update", "update", "clear", "read"]))
        key = []
        for size in shape:
            a = draw(st.integers(0, size - 1))
            b = draw(st.integers(a + 1, size))
            key.append(slice(a, b))
        ops.append((op, tuple(key)))
    return shape, vgrid, ops


@settings(max_examples=25, deadline=None)
@given(case=scenario())
def test_random_operations_match_numpy(
    tmp_path_factory: pytest.TempPathFactory,
    executor: Executor | None,
    case: tuple[tuple[int, ...], tuple[int, ...], list],
) -> None:
    shape, vgrid, ops = case
    root = tmp_path_factory.mktemp("h")
    with Client(f"file://{root}", executor=executor) as client:
        v = vcoll(client, shape, vgrid, dtype=np.int32).create()
        oracle = np.full(shape, v.fill_value, dtype=np.int32)
        for step, (op, key) in enumerate(ops):
            if op == "update":
                block = (np.arange(int(np.prod(oracle[key].shape))) + 100 * step).astype(np.int32)
                block = block.reshape(oracle[key].shape)
                v[key].update(block)
                oracle[key] = block
            elif op == "clear":
                v[key].clear()
                oracle[key] = v.fill_value
            else:
                np.testing.assert_array_equal(v[key].read(), oracle[key])
        np.testing.assert_array_equal(v[:].read(), oracle)


@pytest.mark.parametrize("start", ["$start", "2024-01-01T00:00:00+00:00"])
def test_tile_time_axes_start_at_the_tiles_first_instant(tmp_path: Path, start: str) -> None:
    """A fixed time start is shared by every tile in the tile schema: each tile moves it to its own."""
    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    step = timedelta(hours=-2)
    schema = VArraySchema(
        dtype=np.float32,
        dimensions=[TimeDimensionSchema("t", 6, start, step), DimensionSchema("x", 4)],
        attributes=[AttributeSchema("start", datetime, primary=True)],
        vgrid=(3, 2),
    )
    with Client(tmp_path.as_uri()) as client:
        varray = client.create_collection("c", schema).create({"start": t0})
        varray[...].update(np.arange(24, dtype=np.float32).reshape(6, 4))
        tiles = list(client.get_collection("c").arrays)
        assert len(tiles) == 6
        for tile in tiles:
            row, col = tile.primary_attributes["v_position"]
            assert tile[:].describe()["t"] == [t0 + step * (2 * row), t0 + step * (2 * row + 1)]
            when = t0 + step * (2 * row + 1)
            assert tile[when, 0].read() == varray[when, 2 * col].read()


def test_tile_time_axes_follow_the_varrays_start_attribute(tmp_path: Path) -> None:
    """The tiles' ``parent.<name>`` copies are not updated with the VArray's attribute."""
    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    schema = VArraySchema(
        dtype=np.float32,
        dimensions=[TimeDimensionSchema("t", 4, "$st", timedelta(hours=1)), DimensionSchema("x", 2)],
        attributes=[AttributeSchema("st", datetime, primary=False)],
        vgrid=(2, 1),
    )
    with Client(tmp_path.as_uri()) as client:
        collection = client.create_collection("c", schema)
        varray = collection.create(None, {"st": t0})
        varray[...].update(np.arange(8, dtype=np.float32).reshape(4, 2))
        later = t0 + timedelta(days=1)
        varray.update_custom_attributes({"st": later})
        tile = next(a for a in collection.arrays if a.primary_attributes["v_position"] == (1, 0))
        assert (
            tile[:].describe()["t"]
            == varray[2:4].describe()["t"]
            == [
                later + timedelta(hours=2),
                later + timedelta(hours=3),
            ]
        )
