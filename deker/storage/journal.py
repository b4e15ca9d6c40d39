"""The undo journal: change a file in place, all or nothing, even if the process dies.

Used through :mod:`deker.storage.atomic` (see its docstring for the whole picture).  A change
goes through an :class:`UndoJournal`, a file object handed to h5py's ``fileobj`` driver.
Before it overwrites a byte that existed when the change began, it appends the old bytes to
``.<name>.journal`` (one checksummed record per range, flushed) and only then writes the new
ones; bytes appended past the old end need no record.  Committing flushes the target and
unlinks the journal.  A journal left behind by a dead process is either rolled back by a
writer (:func:`recover`) or read through by a reader (:func:`old_version`): the records are
the old bytes, the header the old size.

A write that fails (a full disk, ``EIO``) is never raised into HDF5 (the journal is a
:class:`~deker.storage.fileobjects.GuardedFile`, like the :class:`NewFile` h5py writes new
versions to): it is recorded, later writes stay in memory, and :func:`journaled` rolls back and
raises it once h5py has closed the file.  The file objects themselves are in
:mod:`deker.storage.fileobjects` (:class:`NewFile` and :class:`HeldFile` are importable here too).

Journal format: header ``b"DKUNDO01"``, old size (u64), crc32 (u32); then records of offset
(u64), length (u64), crc32 of the old bytes (u32) and the old bytes.  A record that is
incomplete or fails its checksum ends the journal: the write it protected never started.
"""

from __future__ import annotations

import bisect
import contextlib
import io
import logging
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from deker.errors import DekerLockError, DekerStorageError
from deker.storage import lockprim
from deker.storage.fileobjects import (
    FileBase,
    GuardedFile,
    HeldFile,
    NewFile,
    open_sized,
    read_exact,
    write_all,
)
from deker.storage.layout import journal_file_name

