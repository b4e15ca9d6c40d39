"""Tests of deker.storage.locksteps: the lock files of one array and the steps that take them.

The protocol these steps make is tested in ``test_storage_locks.py``; here each step is held
to its own contract: which file it names, what it checks, what it leaves on disk, and the
error it gives up with.  Every test runs under both kernel primitives; another process's
lock is imitated with :func:`storage_helpers.prim.foreign_lock` and looked at from a forked
child with :func:`storage_helpers.prim.seen_locked`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import time
import types
from pathlib import Path
from typing import Any

import pytest
from storage_helpers.prim import HookWaiter, foreign_lock, registry_keys, seen_locked

from deker.errors import DekerLockError, DekerStorageError
from deker.storage import lockprim, locksteps
from deker.storage.layout import CollectionPaths
from deker.storage.lockinfo import READ_LOCK_EXT, VARRAY_LOCK_EXT
from deker.storage.lockwait import LockSettings, Waiter

AID = "f61df9c1-c07a-48c3-bd57-8a470c80939a"
TOKEN = "0123456789abcdef0123456789abcdef-t"
SHORT = LockSettings(timeout=0.2, interval=0.01)


pytestmark = pytest.mark.usefixtures("prim")


@pytest.fixture
def paths(tmp_path: Path) -> CollectionPaths:
    return CollectionPaths(tmp_path / "collections", "coll")


@pytest.fixture
def main_dir(paths: CollectionPaths) -> Path:
    """The main directory of an array AID, with its data file."""
    data = paths.main_file("array", AID)
    data.parent.mkdir(parents=True)
    data.write_bytes(b"data")
    return data.parent


class OsFor:
    """The ``os`` module as :mod:`deker.storage.locksteps` sees it, with some functions replaced.

    Only that module's name ``os`` is replaced: other modules (and threads) keep the real one.
    """

    def __init__(self, **replaced: Any) -> None:
        self.__dict__.update(replaced)

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


def stats_seen(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the names of the paths :mod:`deker.storage.locksteps` looks at from now on.

    ``os.stat`` and the ``os.path`` checks that stat (``exists``, ``isfile``, ``isdir``).
    """
    seen: list[str] = []

    def looking(real: Any) -> Any:
        def look(path: Any, *args: Any, **kwargs: Any) -> Any:
            seen.append(Path(path).name)
            return real(path, *args, **kwargs)

        return look

    checks = {name: looking(getattr(os.path, name)) for name in ("exists", "isfile", "isdir")}
    path_module = types.SimpleNamespace(**{**vars(os.path), **checks})
    monkeypatch.setattr(locksteps, "os", OsFor(stat=looking(os.stat), path=path_module))
    return seen


def varray_marker(main_dir: Path, token: str = TOKEN) -> Path:
    return main_dir / f"{AID}.hdf5:{token}{VARRAY_LOCK_EXT}"


def legacy_read_marker(main_dir: Path, pid: int) -> Path:
    return main_dir / f"{AID}:3f2a9c1e-1111-4222-8333-444455556666:{pid}:{pid}{READ_LOCK_EXT}"


# --------------------------------------------------------------------------- names and checks


def test_the_files_of_an_array_are_named_after_its_id(tmp_path: Path) -> None:
    assert locksteps.mutex_path(tmp_path, AID) == tmp_path / f"{AID}.lock"
    assert locksteps.fence_path(tmp_path, AID) == tmp_path / f"{AID}.fence"
    assert locksteps.data_file(tmp_path, AID) == tmp_path / f"{AID}.hdf5"


