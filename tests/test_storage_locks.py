"""Tests of deker.storage.locks with real processes (no mocks)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from storage_helpers.prim import busy_log, foreign_lock, seen_locked

from deker.errors import DekerLockError, DekerStorageError, DekerValidationError
from deker.storage import lockinfo, locks, lockwait
from deker.storage.layout import CollectionPaths
from deker.storage.locks import LockSettings

FAST = LockSettings(timeout=2, interval=0.05)
WAITING = LockSettings(timeout=30, interval=0.05)  # a waiter the test lets through itself
IDS = [
    "f61df9c1-c07a-48c3-bd57-8a470c80939a",
    "0a1b2c3d-0000-4000-8000-000000000001",
    "0a1b2c3d-0000-4000-8000-000000000002",
    "9e8d7c6b-0000-4000-8000-000000000003",
]


def make_array(tmp_path: Path, array_id: str = IDS[0]) -> tuple[Path, str]:
    paths = CollectionPaths(tmp_path / "collections", "coll")
    main_file = paths.main_file("array", array_id)
    main_file.parent.mkdir(parents=True, exist_ok=True)
    main_file.write_bytes(b"data")
    return main_file.parent, array_id


def flocked(path: Path, operation: int = fcntl.LOCK_EX) -> bool:
    """Whether another process would be refused a lock (of the primitive in use) on ``path``."""
    return seen_locked(path, operation == fcntl.LOCK_EX)


def in_thread(func: Any) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = func()
        except BaseException as exc:
            result["error"] = exc
        result["at"] = time.monotonic()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def hold(ctx: Any) -> float:
    with ctx:
        return time.monotonic()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def markers(main_dir: Path) -> list[str]:
    return sorted(n for n in os.listdir(main_dir) if n.endswith((".arrayreadlock", ".varraylock")))


# --------------------------------------------------------------------------- basics


def test_settings_and_token() -> None:
    with pytest.raises(DekerValidationError):
        LockSettings(timeout=-1)
    with pytest.raises(DekerValidationError):
        LockSettings(interval=0)
    tokens = {locks.new_token() for _ in range(200)}
    assert len(tokens) == 200
    for token in tokens:
        assert set(token) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
        assert not token[-1].isdigit()
    with pytest.raises(DekerValidationError):
        locks.VArrayWriteLock(FAST, "1234")
    with pytest.raises(DekerValidationError):
        locks.VArrayWriteLock(FAST, "../x")


def test_missing_array_raises_file_not_found(tmp_path: Path) -> None:
    main_dir = tmp_path / "nope"
    with pytest.raises(FileNotFoundError), locks.array_read_lock(main_dir, IDS[0], FAST):
        pass
    with pytest.raises(FileNotFoundError), locks.array_write_lock(main_dir, IDS[0], FAST):
        pass
    assert not main_dir.exists()


def test_read_lock_files_and_release(tmp_path: Path) -> None:
    main_dir, aid = make_array(tmp_path)
    with locks.array_read_lock(main_dir, aid, FAST):
        names = markers(main_dir)
        assert len(names) == 1
        assert names[0].startswith(f"{aid}:{locks.OWN_READ_PREFIX}")
        assert names[0].split(":")[2] == str(os.getpid())
        assert flocked(main_dir / names[0])
        assert flocked(locks.mutex_path(main_dir, aid))  # shared lock held
        assert not flocked(main_dir / f"{aid}.hdf5", fcntl.LOCK_SH)
    assert markers(main_dir) == []
    assert not flocked(locks.mutex_path(main_dir, aid))


def test_write_lock_holds_mutex_and_data_file(tmp_path: Path) -> None:
    main_dir, aid = make_array(tmp_path)
    with locks.array_write_lock(main_dir, aid, FAST):
        assert flocked(main_dir / f"{aid}.hdf5", fcntl.LOCK_SH)  # what deker 1.1.7 readers probe
        assert flocked(locks.mutex_path(main_dir, aid), fcntl.LOCK_SH)
        assert markers(main_dir) == []
    assert not flocked(main_dir / f"{aid}.hdf5")
    assert locks.mutex_path(main_dir, aid).exists()  # stable mutex stays


def test_threads_of_one_process_exclude_each_other(tmp_path: Path, monkeypatch: Any) -> None:
    main_dir, aid = make_array(tmp_path)
    log = busy_log(monkeypatch)
    with locks.array_write_lock(main_dir, aid, FAST):
        thread, result = in_thread(lambda: hold(locks.array_read_lock(main_dir, aid, WAITING)))
        assert log.busy.wait(30)  # the reader waits
        assert "at" not in result
    released = time.monotonic()
    thread.join(30)
    assert "error" not in result
    assert log.busy_after(released) == []  # its first try after the release took the lock


def test_delete_under_write_lock_cleans_mutex_and_dirs(tmp_path: Path) -> None:
    main_dir, aid = make_array(tmp_path)
    data_root = tmp_path / "collections" / "coll" / "array_data"
    with locks.array_write_lock(main_dir, aid, FAST):
        os.unlink(main_dir / f"{aid}.hdf5")
    assert not main_dir.exists()
    assert data_root.exists() and os.listdir(data_root) == []


def _reader_waiting_on_writer(
    main_dir: Path, aid: str, monkeypatch: Any, change: Any
) -> tuple[threading.Thread, dict[str, Any]]:
    """Start a reader while a writer holds the array, ``change()`` the files once it waits, release."""
    waiting = threading.Event()
    real_sleep = lockwait.Waiter.sleep

    def sleep(self: lockwait.Waiter) -> bool:
        waiting.set()  # the reader met the writer's mutex and waits
        return real_sleep(self)

    monkeypatch.setattr(lockwait.Waiter, "sleep", sleep)
    with locks.array_write_lock(main_dir, aid, FAST):
        thread, result = in_thread(lambda: hold(locks.array_read_lock(main_dir, aid, FAST)))
        assert waiting.wait(5)
        change()
    thread.join(5)
    return thread, result


def test_array_deleted_while_a_reader_waits_for_its_mutex(tmp_path: Path, monkeypatch: Any) -> None:
    """The reader gets FileNotFoundError once the mutex is free, and leaves no lock file behind."""
    main_dir, aid = make_array(tmp_path)
    (main_dir / "keep").write_bytes(b"")  # the directory stays (another file in it)
    _thread, result = _reader_waiting_on_writer(
        main_dir, aid, monkeypatch, lambda: os.unlink(main_dir / f"{aid}.hdf5")
    )
    assert isinstance(result.get("error"), FileNotFoundError), result
    assert os.listdir(main_dir) == ["keep"]  # no marker, temp file, nor a mutex made again


def test_data_file_damaged_while_a_reader_waits_for_its_mutex(tmp_path: Path, monkeypatch: Any) -> None:
    """A FIFO in the data file's place is refused once the mutex is free (its open would block)."""
    main_dir, aid = make_array(tmp_path)
    data = main_dir / f"{aid}.hdf5"
    thread, result = _reader_waiting_on_writer(
        main_dir, aid, monkeypatch, lambda: (os.unlink(data), os.mkfifo(data))
    )
    assert not thread.is_alive(), "the reader blocked on the FIFO"
    assert isinstance(result.get("error"), DekerStorageError), result
    assert "not a regular file" in str(result["error"])
    assert markers(main_dir) == []


