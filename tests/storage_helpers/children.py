"""A helper process holding a lock (tests/storage_helpers/lock_holder.py), driven line by line."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HELPER = Path(__file__).resolve().parent / "lock_holder.py"


class Child:
    """A helper process holding a lock, driven line by line."""

    def __init__(self, mode: str, **args: Any) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(ROOT)) if p)
        self.proc = subprocess.Popen(
            [sys.executable, str(HELPER), mode, json.dumps(args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put("<EOF>")

    def expect(self, word: str, timeout: float = 15.0) -> str:
        line = self.lines.get(timeout=timeout)
        assert line.startswith(word), line
        return line

    def send(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()

    def release(self) -> float:
        self.send()
        released = time.monotonic()
        self.expect("RELEASED")
        assert self.proc.wait(10) == 0
        return released

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
