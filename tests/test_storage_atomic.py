"""Tests of deker.storage.atomic and deker.storage.journal: crash-safe writes.

A crash is simulated two ways.  In-process, an :class:`UndoJournal` is abandoned at a chosen
point with its descriptors closed and nothing else done: that is exactly the state a killed
process leaves (the kernel keeps every completed write and drops the process's ``flock``s).
Across processes, a child writing through the real code path kills itself with ``SIGKILL`` at
the k-th write the journal (or the temp file) receives.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import random
import signal
import stat
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deker.errors import DekerLockError
from deker.storage import atomic, hdf5, journal
from deker.storage.cleanup import clean_storage
from deker.storage.layout import journal_file_name, leftover_target, temp_file_name
from deker.storage.locks import LockSettings

CTX = mp.get_context("forkserver")
CTX.set_forkserver_preload(["deker", "deker.storage.hdf5", "numpy", "h5py"])
FAST = LockSettings(timeout=5, interval=0.01)

# --------------------------------------------------------------------------- helpers


def _ops_strategy(size: int) -> st.SearchStrategy[list[tuple[str, int, int]]]:
    write = st.tuples(st.just("w"), st.integers(0, size + 64), st.integers(1, 300))
    trunc = st.tuples(st.just("t"), st.integers(0, size + 64), st.just(0))
    return st.lists(st.one_of(write, write, trunc), min_size=1, max_size=12)


def _payload(i: int, n: int) -> bytes:
    return bytes((i * 31 + k) % 251 for k in range(n))


def _apply_model(model: bytearray, op: tuple[str, int, int], i: int) -> None:
    kind, offset, n = op
    if kind == "w":
        if offset > len(model):
            model.extend(b"\0" * (offset - len(model)))
        model[offset : offset + n] = _payload(i, n)
    else:
        del model[offset:]
        if offset > len(model):
            model.extend(b"\0" * (offset - len(model)))


def _apply(j: journal.UndoJournal, op: tuple[str, int, int], i: int) -> None:
    kind, offset, n = op
    if kind == "w":
        j.seek(offset)
        j.write(_payload(i, n))
    else:
        j.truncate(offset)


def _die(j: journal.UndoJournal) -> None:
    """Leave the journal as a killed process would: descriptors closed, nothing undone."""
    j._close_fds(remove_journal=False)


class _CrashAfterSave(journal.UndoJournal):
    """Dies right after the old bytes of a write are journaled, before the write itself."""

    fuse = -1

    def _save(self, start: int, end: int) -> None:
        super()._save(start, end)
        self.fuse -= 1
        if self.fuse == 0:
            raise _Died


class _Died(Exception):
    pass


# --------------------------------------------------------------------------- names


def test_leftover_names() -> None:
    assert leftover_target(temp_file_name("a.hdf5"))[0:2] == ("temp", "a.hdf5")  # type: ignore[index]
    assert leftover_target(journal_file_name("a.hdf5")) == ("journal", "a.hdf5")
    assert leftover_target(".x.hdf5:tok-t.varraylock.0123456789ab.tmp") is None  # a lock marker's temp
    assert leftover_target("a.hdf5") is None
    assert leftover_target(".coll.json.tmp") is None


# --------------------------------------------------------------------------- new versions


def test_replacing_puts_the_new_version_in_place(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    with atomic.replacing(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".f.bin.")
        assert atomic.is_held(tmp) is True  # its writer holds it while it works
        tmp.write_bytes(b"new content")
        assert target.read_bytes() == b"old"
    assert target.read_bytes() == b"new content"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # permissions kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_replacing_failure_leaves_the_target_alone(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic.replacing(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_exclusive_creation(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    atomic.write_bytes(target, b"one", exclusive=True)
    with pytest.raises(FileExistsError):
        atomic.write_bytes(target, b"two", exclusive=True)
    assert target.read_bytes() == b"one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_flushing_to_disk_is_opt_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``DEKER_FSYNC=1`` adds fsync calls (power-loss safety); writes are atomic either way."""
    monkeypatch.delenv("DEKER_FSYNC", raising=False)
    assert not atomic.durable()
    monkeypatch.setenv("DEKER_FSYNC", "1")
    assert atomic.durable()
    atomic.write_bytes(tmp_path / "f", b"x")
    with journal.journaled(tmp_path / "f") as j:
        j.seek(0)
        j.write(b"y")
    assert (tmp_path / "f").read_bytes() == b"y"
    monkeypatch.setenv("DEKER_FSYNC", "0")
    assert not atomic.durable()