# --------------------------------------------------------------------------- processes


def test_writer_blocks_reader_until_release(tmp_path: Path, children: Any, monkeypatch: Any) -> None:
    main_dir, aid = make_array(tmp_path)
    writer = children("write", main_dir=str(main_dir), array_id=aid)
    writer.expect("ACQUIRED")
    log = busy_log(monkeypatch)
    thread, result = in_thread(lambda: hold(locks.array_read_lock(main_dir, aid, WAITING)))
    assert log.busy.wait(30)
    assert "at" not in result  # still waiting
    writer.release()
    released = time.monotonic()
    thread.join(30)
    assert "error" not in result, result
    assert log.busy_after(released) == []  # proceeds at its next try


def test_readers_share(tmp_path: Path, children: Any, monkeypatch: Any) -> None:
    main_dir, aid = make_array(tmp_path)
    reader = children("read", main_dir=str(main_dir), array_id=aid)
    reader.expect("ACQUIRED")
    log = busy_log(monkeypatch)
    with locks.array_read_lock(main_dir, aid, FAST):
        assert log.sleeps == 0 and not log.busy.is_set()  # nothing to wait for
        assert len(markers(main_dir)) == 2
    reader.release()


def test_writer_waits_for_writer_then_proceeds(tmp_path: Path, children: Any, monkeypatch: Any) -> None:
    main_dir, aid = make_array(tmp_path)
    first = children("write", main_dir=str(main_dir), array_id=aid)
    first.expect("ACQUIRED")
    log = busy_log(monkeypatch)
    thread, result = in_thread(lambda: hold(locks.array_write_lock(main_dir, aid, WAITING)))
    assert log.busy.wait(30)
    assert "at" not in result
    first.release()
    released = time.monotonic()
    thread.join(30)
    assert "error" not in result, result
    assert log.busy_after(released) == []


