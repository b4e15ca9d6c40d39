"""Shared pieces of the stress tests (imported by their conftest and test modules)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deker.storage import atomic
from deker.storage.lockinfo import CREATION_LOCK_EXT, READ_LOCK_EXT, VARRAY_LOCK_EXT

__all__ = ["Budget", "Summary", "leftover_lock_files"]


@dataclass
class Budget:
    """How long a stress test runs."""

    soak: bool
    seconds: float
    cap: float | None = None  # ``--stress-cap``: shorter loops in CI mode (the counts they assert stay)

    def scaled(self, short: float) -> float:
        """``short`` seconds in CI (at most ``cap``), the soak duration with ``--soak``."""
        if self.soak:
            return self.seconds
        return short if self.cap is None else min(short, self.cap)


@dataclass
class Summary:
    """What a stress run did; printed at the end (``-s`` shows it) and kept as a test property."""

    name: str
    started: float = field(default_factory=time.monotonic)
    values: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        took = time.monotonic() - self.started
        return f"STRESS {self.name}: " + json.dumps({**self.values, "seconds": round(took, 1)})


def leftover_lock_files(root: Path) -> list[Path]:
    """Markers, creation locks, temporary files and journals under ``root`` (mutexes are kept)."""
    found = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if name.endswith((READ_LOCK_EXT, VARRAY_LOCK_EXT, CREATION_LOCK_EXT)):
                found.append(Path(dirpath) / name)
    found += [item.path for item in atomic.find_leftovers(root)]
    return sorted(found)
