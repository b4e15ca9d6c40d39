"""Tests of deker.storage.lockinfo: listing lock files and clearing stale ones, with real processes."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from storage_helpers.prim import foreign_lock

from deker.errors import DekerLockError
from deker.storage import lockinfo, locks
from deker.storage.layout import CollectionPaths
from deker.storage.locks import LockSettings

FAST = LockSettings(timeout=2, interval=0.05)
IDS = ["0a1b2c3d-0000-4000-8000-000000000001", "0a1b2c3d-0000-4000-8000-000000000002"]


def make_array(tmp_path: Path, array_id: str) -> tuple[Path, str]:
    main_file = CollectionPaths(tmp_path / "collections", "coll").main_file("array", array_id)
    main_file.parent.mkdir(parents=True, exist_ok=True)
    main_file.write_bytes(b"data")
    return main_file.parent, array_id


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.timeout(60)
def test_list_and_clear_locks(tmp_path: Path, children: Any) -> None:
    a, b = (make_array(tmp_path, i) for i in IDS)
    root = tmp_path / "collections"
    with locks.collection_lock(root, "coll", FAST):
        pass
    # dead: a killed reader of a, a dead deker 1.1.7 reader of b, an abandoned creation lock
    reader = children("read", main_dir=str(a[0]), array_id=a[1])
    reader.expect("ACQUIRED")
    reader.kill()
    # live: a VArray lock held by another process on b
    token = locks.new_token()
    holder = children("varray", tiles=[[str(b[0]), b[1]]], token=token)
    holder.expect("ACQUIRED")
    legacy = b[0] / f"{b[1]}:5f0c6a1e-0000-4000-8000-000000000000:{dead_pid()}:7.arrayreadlock"
    legacy.touch()
    (root / "coll" / f"{'0' * 32}.arrlock").touch()

    found = lockinfo.list_locks(tmp_path)
    info = {(i.kind, i.array_id, i.alive) for i in found}
    assert ("collection lock", None, False) in info
    assert ("array mutex", b[1], True) in info
    assert ("array mutex", a[1], False) in info
    assert ("array read lock", a[1], False) in info
    assert ("array read lock", b[1], False) in info
    assert ("array creation lock", None, False) in info
    assert ("varray write lock", b[1], True) in info
    assert ("tile fence", b[1], False) in info  # made by the VArray lock, held only by tile tasks
    assert {i.owner for i in found if i.kind == "varray write lock"} == {token}
    assert sorted(i.kind for i in found if i.stale) == [
        "array creation lock",
        "array read lock",
        "array read lock",
    ]

    removed = lockinfo.clear_locks(tmp_path)
    assert len(removed) == 3
    assert all(p.suffix in (".arrayreadlock", ".arrlock") for p in removed)
    kinds = sorted(i.kind for i in lockinfo.list_locks(tmp_path))
    assert kinds == ["array mutex", "array mutex", "collection lock", "tile fence", "varray write lock"]
    assert lockinfo.clear_locks(tmp_path) == []
    removed = lockinfo.clear_locks(tmp_path, force=True)
    assert [p.name for p in removed] == [f"{b[1]}.hdf5:{token}.varraylock"]
    assert (root / "coll.lock").exists()
    holder.release()  # the owner copes with its vanished marker


def test_is_locked_and_stale_temporary_markers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    main_dir, aid = make_array(tmp_path, IDS[0])
    data = main_dir / f"{aid}.hdf5"
    assert not lockinfo.is_locked(data) and not lockinfo.is_locked(main_dir / "missing")
    dead = main_dir / f".{aid}:dk2-x:1:1.arrayreadlock.0123456789ab.tmp"  # creator died before the rename
    busy = main_dir / f".{aid}:dk2-y:1:1.arrayreadlock.ba9876543210.tmp"  # creator is renaming it now
    dead.touch()
    busy.touch()
    with foreign_lock(busy):
        assert lockinfo.is_locked(busy) and not lockinfo.is_locked(dead)
        assert lockinfo.list_locks(tmp_path) == []  # temporary names are not locks yet
        with caplog.at_level(logging.INFO, logger="deker.storage.lockinfo"):
            assert lockinfo.clear_locks(tmp_path) == [dead]
        assert f"removed lock file {dead}" in caplog.text
    assert busy.exists() and not dead.exists()
    with locks.array_write_lock(main_dir, aid, FAST):
        (held,) = lockinfo.list_locks(tmp_path)
        assert (held.kind, held.alive, held.stale) == ("array mutex", True, False)
        assert lockinfo.is_locked(data)


def test_orphan_collection_locks_are_removed_unless_held(tmp_path: Path) -> None:
    """A crash between a collection's directory and its lock leaves ``<name>.lock`` alone."""
    (tmp_path / "kept").mkdir()
    for name in ("kept", "orphan", "held"):
        (tmp_path / f"{name}.lock").touch()
    (tmp_path / "notes.txt").touch()
    with foreign_lock(tmp_path / "held.lock"):  # a creation at work holds its lock
        assert lockinfo.remove_orphan_collection_locks(tmp_path) == [tmp_path / "orphan.lock"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["held.lock", "kept", "kept.lock", "notes.txt"]
    assert lockinfo.remove_orphan_collection_locks(tmp_path) == [tmp_path / "held.lock"]
    assert lockinfo.remove_orphan_collection_locks(tmp_path / "missing") == []


def test_a_stale_creation_lock_taken_by_a_creator_after_the_listing_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A creator that locks a stale creation lock while clear_locks walks keeps it (and alone).

    clear_locks unlinked it by name: the creator held a file without a name, and the next
    creator of the same key made a new one and held it too (two objects with one primary key).
    """
    coll = tmp_path / "collections" / "coll"
    coll.mkdir(parents=True)
    key = "array:5"
    with locks.creation_lock(coll, key, FAST):  # the name of the key's lock file
        (path,) = coll.glob("*.arrlock")
    path.touch()  # left by a creator that died: nobody holds it
    listed = lockinfo.list_locks
    inside = contextlib.ExitStack()

    def list_then_a_creator_comes(directory: Path) -> list[lockinfo.LockInfo]:
        found = listed(directory)
        inside.enter_context(locks.creation_lock(coll, key, FAST))  # locks the stale file
        return found

    monkeypatch.setattr(lockinfo, "list_locks", list_then_a_creator_comes)
    with inside:
        assert lockinfo.clear_locks(tmp_path) == []
        assert path.exists()
        with (
            pytest.raises(DekerLockError),  # the creator still excludes the others
            locks.creation_lock(coll, key, LockSettings(timeout=0, interval=0.05)),
        ):
            pass
    monkeypatch.setattr(lockinfo, "list_locks", listed)
    assert not path.exists()  # its creator removed it
    path.touch()
    assert lockinfo.clear_locks(tmp_path) == [path]  # a stale one nobody took is still removed


def test_a_creation_lock_that_cannot_be_locked_here_is_probed_instead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As for temporary files (test_storage_cleanup): an exclusive lock refused with EBADF."""
    coll = tmp_path / "collections" / "coll"
    coll.mkdir(parents=True)
    stale, live = coll / f"{'0' * 32}.arrlock", coll / f"{'1' * 32}.arrlock"
    stale.touch()
    live.touch()

    def refused(path: Path, exclusive: bool, **kwargs: object) -> Any:
        raise OSError(9, "Bad file descriptor")

    with foreign_lock(live):
        monkeypatch.setattr(lockinfo.lockprim, "hold", refused)
        assert lockinfo.clear_locks(tmp_path) == [stale]
        monkeypatch.undo()
    assert live.exists()