def test_writer_times_out_and_leaves_nothing_locked(tmp_path: Path, children: Any) -> None:
    main_dir, aid = make_array(tmp_path)
    reader = children("read", main_dir=str(main_dir), array_id=aid)
    reader.expect("ACQUIRED")
    start = time.monotonic()
    with (
        pytest.raises(DekerLockError) as info,
        locks.array_write_lock(main_dir, aid, LockSettings(0.5, 0.05)),
    ):
        pass
    assert time.monotonic() - start >= 0.5  # not before its deadline (and the Waiter never
    # sleeps past it: test_storage_lockwait.py::test_a_waiter_never_sleeps_past_its_deadline)
    assert isinstance(info.value, TimeoutError)
    assert str(locks.mutex_path(main_dir, aid)) in str(info.value)
    assert not flocked(main_dir / f"{aid}.hdf5")  # our data-file lock is gone
    reader.release()
    # nothing of ours is left: another process writes at once
    other = children("write", main_dir=str(main_dir), array_id=aid, timeout=0.3)
    other.expect("ACQUIRED")
    other.release()


def test_reader_times_out_while_writer_holds(tmp_path: Path, children: Any) -> None:
    main_dir, aid = make_array(tmp_path)
    writer = children("write", main_dir=str(main_dir), array_id=aid)
    writer.expect("ACQUIRED")
    with pytest.raises(DekerLockError), locks.array_read_lock(main_dir, aid, LockSettings(0.3, 0.05)):
        pass
    assert markers(main_dir) == []
    writer.release()


def test_killed_writer_is_taken_over(tmp_path: Path, children: Any, monkeypatch: Any) -> None:
    main_dir, aid = make_array(tmp_path)
    writer = children("write", main_dir=str(main_dir), array_id=aid)
    writer.expect("ACQUIRED")
    writer.kill()
    log = busy_log(monkeypatch)
    with locks.array_write_lock(main_dir, aid, FAST):
        assert log.sleeps == 0  # the kernel dropped its locks: nothing to wait for


def test_killed_reader_marker_is_stale_and_removed(tmp_path: Path, children: Any, monkeypatch: Any) -> None:
    main_dir, aid = make_array(tmp_path)
    reader = children("read", main_dir=str(main_dir), array_id=aid)
    reader.expect("ACQUIRED")
    reader.kill()
    left = markers(main_dir)
    assert len(left) == 1  # the file stays behind a dead process
    info = lockinfo.list_locks(main_dir)
    assert [(i.kind, i.alive) for i in info if i.kind == "array read lock"] == [("array read lock", False)]
    log = busy_log(monkeypatch)
    with locks.array_write_lock(main_dir, aid, FAST):  # no clear_locks needed
        assert log.sleeps == 0  # the dead marker is no reason to wait
    assert markers(main_dir) == []


# --------------------------------------------------------------------------- VArray locks


def tiles_of(tmp_path: Path, ids: list[str]) -> list[tuple[Path, str]]:
    return [make_array(tmp_path, i) for i in ids]


def test_varray_lock_intersecting_waits_then_proceeds(
    tmp_path: Path, children: Any, monkeypatch: Any
) -> None:
    a, b, c = tiles_of(tmp_path, IDS[:3])
    token = locks.new_token()
    first = children("varray", tiles=[[str(d), i] for d, i in (a, b)], token=token)
    first.expect("ACQUIRED")
    assert markers(b[0]) == [f"{b[1]}.hdf5:{token}.varraylock"]
    assert flocked(b[0] / f"{b[1]}.hdf5", fcntl.LOCK_SH)
    lock = locks.VArrayWriteLock(WAITING, locks.new_token())
    log = busy_log(monkeypatch)
    thread, result = in_thread(lambda: lock.acquire([b, c]))
    assert log.busy.wait(30)
    assert "at" not in result
    first.release()
    released = time.monotonic()
    thread.join(30)
    assert result.get("value") == [], result
    assert log.busy_after(released) == []
    assert markers(b[0]) == [f"{b[1]}.hdf5:{lock.token}.varraylock"]
    lock.release()
    lock.release()  # idempotent
    assert markers(b[0]) == [] and markers(c[0]) == []
    assert not flocked(c[0] / f"{c[1]}.hdf5")


def test_varray_lock_timeout_releases_everything(tmp_path: Path, children: Any) -> None:
    a, b, c = tiles_of(tmp_path, IDS[:3])
    first = children("varray", tiles=[[str(d), i] for d, i in (a, b)], token=locks.new_token())
    first.expect("ACQUIRED")
    lock = locks.VArrayWriteLock(LockSettings(0.5, 0.05), locks.new_token())
    with pytest.raises(DekerLockError) as info:
        lock.acquire([c, b])  # c is taken first, then b stays busy
    assert b[1] in str(info.value)
    assert lock.tiles == []
    assert markers(c[0]) == []
    assert not flocked(c[0] / f"{c[1]}.hdf5")
    assert not flocked(locks.mutex_path(c[0], c[1]))
    first.release()


def test_varray_lock_disjoint_in_parallel(tmp_path: Path, children: Any, monkeypatch: Any) -> None:
    a, b, c = tiles_of(tmp_path, IDS[:3])
    first = children("varray", tiles=[[str(d), i] for d, i in (a,)], token=locks.new_token())
    first.expect("ACQUIRED")
    log = busy_log(monkeypatch)
    with locks.VArrayWriteLock(FAST, locks.new_token()) as lock:
        assert lock.acquire([b, c]) == []
        assert log.sleeps == 0 and not log.busy.is_set()  # tiles of another lock hold nothing up
        assert lock.tiles == [b, c]
    first.release()


def test_varray_lock_blocks_readers_and_writers(tmp_path: Path) -> None:
    (a,) = tiles_of(tmp_path, IDS[:1])
    with locks.VArrayWriteLock(FAST, locks.new_token()) as lock:
        lock.acquire([a])
        for make in (locks.array_read_lock, locks.array_write_lock):
            with pytest.raises(DekerLockError), make(a[0], a[1], LockSettings(0.2, 0.05)):
                pass


def test_varray_lock_missing_tiles_and_extend(tmp_path: Path) -> None:
    a, b = tiles_of(tmp_path, IDS[:2])
    ghost = (tmp_path / "ghost", IDS[3])
    with locks.VArrayWriteLock(FAST, locks.new_token()) as lock:
        assert lock.acquire([a, ghost]) == [ghost]
        assert lock.extend([a, b]) == []
        assert lock.tiles == [a, b]
    assert not ghost[0].exists()


