"""Tests of deker_dask.graph_tasks: the functions Dask graphs call, called as plain functions.

The graphs that use them are tested in ``test_lazy.py`` and ``test_writes.py``; here each task
runs by itself on a real storage, against numpy as the oracle, and once in a fresh process
from its pickled form (what a worker gets).
"""

from __future__ import annotations

import multiprocessing
import pickle
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import dask.base
import numpy as np
import pytest
from dask_helpers import varray

from deker import ArraySchema, Client, DimensionSchema
from deker.errors import DekerClientError, DekerInstanceNotExistsError
from deker_dask import graph_tasks
from deker_dask.graph_tasks import (
    TilePlan,
    fill_chunk,
    finish,
    read_chunk,
    read_region,
    store_array_block,
    store_tile,
    store_tiles,
)
from deker_dask.handles import resolve

WHOLE_TILE = (slice(0, 4), slice(0, 5))


def make_array(client: Client, shape: tuple[int, ...] = (6, 7)) -> Any:
    dims = [DimensionSchema(name=f"d{i}", size=s) for i, s in enumerate(shape)]
    return client.create_collection("a", ArraySchema(dtype=np.float64, dimensions=dims)).create()


def test_a_session_follows_its_client_and_a_pickled_copy_keeps_the_state_it_had(storage: Client) -> None:
    arr = make_array(storage)
    session = resolve(arr).session()
    session.check()
    assert not session.closed and repr(session) == "Session(open)"
    shipped_open = pickle.loads(pickle.dumps(session))
    tokens_open = dask.base.tokenize(session)
    storage.close()
    assert session.closed and repr(session) == "Session(closed)"
    with pytest.raises(DekerClientError, match="Client is closed"):
        session.check()
    shipped_open.check()  # a graph submitted while the client was open runs to its end
    with pytest.raises(DekerClientError, match="Client is closed"):
        pickle.loads(pickle.dumps(session)).check()
    assert dask.base.tokenize(session) != tokens_open  # a closed graph is not the cached open one


def test_every_task_refuses_to_run_for_a_closed_client(storage: Client) -> None:
    v = varray(storage, (8, 10), (2, 2))
    arr = make_array(storage)
    session = resolve(v).session()
    index, spec = v.tiles, arr.spec
    storage.close()
    block = np.zeros((4, 5))
    calls: list[Callable[[], object]] = [
        lambda: fill_chunk((2,), "<f8", 0.0, session),
        lambda: read_region(spec, (slice(0, 1), slice(0, 1)), session),
        lambda: read_chunk((2,), "<f8", 0.0, [], session),
        lambda: store_tile(index, {}, (0, 0), WHOLE_TILE, block, session),
        lambda: store_array_block(spec, (slice(0, 1), slice(0, 1)), [[1.0]], None, session),
        lambda: store_tiles(index, {}, [], [], session),
    ]
    for call in calls:
        with pytest.raises(DekerClientError, match="Client is closed"):
            call()


def test_fill_chunk_makes_a_new_array_of_fill_values() -> None:
    first = fill_chunk((2, 3), "<i4", -7)
    second = fill_chunk((2, 3), "<i4", -7)
    np.testing.assert_array_equal(first, np.full((2, 3), -7, np.int32))
    assert first.dtype == np.int32 and not np.shares_memory(first, second)
    assert np.isnan(fill_chunk((1,), "<f4", np.nan)).all()


def test_read_region_reads_a_piece_and_fill_once_the_file_is_gone(storage: Client) -> None:
    arr = make_array(storage)
    data = np.arange(42.0).reshape(6, 7)
    arr[:].update(data)
    spec = arr.spec
    bounds = (slice(1, 4), 2)
    np.testing.assert_array_equal(read_region(spec, bounds), data[1:4, 2])
    arr.delete()
    assert np.isnan(read_region(spec, bounds)).all()


def test_read_chunk_assembles_pieces_of_tiles_and_fills_the_rest(storage: Client) -> None:
    v = varray(storage, (8, 10), (2, 2))
    data = np.arange(80, dtype=np.float32).reshape(8, 10)
    v[0:4, 0:10].update(data[0:4])  # the tiles of grid row 0 exist, row 1 does not
    ids = v.tiles.ids()
    left, right = v.tiles.for_tile(ids[(0, 0)]), v.tiles.for_tile(ids[(0, 1)])
    # the chunk [2:6, 3:8] of the VArray: rows 2-3 from tiles (0, 0) and (0, 1), rows 4-5 absent
    parts = [
        (left, (slice(2, 4), slice(3, 5)), (slice(0, 2), slice(0, 2))),
        (right, (slice(2, 4), slice(0, 3)), (slice(0, 2), slice(2, 5))),
    ]
    expected = np.full((4, 5), np.nan, np.float32)
    expected[0:2] = data[2:4, 3:8]
    np.testing.assert_array_equal(read_chunk((4, 5), "<f4", np.nan, parts), expected)
    covering = [(left, (slice(0, 4), slice(0, 5)), (slice(0, 4), slice(0, 5)))]
    np.testing.assert_array_equal(read_chunk((4, 5), "<f4", np.nan, covering), data[0:4, 0:5])


