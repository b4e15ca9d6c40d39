"""Crash-safe file writes: new versions renamed into place, in-place changes under an undo journal.

A process killed at any moment (``kill -9`` included) leaves every file with either its old or
its new content, never a torn mix.  Two mechanisms; :mod:`deker.storage.hdf5` picks one per
operation:

**New version, then rename** (:func:`replacing`, :func:`write_bytes`).  The new content is
written to ``.<name>.<32 hex>.tmp`` in the same directory, flushed (``fsync``, see below),
then put in place and the directory is flushed: swapped with the target
(``renameat2(RENAME_EXCHANGE)``, Linux) and the old version unlinked, else renamed over it
(``os.replace``); ``os.link`` for an exclusive creation.  Each step is atomic: a reader sees the
old file or the new one.  Used for creations, JSON metadata, and writes or clears covering
every cell of a file that holds data.  Cost: writing the new file, and freeing the old one.

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
  of the journal on the damaged file, until a writer (or
  :func:`deker.storage.cleanup.clean_storage`) rolled it back.

The journal costs reading and writing again the bytes that are overwritten (about three times
the I/O of the overwritten region, HDF5 metadata included; appended data costs nothing more);
the rest of the file is untouched, however big.

Temporary files and journals are locked by their writer while it lives (through
:mod:`deker.storage.lockprim`, with the lock primitive in use, and written only through the
locked descriptor, so no close drops a POSIX lock), so a stale one (its writer died) can be
told from a live one (:func:`find_leftovers`).  Their names are defined
in :mod:`deker.storage.layout` (:func:`~deker.storage.layout.leftover_target`).

A killed process needs no ``fsync``: the kernel keeps what it wrote, and the rename or the
journal orders the steps.  Power loss and kernel crashes do need flushes; setting the
environment variable ``DEKER_FSYNC=1`` in a process makes every step above flush the file and
its directory (it is read at each write, never set by deker; set it on Dask workers too).
That costs waiting for the disk: about the time to write the data once more.

**Failed writes** (a full disk, ``EIO``...) never reach HDF5, which would be left in a state
that crashes the process later (h5py/h5py#1642): h5py writes only through the file objects of
:mod:`deker.storage.journal` (:class:`UndoJournal`, :class:`NewFile`), which record the first
failure and keep what HDF5 writes afterwards in memory.  Once h5py has closed the file the
change is rolled back, or the new version deleted, and the failure raised.

**Directories** (collections) are built and removed by renames too (:func:`build_directory`,
:func:`remove_tree`, :func:`empty_directory`): a new tree is assembled under a hidden
``.<32 hex>.new`` name and renamed to its name; a tree to delete is first renamed to a hidden
``.<32 hex>.trash`` name, then deleted.  A crash leaves the whole old tree or none of it
visible; the scratch directory left behind is deleted by :func:`deker.storage.cleanup.clean_storage`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deker.storage import lockprim
from deker.storage.fileobjects import write_all
from deker.storage.journal import (
    HeldFile,
    NewFile,
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
from deker.storage.layout import (
    ARRAY_DATA,
    ARRAY_SYMLINKS,
    VARRAY_DATA,
    VARRAY_SYMLINKS,
    Leftover,
    ensure_dir,
    is_scratch_dir_name,
    leftover_target,
    scratch_dir_name,
    temp_file_name,
    walk_storage,
)

# Directories that hold arrays, never scratch directories (not searched for them).
_DATA_TREES = frozenset((ARRAY_DATA, ARRAY_SYMLINKS, VARRAY_DATA, VARRAY_SYMLINKS))
# Scratch directories younger than this (seconds) may belong to a running operation.
SCRATCH_MIN_AGE = 10.0

__all__ = [
    "SCRATCH_MIN_AGE",
    "HeldFile",
    "NewFile",
    "UndoJournal",
    "clean_leftovers",
    "build_directory",
    "remove_stale_temp",
    "discard_leftovers",
    "empty_directory",
    "find_scratch_dirs",
    "durable",
    "find_leftovers",
    "fsync_dir",
    "fsync_file",
    "is_held",
    "remove_tree",
    "journal_path",
    "journaled",
    "old_version",
    "recover",
    "replacing",
    "write_bytes",
]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ new versions


def _new_temp(target: Path) -> tuple[Path, lockprim.Hold]:
    """Create an empty temporary file next to ``target``, held exclusively; return (path, hold).

    Held through :mod:`deker.storage.lockprim` with the lock primitive in use, so that a sweeper
    (:func:`find_leftovers`) in another process sees it live.  Whoever writes it must do so
    through the hold's descriptor (:class:`NewFile`, :func:`deker.storage.lockprim.open_fd`):
    closing another descriptor of it would drop a POSIX lock (NFS).
    """
    while True:
        tmp = target.with_name(temp_file_name(target.name))
        try:
            held = lockprim.hold_new(tmp)
        except FileExistsError:  # pragma: no cover - 128 random bits collided
            continue
        if lockprim.same_file(held, tmp):
            return tmp, held
        # a sweeper removed it between its creation and its lock (lockprim.unlink_unheld): another one
        lockprim.release(held)


@contextlib.contextmanager
def replacing(target: Path, *, exclusive: bool = False) -> Iterator[Path]:
    """Write a new version of ``target`` under a temporary name, then put it in place atomically.

    The body of the ``with`` block writes the yielded path, through this process's descriptor
    of it (:class:`NewFile`, e.g. for h5py in mode ``"w"``, or
    :func:`deker.storage.lockprim.open_fd`), never through a descriptor of its own: the file
    is locked (a sweeper must see it live) and closing another descriptor of it would drop a
    POSIX lock.  When the body finishes, the file is flushed and renamed over ``target`` (or
    linked as ``target`` when ``exclusive``), and the directory is flushed.  If the body
    raises, the temporary file is removed and ``target`` is unchanged.

    If this process holds a lock on ``target`` (a writer's data-file lock), the new version
    stays locked after the rename until that lock is released
    (:func:`deker.storage.lockprim.attach`): the name is locked throughout, and the lock goes
    on with the new file.

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
    tmp, held = _new_temp(target)
    fd = held.fd
    owner = None if exclusive else lockprim.reuse(target)
    replaced = False
    try:
        yield tmp
        if not exclusive:
            with contextlib.suppress(FileNotFoundError):
                os.fchmod(fd, stat.S_IMODE(os.stat(target).st_mode))  # keep the old permissions
        fsync_file(fd)
        if exclusive:
            os.link(tmp, target)
        elif _exchange(tmp, target):
            replaced = True
            os.unlink(tmp)  # now the old version
        else:
            os.replace(tmp, target)
            replaced = True
        fsync_dir(target.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # after a rename it is gone; after a link it is a second name
        if replaced and owner is not None:
            lockprim.attach(owner, held)  # the new version is locked as long as the old one
        else:
            lockprim.release(held)
        if owner is not None:
            lockprim.release(owner)


_RENAME_EXCHANGE = 2  # renameat2(2) flag: swap two existing names atomically
_AT_FDCWD = -100
_renameat2: Any = None  # the libc function once looked up; False where it cannot be used


def _exchange(new: Path, target: Path) -> bool:
    """Swap ``new`` and the existing ``target`` atomically (Linux ``renameat2``); ``False`` if not done.

    A rename over an existing file makes ext4 (``auto_da_alloc``, on by default) start writing
    the renamed file to disk at once, which costs about as much as writing it: an exchange
    leaves the old version under the temporary name, to be unlinked, and writes nothing.  Where
    the system has no ``renameat2`` or the filesystem does not support the exchange (and when
    ``target`` does not exist) nothing is done and the caller renames.
    """
    global _renameat2
    if _renameat2 is None:
        try:
            _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
            _renameat2.argtypes = [
                ctypes.c_int,
                ctypes.c_char_p,
                ctypes.c_int,
                ctypes.c_char_p,
                ctypes.c_uint,
            ]
            _renameat2.restype = ctypes.c_int
        except (AttributeError, OSError):
            _renameat2 = False
    if _renameat2 is False:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(new), _AT_FDCWD, os.fsencode(target), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        logger.debug("renameat2(RENAME_EXCHANGE) unsupported for %s (%s): renaming", target, os.strerror(err))
    elif err != errno.ENOENT:
        raise OSError(err, os.strerror(err), str(target))
    return False


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
            with replacing(target, exclusive=exclusive) as tmp:
                _fill(tmp, data)
            return
        except FileNotFoundError:  # a concurrent cleanup removed the empty directory: again
            if attempt == 4 or target.parent.exists():
                raise


def _fill(tmp: Path, data: bytes) -> None:
    """Write ``data`` into the new, held temporary file ``tmp`` through its held descriptor."""
    fd, shared = lockprim.open_fd(tmp, True)
    try:
        write_all(fd, data, 0)
    finally:
        lockprim.close_fd(fd, shared)


# ------------------------------------------------------------------------------ leftovers


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
    for dirpath, files in walk_storage(directory):
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
    for kind, path in _leftovers_of(target):
        if kind == "journal":
            if recover(target):
                handled.append(path)
        elif remove_stale_temp(path, target):
            handled.append(path)
    return handled


def remove_stale_temp(path: Path, target: Path) -> bool:
    """Delete the temporary file ``path`` of ``target`` if no writer holds it any more.

    A temporary file that is a second name of its target is what an exclusive creation leaves
    when it dies between link and unlink (the target's lock shows through it): it goes too.

    Parameters
    ----------
    path : Path
        A temporary file (:func:`~deker.storage.layout.leftover_target` says ``"temp"``).
    target : Path
        The file it belongs to.

    Returns
    -------
    bool
        Whether it was deleted here.

    """
    if _same_inode(path, target):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            return True
        return False
    return lockprim.unlink_unheld(path)


def _leftovers_of(target: Path) -> list[tuple[str, Path]]:
    """``(kind, path)`` of the temporary files and journal of ``target`` in its directory."""
    prefix = f".{target.name}."
    try:
        with os.scandir(target.parent) as entries:
            names = [e.name for e in entries if e.name.startswith(prefix)]
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        what = leftover_target(name)
        if what is not None and what[1] == target.name:
            found.append((what[0], target.parent / name))
    return found


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
    for _kind, path in _leftovers_of(target):
        if lockprim.unlink_unheld(path):
            removed.append(path)
    return removed


# ------------------------------------------------------------------------------ directories


def build_directory(parent: Path, name: str, files: dict[str, bytes]) -> None:
    """Create ``parent / name`` holding ``files``, all at once (a crash leaves no part of it).

    The tree is written under a scratch name, flushed (with ``DEKER_FSYNC=1``), then renamed
    to ``name``.  An existing *empty* directory ``name`` is replaced (the leftover of an
    interrupted creation of deker 1.1.7, which created the directory first).

    Parameters
    ----------
    parent : Path
        The directory to create it in (created if missing).
    name : str
        The new directory's name.
    files : dict of str to bytes
        File names and contents to put in it.

    Raises
    ------
    FileExistsError
        If ``parent / name`` exists and is not an empty directory (nothing is changed).

    """
    ensure_dir(parent)
    scratch = parent / scratch_dir_name("new")
    os.mkdir(scratch)
    try:
        for file_name, payload in files.items():
            fd = os.open(scratch / file_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                write_all(fd, payload)
                fsync_file(fd)
            finally:
                os.close(fd)
        fsync_dir(scratch)
        try:
            os.rename(scratch, parent / name)
        except OSError as exc:
            if isinstance(exc, (FileExistsError, IsADirectoryError, NotADirectoryError)) or exc.errno in (
                errno.ENOTEMPTY,
                errno.EEXIST,
            ):
                raise FileExistsError(f"{parent / name} already exists") from exc
            raise
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def remove_tree(path: Path) -> bool:
    """Delete the directory tree ``path``: renamed away at once, then deleted.

    Parameters
    ----------
    path : Path
        The directory.

    Returns
    -------
    bool
        ``False`` if it did not exist.

    """
    trash = path.parent / scratch_dir_name("trash")
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return False
    fsync_dir(path.parent)
    shutil.rmtree(trash, ignore_errors=True)
    return True


def empty_directory(path: Path, keep: str, first: tuple[str, ...] = ()) -> None:
    """Delete everything in directory ``path`` except the entry named ``keep``.

    The entries are renamed one by one into a scratch directory inside ``path``, then that is
    deleted: the entries named in ``first`` go first (pass the ones whose absence makes the
    rest unreachable, e.g. ``varray_data`` before the tiles of ``array_data``), so that a crash
    at any point leaves each entry either whole or gone.

    Parameters
    ----------
    path : Path
        The directory to empty.
    keep : str
        The name of the entry to keep.
    first : tuple of str
        Entry names to move first, in this order.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.

    """
    with os.scandir(path) as entries:
        names = sorted(
            (e.name for e in entries if e.name != keep and not is_scratch_dir_name(e.name)),
            key=lambda n: (first.index(n) if n in first else len(first), n),
        )
    if not names:
        return
    trash = path / scratch_dir_name("trash")
    os.mkdir(trash)
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.rename(path / name, trash / name)
    fsync_dir(path)
    shutil.rmtree(trash, ignore_errors=True)


def find_scratch_dirs(directory: Path, min_age: float = 0.0) -> list[Path]:
    """List the scratch directories under ``directory``, outside the data trees.

    Scratch directories (``.<32 hex>.trash``, ``.<32 hex>.new``) sit in the collections
    directory (collection creations and deletions) and in collection directories (clears):
    the search goes at most three levels deep (from a storage, a collections or a collection
    directory) and does not enter data, symlink or scratch trees.

    Parameters
    ----------
    directory : Path
        A storage, collections or collection directory.
    min_age : float
        Seconds since the directory's last status change (its rename): younger ones may belong
        to an operation still running.

    Returns
    -------
    list of Path
        Sorted.

    """
    found = []
    now = time.time()
    level = [directory]
    for _depth in range(3):
        below = []
        for parent in level:
            for path in _subdirs(parent):
                if path.name in _DATA_TREES:
                    continue
                if not is_scratch_dir_name(path.name):
                    below.append(path)
                    continue
                try:
                    changed = os.lstat(path).st_ctime
                except FileNotFoundError:
                    continue
                if now - changed >= min_age:
                    found.append(path)
        level = below
    found.sort(key=str)
    return found


def _subdirs(directory: Path) -> list[Path]:
    """List the directories in ``directory`` (symlinks not followed)."""
    try:
        with os.scandir(directory) as entries:
            return [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []
