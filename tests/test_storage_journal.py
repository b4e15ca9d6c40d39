"""deker/storage/journal.py, directly, on plain (non-HDF5) files.

tests/test_storage_atomic.py drives the journal through random change sequences and HDF5
writes.  Here: the on-disk format byte for byte (header and records computed independently with
``struct``/``zlib``), what gets journaled (only old bytes, once each, never appends), commit and
rollback of growths and shrinks, ``close`` leaving the journal for recovery, ``recover`` and
``old_version`` (positioned reads of the overlay, hypothesis against the original bytes),
rejected journals (bad header checksum, an oversized record), ``is_held`` against a real process
that is then killed, ``journaled`` (stale journal first, rollback on error, missing target),
and ``durable``/``fsync_*`` with ``DEKER_FSYNC``.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import signal
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from storage_helpers.disk_full import failing_pwrite

from deker.errors import DekerLockError
from deker.storage import journal
from deker.storage.journal import (
    UndoJournal,
    durable,
    fsync_dir,
    fsync_file,
    is_held,
    journal_path,
    journaled,
    old_version,
    recover,
)

CTX = mp.get_context("forkserver")


def _header(old_size: int) -> bytes:
    """The journal header as the module docstring specifies it."""
    head = b"DKUNDO01" + struct.pack("<Q", old_size)
    return head + struct.pack("<I", zlib.crc32(head))


def _record(offset: int, old: bytes) -> bytes:
    return struct.pack("<QQI", offset, len(old), zlib.crc32(old)) + old


def _file(tmp_path: Path, content: bytes, name: str = "f.bin") -> Path:
    target = tmp_path / name
    target.write_bytes(content)
    return target


def test_journal_path_is_hidden_next_to_the_target(tmp_path: Path) -> None:
    assert journal_path(tmp_path / "a.hdf5") == tmp_path / ".a.hdf5.journal"
    assert journal_path(Path("rel/x.y.z")) == Path("rel/.x.y.z.journal")


def test_journal_format_byte_for_byte(tmp_path: Path) -> None:
    initial = bytes(range(100, 120))
    target = _file(tmp_path, initial)
    change = UndoJournal(target)
    change.seek(2)
    assert change.write(b"ABC") == 3
    expected = _header(20) + _record(2, initial[2:5])
    assert journal_path(target).read_bytes() == expected
    change.seek(0)
    change.write(b"0123456")  # [0, 7): only [0, 2) and [5, 7) are new to the journal
    expected += _record(0, initial[0:2]) + _record(5, initial[5:7])
    assert journal_path(target).read_bytes() == expected
    change.seek(18)
    change.write(b"xyzw")  # [18, 22): only [18, 20) existed before the change
    expected += _record(18, initial[18:20])
    assert journal_path(target).read_bytes() == expected
    change.truncate(10)  # drops [10, 22): [10, 18) is new to the journal
    expected += _record(10, initial[10:18])
    assert journal_path(target).read_bytes() == expected
    assert target.read_bytes() == b"0123456" + initial[7:10]
    change.commit()
    assert target.read_bytes() == b"0123456" + initial[7:10]
    assert not journal_path(target).exists()


def test_appends_and_growth_need_no_journal(tmp_path: Path) -> None:
    target = _file(tmp_path, b"12345")
    change = UndoJournal(target)
    assert change.seek(0, io.SEEK_END) == 5
    change.write(b"678")
    change.seek(20)
    change.write(b"!")  # a hole
    change.truncate(30)
    assert not journal_path(target).exists()
    assert target.read_bytes() == b"12345678" + b"\0" * 12 + b"!" + b"\0" * 9
    change.rollback()  # only the old size to restore
    assert target.read_bytes() == b"12345"
    assert not journal_path(target).exists()


def test_the_change_reads_its_own_new_bytes(tmp_path: Path) -> None:
    target = _file(tmp_path, b"abcdefgh")
    change = UndoJournal(target)
    assert change.readable() and change.writable() and change.seekable()
    change.seek(2)
    change.write(b"XY")
    assert change.tell() == 4
    assert change.seek(-3, io.SEEK_CUR) == 1
    assert change.read(4) == b"bXYe"
    assert change.seek(-2, io.SEEK_END) == 6
    assert change.read() == b"gh"
    change.rollback()
    assert target.read_bytes() == b"abcdefgh"


def test_rollback_restores_bytes_and_size(tmp_path: Path) -> None:
    initial = os.urandom(4096)
    target = _file(tmp_path, initial)
    change = UndoJournal(target)
    change.seek(100)
    change.write(b"\xff" * 1000)
    change.truncate(50)
    change.seek(6000)
    change.write(b"grown")
    assert os.path.getsize(target) == 6005
    change.rollback()
    assert target.read_bytes() == initial
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_close_keeps_the_journal_for_recovery(tmp_path: Path) -> None:
    initial = b"the original content"
    target = _file(tmp_path, initial)
    change = UndoJournal(target)
    change.seek(4)
    change.write(b"ORIGINAL")
    change.truncate(12)
    change.close()
    assert change.closed
    assert target.read_bytes() == b"the ORIGINAL"
    assert is_held(journal_path(target)) is False  # its writer is gone
    assert recover(target) is True
    assert target.read_bytes() == initial
    assert not journal_path(target).exists()
    assert recover(target) is False  # nothing left to do


def test_recover_of_a_deleted_target_drops_the_journal(tmp_path: Path) -> None:
    target = _file(tmp_path, b"0123456789")
    change = UndoJournal(target)
    change.write(b"xx")
    change.close()
    target.unlink()
    assert recover(target) is True
    assert not target.exists() and not journal_path(target).exists()


def test_old_version_overlays_the_journal(tmp_path: Path) -> None:
    initial = bytes(i % 251 for i in range(3000))
    target = _file(tmp_path, initial)
    assert old_version(target) is None  # no journal: read the file itself
    change = UndoJournal(target)
    change.seek(1000)
    change.write(b"\0" * 500)
    change.truncate(1200)  # shorter than the old size: the tail is only in the journal
    change.close()
    view = old_version(target)
    assert view is not None
    with view:
        assert view.readable() and view.seekable()
        assert view.seek(0, io.SEEK_END) == 3000  # the old size
        assert view.read(10) == b""
        view.seek(990)
        assert view.read(30) == initial[990:1020]
        view.seek(1190)
        assert view.read(100) == initial[1190:1290]  # across the truncation point
        view.seek(-5, io.SEEK_END)
        assert view.read() == initial[-5:]
        buffer = bytearray(7)
        view.seek(1495)
        assert view.readinto(buffer) == 7 and bytes(buffer) == initial[1495:1502]
        view.seek(0)
        assert view.read() == initial
    assert view.closed
    assert target.read_bytes() == initial[:1000] + b"\0" * 200  # a reader changes nothing
    assert journal_path(target).exists()
    assert recover(target) and target.read_bytes() == initial


def test_old_version_of_a_grown_file_has_the_old_size(tmp_path: Path) -> None:
    target = _file(tmp_path, b"short")
    change = UndoJournal(target)
    change.write(b"S")
    change.seek(100)
    change.write(b"appended")
    change.close()
    with old_version(target) as view:  # type: ignore[union-attr]
        assert view.read() == b"short"


def test_a_journal_with_a_bad_header_checksum_is_ignored(tmp_path: Path) -> None:
    target = _file(tmp_path, b"intact")
    good = _header(6) + _record(0, b"int")
    bad = bytearray(good)
    bad[8] ^= 1  # the old size no longer matches the header checksum
    journal_path(target).write_bytes(bytes(bad))
    assert old_version(target) is None
    assert recover(target) is True
    assert target.read_bytes() == b"intact" and not journal_path(target).exists()


def test_an_oversized_record_ends_the_journal(tmp_path: Path) -> None:
    """A record claiming more than one piece (16 MiB) is garbage: records from it on are ignored."""
    target = _file(tmp_path, b"NEW-content-here")
    forged = struct.pack("<QQI", 8, (16 << 20) + 1, 0)
    journal_path(target).write_bytes(_header(16) + _record(0, b"old") + forged + b"junk")
    with old_version(target) as view:  # type: ignore[union-attr]
        assert view.read() == b"old-content-here"
    assert recover(target) is True
    assert target.read_bytes() == b"old-content-here"


@settings(max_examples=40, deadline=None)
@given(
    initial=st.binary(min_size=1, max_size=600),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("w"), st.integers(0, 700), st.binary(min_size=1, max_size=200)),
            st.tuples(st.just("t"), st.integers(0, 700), st.just(b"")),
        ),
        min_size=1,
        max_size=10,
    ),
    reads=st.lists(st.tuples(st.integers(0, 650), st.integers(0, 300)), min_size=1, max_size=8),
)
def test_old_version_reads_the_old_bytes_anywhere(
    tmp_path_factory: pytest.TempPathFactory, initial: bytes, ops: list[tuple[str, int, bytes]], reads: Any
) -> None:
    """After an interrupted change, positioned reads of the overlay equal the original bytes."""
    target = _file(tmp_path_factory.mktemp("ov"), initial)
    change = UndoJournal(target)
    for kind, offset, payload in ops:
        if kind == "w":
            change.seek(offset)
            change.write(payload)
        else:
            change.truncate(offset)
    change.close()
    view = old_version(target)
    if view is None:  # only appends: the old bytes are still in place
        assert target.read_bytes()[: len(initial)] == initial
    else:
        with view:
            for offset, length in reads:
                view.seek(offset)
                assert view.read(length) == initial[offset : offset + length]
    recover(target)
    assert target.read_bytes()[: len(initial)] == initial
    if view is not None:
        assert target.read_bytes() == initial


def _hold_a_change(path: str, ready: Any) -> None:
    """Run in a forkserver child: start a change of ``path`` and stay alive until killed."""
    change = UndoJournal(Path(path))
    change.seek(0)
    change.write(b"CHILD")
    ready.send("changed")
    signal.pause()


def test_is_held_follows_a_live_writer_process(tmp_path: Path) -> None:
    target = _file(tmp_path, b"parent's data")
    jpath = journal_path(target)
    assert is_held(jpath) is None  # no journal
    here, there = CTX.Pipe()
    child = CTX.Process(target=_hold_a_change, args=(str(target), there))
    child.start()
    try:
        assert here.poll(60) and here.recv() == "changed"
        assert target.read_bytes() == b"CHILDt's data"
        assert is_held(jpath) is True
        with pytest.raises(
            DekerLockError, match=r"is being changed by another process \(its journal .* held\)"
        ):
            recover(target)
        with pytest.raises(DekerLockError, match="is being changed by another process"):
            old_version(target)
        assert target.read_bytes() == b"CHILDt's data"  # untouched while the writer lives
    finally:
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        child.join(30)
    assert child.exitcode == -signal.SIGKILL
    assert is_held(jpath) is False  # the kernel dropped the dead writer's lock
    with old_version(target) as view:  # type: ignore[union-attr]
        assert view.read() == b"parent's data"
    assert recover(target) is True
    assert target.read_bytes() == b"parent's data"


def test_is_held_in_this_process(tmp_path: Path) -> None:
    target = _file(tmp_path, b"abc")
    change = UndoJournal(target)
    change.write(b"z")
    assert is_held(journal_path(target)) is True  # flock belongs to the journal's own descriptor
    assert is_held(target) is False  # nobody flocks the target itself
    change.commit()
    assert is_held(journal_path(target)) is None


def test_journaled_commits_or_rolls_back(tmp_path: Path) -> None:
    target = _file(tmp_path, b"0123456789")
    with journaled(target) as change:
        assert isinstance(change, UndoJournal)
        change.seek(3)
        change.write(b"---")
    assert target.read_bytes() == b"012---6789"
    with pytest.raises(ZeroDivisionError), journaled(target) as change:
        change.seek(0)
        change.write(b"XXXXXXXXXXXXXXX")
        raise ZeroDivisionError
    assert target.read_bytes() == b"012---6789"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_journaled_rolls_back_a_stale_journal_first(tmp_path: Path) -> None:
    target = _file(tmp_path, b"first version")
    crashed = UndoJournal(target)
    crashed.write(b"CRASHED")
    crashed.close()
    with journaled(target) as change:
        change.seek(0, io.SEEK_END)
        change.write(b"!")
    assert target.read_bytes() == b"first version!"  # the crashed change is gone
    assert not journal_path(target).exists()


def test_journaled_needs_an_existing_target(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError), journaled(tmp_path / "missing.bin"):
        pass
    with pytest.raises(FileNotFoundError):
        UndoJournal(tmp_path / "missing.bin")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, False), ("1", True), ("0", False), ("true", False), ("yes", False), (" 1", False), ("", False)],
)
def test_durable_only_with_deker_fsync_1(
    monkeypatch: pytest.MonkeyPatch, value: str | None, expected: bool
) -> None:
    if value is None:
        monkeypatch.delenv("DEKER_FSYNC", raising=False)
    else:
        monkeypatch.setenv("DEKER_FSYNC", value)
    assert durable() is expected


def test_fsync_happens_only_when_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Observed through a descriptor that cannot be flushed: the flush is tried only when durable."""
    read_end, write_end = os.pipe()  # fsync of a pipe fails with EINVAL
    try:
        monkeypatch.setenv("DEKER_FSYNC", "0")
        fsync_file(read_end)  # not attempted
        fsync_dir(tmp_path / "missing")  # not attempted
        monkeypatch.setenv("DEKER_FSYNC", "1")  # read at each call
        with pytest.raises(OSError):
            fsync_file(read_end)
        fsync_dir(tmp_path / "missing")  # best effort: a directory that cannot be opened is skipped
        fsync_dir(tmp_path)
        target = _file(tmp_path, b"durable")
        with journaled(target) as change:
            change.write(b"D")
        assert target.read_bytes() == b"Durable"
    finally:
        os.close(read_end)
        os.close(write_end)


