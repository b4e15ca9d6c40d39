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
proof (none of them may depend on the machine being idle).  The child runs in a session of its
own, ended with the parent's session; a watchdog ends it too when the parent dies by SIGKILL
(:func:`spawn_session`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from storage_helpers import orphan_watch

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
    watchdog: subprocess.Popen[bytes]

    def stop_watching(self) -> None:
        """Stop the watchdog (at once when the child ended: its pid may then name another group)."""
        if self.watchdog.poll() is None:
            self.watchdog.kill()
            self.watchdog.wait()


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
    proc, watchdog = spawn_session(cmd, work, log, {**os.environ, "DEKER_LOCK_PRIMITIVE": "posix"})
    child = config.stash[_CHILD] = _Child(proc, log, watchdog)

    def stop() -> None:  # the session ends (or is interrupted) before the test took the verdict
        child.stop_watching()
        _kill(proc)
        shutil.rmtree(work, ignore_errors=True)

    config.add_cleanup(stop)


def spawn_session(
    cmd: list[str], work: Path, log: Path, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    """Start ``cmd`` in a session of its own, its output in ``log``, and its orphan watchdog.

    The child's helpers and clusters are in its process group, so killing the group ends them
    (all but those that start a session of their own and end with their test).  The session
    ends in the parent's cleanup; if the parent dies without one (SIGKILL), the watchdog
    (:mod:`storage_helpers.orphan_watch`) ends it and removes ``work``.
    Returns the child and the watchdog.
    """
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        watchdog = orphan_watch.watch(proc.pid, work)
    except BaseException:
        _kill(proc)
        raise
    return proc, watchdog


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
    child.stop_watching()
    output = child.log.read_text(errors="replace")
    tail = "\n".join(output.splitlines()[-60:])
    assert returncode == 0, (
        f"lock tests failed under DEKER_LOCK_PRIMITIVE=posix (status {returncode}):\n{tail}"
    )
    assert " passed" in output, tail


_SPAWNER = """
import subprocess, sys, time
helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(helper.pid))
import os; os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(600)
"""

_PARENT = """
import sys, time
from pathlib import Path
sys.path[:0] = [sys.argv[1]]
from test_scenarios_posix_locks import spawn_session
work = Path(sys.argv[2])
cmd = [sys.executable, "-c", sys.argv[3], str(work / "helper.pid")]
child, dog = spawn_session(cmd, work, work / "out.txt", {})
print(child.pid, dog.pid, flush=True)
time.sleep(600)
"""


def _wait_for(what: str, done: Any, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, f"{what}: not within {seconds} s"
        time.sleep(0.05)


def test_a_parent_killed_by_sigkill_takes_the_background_session_and_its_folder_with_it(
    tmp_path: Path,
) -> None:
    """The parent's cleanup never runs under SIGKILL: the watchdog ends the child's session."""
    work = tmp_path / "work"
    work.mkdir()
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, str(ROOT / "tests"), str(work), _SPAWNER],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    started: list[int] = []  # (killed if the test fails: on success they are gone, their pids free)
    try:
        assert parent.stdout is not None
        child, watchdog = (int(pid) for pid in parent.stdout.readline().split())
        started += [child, watchdog]
        _wait_for("the child's helper started", (work / "helper.pid").exists)
        helper = int((work / "helper.pid").read_text())
        started.append(helper)
        assert orphan_watch.live(child) and orphan_watch.live(helper)
        parent.kill()
        parent.wait()
        _wait_for(
            "the child's session ended",
            lambda: not orphan_watch.live(child) and not orphan_watch.live(helper),
        )
        _wait_for("the work folder was removed", lambda: not work.exists())
        _wait_for("the watchdog ended", lambda: not orphan_watch.live(watchdog))
        started.clear()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)
        parent.wait()
        for pid in started:  # the child's group too (its helper), and the watchdog
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
