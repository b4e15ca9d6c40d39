"""A watchdog that ends a background child session when the process that started it dies.

``python orphan_watch.py PARENT PGID FOLDER`` asks the kernel for SIGTERM when its parent dies
(``prctl(PR_SET_PDEATHSIG)``, Linux), then waits for a signal.  On SIGTERM it kills the process
group ``PGID`` (the child and every process that stayed in its group; one that started a session
of its own, such as a CLI cluster's scheduler, is not reached) and removes ``FOLDER``.  The
parent stops it with SIGKILL when it ends the child itself, so the watchdog then does nothing.

:func:`watch` starts it.  It exists because a parent killed by SIGKILL runs no cleanup: without
it the child would run to its end and leave ``FOLDER`` behind.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1
READY = b"watching\n"


def watch(child_pgid: int, folder: Path) -> subprocess.Popen[bytes]:
    """Start the watchdog of the session ``child_pgid`` for this process; return once it watches."""
    proc = subprocess.Popen(
        [sys.executable, __file__, str(os.getpid()), str(child_pgid), str(folder)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # (the watchdog holds its death signal before it says so)
    proc.stdout.close()
    if line != READY:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"the orphan watchdog did not start (it said {line!r})")
    return proc


def _state_and_group(process: Path) -> tuple[str, int] | None:
    """The state letter and process group of the ``/proc/<pid>`` entry ``process`` (None: gone)."""
    try:
        fields = (process / "stat").read_text().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return fields[0], int(fields[2])


def live(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (Linux ``/proc``)."""
    found = _state_and_group(Path(f"/proc/{pid}"))
    return found is not None and found[0] != "Z"


def _live_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        found = _state_and_group(entry) if entry.name.isdigit() else None
        if found is not None and found[1] == pgid and found[0] != "Z":
            members.append(int(entry.name))
    return members


def _end(pgid: int, folder: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # until no live process of the group is left
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            break
        if not _live_members(pgid):  # (zombies count as members until someone reaps them)
            break
        time.sleep(0.05)
    shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str]) -> int:
    """Watch, as the module docstring says; ``argv`` is PARENT PGID FOLDER."""
    parent, pgid, folder = int(argv[0]), int(argv[1]), Path(argv[2])
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        print(f"prctl failed: {os.strerror(ctypes.get_errno())}", flush=True)
        return 1
    sys.stdout.buffer.write(READY)
    sys.stdout.flush()
    if os.getppid() == parent:  # (else the parent died before the request: end now)
        signal.sigwait({signal.SIGTERM})
    _end(pgid, folder)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
