"""Disk-full loop: operations on small tmpfs and ext4 filesystems kept full, and injected faults.

Each round runs a batch of operations (tests/storage_helpers/disk_full.py ``fill``) in a child
process on a filesystem that is filled before each operation up to a random amount of free
space: partial, whole, first and scalar updates, partial and whole clears of plain and
gzip-compressed Arrays and VArrays, and collection creations.  After each operation the child
checks that it either succeeded or raised a ``DekerStorageError`` naming the file and the
cause, that every tile reads as before or after it, that every ``.hdf5`` file keeps its
signature, that after the space is freed the next writer succeeds, and that nothing is left
over after ``clear_locks``.  A child that dies (SIGSEGV) counts as a crash.  The second test
injects ``ENOSPC``/``EIO`` at each write step of each operation (any user).

CI: 29 operations per filesystem and a few injected steps; ``--soak``: 203 operations per
filesystem and every step of every operation.  Figures: docs/RELIABILITY.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from stress_support import Budget, Summary  # type: ignore[import-not-found]

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "storage_helpers"))
import disk_full  # type: ignore[import-not-found]
import small_fs  # type: ignore[import-not-found]

pytestmark = pytest.mark.timeout(7200)

ROOT = Path(__file__).resolve().parents[2]
BATCH = 29


def _child(*args: str) -> tuple[int, dict[str, Any]]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(ROOT)) if p)
    proc = subprocess.run(
        [sys.executable, disk_full.__file__, *args], capture_output=True, text=True, env=env, timeout=3600
    )
    lines = proc.stdout.strip().splitlines()
    result: dict[str, Any] = json.loads(lines[-1]) if proc.returncode in (0, 1) and lines else {}
    return proc.returncode, result


def _tally(problems: list[str]) -> dict[str, int]:
    return {
        "corrupted": sum("bad signature" in p or "neither old nor new" in p for p in problems),
        "raw_errors": sum(": raw " in p for p in problems),
        "other_problems": sum(
            not ("bad signature" in p or "neither old nor new" in p or ": raw " in p) for p in problems
        ),
    }


@pytest.mark.parametrize("kind", small_fs.KINDS)
def test_disk_full_loop(kind: str, tmp_path: Path, budget: Budget, summary: Summary) -> None:
    reason = small_fs.cannot_mount(kind)
    if reason:
        pytest.skip(reason)
    names = list(disk_full.cases())
    rounds = 7 if budget.soak else 1
    crashes = operations = failed = 0
    problems: list[str] = []
    with small_fs.mounted(kind, tmp_path) as mnt:
        for seed in range(rounds):
            order = names[seed % len(names) :] + names[: seed % len(names)]
            status, result = _child("fill", str(mnt), ",".join(order[:BATCH]), str(seed))
            if status not in (0, 1):
                crashes += 1
                continue
            operations += result["operations"]
            failed += result["failed"]
            problems += result["problems"]
    summary.values.update(
        filesystem=kind, operations=operations, failed_for_space=failed, crashes=crashes, **_tally(problems)
    )
    assert crashes == 0
    assert problems == []
    assert failed, "the filesystem was never full"


def test_injected_fault_every_step(tmp_path: Path, budget: Budget, summary: Summary) -> None:
    names = (
        list(disk_full.cases())
        if budget.soak
        else ["array-gzip-partial-update", "varray-plain-partial-clear"]
    )
    limit = 0 if budget.soak else 4
    crashes = steps = failures = 0
    problems: list[str] = []
    for code in ("ENOSPC", "EIO"):
        for name in names:
            status, result = _child("inject", name, code, str(tmp_path / f"{name}-{code}"), str(limit))
            if status not in (0, 1):
                crashes += 1
                continue
            steps += result["tried"]
            failures += result["failures"]
            problems += result["problems"]
    summary.values.update(
        operations=len(names) * 2, steps_tried=steps, failed=failures, crashes=crashes, **_tally(problems)
    )
    assert crashes == 0
    assert problems == []
