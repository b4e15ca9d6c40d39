"""Isolation stress test: processes overwrite overlapping multi-tile regions of one VArray at once.

Each round, every writer process updates a random rectangle of tiles (most rounds on tiles
that do not exist yet, so the update creates them) with a value unique to the writer and
the round, all starting together.  Updates are isolated (docs/concurrency.md): they behave
as if they ran one after the other, in some order.  After the round the final owner of each
cell says "this writer came after every other writer of this cell"; the check is that those
"after" relations have no cycle (two updates that each overwrote part of the other are a
cycle of two), and that every cell written in the round holds the value of one of its writers.
"""

from __future__ import annotations

import multiprocessing as mp
import random
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from stress_support import Budget, Summary, leftover_lock_files  # type: ignore[import-not-found]

from deker import Client, DimensionSchema, VArraySchema

pytestmark = pytest.mark.timeout(3600)

CTX = mp.get_context("forkserver")
CTX.set_forkserver_preload(["deker", "numpy", "h5py"])

TILE = (32, 32)
GRID = (4, 4)
SHAPE = (TILE[0] * GRID[0], TILE[1] * GRID[1])
FILL = -1
STOP = -1


def _rectangle(rng: random.Random) -> tuple[slice, slice]:
    """A random rectangle of whole tiles, at least 2 tiles (so that updates can interleave)."""
    while True:
        r0, r1 = sorted(rng.sample(range(GRID[0] + 1), 2))
        c0, c1 = sorted(rng.sample(range(GRID[1] + 1), 2))
        if (r1 - r0) * (c1 - c0) >= 2:
            return slice(r0 * TILE[0], r1 * TILE[0]), slice(c0 * TILE[1], c1 * TILE[1])


def isolation_writer(
    root: str, writer: int, seed: int, barrier: Any, rounds: Any, out: Any, scheduler: str | None
) -> None:
    """Each round: wait for the others, update one random rectangle, report it.

    With ``scheduler`` (a Dask scheduler address) the tile tasks run on that cluster's workers.
    """
    try:
        rng = random.Random(seed)
        settings: dict[str, Any] = {"workers": 2}
        if scheduler is not None:
            import distributed

            settings = {"executor": distributed.Client(scheduler, set_as_default=False)}
        with Client(
            f"file://{root}", write_lock_timeout=120, write_lock_check_interval=0.01, **settings
        ) as client:
            varray = next(iter(client.get_collection("iso")))
            while True:
                number = rounds.get()
                if number == STOP:
                    return
                rows, cols = _rectangle(rng)
                value = number * 100 + writer
                barrier.wait()
                varray[rows, cols].update(np.full((rows.stop - rows.start, cols.stop - cols.start), value))
                out.put((writer, rows.start, rows.stop, cols.start, cols.stop, value))
    except BaseException:
        out.put(("error", traceback.format_exc()))


def order_problems(final: np.ndarray, writes: list[tuple[int, int, int, int, int, int]]) -> list[str]:
    """Problems of one round: cells holding no writer's value, and cycles in the "after" relation."""
    problems = []
    covered = np.zeros(final.shape, dtype=bool)
    after: dict[int, set[int]] = {w[5]: set() for w in writes}  # value -> values it came after
    for _, r0, r1, c0, c1, value in writes:
        covered[r0:r1, c0:c1] = True
        owners = set(np.unique(final[r0:r1, c0:c1]).tolist())
        if not owners <= set(after):
            problems.append(f"cells of the update {value} hold values nobody wrote: {owners - set(after)}")
        for owner in owners & set(after):
            if owner != value:
                after[owner].add(value)
    if (final[~covered] != FILL).any():
        problems.append("cells outside every update changed")
    state: dict[int, int] = {}  # 1: on the path, 2: done

    def visit(node: int, path: list[int]) -> None:
        state[node] = 1
        for nxt in sorted(after[node]):
            if state.get(nxt) == 1:
                problems.append("not isolated: " + " after ".join(map(str, [*path, node, nxt])))
            elif nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in sorted(after):
        if node not in state:
            visit(node, [])
    return problems


def test_concurrent_multi_tile_updates_are_isolated(
    tmp_path: Path, budget: Budget, summary: Summary, dask_scheduler: str | None
) -> None:
    """Writer 0 runs its tile tasks on the session's Dask cluster (when distributed is installed)."""
    root = tmp_path / "storage"
    writers = 4
    seconds = budget.scaled(12.0)
    with Client(f"file://{root}") as client:
        schema = VArraySchema(
            dtype=np.int64,
            fill_value=FILL,
            dimensions=[DimensionSchema("y", SHAPE[0]), DimensionSchema("x", SHAPE[1])],
            arrays_shape=TILE,
        )
        varray = client.create_collection("iso", schema).create()
        barrier = CTX.Barrier(writers)
        rounds = [CTX.Queue() for _ in range(writers)]
        out = CTX.Queue()
        procs = [
            CTX.Process(
                target=isolation_writer,
                args=(str(root), i, 500 + i, barrier, rounds[i], out, dask_scheduler if i == 0 else None),
            )
            for i in range(writers)
        ]
        for proc in procs:
            proc.start()
        problems: list[str] = []
        number, fresh = 0, 0
        deadline = time.monotonic() + seconds
        try:
            while (time.monotonic() < deadline or number < 5) and not problems:  # at least 5 rounds
                number += 1
                if number % 4:  # three rounds in four on tiles that do not exist yet
                    varray[:].clear()
                    fresh += 1
                else:
                    varray[:].update(np.full(SHAPE, FILL))
                for queue in rounds:
                    queue.put(number)
                writes = [out.get(timeout=300) for _ in range(writers)]
                errors = [w[1] for w in writes if w[0] == "error"]
                assert not errors, errors[0]
                problems += [f"round {number}: {p}" for p in order_problems(varray[:].read(), writes)]
        finally:
            for queue in rounds:
                queue.put(STOP)
            for proc in procs:
                proc.join(120)
    assert all(proc.exitcode == 0 for proc in procs)
    leftovers = leftover_lock_files(root)
    summary.values.update(
        writers=writers,
        dask_writer=dask_scheduler is not None,
        rounds=number,
        fresh_rounds=fresh,
        problems=len(problems),
    )
    assert problems == [], "\n".join(problems[:20])
    assert number >= 5
    assert leftovers == []


def test_the_order_check_catches_a_mix() -> None:
    """Two updates that each overwrote part of the other are reported; a serial result is not."""
    final = np.full(SHAPE, FILL)
    a = (0, 0, 64, 0, 64, 101)
    b = (1, 0, 64, 32, 96, 102)
    final[0:64, 0:64] = 101
    final[0:64, 64:96] = 102
    assert order_problems(final, [a, b]) == []  # a after b: serial
    final[0:32, 32:64] = 102  # b after a in these cells
    assert any("not isolated" in p for p in order_problems(final, [a, b]))
    final[0:64, 0:64] = 7
    assert any("nobody wrote" in p for p in order_problems(final, [a, b]))
    final = np.full(SHAPE, FILL)
    final[100, 100] = 101
    assert "cells outside every update changed" in order_problems(final, [a])
