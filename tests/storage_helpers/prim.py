"""Kernel-lock helpers for the tests that work under either lock primitive.

``DEKER_LOCK_PRIMITIVE=posix`` runs the lock protocol with POSIX record locks (what an NFS
client does).  Then a test may not open and close a file this process holds locked (that
drops the lock), and a lock taken on another descriptor of this process does not conflict.
So: :func:`seen_locked` looks from a forked child (another process, as another host would),
and :func:`foreign_lock` imitates another process's lock in this one (``flock`` on its own
open file description, or an open-file-description lock ``F_OFD_SETLK``, which conflicts with
POSIX locks even of the same process, and which ``F_GETLK`` reports).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from deker.storage import lockprim
from deker.storage.lockwait import LockSettings, Waiter

_FLOCK_STRUCT = "hhqqi"


def posix() -> bool:
    """Whether the suite runs under the POSIX-lock primitive."""
    return lockprim.primitive() == lockprim.POSIX


def _try_in_child(path: Path, exclusive: bool) -> int:
    try:
        fd = os.open(path, os.O_RDWR if exclusive else os.O_RDONLY)
    except FileNotFoundError:
        return 2
    try:
        op = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        (fcntl.lockf if posix() else fcntl.flock)(fd, op)
    except OSError:
        return 1
    return 0


def seen_locked(path: Path, exclusive: bool = True) -> bool:
    """Whether another process would be refused a lock of that kind on ``path`` now.

    Parameters
    ----------
    path : Path
        An existing file (False if it is missing).
    exclusive : bool, default True
        Try an exclusive lock (refused if any lock is held) or a shared one (refused if an
        exclusive one is held).

    """
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 3
        try:
            code = _try_in_child(path, exclusive)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, 1, 2), f"lock probe child failed with {code}"
    return code == 1


@contextmanager
def foreign_lock(path: Path, exclusive: bool = True) -> Iterator[int]:
    """Hold a lock on ``path`` as another process (deker 1.1.7, another host) would.

    Yields
    ------
    int
        The descriptor holding it (closed on exit).

    """
    fd = os.open(path, os.O_RDWR if exclusive else os.O_RDONLY)
    try:
        if posix():
            kind = fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack(_FLOCK_STRUCT, kind, os.SEEK_SET, 0, 0, 0))
        else:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield fd
    finally:
        os.close(fd)


def refusals_of(path: Path, monkeypatch: Any) -> threading.Event:
    """An event set once this process is refused the lock of ``path`` (someone here waits for it).

    The real :func:`deker.storage.lockprim.hold` runs; the wrapper only watches its answers.
    A waiter keeps no descriptor open between its tries, so this is how a test knows for sure
    that a thread of its process is waiting.
    """
    refused = threading.Event()
    real = lockprim.hold

    def watching(
        target: Path, exclusive: bool, *, create: bool = False, readonly: bool = False
    ) -> lockprim.Hold | None:
        held = real(target, exclusive, create=create, readonly=readonly)
        if held is None and Path(target) == path:
            refused.set()
        return held

    monkeypatch.setattr(lockprim, "hold", watching)
    return refused


def leftovers_alive_in_child(directory: Path) -> dict[str, bool]:
    """What a sweeper in another process (``inspection``, ``clear_locks``) sees under ``directory``.

    A forked child lists the temporary files and journals with
    :func:`deker.storage.atomic.find_leftovers` and reports each one's ``alive`` flag (a sweeper
    deletes the ones that are not alive).

    Returns
    -------
    dict of str to bool
        Leftover file name to whether it counts as held by a live writer.

    """
    from deker.storage import atomic

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 3
        try:
            os.close(read_end)
            found = {item.path.name: item.alive for item in atomic.find_leftovers(directory)}
            os.write(write_end, json.dumps(found).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the sweeping child failed"
    result: dict[str, bool] = json.loads(answer)
    return result


def registry_keys() -> frozenset[tuple[int, int]]:
    """The files this process's lock registry holds now (compare with what it held before a test).

    Other tests may leave holds of their own behind (a client not yet collected): a test looks
    only at what it added.
    """
    return frozenset(lockprim._reg().entries)


class HookWaiter(Waiter):
    """A waiter whose first sleep runs ``hook`` (a holder lets go there: certain, not a race).

    ``hook`` is closed at every sleep (an :class:`contextlib.ExitStack` runs its callbacks once);
    ``sleeps`` counts them.
    """

    def __init__(self, settings: LockSettings, hook: contextlib.ExitStack) -> None:
        super().__init__(settings)
        self.hook = hook
        self.sleeps = 0

    def sleep(self) -> bool:
        """Run the hook, then sleep as a :class:`Waiter` does."""
        self.sleeps += 1
        self.hook.close()
        return super().sleep()


class BusyLog:
    """Every question of this process "is it free?" that got "busy", with the moment it was asked.

    It watches the real :func:`deker.storage.lockprim.hold` (None: a conflicting lock is held),
    :func:`deker.storage.lockprim.probe` (True: someone holds the file: a writer of deker
    1.1.7, a marker's live owner, a tile task) and
    :func:`deker.storage.locksteps.live_foreign_markers` (live markers of other owners); they
    still run.  ``busy`` is set at the first busy answer: someone in this process waits.
    ``sleeps`` counts the waits of :meth:`~deker.storage.lockwait.Waiter.sleep` (0: nothing
    waited).  A test that lets a holder go at moment ``t`` asserts ``busy_after(t) == []``: every
    question asked after it was answered "free" (how soon the next question comes is the
    :class:`~deker.storage.lockwait.Waiter`'s backoff, tested on its own).  That holds however
    loaded the machine is, unlike a bound on the time taken.
    """

    def __init__(self) -> None:
        self.busy = threading.Event()
        self.answers: list[tuple[float, str, bool]] = []
        self.sleeps = 0  # the waits of Waiter.sleep (0: nothing waited at all)
        self._guard = threading.Lock()

    def record(self, asked: float, what: str, busy: bool) -> None:
        """Keep one answer (``asked``: :func:`time.monotonic` before the question)."""
        with self._guard:
            self.answers.append((asked, what, busy))
        if busy:
            self.busy.set()

    def busy_after(self, moment: float) -> list[str]:
        """The questions asked after ``moment`` that were answered "busy"."""
        with self._guard:
            return [what for asked, what, busy in self.answers if busy and asked > moment]


def busy_log(monkeypatch: Any) -> BusyLog:
    """Start a :class:`BusyLog` (undone with ``monkeypatch``)."""
    from deker.storage import locksteps

    log = BusyLog()
    real_hold, real_probe, real_markers = lockprim.hold, lockprim.probe, locksteps.live_foreign_markers

    def hold(
        target: Path, exclusive: bool, *, create: bool = False, readonly: bool = False
    ) -> lockprim.Hold | None:
        asked = time.monotonic()
        held = real_hold(target, exclusive, create=create, readonly=readonly)
        log.record(asked, f"lock {Path(target).name}", held is None)
        return held

    def probe(path: Path | str, exclusive: bool = False) -> bool | None:
        asked = time.monotonic()
        held = real_probe(path, exclusive)
        log.record(asked, f"probe {Path(path).name}", bool(held))
        return held

    def live_foreign_markers(*args: Any, **kwargs: Any) -> Any:
        asked = time.monotonic()
        live = real_markers(*args, **kwargs)
        log.record(asked, f"markers {[m.path.name for m in live]}", bool(live))
        return live

    def sleep(waiter: Waiter) -> bool:
        slept = real_sleep(waiter)
        if slept:
            with log._guard:
                log.sleeps += 1
        return slept

    real_sleep = Waiter.sleep
    monkeypatch.setattr(lockprim, "hold", hold)
    monkeypatch.setattr(lockprim, "probe", probe)
    monkeypatch.setattr(locksteps, "live_foreign_markers", live_foreign_markers)
    monkeypatch.setattr(Waiter, "sleep", sleep)
    return log