def test_varray_lock_claims_a_new_tile_before_it_exists(tmp_path: Path) -> None:
    paths = CollectionPaths(tmp_path / "collections", "coll")
    main_dir = paths.main_file("array", IDS[0]).parent  # not created yet
    other = locks.VArrayWriteLock(LockSettings(0.2, 0.05), locks.new_token())
    with locks.VArrayWriteLock(FAST, locks.new_token()) as lock:
        with lock.claiming(main_dir, IDS[0]):
            assert flocked(locks.mutex_path(main_dir, IDS[0]))  # held before the data file exists
            assert markers(main_dir) == [lock.marker(main_dir, IDS[0]).name]
            assert not lock.holds(main_dir, IDS[0])
            (main_dir / f"{IDS[0]}.hdf5").write_bytes(b"data")  # the creation
        assert lock.holds(main_dir, IDS[0])
        assert lock.tiles == [(main_dir, IDS[0])]
        assert flocked(main_dir / f"{IDS[0]}.hdf5")
        with pytest.raises(DekerLockError, match=IDS[0]):
            other.acquire([(main_dir, IDS[0])])
        with locks.tile_write_guard(main_dir, IDS[0], lock.token):
            pass
    assert not flocked(main_dir / f"{IDS[0]}.hdf5")
    assert markers(main_dir) == []
    assert other.acquire([(main_dir, IDS[0])]) == []
    other.release()


def test_varray_lock_failed_claim_leaves_nothing(tmp_path: Path) -> None:
    paths = CollectionPaths(tmp_path / "collections", "coll")
    main_dir = paths.main_file("array", IDS[0]).parent
    with locks.VArrayWriteLock(FAST, locks.new_token()) as lock:
        with pytest.raises(OSError, match="disk full"), lock.claiming(main_dir, IDS[0]):
            raise OSError("disk full")
        assert lock.tiles == []
    assert not main_dir.exists()  # mutex, marker and the empty id directories are gone


def test_varray_lock_without_waiting(tmp_path: Path, children: Any, monkeypatch: Any) -> None:
    a, b, c = tiles_of(tmp_path, IDS[:3])
    first = children("varray", tiles=[[str(b[0]), b[1]]], token=locks.new_token())
    first.expect("ACQUIRED")
    lock = locks.VArrayWriteLock(LockSettings(30, 0.05), locks.new_token())
    lock.acquire([c])
    log = busy_log(monkeypatch)
    with pytest.raises(DekerLockError, match=b[1]):
        lock.acquire([a, b], wait=False)  # b is busy: fails at once, out of order allowed
    assert log.sleeps == 0 and log.busy.is_set()  # refused, and never waited
    assert lock.tiles == []  # everything released, c included
    assert lock.acquire([c, a], wait=False) == []
    assert lock.holds(*a) and lock.holds(*c) and not lock.holds(*b)
    lock.release()
    first.release()


def test_tile_guard_across_processes(tmp_path: Path, children: Any) -> None:
    (a,) = tiles_of(tmp_path, IDS[:1])
    token = locks.new_token()
    lock = locks.VArrayWriteLock(FAST, token)
    lock.acquire([a])
    good = children("guard", main_dir=str(a[0]), array_id=a[1], token=token)
    bad = children("guard", main_dir=str(a[0]), array_id=a[1], token=locks.new_token())
    good.expect("OK")
    bad.expect("LOST")
    with locks.tile_write_guard(a[0], a[1], token), locks.tile_read_guard(a[0], a[1], token):
        pass  # a thread of the coordinator's own process
    lock.release()
    after = children("guard", main_dir=str(a[0]), array_id=a[1], token=token)
    after.expect("LOST")
    with pytest.raises(DekerLockError, match="lock lost"), locks.tile_write_guard(a[0], a[1], token):
        pass