def test_store_tile_creates_a_missing_tile_but_not_for_fill_values(storage: Client) -> None:
    v = varray(storage, (8, 10), (2, 2))
    index = v.tiles
    assert store_tile(index, {}, (1, 1), WHOLE_TILE, np.full((4, 5), np.nan)) == 0
    assert index.ids() == {}  # nothing to write: the tile reads as fill already
    block = np.arange(20.0).reshape(4, 5)
    assert store_tile(index, {}, (1, 1), WHOLE_TILE, block) == 20
    assert store_tile(index, {}, (1, 1), WHOLE_TILE, block) == 20  # a retry leaves the same
    assert list(index.ids()) == [(1, 1)]
    assert store_tile(index, {}, (1, 1), (slice(1, 2), 3), [7.0]) == 1
    expected = np.full((8, 10), np.nan, np.float32)
    expected[4:8, 5:10] = block
    expected[5, 8] = 7.0
    np.testing.assert_array_equal(v[:].read(), expected)
    assert not any(p.name.endswith(".varraylock") for p in index.paths.path.rglob("*"))


def test_store_tile_refuses_a_block_of_the_wrong_shape_and_a_deleted_varray(storage: Client) -> None:
    v = varray(storage, (8, 10), (2, 2))
    index = v.tiles
    with pytest.raises(ValueError, match=r"shape \(4, 4\) was produced for a region of shape \(4, 5\)"):
        store_tile(index, {}, (0, 0), WHOLE_TILE, np.zeros((4, 4)))
    v.delete()
    with pytest.raises(DekerInstanceNotExistsError, match=f"VArray {v.id} does not exist"):
        store_tile(index, {}, (0, 0), WHOLE_TILE, np.zeros((4, 5)))
    assert index.ids() == {}


def test_store_array_block_writes_and_names_a_deleted_array(storage: Client) -> None:
    arr = make_array(storage)
    spec = arr.spec
    assert store_array_block(spec, (slice(0, 2), slice(1, 3)), [[1, 2], [3, 4]]) == 4
    assert store_array_block(spec, (5, slice(0, 7)), np.ones(7), previous=4) == 7
    expected = np.full((6, 7), np.nan)
    expected[0:2, 1:3] = [[1, 2], [3, 4]]
    expected[5] = 1
    np.testing.assert_array_equal(arr[:].read(), expected)
    with pytest.raises(ValueError, match="shape"):
        store_array_block(spec, (slice(0, 2), slice(0, 2)), np.ones(3))
    arr.delete()
    with pytest.raises(DekerInstanceNotExistsError, match=f"Array {arr.id} was deleted"):
        store_array_block(spec, (0, 0), 1.0)


def test_store_tiles_assembles_each_tile_from_the_chunks_it_overlaps(storage: Client) -> None:
    v = varray(storage, (8, 10), (2, 2))
    source = np.arange(80, dtype=np.float32).reshape(8, 10)
    chunks = [source[0:8, 0:6], source[0:8, 6:10]]  # unaligned with the tiles' columns 0-4, 5-9
    plans = [
        TilePlan((0, 0), WHOLE_TILE, ((0, (slice(0, 4), slice(0, 5)), (slice(0, 4), slice(0, 5))),)),
        TilePlan(
            (1, 1),
            WHOLE_TILE,
            (
                (0, (slice(4, 8), slice(5, 6)), (slice(0, 4), slice(0, 1))),
                (1, (slice(4, 8), slice(0, 4)), (slice(0, 4), slice(1, 5))),
            ),
        ),
    ]
    assert store_tiles(v.tiles, {}, plans, chunks) == 40
    expected = np.full((8, 10), np.nan, np.float32)
    expected[0:4, 0:5] = source[0:4, 0:5]
    expected[4:8, 5:10] = source[4:8, 5:10]
    np.testing.assert_array_equal(v[:].read(), expected)
    assert finish([20, 20, 0]) == 40 and isinstance(finish([np.int64(2)]), int)


def test_tasks_store_a_0_d_block_into_a_single_cell(storage: Client) -> None:
    v = varray(storage, (8, 10), (2, 2))
    arr = make_array(storage)
    assert store_tile(v.tiles, {}, (0, 1), (3, 2), np.float64(4.5)) == 1
    plan = TilePlan((1, 0), (0, 4), ((0, (), ()),))
    assert store_tiles(v.tiles, {}, [plan], [np.asarray(5.5)]) == 1
    assert store_array_block(arr.spec, (2, 3), 6.5) == 1
    assert v[3, 7].read() == 4.5 and v[4, 4].read() == 5.5 and arr[2, 3].read() == 6.5
    assert np.count_nonzero(~np.isnan(v[:].read())) == 2


def _run_pickled(payload: bytes) -> Any:
    func, args = pickle.loads(payload)
    return func(*args)


def test_tasks_run_from_their_pickled_form_in_a_fresh_process(storage: Client) -> None:
    v = varray(storage, (8, 10), (2, 2))
    index = v.tiles.on_worker()
    session = resolve(v).session()
    block = np.arange(20.0).reshape(4, 5)
    jobs: list[tuple[Callable[..., Any], tuple[Any, ...]]] = [
        (store_tile, (index, {}, (0, 1), WHOLE_TILE, block, session)),
        (fill_chunk, ((2,), "<f4", 1.5, session)),
    ]
    payloads = [pickle.dumps(job) for job in jobs]
    assert all(func.__module__ == graph_tasks.__name__ for func, _ in jobs)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        written, filled = list(pool.map(_run_pickled, payloads))
    assert written == 20
    np.testing.assert_array_equal(filled, [1.5, 1.5])
    np.testing.assert_array_equal(v[0:4, 5:10].read(), block)
