"""A cluster of "hosts" on one machine: ``dask scheduler`` and ``dask worker`` processes started
here, the workers in their own mount and PID namespaces when the tests run as root (see
``hosts.py``): they see the storage at another path through ``DEKER_ROOT_MAP`` and have the
coordinator's PID.  The ``plain`` variant runs the same tests with ordinary worker processes.

- VArray scenarios run across such workers;
- a worker killed (SIGKILL) in the middle of an update, with tile data above the scatter
  threshold or with a scalar, does not fail the update: the lost tasks run again with their data
  (issue 15, case 4);
- a worker that does not see the storage (an empty tmpfs at the storage path, or a map to an empty
  directory) fails reads and writes with an error naming it and the path, never reads fill
  (issue 15, case 2).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterator
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pytest
from dask_helpers import BlockTask, lock_files, varray, wait_for
from hosts import HostCluster, kill_during, namespaces_unavailable

import deker_dask
from deker import Client
from deker.errors import DekerClientError, DekerStorageError, DekerVSubsetError
from deker.executors import DASK_RESUBMITS, SCATTER_THRESHOLD
from deker.pipeline import task_plan
from deker.storage.identity import STORAGE_ID_FILE

pytestmark = pytest.mark.timeout(300)

SHAPE = (8, 512, 512)  # 4 tiles of 2 MiB (float32): above the scatter threshold
VGRID = (4, 1, 1)


class Hosts:
    """The module's cluster and the storage its workers see."""

    def __init__(self, cluster: HostCluster, storage: Path, view: Path | None) -> None:
        self.cluster = cluster
        self.storage = storage  # the coordinator's path
        self.view = view  # where namespaced workers see it
        self.count = 0

    @property
    def client(self) -> Any:
        return self.cluster.client

    def add_worker(self) -> str:
        if self.cluster.namespaced:
            worker = self.cluster.add_worker(
                storage=self.storage, view=self.view, hide=self.storage.parent, pid=os.getpid()
            )
        else:
            worker = self.cluster.add_worker()
        return worker.name

    def replenish(self, n: int = 2) -> None:
        while len(self.cluster.workers) < n:
            self.add_worker()

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"


