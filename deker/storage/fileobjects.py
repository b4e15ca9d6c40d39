"""File objects that h5py reads and writes through (its ``fileobj`` driver), on held descriptors.

h5py opening a file by name makes a descriptor of its own and closes it afterwards, which under
POSIX record locks (NFS) drops every lock this process holds on the file (see
:mod:`deker.storage.lockprim`).  So every file deker hands to h5py is one of these objects,
doing positioned I/O on this process's held descriptor of the file when there is one
(:func:`deker.storage.lockprim.open_fd`):

* :class:`HeldFile`, read-only (a writer reading its own locked data file);
* :class:`NewFile`, a new version written from scratch (:func:`deker.storage.atomic.replacing`);
* :class:`GuardedFile`, their writable base, whose writes never fail inside HDF5 (a failure is
  recorded, later writes stay in memory, see its docstring); the undo journal of
  :mod:`deker.storage.journal` is one too.

:func:`write_all` and :func:`read_exact` are the positioned I/O loops they (and the journal)
use.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

from deker.storage import lockprim

__all__ = [
    "FileBase",
    "GuardedFile",
    "HeldFile",
    "NewFile",
    "open_sized",
    "read_exact",
    "write_all",
]

logger = logging.getLogger(__name__)


def write_all(fd: int, data: bytes | memoryview, offset: int | None = None) -> None:
    """Write all of ``data`` (the system call may write less than asked; it is repeated).

    Parameters
    ----------
    fd : int
        An open descriptor.
    data : bytes or memoryview
        What to write.
    offset : int, optional
        Where (``pwrite``); by default at the descriptor's position (``write``).

    """
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        if offset is not None:
            offset += n
        view = view[n:]


def read_exact(fd: int, size: int, offset: int) -> bytes:
    """Read ``size`` bytes at ``offset`` (``pread``, repeated), fewer only at the end of the file.

    Parameters
    ----------
    fd : int
        An open descriptor.
    size : int
        How many bytes.
    offset : int
        From where.

    Returns
    -------
    bytes
        What was there.

    """
    chunks = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def open_sized(path: Path, writable: bool) -> tuple[int, lockprim.Hold | None, int]:
    """Open ``path`` like :func:`deker.storage.lockprim.open_fd` (same parameters); add its size.

    Returns
    -------
    tuple of (int, Hold or None, int)
        The descriptor, the share of the lock it belongs to, and the file's size.

    Raises
    ------
    FileNotFoundError
        If the file does not exist (nothing stays open on any error).

    """
    fd, shared = lockprim.open_fd(path, writable)
    try:
        size = os.fstat(fd).st_size
    except BaseException:
        lockprim.close_fd(fd, shared)
        raise
    return fd, shared, size


class FileBase(io.RawIOBase):
    """A positioned raw file over one descriptor (what h5py's ``fileobj`` driver calls).

    Parameters
    ----------
    fd : int
        The descriptor (from :func:`deker.storage.lockprim.open_fd`), given back on :meth:`close`.
    shared : Hold or None
        The share of the lock it belongs to, as :func:`~deker.storage.lockprim.open_fd` returned it.
    size : int
        The file's size as this object shows it.

    """

    def __init__(self, fd: int, shared: lockprim.Hold | None, size: int) -> None:
        super().__init__()
        self._fd = fd
        self._shared = shared
        self._pos = 0
        self._size = size

    def seekable(self) -> bool:
        """Return True."""
        return True

    def readable(self) -> bool:
        """Return True."""
        return True

    def tell(self) -> int:
        """Return the position."""
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move the position; return it."""
        if whence == io.SEEK_SET:
            self._pos = offset
        elif whence == io.SEEK_CUR:
            self._pos += offset
        elif whence == io.SEEK_END:
            self._pos = self._size + offset
        else:  # pragma: no cover - io contract
            raise ValueError(f"invalid whence {whence}")
        return self._pos

    def _window(self, buffer: memoryview) -> tuple[memoryview, int]:
        """Return ``buffer`` as bytes, and how many of them a read at the position can fill."""
        view = memoryview(buffer).cast("B")
        return view, max(0, min(len(view), self._size - self._pos))

    def close(self) -> None:
        """Give back the descriptor."""
        if self._fd >= 0:
            lockprim.close_fd(self._fd, self._shared)
            self._fd = -1
        super().close()


class _Overlay:
    """Pages written after a failed write: kept in memory, never on disk."""

    PAGE = 1 << 16

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self.pages: dict[int, bytearray] = {}

    def _page(self, number: int) -> bytearray:
        page = self.pages.get(number)
        if page is None:
            try:
                base = read_exact(self._fd, self.PAGE, number * self.PAGE)
            except OSError:  # the disk fails reads too: what HDF5 wrote last is in memory anyway
                base = b""
            page = self.pages[number] = bytearray(base.ljust(self.PAGE, b"\0"))
        return page

    def write(self, offset: int, view: memoryview) -> None:
        pos = 0
        while pos < len(view):
            number, start = divmod(offset + pos, self.PAGE)
            step = min(self.PAGE - start, len(view) - pos)
            self._page(number)[start : start + step] = view[pos : pos + step]
            pos += step

    def read(self, offset: int, view: memoryview) -> None:
        """Fill ``view`` with the bytes at ``offset`` (disk bytes where no page was written)."""
        pos = 0
        while pos < len(view):
            number, start = divmod(offset + pos, self.PAGE)
            step = min(self.PAGE - start, len(view) - pos)
            page = self.pages.get(number)
            if page is not None:
                view[pos : pos + step] = page[start : start + step]
            else:
                try:
                    got = read_exact(self._fd, step, offset + pos)
                except OSError:  # a failing disk: HDF5 gets zeros, the change is undone anyway
                    got = b""
                view[pos : pos + step] = got.ljust(step, b"\0")
            pos += step


class GuardedFile(FileBase):
    """A file object for h5py's ``fileobj`` driver whose writes never fail inside HDF5.

    HDF5 does not survive a failed write well: a write that fails while HDF5 closes a file
    (it flushes its chunk cache and metadata then) leaves a file id that HDF5 has half freed
    but still calls valid, and closing or collecting it later touches freed memory
    (h5py/h5py#1642, #2160): the process dies with SIGSEGV, or HDF5 writes stale metadata
    through a file object whose memory now belongs to another file.  So the first
    ``OSError`` of a write (``ENOSPC``, ``EIO``, ``EDQUOT``...) is recorded in
    :attr:`failure`, and from then on every write goes to pages in memory (reads see them),
    never to the disk: HDF5 finishes and closes normally, and the caller, seeing
    :attr:`failure`, throws the change away (rollback, or the new version deleted) and raises.

    Subclasses say what a write or a resize does on disk before the failure
    (:meth:`_before_write`, :meth:`_resize`).

    Parameters
    ----------
    fd : int
        A writable descriptor of the file (given back on :meth:`close`).
    shared : Hold or None
        The share of the lock it belongs to (see :func:`deker.storage.lockprim.open_fd`).
    size : int
        The file's size now.

    """

    def __init__(self, fd: int, shared: lockprim.Hold | None, size: int) -> None:
        super().__init__(fd, shared, size)
        self.failure: OSError | None = None
        self._overlay: _Overlay | None = None

    def _fail(self, exc: OSError) -> None:
        # Called inside HDF5 (h5py's lock held): nothing here may wait for another lock, not
        # even the logging handlers' (a thread holding one may be freeing h5py objects, which
        # waits for h5py's lock).  The failure is logged by raise_failure, once h5py is done.
        if self.failure is None:
            self.failure = exc
            self._overlay = _Overlay(self._fd)

    def _name(self) -> str:
        return str(getattr(self, "target", "a file"))

    def _overlaid(self, view: memoryview) -> bool:
        """Write ``view`` at the position in memory if a write failed before; whether it did."""
        if self._overlay is None:
            return False
        self._overlay.write(self._pos, view)
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        """Read the current bytes at the position into ``buffer``; return how many."""
        if self._overlay is not None:
            view, n = self._window(buffer)
            self._overlay.read(self._pos, view[:n])
            self._pos += n
            return n
        try:
            n = os.preadv(self._fd, [buffer], self._pos)
        except OSError as exc:  # EIO: recorded like a failed write (HDF5 is writing this file)
            self._fail(exc)
            return self.readinto(buffer)
        self._pos += n
        return n

    def _before_write(self, size: int) -> None:
        """Do what must reach the disk before ``size`` bytes are written at the position."""

    def write(self, data: bytes | memoryview) -> int:  # type: ignore[override]
        """Write at the position (see :meth:`_before_write`)."""
        view = memoryview(data).cast("B")
        size = len(view)
        if not self._overlaid(view):
            try:
                self._before_write(size)
                write_all(self._fd, view, self._pos)
            except OSError as exc:  # never raised into HDF5: see the class docstring
                self._fail(exc)
                self._overlaid(view)
        self._pos += size
        self._size = max(self._size, self._pos)
        return size

    def _resize(self, size: int) -> None:
        """Resize the file on disk to ``size`` bytes."""
        os.ftruncate(self._fd, size)

    def truncate(self, size: int | None = None) -> int:
        """Resize the file (see :meth:`_resize`)."""
        size = self._pos if size is None else size
        if self.failure is None:
            try:
                self._resize(size)
            except OSError as exc:
                self._fail(exc)
        self._size = size
        return size

    def writable(self) -> bool:
        """Return True: the file is open for writing."""
        return True

    def flush(self) -> None:
        """Nothing is buffered here (writes go straight to the file)."""

    def raise_failure(self) -> None:
        """Raise the recorded write failure, if any (after h5py closed the file)."""
        if self.failure is not None:
            logger.warning("writing %s failed (%s): the change will be undone", self._name(), self.failure)
            raise self.failure


class NewFile(GuardedFile):
    """A new, empty file (a temporary new version) for h5py to write in mode ``"w"``.

    Writes that fail are recorded in :attr:`failure` instead of reaching HDF5 (see
    :class:`GuardedFile`); the caller must check it after h5py closed the file and
    discard the file if it is set (:func:`raise_failure`).

    The file is written through this process's held descriptor of it when there is one (a
    temporary file of :func:`deker.storage.atomic.replacing`), so that closing this object
    drops no lock on it (POSIX record locks, as on NFS).

    Parameters
    ----------
    path : Path
        The file (it exists and is empty; it is opened, never created).

    """

    def __init__(self, path: Path) -> None:
        self.target = path
        fd, shared = lockprim.open_fd(path, True)
        super().__init__(fd, shared, 0)


class HeldFile(FileBase):
    """A read-only file object over this process's held descriptor of a file, for h5py.

    h5py opening a file by name makes a descriptor of its own and closes it afterwards, which
    under POSIX record locks (NFS) drops every lock this process holds on the file: a writer
    reading its own locked data file hands h5py this object instead (see
    :func:`deker.storage.lockprim.open_fd`).

    Parameters
    ----------
    path : Path
        The file.

    """

    def __init__(self, path: Path) -> None:
        super().__init__(*open_sized(path, False))

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        """Read the bytes at the position into ``buffer``; return how many."""
        view, n = self._window(buffer)
        got = os.preadv(self._fd, [view[:n]], self._pos) if n else 0
        self._pos += got
        return got
