"""deker/storage/cleanup.py: clean_storage on real leftovers of killed writers.

A stale journal is rolled back under its array's write lock, the journal of a file deleted
meanwhile is dropped, a temporary file whose writer lives is kept until it is released.
(Scratch directories of collection creations: ``test_storage_atomic``, with the directory
renames that leave them.)
"""

from __future__ import annotations

import os
from pathlib import Path

from deker.storage import atomic, journal, lockprim
from deker.storage.cleanup import clean_storage
from deker.storage.locks import LockSettings

FAST = LockSettings(timeout=5, interval=0.01)


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