@pytest.fixture(scope="module", params=["plain", "namespaced"])
def hosts(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    namespaced = request.param == "namespaced"
    if namespaced and (why := namespaces_unavailable()):
        pytest.skip(why)
    base = tmp_path_factory.mktemp(f"hosts-{request.param}")
    storage = base / "coordinator" / "storage"
    storage.mkdir(parents=True)
    cluster = HostCluster(base, namespaced).start()
    item = Hosts(cluster, storage, base / "elsewhere" / "storage" if namespaced else None)
    try:
        item.replenish()
        yield item
    finally:
        cluster.close()


@pytest.fixture()
def hosts2(hosts: Hosts) -> Iterator[Hosts]:
    """The module's cluster with two healthy workers, before and after the test."""
    hosts.replenish()
    yield hosts
    hosts.replenish()


def test_workers_are_other_hosts(hosts2: Hosts) -> None:
    Client(hosts2.storage.as_uri()).close()  # the storage exists, with its identity file
    reports = deker_dask.check_workers(hosts2.client, hosts2.storage)
    assert len(reports) == 2
    pids = hosts2.client.run(os.getpid)
    if hosts2.cluster.namespaced:
        # Their own PID namespace, with PIDs colliding with the coordinator's; their own view.
        assert set(pids.values()) == {os.getpid()}
        assert {r["storage"] for r in reports.values()} == {str(hosts2.view / "collections")}
        assert set(hosts2.client.run(os.path.exists, str(hosts2.storage)).values()) == {False}
    with Client(hosts2.storage.as_uri()) as client:
        expected = (hosts2.storage / "collections" / STORAGE_ID_FILE).read_text().split()[-1]
        assert client.storage_context.storage_id == expected
    assert {r["storage_id"] for r in reports.values()} == {expected}


def test_varray_scenarios_across_hosts(hosts2: Hosts) -> None:
    rng = np.random.default_rng(1)
    with Client(hosts2.storage.as_uri(), executor=hosts2.client) as client:
        v = varray(client, (12, 10, 9), (3, 2, 3), dtype=np.float64, name=hosts2.name("scen"))
        oracle = np.full(v.shape, np.nan)
        np.testing.assert_array_equal(v[:].read(), oracle)  # no tile yet: fill, decided here
        data = rng.random(v.shape)
        v[:].update(data)
        oracle[:] = data
        v[2:7, 1:9, 4].update(np.float64(7.5))  # a scalar
        oracle[2:7, 1:9, 4] = 7.5
        v[5:11, :, 1:6].update(rng.random((1, 10, 5)))  # broadcast along the first axis
        piece = v[5:11, :, 1:6].read()
        assert np.all(piece == piece[:1])
        oracle[5:11, :, 1:6] = piece
        v[0:4, 0:5, :].clear()  # whole tiles go, a partial one is reset
        oracle[0:4, 0:5, :] = np.nan
        np.testing.assert_array_equal(v[:].read(), oracle)
        np.testing.assert_array_equal(v[3:9, 2:3].read(), oracle[3:9, 2:3])
        lazy = deker_dask.to_dask(v)
        np.testing.assert_array_equal(lazy.compute(scheduler=hosts2.client), oracle)
        stored = rng.random(v.shape)
        deker_dask.store(da.from_array(stored, chunks=(4, 5, 3)), v, scheduler=hosts2.client)
        np.testing.assert_array_equal(v[:].read(), stored)
        assert client.check_integrity(4, stop_on_error=False).ok
    assert not lock_files(hosts2.storage)


@pytest.mark.parametrize("kind", ["large", "scalar"])
def test_worker_killed_mid_update_runs_its_tasks_again(hosts2: Hosts, kind: str, tmp_path: Path) -> None:
    with Client(hosts2.storage.as_uri(), executor=hosts2.client, write_lock_timeout=120) as client:
        v = varray(client, SHAPE, VGRID, name=hosts2.name("kill"))
        tile_bytes = int(np.prod(v.schema.arrays_shape)) * 4
        assert tile_bytes > SCATTER_THRESHOLD
        if kind == "large":
            data: Any = np.random.default_rng(2).random(SHAPE, dtype=np.float32)
            expected = data
        else:
            data = np.float32(3.25)
            expected = np.full(SHAPE, data)
        error = kill_during(hosts2.cluster, lambda: v[:].update(data), tmp_path / "hook")
        assert error is None, f"the update failed although Dask could run its tasks again: {error!r}"
        np.testing.assert_array_equal(v[:].read(), expected)
    assert not lock_files(hosts2.storage)


@pytest.mark.parametrize("how", ["update", "store"])
def test_worker_killed_mid_batch_completes_every_cell(hosts2: Hosts, how: str, tmp_path: Path) -> None:
    # 128 small tiles: several tiles per task (run_batch for the coordinator pattern,
    # store_tiles for deker_dask.store); the worker running the first batch is killed there.
    shape, vgrid = (8, 64, 64), (8, 4, 4)
    with Client(hosts2.storage.as_uri(), executor=hosts2.client, write_lock_timeout=120) as client:
        v = varray(client, shape, vgrid, name=hosts2.name("batch"))
        data = np.random.default_rng(5).random(shape, dtype=np.float32)
        if how == "update":
            assert task_plan(v.storage_context.runner, v.tiles, 128)[0] > 1
            error = kill_during(hosts2.cluster, lambda: v[:].update(data), tmp_path / "hook", "run_batch")
        else:
            src = da.from_array(data, chunks=(3, 20, 25))  # unaligned to the (1, 16, 16) tiles

            def action() -> None:
                deker_dask.store(src, v, scheduler=hosts2.client)

            error = kill_during(hosts2.cluster, action, tmp_path / "hook", "deker-store-")
        assert error is None, f"the {how} failed although Dask could run its tasks again: {error!r}"
        np.testing.assert_array_equal(v[:].read(), data)
        assert client.check_integrity(4, stop_on_error=False).ok
    assert not lock_files(hosts2.storage)


def test_tasks_lost_again_and_again_fail_the_update(hosts2: Hosts, tmp_path: Path, caplog: Any) -> None:
    # One worker at a time: each kill loses all the scattered data.  After the first try and
    # DASK_RESUBMITS more, the update fails with the cancellations, having re-sent the data.
    caplog.set_level(logging.WARNING, logger="deker.executors")
    cluster = hosts2.cluster
    cluster.stop_worker(next(iter(cluster.workers)))
    hook = tmp_path / "hook"
    hook.mkdir()
    cluster.client.register_plugin(BlockTask(str(hook), "write_piece", DASK_RESUBMITS + 1), name="block-all")
    errors: list[BaseException] = []
    with Client(hosts2.storage.as_uri(), executor=cluster.client, write_lock_timeout=120) as client:
        v = varray(client, SHAPE, VGRID, name=hosts2.name("lost"))
        data = np.random.default_rng(3).random(SHAPE, dtype=np.float32)

        def update() -> None:
            try:
                v[:].update(data)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=update)
        thread.start()
        try:
            for n in range(DASK_RESUBMITS + 1):
                blocked = hook / f"blocked{n}"
                cluster.kill(wait_for(lambda b=blocked: b.exists() and b.read_text(), f"freeze {n}"))
                hosts2.add_worker()
        finally:
            thread.join(240)
            cluster.client.unregister_worker_plugin("block-all")
        assert not thread.is_alive()
    (error,) = errors
    assert isinstance(error, DekerVSubsetError)
    assert error.exceptions and all(isinstance(e, CancelledError) for e in error.exceptions)
    again = [r for r in caplog.records if "submitting them again" in r.getMessage()]
    assert len(again) == DASK_RESUBMITS
    assert not lock_files(hosts2.storage)


