"""Crash-safe file writes: new versions renamed into place, in-place changes under an undo journal.

A process killed at any moment (``kill -9`` included) leaves every file with either its old or
its new content, never a torn mix.  Two mechanisms; :mod:`deker.storage.hdf5` picks one per
operation:

**New version, then rename** (:func:`replacing`, :func:`write_bytes`).  The new content is
written to ``.<name>.<32 hex>.tmp`` in the same directory, flushed (``fsync``, see below),
then renamed over the target (``os.replace``; ``os.link`` for an exclusive creation) and the
directory is flushed.  The rename is atomic: a reader sees the old file or the new one.  Used
for creations, JSON metadata, and writes or clears covering every cell of a file that holds
data.  Cost: writing the new file, and freeing the old one.

**Undo journal** (:func:`journaled`, :mod:`deker.storage.journal`), for every other change
(partial writes and clears, the first write into a file without data, metadata updates).
Changing a few cells of a big file by writing a new version would copy the whole file.
Instead the file is changed in place through a file object handed to h5py (its ``fileobj``
driver), which, before it
overwrites any byte that existed when the change began, appends the old bytes to
``.<name>.journal`` (checksummed records) and flushes the journal.  Bytes appended past the
old end need no record: undoing truncates them.  When h5py has closed the file, the target is
flushed and the journal removed: that unlink is the commit.  If the process dies before, the
journal is left behind and:

* writers (who hold the array's exclusive lock) roll the file back before they touch it
  (:func:`recover`, called from :func:`clean_leftovers`);
* readers, who must not write, read the old version through :func:`old_version`, an overlay
  of the journal on the damaged file, until a writer (or :func:`clean_storage`) rolled it back.

The journal costs reading and writing again the bytes that are overwritten (about three times
the I/O of the overwritten region, HDF5 metadata included; appended data costs nothing more);
the rest of the file is untouched, however big.

Temporary files and journals are ``flock``-held by their writer while it lives, so a stale one
(its writer died) can be told from a live one (:func:`find_leftovers`).  Their names are defined
in :mod:`deker.storage.layout` (:func:`~deker.storage.layout.leftover_target`).

A killed process needs no ``fsync``: the kernel keeps what it wrote, and the rename or the
journal orders the steps.  Power loss and kernel crashes do need flushes; setting the
environment variable ``DEKER_FSYNC=1`` in a process makes every step above flush the file and
its directory (it is read at each write, never set by deker; set it on Dask workers too).
That costs waiting for the disk: about the time to write the data once more.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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
from deker.storage.layout import ARRAY_EXT, ensure_dir, leftover_target, temp_file_name
from deker.storage.locks import LockSettings, array_write_lock

__all__ = [
    "Leftover",
    "UndoJournal",
    "clean_leftovers",
    "clean_storage",
    "discard_leftovers",
    "durable",
    "find_leftovers",
    "fsync_dir",
    "fsync_file",
    "is_held",
    "journal_path",
    "journaled",
    "old_version",
    "recover",
    "replacing",
    "write_bytes",
]

logger = logging.getLogger(__name__)

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


# ------------------------------------------------------------------------------ new versions


def _new_temp(target: Path) -> tuple[Path, int]:
    """Create an empty temporary file next to ``target``, flock-held; return (path, fd)."""
    while True:
        tmp = target.with_name(temp_file_name(target.name))
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o666)
        except FileExistsError:  # pragma: no cover - 128 random bits collided
            continue
        fcntl.flock(fd, fcntl.LOCK_EX)  # nobody else knows the name yet: never blocks long
        return tmp, fd


@contextlib.contextmanager
def replacing(target: Path, *, exclusive: bool = False) -> Iterator[Path]:
    """Write a new version of ``target`` under a temporary name, then put it in place atomically.

    The body of the ``with`` block writes the yielded path (for example with h5py in mode
    ``"w"``).  When it finishes, the file is flushed and renamed over ``target`` (or linked as
    ``target`` when ``exclusive``), and the directory is flushed.  If the body raises, the
    temporary file is removed and ``target`` is unchanged.

    Parameters
    ----------
    target : Path
        The file to replace or create (its directory must exist).
    exclusive : bool
        Create ``target``; fail if it exists.

    Yields
    ------
    Path
        The temporary path to write.

    Raises
    ------
    FileExistsError
        With ``exclusive``, if ``target`` exists.

    """
    tmp, fd = _new_temp(target)
    try:
        yield tmp
        if not exclusive:
            with contextlib.suppress(FileNotFoundError):
                os.fchmod(fd, stat.S_IMODE(os.stat(target).st_mode))  # keep the old permissions
        fsync_file(fd)
        if exclusive:
            os.link(tmp, target)
        else:
            os.replace(tmp, target)
        fsync_dir(target.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # after a rename it is gone; after a link it is a second name
        os.close(fd)


def write_bytes(target: Path, data: bytes, *, exclusive: bool = False) -> None:
    """Write ``data`` as the new content of ``target`` atomically (see :func:`replacing`).

    Parameters
    ----------
    target : Path
        The file (parent directories are created).
    data : bytes
        The complete new content.
    exclusive : bool
        Create ``target``; fail with :class:`FileExistsError` if it exists.

    """
    for attempt in range(5):
        ensure_dir(target.parent)
        try:
            with replacing(target, exclusive=exclusive) as tmp, open(tmp, "wb") as fh:
                fh.write(data)
            return
        except FileNotFoundError:  # a concurrent cleanup removed the empty directory: again
            if attempt == 4 or target.parent.exists():
                raise


# ------------------------------------------------------------------------------ leftovers


@dataclass(frozen=True)
class Leftover:
    """A file left by an interrupted crash-safe write.

    Parameters
    ----------
    path : Path
        The leftover itself.
    kind : str
        ``"temp"`` (an unfinished new version: garbage) or ``"journal"`` (an interrupted
        in-place change: the target must be rolled back with :func:`recover`).
    target : Path
        The file it belongs to.
    alive : bool
        Whether its writer still holds it (then it is no leftover yet).

    """

    path: Path
    kind: str
    target: Path
    alive: bool


def find_leftovers(directory: Path) -> list[Leftover]:
    """List temporary files and journals under ``directory`` (recursively, links not followed).

    Parameters
    ----------
    directory : Path
        Any directory of a storage.

    Returns
    -------
    list of Leftover
        Sorted by path; ``alive`` tells the ones whose writer is still at work.

    """
    found = []
    for dirpath, _dirs, files in os.walk(directory):
        for name in files:
            what = leftover_target(name)
            if what is None:
                continue
            path = Path(dirpath) / name
            target = Path(dirpath) / what[1]
            alive = is_held(path)
            if alive is None:
                continue
            if alive and what[0] == "temp" and _same_inode(path, target):
                alive = False  # a second name of its target: the target's lock shows through it
            found.append(Leftover(path, what[0], target, alive))
    found.sort(key=lambda item: str(item.path))
    return found


def clean_leftovers(target: Path) -> list[Path]:
    """Remove what interrupted writes of ``target`` left; the caller holds its exclusive lock.

    A stale journal is rolled back (:func:`recover`); temporary files nobody holds are deleted.

    Parameters
    ----------
    target : Path
        The file about to be written (or deleted).

    Returns
    -------
    list of Path
        The leftovers dealt with.

    """
    handled: list[Path] = []
    prefix = f".{target.name}."
    try:
        with os.scandir(target.parent) as entries:
            names = [e.name for e in entries if e.name.startswith(prefix)]
    except FileNotFoundError:
        return handled
    for name in names:
        what = leftover_target(name)
        if what is None or what[1] != target.name:
            continue
        path = target.parent / name
        if what[0] == "journal":
            if recover(target):
                handled.append(path)
        elif is_held(path) is False or _same_inode(path, target):
            # a temp that is a second name of the target is what an exclusive creation
            # leaves when it dies between link and unlink; the target's lock shows through it
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                handled.append(path)
    return handled


def _same_inode(a: Path, b: Path) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except FileNotFoundError:
        return False
    return (sa.st_ino, sa.st_dev) == (sb.st_ino, sb.st_dev)


def discard_leftovers(target: Path) -> list[Path]:
    """Remove every leftover of ``target`` without applying it; for a deleted or new target.

    Call it after ``target`` was unlinked (a journal of a file that is gone has nothing to
    roll back) or before ``target`` is created (a journal left by an earlier file of that
    name must never be applied to the new one).  Leftovers a live writer holds are kept.

    Parameters
    ----------
    target : Path
        The file (which does not exist).

    Returns
    -------
    list of Path
        The removed leftovers.

    """
    removed: list[Path] = []
    prefix = f".{target.name}."
    try:
        with os.scandir(target.parent) as entries:
            names = [e.name for e in entries if e.name.startswith(prefix)]
    except FileNotFoundError:
        return removed
    for name in names:
        what = leftover_target(name)
        if what is None or what[1] != target.name:
            continue
        path = target.parent / name
        if is_held(path) is False:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                removed.append(path)
    return removed


def clean_storage(directory: Path, settings: LockSettings) -> list[Path]:
    """Deal with every stale leftover under ``directory`` (what ``clear_locks`` should call).

    Temporary files nobody holds are deleted.  A stale journal is rolled back under its
    array's write lock (waiting for it like any writer); the journal of a file that no longer
    exists is just deleted.  Live ones (their writer still works) are left alone.

    Parameters
    ----------
    directory : Path
        A storage, collections or collection directory.
    settings : LockSettings
        How long to wait for an array's write lock.

    Returns
    -------
    list of Path
        The leftovers removed (journals: after the rollback), sorted.

    """
    done: list[Path] = []
    for item in find_leftovers(directory):
        if item.alive:
            continue
        if item.kind == "temp":
            if is_held(item.path) is False or _same_inode(item.path, item.target):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(item.path)
                    done.append(item.path)
            continue
        name = item.target.name
        try:
            if not name.endswith(ARRAY_EXT):
                raise FileNotFoundError(item.target)  # we journal array files only
            with array_write_lock(item.target.parent, name[: -len(ARRAY_EXT)], settings):
                if recover(item.target):
                    done.append(item.path)
        except FileNotFoundError:  # the file is gone: its journal has nothing to restore
            done.extend(discard_leftovers(item.target))
    done.sort(key=str)
    for path in done:
        logger.info("removed the leftover %s of an interrupted write", path)
    return done
