"""Scenario tests with real processes, through the public API: the lock rules of Arrays and VArrays.

Each child process opens its own :class:`deker.Client` on the same storage (spawned, so nothing
is inherited) and reports what happened through a queue.  The parent holds locks through
the storage layer where a scenario needs a writer that is "in the middle" of an operation for a
known time, and hands over with files/events, never with sleeps as synchronisation.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from storage_helpers.prim import busy_log

from deker import ArraySchema, AttributeSchema, Client, DimensionSchema, VArraySchema
from deker.errors import DekerLockError
from deker.storage import hdf5
from deker.storage.locks import LockSettings, VArrayWriteLock, array_write_lock, new_token

pytestmark = pytest.mark.timeout(120)

CTX = mp.get_context("spawn")
FAST = LockSettings(timeout=10, interval=0.02)


# --------------------------------------------------------------------------- child processes


def _client(root: str, timeout: float) -> Client:
    return Client(f"file://{root}", write_lock_timeout=timeout, write_lock_check_interval=0.02)


def _report(queue: Any, fn: Any) -> None:
    try:
        queue.put(("ok", fn()))
    except BaseException as exc:
        queue.put(("err", type(exc).__name__, str(exc)))


def child_array_op(root: str, op: str, value: float, timeout: float, handshake: str, queue: Any) -> None:
    """Run one operation on the array ``a`` of collection ``arr`` and report the outcome.

    The child fetches the array, creates ``<handshake>.ready``, waits for ``<handshake>.go``
    (the parent holds its lock by then), creates ``<handshake>.started`` and runs ``op``.
    """
    with _client(root, timeout) as client:
        arr = client.get_collection("arr").filter({"name": "a"}).last()  # type: ignore[union-attr]
        Path(handshake + ".ready").touch()
        _wait_file(Path(handshake + ".go"))
        Path(handshake + ".started").touch()

        def run() -> Any:
            if op == "read":
                return float(arr[0, 0].read())
            if op == "update":
                arr[:].update(value)
                return None
            if op == "custom":
                arr.update_custom_attributes({"note": int(value)})
                return None
            raise AssertionError(op)

        _report(queue, run)


def child_create(root: str, go: Any, queue: Any) -> None:
    """Create the array named ``dup`` as soon as ``go`` is set."""
    with _client(root, 10) as client:
        coll = client.get_collection("arr")
        go.wait(30)
        _report(queue, lambda: coll.create({"name": "dup"}).id)  # type: ignore[union-attr]


def child_varray_update(
    root: str, key: tuple[slice, ...], value: float, timeout: float, started: str, queue: Any
) -> None:
    """Write ``value`` into ``key`` of the VArray ``v``."""
    with _client(root, timeout) as client:
        varr = client.get_collection("va").filter({"name": "v"}).last()  # type: ignore[union-attr]
        Path(started).touch()
        _report(queue, lambda: varr[key].update(value))


def child_varray_writer_loop(root: str, rounds: int, queue: Any) -> None:
    """Write the whole VArray with the constant ``k`` for k = 1..rounds."""
    with _client(root, 30) as client:
        varr = client.get_collection("va").filter({"name": "v"}).last()  # type: ignore[union-attr]

        def run() -> None:
            for k in range(1, rounds + 1):
                varr[:].update(float(k))

        _report(queue, run)


def child_varray_same_tile(root: str, value: float, go: Any, queue: Any) -> None:
    """Write one cell of a missing tile as soon as ``go`` is set."""
    with _client(root, 10) as client:
        varr = client.get_collection("va").filter({"name": "v"}).last()  # type: ignore[union-attr]
        go.wait(30)
        _report(queue, lambda: varr[0:1, 0:2].update(value))  # inside tile (0, 0) only


def child_varray_big_update(root: str, queue: Any) -> None:
    """One update of the whole VArray that takes a while (many tiles)."""
    with _client(root, 30) as client:
        varr = client.get_collection("va").filter({"name": "v"}).last()  # type: ignore[union-attr]
        _report(queue, lambda: [varr[:].update(float(k)) for k in range(1000)])


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[tuple[Path, Client]]:
    root = tmp_path / "s"
    with Client(f"file://{root}", write_lock_timeout=10, write_lock_check_interval=0.02) as client:
        schema = ArraySchema(
            dtype=np.float64,
            dimensions=[DimensionSchema(name="y", size=4), DimensionSchema(name="x", size=4)],
            attributes=[
                AttributeSchema(name="name", dtype=str, primary=True),
                AttributeSchema(name="note", dtype=int, primary=False),
            ],
        )
        client.create_collection("arr", schema).create({"name": "a"})
        vschema = VArraySchema(
            dtype=np.float64,
            dimensions=[DimensionSchema(name="y", size=8), DimensionSchema(name="x", size=8)],
            vgrid=(4, 4),
            attributes=[AttributeSchema(name="name", dtype=str, primary=True)],
        )
        client.create_collection("va", vschema).create({"name": "v"})
        yield root, client


def _start(target: Any, *args: Any) -> tuple[Any, Any]:
    queue = CTX.Queue()
    proc = CTX.Process(target=target, args=(*args, queue))
    proc.start()
    return proc, queue


def _wait_file(path: Path, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while not path.exists():
        assert time.monotonic() < deadline, f"child never reached {path.name}"
        time.sleep(0.01)


def _result(proc: Any, queue: Any) -> tuple[Any, ...]:
    outcome = queue.get(timeout=60)
    proc.join(30)
    return tuple(outcome)


def _markers(root: Path) -> list[Path]:
    suffixes = (".varraylock", ".arrayreadlock", ".arrlock")
    return [p for p in root.rglob("*") if p.name.endswith(suffixes)]


# --------------------------------------------------------------------------- Arrays


@pytest.mark.parametrize("op", ["read", "update", "custom"])
def test_array_operation_waits_for_a_writer(storage: tuple[Path, Client], tmp_path: Path, op: str) -> None:
    root, client = storage
    arr = client.get_collection("arr").filter({"name": "a"}).last()  # type: ignore[union-attr]
    hs = tmp_path / "hs"
    proc, queue = _start(child_array_op, str(root), op, 7.0, 10.0, str(hs))
    _wait_file(tmp_path / "hs.ready")
    with array_write_lock(arr._main_dir, arr.id, FAST):
        (tmp_path / "hs.go").touch()
        _wait_file(tmp_path / "hs.started")
        time.sleep(0.3)  # the child is now blocked (it would finish in a few ms otherwise)
        assert queue.empty(), "the child did not wait for the writer"
        # the parent's own write, under its lock (through the storage layer: locks don't nest)
        full = (slice(0, 4), slice(0, 4))
        hdf5.write_region(arr._main_file, full, np.full((4, 4), 3.0), (4, 4), np.nan, arr.spec.dataset_kwargs)
    outcome = _result(proc, queue)
    assert outcome[0] == "ok", outcome
    if op == "read":
        assert outcome[1] == 3.0  # saw the finished write, never a state in between
    elif op == "update":
        np.testing.assert_array_equal(arr[:].read(), np.full((4, 4), 7.0))
    else:
        assert arr.read_meta()["custom_attributes"]["note"] == 7


@pytest.mark.parametrize("op", ["read", "update", "custom"])
def test_array_operation_times_out_and_leaves_nothing(
    storage: tuple[Path, Client], tmp_path: Path, op: str
) -> None:
    root, client = storage
    arr = client.get_collection("arr").filter({"name": "a"}).last()  # type: ignore[union-attr]
    arr[:].update(1.0)
    proc, queue = _start(child_array_op, str(root), op, 9.0, 0.5, str(tmp_path / "hs"))
    _wait_file(tmp_path / "hs.ready")
    with array_write_lock(arr._main_dir, arr.id, FAST):
        (tmp_path / "hs.go").touch()
        outcome = _result(proc, queue)
    assert outcome[:2] == ("err", DekerLockError.__name__), outcome
    assert not _markers(root)
    np.testing.assert_array_equal(arr[:].read(), np.ones((4, 4)))
    # the lock is free again at once
    (tmp_path / "again.go").touch()
    proc, queue = _start(child_array_op, str(root), "update", 2.0, 0.5, str(tmp_path / "again"))
    assert _result(proc, queue)[0] == "ok"
    np.testing.assert_array_equal(arr[:].read(), np.full((4, 4), 2.0))


def test_duplicate_primary_key_race_has_one_winner(storage: tuple[Path, Client]) -> None:
    root, client = storage
    go = CTX.Event()
    children = [_start(child_create, str(root), go) for _ in range(4)]
    time.sleep(0.5)  # let them all reach the start line (correctness does not depend on it)
    go.set()
    outcomes = [_result(p, q) for p, q in children]
    oks = [o for o in outcomes if o[0] == "ok"]
    assert len(oks) == 1, outcomes
    assert all(o[:2] == ("err", "DekerValidationError") for o in outcomes if o[0] != "ok"), outcomes
    coll = client.get_collection("arr")
    assert coll is not None
    assert [a.id for a in coll.arrays if a.primary_attributes["name"] == "dup"] == [oks[0][1]]


# --------------------------------------------------------------------------- VArrays


def _tile_lock(varr: Any, positions: list[tuple[int, int]]) -> VArrayWriteLock:
    ids = varr.tiles.ids()
    lock = VArrayWriteLock(FAST, new_token())
    lock.acquire([(varr.tiles.for_tile(ids[p]).main_dir, ids[p]) for p in sorted(positions)])
    return lock


def test_varray_intersecting_update_waits_then_succeeds(storage: tuple[Path, Client], tmp_path: Path) -> None:
    root, client = storage
    varr = client.get_collection("va").filter({"name": "v"}).last()  # type: ignore[union-attr]
    varr[:].update(1.0)
    started = tmp_path / "started"
    lock = _tile_lock(varr, [(0, 0)])
    try:
        proc, queue = _start(
            child_varray_update, str(root), (slice(0, 6), slice(0, 6)), 5.0, 10.0, str(started)
        )
        _wait_file(started)
        time.sleep(0.3)
        assert queue.empty(), "the intersecting update did not wait"
    finally:
        lock.release()
    assert _result(proc, queue)[0] == "ok"
    expected = np.ones((8, 8))
    expected[:6, :6] = 5.0
    np.testing.assert_array_equal(varr[:].read(), expected)
    assert not _markers(root)


def test_varray_intersecting_update_times_out_cleanly(storage: tuple[Path, Client], tmp_path: Path) -> None:
    root, client = storage
    varr = client.get_collection("va").filter({"name": "v"}).last()  # type: ignore[union-attr]
    varr[:].update(1.0)
    lock = _tile_lock(varr, [(1, 1)])
    try:
        key = (slice(0, 8), slice(0, 8))
        proc, queue = _start(child_varray_update, str(root), key, 5.0, 0.5, str(tmp_path / "s"))
        outcome = _result(proc, queue)
        assert outcome[:2] == ("err", "DekerLockError"), outcome
        # the child released the tiles it had taken before timing out: they are free now
        other = VArrayWriteLock(LockSettings(timeout=0, interval=0.01), new_token())
        ids = varr.tiles.ids()
        other.acquire([(varr.tiles.for_tile(ids[(0, 0)]).main_dir, ids[(0, 0)])])
        other.release()
    finally:
        lock.release()
    assert not _markers(root)
    np.testing.assert_array_equal(varr[:].read(), np.ones((8, 8)))


def test_varray_disjoint_updates_run_in_parallel(storage: tuple[Path, Client], tmp_path: Path) -> None:
    root, client = storage
    varr = client.get_collection("va").filter({"name": "v"}).last()  # type: ignore[union-attr]
    varr[:].update(1.0)
    lock = _tile_lock(varr, [(0, 0)])
    try:
        key = (slice(4, 8), slice(4, 8))
        proc, queue = _start(child_varray_update, str(root), key, 6.0, 10.0, str(tmp_path / "s"))
        assert _result(proc, queue)[0] == "ok"  # finished while tile (0, 0) stays locked
    finally:
        lock.release()
    assert float(varr[5, 5].read()) == 6.0


def test_reads_during_writes_never_see_half_a_tile(storage: tuple[Path, Client]) -> None:
    root, client = storage
    varr = client.get_collection("va").filter({"name": "v"}).last()  # type: ignore[union-attr]
    varr[:].update(0.0)
    proc, queue = _start(child_varray_writer_loop, str(root), 60)
    reads = 0
    while proc.is_alive() or reads == 0:
        data = varr[:].read()
        reads += 1
        th, tw = varr.arrays_shape
        for ty in range(varr.vgrid[0]):
            for tx in range(varr.vgrid[1]):
                tile = data[ty * th : ty * th + th, tx * tw : tx * tw + tw]
                assert np.unique(tile).size == 1, f"tile {(ty, tx)} mixed two writes: {np.unique(tile)}"
    assert _result(proc, queue)[0] == "ok"
    assert reads > 1
    np.testing.assert_array_equal(varr[:].read(), np.full((8, 8), 60.0))


def test_two_processes_create_the_same_tile(storage: tuple[Path, Client]) -> None:
    root, client = storage
    varr = client.get_collection("va").filter({"name": "v"}).last()  # type: ignore[union-attr]
    go = CTX.Event()
    children = [_start(child_varray_same_tile, str(root), float(v), go) for v in (1, 2, 3)]
    time.sleep(0.5)
    go.set()
    outcomes = [_result(p, q) for p, q in children]
    assert all(o[0] == "ok" for o in outcomes), outcomes
    tiles = [a for a in client.get_collection("va").arrays]  # type: ignore[union-attr]
    assert len(tiles) == 1  # one tile file for position (0, 0), no duplicates
    block = varr[0:1, 0:2].read()
    assert np.unique(block).size == 1 and float(block[0, 0]) in (1.0, 2.0, 3.0)


def test_killed_writer_does_not_block_the_next(storage: tuple[Path, Client], monkeypatch: Any) -> None:
    root, client = storage
    varr = client.get_collection("va").filter({"name": "v"}).last()  # type: ignore[union-attr]
    varr[:].update(0.0)
    proc, _queue = _start(child_varray_big_update, str(root))
    deadline = time.monotonic() + 60
    while not any(p.name.endswith(".varraylock") for p in root.rglob("*")):
        assert time.monotonic() < deadline and proc.is_alive(), "the writer never took a tile lock"
        time.sleep(0.005)
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    # the next writer proceeds without clear_locks, and without waiting for anything
    log = busy_log(monkeypatch)
    varr[:].update(42.0)
    assert log.sleeps == 0, log.answers
    np.testing.assert_array_equal(varr[:].read(), np.full((8, 8), 42.0))
    assert not _markers(root)
