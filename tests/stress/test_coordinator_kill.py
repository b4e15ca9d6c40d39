"""Coordinator-kill loop: a VArray update's coordinator is killed (SIGKILL) mid-update, again and again.

A cluster is started as a user would (``dask scheduler`` and two ``dask worker`` processes on
127.0.0.1).  Each round, a coordinator process (``Client(uri, executor=dask_client)``,
tests/storage_helpers/coordinator.py) starts an update of a random region and is killed a
random moment after it started; tile writes on the workers are slowed down (a random 0-0.3 s
each, :class:`storage_helpers.dask_hooks.SlowTileWrites`) so that its tasks are often still
running then.  Right after the kill, process B (this test, threads) updates another random
region, overlapping or not, and is acknowledged.  Once the workers are idle, every cell must
hold the value of the last acknowledged write to it, or the value of a coordinator's update
that started after that write and was never acknowledged; a cell holding anything else is a
lost acknowledged cell.  CI runs 3 kills; ``--soak`` runs for ``--soak-seconds`` with at
least 10.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from stress_support import Budget, Summary, leftover_lock_files  # type: ignore[import-not-found]

from deker import Client, DimensionSchema, VArraySchema

distributed = pytest.importorskip("distributed")

from storage_helpers.cli_cluster import cli_cluster  # noqa: E402
from storage_helpers.dask_hooks import SlowTileWrites, executing_keys, scheduler_task_count  # noqa: E402

pytestmark = pytest.mark.timeout(3600)

TESTS = Path(__file__).resolve().parents[1]
COORDINATOR = TESTS / "storage_helpers" / "coordinator.py"
SHAPE, TILE = (16, 16), (4, 4)


def random_box(rng: random.Random) -> list[list[int]]:
    if rng.random() < 0.3:
        return [[0, SHAPE[0]], [0, SHAPE[1]]]  # every tile, whole
    box = []
    for size, tile in zip(SHAPE, TILE, strict=True):
        if rng.random() < 0.5:  # aligned on tiles: whole-tile writes (new versions)
            a = rng.randrange(0, size // tile) * tile
            b = rng.randrange(a // tile + 1, size // tile + 1) * tile
        else:  # unaligned: in-place writes under the undo journal
            a = rng.randrange(0, size - 1)
            b = rng.randrange(a + 1, size + 1)
        box.append([a, b])
    return box


def region(box: list[list[int]]) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in box)


class Coordinator:
    def __init__(self, scheduler: str, uri: str, vid: str, box: list[list[int]], value: float) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
        }
        args = {"scheduler": scheduler, "uri": uri, "collection": "v", "vid": vid, "updates": [[box, value]]}
        self.proc = subprocess.Popen(
            [sys.executable, str(COORDINATOR), json.dumps(args)], stdout=subprocess.PIPE, text=True, env=env
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put("<EOF>")

    def expect(self, word: str, timeout: float = 120) -> None:
        while True:
            line = self.lines.get(timeout=timeout)
            self.seen.append(line)
            if line.startswith(word):
                return
            assert line != "<EOF>", self.seen

    def acknowledged(self) -> bool:
        """Whether it printed ``ACK`` before it died (everything it printed is read first)."""
        while not self.seen or self.seen[-1] != "<EOF>":
            self.seen.append(self.lines.get(timeout=30))
        return any(line.startswith("ACK") for line in self.seen)

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)


def wait_idle(client: Any) -> None:
    """Until the scheduler forgot the dead coordinator's tasks and no worker runs any."""
    deadline = time.monotonic() + 120
    while client.run_on_scheduler(scheduler_task_count) or any(client.run(executing_keys).values()):
        assert time.monotonic() < deadline, "the cluster stayed busy"
        time.sleep(0.05)


def test_killed_coordinators_lose_no_acknowledged_cell(
    tmp_path: Path, budget: Budget, summary: Summary
) -> None:
    rng = random.Random(15)
    min_kills = 10 if budget.soak else 3
    deadline = time.monotonic() + budget.scaled(0.0)
    base = tmp_path / "cluster"
    base.mkdir()
    uri = f"file://{tmp_path / 'storage'}"
    signals = tmp_path / "signals"
    signals.mkdir()
    stats: Counter[str] = Counter()
    waits: list[float] = []
    lost = 0
    with cli_cluster(base) as address, distributed.Client(address, set_as_default=False, timeout=60) as dc:
        dc.wait_for_workers(2, timeout=60)
        plugin = SlowTileWrites(signals, 0.3, 15, f"slow-{uuid.uuid4().hex}")
        dc.register_plugin(plugin, name=plugin.name)
        schema = VArraySchema(
            dtype=np.float64,
            dimensions=[DimensionSchema("y", SHAPE[0]), DimensionSchema("x", SHAPE[1])],
            arrays_shape=TILE,
        )
        with Client(uri, write_lock_timeout=60) as b_client:
            v = b_client.create_collection("v", schema).create()
            v[:].update(0.0)
            allowed = np.empty(SHAPE, dtype=object)
            for index in np.ndindex(*SHAPE):
                allowed[index] = {0.0}
            kills = 0
            while kills < min_kills or time.monotonic() < deadline:
                kills += 1
                c_box, b_box = random_box(rng), random_box(rng)
                c_value, b_value = 1000.0 + kills, -float(kills)
                coordinator = Coordinator(address, uri, v.id, c_box, c_value)
                coordinator.expect("START")
                time.sleep(rng.uniform(0.0, 0.6))  # a random moment of the update: not for correctness
                coordinator.kill()
                if coordinator.acknowledged():  # it finished first: an acknowledged write
                    stats["coordinator acknowledged"] += 1
                    for index in np.ndindex(*SHAPE):
                        if all(a <= i < b for i, (a, b) in zip(index, c_box, strict=True)):
                            allowed[index] = {c_value}
                else:
                    for index in np.ndindex(*SHAPE):
                        if all(a <= i < b for i, (a, b) in zip(index, c_box, strict=True)):
                            allowed[index] = allowed[index] | {c_value}
                started = time.monotonic()
                try:
                    v[region(b_box)].update(b_value)
                except Exception as exc:  # a failed acknowledged-to-be write: counted, reported
                    stats[f"B failed: {type(exc).__name__}"] += 1
                else:
                    waits.append(time.monotonic() - started)
                    for index in np.ndindex(*SHAPE):
                        if all(a <= i < b for i, (a, b) in zip(index, b_box, strict=True)):
                            allowed[index] = {b_value}
                wait_idle(dc)
                data = v[:].read()
                bad = [index for index in np.ndindex(*SHAPE) if float(data[index]) not in allowed[index]]
                lost += len(bad)
                for index in bad:  # from here on, judge against what is there
                    allowed[index] = {float(data[index])}
            for path in signals.iterdir():
                stats[f"tile tasks {path.suffix[1:]}"] += 1
            b_client.clear_locks()  # the stale markers of the last coordinator
            report = b_client.check_integrity(4, stop_on_error=False)
        dc.unregister_worker_plugin(plugin.name)
    summary.values.update(
        kills=kills,
        killed_mid_update=kills - stats["coordinator acknowledged"],
        lost_acknowledged_cells=lost,
        b_updates_acknowledged=len(waits),
        b_longest_wait_s=round(max(waits, default=0.0), 2),
        integrity_problems=len(report.problems),
        **dict(sorted(stats.items())),
    )
    assert lost == 0
    assert not [k for k in stats if k.startswith("B failed")], stats
    assert report.ok
    assert leftover_lock_files(tmp_path / "storage") == []
