"""deker/storage/fileobjects.py: the file objects h5py gets, on plain (non-HDF5) files.

A :class:`NewFile` whose write fails goes on in memory and raises afterwards; a
:class:`HeldFile` reads through the held descriptor (the lock stays, as another host sees it).
The undo journal, a :class:`GuardedFile` too, is tested in tests/test_storage_journal.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from storage_helpers.disk_full import failing_pwrite

from deker.storage import fileobjects


def _file(tmp_path: Path, content: bytes, name: str = "f.bin") -> Path:
    target = tmp_path / name
    target.write_bytes(content)
    return target


def test_new_file_records_a_failed_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _file(tmp_path, b"")
    with fileobjects.NewFile(path) as new:
        new.write(b"head")
        failing_pwrite(monkeypatch, 28)
        assert new.write(b"-more") == 5
        new.truncate(12)
        new.seek(0)
        buf = bytearray(12)
        assert new.readinto(memoryview(buf)) == 12
        assert bytes(buf) == b"head-more\0\0\0"
        monkeypatch.undo()
        with pytest.raises(OSError, match="No space left"):
            new.raise_failure()
    assert path.read_bytes() == b"head"  # the disk got nothing after the failure


def test_held_file_reads_through_the_held_descriptor(tmp_path: Path) -> None:
    from storage_helpers.prim import seen_locked

    from deker.storage import lockprim

    target = _file(tmp_path, b"0123456789")
    held = lockprim.hold(target, True)
    assert held is not None
    try:
        with fileobjects.HeldFile(target) as view:
            view.seek(3)
            assert view.read(4) == b"3456"
            view.seek(8)
            assert view.read(10) == b"89"
            assert view.read(1) == b""
        assert seen_locked(target)
    finally:
        lockprim.release(held)