def test_scalar_updates_scatter_nothing(hosts2: Hosts, monkeypatch: pytest.MonkeyPatch) -> None:
    scattered: list[int] = []
    original = hosts2.client.scatter

    def spy(data: Any, **kwargs: Any) -> Any:
        scattered.extend(a.nbytes for a in data)
        return original(data, **kwargs)

    monkeypatch.setattr(hosts2.client, "scatter", spy)
    with Client(hosts2.storage.as_uri(), executor=hosts2.client) as client:
        v = varray(client, SHAPE, VGRID, name=hosts2.name("scalar"))
        v[:].update(np.float32(1.5))
        v[:, 3:200].update(np.arange(512, dtype=np.float32))  # a row broadcast: one row travels
        assert scattered == []
        expected = np.full(SHAPE, 1.5, dtype=np.float32)
        expected[:, 3:200] = np.arange(512, dtype=np.float32)
        np.testing.assert_array_equal(v[:].read(), expected)


# ------------------------------------------------------------------- a worker without the storage


@pytest.fixture()
def blind_worker(hosts2: Hosts, tmp_path: Path) -> Iterator[str]:
    """A third worker that sees an empty directory at the storage path; its address."""
    if hosts2.cluster.namespaced:
        worker = hosts2.cluster.add_worker(hide=hosts2.storage)  # an empty tmpfs over the storage
    else:
        empty = tmp_path / "empty-mount"
        empty.mkdir()
        worker = hosts2.cluster.add_worker(env={"DEKER_ROOT_MAP": f"{hosts2.storage}={empty}"})
    try:
        yield hosts2.cluster.address_of(worker.name)
    finally:
        hosts2.cluster.stop_worker(worker.name)


def test_a_worker_without_the_storage_reads_no_fill(hosts2: Hosts, blind_worker: str) -> None:
    with Client(hosts2.storage.as_uri()) as local:
        v = varray(local, (6, 8), (2, 2), name=hosts2.name("blind"))
        data = np.arange(48, dtype=np.float32).reshape(6, 8)
        v[:].update(data)
    on_blind = hosts2.client.get_executor(workers=[blind_worker], allow_other_workers=False)
    with Client(hosts2.storage.as_uri(), executor=on_blind) as client:
        v = _only_varray(client, v)
        where = re.escape(str(hosts2.storage / "collections"))
        pattern = rf"Dask worker {blind_worker} \(host .*, pid \d+\) does not see the storage at .*{where}"
        with pytest.raises(DekerVSubsetError) as info:
            v[:].read()
        assert all(isinstance(e, DekerStorageError) for e in info.value.exceptions)
        assert len(info.value.exceptions) == 4
        with pytest.raises(DekerStorageError, match=pattern):
            raise info.value.exceptions[0]
        with pytest.raises(DekerVSubsetError) as info:
            v[1:5, 2:7].update(np.float32(1.0))
        with pytest.raises(DekerStorageError, match=pattern):
            raise info.value.exceptions[0]
        with pytest.raises(DekerVSubsetError) as info:
            v[:].clear()
        with pytest.raises(DekerStorageError, match=pattern):
            raise info.value.exceptions[0]
    # deker_dask too: lazy reads and stores computed on that worker
    with Client(hosts2.storage.as_uri()) as local:
        v = _only_varray(local, v)
        only = {"workers": [blind_worker], "allow_other_workers": False}
        with pytest.raises(DekerStorageError, match=pattern):
            deker_dask.to_dask(v).compute(scheduler=hosts2.client, **only)
        source = da.from_array(np.zeros((6, 8), dtype=np.float32), chunks=(2, 2))
        with pytest.raises(DekerStorageError, match=pattern):
            deker_dask.store(source, v, scheduler=hosts2.client, **only)
    with pytest.raises(
        DekerClientError, match=rf"{blind_worker} \(host .*, pid \d+\): does not see the storage"
    ):
        deker_dask.check_workers(hosts2.client, hosts2.storage)
    with Client(hosts2.storage.as_uri()) as local:
        (again,) = list(local.get_collection(v.collection).varrays)
        np.testing.assert_array_equal(again[:].read(), data)  # nothing changed
    assert not lock_files(hosts2.storage)


def _only_varray(client: Client, v: Any) -> Any:
    (found,) = list(client.get_collection(v.collection).varrays)
    return found