# --------------------------------------------------------------------------- journal


@settings(max_examples=60)
@given(
    initial=st.binary(min_size=0, max_size=700),
    ops=_ops_strategy(700),
    data=st.data(),
)
def test_journal_commit_rollback_and_crash(
    tmp_path_factory: Any, initial: bytes, ops: Any, data: Any
) -> None:
    """Commit gives the new bytes; rollback, recovery and the old-version view give the old."""
    tmp = tmp_path_factory.mktemp("j")
    target = tmp / "f.bin"
    expected = bytearray(initial)
    for i, op in enumerate(ops):
        _apply_model(expected, op, i)

    # commit
    target.write_bytes(initial)
    with journal.journaled(target) as j:
        for i, op in enumerate(ops):
            _apply(j, op, i)
    assert target.read_bytes() == bytes(expected)
    assert not journal.journal_path(target).exists()

    # rollback on error
    target.write_bytes(initial)
    with pytest.raises(_Died), journal.journaled(target) as j:
        for i, op in enumerate(ops):
            _apply(j, op, i)
        raise _Died
    assert target.read_bytes() == initial
    assert not journal.journal_path(target).exists()

    # crash after op k (or right after the journal saved op k's old bytes)
    k = data.draw(st.integers(0, len(ops) - 1))
    after_save = data.draw(st.booleans())
    target.write_bytes(initial)
    j = _CrashAfterSave(target)
    j.fuse = k + 1 if after_save else -1
    try:
        for i, op in enumerate(ops[: k + 1]):
            _apply(j, op, i)
    except _Died:
        pass
    _die(j)
    view = journal.old_version(target)
    if view is None:  # nothing old was overwritten yet (only appends): the file reads as before
        with open(target, "rb") as fh:
            assert fh.read()[: len(initial)] == initial
    else:
        with view:
            assert view.read() == initial
    journal.recover(target)
    assert target.read_bytes()[: len(initial)] == initial
    if view is not None:
        assert target.read_bytes() == initial
    assert not journal.journal_path(target).exists()


def test_torn_and_corrupt_journal_records_end_the_journal(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    initial = bytes(range(200))
    target.write_bytes(initial)
    j = journal.UndoJournal(target)
    for i, offset in enumerate((10, 50, 90)):
        j.seek(offset)
        j.write(bytes([255 - i]) * 5)
    _die(j)
    jpath = journal.journal_path(target)
    full = jpath.read_bytes()
    record = journal._RECORD.size + 5
    # A torn fourth record (its write never happened): everything before it is applied.
    with open(jpath, "ab") as fh:
        fh.write(journal._RECORD.pack(150, 5, 0)[:7])
    assert journal.recover(target)
    assert target.read_bytes() == initial
    # A record failing its checksum ends the journal too.
    target.write_bytes(initial)
    bad = bytearray(full)
    bad[-1] ^= 0xFF  # last byte of the third record's old bytes
    jpath.write_bytes(bytes(bad))
    with open(target, "r+b") as fh:  # the first two writes happened, the third did not
        fh.seek(10)
        fh.write(b"\x01" * 5)
        fh.seek(50)
        fh.write(b"\x02" * 5)
    assert journal.recover(target)
    assert target.read_bytes() == initial
    assert len(full) == journal._HEADER.size + 3 * record


def test_journal_with_broken_header_is_dropped(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"intact")
    journal.journal_path(target).write_bytes(b"DKUN")  # died while writing the header
    assert journal.old_version(target) is None
    assert journal.recover(target)
    assert target.read_bytes() == b"intact"
    assert not journal.journal_path(target).exists()


def test_a_live_journal_is_never_touched(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"0123456789")
    j = journal.UndoJournal(target)
    j.seek(0)
    j.write(b"xx")
    with pytest.raises(DekerLockError):
        journal.recover(target)
    with pytest.raises(DekerLockError):
        journal.old_version(target)
    assert atomic.find_leftovers(tmp_path)[0].alive
    j.rollback()
    assert target.read_bytes() == b"0123456789"


def test_big_overwrite_is_journaled_in_bounded_pieces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal, "_PIECE", 1000)
    target = tmp_path / "f.bin"
    initial = os.urandom(10_000)
    target.write_bytes(initial)
    j = journal.UndoJournal(target)
    j.seek(500)
    j.write(b"\0" * 8000)
    assert len(j._records) == 8
    _die(j)
    with journal.old_version(target) as view:  # type: ignore[union-attr]
        view.seek(1234)
        assert view.read(4000) == initial[1234:5234]
    journal.recover(target)
    assert target.read_bytes() == initial