def test_public_names() -> None:
    assert sorted(journal.__all__) == [
        "HeldFile",
        "NewFile",
        "UndoJournal",
        "durable",
        "fsync_dir",
        "fsync_file",
        "is_held",
        "journal_path",
        "journaled",
        "old_version",
        "recover",
    ]


@pytest.mark.parametrize("code", [28, 5])  # ENOSPC, EIO
def test_a_failed_write_goes_on_in_memory_then_rolls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    # HDF5 must never see a failed write (it would be left in a state that crashes the
    # process later): the write "succeeds", later ones stay in memory, the exit raises
    target = _file(tmp_path, b"0123456789")
    with pytest.raises(OSError) as caught, journaled(target) as change:
        change.write(b"ab")  # journaled and written
        failing_pwrite(monkeypatch, code)
        change.seek(4)
        assert change.write(b"XYZ") == 3  # fails on disk: kept in memory
        assert change.failure is not None and change.failure.errno == code
        change.seek(20)
        change.write(b"tail")  # past the end, in memory too
        change.seek(0)
        buf = bytearray(24)
        assert change.readinto(memoryview(buf)) == 24
        assert bytes(buf) == b"ab23XYZ789" + b"\0" * 10 + b"tail"
        monkeypatch.undo()
    assert caught.value.errno == code
    assert target.read_bytes() == b"0123456789"  # rolled back at once
    assert not journal_path(target).exists()


def test_rollback_that_fails_too_leaves_the_journal_for_the_next_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = _file(tmp_path, b"0123456789")
    with pytest.raises(OSError), journaled(target) as change:
        change.write(b"ab")
        failing_pwrite(monkeypatch, 5)  # and the rollback's writes fail as well
        change.write(b"cd")
    monkeypatch.undo()
    assert journal_path(target).exists()
    view = old_version(target)
    assert view is not None
    with view:
        assert view.read() == b"0123456789"  # readers see the old version through it
    assert recover(target)  # the next writer rolls it back
    assert target.read_bytes() == b"0123456789"


def test_a_failed_read_while_changing_is_recorded_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = _file(tmp_path, b"0123456789")
    real = os.preadv

    def preadv(fd: int, buffers: Any, offset: int) -> int:
        raise OSError(5, os.strerror(5))

    with pytest.raises(OSError, match="Input/output error"), journaled(target) as change:
        change.write(b"ab")
        monkeypatch.setattr(os, "preadv", preadv)
        buf = bytearray(4)
        assert change.readinto(memoryview(buf)) == 4  # never raised into HDF5
        assert change.failure is not None
        monkeypatch.setattr(os, "preadv", real)
    assert target.read_bytes() == b"0123456789"
