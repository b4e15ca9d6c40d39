"""Hosts simulated on one machine: a ``dask scheduler`` and ``dask worker`` processes started from
the tests, each worker optionally in its own mount and PID namespaces.

A namespaced worker (``unshare --mount --pid --fork --mount-proc``, root only) is as close to
another host as one machine gets:

- it sees the storage at another path (a bind mount inside its namespace) and finds it through
  ``DEKER_ROOT_MAP``; the coordinator's path is an empty tmpfs there, so a task that used the
  coordinator's path would find nothing;
- its PID is the coordinator's PID (``/proc/sys/kernel/ns_last_pid`` of its namespace is set just
  before it starts): anything that compares PIDs across hosts goes wrong;
- or, for the failed-mount case, it sees an empty tmpfs at the storage path and no map at all.

Workers run without a nanny (``--no-nanny``): the process a test kills is the worker itself, and
the test starts a replacement when it needs one.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from dask_helpers import BlockTask, wait_for
from distributed import Client as DaskClient
from storage_helpers.cli_cluster import dask_command, scheduler_address, stop_process

HERE = Path(__file__).resolve().parent


def namespaces_unavailable() -> str | None:
    """Why workers cannot get their own namespaces here (None: they can)."""
    if os.geteuid() != 0:
        return "workers in their own mount and PID namespaces need root (unshare, mount)"
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "unshare or mount is not installed"
    probe = subprocess.run(
        ["unshare", "--mount", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        return f"unshare --mount --pid fails here: {probe.stderr.strip()}"
    return None


@dataclass
class Worker:
    """One worker process (and, namespaced, the ``unshare`` process around it)."""

    name: str
    proc: subprocess.Popen[bytes]
    namespaced: bool
    log: Any

    def host_pid(self) -> int:
        """The worker's PID as this (the coordinator's) PID namespace sees it."""
        if not self.namespaced:
            return self.proc.pid

        def find() -> int | None:
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(self.proc.pid).children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        if "worker" in child.cmdline() and child.name() != "sh":
                            return child.pid
            return None

        found: int = wait_for(find, f"the process of worker {self.name}")
        return found


@dataclass
class HostCluster:
    """A scheduler and workers on 127.0.0.1, started as separate processes."""

    base: Path
    namespaced: bool
    client: Any = None
    workers: dict[str, Worker] = field(default_factory=dict)
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _logs: list[Any] = field(default_factory=list)
    _count: int = 0

    @property
    def scheduler_file(self) -> Path:
        return self.base / "scheduler.json"

    def start(self) -> HostCluster:
        log = open(self.base / "scheduler.log", "wb")  # noqa: SIM115 - closed in close()
        self._logs.append(log)
        proc = subprocess.Popen(
            dask_command(
                "scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address", "127.0.0.1:0",
                "--scheduler-file", str(self.scheduler_file),
            ),
            stdout=log, stderr=subprocess.STDOUT, cwd=self.base, start_new_session=True,
        )  # fmt: skip
        self._procs.append(proc)
        wait_for(lambda: scheduler_address(self.scheduler_file) or proc.poll() is not None, "the scheduler")
        assert proc.poll() is None, (self.base / "scheduler.log").read_text()
        self.client = DaskClient(scheduler_file=str(self.scheduler_file), set_as_default=False, timeout=60)
        return self

    def add_worker(
        self,
        *,
        storage: Path | None = None,
        view: Path | None = None,
        hide: Path | None = None,
        pid: int | None = None,
        env: dict[str, str] | None = None,
    ) -> Worker:
        """Start a worker and wait until the scheduler knows it.

        Namespaced only: ``storage`` is bind-mounted at ``view`` (and ``DEKER_ROOT_MAP`` maps
        ``storage`` to ``view``); ``hide`` gets an empty tmpfs over it; the worker gets PID ``pid``.
        ``env`` adds environment variables (e.g. ``DEKER_ROOT_MAP`` for a plain worker).
        """
        self._count += 1
        name = f"w{self._count}"
        command = dask_command(
            "worker", str(scheduler_address(self.scheduler_file)), "--no-nanny", "--nthreads", "1",
            "--name", name, "--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0",
            "--memory-limit", "0", "--local-directory", str(self.base / "workers" / name),
            "--death-timeout", "60",
        )  # fmt: skip
        environ = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
            **(env or {}),
        }
        if self.namespaced:
            lines = ["set -e"]
            if storage is not None and view is not None:
                view.mkdir(parents=True, exist_ok=True)
                lines.append(f"mount --bind {shlex.quote(str(storage))} {shlex.quote(str(view))}")
                environ["DEKER_ROOT_MAP"] = f"{storage}={view}"
            if hide is not None:
                lines.append(f"mount -t tmpfs deker-empty {shlex.quote(str(hide))}")
            if pid is not None:  # the next process of this namespace gets ``pid``
                lines.append(f"echo {pid - 1} > /proc/sys/kernel/ns_last_pid")
            lines.append(f"{shlex.join(command)} &")  # a child of sh: the PID set just above
            lines.append("wait $!")
            argv = ["unshare", "--mount", "--pid", "--fork", "--mount-proc", "sh", "-c", "\n".join(lines)]
        else:
            argv = command
        log = open(self.base / f"{name}.log", "wb")  # noqa: SIM115 - closed in close()
        self._logs.append(log)
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=environ, cwd=self.base, start_new_session=True
        )
        self._procs.append(proc)
        worker = Worker(name, proc, self.namespaced, log)

        def joined() -> bool:
            if proc.poll() is not None:
                raise AssertionError((self.base / f"{name}.log").read_text())
            infos = self.client.scheduler_info(n_workers=-1)["workers"].values()
            return any(info.get("name") == name for info in infos)

        wait_for(joined, f"worker {name} to join")
        self.workers[name] = worker
        return worker

    def address_of(self, name: str) -> str:
        for address, info in self.client.scheduler_info(n_workers=-1)["workers"].items():
            if info.get("name") == name:
                return str(address)
        raise KeyError(name)

    def kill(self, name: str) -> None:
        """SIGKILL a worker process and wait until the scheduler has removed it."""
        worker = self.workers.pop(name)
        address = self.address_of(name)
        os.kill(worker.host_pid(), signal.SIGKILL)
        wait_for(
            lambda: address not in self.client.scheduler_info(n_workers=-1)["workers"], "the worker's removal"
        )
        stop_process(worker.proc)

    def stop_worker(self, name: str) -> None:
        worker = self.workers.pop(name)
        stop_process(worker.proc)
        wait_for(lambda: self._absent(name), f"worker {name} to leave")

    def _absent(self, name: str) -> bool:
        infos = self.client.scheduler_info(n_workers=-1)["workers"].values()
        return not any(info.get("name") == name for info in infos)

    def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()
        for proc in reversed(self._procs):
            stop_process(proc)
        for log in self._logs:
            log.close()


def kill_during(
    cluster: HostCluster, action: Callable[[], None], hook: Path, prefix: str = "write_piece"
) -> BaseException | None:
    """Run ``action`` (a VArray update) in a thread; SIGKILL the worker that starts its first
    task whose key begins with ``prefix`` (frozen there by :class:`~dask_helpers.BlockTask`);
    return what the action raised."""
    hook.mkdir()
    client = cluster.client
    client.register_plugin(BlockTask(str(hook), prefix), name="block-write")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            action()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        victim = wait_for(
            lambda: (hook / "blocked0").exists() and (hook / "blocked0").read_text(), "a blocked tile task"
        )
        cluster.kill(victim)
    finally:
        thread.join(240)
        client.unregister_worker_plugin("block-write")
    assert not thread.is_alive()
    return errors[0] if errors else None