# --------------------------------------------------------------------------- leftovers


def test_leftovers_are_found_and_cleaned(tmp_path: Path) -> None:
    target = tmp_path / "a" / "f.hdf5"
    target.parent.mkdir()
    target.write_bytes(b"old")
    stale_tmp = target.with_name(temp_file_name(target.name))
    stale_tmp.write_bytes(b"half a new version")
    j = journal.UndoJournal(target)
    j.seek(0)
    j.write(b"new")
    _die(j)
    found = atomic.find_leftovers(tmp_path)
    assert sorted((f.kind, f.path, f.target, f.alive) for f in found) == [
        ("journal", journal.journal_path(target), target, False),
        ("temp", stale_tmp, target, False),
    ]
    assert target.read_bytes() == b"new"  # torn until rolled back
    assert sorted(atomic.clean_leftovers(target)) == sorted([stale_tmp, journal.journal_path(target)])
    assert target.read_bytes() == b"old"
    assert atomic.find_leftovers(tmp_path) == []


def test_discard_before_creation(tmp_path: Path) -> None:
    """A journal of an earlier file of the same name is never applied to a new one."""
    target = tmp_path / "f.hdf5"
    target.write_bytes(b"first file")
    j = journal.UndoJournal(target)
    j.seek(0)
    j.write(b"XX")
    _die(j)
    os.unlink(target)  # deleted; the journal stayed (the deletion died before removing it)
    hdf5.create_array_file(target, b'{"id": 1}', "S50", 4)
    assert not journal.journal_path(target).exists()
    assert hdf5.read_meta(target) == b'{"id": 1}'


# --------------------------------------------------------------------------- hdf5 paths

META = b'{"id": "f61df9c1-c07a-48c3-bd57-8a470c80939a", "primary_attributes": {}, "custom_attributes": {}}'
META_DTYPE = f"S{len(META) + 33}"
BIG = (400, 400)  # 1.28 MB of float64: beyond the copy limit, changed under the journal


def _big_file(path: Path, with_data: bool = True) -> np.ndarray:
    hdf5.create_array_file(path, META, META_DTYPE, math.prod(BIG))
    values = np.arange(math.prod(BIG), dtype=np.float64).reshape(BIG)
    if with_data:
        hdf5.write_region(path, (slice(0, BIG[0]), slice(0, BIG[1])), values, BIG, np.nan, {})
    return values


