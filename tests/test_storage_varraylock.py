"""Tests of deker.storage.varraylock: the coordinator's VArray write lock and the tile guards.

The protocol between processes (waiting for another coordinator, a killed coordinator, the
fence held by a dead coordinator's task) is tested with real processes in
``test_storage_locks.py``.  Here each piece is held to its contract, with the windows made
certain by hooks: a tile deleted or replaced between two steps of :meth:`acquire`, a lock
forgotten without release, a fence that vanished.  Another coordinator's marker is imitated
with :func:`storage_helpers.prim.foreign_lock`; every test runs under both kernel primitives.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Any

import pytest
from storage_helpers.prim import foreign_lock, registry_keys, seen_locked

from deker.errors import DekerLockError, DekerReadOnlyError, DekerValidationError
from deker.storage import lockprim, locksteps, lockwait, varraylock
from deker.storage.layout import CollectionPaths
from deker.storage.lockwait import LockSettings, new_token
from deker.storage.varraylock import VArrayWriteLock, tile_read_guard, tile_write_guard

FAST = LockSettings(timeout=2, interval=0.01)
IDS = ["f61df9c1-c07a-48c3-bd57-8a470c80939a", "0a1b2c3d-0000-4000-8000-000000000001"]


pytestmark = pytest.mark.usefixtures("prim")


@pytest.fixture
def paths(tmp_path: Path) -> CollectionPaths:
    return CollectionPaths(tmp_path / "collections", "coll")


def make_tile(paths: CollectionPaths, tile_id: str = IDS[0]) -> tuple[Path, str]:
    data = paths.main_file("array", tile_id)
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_bytes(b"data")
    return data.parent, tile_id


def names(main_dir: Path) -> list[str]:
    return sorted(os.listdir(main_dir)) if main_dir.exists() else []


# --------------------------------------------------------------------------- the lock


def test_a_bad_token_or_a_read_only_client_is_refused_before_anything_is_made(
    paths: CollectionPaths,
) -> None:
    tile = make_tile(paths)
    with pytest.raises(DekerValidationError, match="Invalid lock owner token"):
        VArrayWriteLock(FAST, "../x")
    with pytest.raises(DekerReadOnlyError, match="Cannot write a VArray: the client is read-only"):
        VArrayWriteLock(LockSettings(read_only=True), new_token())
    assert names(tile[0]) == [f"{IDS[0]}.hdf5"]


def test_a_held_tile_has_its_mutex_data_file_and_marker_locked_and_a_fence(
    paths: CollectionPaths, held_before: frozenset[tuple[int, int]]
) -> None:
    main_dir, tile_id = make_tile(paths)
    lock = VArrayWriteLock(FAST, new_token())
    marker = lock.marker(main_dir, tile_id)
    assert marker == main_dir / f"{tile_id}.hdf5:{lock.token}.varraylock"
    assert lock.acquire([(main_dir, tile_id)]) == []
    try:
        assert lock.holds(main_dir, tile_id) and lock.tiles == [(main_dir, tile_id)]
        for held in (locksteps.mutex_path(main_dir, tile_id), locksteps.data_file(main_dir, tile_id), marker):
            assert seen_locked(held)
        fence = locksteps.fence_path(main_dir, tile_id)
        assert fence.is_file() and not seen_locked(fence)  # made for the tasks, held by none yet
        assert lock.acquire([(main_dir, tile_id)]) == []  # held already: skipped
    finally:
        lock.release()
    assert not lock.holds(main_dir, tile_id) and lock.tiles == []
    assert names(main_dir) == sorted([f"{tile_id}.hdf5", f"{tile_id}.lock", f"{tile_id}.fence"])
    assert not seen_locked(locksteps.data_file(main_dir, tile_id))
    assert registry_keys() <= held_before


def test_a_tile_deleted_after_its_mutex_was_taken_is_reported_missing(
    paths: CollectionPaths, monkeypatch: pytest.MonkeyPatch, held_before: frozenset[tuple[int, int]]
) -> None:
    main_dir, tile_id = make_tile(paths)
    real = lockwait.acquire_file

    def deleted_meanwhile(*args: Any, **kwargs: Any) -> lockprim.Hold:
        held = real(*args, **kwargs)
        locksteps.data_file(main_dir, tile_id).unlink()  # another operation deleted the tile
        return held

    monkeypatch.setattr(varraylock, "acquire_file", deleted_meanwhile)
    with VArrayWriteLock(FAST, new_token()) as lock:
        assert lock.acquire([(main_dir, tile_id)]) == [(main_dir, tile_id)]
        assert lock.tiles == []
    assert not main_dir.exists()  # its mutex, fence and empty directories went with it
    assert registry_keys() <= held_before


def test_a_tile_replaced_while_its_data_file_was_waited_for_is_reported_missing(
    paths: CollectionPaths, monkeypatch: pytest.MonkeyPatch, held_before: frozenset[tuple[int, int]]
) -> None:
    """A deker 1.1.7 clear locks the data file, deletes it and a writer creates it again."""
    main_dir, tile_id = make_tile(paths)
    data = locksteps.data_file(main_dir, tile_id)
    real = locksteps.wait_for_markers

    def replaced_meanwhile(*args: Any, **kwargs: Any) -> None:
        data.unlink()
        data.write_bytes(b"new data")
        real(*args, **kwargs)

    monkeypatch.setattr(varraylock, "wait_for_markers", replaced_meanwhile)
    with VArrayWriteLock(FAST, new_token()) as lock:
        assert lock.acquire([(main_dir, tile_id)]) == [(main_dir, tile_id)]
        assert lock.tiles == []
        assert names(main_dir) == sorted([f"{tile_id}.hdf5", f"{tile_id}.lock"])  # our marker went
    assert not seen_locked(data) and not seen_locked(locksteps.mutex_path(main_dir, tile_id))
    assert registry_keys() <= held_before


def test_an_error_while_acquiring_releases_every_tile_taken(
    paths: CollectionPaths, monkeypatch: pytest.MonkeyPatch, held_before: frozenset[tuple[int, int]]
) -> None:
    first, second = make_tile(paths, IDS[0]), make_tile(paths, IDS[1])
    real = locksteps.pass_fence

    def fails_on_the_second(main_dir: Path, tile_id: str, *args: Any, **kwargs: Any) -> None:
        if tile_id == IDS[1]:
            raise OSError(28, "No space left on device")
        real(main_dir, tile_id, *args, **kwargs)

    monkeypatch.setattr(varraylock, "pass_fence", fails_on_the_second)
    lock = VArrayWriteLock(FAST, new_token())
    with pytest.raises(OSError, match="No space left"):
        lock.acquire([first, second])
    assert lock.tiles == []
    for main_dir, tile_id in (first, second):
        assert not any(name.endswith(".varraylock") for name in names(main_dir))
        assert not seen_locked(locksteps.mutex_path(main_dir, tile_id))
    assert registry_keys() <= held_before


def test_a_lock_forgotten_without_release_lets_its_tiles_go(
    paths: CollectionPaths, held_before: frozenset[tuple[int, int]]
) -> None:
    main_dir, tile_id = make_tile(paths)
    lock = VArrayWriteLock(FAST, new_token())
    lock.acquire([(main_dir, tile_id)])
    marker = lock.marker(main_dir, tile_id)
    assert seen_locked(marker)
    del lock
    gc.collect()
    assert not marker.exists()
    assert not seen_locked(locksteps.data_file(main_dir, tile_id))
    assert registry_keys() <= held_before


def test_a_claim_whose_body_made_no_data_file_leaves_nothing(
    paths: CollectionPaths, held_before: frozenset[tuple[int, int]]
) -> None:
    main_dir = paths.main_dir("array", IDS[0])
    with VArrayWriteLock(FAST, new_token()) as lock:
        with pytest.raises(FileNotFoundError), lock.claiming(main_dir, IDS[0]):
            pass  # the creation "succeeded" without a file: the data lock cannot be taken
        assert lock.tiles == []
    assert not main_dir.exists()
    assert registry_keys() <= held_before


# --------------------------------------------------------------------------- the guards


def test_guards_trust_a_marker_another_coordinator_holds(paths: CollectionPaths) -> None:
    main_dir, tile_id = make_tile(paths)
    token = new_token()
    marker = main_dir / f"{tile_id}.hdf5:{token}.varraylock"
    marker.write_bytes(b"")
    with foreign_lock(marker):  # a coordinator in another process
        with tile_read_guard(main_dir, tile_id, token):
            pass
        with tile_write_guard(main_dir, tile_id, token, FAST):
            assert seen_locked(locksteps.fence_path(main_dir, tile_id))  # made and held
        assert not seen_locked(locksteps.fence_path(main_dir, tile_id))
    for guard in (
        tile_read_guard(main_dir, tile_id, token),
        tile_write_guard(main_dir, tile_id, token, FAST),
    ):
        with pytest.raises(DekerLockError, match=r"VArray lock lost: cannot (read|write) tile"), guard:
            pytest.fail("the body of a lost lock ran")


def test_a_marker_of_this_process_counts_only_while_its_file_is_there(paths: CollectionPaths) -> None:
    main_dir, tile_id = make_tile(paths)
    with VArrayWriteLock(FAST, new_token()) as lock:
        lock.acquire([(main_dir, tile_id)])
        with tile_read_guard(main_dir, tile_id, lock.token):
            pass
        marker = lock.marker(main_dir, tile_id)
        os.rename(marker, main_dir / "moved-aside")  # a lock cleaner took it (the lock is lost)
        with pytest.raises(DekerLockError, match="lock lost"), tile_read_guard(main_dir, tile_id, lock.token):
            pass


def test_the_write_guard_remakes_a_fence_that_vanished(paths: CollectionPaths) -> None:
    main_dir, tile_id = make_tile(paths)
    fence = locksteps.fence_path(main_dir, tile_id)
    with VArrayWriteLock(FAST, new_token()) as lock:
        lock.acquire([(main_dir, tile_id)])
        fence.unlink()
        with tile_write_guard(main_dir, tile_id, lock.token, FAST):
            assert seen_locked(fence)
        assert fence.is_file() and not seen_locked(fence)


def test_the_write_guard_of_a_deleted_tile_says_the_lock_is_lost(paths: CollectionPaths) -> None:
    main_dir, tile_id = make_tile(paths)
    token = new_token()
    with VArrayWriteLock(FAST, token) as lock:
        lock.acquire([(main_dir, tile_id)])
        locksteps.data_file(main_dir, tile_id).unlink()  # the operation deleted it, then ended
    assert not main_dir.exists()
    with pytest.raises(DekerLockError, match="lock lost"), tile_write_guard(main_dir, tile_id, token, FAST):
        pytest.fail("a task wrote into a deleted tile")
    assert not main_dir.exists()  # the guard made nothing there


def test_the_write_guard_refuses_a_read_only_client_and_a_bad_token(paths: CollectionPaths) -> None:
    main_dir, tile_id = make_tile(paths)
    with (
        pytest.raises(DekerReadOnlyError),
        tile_write_guard(main_dir, tile_id, new_token(), LockSettings(read_only=True)),
    ):
        pass
    with pytest.raises(DekerValidationError), tile_write_guard(main_dir, tile_id, "1234"):
        pass
    with pytest.raises(DekerValidationError), tile_read_guard(main_dir, tile_id, "UPPER"):
        pass
    assert names(main_dir) == [f"{tile_id}.hdf5"]