def test_tile_fence_holds_off_everyone_until_a_dead_coordinators_task_ends(
    tmp_path: Path, children: Any, monkeypatch: Any
) -> None:
    (a,) = tiles_of(tmp_path, IDS[:1])
    token = locks.new_token()
    coordinator = children("varray", tiles=[[str(a[0]), a[1]]], token=token)
    coordinator.expect("ACQUIRED")
    fence = locks.fence_path(*a)
    assert fence.exists() and not flocked(fence)  # made by the coordinator, held by no one
    brief = LockSettings(timeout=0.3, interval=0.05)
    with locks.tile_write_guard(a[0], a[1], token, FAST):  # this process: a task of that operation
        assert flocked(fence)
        coordinator.kill()  # its markers are stale now, but its task is still writing
        with pytest.raises(DekerLockError, match=r"fence.*earlier VArray operation"):
            locks.VArrayWriteLock(brief, locks.new_token()).acquire([a])
        with pytest.raises(DekerLockError, match="fence"), locks.array_write_lock(a[0], a[1], brief):
            pass
        with pytest.raises(DekerLockError, match="fence"), locks.array_read_lock(a[0], a[1], brief):
            pass
        assert not flocked(locks.mutex_path(*a))  # the waiters left nothing locked
    log = busy_log(monkeypatch)
    with locks.VArrayWriteLock(FAST, locks.new_token()) as lock:
        lock.acquire([a])  # the task ended: the next writer passes at once
        assert log.sleeps == 0
        # a late task of the dead coordinator takes the fence only to find its marker gone
        with (
            pytest.raises(DekerLockError, match="lock lost"),
            locks.tile_write_guard(a[0], a[1], token, FAST),
        ):
            pass
        with locks.tile_write_guard(a[0], a[1], lock.token, FAST):
            pass  # the live operation's own task, in the coordinator's process


def test_tile_fence_is_removed_with_the_tile(tmp_path: Path) -> None:
    (a,) = tiles_of(tmp_path, IDS[:1])
    with locks.VArrayWriteLock(FAST, locks.new_token()) as lock:
        lock.acquire([a])
        with locks.tile_write_guard(a[0], a[1], lock.token, FAST):
            (a[0] / f"{a[1]}.hdf5").unlink()  # a full clear deletes the tile
    assert not locks.fence_path(*a).exists() and not locks.mutex_path(*a).exists()
    assert not a[0].exists()  # and the empty directories went with them


def test_killed_varray_holder_is_stale(tmp_path: Path, children: Any, monkeypatch: Any) -> None:
    (a,) = tiles_of(tmp_path, IDS[:1])
    token = locks.new_token()
    holder = children("varray", tiles=[[str(a[0]), a[1]]], token=token)
    holder.expect("ACQUIRED")
    holder.kill()
    assert markers(a[0]) == [f"{a[1]}.hdf5:{token}.varraylock"]  # left behind
    with pytest.raises(DekerLockError, match="lock lost"), locks.tile_write_guard(a[0], a[1], token):
        pass
    log = busy_log(monkeypatch)
    with locks.array_read_lock(a[0], a[1], FAST):
        assert log.sleeps == 0  # a dead coordinator's marker holds no one up
    with locks.VArrayWriteLock(FAST, locks.new_token()) as lock:
        lock.acquire([a])
        assert log.sleeps == 0
        assert markers(a[0]) == [lock.marker(*a).name]  # the stale one was removed


# --------------------------------------------------------------------------- deker 1.1.7 interop


def test_legacy_read_marker_liveness(tmp_path: Path, monkeypatch: Any) -> None:
    main_dir, aid = make_array(tmp_path)
    live = main_dir / f"{aid}:5f0c6a1e-0000-4000-8000-000000000000:{os.getpid()}:1.arrayreadlock"
    dead = main_dir / f"{aid}:5f0c6a1e-0000-4000-8000-000000000001:{dead_pid()}:1.arrayreadlock"
    live.touch()
    dead.touch()
    with (
        pytest.raises(DekerLockError, match=r"deker 1\.1\.7"),
        locks.array_write_lock(main_dir, aid, LockSettings(0.3, 0.05)),
    ):
        pass
    assert not dead.exists()  # removed: its pid is gone
    assert live.exists()  # left to its owner
    log = busy_log(monkeypatch)
    thread, result = in_thread(lambda: hold(locks.array_write_lock(main_dir, aid, WAITING)))
    assert log.busy.wait(30)  # it waits for the live marker
    assert "at" not in result
    live.unlink()
    gone = time.monotonic()
    thread.join(30)
    assert "error" not in result and log.busy_after(gone) == []
    old = main_dir / f"{aid}:5f0c6a1e-0000-4000-8000-000000000002:{os.getpid()}:1.arrayreadlock"
    old.touch()
    # older than this process (which may have run for minutes already): its pid was reused
    before_us = psutil.Process().create_time() - 60
    os.utime(old, (before_us, before_us))
    with locks.array_write_lock(main_dir, aid, FAST):  # older than our process: pid was reused
        pass
    assert not old.exists()