def test_which_changes_are_in_place(tmp_path: Path) -> None:
    """Partial changes and first writes change the file in place (journal); a whole write over
    stored data writes a new file, renamed into place; no leftovers either way."""
    path = tmp_path / "a.hdf5"
    hdf5.create_array_file(path, META, META_DTYPE, math.prod(BIG))
    inode = path.stat().st_ino
    values = np.arange(math.prod(BIG), dtype=np.float64).reshape(BIG)
    full = (slice(0, BIG[0]), slice(0, BIG[1]))
    hdf5.write_region(path, full, values, BIG, np.nan, {})  # first write: appended in place
    assert path.stat().st_ino == inode
    hdf5.write_region(path, (slice(3, 5), slice(0, 7)), np.zeros((2, 7)), BIG, np.nan, {})
    hdf5.clear_region(path, (slice(6, 7), slice(0, 7)), BIG, np.nan)
    hdf5.write_meta(path, META, META_DTYPE)
    assert path.stat().st_ino == inode
    values[3:5, 0:7] = 0
    values[6, 0:7] = np.nan
    np.testing.assert_array_equal(hdf5.read_region(path, full, np.float64, np.nan), values)
    hdf5.write_region(path, full, values + 1, BIG, np.nan, {})  # over stored data: a new file
    assert path.stat().st_ino != inode
    np.testing.assert_array_equal(hdf5.read_region(path, full, np.float64, np.nan), values + 1)
    assert hdf5.read_meta(path) == META
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.hdf5"]


def test_first_partial_write_of_a_new_file_writes_only_what_hdf5_needs(tmp_path: Path) -> None:
    """The journal saves only overwritten old bytes: a first write appends and saves metadata."""
    path = tmp_path / "big.hdf5"
    _big_file(path, with_data=False)
    with journal.journaled(path) as j, h5py.File(j, "r+", locking=False) as f:
        d = f.create_dataset("data", shape=(4000, 4000), dtype="f8", fillvalue=np.nan, chunks=(100, 100))
        d[0:100, 0:100] = 1.0
        saved = sum(n for _o, n, _p in j._records)
    assert saved < 10_000  # metadata only, not the 128 MB dataset nor its first chunk


def child_crash_in_journal(path: str, op: str, kill_at: int) -> None:
    """Run one change of a big array file; SIGKILL itself at the ``kill_at``-th journal write."""
    calls = [0]
    real_write = journal.UndoJournal.write

    def write(self: journal.UndoJournal, data: Any) -> int:
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_write(self, data)

    journal.UndoJournal.write = write  # type: ignore[method-assign]
    p = Path(path)
    if op == "update":
        hdf5.write_region(p, (slice(10, 300), slice(5, 395)), np.full((290, 390), -1.0), BIG, np.nan, {})
    elif op == "clear":
        hdf5.clear_region(p, (slice(0, 200), slice(0, 400)), BIG, np.nan)
    elif op == "meta":
        hdf5.write_meta(p, META.replace(b"{}}", b'{"x": 1}}') + b" " * 500, f"S{len(META) + 600}")
    os.kill(os.getpid(), signal.SIGKILL)  # "crash" right after the commit too


