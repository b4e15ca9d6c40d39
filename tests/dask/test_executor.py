"""``deker.Client(executor=distributed_client)``: VArray operations run as tasks on the workers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import distributed
import numpy as np
import pytest
from dask_helpers import lock_files, varray
from distributed import get_task_stream
from distributed.utils import key_split

import deker_dask
from deker import Client, HDF5CompressionOpts, HDF5Options
from deker.errors import DekerClientError


def ran_on_workers(cluster: Any, records: list[dict[str, Any]]) -> dict[str, int]:
    """Count the tasks of a task stream by function name; all must have run on the workers."""
    workers = set(cluster.scheduler_info()["workers"])
    assert {r["worker"] for r in records} <= workers
    counts: dict[str, int] = {}
    for record in records:
        name = key_split(record["key"])
        counts[name] = counts.get(name, 0) + 1
    return counts


def test_varray_operations_run_on_workers(tmp_path: Path, cluster: Any) -> None:
    with Client(f"file://{tmp_path}", executor=cluster) as client:
        v = varray(client, (16, 12), (4, 3))  # 12 tiles of (4, 4)
        oracle = np.full((16, 12), np.nan, dtype=np.float32)
        data = np.arange(16 * 12, dtype=np.float32).reshape(16, 12)
        with get_task_stream(client=cluster) as stream:
            v[:].update(data)
        oracle[:] = data
        counts = ran_on_workers(cluster, stream.data)
        assert set(counts) <= {"write_piece", "run_batch"} and counts
        with get_task_stream(client=cluster) as stream:
            np.testing.assert_array_equal(v[:].read(), oracle)
        counts = ran_on_workers(cluster, stream.data)
        assert set(counts) <= {"read_piece", "run_batch"} and counts
        with get_task_stream(client=cluster) as stream:
            v[2:10, 0:8].clear()
        oracle[2:10, 0:8] = np.nan
        counts = ran_on_workers(cluster, stream.data)
        assert set(counts) <= {"clear_piece", "run_batch"} and counts
        np.testing.assert_array_equal(v[:].read(), oracle)
        # pieces above the scatter threshold (2 MiB per tile > 1 MiB) travel outside the graph
        big = varray(client, (1024, 1024), (2, 1), name="big")
        payload = np.random.default_rng(0).random((1024, 1024)).astype(np.float32)
        big[:].update(payload)
        np.testing.assert_array_equal(big[:].read(), payload)
        with get_task_stream(client=cluster) as stream:  # integrity level 4 reads every tile there
            report = client.check_integrity(level=4, collection="v")
        assert report.ok and report.files_checked == len(v.tiles.ids())
        counts = ran_on_workers(cluster, stream.data)
        assert set(counts) <= {"check_array_file", "run_batch"} and counts
        with get_task_stream(client=cluster) as stream:
            v.delete()
        counts = ran_on_workers(cluster, stream.data)
        assert set(counts) <= {"clear_piece", "run_batch"} and counts
        assert not v.tiles.ids() and not v._main_file.exists()
        assert len(big.tiles.ids()) == 2  # another VArray of the storage is untouched
        assert not lock_files(tmp_path)


def test_workers_need_no_preparation(tmp_path: Path, cluster: Any) -> None:
    reports = deker_dask.check_workers(cluster, tmp_path)
    assert len(reports) == 2
    for report in reports.values():
        assert report["storage_visible"] and report["filters"]["zstd"]
        assert report["pid"] != os.getpid()
    # No HDF5 environment on the workers: deker opens its files with locking off itself.
    assert set(cluster.run(os.environ.get, "HDF5_USE_FILE_LOCKING").values()) == {None}
    import hdf5plugin

    options = HDF5Options(chunks=True, compression_opts=HDF5CompressionOpts(**hdf5plugin.Zstd(3)))
    with Client(f"file://{tmp_path}", executor=cluster) as client:
        v = varray(client, (40, 30), (2, 3), dtype=np.float64, options=options)
        data = np.linspace(0, 1, 1200).reshape(40, 30)
        v[:].update(data)
        np.testing.assert_array_equal(v[:].read(), data)
        np.testing.assert_array_equal(deker_dask.to_dask(v).compute(scheduler=cluster), data)
    with pytest.raises(DekerClientError, match="not a directory"):
        deker_dask.check_workers(cluster, tmp_path / "nowhere")


def test_a_closed_dask_client_is_a_deker_error_and_changes_nothing(tmp_path: Path, dask_cluster: Any) -> None:
    """It was distributed's ``ClosedClientError`` (and the storage directory made first)."""
    own = distributed.Client(dask_cluster, set_as_default=False)  # not the session's client
    with Client(f"file://{tmp_path / 's'}", executor=own) as client:
        v = varray(client, (8, 8), (2, 2))
        v[:].update(np.ones((8, 8), np.float32))
        own.close()
        for operation in (
            lambda: v[:].update(np.zeros((8, 8), np.float32)),
            lambda: v[:].read(),
            lambda: v[0:4, 0:4].clear(),
        ):
            with pytest.raises(
                DekerClientError, match="Dask client this deker Client runs its tasks on is closed"
            ):
                operation()
        assert not lock_files(tmp_path / "s")
    with Client(f"file://{tmp_path / 's'}") as again:  # nothing changed
        (same,) = list(again.get_collection(v.collection) or [])
        np.testing.assert_array_equal(same[:].read(), np.ones((8, 8), np.float32))
    with pytest.raises(DekerClientError, match="is closed"):
        Client(f"file://{tmp_path / 'new'}", executor=own)
    with pytest.raises(DekerClientError, match="is closed"):
        Client(f"file://{tmp_path / 'new'}", executor=own.get_executor())
    assert not (tmp_path / "new").exists()
