"""Two store jobs writing intersecting regions at once follow the tile lock rules.

Job A is held in the middle of writing tile (0, 1): its task holds the tile's write lock and
waits for a deker 1.1.7 style read marker the test owns.  Job B, which also writes tile (0, 1),
starts then: its task for that tile must wait (and then write after A), or give up with
DekerLockError after its client's lock timeout leaving nothing locked.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pytest
from dask_helpers import (
    held,
    holder_of,
    keys_executing,
    legacy_read_marker,
    lock_files,
    tile_dir,
    varray,
    wait_for,
)

import deker_dask
from deker import Client
from deker.errors import DekerLockError
from deker_dask.graph_tasks import store_tiles


def prepared(storage: Client) -> tuple[Any, np.ndarray]:
    v = varray(storage, (8, 8), (2, 2))  # tiles of (4, 4)
    oracle = np.zeros((8, 8), dtype=np.float32)
    v[:].update(oracle)  # every tile exists
    return v, oracle


def store_key(delayed: Any, position: tuple[int, ...]) -> Any:
    """The key of the store task that writes the tile at ``position``."""
    (key,) = [
        k
        for k, task in dict(delayed.__dask_graph__()).items()
        if isinstance(k, tuple)
        and str(k[0]).startswith("deker-store-")
        and any(plan.position == position for plan in store_plans(task))
    ]
    return key


def store_plans(task: Any) -> tuple[Any, ...]:
    """The tile plans of a store_tiles task (legacy tuple or Task object), else ()."""
    if isinstance(task, tuple) and task and task[0] is store_tiles:
        return tuple(task[3])
    if getattr(task, "func", None) is store_tiles:
        return tuple(getattr(task.args[2], "value", task.args[2]))
    return ()


def hold_a(cluster: Any, v: Any, main_dir: Path, tid: str) -> tuple[Any, str]:
    """Start job A (rows 0:4); once it holds tile (0, 1) return its future and a free worker."""
    a_data = np.full((4, 8), 1.0, dtype=np.float32)
    future = cluster.compute(deker_dask.store(da.from_array(a_data, chunks=4), v[0:4], compute=False))
    (marker,) = wait_for(
        lambda: [m for m in main_dir.glob(f"{tid}.hdf5:*.varraylock") if held(m)], "job A to lock tile (0, 1)"
    )
    pids = cluster.run(os.getpid)
    busy = wait_for(lambda: holder_of(marker, pids), "the worker holding tile (0, 1)")
    (free,) = set(pids) - {busy}
    return future, free  # job B runs there: the busy worker's only thread is A's held task


@pytest.mark.timeout(120)
def test_second_job_waits_then_writes(storage: Client, cluster: Any) -> None:
    v, oracle = prepared(storage)
    main_dir, tid = tile_dir(v, (0, 1))
    with legacy_read_marker(main_dir, tid):
        future_a, free = hold_a(cluster, v, main_dir, tid)
        b_data = np.full((8, 4), 2.0, dtype=np.float32)
        job_b = deker_dask.store(da.from_array(b_data, chunks=4), v[:, 4:8], compute=False)
        future_b = cluster.compute(job_b, workers=[free])
        key = store_key(job_b, (0, 1))
        wait_for(lambda: key in keys_executing(cluster), "job B's task on tile (0, 1) to start")
        assert not future_a.done() and not future_b.done()
    future_a.result(timeout=60)
    future_b.result(timeout=60)
    oracle[0:4] = 1.0
    oracle[:, 4:8] = 2.0  # B wrote tile (0, 1) after A released it
    np.testing.assert_array_equal(v[:].read(), oracle)
    assert not lock_files(storage.root_path)


@pytest.mark.timeout(120)
def test_second_job_times_out_and_leaves_nothing_locked(
    storage: Client, cluster: Any, tmp_path: Path
) -> None:
    v, oracle = prepared(storage)
    main_dir, tid = tile_dir(v, (0, 1))
    with Client(f"file://{tmp_path / 'storage'}", write_lock_timeout=1) as impatient:
        coll = impatient.get_collection("v")
        assert coll is not None
        v_b = coll.filter({"id": v.id}).last()
        with legacy_read_marker(main_dir, tid):
            future_a, free = hold_a(cluster, v, main_dir, tid)
            b_data = np.full((4, 4), 2.0, dtype=np.float32)
            job_b = deker_dask.store(da.from_array(b_data), v_b[0:4, 4:8], compute=False)
            future_b = cluster.compute(job_b, workers=[free])
            with pytest.raises(DekerLockError):
                future_b.result(timeout=60)
            # only A's marker remains on the tile, held by A's worker
            markers = list(main_dir.glob(f"{tid}*.varraylock"))
            assert len(markers) == 1 and held(markers[0])
            assert not future_a.done()
        future_a.result(timeout=60)
    oracle[0:4] = 1.0
    np.testing.assert_array_equal(v[:].read(), oracle)
    assert not lock_files(storage.root_path)