@pytest.mark.timeout(120)
@pytest.mark.parametrize("op", ["update", "clear", "meta"])
def test_killed_in_the_middle_of_a_journaled_change(tmp_path: Path, op: str) -> None:
    """Whatever write a process dies at, the file reads old (or, after the commit, new) content."""
    rng = random.Random(f"crash-{op}")
    path = tmp_path / "a.hdf5"
    values = _big_file(path)
    calls = []
    real_write = journal.UndoJournal.write

    def count(self: journal.UndoJournal, data: Any) -> int:
        calls.append(1)
        return real_write(self, data)

    probe = tmp_path / "probe.hdf5"
    _big_file(probe)
    journal.UndoJournal.write = count  # type: ignore[method-assign]
    try:
        if op == "update":
            hdf5.write_region(
                probe, (slice(10, 300), slice(5, 395)), np.full((290, 390), -1.0), BIG, np.nan, {}
            )
        elif op == "clear":
            hdf5.clear_region(probe, (slice(0, 200), slice(0, 400)), BIG, np.nan)
        else:
            hdf5.write_meta(probe, META.replace(b"{}}", b'{"x": 1}}') + b" " * 500, f"S{len(META) + 600}")
    finally:
        journal.UndoJournal.write = real_write  # type: ignore[method-assign]
    n = len(calls)
    assert n >= 2
    new = values.copy()
    if op == "update":
        new[10:300, 5:395] = -1.0
    elif op == "clear":
        new[0:200] = np.nan
    points = sorted({1, 2, n, n + 1, *rng.sample(range(1, n + 1), min(4, n))})
    full = (slice(0, 400), slice(0, 400))
    for k in points:
        original = path.read_bytes()
        proc = CTX.Process(target=child_crash_in_journal, args=(str(path), op, k))
        proc.start()
        proc.join(60)
        assert proc.exitcode == -signal.SIGKILL
        committed = k > n
        got = hdf5.read_region(path, full, np.float64, np.nan)  # readers see old or new, never torn
        np.testing.assert_array_equal(got, new if committed else values)
        meta = hdf5.read_meta(path)
        assert (meta != META) == (committed and op == "meta")
        hdf5.write_region(path, (slice(0, 1), slice(0, 1)), np.array([[7.0]]), BIG, np.nan, {})  # recovers
        assert not journal.journal_path(path).exists()
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
        got = hdf5.read_region(path, full, np.float64, np.nan)
        expect = (new if committed else values).copy()
        expect[0, 0] = 7.0
        np.testing.assert_array_equal(got, expect)
        path.write_bytes(original)  # the next kill point starts from the same old file


# ------------------------------------------------------------------------------ directories


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_build_directory_appears_whole_and_never_overwrites(tmp_path: Path) -> None:
    atomic.build_directory(tmp_path, "c", {"c.json": b"{}", "other": b"x" * 100_000})
    assert (tmp_path / "c" / "c.json").read_bytes() == b"{}"
    assert (tmp_path / "c" / "other").read_bytes() == b"x" * 100_000
    assert _tree(tmp_path) == ["c", "c/c.json", "c/other"]  # no scratch directory left
    with pytest.raises(FileExistsError):
        atomic.build_directory(tmp_path, "c", {"c.json": b"new"})
    assert (tmp_path / "c" / "c.json").read_bytes() == b"{}"
    (tmp_path / "f").write_text("a file")
    with pytest.raises(FileExistsError):
        atomic.build_directory(tmp_path, "f", {"x": b""})
    assert _tree(tmp_path) == ["c", "c/c.json", "c/other", "f"]
    (tmp_path / "empty").mkdir()  # what an interrupted mkdir-first creation left
    atomic.build_directory(tmp_path, "empty", {"e.json": b"1"})
    assert (tmp_path / "empty" / "e.json").read_bytes() == b"1"


def test_build_directory_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "rename", fail)
    with pytest.raises(OSError, match="No space"):
        atomic.build_directory(tmp_path, "c", {"c.json": b"{}"})
    assert _tree(tmp_path) == []


def test_remove_tree_renames_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "c" / "a" / "b").mkdir(parents=True)
    (tmp_path / "c" / "a" / "b" / "f").write_text("x")
    assert atomic.remove_tree(tmp_path / "c") is True
    assert _tree(tmp_path) == []
    assert atomic.remove_tree(tmp_path / "c") is False
    # A crash after the rename (simulated: the deletion never runs) leaves the whole tree
    # under a scratch name and nothing under the old name; clean_storage deletes it later.
    (tmp_path / "d" / "x").mkdir(parents=True)
    monkeypatch.setattr(atomic.shutil, "rmtree", lambda *_a, **_k: None)
    atomic.remove_tree(tmp_path / "d")
    monkeypatch.undo()
    assert not (tmp_path / "d").exists()
    scratch = atomic.find_scratch_dirs(tmp_path)
    assert [p.name.endswith(".trash") for p in scratch] == [True]
    assert (scratch[0] / "x").is_dir()
    assert atomic.find_scratch_dirs(tmp_path, min_age=60) == []  # too young: may be running
    monkeypatch.setattr(atomic, "SCRATCH_MIN_AGE", 0.0)
    assert clean_storage(tmp_path, FAST) == scratch
    assert _tree(tmp_path) == []


