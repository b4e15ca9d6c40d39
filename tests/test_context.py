"""deker/context.py: ``ContextSettings`` and ``StorageContext``.

Covered: the settings dataclass (frozen, defaults, equality, pickling), what a context exposes
(``root``, ``locks``, ``memory_limit``, ``runner``), the lazily made private runner (one, even
under concurrent first use), open/closed behaviour (``check_open``, ``runner`` and handles of a
closed client raise ``DekerClientError("Client is closed")``, ``close`` is idempotent, shuts down
an owned pool and leaves a user's executor alone), and ``__reduce__``: a context travels as its
settings and is rebuilt detached (open, with its own runner) in this process and in a real
forkserver process, where an ``Array`` sent along reads its data.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import pickle
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deker import ArraySchema, Client, DimensionSchema
from deker import context as context_module
from deker.context import ContextSettings, StorageContext
from deker.errors import DekerClientError
from deker.executors import TaskRunner
from deker.storage.locks import LockSettings

SETTINGS = ContextSettings(
    root="/data/storage/collections", locks=LockSettings(7.0, 0.5), memory_limit=1 << 30
)


def test_public_names() -> None:
    assert context_module.__all__ == ["ContextSettings", "StorageContext"]


def test_settings_are_a_frozen_picklable_value() -> None:
    assert SETTINGS.skip_collection_create_memory_check is False
    assert [f.name for f in dataclasses.fields(ContextSettings)] == [
        "root",
        "locks",
        "memory_limit",
        "skip_collection_create_memory_check",
        "read_only_reason",
    ]
    with pytest.raises(dataclasses.FrozenInstanceError):
        SETTINGS.root = "/elsewhere"  # type: ignore[misc]
    same = ContextSettings("/data/storage/collections", LockSettings(7.0, 0.5), 1 << 30, False)
    assert same == SETTINGS and hash(same) == hash(SETTINGS)
    assert dataclasses.replace(SETTINGS, memory_limit=1) != SETTINGS
    back = pickle.loads(pickle.dumps(SETTINGS))
    assert back == SETTINGS and type(back.locks) is LockSettings


def test_a_read_only_context_refuses_writes_and_makes_no_identity(tmp_path: Path) -> None:
    """Issue 17: the read-only choice is in the settings (it travels with them to tasks)."""
    from deker.errors import DekerReadOnlyError

    settings = ContextSettings(
        str(tmp_path), LockSettings(read_only=True), 1 << 30, read_only_reason="a reason"
    )
    ctx = StorageContext(pickle.loads(pickle.dumps(settings)))
    assert ctx.read_only and ctx.settings.locks.read_only
    with pytest.raises(DekerReadOnlyError, match=r"Cannot write x: .* is read-only \(a reason\)"):
        ctx.check_writable("write x")
    assert ctx.ensure_storage_id() is None and list(tmp_path.iterdir()) == []
    StorageContext(SETTINGS).check_writable("write x")  # writable: nothing raised


def test_context_exposes_its_settings() -> None:
    ctx = StorageContext(SETTINGS)
    assert ctx.settings is SETTINGS
    assert ctx.root == Path("/data/storage/collections") and isinstance(ctx.root, Path)
    assert ctx.locks == LockSettings(timeout=7.0, interval=0.5)
    assert ctx.memory_limit == 1 << 30
    assert ctx.is_closed is False
    ctx.check_open()  # no error


def test_given_runner_is_used_and_a_missing_one_is_made_once() -> None:
    given = TaskRunner.create(None, 2)
    assert StorageContext(SETTINGS, given).runner is given
    ctx = StorageContext(SETTINGS)
    seen: list[TaskRunner] = []
    barrier = threading.Barrier(8)

    def first_use() -> None:
        barrier.wait()
        seen.append(ctx.runner)

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 8 and all(r is seen[0] for r in seen)
    assert seen[0].kind == "threads" and seen[0].owns_executor
    assert ctx.runner.run_all(pow, [(2, 5), (3, 2)]) == [32, 9]
    ctx.close()


def test_closed_context_refuses_work() -> None:
    ctx = StorageContext(SETTINGS)
    ctx.close()
    assert ctx.is_closed
    with pytest.raises(DekerClientError, match=r"^Client is closed$"):
        ctx.check_open()
    with pytest.raises(DekerClientError, match=r"^Client is closed$"):
        _ = ctx.runner
    ctx.close()  # idempotent
    assert ctx.is_closed
    # plain settings stay readable
    assert ctx.root == Path(SETTINGS.root) and ctx.memory_limit == SETTINGS.memory_limit


def test_close_shuts_down_an_owned_pool_only() -> None:
    owned = TaskRunner.create(None, 2)
    ctx = StorageContext(SETTINGS, owned)
    assert ctx.runner.run_all(abs, [(-1,), (-2,)]) == [1, 2]  # the pool exists now
    pool = owned._get_executor()
    ctx.close()
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(abs, -3)
    with ThreadPoolExecutor(1) as users_pool:
        ctx = StorageContext(SETTINGS, TaskRunner.create(users_pool))
        assert ctx.runner.run_all(abs, [(-4,), (-5,)]) == [4, 5]
        ctx.close()
        assert users_pool.submit(abs, -6).result() == 6  # never shut down by deker


def test_close_waits_for_running_tasks() -> None:
    """``close`` shuts the owned pool down with ``wait=True``: a running task finishes first."""
    ctx = StorageContext(SETTINGS, TaskRunner.create(None, 2))
    started, finished = threading.Event(), threading.Event()

    def slow() -> None:
        started.set()
        threading.Event().wait(0.2)
        finished.set()

    future = ctx.runner._get_executor().submit(slow)
    assert started.wait(5)
    ctx.close()
    assert finished.is_set() and future.done()


def test_pickled_context_is_rebuilt_detached() -> None:
    given = TaskRunner.create(None, 1)
    ctx = StorageContext(SETTINGS, given)
    back = pickle.loads(pickle.dumps(ctx))
    assert type(back) is StorageContext and back is not ctx
    assert back.settings == SETTINGS
    assert back.is_closed is False
    assert back._runner is None  # made on first use, in the receiving process
    assert back.runner is not given and back.runner.kind == "threads"
    assert ctx.__reduce__() == (StorageContext, (SETTINGS, None))
    back.close()
    ctx.close()
    assert pickle.loads(pickle.dumps(ctx)).is_closed is False  # only the settings travel


def test_handles_share_the_clients_context(tmp_path: Path) -> None:
    client = Client(tmp_path.as_uri(), write_lock_timeout=3, memory_limit="64M")
    schema = ArraySchema(dtype=np.int16, dimensions=[DimensionSchema("x", 4)])
    coll = client.create_collection("c", schema)
    array = coll.create()
    ctx = array._ctx
    assert ctx is coll._ctx is client.storage_context
    assert ctx.root == tmp_path / "collections"
    assert ctx.locks.timeout == 3.0 and ctx.memory_limit == 64 * 1024 * 1024
    array[:].update(np.arange(4, dtype=np.int16))
    client.close()
    assert ctx.is_closed
    with pytest.raises(DekerClientError, match=r"^Client is closed$"):
        array[:].read()
    with pytest.raises(DekerClientError, match=r"^Client is closed$"):
        coll.create()
    with client:  # re-entering makes a new context; old handles stay closed
        assert client.storage_context is not ctx and not client.storage_context.is_closed
        with pytest.raises(DekerClientError, match=r"^Client is closed$"):
            array[:].read()
        reopened = client.get_collection("c")
        assert reopened is not None
        assert [a[:].read().tolist() for a in reopened] == [[0, 1, 2, 3]]


def _read_in_child(array: Any) -> tuple[Any, ...]:
    """Run in a forkserver worker: the Array arrives with a detached context."""
    ctx = array._ctx
    data = array[:].read()
    return (str(ctx.root), ctx.is_closed, ctx.locks, ctx.memory_limit, data.tolist(), ctx.runner.kind)


def test_an_array_travels_to_another_process(tmp_path: Path) -> None:
    with Client(tmp_path.as_uri(), write_lock_timeout=4) as client:
        schema = ArraySchema(dtype=np.float64, dimensions=[DimensionSchema("x", 3)])
        array = client.create_collection("c", schema).create()
        array[:].update(np.array([1.5, 2.5, 3.5]))
        settings = array._ctx.settings
        with ProcessPoolExecutor(1, mp_context=mp.get_context("forkserver")) as pool:
            root, closed, locks, limit, data, kind = pool.submit(_read_in_child, array).result(timeout=60)
    assert root == settings.root == str(tmp_path / "collections")
    assert closed is False
    assert locks == LockSettings(timeout=4.0, interval=1.0)
    assert limit == settings.memory_limit
    assert data == [1.5, 2.5, 3.5]
    assert kind == "threads"
