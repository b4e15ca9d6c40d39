"""Concurrency torture test: many processes update, clear and read one VArray at once.

Every tile (8 x 16 cells) is made of two halves ("groups", 4 rows each).  Writers write whole
tiles or whole halves with a value unique to the operation (writer number and sequence), and
clear whole tiles (their files are deleted) or halves; they read group-aligned regions.  Each
operation is logged by its process with the times (``CLOCK_MONOTONIC``, shared by all
processes) at which it started and returned.  Those intervals order the operations that do not
overlap; the checks are linearizability checks over them:

* no operation fails (locks wait; nothing times out);
* a group never reads as a mix of values (no torn write), and a tile never shows a half from
  an operation that was already overwritten by a whole-tile write it saw the other half of;
* every value a read returned was possibly current at some instant of the read: written by an
  operation that started before the read ended and not overwritten by an operation that ran
  entirely between the two;
* at the end every group holds the value of an acknowledged operation that no later
  acknowledged operation on that group replaced (or fill), so every acknowledged write is
  visible unless a later one replaced it;
* no marker, creation lock, temporary file or journal is left behind.
"""

from __future__ import annotations

import bisect
import json
import multiprocessing as mp
import random
import time
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from stress_support import Budget, Summary, leftover_lock_files  # type: ignore[import-not-found]

from deker import AttributeSchema, Client, DimensionSchema, VArraySchema

pytestmark = pytest.mark.timeout(3600)

CTX = mp.get_context("forkserver")
CTX.set_forkserver_preload(["deker", "numpy", "h5py"])

TILE = (8, 16)
HALF = 4
GRID = (3, 3)
SHAPE = (TILE[0] * GRID[0], TILE[1] * GRID[1])
GROUP_ROWS = SHAPE[0] // HALF  # group row index = tile row * 2 + half
FILL = -1

Group = tuple[int, int]  # (group row, tile column)


# --------------------------------------------------------------------------- the workers


def _rect(rng: random.Random, n: int) -> tuple[int, int]:
    a = rng.randrange(n)
    return a, min(n - 1, a + rng.choice((0, 0, 1)))


def _choose(rng: random.Random) -> list[Any]:
    kind = rng.choices(
        ["write_tiles", "write_half", "clear_tiles", "clear_half", "read"], weights=[30, 25, 8, 7, 30]
    )[0]
    if kind in ("write_tiles", "clear_tiles"):
        return [kind, *_rect(rng, GRID[0]), *_rect(rng, GRID[1])]
    if kind in ("write_half", "clear_half"):
        return [kind, rng.randrange(GROUP_ROWS), *_rect(rng, GRID[1])]
    return [kind, *_rect(rng, GROUP_ROWS), *_rect(rng, GRID[1])]


def _region(op: list[Any]) -> tuple[slice, slice]:
    kind = op[0]
    if kind in ("write_tiles", "clear_tiles"):
        _, r0, r1, c0, c1 = op
        rows = slice(r0 * TILE[0], (r1 + 1) * TILE[0])
    elif kind in ("write_half", "clear_half"):
        _, g, c0, c1 = op
        rows = slice(g * HALF, (g + 1) * HALF)
    else:
        _, g0, g1, c0, c1 = op
        rows = slice(g0 * HALF, (g1 + 1) * HALF)
    return rows, slice(c0 * TILE[1], (c1 + 1) * TILE[1])


