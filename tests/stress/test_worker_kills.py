"""Worker-kill loop: Dask workers (separate processes, in their own mount and PID namespaces when
root, see tests/dask/hosts.py) are killed with SIGKILL in the middle of VArray updates whose
tile data is above the scatter threshold, scalar or partial.  Every update must succeed (Dask
can run the lost tasks again: the update re-sends their data) and every acknowledged cell must
be read back.  3 kills in CI, 20 with ``--soak``.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dask"))  # the cluster helpers

pytest.importorskip("distributed")

from dask_helpers import lock_files, varray  # type: ignore[import-not-found]
from hosts import HostCluster, kill_during, namespaces_unavailable  # type: ignore[import-not-found]
from stress_support import Budget, Summary  # type: ignore[import-not-found]

from deker import Client

SHAPE = (8, 512, 512)  # 4 tiles of 2 MiB (float32)
VGRID = (4, 1, 1)


@pytest.mark.timeout(1800)
def test_killed_workers_lose_no_acknowledged_cell(
    tmp_path: Path, budget: Budget, summary: Summary, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="deker.executors")
    kills = 20 if budget.soak else 3
    namespaced = namespaces_unavailable() is None
    storage = tmp_path / "coordinator" / "storage"
    storage.mkdir(parents=True)
    cluster = HostCluster(tmp_path, namespaced).start()

    def add_worker() -> None:
        if namespaced:
            cluster.add_worker(
                storage=storage, view=tmp_path / "elsewhere" / "storage", hide=storage.parent, pid=os.getpid()
            )
        else:
            cluster.add_worker()

    rng = np.random.default_rng(15)
    failed: list[str] = []
    lost = 0
    try:
        for _ in range(2):
            add_worker()
        with Client(storage.as_uri(), executor=cluster.client, write_lock_timeout=120) as client:
            v = varray(client, SHAPE, VGRID)
            oracle = np.full(SHAPE, np.nan, dtype=np.float32)
            for k in range(kills):
                kind = ("whole", "scalar", "partial")[k % 3]
                region: Any
                if kind == "whole":
                    region, data = slice(None), rng.random(SHAPE, dtype=np.float32)
                elif kind == "scalar":
                    region, data = np.s_[1:7, 5:400], np.float32(k)
                else:  # 2 x 400 x 512 cells per tile: above the scatter threshold
                    region, data = np.s_[:, 100:500], rng.random((8, 400, 512), dtype=np.float32)
                error = kill_during(cluster, lambda r=region, d=data: v[r].update(d), tmp_path / f"hook{k}")
                got = v[:].read()
                if error is None:
                    oracle[region] = data  # acknowledged
                else:
                    failed.append(f"{kind}: {error!r}")
                    oracle[region] = got[region]  # not acknowledged: any tile may be old or new
                lost += int(np.count_nonzero(~((got == oracle) | (np.isnan(got) & np.isnan(oracle)))))
                while len(cluster.workers) < 2:
                    add_worker()
        leftovers = lock_files(storage)
    finally:
        cluster.close()
    summary.values.update(
        kills=kills,
        namespaced=namespaced,
        failed_updates=len(failed),
        lost_acknowledged_cells=lost,
        leftover_lock_files=len(leftovers),
        resubmissions=sum("submitting them again" in r.getMessage() for r in caplog.records),
    )
    assert failed == [] and lost == 0 and leftovers == []
