"""Scenario: a deker 1.1.7 process deletes a tile that this deker is waiting for (issue 15, case 5).

A child process imitates 1.1.7's lock steps for ``VSubset.clear`` of a whole tile
(tests/storage_helpers/legacy_clear.py): it holds the tile file's ``flock`` and its pid marker.
Our update of that tile waits for the flock; only once it waits (it has the tile file open)
does the child delete the tile and release.  The update must then find the tile gone, list
the tiles again and create it, within its ``write_lock_timeout``, instead of failing with
"Tile file ... vanished during the write".
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from storage_helpers.prim import refusals_of, seen_locked

from deker import ArraySchema, Client, DimensionSchema, HDF5CompressionOpts, HDF5Options, VArraySchema
from deker.storage import atomic, hdf5, journal

pytestmark = pytest.mark.timeout(120)

HELPER = Path(__file__).resolve().parent / "storage_helpers" / "legacy_clear.py"


def wait_until(predicate: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + 30
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.mark.parametrize("region", ["partial", "whole"])
def test_update_of_a_tile_deleted_by_117_meanwhile_creates_it_again(
    tmp_path: Path, region: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = VArraySchema(
        dtype=np.float32, dimensions=[DimensionSchema("y", 8), DimensionSchema("x", 8)], vgrid=(2, 2)
    )
    with Client(f"file://{tmp_path}", write_lock_timeout=30) as client:
        v = client.create_collection("v", schema).create()
        v[:].update(np.zeros((8, 8), dtype=np.float32))
        tid = v.tiles.ids()[(0, 0)]
        spec = v.tiles.for_tile(tid, (0, 0))
        symlink = spec.paths.symlink_file("array", spec.symlink, tid)
        assert symlink.is_symlink()
        legacy = subprocess.Popen(
            [sys.executable, str(HELPER), str(spec.main_file), str(symlink)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert legacy.stdout is not None and legacy.stdin is not None
            assert legacy.stdout.readline().strip() == "ACQUIRED"
            bounds = (slice(0, 2), slice(0, 2)) if region == "partial" else (slice(0, 4), slice(0, 4))
            outcome: list[BaseException | None] = []

            def update() -> None:
                try:
                    v[bounds].update(5.0)
                except BaseException as exc:
                    outcome.append(exc)
                else:
                    outcome.append(None)

            refused = refusals_of(spec.main_file, monkeypatch)
            writer = threading.Thread(target=update)
            writer.start()
            wait_until(lambda: outcome or refused.is_set(), "the update to wait for the tile")
            legacy.stdin.write("\n")
            legacy.stdin.flush()
            assert legacy.stdout.readline().strip() == "RELEASED"
            writer.join(60)
            assert outcome == [None], f"the update failed: {outcome}"
        finally:
            if legacy.poll() is None:
                legacy.kill()
            legacy.wait(10)
        expected = np.zeros((8, 8), dtype=np.float32)
        expected[0:4, 0:4] = np.nan  # the deleted tile reads as fill...
        expected[bounds] = 5.0  # ...where the update did not write it again
        np.testing.assert_array_equal(v[:].read(), expected)
        new_tid = v.tiles.ids()[(0, 0)]
        assert new_tid != tid
        assert client.check_integrity(4).ok
        assert not any(info.stale for info in client.list_locks())


# --------------------------------------------------------------------------- the data-file lock


def _legacy_sees_locked(data: Path) -> bool:
    """deker 1.1.7's lock steps on ``data`` from another process: a reader's probe, a writer's try.

    A 1.1.7 reader tries ``flock(LOCK_SH | LOCK_NB)`` on the data file, a writer
    ``LOCK_EX | LOCK_NB`` (SPEC §3.3-3.5); on an NFS client both are POSIX record locks, which
    :func:`storage_helpers.prim.seen_locked` takes under the posix primitive.
    """
    reader_refused = seen_locked(data, exclusive=False)
    writer_refused = seen_locked(data, exclusive=True)
    assert reader_refused == writer_refused, "a writer's data-file lock is exclusive"
    return reader_refused


@pytest.mark.parametrize("primitive", ["flock", "posix"])
@pytest.mark.parametrize(
    "case", ["array-partial", "array-whole", "array-gzip-partial", "array-gzip-whole", "varray-whole-tile"]
)
def test_117_finds_the_data_file_locked_for_the_whole_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, primitive: str, case: str
) -> None:
    """Our writer's data-file lock holds from its start to its release, whatever h5py opens and closes.

    Under POSIX record locks (NFS), closing any descriptor of the data file would drop the
    writer's lock on it, and a whole write's new version (renamed over the old one) would be a
    file nobody locks.  The real storage functions are wrapped to look from a child process
    at each step: the journal committed (h5py closed the file), the new version swapped in,
    the write returned (the lock not yet released); and once released, nobody holds it.
    """
    monkeypatch.setenv("DEKER_LOCK_PRIMITIVE", primitive)

    dims = [DimensionSchema("y", 32), DimensionSchema("x", 32)]
    options = None
    if "gzip" in case:
        options = HDF5Options(
            chunks=(8, 8), compression_opts=HDF5CompressionOpts(compression="gzip", compression_opts=1)
        )
    with Client(f"file://{tmp_path}", write_lock_timeout=10) as client:
        if case.startswith("varray"):
            schema: Any = VArraySchema(dtype=np.float32, dimensions=dims, vgrid=(2, 2))
        else:
            schema = ArraySchema(dtype=np.float32, dimensions=dims)
        obj = client.create_collection("c", schema, collection_options=options).create()
        obj[:].update(np.ones((32, 32), dtype=np.float32))
        if case.startswith("varray"):
            spec = obj.tiles.for_tile(obj.tiles.ids()[(0, 0)], (0, 0))
            data, bounds = spec.main_file, (slice(0, 16), slice(0, 16))
        else:
            data = obj._main_file
            bounds = (slice(2, 5), slice(3, 9)) if case.endswith("partial") else (slice(0, 32), slice(0, 32))
        steps: list[tuple[str, bool]] = []
        real_commit, real_exchange, real_write = (
            journal.UndoJournal.commit,
            atomic._exchange,
            hdf5.write_region,
        )

        def commit(self: journal.UndoJournal) -> None:
            real_commit(self)
            if self.target == data:
                steps.append(("journal committed", _legacy_sees_locked(data)))

        def exchange(new: Path, target: Path) -> bool:
            done = real_exchange(new, target)
            if target == data:
                steps.append(("new version swapped in", _legacy_sees_locked(data)))
            return done

        def write_region(path: Path, *args: Any, **kwargs: Any) -> None:
            real_write(path, *args, **kwargs)
            if path == data:
                steps.append(("write returned", _legacy_sees_locked(data)))

        monkeypatch.setattr(journal.UndoJournal, "commit", commit)
        monkeypatch.setattr(atomic, "_exchange", exchange)
        monkeypatch.setattr(hdf5, "write_region", write_region)
        obj[bounds].update(7.0)
        assert steps and steps[-1][0] == "write returned", steps
        if not case.endswith("partial"):
            assert "new version swapped in" in {name for name, _ in steps}, steps
        unlocked = [name for name, locked in steps if not locked]
        assert not unlocked, f"a deker 1.1.7 process could lock the data file at: {unlocked}"
        assert not _legacy_sees_locked(data), "the lock outlived the write"
        expected = np.ones((32, 32), dtype=np.float32)
        expected[bounds] = 7.0
        np.testing.assert_array_equal(obj[:].read(), expected)


# --------------------------------------------------------------------------- 1.1.7 readers and the fence


def _117_reader_refused(main_dir: Path, data: Path) -> bool:
    """deker 1.1.7's read-lock steps on a tile (SPEC §3.3): any VArray marker refuses, then the flock."""
    if any(p.name.endswith(".varraylock") for p in main_dir.iterdir()):
        return True
    return seen_locked(data, exclusive=False)