def test_empty_directory_moves_the_entries_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    coll = tmp_path / "c"
    for name in ("array_data", "array_symlinks", "varray_data", "varray_symlinks"):
        (coll / name / "x").mkdir(parents=True)
    (coll / "c.json").write_text("{}")
    (coll / "stray.lock").write_text("")
    moved: list[str] = []
    real_rename = os.rename

    def rename(src: Any, dst: Any) -> None:
        moved.append(Path(src).name)
        if len(moved) == 2:
            raise KeyboardInterrupt  # the process dies after the first entry went
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    order = ("varray_data", "array_data", "varray_symlinks", "array_symlinks")
    with pytest.raises(KeyboardInterrupt):
        atomic.empty_directory(coll, keep="c.json", first=order)
    monkeypatch.undo()
    assert moved == ["varray_data", "array_data"]
    left = sorted(p.name for p in coll.iterdir() if not p.name.endswith(".trash"))
    assert left == ["array_data", "array_symlinks", "c.json", "stray.lock", "varray_symlinks"]
    atomic.empty_directory(coll, keep="c.json", first=order)  # the next clear finishes the job
    assert sorted(p.name for p in coll.iterdir() if not p.name.endswith(".trash")) == ["c.json"]
    atomic.empty_directory(coll, keep="c.json")  # nothing to do
    # the scratch directory of the interrupted clear is found three levels down, not in data trees
    (coll / "array_data" / f".{'0' * 32}.trash").mkdir(parents=True)
    found = atomic.find_scratch_dirs(tmp_path)
    assert len(found) == 1 and found[0].parent == coll


def child_crash_in_first_write(path: str, kill_at: int) -> None:
    """Write every cell of a file without data; SIGKILL itself at the ``kill_at``-th pwrite."""
    calls = [0]
    real = os.pwrite

    def pwrite(fd: int, data: Any, offset: int) -> int:
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(fd, data, offset)

    os.pwrite = pwrite  # type: ignore[assignment]
    values = np.arange(math.prod(BIG), dtype=np.float64).reshape(BIG) + 0.5
    hdf5.write_region(Path(path), (slice(0, BIG[0]), slice(0, BIG[1])), values, BIG, np.nan, {})
    os.kill(os.getpid(), signal.SIGKILL)  # and right after the commit


@pytest.mark.timeout(120)
def test_killed_during_a_first_write_of_every_cell(tmp_path: Path) -> None:
    """The first write of a whole file (template bytes around the data, in place under the
    journal) leaves the file without data, or with all of it, wherever the process dies."""
    path = tmp_path / "a.hdf5"
    _big_file(path, with_data=False)
    original = path.read_bytes()
    new = np.arange(math.prod(BIG), dtype=np.float64).reshape(BIG) + 0.5
    full = (slice(0, BIG[0]), slice(0, BIG[1]))
    outcomes = set()
    for k in (1, 2, 3, 4, 6, 1000):
        proc = CTX.Process(target=child_crash_in_first_write, args=(str(path), k))
        proc.start()
        proc.join(60)
        assert proc.exitcode == -signal.SIGKILL
        got = hdf5.read_region(path, full, np.float64, np.nan)
        committed = not np.isnan(got).all()
        outcomes.add(committed)
        if committed:
            np.testing.assert_array_equal(got, new)
        assert hdf5.has_data(path) == committed
        hdf5.write_region(path, (slice(0, 1), slice(0, 1)), np.array([[7.0]]), BIG, np.nan, {})  # recovers
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
        assert hdf5.read_region(path, (0, 0), np.float64, np.nan) == 7.0
        path.write_bytes(original)
    assert outcomes == {False, True}