def test_require_accepts_a_regular_file_and_names_a_missing_one(tmp_path: Path) -> None:
    present = tmp_path / "a.hdf5"
    present.write_bytes(b"")
    locksteps.require(present)
    missing = tmp_path / "b.hdf5"
    with pytest.raises(FileNotFoundError) as info:
        locksteps.require(missing)
    assert info.value.errno == errno.ENOENT
    assert info.value.filename == str(missing)


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_require_refuses_what_is_not_a_regular_file_without_opening_it(tmp_path: Path, kind: str) -> None:
    odd = tmp_path / "a.hdf5"
    if kind == "directory":
        odd.mkdir()
    else:
        os.mkfifo(odd)  # opening it would block for ever: require only looks at it
    with pytest.raises(DekerStorageError, match=r"not a regular file.*check_integrity"):
        locksteps.require(odd)


def test_require_reports_a_path_it_cannot_look_at_as_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "plain"
    blocker.write_bytes(b"")
    with pytest.raises(DekerStorageError, match="Cannot access"):
        locksteps.require(blocker / "a.hdf5")  # ENOTDIR: a file where a directory should be


def test_object_file_prefers_the_data_file_with_one_stat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / f"{AID}.hdf5").write_bytes(b"")
    (tmp_path / f"{AID}.json").write_bytes(b"{}")
    seen = stats_seen(monkeypatch)
    assert locksteps.object_file(tmp_path, AID, None) == tmp_path / f"{AID}.hdf5"
    assert seen == [f"{AID}.hdf5"]


def test_object_file_falls_back_to_the_varray_metadata_file_looking_at_each_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / f"{AID}.json").write_bytes(b"{}")
    seen = stats_seen(monkeypatch)
    assert locksteps.object_file(tmp_path, AID, None) == tmp_path / f"{AID}.json"
    assert seen == [f"{AID}.hdf5", f"{AID}.json"]


def test_object_file_without_either_file_names_the_data_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        locksteps.object_file(tmp_path, AID, None)
    assert info.value.filename == str(tmp_path / f"{AID}.hdf5")
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_object_file_checks_the_metadata_file_it_falls_back_to(tmp_path: Path) -> None:
    (tmp_path / f"{AID}.json").mkdir()
    with pytest.raises(DekerStorageError, match="not a regular file"):
        locksteps.object_file(tmp_path, AID, None)


def test_object_file_with_an_extension_looks_at_that_file_only(tmp_path: Path) -> None:
    (tmp_path / f"{AID}.hdf5").write_bytes(b"")
    with pytest.raises(FileNotFoundError):
        locksteps.object_file(tmp_path, AID, ".json")
    (tmp_path / f"{AID}.json").write_bytes(b"{}")
    assert locksteps.object_file(tmp_path, AID, ".json") == tmp_path / f"{AID}.json"


# --------------------------------------------------------------------------- clean-up


def test_cleanup_keeps_the_lock_files_of_an_array_that_exists(main_dir: Path) -> None:
    for path in (locksteps.mutex_path(main_dir, AID), locksteps.fence_path(main_dir, AID)):
        path.write_bytes(b"")
    locksteps.cleanup_if_deleted(main_dir, AID)
    assert sorted(p.name for p in main_dir.iterdir()) == [f"{AID}.fence", f"{AID}.hdf5", f"{AID}.lock"]


def test_cleanup_of_a_deleted_array_removes_its_lock_files_and_empty_fan_out(
    main_dir: Path, paths: CollectionPaths
) -> None:
    locksteps.mutex_path(main_dir, AID).write_bytes(b"")
    locksteps.fence_path(main_dir, AID).write_bytes(b"")
    neighbour = paths.main_dir("array", "f61d0000-0000-4000-8000-000000000000")
    neighbour.mkdir(parents=True)  # shares the fan-out levels f/6/1/d
    locksteps.data_file(main_dir, AID).unlink()
    locksteps.cleanup_if_deleted(main_dir, AID)
    assert not main_dir.exists()
    assert neighbour.is_dir()  # its levels are not empty: they stay
    assert not (neighbour.parents[4] / "f").exists()  # the level only AID used is gone
    locksteps.cleanup_if_deleted(neighbour, "f61d0000-0000-4000-8000-000000000000")
    assert paths.data_dir("array").is_dir()  # never above the fan-out