__all__ = [
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

logger = logging.getLogger(__name__)

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_MAGIC = b"DKUNDO01"
_HEADER = struct.Struct("<8sQI")  # magic, size of the target when the change began, crc32
_RECORD = struct.Struct("<QQI")  # offset, length, crc32 of the old bytes that follow
# Old bytes are saved in pieces of at most this size (bounded memory for huge overwrites).
_PIECE = 16 << 20


def durable() -> bool:
    """Return whether writes are flushed to disk (``fsync``): only with ``DEKER_FSYNC=1``.

    Without flushes every write is still all-or-nothing against a killed process (the kernel
    keeps what a dead process wrote; renames and the journal order the steps).  Flushes add
    safety against power loss and kernel crashes, at the cost of waiting for the disk.

    Returns
    -------
    bool
        ``True`` when the environment variable ``DEKER_FSYNC`` is ``"1"`` (read at each call).

    """
    return os.environ.get("DEKER_FSYNC", "0") == "1"


def fsync_file(fd: int) -> None:
    """Flush an open file to disk, when :func:`durable`.

    Parameters
    ----------
    fd : int
        An open descriptor.

    """
    if durable():
        os.fsync(fd)


def fsync_dir(directory: Path) -> None:
    """Flush a directory's entries (creations, renames, unlinks) to disk, when :func:`durable`.

    Parameters
    ----------
    directory : Path
        The directory.

    """
    if not durable():
        return
    try:
        fd = os.open(directory, os.O_RDONLY | _O_CLOEXEC)
    except OSError:  # pragma: no cover - e.g. a directory we may not open: best effort
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def journal_path(target: Path) -> Path:
    """Return the undo journal of ``target`` (``.<name>.journal`` next to it).

    Parameters
    ----------
    target : Path
        A file.

    Returns
    -------
    Path
        Its journal path (which normally does not exist).

    """
    return target.with_name(journal_file_name(target.name))


def is_held(path: Path) -> bool | None:
    """Return whether someone (this process included) holds ``path`` locked; ``None`` if it is missing.

    The probe goes through :func:`deker.storage.lockprim.probe` (no lock taken, no descriptor
    of a file this process holds closed), with the lock primitive in use.

    Parameters
    ----------
    path : Path
        A temporary file or journal.

    Returns
    -------
    bool or None
        ``True`` while its writer lives.

    """
    return lockprim.probe(path)


class _Ranges:
    """A set of disjoint half-open byte ranges (what the journal already saved)."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def missing(self, start: int, end: int) -> list[tuple[int, int]]:
        """Return the parts of ``[start, end)`` not in the set."""
        gaps = []
        i = bisect.bisect_right(self.ends, start)
        pos = start
        while pos < end and i < len(self.starts):
            s, e = self.starts[i], self.ends[i]
            if s >= end:
                break
            if s > pos:
                gaps.append((pos, s))
            pos = max(pos, e)
            i += 1
        if pos < end:
            gaps.append((pos, end))
        return gaps

    def add(self, start: int, end: int) -> None:
        """Add ``[start, end)`` (merging with neighbours)."""
        i = bisect.bisect_left(self.ends, start)
        j = bisect.bisect_right(self.starts, end)
        if i < j:
            start = min(start, self.starts[i])
            end = max(end, self.ends[j - 1])
        self.starts[i:j] = [start]
        self.ends[i:j] = [end]


def _undo(fd: int, jfd: int, records: list[tuple[int, int, int]], orig: int) -> None:
    """Write the old bytes of the journal ``jfd`` back into ``fd``, then cut it to ``orig`` bytes."""
    for offset, length, jpos in records:
        write_all(fd, read_exact(jfd, length, jpos), offset)
    os.ftruncate(fd, orig)
    fsync_file(fd)


class UndoJournal(GuardedFile):
    """A target file opened for in-place change, journaling the old bytes it overwrites.

    Made by :func:`journaled`; hand it to ``h5py.File(journal, "r+")``.

    Parameters
    ----------
    target : Path
        The file to change (it must exist).

    """

    def __init__(self, target: Path) -> None:
        self.target = target
        self.path = journal_path(target)
        super().__init__(*open_sized(target, True))  # the writer's held descriptor, if any
        self._jfd = -1
        self._jhold: lockprim.Hold | None = None
        self._saved = _Ranges()
        self._records: list[tuple[int, int, int]] = []  # offset, length, position in journal
        self._jpos = 0
        self._dirty = False
        self._orig = self._size

    def _start_journal(self) -> None:
        """Create the journal (at the first overwrite of an old byte): header, flushed."""
        self._jhold = lockprim.hold_new(self.path)  # held while the writer lives (find_leftovers)
        self._jfd = self._jhold.fd
        try:
            head = _MAGIC + struct.pack("<Q", self._orig)
            write_all(self._jfd, _HEADER.pack(_MAGIC, self._orig, zlib.crc32(head)))
            self._jpos = _HEADER.size
            fsync_file(self._jfd)
            fsync_dir(self.target.parent)  # the journal must be on disk before the target changes
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            lockprim.release(self._jhold)
            self._jfd, self._jhold = -1, None
            raise

    def _save(self, start: int, end: int) -> None:
        """Journal the current bytes of ``[start, end)`` that are not saved yet."""
        gaps = self._saved.missing(start, min(end, self._orig))
        if gaps and self._jfd < 0:
            self._start_journal()
        unsynced = False
        for gap_start, gap_end in gaps:
            for piece in range(gap_start, gap_end, _PIECE):
                length = min(_PIECE, gap_end - piece)
                old = read_exact(self._fd, length, piece).ljust(length, b"\0")
                write_all(self._jfd, _RECORD.pack(piece, length, zlib.crc32(old)) + old)
                self._records.append((piece, length, self._jpos + _RECORD.size))
                self._jpos += _RECORD.size + length
                unsynced = True
            self._saved.add(gap_start, gap_end)
        if unsynced:
            fsync_file(self._jfd)  # the old bytes are safe before the new ones are written

    def _before_write(self, size: int) -> None:
        """Journal the old bytes a write at the position overwrites (appends need none)."""
        if self._pos < self._orig:
            self._save(self._pos, self._pos + size)
        self._dirty = True

    def _resize(self, size: int) -> None:
        """Resize the file, journaling the old bytes a shrink drops first."""
        if size < self._orig:
            self._save(size, self._size)
        if size != self._size:
            self._dirty = True
            os.ftruncate(self._fd, size)

    def commit(self) -> None:
        """Make the change permanent: flush the target, then remove the journal."""
        if self._dirty:
            fsync_file(self._fd)
        self._end()

    def rollback(self) -> None:
        """Put back the old bytes and the old size, then remove the journal."""
        if self._dirty:
            _undo(self._fd, self._jfd, self._records, self._orig)
        self._end()

    def _end(self) -> None:
        """Remove the journal (the commit, or the end of a rollback) and close the descriptors."""
        if self._jfd >= 0:
            os.unlink(self.path)
            fsync_dir(self.target.parent)
        self._close_fds(remove_journal=False)

    def _close_fds(self, *, remove_journal: bool) -> None:
        if remove_journal:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        if self._jhold is not None:
            lockprim.release(self._jhold)  # the journal's lock and descriptor go together
            self._jhold = None
        if self._fd >= 0:
            lockprim.close_fd(self._fd, self._shared)
        self._jfd = self._fd = -1

    def close(self) -> None:
        """Close the file object (the journal, if still there, stays for recovery)."""
        if self._fd >= 0 or self._jfd >= 0:
            self._close_fds(remove_journal=False)
        super().close()


@contextlib.contextmanager
def journaled(target: Path) -> Iterator[UndoJournal]:
    """Change ``target`` in place, all or nothing; the caller holds its exclusive lock.

    A stale journal of an earlier crash is rolled back first.  When the body finishes the
    change is committed; if it raises, it is rolled back at once (if that fails too, the
    journal stays and the next writer or reader deals with it).

    Parameters
    ----------
    target : Path
        The file to change.

    Yields
    ------
    UndoJournal
        The file object to give to ``h5py.File(..., "r+")``.

    Raises
    ------
    FileNotFoundError
        If ``target`` does not exist.

    """
    recover(target)
    journal = UndoJournal(target)
    try:
        yield journal
        journal.raise_failure()  # a write failed: HDF5 went on in memory, the disk is undone
        journal.commit()
    except BaseException as exc:
        try:
            journal.rollback()
        except OSError as undo:
            logger.warning(
                "rolling back %s failed (%s); its journal %s stays for the next writer",
                target,
                undo,
                journal.path,
            )
        finally:
            journal.close()
        if journal.failure is not None and exc is not journal.failure:
            raise journal.failure from exc  # the cause, not what it led to
        raise
    journal.close()


@dataclass(frozen=True)
class _Stale:
    orig: int
    records: list[tuple[int, int, int]]  # offset, length, position in the journal


def _parse(jfd: int) -> _Stale | None:
    """Read a stale journal: its header and its complete records (a torn tail is ignored)."""
    head = read_exact(jfd, _HEADER.size, 0)
    if len(head) < _HEADER.size:
        return None
    magic, orig, crc = _HEADER.unpack(head)
    if magic != _MAGIC or zlib.crc32(magic + struct.pack("<Q", orig)) != crc:
        return None
    records = []
    pos = _HEADER.size
    while True:
        raw = read_exact(jfd, _RECORD.size, pos)
        if len(raw) < _RECORD.size:
            break
        offset, length, crc = _RECORD.unpack(raw)
        if length > _PIECE:
            break
        old = read_exact(jfd, length, pos + _RECORD.size)
        if len(old) < length or zlib.crc32(old) != crc:
            break  # the write that this record protected never started
        records.append((offset, length, pos + _RECORD.size))
        pos += _RECORD.size + length
    return _Stale(orig, records)


def _open_stale_journal(target: Path) -> tuple[Path, int, lockprim.Hold | None, _Stale | None] | None:
    """Open and parse the journal of ``target``: ``(path, descriptor, share, parsed)``, None if none.

    ``parsed`` is None for a journal without a valid header (its change never wrote the
    target).  Raises :class:`DekerLockError` if a live process holds the journal; nothing
    stays open when it raises.
    """
    jpath = journal_path(target)
    try:
        jfd, jshared = lockprim.open_fd(jpath, False)
    except FileNotFoundError:
        return None
    try:
        if is_held(jpath):
            raise DekerLockError(
                f"{target} is being changed by another process (its journal {jpath} is held)"
            )
        return jpath, jfd, jshared, _parse(jfd)
    except BaseException:
        lockprim.close_fd(jfd, jshared)
        raise


def recover(target: Path) -> bool:
    """Roll ``target`` back to its content before an interrupted in-place change.

    Without a journal nothing happens.  A journal without a valid header comes from a change
    that never wrote the target: it is just removed.

    Parameters
    ----------
    target : Path
        The file, whose exclusive lock the caller holds.

    Returns
    -------
    bool
        Whether a journal was found (and applied or removed).

    Raises
    ------
    DekerLockError
        If a live process holds the journal (someone writes without the array lock).
    DekerStorageError
        If the target cannot be restored (it stays as it is, with its journal).

    """
    opened = _open_stale_journal(target)
    if opened is None:
        return False
    jpath, jfd, jshared, stale = opened
    try:
        if stale is not None:
            try:
                try:
                    fd, shared = lockprim.open_fd(target, True)  # the caller's held descriptor, if any
                except FileNotFoundError:
                    fd, shared = -1, None  # the target is gone: nothing to restore
                if fd >= 0:
                    try:
                        _undo(fd, jfd, stale.records, stale.orig)
                    finally:
                        lockprim.close_fd(fd, shared)
            except OSError as exc:
                raise DekerStorageError(f"Cannot roll back the interrupted write of {target}: {exc}") from exc
        with contextlib.suppress(FileNotFoundError):
            os.unlink(jpath)
        fsync_dir(target.parent)
        logger.warning("rolled back an interrupted write of %s (journal %s)", target, jpath)
        return True
    finally:
        lockprim.close_fd(jfd, jshared)


class _OldVersion(FileBase):
    """Read-only view of a file as it was before an interrupted change (journal overlay)."""

    def __init__(self, target: Path, journal: tuple[int, lockprim.Hold | None], stale: _Stale) -> None:
        super().__init__(*lockprim.open_fd(target, False), stale.orig)
        self._jfd, self._jshared = journal
        self._records = sorted(stale.records)
        self._starts = [r[0] for r in self._records]

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        """Read the old bytes at the position into ``buffer``; return how many."""
        view, n = self._window(buffer)
        if n == 0:
            return 0
        got = os.preadv(self._fd, [view[:n]], self._pos)
        if got < n:  # the interrupted change truncated the file: the journal has those bytes
            view[got:n] = b"\0" * (n - got)
        start, end = self._pos, self._pos + n
        i = max(0, bisect.bisect_right(self._starts, start) - 1)
        while i < len(self._records) and self._records[i][0] < end:
            offset, length, jpos = self._records[i]
            lo, hi = max(start, offset), min(end, offset + length)
            if lo < hi:
                view[lo - start : hi - start] = read_exact(self._jfd, hi - lo, jpos + lo - offset)
            i += 1
        self._pos += n
        return n

    def close(self) -> None:
        """Give back both descriptors."""
        super().close()  # the target's
        if self._jfd >= 0:
            lockprim.close_fd(self._jfd, self._jshared)
            self._jfd = -1


def old_version(target: Path) -> io.RawIOBase | None:
    """Return a read-only file object of ``target`` as before an interrupted change, if any.

    For readers, who must not write: while a stale journal is there, the target may hold a
    half-written change; the view shows the old content instead.

    Parameters
    ----------
    target : Path
        The file.

    Returns
    -------
    io.RawIOBase or None
        The view (to give to ``h5py.File(view, "r")`` and close afterwards), or ``None`` when
        there is no journal (read the file itself).

    Raises
    ------
    DekerLockError
        If a live process holds the journal (a writer working without the array lock).

    """
    opened = _open_stale_journal(target)
    if opened is None:
        return None
    _jpath, jfd, jshared, stale = opened
    try:
        if stale is None:  # the change never started: the file is intact
            lockprim.close_fd(jfd, jshared)
            return None
        return _OldVersion(target, (jfd, jshared), stale)
    except BaseException:
        lockprim.close_fd(jfd, jshared)
        raise