@pytest.mark.parametrize("primitive", ["flock", "posix"])
def test_117_readers_stay_out_while_a_dead_coordinators_task_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, primitive: str
) -> None:
    """The marker of a dead coordinator stays while its tile task holds the fence.

    deker 1.1.7 readers know no fence: once the coordinator is dead nobody holds the data
    file, and its VArray marker is all that keeps them out of a tile the task still writes.
    So neither ``clear_locks`` nor one of our writers (which waits at the fence, here until
    it gives up) removes that marker while the fence is held; once the task has ended, the
    next sweep does.
    """
    from storage_helpers.children import Child

    from deker.errors import DekerLockError
    from deker.storage import locks

    monkeypatch.setenv("DEKER_LOCK_PRIMITIVE", primitive)
    schema = VArraySchema(
        dtype=np.float32, dimensions=[DimensionSchema("y", 4), DimensionSchema("x", 4)], vgrid=(2, 2)
    )
    with Client(f"file://{tmp_path}", write_lock_timeout=0.3) as client:
        v = client.create_collection("v", schema).create()
        v[:].update(np.zeros((4, 4), dtype=np.float32))
        tid = v.tiles.ids()[(0, 0)]
        spec = v.tiles.for_tile(tid, (0, 0))
        main_dir, data = spec.main_dir, spec.main_file
        token = locks.new_token()
        coordinator = Child("varray", tiles=[[str(main_dir), tid]], token=token, timeout=5)
        try:
            coordinator.expect("ACQUIRED")
            marker = main_dir / f"{tid}.hdf5:{token}.varraylock"
            with locks.tile_write_guard(main_dir, tid, token, locks.LockSettings(5, 0.01)):
                coordinator.kill()  # the task holds the fence, its coordinator is dead
                assert not seen_locked(data)  # nobody holds the data file any more
                assert marker not in client.clear_locks() and marker.exists()
                with pytest.raises(DekerLockError, match="fence"):
                    v[0:2, 0:2].update(1.0)  # waits for the task at the fence, gives up
                as_array = locks.array_write_lock(main_dir, tid, locks.LockSettings(0.3, 0.01))
                with pytest.raises(DekerLockError, match="fence"), as_array:  # the tile written as an Array
                    pass
                assert marker.exists() and _117_reader_refused(main_dir, data)
            assert marker in client.clear_locks()  # the task has ended: stale now, removed
            assert not _117_reader_refused(main_dir, data)
        finally:
            coordinator.close()
        v[0:2, 0:2].update(2.0)
        expected = np.zeros((4, 4), dtype=np.float32)
        expected[0:2, 0:2] = 2.0
        np.testing.assert_array_equal(v[:].read(), expected)
