"""The lock, scenario and stress tests again, with the lock protocol on POSIX record locks.

A Linux NFS client turns ``flock`` into POSIX record locks: they belong to the process, and
closing any descriptor of a file drops them all.  ``DEKER_LOCK_PRIMITIVE=posix`` makes deker
use exactly that primitive on a local filesystem, so this module re-runs the lock tests in a
child pytest with ``--lock-primitive=posix`` (timed stress loops capped at a few seconds each).  Inside such
a run (or with ``--lock-primitive`` given) it skips itself: the run already is the proof.

The child starts as soon as the session knows it will run this test (:func:`start_child`,
called by ``tests/conftest.py`` after collection), and works beside the rest of the suite: most
of the suite waits on other processes, locks and clusters, so the two share the machine's
cores instead of running one after the other.  The test then waits for the child's verdict.
That the lock tests pass on a machine busy with the other half of the suite is part of the
proof (none of them may depend on the machine being idle).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
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
CHILD_SECONDS = 540  # the child's whole run, at the most


@dataclass
class _Child:
    proc: subprocess.Popen[bytes]
    log: Path


_CHILD = pytest.StashKey[_Child]()


def _skip_reason(config: pytest.Config) -> str | None:
    if config.getoption("--lock-primitive") or os.environ.get("DEKER_LOCK_PRIMITIVE"):
        return "this run already uses a chosen lock primitive"
    if config.getoption("--soak"):
        return "soak runs give the posix run their own command line (--lock-primitive=posix)"
    return None


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill the child and every process of its session, if it still runs."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def start_child(config: pytest.Config) -> None:
    """Start the posix run in the background, once, unless the test would skip itself."""
    if _skip_reason(config) is not None or _CHILD in config.stash:
        return
    work = Path(tempfile.mkdtemp(prefix="deker-posix-run-"))
    log = work / "output.txt"
    cmd = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--lock-primitive=posix",
        f"--stress-cap={STRESS_SECONDS}", f"--basetemp={work / 'run'}", *MODULES,
    ]  # fmt: skip
    env = {**os.environ, "DEKER_LOCK_PRIMITIVE": "posix"}
    with log.open("wb") as out:  # (a session of its own: its helpers and clusters go with it)
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    config.stash[_CHILD] = _Child(proc, log)

    def stop() -> None:  # the session ends (or is interrupted) before the test took the verdict
        _kill(proc)
        shutil.rmtree(work, ignore_errors=True)

    config.add_cleanup(stop)


@pytest.mark.timeout(600)
def test_lock_tests_pass_under_posix_locks(request: pytest.FixtureRequest) -> None:
    reason = _skip_reason(request.config)
    if reason is not None:
        pytest.skip(reason)
    start_child(request.config)  # (already running when the session started it after collection)
    child = request.config.stash[_CHILD]
    try:
        returncode = child.proc.wait(timeout=CHILD_SECONDS)
    except subprocess.TimeoutExpired:
        _kill(child.proc)
        returncode = None
    output = child.log.read_text(errors="replace")
    tail = "\n".join(output.splitlines()[-60:])
    assert returncode == 0, (
        f"lock tests failed under DEKER_LOCK_PRIMITIVE=posix (status {returncode}):\n{tail}"
    )
    assert " passed" in output, tail
