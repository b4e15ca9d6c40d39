"""The lock, scenario and stress tests again, with the lock protocol on POSIX record locks.

A Linux NFS client turns ``flock`` into POSIX record locks: they belong to the process, and
closing any descriptor of a file drops them all.  ``DEKER_LOCK_PRIMITIVE=posix`` makes deker
use exactly that primitive on a local filesystem, so this module re-runs the lock tests in a
child pytest with ``--lock-primitive=posix`` (timed stress loops capped at a few seconds each).  Inside such
a run (or with ``--lock-primitive`` given) it skips itself: the run already is the proof.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = [
    "tests/test_storage_locks.py",
    "tests/test_storage_lockinfo.py",
    "tests/test_storage_lockprim.py",
    "tests/dask/test_locks.py",
    "tests/test_scenarios_processes.py",
    "tests/test_scenarios_legacy_locks.py",
    "tests/dask/test_coordinator_death.py",
    "tests/stress",
]
STRESS_SECONDS = 4  # each timed stress loop (CI counts kept); the flock run gives them their CI durations


@pytest.mark.timeout(600)
def test_lock_tests_pass_under_posix_locks(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if request.config.getoption("--lock-primitive") or os.environ.get("DEKER_LOCK_PRIMITIVE"):
        pytest.skip("this run already uses a chosen lock primitive")
    if request.config.getoption("--soak"):
        pytest.skip("soak runs give the posix run their own command line (--lock-primitive=posix)")
    env = {**os.environ, "DEKER_LOCK_PRIMITIVE": "posix"}
    cmd = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--lock-primitive=posix",
        f"--stress-cap={STRESS_SECONDS}", f"--basetemp={tmp_path / 'run'}", *MODULES,
    ]  # fmt: skip
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=540, check=False)
    tail = "\n".join((run.stdout + run.stderr).splitlines()[-60:])
    assert run.returncode == 0, f"lock tests failed under DEKER_LOCK_PRIMITIVE=posix:\n{tail}"
    assert " passed" in run.stdout, tail