def test_legacy_varray_marker_and_data_flock(tmp_path: Path, monkeypatch: Any) -> None:
    """A deker 1.1.7 VArray write: exclusive flock on the data file plus a pid marker."""
    main_dir, aid = make_array(tmp_path)
    data = main_dir / f"{aid}.hdf5"
    marker = main_dir / f"{aid}.hdf5:{os.getpid()}.varraylock"
    legacy = contextlib.ExitStack()
    legacy.enter_context(foreign_lock(data))
    marker.touch()
    info = [i for i in lockinfo.list_locks(main_dir) if i.kind == "varray write lock"]
    assert [(i.owner, i.alive) for i in info] == [(str(os.getpid()), True)]
    log = busy_log(monkeypatch)
    markers_at_sleeps: list[list[str]] = []
    slept = threading.Event()
    counted_sleep = lockwait.Waiter.sleep

    def sleep(waiter: lockwait.Waiter) -> bool:
        markers_at_sleeps.append(markers(main_dir))  # a reader sleeps without its marker
        slept.set()
        return counted_sleep(waiter)

    monkeypatch.setattr(lockwait.Waiter, "sleep", sleep)
    thread, result = in_thread(lambda: hold(locks.array_read_lock(main_dir, aid, WAITING)))
    assert log.busy.wait(30)
    assert "at" not in result
    assert slept.wait(30)
    assert markers_at_sleeps[0] == [marker.name]  # the waiting reader removed its own marker
    legacy.close()
    released = time.monotonic()
    thread.join(30)
    assert "error" not in result and log.busy_after(released) == []
    assert not lockinfo.list_locks(main_dir)[-1].alive


# --------------------------------------------------------------------------- creation / collection


def test_creation_lock_serialises_processes(tmp_path: Path, children: Any) -> None:
    target = tmp_path / "created"
    args = {"lock_dir": str(tmp_path / "locks"), "key": "{'vid': 'x', 'v_position': (0, 1)}", "wait_go": True}
    first = children("creation", target=str(target), **args)
    second = children("creation", target=str(target), **args)
    time.sleep(1.0)  # both started and waiting for "go"
    first.send()
    second.send()
    results = sorted([first.expect(""), second.expect("")])
    assert results == ["CREATED", "EXISTS"]
    assert first.proc.wait(10) == 0 and second.proc.wait(10) == 0
    assert os.listdir(tmp_path / "locks") == []  # the .arrlock is removed on release


def test_creation_lock_file_and_timeout(tmp_path: Path) -> None:
    with locks.creation_lock(tmp_path, "key", FAST):
        (lock_file,) = os.listdir(tmp_path)
        assert lock_file.endswith(".arrlock") and len(lock_file) == 32 + 8
        thread, result = in_thread(
            lambda: hold(locks.creation_lock(tmp_path, "key", LockSettings(0.2, 0.05)))
        )
        thread.join(5)
        assert isinstance(result.get("error"), DekerLockError)
        with locks.creation_lock(tmp_path, "other key", FAST):  # other keys are independent
            pass
    assert os.listdir(tmp_path) == []