def test_replacing_swaps_names_instead_of_renaming_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new version is swapped with the old one (renameat2 exchange: no rename over a file,
    which makes ext4 write the file to disk at once); without the exchange it is renamed."""
    target = tmp_path / "a.hdf5"
    target.write_bytes(b"old")
    assert atomic._exchange(tmp_path / "missing", target) is False
    inode = target.stat().st_ino
    with atomic.replacing(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and target.stat().st_ino != inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.hdf5"]
    if atomic._renameat2 is not False:  # Linux: a death between the swap and the unlink
        real_unlink = os.unlink
        monkeypatch.setattr(os, "unlink", lambda p, *a, **k: None)
        with atomic.replacing(target) as tmp:
            tmp.write_bytes(b"newer")
        monkeypatch.setattr(os, "unlink", real_unlink)
        (left,) = [p for p in tmp_path.iterdir() if p.name != "a.hdf5"]
        assert leftover_target(left.name) == ("temp", "a.hdf5") and left.read_bytes() == b"new"
        assert target.read_bytes() == b"newer"
        assert atomic.clean_leftovers(target) == [left]  # the old version is garbage
    monkeypatch.setattr(atomic, "_renameat2", False)  # systems without the exchange
    with atomic.replacing(target) as tmp:
        tmp.write_bytes(b"newest")
    assert target.read_bytes() == b"newest"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.hdf5"]


# --------------------------------------------------------------------------- NFS lock semantics


@pytest.mark.parametrize("primitive", ["flock", "posix"])
def test_temp_file_and_journal_stay_held_after_h5py_closed_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, primitive: str
) -> None:
    """A sweeper in another process never takes a live temp file or journal for a leftover.

    Under POSIX record locks (an NFS client), closing any descriptor of a file drops the
    process's lock on it: h5py writing the new version (or the journaled target) through a
    descriptor of its own would leave the writer's temp file looking abandoned.  The hooks
    (the real functions, wrapped) look at the files from a forked child once h5py is done.
    """
    from storage_helpers.prim import leftovers_alive_in_child, seen_locked

    monkeypatch.setenv("DEKER_LOCK_PRIMITIVE", primitive)
    path = tmp_path / "f.hdf5"
    gzip = {"chunks": (100, 100), "compression": "gzip", "compression_opts": 1}
    hdf5.create_array_file(path, META, META_DTYPE, math.prod(BIG))
    hdf5.write_region(path, (slice(0, 10), slice(0, 10)), np.ones((10, 10)), BIG, np.nan, gzip)
    seen: list[tuple[str, bool, dict[str, bool]]] = []
    real_exchange, real_commit = atomic._exchange, journal.UndoJournal.commit

    def exchange(new: Path, target: Path) -> bool:  # h5py has written and closed the new version
        seen.append(("temp", seen_locked(new), leftovers_alive_in_child(tmp_path)))
        return real_exchange(new, target)

    def commit(self: journal.UndoJournal) -> None:  # h5py has changed and closed the target
        if self.path.exists():  # a change that wrote something (the journal is made at the first)
            seen.append(("journal", seen_locked(self.path), leftovers_alive_in_child(tmp_path)))
        real_commit(self)

    monkeypatch.setattr(atomic, "_exchange", exchange)
    monkeypatch.setattr(journal.UndoJournal, "commit", commit)
    hdf5.write_region(path, (slice(0, 400), slice(0, 400)), np.full(BIG, 2.0), BIG, np.nan, gzip)
    hdf5.write_region(path, (slice(5, 20), slice(5, 20)), np.full((15, 15), 3.0), BIG, np.nan, gzip)
    assert {kind for kind, _, _ in seen} == {"temp", "journal"}
    for kind, locked, swept in seen:
        assert locked, f"the {kind} file was not locked any more once h5py had closed it"
        assert list(swept.values()) == [True], f"a sweeper took the live {kind} file for a leftover: {swept}"
    assert atomic.find_leftovers(tmp_path) == []
    expected = np.full(BIG, 2.0)
    expected[5:20, 5:20] = 3.0
    np.testing.assert_array_equal(
        hdf5.read_region(path, (slice(0, 400), slice(0, 400)), "f8", np.nan), expected
    )
