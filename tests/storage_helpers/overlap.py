"""How many calls run at once: a probe for the runner's cap on parallel tasks.

``probe = Overlap(expect, hold)``; calls of :func:`overlapping` (or of a wrapper that calls
:meth:`Overlap.inside_while`) count themselves in and out, and ``probe.most`` is the most that
were inside at once.  Each call waits until ``expect`` calls have come in (so ``expect`` at once
is certain wherever the runner allows it), then up to ``hold`` seconds for more than ``expect``
to have been inside at once (so a runner that lets more in shows it at once, and the calls
after it go on without waiting).  No sleep decides anything: the waits end on the counts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class Overlap:
    """Counts the calls inside at once (``most``); see the module's docstring."""

    def __init__(self, expect: int, hold: float) -> None:
        self.cond = threading.Condition()
        self.expect, self.hold = expect, hold
        self.inside = self.entered = self.most = 0

    def inside_while(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Count this call in, wait as the module's docstring says, run ``fn(*args)``, count out."""
        with self.cond:
            self.inside += 1
            self.entered += 1
            self.most = max(self.most, self.inside)
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.entered >= self.expect, timeout=30)
            self.cond.wait_for(lambda: self.most > self.expect, timeout=self.hold)
        try:
            return fn(*args)
        finally:
            with self.cond:
                self.inside -= 1


def overlapping(i: int, probe: Overlap) -> int:
    """Return ``i``, counted by ``probe`` (module-level: a task function)."""
    return int(probe.inside_while(int, i))