def _groups(op: list[Any]) -> list[Group]:
    rows, cols = _region(op)
    return [
        (g, c)
        for g in range(rows.start // HALF, rows.stop // HALF)
        for c in range(cols.start // TILE[1], cols.stop // TILE[1])
    ]


def _observe(block: np.ndarray, rows: slice, cols: slice) -> list[list[Any]]:
    """Per group of a read block: its value, or None when the group holds a mix."""
    out = []
    for g in range(rows.start // HALF, rows.stop // HALF):
        for c in range(cols.start // TILE[1], cols.stop // TILE[1]):
            r = (g * HALF - rows.start, c * TILE[1] - cols.start)
            cells = block[r[0] : r[0] + HALF, r[1] : r[1] + TILE[1]]
            uniq = np.unique(cells)
            out.append([g, c, int(uniq[0]) if len(uniq) == 1 else None])
    return out


def torture_worker(
    root: str,
    index: int,
    seed: int,
    seconds: float,
    log_path: str,
    ready: Any,
    go: Any,
    scheduler: str | None,
) -> None:
    """Run random operations for ``seconds`` and log each one (one JSON line per operation).

    With ``scheduler`` (a Dask scheduler address) the tile tasks run on that cluster's workers.
    """
    rng = random.Random(seed)
    executor = None
    if scheduler is not None:
        import distributed

        executor = distributed.Client(scheduler, set_as_default=False)
    settings: dict[str, Any] = {"executor": executor} if executor is not None else {"workers": 2}
    with Client(
        f"file://{root}", write_lock_timeout=600, write_lock_check_interval=0.02, **settings
    ) as client:
        varr = client.get_collection("t").filter({"name": "v"}).last()  # type: ignore[union-attr]
        ready.set()
        go.wait(60)
        end = time.monotonic() + seconds
        seq = 0
        with open(log_path, "w") as log:
            while time.monotonic() < end:
                seq += 1
                op = _choose(rng)
                value = (index + 1) * 1_000_000 + seq
                rows, cols = _region(op)
                entry: dict[str, Any] = {"op": op, "value": value, "writer": index}
                t0 = time.monotonic_ns()
                try:
                    if op[0].startswith("write"):
                        varr[rows, cols].update(
                            np.full((rows.stop - rows.start, cols.stop - cols.start), value)
                        )
                    elif op[0].startswith("clear"):
                        varr[rows, cols].clear()
                    else:
                        entry["seen"] = _observe(varr[rows, cols].read(), rows, cols)
                except Exception as exc:  # logged: the parent fails the test with it
                    entry["error"] = repr(exc)
                    entry["trace"] = traceback.format_exc()
                entry["t0"], entry["t1"] = t0, time.monotonic_ns()
                log.write(json.dumps(entry) + "\n")
                log.flush()


# --------------------------------------------------------------------------- the checks


@dataclass(frozen=True)
class Write:
    value: int  # FILL for clears
    t0: int
    t1: int
    groups: frozenset[Group]
    whole_tiles: bool


class GroupHistory:
    """The acknowledged writes and clears of one group, indexed for the checks."""

    def __init__(self, writes: list[Write]) -> None:
        self.by_value = {w.value: w for w in writes if w.value != FILL}
        self.clears = [w for w in writes if w.value == FILL]
        ordered = sorted(writes, key=lambda w: w.t1)
        self.ends = [w.t1 for w in ordered]
        self.latest_start: list[int] = []  # max t0 of the writes ending at or before ends[i]
        best = -1
        for w in ordered:
            best = max(best, w.t0)
            self.latest_start.append(best)

    def _barrier(self, r0: int) -> int:
        """The latest start of a write that ended before ``r0`` (-1 if none)."""
        i = bisect.bisect_left(self.ends, r0)
        return self.latest_start[i - 1] if i else -1

    def possible(self, value: int, r0: int, r1: int) -> bool:
        """Whether the group may hold ``value`` at some instant of ``[r0, r1]``.

        A source write (or clear, or the initial fill for FILL) qualifies if it started before
        the read ended and no write ran entirely between its end and the read's start.
        """
        barrier = self._barrier(r0)
        if value == FILL:
            return barrier < 0 or any(w.t0 < r1 and w.t1 >= barrier for w in self.clears)
        w = self.by_value.get(value)
        return w is not None and w.t0 < r1 and w.t1 >= barrier


def _overlaps(writes: list[Write]) -> int:
    """How many pairs of ``writes`` ran at the same time."""
    starts = sorted(w.t0 for w in writes)
    return sum(bisect.bisect_left(starts, w.t1) - bisect.bisect_right(starts, w.t0) for w in writes)


def _torn_tile(seen: dict[Group, int], by_value: dict[int, Write]) -> list[str]:
    """Halves of one tile seen together that no single instant can explain."""
    problems = []
    for (g, c), va in seen.items():
        other = (g ^ 1, c)
        if other not in seen or va not in by_value:
            continue
        a = by_value[va]
        vb = seen[other]
        if vb == va or vb not in by_value or not a.whole_tiles:
            continue
        b = by_value[vb]
        if b.t1 < a.t0:  # a covered both halves and started after b ended: b cannot show
            problems.append(f"tile {(g // 2, c)} shows {va} and the older {vb} together")
    return problems


def _check(entries: list[dict[str, Any]], final: np.ndarray, end_ns: int) -> tuple[list[str], Counter[str]]:
    problems: list[str] = []
    stats: Counter[str] = Counter()
    per_group: dict[Group, list[Write]] = defaultdict(list)
    by_value: dict[int, Write] = {}
    reads = []
    for e in entries:
        stats[e["op"][0]] += 1
        if "error" in e:
            problems.append(f"{e['op']} by writer {e['writer']} failed: {e['error']}\n{e.get('trace', '')}")
            continue
        if e["op"][0] == "read":
            reads.append(e)
            continue
        value = e["value"] if e["op"][0].startswith("write") else FILL
        w = Write(
            value, e["t0"], e["t1"], frozenset(map(tuple, _groups(e["op"]))), e["op"][0].endswith("tiles")
        )
        if value != FILL:
            by_value[value] = w
        for g in w.groups:
            per_group[g].append(w)
    histories = defaultdict(lambda: GroupHistory([]), {g: GroupHistory(ws) for g, ws in per_group.items()})
    for e in reads:
        seen: dict[Group, int] = {}
        for g, c, value in e["seen"]:
            if value is None:
                problems.append(
                    f"read {e['op']} by writer {e['writer']} saw a mix of values in group {(g, c)}"
                )
                continue
            seen[(g, c)] = value
            if value != FILL and value not in by_value:
                problems.append(f"read {e['op']} saw {value}, which no acknowledged write wrote")
            elif not histories[(g, c)].possible(value, e["t0"], e["t1"]):
                problems.append(f"read {e['op']} saw {value} in group {(g, c)}, overwritten before the read")
        problems += [f"read {e['op']}: {p}" for p in _torn_tile(seen, by_value)]
    final_seen = {}
    for g, c, value in _observe(final, slice(0, SHAPE[0]), slice(0, SHAPE[1])):
        if value is None:
            problems.append(f"final content of group {(g, c)} is a mix")
            continue
        final_seen[(g, c)] = value
        if not histories[(g, c)].possible(value, end_ns, end_ns):
            problems.append(f"final content {value} of group {(g, c)} is not the last acknowledged write")
    problems += [f"final: {p}" for p in _torn_tile(final_seen, by_value)]
    stats["overlapping pairs"] = sum(_overlaps(ws) for ws in per_group.values())
    return problems, stats


# --------------------------------------------------------------------------- the test


def test_concurrent_writers_clears_and_readers(
    tmp_path: Path, budget: Budget, summary: Summary, dask_scheduler: str | None
) -> None:
    """Writer 0 runs its tile tasks on the session's Dask cluster (when distributed is installed)."""
    root = tmp_path / "storage"
    writers = 6 if budget.soak else 4
    seconds = budget.scaled(20.0)
    with Client(f"file://{root}") as client:
        schema = VArraySchema(
            dtype=np.int64,
            fill_value=FILL,
            dimensions=[DimensionSchema("y", SHAPE[0]), DimensionSchema("x", SHAPE[1])],
            arrays_shape=TILE,
            attributes=[AttributeSchema("name", str, primary=True)],
        )
        client.create_collection("t", schema).create({"name": "v"})
    go = CTX.Event()
    procs, readies, logs = [], [], []
    for i in range(writers):
        ready = CTX.Event()
        log = tmp_path / f"log{i}.jsonl"
        args = (str(root), i, 1000 + i, seconds, str(log), ready, go, dask_scheduler if i == 0 else None)
        proc = CTX.Process(target=torture_worker, args=args)
        proc.start()
        procs.append(proc)
        readies.append(ready)
        logs.append(log)
    for ready in readies:
        assert ready.wait(120), "a worker did not start"
    go.set()
    for proc in procs:
        proc.join(seconds + 600)
        assert proc.exitcode == 0, f"worker exit code {proc.exitcode}"
    end_ns = time.monotonic_ns()
    with Client(f"file://{root}") as client:
        final = client.get_collection("t").filter({"name": "v"}).last()[:].read()  # type: ignore[union-attr]
    entries = [json.loads(line) for log in logs for line in log.read_text().splitlines()]
    problems, stats = _check(entries, final, end_ns)
    leftovers = leftover_lock_files(root)
    summary.values.update(
        writers=writers,
        dask_writer=dask_scheduler is not None,
        operations=len(entries),
        problems=len(problems),
        leftovers=len(leftovers),
        **stats,
    )
    assert stats["read"] > 0 and stats["write_tiles"] > 0 and stats["write_half"] > 0
    assert stats["overlapping pairs"] > 0  # the operations really competed
    assert problems == [], "\n".join(problems[:30])
    assert leftovers == []


def test_the_checker_catches_what_it_must(tmp_path: Path) -> None:
    """The linearizability checks fail on histories a broken storage would produce."""
    w1 = {"op": ["write_tiles", 0, 0, 0, 0], "value": 1_000_001, "writer": 0, "t0": 10, "t1": 20}
    w2 = {"op": ["write_tiles", 0, 0, 0, 0], "value": 2_000_001, "writer": 1, "t0": 30, "t1": 40}
    half = {"op": ["write_half", 0, 0, 0], "value": 3_000_001, "writer": 2, "t0": 50, "t1": 60}
    final = np.full(SHAPE, FILL, dtype=np.int64)
    final[0:8, 0:16] = 2_000_001
    assert _check([w1, w2], final, 100)[0] == []
    lost = final.copy()
    lost[0:8, 0:16] = 1_000_001  # w2 was acknowledged after w1 ended: w1 cannot be the last
    assert "not the last acknowledged write" in _check([w1, w2], lost, 100)[0][0]
    torn = final.copy()
    torn[4:8, 0:16] = 1_000_001  # the bottom half of w2 missing
    assert any("older" in p for p in _check([w1, w2], torn, 100)[0])
    mixed = final.copy()
    mixed[0, 0] = 1_000_001
    assert "mix" in _check([w1, w2], mixed, 100)[0][0]
    stale = {
        "op": ["read", 0, 1, 0, 0],
        "writer": 3,
        "t0": 70,
        "t1": 80,
        "seen": [[0, 0, 1_000_001], [1, 0, 2_000_001]],
    }
    assert any("overwritten before the read" in p for p in _check([w1, w2, stale], final, 100)[0])
    ok_read = {**stale, "seen": [[0, 0, 3_000_001], [1, 0, 2_000_001]]}
    final2 = final.copy()
    final2[0:4, 0:16] = 3_000_001
    assert _check([w1, w2, half, ok_read], final2, 100)[0] == []
    failed = {**w1, "error": "DekerLockError('...')"}
    assert "failed" in _check([failed], np.full(SHAPE, FILL, dtype=np.int64), 100)[0][0]