def test_collection_lock_waits_and_is_kept(tmp_path: Path, children: Any, monkeypatch: Any) -> None:
    root = tmp_path / "collections"
    holder = children("collection", root=str(root), name="coll")
    holder.expect("ACQUIRED")
    log = busy_log(monkeypatch)
    thread, result = in_thread(lambda: hold(locks.collection_lock(root, "coll", WAITING)))
    assert log.busy.wait(30)
    assert "at" not in result
    holder.release()
    released = time.monotonic()
    thread.join(30)
    assert "error" not in result and log.busy_after(released) == []
    assert (root / "coll.lock").exists()
    with (
        pytest.raises(DekerLockError),
        locks.collection_lock(root, "coll", FAST),
        locks.collection_lock(root, "coll", LockSettings(0.2, 0.05)),
    ):
        pass


def test_varray_metadata_file_is_locked_when_no_hdf5(tmp_path: Path) -> None:
    paths = CollectionPaths(tmp_path / "collections", "coll")
    meta = paths.main_file("varray", IDS[0])
    meta.parent.mkdir(parents=True)
    meta.write_text("{}")
    with locks.array_write_lock(meta.parent, IDS[0], FAST):
        assert flocked(meta, fcntl.LOCK_SH)  # what deker 1.1.7's metadata lock takes
        with (
            pytest.raises(DekerLockError),
            locks.array_read_lock(meta.parent, IDS[0], LockSettings(0.2, 0.05)),
        ):
            pass
    with locks.array_read_lock(meta.parent, IDS[0], FAST, ext=".json"):
        pass
    with locks.array_write_lock(meta.parent, IDS[0], FAST):
        meta.unlink()
    assert not meta.parent.exists()
    assert os.listdir(paths.data_dir("varray")) == []


# --------------------------------------------------------------------------- read-only clients


def test_read_only_reader_makes_no_file_and_waits_for_a_writer(tmp_path: Path) -> None:
    """Issue 17: a read-only reader holds the existing mutex shared (opened O_RDONLY), makes nothing."""
    from deker.storage import lockprim

    data = tmp_path / "a.hdf5"
    data.write_bytes(b"x")
    ro = LockSettings(timeout=0, interval=0.01, read_only=True)
    with locks.array_read_lock(tmp_path, "a", ro):  # no mutex: read without one, create none
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a.hdf5"]
    mutex = locks.mutex_path(tmp_path, "a")
    mutex.touch()
    mutex.chmod(0o444)  # (root writes it anyway: the lock must not need a writable open)
    with locks.array_read_lock(tmp_path, "a", ro):
        assert seen_locked(mutex, exclusive=True) and not seen_locked(mutex, exclusive=False)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a.hdf5", "a.lock"]  # no read marker
    writer = lockprim.hold(mutex, True)
    assert writer is not None
    try:
        with pytest.raises(DekerLockError), locks.array_read_lock(tmp_path, "a", ro):
            pass  # a writer holds the mutex: the reader waits (here: gives up at once)
    finally:
        lockprim.release(writer)
    busy = locks.array_write_lock(tmp_path, "a", LockSettings(timeout=0))
    with locks.array_read_lock(tmp_path, "a", ro), pytest.raises(DekerLockError, match="write lock"):
        busy.__enter__()  # and a deker writer waits for the reader


def test_read_only_settings_refuse_every_write_lock_before_touching_anything(tmp_path: Path) -> None:
    from deker.errors import DekerReadOnlyError

    (tmp_path / "a.hdf5").write_bytes(b"x")
    ro = LockSettings(timeout=0, read_only=True)
    attempts = [
        lambda: locks.array_write_lock(tmp_path, "a", ro).__enter__(),
        lambda: locks.VArrayWriteLock(ro, locks.new_token()),
        lambda: locks.tile_write_guard(tmp_path, "a", locks.new_token(), ro).__enter__(),
        lambda: locks.creation_lock(tmp_path / "new", "key", ro).__enter__(),
        lambda: locks.collection_lock(tmp_path / "collections", "c", ro).__enter__(),
    ]
    for attempt in attempts:
        with pytest.raises(DekerReadOnlyError, match="read-only"):
            attempt()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.hdf5"]
