"""A full disk or a failing one (issue 15, case 3): no crash, old-or-new files, clean errors.

Every test runs its operations in a child process (tests/storage_helpers/disk_full.py), so a
crash inside HDF5 (SIGSEGV: what an ENOSPC in a gzip partial update did) fails the test
instead of killing pytest.  Faults are injected at each write call (``OSError(ENOSPC)`` or
``OSError(EIO)``, any user) or come from a small tmpfs or ext4 loop filesystem that is filled
before the operation (root only).  The checks are those of the helper's docstring.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "storage_helpers"))
import disk_full  # type: ignore[import-not-found]
import small_fs  # type: ignore[import-not-found]

ROOT = Path(__file__).resolve().parents[1]
HELPER = Path(disk_full.__file__)

# Steps tried per operation here (spread over all its write calls); the stress test tries all.
STEPS = 8

INJECTED = [
    ("array-gzip-partial-update", "ENOSPC"),  # the crash of the issue
    ("array-gzip-partial-update", "EIO"),
    ("array-gzip-partial-clear", "ENOSPC"),
    ("array-gzip-whole-update", "ENOSPC"),  # a new version written by HDF5
    ("array-plain-partial-update", "ENOSPC"),
    ("array-plain-whole-clear", "EIO"),
    ("array-plain-first-whole-update", "ENOSPC"),  # the template path, in place
    ("varray-gzip-partial-update", "ENOSPC"),
    ("varray-plain-first-whole-update", "EIO"),  # tiles created with their data
    ("create_collection", "ENOSPC"),  # a raw OSError and an orphan <name>.lock before
    ("varray-create", "EIO"),
]


def _child(*args: str, fsync: bool = False) -> dict[str, object]:
    env = dict(os.environ)
    env["DEKER_FSYNC"] = "1" if fsync else "0"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(ROOT)) if p)
    proc = subprocess.run(
        [sys.executable, str(HELPER), *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode in (0, 1), f"the child died (status {proc.returncode}): {proc.stderr[-3000:]}"
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["problems"] == [], result
    return result


@pytest.mark.parametrize(("case", "code"), INJECTED, ids=[f"{c}-{e}" for c, e in INJECTED])
def test_fault_at_each_write_step(case: str, code: str, tmp_path: Path) -> None:
    result = _child("inject", case, code, str(tmp_path), str(STEPS))
    assert result["failures"], "no step failed: the faults were not injected"


@pytest.mark.parametrize("case", ["array-gzip-partial-update", "varray-plain-whole-update"])
def test_fault_at_each_flush(case: str, tmp_path: Path) -> None:
    # with DEKER_FSYNC=1 every step is flushed: an fsync that fails (EIO) is a failed write too
    result = _child("inject", case, "EIO", str(tmp_path), str(STEPS), fsync=True)
    assert result["failures"]


STICKY = ["array-gzip-partial-update", "array-plain-partial-clear", "varray-gzip-whole-update"]


@pytest.mark.parametrize("case", STICKY)
def test_disk_stays_full_during_the_rollback(case: str, tmp_path: Path) -> None:
    # every write after the failing one fails too: the journal (or new version) stays behind,
    # readers see the old version through it, and the next writer or clear_locks rolls it back
    result = _child("inject", case, "ENOSPC", str(tmp_path), str(STEPS), "sticky")
    assert result["failures"]


@pytest.mark.parametrize("kind", small_fs.KINDS)
def test_full_filesystem(kind: str, tmp_path: Path) -> None:
    reason = small_fs.cannot_mount(kind)
    if reason:
        pytest.skip(reason)
    names = list(disk_full.cases())
    with small_fs.mounted(kind, tmp_path) as mnt:
        result = _child("fill", str(mnt), ",".join(names), "15")
    assert result["operations"] == len(names)
    assert result["failed"], "the filesystem was never full"


def test_cases_cover_every_kind_of_write() -> None:
    names = set(disk_full.cases())
    for kind in ("array", "varray"):
        for codec in ("plain", "gzip"):
            for what in (
                "partial-update",
                "whole-update",
                "first-whole-update",
                "partial-clear",
                "whole-clear",
            ):
                assert f"{kind}-{codec}-{what}" in names
    assert {"create_collection", "array-create", "varray-create"} <= names
