"""A VArray update whose coordinator is killed (SIGKILL) while a tile task still runs (issue 15, case 1).

The coordinator is a separate process holding ``Client(uri, executor=dask_client)`` on the
session's LocalCluster.  A worker plugin (``storage_helpers.dask_hooks.HoldTileWrite``) stops
its task for tile (0, 0) at a precise point: when it starts writing the file, once it holds
the undo journal of an in-place change, or before it checks its lock.  The coordinator is
then killed: its markers go stale and process B (this test, with its own thread pool) updates
the tile.  B must not be told "done" while the dead coordinator's task can still land, and
must not fail at once either: it waits for the task (the tile's fence), then writes.  The
task is released only once B is either done or waiting at the fence, so the outcome does not
depend on timing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dask_helpers import lock_files, tile_dir, varray, wait_for
from storage_helpers.dask_hooks import HoldTileWrite
from storage_helpers.prim import refusals_of

from deker import Client

TESTS = Path(__file__).resolve().parents[1]
COORDINATOR = TESTS / "storage_helpers" / "coordinator.py"


def start_coordinator(scheduler: str, uri: str, vid: str, updates: list[Any]) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
    }
    args = {"scheduler": scheduler, "uri": uri, "collection": "v", "vid": vid, "updates": updates}
    return subprocess.Popen(
        [sys.executable, str(COORDINATOR), json.dumps(args)], stdout=subprocess.PIPE, text=True, env=env
    )


CASES = {
    # point where the dead coordinator's task is held, its update, B's update of tile (0, 0)
    "whole-tile": ("write", [[[0, 8], [0, 8]], 1.0], ((slice(0, 4), slice(0, 4)), 2.0)),
    "in-place": ("journal", [[[0, 2], [0, 2]], 1.0], ((slice(1, 3), slice(1, 3)), 2.0)),
    "before-check": ("guard", [[[0, 8], [0, 8]], 1.0], ((slice(0, 4), slice(0, 4)), 2.0)),
}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("case", sorted(CASES))
def test_dead_coordinators_task_never_lands_after_a_later_write(
    case: str, dask_cluster: Any, cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    point, c_update, (b_bounds, b_value) = CASES[case]
    uri = f"file://{tmp_path / 'storage'}"
    with Client(uri, write_lock_timeout=30) as b_client:
        v = varray(b_client, (8, 8), (2, 2))
        v[:].update(np.zeros((8, 8), dtype=np.float32))  # every tile exists
        main_dir, tid = tile_dir(v, (0, 0))
        signals = tmp_path / "signals"
        signals.mkdir()
        plugin = HoldTileWrite(signals, tid, point, f"hold-{uuid.uuid4().hex}")
        cluster.register_plugin(plugin, name=plugin.name)
        coordinator = start_coordinator(dask_cluster.scheduler_address, uri, v.id, [c_update])
        b_outcome: list[BaseException | None] = []
        try:
            wait_for(
                lambda: (signals / "blocked").exists() or coordinator.poll() is not None, "the held task"
            )
            assert coordinator.poll() is None, "the coordinator ended before its task was held"
            os.kill(coordinator.pid, signal.SIGKILL)
            coordinator.wait(30)

            def update_b() -> None:
                try:
                    v[b_bounds].update(b_value)
                except BaseException as exc:
                    b_outcome.append(exc)
                else:
                    b_outcome.append(None)

            refused = refusals_of(main_dir / f"{tid}.fence", monkeypatch)
            b = threading.Thread(target=update_b)
            b.start()
            wait_for(lambda: b_outcome or refused.is_set(), "B to finish or to wait at the fence")
            (signals / "go").touch()  # the dead coordinator's task goes on
            b.join(60)
            assert not b.is_alive()
            wait_for(lambda: (signals / "done").exists(), "the dead coordinator's task to end")
        finally:
            (signals / "go").touch()
            cluster.unregister_worker_plugin(plugin.name)
            if coordinator.poll() is None:
                coordinator.kill()
                coordinator.wait(30)
        assert b_outcome == [None], f"B's update failed: {b_outcome}"
        done = (signals / "done").read_text()
        tile = v[0:4, 0:4].read()
        expected = np.zeros((4, 4), dtype=np.float32)
        if done == "ok":  # the task landed: before B's write, never after it
            (y0, y1), (x0, x1) = c_update[0]
            expected[y0 : min(y1, 4), x0 : min(x1, 4)] = c_update[1]
        else:
            assert case == "before-check" and done == "DekerLockError"  # it gave up
        expected[b_bounds] = b_value
        np.testing.assert_array_equal(tile, expected)
        b_client.clear_locks()  # the dead coordinator's markers on the tiles B did not touch
    assert not lock_files(tmp_path / "storage")