def test_cleanup_never_removes_directories_outside_an_id_fan_out(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    locksteps.mutex_path(flat, AID).write_bytes(b"")
    locksteps.cleanup_if_deleted(flat, AID)
    assert flat.is_dir() and not any(flat.iterdir())
    other = tmp_path / "other"
    other.mkdir()
    locksteps.cleanup_if_deleted(other, "not-an/id")  # an id that names no directory levels
    assert other.is_dir()


def test_cleanup_asks_the_file_it_is_given_whether_the_object_is_gone(main_dir: Path) -> None:
    mutex = locksteps.mutex_path(main_dir, AID)
    mutex.write_bytes(b"")
    meta = main_dir / f"{AID}.json"
    locksteps.cleanup_if_deleted(main_dir, AID, meta)  # the data file is there, the given file not
    assert not mutex.exists()
    assert locksteps.data_file(main_dir, AID).exists()


# --------------------------------------------------------------------------- markers


def test_a_created_marker_is_locked_from_the_start_and_leaves_no_temporary_file(
    main_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    locked_when_published: list[bool] = []

    def rename(src: Any, dst: Any) -> None:
        locked_when_published.append(seen_locked(Path(src)))  # locked before anyone can see it
        os.rename(src, dst)

    monkeypatch.setattr(locksteps, "os", OsFor(rename=rename))
    marker = varray_marker(main_dir)
    held = locksteps.create_marker(marker)
    try:
        assert locked_when_published == [True]
        assert seen_locked(marker)
        assert sorted(p.name for p in main_dir.iterdir()) == sorted([marker.name, f"{AID}.hdf5"])
    finally:
        locksteps.drop_marker(marker, held)
    assert not marker.exists()
    assert not lockprim.holds(marker)


def test_marker_creation_retries_when_a_cleaner_removes_its_temporary_file(
    main_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def cleaner_first(src: str | Path, dst: str | Path) -> None:
        calls.append(str(src))
        if len(calls) < 3:
            os.unlink(src)  # what a lock cleaner of another process does to a leftover
        os.rename(src, dst)

    monkeypatch.setattr(locksteps, "os", OsFor(rename=cleaner_first))
    marker = varray_marker(main_dir)
    held = locksteps.create_marker(marker)
    assert len(calls) == 3 and len(set(calls)) == 3  # a fresh temporary name each time
    assert seen_locked(marker)
    locksteps.drop_marker(marker, held)
    assert sorted(p.name for p in main_dir.iterdir()) == [f"{AID}.hdf5"]


def test_marker_creation_gives_up_when_its_temporary_file_keeps_vanishing(
    main_dir: Path, monkeypatch: pytest.MonkeyPatch, held_before: frozenset[tuple[int, int]]
) -> None:
    def always_cleaned(src: str | Path, dst: str | Path) -> None:
        os.unlink(src)
        raise FileNotFoundError(errno.ENOENT, "gone", str(src))

    monkeypatch.setattr(locksteps, "os", OsFor(rename=always_cleaned))
    marker = varray_marker(main_dir)
    with pytest.raises(DekerLockError, match="keeps vanishing"):
        locksteps.create_marker(marker)
    assert sorted(p.name for p in main_dir.iterdir()) == [f"{AID}.hdf5"]
    assert registry_keys() <= held_before  # every hold of the ten attempts was given back


def test_marker_creation_that_fails_otherwise_removes_its_temporary_file(
    main_dir: Path, monkeypatch: pytest.MonkeyPatch, held_before: frozenset[tuple[int, int]]
) -> None:
    def disk_full(src: str | Path, dst: str | Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(locksteps, "os", OsFor(rename=disk_full))
    with pytest.raises(OSError, match="No space left"):
        locksteps.create_marker(varray_marker(main_dir))
    assert sorted(p.name for p in main_dir.iterdir()) == [f"{AID}.hdf5"]
    assert registry_keys() <= held_before


def test_live_foreign_markers_counts_only_other_owners_that_hold_theirs(main_dir: Path) -> None:
    own = varray_marker(main_dir, "aaaa-t")
    own_held = locksteps.create_marker(own)
    live = varray_marker(main_dir, "bbbb-t")
    live.write_bytes(b"")
    dead = varray_marker(main_dir, "cccc-t")
    dead.write_bytes(b"")
    unrelated = main_dir / f"{AID}:something.txt"
    unrelated.write_bytes(b"")
    try:
        with foreign_lock(live):
            found = locksteps.live_foreign_markers(main_dir, AID, own)
            assert [m.path for m in found] == [live]
            assert found[0].owner == "bbbb-t" and not found[0].legacy
        assert not dead.exists()  # stale: removed on the way
        assert own.exists() and unrelated.exists()
        assert locksteps.live_foreign_markers(main_dir, AID, own) == []
        assert not live.exists()  # its owner let go: stale now
        assert [m.path for m in locksteps.live_foreign_markers(main_dir, AID, None)] == [own]
    finally:
        locksteps.drop_marker(own, own_held)


def test_a_dead_coordinators_marker_stays_while_a_tile_task_holds_the_fence(main_dir: Path) -> None:
    marker = varray_marker(main_dir)
    marker.write_bytes(b"")  # nobody holds it: its coordinator died
    fence = locksteps.fence_path(main_dir, AID)
    fence.write_bytes(b"")
    kept: list[Path] = []
    with foreign_lock(fence):  # a tile task still writing
        assert locksteps.live_foreign_markers(main_dir, AID, None, kept) == []
    assert kept == [marker] and marker.exists()
    assert locksteps.live_foreign_markers(main_dir, AID, None, []) == []
    assert not marker.exists()  # the task ended: now it is only stale


def test_deker_1_1_7_read_markers_live_by_their_pid(main_dir: Path) -> None:
    ours = legacy_read_marker(main_dir, os.getpid())
    ours.write_bytes(b"")
    found = locksteps.live_foreign_markers(main_dir, AID, None)
    assert [(m.path, m.legacy, m.owner) for m in found] == [(ours, True, str(os.getpid()))]
    old = time.time() - 10 * 365 * 86400
    os.utime(ours, (old, old))  # older than the process with that pid: the pid was reused
    assert locksteps.live_foreign_markers(main_dir, AID, None) == []
    assert not ours.exists()
    no_pid = legacy_read_marker(main_dir, 0)
    no_pid.write_bytes(b"")
    assert locksteps.live_foreign_markers(main_dir, AID, None) == []
    assert not no_pid.exists()


def test_live_foreign_markers_of_a_missing_directory_are_none(tmp_path: Path) -> None:
    assert locksteps.live_foreign_markers(tmp_path / "gone", AID, None) == []


def test_wait_for_markers_gives_up_naming_the_owners(main_dir: Path) -> None:
    live = varray_marker(main_dir)
    live.write_bytes(b"")
    legacy = legacy_read_marker(main_dir, os.getpid())
    legacy.write_bytes(b"")
    with foreign_lock(live), pytest.raises(DekerLockError) as info:
        locksteps.wait_for_markers(main_dir, AID, Waiter(SHORT), "Array x write lock")
    message = str(info.value)
    assert message.startswith("Array x write lock: ")
    assert f"varray write lock of {TOKEN}" in message
    assert f"array read lock of deker 1.1.7 pid {os.getpid()}" in message
    assert "gave up after 0.2 s" in message


def test_wait_for_markers_returns_once_the_last_owner_let_go(main_dir: Path) -> None:
    live = varray_marker(main_dir)
    live.write_bytes(b"")
    own = varray_marker(main_dir, "aaaa-t")
    own_held = locksteps.create_marker(own)
    try:
        with contextlib.ExitStack() as owner:
            owner.enter_context(foreign_lock(live))
            waiter = HookWaiter(LockSettings(timeout=30, interval=0.01), owner)
            locksteps.wait_for_markers(main_dir, AID, waiter, "Array x write lock", own)
        assert waiter.sleeps == 1
        assert own.exists() and not live.exists()
    finally:
        locksteps.drop_marker(own, own_held)


# --------------------------------------------------------------------------- fence and data file


def test_pass_fence_without_a_fence_file_makes_none_unless_asked(main_dir: Path) -> None:
    fence = locksteps.fence_path(main_dir, AID)
    locksteps.pass_fence(main_dir, AID, Waiter(SHORT), "x")
    assert not fence.exists()
    locksteps.pass_fence(main_dir, AID, Waiter(SHORT), "x", create=True)
    assert fence.is_file() and not seen_locked(fence)
    assert not lockprim.holds(fence)


def test_pass_fence_with_create_in_a_missing_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        locksteps.pass_fence(tmp_path / "gone", AID, Waiter(SHORT), "x", create=True)


def test_pass_fence_waits_for_a_tile_task_to_end(main_dir: Path) -> None:
    fence = locksteps.fence_path(main_dir, AID)
    fence.write_bytes(b"")
    with contextlib.ExitStack() as task:
        task.enter_context(foreign_lock(fence))
        waiter = HookWaiter(LockSettings(timeout=30, interval=0.01), task)  # the task ends there
        locksteps.pass_fence(main_dir, AID, waiter, "Array x write lock")
    assert waiter.sleeps == 1
    assert not seen_locked(fence) and not lockprim.holds(fence)  # passed: not kept


def test_pass_fence_gives_up_on_a_tile_task_naming_it(main_dir: Path) -> None:
    fence = locksteps.fence_path(main_dir, AID)
    fence.write_bytes(b"")
    with foreign_lock(fence), pytest.raises(DekerLockError, match=re.escape(locksteps.FENCE_HOLDER)):
        locksteps.pass_fence(main_dir, AID, Waiter(SHORT), "Array x write lock")
    with foreign_lock(fence, exclusive=False):
        locksteps.pass_fence(main_dir, AID, Waiter(SHORT), "x", shared=True)  # readers share it
        with pytest.raises(DekerLockError):
            locksteps.pass_fence(main_dir, AID, Waiter(SHORT), "x")
    with foreign_lock(fence), pytest.raises(DekerLockError):
        locksteps.pass_fence(main_dir, AID, Waiter(SHORT), "x", shared=True)
    assert not lockprim.holds(fence)


def test_pass_fence_of_a_read_only_reader_creates_nothing(main_dir: Path) -> None:
    reader = LockSettings(timeout=0.2, interval=0.01, read_only=True)
    locksteps.pass_fence(main_dir, AID, Waiter(reader), "x", shared=True)
    assert sorted(p.name for p in main_dir.iterdir()) == [f"{AID}.hdf5"]


def test_pass_fence_passes_a_fence_it_may_not_open(main_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fence = locksteps.fence_path(main_dir, AID)
    fence.write_bytes(b"")

    def denied(path: Path, exclusive: bool, *, create: bool = False, readonly: bool = False) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(lockprim, "hold", denied)  # what a user without write permission meets
    reader = LockSettings(timeout=0.2, interval=0.01, read_only=True)
    locksteps.pass_fence(main_dir, AID, Waiter(reader), "x", shared=True)


def test_lock_data_file_holds_it_and_gives_up_on_a_deker_1_1_7_process(main_dir: Path) -> None:
    data = locksteps.data_file(main_dir, AID)
    held = locksteps.lock_data_file(data, Waiter(SHORT), "x")
    try:
        assert seen_locked(data)
    finally:
        lockprim.release(held)
    assert not seen_locked(data)
    with foreign_lock(data), pytest.raises(DekerLockError, match=r"deker 1\.1\.7 process"):
        locksteps.lock_data_file(data, Waiter(SHORT), "Array x write lock")
