"""Benchmark: deker on a Dask ``LocalCluster`` against the client's own thread pool.

Measurements (one JSON record each):

- ``dask_task_overhead``: the cost per tile of reading a VArray of many tiny tiles (so the I/O
  is negligible) with ``deker_dask.to_dask(...).compute()`` on the cluster and on dask's thread
  pool, next to the cost per task of an equally shaped graph of trivial numpy tasks (dask's own
  overhead), and of ``VArray.read()`` through ``Client(executor=dask_client)`` (batched tasks).
- ``dask_varray_write`` / ``dask_varray_read``: a 256 MiB (times ``size_scale``) float32 VArray
  of 4 MiB tiles written and read back

  * by ``Client(executor=<distributed.Client>)`` (``v[:].update`` / ``v[:].read``): tile tasks
    on the cluster's worker processes, data scattered to / gathered from them;
  * by ``Client()`` (its own thread pool) with the same calls;
  * by ``deker_dask.store`` of a dask array computed on the workers, and
    ``deker_dask.to_dask(...)`` read back to the client, on the cluster.

Every read is compared with the data written.

Run standalone: ``python benchmarks/bench_dask.py [size_scale]`` or
``python -m benchmarks.bench_dask [size_scale]``: one JSON line per measurement.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
from distributed import Client as DaskClient
from distributed import LocalCluster

import deker_dask
from deker import Client, DimensionSchema, VArraySchema

MIB = 1024 * 1024
FULL_BYTES = 256 * MIB
COLS = 8192  # float32 rows of 32 KiB
VGRID = (8, 8)  # 64 tiles: 4 MiB each at full size
TINY_TILES = 2048  # the overhead measurement: tiles of 8 x 8 cells


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def _varray(client: Client, name: str, shape: tuple[int, int], vgrid: tuple[int, int]) -> Any:
    dims = [DimensionSchema(name="y", size=shape[0]), DimensionSchema(name="x", size=shape[1])]
    schema = VArraySchema(dtype=np.float32, dimensions=dims, vgrid=vgrid)
    return client.create_collection(name, schema).create()


def _pattern(rows: int, cols: int) -> np.ndarray:
    y = np.arange(rows, dtype=np.int64)[:, None]
    x = np.arange(cols, dtype=np.int64)[None, :]
    return ((y * 31 + x * 17) % 1009).astype(np.float32)


def _lazy_pattern(rows: int, cols: int, tile: tuple[int, int]) -> Any:
    y = da.arange(rows, dtype=np.int64, chunks=tile[0])[:, None]
    x = da.arange(cols, dtype=np.int64, chunks=tile[1])[None, :]
    return ((y * 31 + x * 17) % 1009).astype(np.float32)


def _check(got: np.ndarray, want: np.ndarray, what: str) -> None:
    if not np.array_equal(got, want):
        raise AssertionError(f"{what}: the data read differs from the data written")


def _overhead(root: Path, dask_client: Any, scale: float) -> list[dict[str, Any]]:
    tiles = max(64, int(TINY_TILES * scale))
    grid = (tiles // 32, 32) if tiles >= 64 else (tiles, 1)
    tiles = grid[0] * grid[1]
    shape = (grid[0] * 8, grid[1] * 8)
    out: list[dict[str, Any]] = []
    with Client(root.as_uri()) as client:
        v = _varray(client, "tiny", shape, grid)
        data = _pattern(*shape)
        v[:].update(data)  # every tile exists
    with Client(root.as_uri(), executor=dask_client) as client:
        coll = client.get_collection("tiny")
        assert coll is not None
        v = next(iter(coll))
        for scheduler, label in ((dask_client, "local_cluster"), ("threads", "threads")):
            arr = deker_dask.to_dask(v)
            arr.compute(scheduler=scheduler)  # warm up (imports on the workers)
            seconds, got = _timed(lambda a=arr, s=scheduler: deker_dask.to_dask(v).compute(scheduler=s))
            _check(got, data, "to_dask read")
            trivial = da.zeros(shape, dtype=np.float32, chunks=(8, 8))
            base, _ = _timed(lambda t=trivial, s=scheduler: t.compute(scheduler=s))
            out.append(
                {
                    "name": "dask_task_overhead",
                    "path": "deker_dask.to_dask(varray).compute()",
                    "scheduler": label,
                    "tiles": tiles,
                    "tile_bytes": 8 * 8 * 4,
                    "seconds": round(seconds, 4),
                    "ms_per_tile": round(1000 * seconds / tiles, 4),
                    "dask_ms_per_trivial_task": round(1000 * base / tiles, 4),
                    "verified": True,
                }
            )
        seconds, got = _timed(lambda: v[:].read())
        _check(got, data, "executor read")
        out.append(
            {
                "name": "dask_task_overhead",
                "path": "Client(executor=dask_client): varray[:].read() (batched tile tasks)",
                "scheduler": "local_cluster",
                "tiles": tiles,
                "tile_bytes": 8 * 8 * 4,
                "seconds": round(seconds, 4),
                "ms_per_tile": round(1000 * seconds / tiles, 4),
                "verified": True,
            }
        )
    return out


def _record(name: str, path: str, executor: str, nbytes: int, seconds: float, tiles: int) -> dict[str, Any]:
    return {
        "name": name,
        "path": path,
        "executor": executor,
        "mib": round(nbytes / MIB, 1),
        "tiles": tiles,
        "seconds": round(seconds, 3),
        "mib_per_s": round(nbytes / MIB / seconds, 1),
        "verified": True,
    }


def _throughput(root: Path, dask_client: Any, scale: float) -> list[dict[str, Any]]:
    rows = max(VGRID[0], int(FULL_BYTES * scale / (COLS * 4)) // VGRID[0] * VGRID[0])
    shape = (rows, COLS)
    tile = (rows // VGRID[0], COLS // VGRID[1])
    tiles = VGRID[0] * VGRID[1]
    data = _pattern(*shape)
    nbytes = data.nbytes
    out: list[dict[str, Any]] = []
    runs: list[tuple[str, Any]] = [("local_cluster", dask_client), ("threads", None)]
    for label, executor in runs:
        with Client(root.as_uri(), executor=executor) as client:
            v = _varray(client, f"big_{label}", shape, VGRID)
            seconds, _ = _timed(lambda v=v: v[:].update(data))
            out.append(
                _record("dask_varray_write", "varray[:].update(ndarray)", label, nbytes, seconds, tiles)
            )
            seconds, got = _timed(lambda v=v: v[:].read())
            _check(got, data, f"{label} read")
            del got
            out.append(_record("dask_varray_read", "varray[:].read()", label, nbytes, seconds, tiles))
    with Client(root.as_uri()) as client:
        v = _varray(client, "big_store", shape, VGRID)
        source = _lazy_pattern(rows, COLS, tile)
        seconds, _ = _timed(lambda: deker_dask.store(source, v, scheduler=dask_client))
        out.append(
            _record(
                "dask_varray_write",
                "deker_dask.store(dask array made on workers)",
                "local_cluster",
                nbytes,
                seconds,
                tiles,
            )
        )
        seconds, got = _timed(lambda: deker_dask.to_dask(v).compute(scheduler=dask_client))
        _check(got, data, "to_dask read")
        del got
        out.append(
            _record(
                "dask_varray_read",
                "deker_dask.to_dask(varray).compute()",
                "local_cluster",
                nbytes,
                seconds,
                tiles,
            )
        )
        seconds, total = _timed(
            lambda: deker_dask.to_dask(v).sum(dtype=np.float64).compute(scheduler=dask_client)
        )
        if not math.isclose(float(total), float(data.sum(dtype=np.float64)), rel_tol=1e-9):
            raise AssertionError("to_dask sum differs from the data written")
        out.append(
            _record(
                "dask_varray_read",
                "deker_dask.to_dask(varray).sum() (only the sum travels)",
                "local_cluster",
                nbytes,
                seconds,
                tiles,
            )
        )
    return out


def run(size_scale: float = 1.0) -> list[dict[str, Any]]:
    """Run every measurement on a new LocalCluster (2 worker processes, 1 thread each).

    Parameters
    ----------
    size_scale : float
        Scales the 256 MiB VArray and the number of tiny tiles.

    Returns
    -------
    list of dict
        One JSON-ready record per measurement.
    """
    workers = max(2, min(4, os.cpu_count() or 2))
    with tempfile.TemporaryDirectory(prefix="deker-bench-dask-") as tmp:
        root = Path(tmp) / "storage"
        with (
            dask.config.set(
                {"distributed.worker.memory.target": False, "distributed.worker.memory.spill": False}
            ),
            LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                local_directory=str(Path(tmp) / "workers"),
            ) as cluster,
            DaskClient(cluster, set_as_default=False) as dask_client,
        ):
            results = _overhead(root, dask_client, size_scale)
            results += _throughput(root, dask_client, size_scale)
    for record in results:
        record["suite"] = "dask"
        record["workers"] = workers
    return results


if __name__ == "__main__":
    scale = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    for item in run(scale):
        print(json.dumps(item))
