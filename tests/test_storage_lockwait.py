"""Tests of deker.storage.lockwait: lock settings, owner tokens and the waiting loops.

The waits are made certain with hooks: a :class:`Waiter` whose sleep is where the holder lets
go, or a kernel lock call (:func:`deker.storage.kernellock.try_lock`) before which the holder
acts.  Another process's lock is imitated with :func:`storage_helpers.prim.foreign_lock`; each
lock test runs under both kernel primitives.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import types
from pathlib import Path

import pytest
from storage_helpers.prim import HookWaiter, foreign_lock, registry_keys, seen_locked

from deker.errors import DekerLockError, DekerReadOnlyError, DekerStorageError, DekerValidationError
from deker.storage import kernellock, lockprim, lockwait
from deker.storage.lockwait import LockSettings, Waiter

SHORT = LockSettings(timeout=0.2, interval=0.01)


# --------------------------------------------------------------------------- settings and tokens


@pytest.mark.parametrize(
    ("timeout", "interval", "wrong"),
    [
        (-1, 1, "timeout"),
        (math.nan, 1, "timeout"),
        (1, 0, "interval"),
        (1, -0.5, "interval"),
        (1, math.nan, "interval"),
    ],
)
def test_lock_settings_refuse_what_cannot_be_waited_with(timeout: float, interval: float, wrong: str) -> None:
    with pytest.raises(
        DekerValidationError, match=f"Lock {'check interval' if wrong == 'interval' else wrong}"
    ):
        LockSettings(timeout=timeout, interval=interval)


def test_lock_settings_default_to_a_writable_client_waiting_a_minute() -> None:
    settings = LockSettings()
    assert (settings.timeout, settings.interval, settings.read_only) == (60.0, 1.0, False)
    assert LockSettings(timeout=0).timeout == 0  # no waiting at all is allowed


def test_refuse_read_only_says_what_was_refused_and_that_nothing_changed() -> None:
    lockwait.refuse_read_only(SHORT, "write array 1234")
    with pytest.raises(DekerReadOnlyError, match="Cannot write array 1234: the client is read-only; nothing"):
        lockwait.refuse_read_only(LockSettings(read_only=True), "write array 1234")


def test_new_tokens_are_unique_and_pass_their_check() -> None:
    tokens = {lockwait.new_token() for _ in range(100)}
    assert len(tokens) == 100
    for token in tokens:
        lockwait.check_token(token)
        assert not token[-1].isdigit()


@pytest.mark.parametrize("token", ["", "ABC-t", "abc/def", "abc:def", "abc-1", "1234", "a" * 81, "abc.t"])
def test_check_token_refuses_a_token_new_token_could_not_make(token: str) -> None:
    with pytest.raises(DekerValidationError, match=re.escape(f"Invalid lock owner token {token!r}")):
        lockwait.check_token(token)


# --------------------------------------------------------------------------- the waiter


def fake_clock(monkeypatch: pytest.MonkeyPatch, start: float) -> list[float]:
    """Give :mod:`deker.storage.lockwait` a clock of its own whose sleeps only move it on.

    Only the module's name ``time`` is replaced: other modules keep the real clock (a thread
    of another test that waits through :mod:`deker.storage.lockwait` meanwhile would not).
    Returns the list the sleeps are recorded in.
    """
    now = [start]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    monkeypatch.setattr(lockwait, "time", types.SimpleNamespace(monotonic=lambda: now[0], sleep=sleep))
    return slept


def test_a_waiter_backs_off_exponentially_up_to_the_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    slept = fake_clock(monkeypatch, 1000.0)
    waiter = Waiter(LockSettings(timeout=3600, interval=0.01))
    for _ in range(6):
        assert waiter.sleep()
    assert slept == pytest.approx([0.001, 0.002, 0.004, 0.008, 0.01, 0.01])


def test_a_waiter_never_sleeps_past_its_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    slept = fake_clock(monkeypatch, 1000.0)
    waiter = Waiter(LockSettings(timeout=0.0015, interval=1))
    assert waiter.sleep()  # 1 ms of 1.5 ms
    assert waiter.sleep()  # the rest only, not the 2 ms of the backoff
    assert not waiter.sleep()
    assert slept == pytest.approx([0.001, 0.0005])


def test_a_waiter_of_timeout_zero_gives_up_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    slept = fake_clock(monkeypatch, 1000.0)
    assert not Waiter(LockSettings(timeout=0)).sleep()
    assert slept == []


def test_lock_timeout_names_the_lock_the_file_the_holder_and_the_timeout(tmp_path: Path) -> None:
    error = lockwait.lock_timeout(
        "Array x write lock", tmp_path / "x.lock", "someone", LockSettings(timeout=2.5)
    )
    assert isinstance(error, DekerLockError)
    assert str(error) == f"Array x write lock: {tmp_path / 'x.lock'} is held by someone; gave up after 2.5 s"


# --------------------------------------------------------------------------- holding, waiting


def test_hold_waiting_gives_up_at_the_deadline_naming_the_holder(tmp_path: Path, prim: str) -> None:
    path = tmp_path / "x.lock"
    path.write_bytes(b"")
    with (
        foreign_lock(path),
        pytest.raises(DekerLockError, match=r"is held by the other one; gave up after 0\.2 s"),
    ):
        lockwait.hold_waiting(path, False, Waiter(SHORT), "Array x read lock", "the other one")
    assert not lockprim.holds(path)


def test_hold_waiting_takes_the_lock_once_the_holder_lets_go(tmp_path: Path, prim: str) -> None:
    path = tmp_path / "x.lock"
    path.write_bytes(b"")
    with contextlib.ExitStack() as holder:
        holder.enter_context(foreign_lock(path))
        waiter = HookWaiter(LockSettings(timeout=30, interval=0.01), holder)
        held = lockwait.hold_waiting(path, True, waiter, "x", "y")
    try:
        assert waiter.sleeps == 1
        assert seen_locked(path)
    finally:
        lockprim.release(held)


def test_hold_waiting_creates_only_when_asked(tmp_path: Path, prim: str) -> None:
    path = tmp_path / "x.lock"
    with pytest.raises(FileNotFoundError):
        lockwait.hold_waiting(path, True, Waiter(SHORT), "x", "y")
    held = lockwait.hold_waiting(path, True, Waiter(SHORT), "x", "y", create=True)
    lockprim.release(held)
    assert path.is_file()


def test_acquire_file_creates_the_lock_file_and_holds_it(tmp_path: Path, prim: str) -> None:
    path = tmp_path / "x.lock"
    held = lockwait.acquire_file(path, True, Waiter(SHORT), "x")
    try:
        assert path.is_file() and seen_locked(path)
        assert lockprim.same_file(held, path)
    finally:
        lockprim.release(held)


def test_acquire_file_of_a_reader_that_may_not_write_creates_nothing(tmp_path: Path, prim: str) -> None:
    path = tmp_path / "x.lock"
    with pytest.raises(FileNotFoundError):
        lockwait.acquire_file(path, False, Waiter(SHORT), "x", readonly=True)
    assert not path.exists()
    path.write_bytes(b"")
    os.chmod(path, 0o444)
    held = lockwait.acquire_file(path, False, Waiter(SHORT), "x", readonly=True)
    try:
        assert seen_locked(path)  # a shared lock: an exclusive one is refused
        assert not seen_locked(path, exclusive=False)
    finally:
        lockprim.release(held)


def test_acquire_file_follows_a_lock_file_its_holder_unlinked(
    tmp_path: Path, prim: str, monkeypatch: pytest.MonkeyPatch, held_before: frozenset[tuple[int, int]]
) -> None:
    """A deleted array's mutex: its holder unlinks it, then lets go; the waiter must not keep it.

    The window is made certain: the holder unlinks and lets go just after the waiter opened
    the old file and before it locks it, so the waiter's lock lands on the unlinked inode.
    """
    path = tmp_path / "x.lock"
    path.write_bytes(b"")
    old = path.stat()
    lockprim.check_filesystem(tmp_path)  # done before the hook: its probe locks files of its own
    real_try_lock = kernellock.try_lock
    holder = contextlib.ExitStack()
    holder.enter_context(foreign_lock(path))
    locked: list[int] = []

    def holder_lets_go_first(fd: int, exclusive: bool, primitive: str) -> bool:
        if not locked:
            os.unlink(path)
            holder.close()
        taken = real_try_lock(fd, exclusive, primitive)
        if taken:
            locked.append(os.fstat(fd).st_ino)
        return taken

    monkeypatch.setattr(kernellock, "try_lock", holder_lets_go_first)
    held = lockwait.acquire_file(path, True, Waiter(SHORT), "x")
    try:
        assert len(locked) == 2 and locked[0] == old.st_ino  # it got the old inode first...
        assert lockprim.same_file(held, path)  # ...gave it up and holds the file there now
        assert seen_locked(path)
    finally:
        lockprim.release(held)
    assert registry_keys() <= held_before


def test_acquire_file_refuses_a_filesystem_whose_locks_do_not_work_before_an_exclusive_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held_before: frozenset[tuple[int, int]]
) -> None:
    checked: list[Path] = []

    def locks_do_not_work(directory: Path) -> None:
        checked.append(directory)
        raise DekerStorageError(f"Locks do not work on {directory}")

    monkeypatch.setattr(lockprim, "check_filesystem", locks_do_not_work)
    with pytest.raises(DekerStorageError, match="Locks do not work"):
        lockwait.acquire_file(tmp_path / "x.lock", True, Waiter(SHORT), "x")
    assert checked == [tmp_path] and not (tmp_path / "x.lock").exists()  # refused before any file
    assert registry_keys() <= held_before
    held = lockwait.acquire_file(tmp_path / "x.lock", False, Waiter(SHORT), "x")
    lockprim.release(held)
    assert checked == [tmp_path]  # a shared lock is a reader's: it writes nothing


def test_acquire_in_makes_the_directory_again_after_a_concurrent_cleanup(tmp_path: Path, prim: str) -> None:
    path = tmp_path / "a" / "b" / "x.lock"
    made: list[Path] = []

    def make_dir_late(directory: Path) -> None:
        made.append(directory)
        if len(made) >= 3:  # the first two times a cleanup removed it again at once
            directory.mkdir(parents=True, exist_ok=True)

    held = lockwait.acquire_in(make_dir_late, path, Waiter(SHORT), "x")
    try:
        assert made == [path.parent] * 3
        assert seen_locked(path)
    finally:
        lockprim.release(held)


def test_acquire_in_gives_up_after_five_cleanups(tmp_path: Path) -> None:
    made: list[Path] = []
    path = tmp_path / "a" / "x.lock"
    with pytest.raises(FileNotFoundError):
        lockwait.acquire_in(made.append, path, Waiter(SHORT), "x")
    assert made == [path.parent] * 5
