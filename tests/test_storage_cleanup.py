"""deker/storage/cleanup.py: clean_storage on real leftovers of killed writers.

A stale journal is rolled back under its array's write lock, the journal of a file deleted
meanwhile is dropped, a temporary file whose writer lives is kept until it is released.
(Scratch directories of collection creations: ``test_storage_atomic``, with the directory
renames that leave them.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deker.storage import atomic, hdf5, journal, kernellock, lockprim
from deker.storage.cleanup import clean_storage
from deker.storage.locks import LockSettings

FAST = LockSettings(timeout=5, interval=0.01)
META = b'{"id": "f61df9c1-c07a-48c3-bd57-8a470c80939a", "primary_attributes": {}, "custom_attributes": {}}'
META_DTYPE = f"S{len(META) + 33}"


def _die(j: journal.UndoJournal) -> None:
    """Leave the journal as a killed process would: descriptors closed, nothing undone."""
    j._close_fds(remove_journal=False)


def test_clean_storage_rolls_back_under_the_write_lock(tmp_path: Path) -> None:
    main = tmp_path / "c" / "array_data" / "f" / "6" / "1" / "d" / "f" / "9" / "c" / "1"
    array_id = "f61df9c1-c07a-48c3-bd57-8a470c80939a"
    main = main / array_id[9:]
    main.mkdir(parents=True)
    target = main / f"{array_id}.hdf5"
    target.write_bytes(b"old content")
    j = journal.UndoJournal(target)
    j.seek(0)
    j.write(b"NEW")
    _die(j)
    gone = main / "gone.hdf5"  # a journal whose file was deleted meanwhile
    gone.write_bytes(b"x")
    j2 = journal.UndoJournal(gone)
    j2.seek(0)
    j2.write(b"y")
    _die(j2)
    os.unlink(gone)
    live_tmp, held = atomic._new_temp(main / "other.hdf5")
    try:
        done = clean_storage(tmp_path, FAST)
        assert sorted(done) == sorted([journal.journal_path(target), journal.journal_path(gone)])
        assert target.read_bytes() == b"old content"
        assert live_tmp.exists()  # its writer lives
    finally:
        lockprim.release(held)
    assert clean_storage(tmp_path, FAST) == [live_tmp]


def test_a_new_version_swept_before_its_writer_locked_it_is_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweeper in another process meets a writer's new file between its creation and its lock.

    The writer's temporary file looks abandoned then: the sweeper removed it, and the write
    failed ("... was deleted") on a file that is still there.  Now the sweeper unlinks it only
    while holding it, and the writer, finding its name gone once locked, makes another.
    """
    target = tmp_path / "f.hdf5"
    hdf5.create_array_file(target, META, META_DTYPE, 16)
    hdf5.write_region(target, (slice(0, 4), slice(0, 4)), np.ones((4, 4)), (4, 4), np.nan, {})
    real = kernellock.lock_new
    swept: list[str] = []

    def lock_new_after_a_sweep(fd: int, prim: str) -> bool:
        if not swept and os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
            code = (
                "import sys; from pathlib import Path; from deker.storage.cleanup import clean_storage; "
                "from deker.storage.locks import LockSettings; "
                "print(clean_storage(Path(sys.argv[1]), LockSettings(timeout=5, interval=0.01)))"
            )
            env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
            run = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True)
            swept.append(run.stdout.decode() + run.stderr.decode())
        return real(fd, prim)

    monkeypatch.setattr(kernellock, "lock_new", lock_new_after_a_sweep)
    hdf5.write_region(target, (slice(0, 4), slice(0, 4)), np.full((4, 4), 2.0), (4, 4), np.nan, {})
    assert len(swept) == 1 and ".tmp" in swept[0]  # the sweeper did remove the unlocked new file
    np.testing.assert_array_equal(
        hdf5.read_region(target, (slice(0, 4), slice(0, 4)), np.float64, np.nan), 2.0
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.hdf5"]


def test_a_temporary_file_that_cannot_be_locked_here_is_probed_instead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another user's file under POSIX locks opens read-only, which takes no exclusive lock
    (EBADF): the sweeper then goes by the probe, as before, instead of failing."""
    stale = tmp_path / f".f.hdf5.{'0' * 32}.tmp"
    stale.write_bytes(b"x")
    live, held = atomic._new_temp(tmp_path / "g.hdf5")

    def refused(path: Path, exclusive: bool, **kwargs: object) -> lockprim.Hold | None:
        raise OSError(9, "Bad file descriptor")

    monkeypatch.setattr(lockprim, "hold", refused)
    try:
        assert clean_storage(tmp_path, FAST) == [stale]
        assert live.exists()
    finally:
        monkeypatch.undo()
        lockprim.release(held)
