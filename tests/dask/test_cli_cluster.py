"""A cluster started as separate OS processes with the ``dask scheduler`` and ``dask worker`` commands.

The workers are fresh interpreters with no preload: deker's tasks must bring what they need.
One test kills (SIGKILL) the worker process that holds a tile's write lock in the middle of a
store: the kernel drops its locks, the scheduler runs the task again elsewhere, and the store
completes with nothing left locked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dask.array as da
import numpy as np
import psutil
import pytest
from dask_helpers import held, holder_of, legacy_read_marker, lock_files, tile_dir, varray, wait_for
from distributed import Client as DaskClient
from distributed import get_task_stream
from storage_helpers.cli_cluster import dask_command, scheduler_address, stop_process

import deker_dask
from deker import Client, HDF5CompressionOpts, HDF5Options

HERE = Path(__file__).resolve().parent


class CliCluster:
    def __init__(self, client: DaskClient, fresh: dict[str, list[str]]) -> None:
        self.client = client
        self.fresh = fresh


@pytest.fixture(scope="module")
def cli_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliCluster]:
    base = tmp_path_factory.mktemp("cli-cluster")
    scheduler_file = base / "scheduler.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
    }
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        log = open(base / "scheduler.log", "wb")  # noqa: SIM115 - closed below
        logs.append(log)
        procs.append(
            subprocess.Popen(
                dask_command(
                    "scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address", "127.0.0.1:0",
                    "--scheduler-file", str(scheduler_file),
                ),
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=base, start_new_session=True,
            )
        )  # fmt: skip
        wait_for(
            lambda: scheduler_address(scheduler_file) or procs[0].poll() is not None, "the scheduler file"
        )
        assert procs[0].poll() is None, (base / "scheduler.log").read_text()
        log = open(base / "workers.log", "wb")  # noqa: SIM115 - closed below
        logs.append(log)
        procs.append(
            subprocess.Popen(
                dask_command(
                    "worker", "--scheduler-file", str(scheduler_file), "--nworkers", "2", "--nthreads", "1",
                    "--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0", "--memory-limit", "0",
                    "--local-directory", str(base / "workers"), "--death-timeout", "60",
                ),
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=base, start_new_session=True,
            )
        )  # fmt: skip
        with DaskClient(scheduler_file=str(scheduler_file), set_as_default=False, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
            # (a lambda travels by value: running it imports nothing on the worker)
            fresh = client.run(lambda: sorted(m for m in ("deker", "h5py", "hdf5plugin") if m in sys.modules))
            yield CliCluster(client, fresh)
    finally:
        for proc in reversed(procs):
            stop_process(proc)
        for log in logs:
            log.close()


@pytest.mark.timeout(120)
def test_fresh_workers_match_numpy(cli_cluster: CliCluster, tmp_path: Path) -> None:
    client = cli_cluster.client
    preloaded = {address: modules for address, modules in cli_cluster.fresh.items() if modules}
    assert preloaded == {}  # the workers started without deker, h5py or hdf5plugin
    import hdf5plugin

    options = HDF5Options(chunks=(3, 4), compression_opts=HDF5CompressionOpts(**hdf5plugin.Zstd(3)))
    with Client(f"file://{tmp_path}", executor=client) as deker_client:
        v = varray(deker_client, (12, 16), (2, 2), dtype=np.float64, options=options)
        data = np.random.default_rng(1).random((12, 16))
        with get_task_stream(client=client) as stream:
            deker_dask.store(da.from_array(data, chunks=(5, 5)), v, scheduler=client)
            lazy = deker_dask.to_dask(v)
            np.testing.assert_array_equal(lazy.compute(scheduler=client), data)
        workers = set(client.scheduler_info()["workers"])
        ran = {r["key"]: r["worker"] for r in stream.data}
        assert {k for row in lazy.__dask_keys__() for k in row} <= set(ran)
        assert set(ran.values()) <= workers
        assert sum(isinstance(k, tuple) and k[0].startswith("deker-store-") for k in ran) == 4  # one per tile
        # the client's own VArray operations run on these workers too
        v[2:9, 3:14].update(np.ones((7, 11)))
        data[2:9, 3:14] = 1.0
        np.testing.assert_array_equal(v[:].read(), data)
        v[0:6, 0:8].clear()
        data[0:6, 0:8] = np.nan
        np.testing.assert_array_equal(v[:].read(), data)
        total = da.nansum(deker_dask.to_dask(v)).compute(scheduler=client)
        assert float(total) == pytest.approx(float(np.nansum(data)), rel=1e-12)
    assert not lock_files(tmp_path)


def dead(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.timeout(180)
def test_worker_killed_during_store(cli_cluster: CliCluster, tmp_path: Path) -> None:
    client = cli_cluster.client
    with Client(f"file://{tmp_path}", write_lock_timeout=60) as deker_client:
        v = varray(deker_client, (8, 8), (2, 2))
        oracle = np.zeros((8, 8), dtype=np.float32)
        v[:].update(oracle)
        main_dir, tid = tile_dir(v, (1, 1))
        data = np.arange(64, dtype=np.float32).reshape(8, 8)
        with legacy_read_marker(main_dir, tid):
            future = client.compute(deker_dask.store(da.from_array(data, chunks=4), v, compute=False))
            (marker,) = wait_for(
                lambda: [m for m in main_dir.glob(f"{tid}.hdf5:*.varraylock") if held(m)],
                "a store task holding tile (1, 1)",
            )
            pids = client.run(os.getpid)
            victim = pids[wait_for(lambda: holder_of(marker, pids), "the process holding the tile lock")]
            os.kill(victim, signal.SIGKILL)
            # Nobody released it, yet the dead worker's lock goes with it (once its last thread has
            # exited): the marker is stale, or already recovered by the retried task.
            wait_for(lambda: not held(marker), "the kernel to drop the killed worker's lock", timeout=30)
            wait_for(lambda: dead(victim), "the killed worker to exit", timeout=30)
            assert not future.done()
        assert future.result(timeout=120) == 64  # retried on a live worker, then completed
        np.testing.assert_array_equal(v[:].read(), data)
    assert not lock_files(tmp_path)
    wait_for(lambda: len(client.scheduler_info()["workers"]) == 2, "the nanny to restart the worker")
