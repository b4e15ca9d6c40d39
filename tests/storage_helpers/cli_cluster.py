"""A Dask cluster started as a user would: ``dask scheduler`` and ``dask worker`` subprocesses.

Both listen on 127.0.0.1 only and lead their own sessions (stopped with their children).  The
workers get ``tests/`` on their ``PYTHONPATH`` so that test plugins
(:mod:`storage_helpers.dask_hooks`) can be registered on them; nothing is preloaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def dask_command(*args: str) -> list[str]:
    """The ``dask`` command of this interpreter's environment."""
    exe = Path(sys.executable).parent / "dask"
    if exe.exists():
        return [str(exe), *args]
    found = shutil.which("dask")
    return [found, *args] if found else [sys.executable, "-m", "dask", *args]


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process we started, and its children (it leads its own session)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


def scheduler_address(path: Path) -> str:
    """The address in a complete scheduler file ("" while it is missing or being written)."""
    try:
        return str(json.loads(path.read_text()).get("address", ""))
    except (FileNotFoundError, ValueError):
        return ""


@contextlib.contextmanager
def cli_cluster(base: Path, nworkers: int = 2, nthreads: int = 1) -> Iterator[str]:
    """Start a scheduler and ``nworkers`` workers under ``base``; yield the scheduler address."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
    }
    scheduler_file = base / "scheduler.json"
    procs: list[subprocess.Popen[bytes]] = []
    with open(base / "scheduler.log", "wb") as slog, open(base / "workers.log", "wb") as wlog:
        try:
            procs.append(
                subprocess.Popen(
                    dask_command(
                        "scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address",
                        "127.0.0.1:0", "--scheduler-file", str(scheduler_file),
                    ),
                    stdout=slog, stderr=subprocess.STDOUT, env=env, cwd=base, start_new_session=True,
                )
            )  # fmt: skip
            deadline = time.monotonic() + 60
            while not scheduler_address(scheduler_file):
                if procs[0].poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((base / "scheduler.log").read_text())
                time.sleep(0.05)
            procs.append(
                subprocess.Popen(
                    dask_command(
                        "worker", "--scheduler-file", str(scheduler_file), "--nworkers", str(nworkers),
                        "--nthreads", str(nthreads), "--host", "127.0.0.1", "--dashboard-address",
                        "127.0.0.1:0", "--memory-limit", "0", "--local-directory", str(base / "workers"),
                        "--death-timeout", "60",
                    ),
                    stdout=wlog, stderr=subprocess.STDOUT, env=env, cwd=base, start_new_session=True,
                )
            )  # fmt: skip
            yield scheduler_address(scheduler_file)
        finally:
            for proc in reversed(procs):
                stop_process(proc)
