"""Read-only inspection of a storage tree: sizes, what files lie where, whether a file is sound.

Used by the integrity check and the ``deker`` command.  Nothing here changes a file.

* :func:`tree_size` sums the sizes of the regular files under a directory (symlinks are not
  followed and not counted: the file they name is counted where it lives).
* :func:`scan_data_tree` sorts the files of an ``array_data`` / ``varray_data`` fan-out into
  data files at their id's main path, misplaced (orphan) files, and lock or temporary files.
* :func:`scan_symlink_tree` lists what lies in an ``array_symlinks`` / ``varray_symlinks`` tree.
* :func:`stale_leftovers` finds temporary files and undo journals left behind by interrupted
  writes (names from :mod:`deker.storage.layout`).
* :func:`inspect_array_file` opens one HDF5 array file, returns its metadata and, on request,
  reads every stored value (chunk by chunk, in bounded memory) to find damaged data.
"""

from __future__ import annotations

import contextlib
import math
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (registers the compression filters with HDF5)
import numpy as np

from deker.errors import DekerLockError, DekerValidationError
from deker.storage import chunkcodec, lockprim
from deker.storage.journal import HeldFile, old_version
from deker.storage.layout import (
    JOURNAL_SUFFIX,
    TEMP_SUFFIX,
    Leftover,
    id_dir_parts,
    is_scratch_dir_name,
    leftover_target,
)
from deker.storage.lockinfo import (
    CREATION_LOCK_EXT,
    FENCE_EXT,
    LOCK_EXT,
    READ_LOCK_EXT,
    VARRAY_LOCK_EXT,
    is_locked,
)

__all__ = [
    "LEFTOVER_MIN_AGE",
    "ArrayFileCheck",
    "DataTreeScan",
    "SymlinkEntry",
    "inspect_array_file",
    "is_leftover_name",
    "scan_data_tree",
    "scan_symlink_tree",
    "stale_leftovers",
    "tree_size",
]

#: Seconds since its last change after which an unlocked temporary file or journal counts as
#: left behind (writers hold a ``flock`` on theirs; this only covers the instant between
#: creating the file and locking it, and writers that take no lock).
LEFTOVER_MIN_AGE = 10.0

_LOCK_SUFFIXES = (READ_LOCK_EXT, VARRAY_LOCK_EXT, CREATION_LOCK_EXT, LOCK_EXT, FENCE_EXT)
# Cells read at once when a dataset is verified (bounded memory, whole chunks).
_VERIFY_CELLS = 1 << 22


def is_leftover_name(name: str) -> bool:
    """Return whether a file name is one of a temporary file or an undo journal.

    Unlike :func:`~deker.storage.layout.leftover_target`, which names the file a leftover
    belongs to, this also accepts the temporary files of lock markers.

    Parameters
    ----------
    name
        As for :func:`~deker.storage.layout.leftover_target`.

    Returns
    -------
    bool
        ``.<name>.<hex>.tmp`` (also lock markers being created) or ``.<name>.journal``.

    """
    return name.startswith(".") and name.endswith((TEMP_SUFFIX, JOURNAL_SUFFIX))


def _is_lock_name(name: str) -> bool:
    return name.endswith(_LOCK_SUFFIXES)


# ------------------------------------------------------------------------------------------ sizes


def tree_size(directory: Path) -> int:
    """Return the total size in bytes of the regular files under ``directory``.

    Directories are walked with :func:`os.scandir`; symlinks are neither followed nor counted;
    a file with several names (hard links) is counted once; files that vanish during the walk
    are skipped.

    Parameters
    ----------
    directory : Path
        Any directory (a missing one has size 0).

    Returns
    -------
    int
        The sum of ``st_size`` of every regular file (lock and metadata files included).

    """
    total = 0
    linked: set[tuple[int, int]] = set()  # files with several names, counted at the first
    stack = [os.fspath(directory)]
    while stack:
        current = stack.pop()
        try:
            it = os.scandir(current)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with it:
            for entry in it:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        if st.st_nlink > 1:
                            if (st.st_dev, st.st_ino) in linked:
                                continue
                            linked.add((st.st_dev, st.st_ino))
                        total += st.st_size
                except FileNotFoundError:
                    continue
    return total


# ------------------------------------------------------------------------------------ tree scans


def _walk_files(directory: Path) -> Iterator[tuple[tuple[str, ...], os.DirEntry[str]]]:
    """Yield ``(relative directory parts, entry)`` for every non-directory entry, sorted."""
    stack: list[tuple[str, tuple[str, ...]]] = [(os.fspath(directory), ())]
    while stack:
        current, rel = stack.pop()
        try:
            with os.scandir(current) as it:
                entries = sorted(it, key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            continue
        subdirs = []
        for entry in entries:
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except FileNotFoundError:  # pragma: no cover - vanished meanwhile
                continue
            if is_dir:
                if not is_scratch_dir_name(entry.name):
                    subdirs.append((entry.path, (*rel, entry.name)))
            else:
                yield rel, entry
        stack.extend(reversed(subdirs))


@dataclass
class DataTreeScan:
    """What lies in one data tree (``array_data`` or ``varray_data``).

    Parameters
    ----------
    ids : list of str
        Ids whose file ``<id><ext>`` sits at the id's main path (SPEC §2.2).
    misplaced : list of Path
        Files that are neither such a data file nor a lock or temporary file: data files at
        another place, files with other names, symlinks.
    """

    ids: list[str] = field(default_factory=list)
    misplaced: list[Path] = field(default_factory=list)


def scan_data_tree(data_dir: Path, ext: str) -> DataTreeScan:
    """Sort the files of a data tree.

    Lock files (``<id>.lock``, markers, ``.arrlock``) and temporary files are skipped: the
    integrity check looks at them separately.

    Parameters
    ----------
    data_dir : Path
        ``<collection>/array_data`` or ``<collection>/varray_data``.
    ext : str
        ``".hdf5"`` or ``".json"``.

    Returns
    -------
    DataTreeScan
        Ids in walk order (sorted by path) and misplaced files.

    """
    scan = DataTreeScan()
    for rel, entry in _walk_files(data_dir):
        name = entry.name
        if is_leftover_name(name) or _is_lock_name(name):
            continue
        if name.endswith(ext) and len(name) > len(ext) and not entry.is_symlink():
            array_id = name[: -len(ext)]
            try:
                parts = id_dir_parts(array_id)
            except DekerValidationError:
                parts = ()
            if parts and rel == parts:
                scan.ids.append(array_id)
                continue
        scan.misplaced.append(Path(entry.path))
    return scan


@dataclass(frozen=True)
class SymlinkEntry:
    """One non-directory entry of a symlink tree.

    Parameters
    ----------
    path : Path
        The entry.
    is_symlink : bool
        Whether it is a symbolic link (anything else does not belong there).
    target : str or None
        What the link names (not resolved), for symlinks.
    """

    path: Path
    is_symlink: bool
    target: str | None


def scan_symlink_tree(symlinks_dir: Path) -> list[SymlinkEntry]:
    """List the non-directory entries of a symlink tree (temporary and lock files skipped).

    Parameters
    ----------
    symlinks_dir : Path
        ``<collection>/array_symlinks`` or ``<collection>/varray_symlinks``.

    Returns
    -------
    list of SymlinkEntry
        Sorted by path.

    """
    out = []
    for _rel, entry in _walk_files(symlinks_dir):
        if is_leftover_name(entry.name) or _is_lock_name(entry.name):
            continue
        link = entry.is_symlink()
        target = None
        if link:
            try:
                target = os.readlink(entry.path)
            except OSError:  # pragma: no cover - vanished meanwhile
                continue
        out.append(SymlinkEntry(Path(entry.path), link, target))
    return out


def stale_leftovers(directory: Path, min_age: float = LEFTOVER_MIN_AGE) -> list[Leftover]:
    """Find temporary files and undo journals left behind by interrupted writes.

    A file counts when nobody holds a ``flock`` on it (writers hold theirs while they live)
    and it has not changed for ``min_age`` seconds.

    Parameters
    ----------
    directory : Path
        A collection (or any) directory, walked recursively.
    min_age : float
        Seconds.

    Returns
    -------
    list of Leftover
        Sorted by path.

    """
    now = time.time()
    found = []
    for _rel, entry in _walk_files(directory):
        if not is_leftover_name(entry.name):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:  # pragma: no cover - finished meanwhile
            continue
        path = Path(entry.path)
        if now - st.st_mtime < min_age or (stat.S_ISREG(st.st_mode) and is_locked(path)):
            continue
        kind_target = leftover_target(entry.name)
        if kind_target is None:
            found.append(Leftover(path, "journal" if entry.name.endswith(JOURNAL_SUFFIX) else "temp", None))
        else:
            found.append(Leftover(path, kind_target[0], path.parent / kind_target[1]))
    return sorted(found, key=lambda x: x.path)


# ------------------------------------------------------------------------------------ array files


@dataclass(frozen=True)
class ArrayFileCheck:
    """What :func:`inspect_array_file` found in one array file.

    Parameters
    ----------
    meta : bytes or None
        The stored metadata JSON, or ``None`` when it could not be read.
    meta_error : str or None
        Why the file or its metadata could not be read.
    data_errors : tuple of str
        Problems of the stored values and counters (only when the data was verified).
    vanished : bool
        The file disappeared before it could be read (a concurrent delete).
    """

    meta: bytes | None = None
    meta_error: str | None = None
    data_errors: tuple[str, ...] = ()
    vanished: bool = False


def _verify_blocks(shape: tuple[int, ...], unit: tuple[int, ...]) -> Iterator[tuple[slice, ...]]:
    """Cover ``shape`` with blocks of whole ``unit``s (chunks) of at most ~_VERIFY_CELLS cells."""
    block = list(shape)
    for axis in range(len(shape)):  # shrink the leading axes first, never below one unit
        if math.prod(block) <= _VERIFY_CELLS:
            break
        others = math.prod(block[:axis]) * math.prod(block[axis + 1 :])
        room = _VERIFY_CELLS // max(1, others)
        block[axis] = min(shape[axis], max(unit[axis], room // unit[axis] * unit[axis]))
    counts = [max(1, -(-size // step)) for size, step in zip(shape, block, strict=True)]
    for flat in range(math.prod(counts)):
        index = []
        for axis in reversed(range(len(shape))):
            flat, pos = divmod(flat, counts[axis])
            start = pos * block[axis]
            index.append(slice(start, min(shape[axis], start + block[axis])))
        yield tuple(reversed(index))


def _verify_data(handle: h5py.File, shape: tuple[int, ...], dtype: np.dtype[Any]) -> list[str]:
    errors = []
    total = math.prod(shape)
    counter = handle.get("empty_cells")
    if counter is None:
        errors.append("has no empty_cells dataset")
    else:
        try:
            value = counter[()]
            if counter.shape != () or np.asarray(value).dtype.kind not in "iu":
                errors.append(
                    f"empty_cells is not an integer scalar ({counter.dtype}, shape {counter.shape})"
                )
            elif not 0 <= int(value) <= total:
                errors.append(f"empty_cells is {int(value)}, outside 0..{total}")
        except OSError as exc:
            errors.append(f"empty_cells cannot be read: {exc}")
    dataset = handle.get("data")
    if dataset is None:
        if not errors and int(value) < total:  # (every writer drops the data with a full count)
            errors.append(f"has no data dataset, but empty_cells says {total - int(value)} cells hold data")
        return errors
    if not isinstance(dataset, h5py.Dataset):
        return [*errors, "data is not a dataset"]
    if tuple(dataset.shape) != tuple(shape):
        return [*errors, f"data has shape {tuple(dataset.shape)}, expected {tuple(shape)}"]
    if dataset.dtype != dtype:
        return [*errors, f"data has incorrect dtype {dataset.dtype}, expected {dtype}"]
    if total == 0:
        return errors
    handled, damage = chunkcodec.first_damaged_chunk(dataset)  # also what h5py misses
    if handled:
        return errors if damage is None else [*errors, f"data is corrupted: {damage}"]
    unit = tuple(dataset.chunks) if dataset.chunks else (1,) * len(shape)
    for block in _verify_blocks(tuple(shape), unit):
        try:
            dataset[block]
        except (OSError, ValueError, RuntimeError) as exc:
            where = ", ".join(f"{s.start}:{s.stop}" for s in block)
            errors.append(f"data is corrupted: reading [{where}] failed: {exc}")
            break
    return errors


def inspect_array_file(
    path: Path, shape: tuple[int, ...], dtype: np.dtype[Any] | str, verify_data: bool
) -> ArrayFileCheck:
    """Open an array file, read its metadata and optionally verify every stored value.

    Verifying reads the whole ``data`` dataset block by block (whole chunks, a few MB at a
    time), so damaged compressed chunks or truncated files are found; it also checks the
    ``empty_cells`` counter (an integer between 0 and the number of cells) and the shape and
    dtype of ``data``.  Raw (uncompressed, unchunked) values have no checksum: changed bytes
    there cannot be told from data.  A file with the undo journal of a dead writer is looked at
    as readers see it, before the interrupted change (the journal itself is reported apart).

    Parameters
    ----------
    path : Path
        The data file.
    shape : tuple of int
        The array shape of the collection.
    dtype : numpy dtype
        The array dtype of the collection.
    verify_data : bool
        Read every stored value (integrity level 4).

    Returns
    -------
    ArrayFileCheck
        The metadata bytes or why they could not be read, and the data problems.

    """
    with contextlib.ExitStack() as stack:
        try:
            # a file this process holds (a writer's, in another thread) is read through the held
            # descriptor: h5py closing a descriptor of its own would drop a POSIX lock (NFS)
            source: Any = stack.enter_context(HeldFile(path)) if lockprim.holds(path) else path
            if source is path:  # a dead writer's journal: the file as readers see it (not torn)
                view = old_version(path)
                source = path if view is None else stack.enter_context(view)
            handle = stack.enter_context(h5py.File(source, "r", locking=False))
        except FileNotFoundError:
            return ArrayFileCheck(vanished=True)
        except DekerLockError:  # a live writer holds the journal (an OSError too): not damage
            raise
        except OSError as exc:
            if not os.path.exists(path):
                return ArrayFileCheck(vanished=True)
            return ArrayFileCheck(meta_error=f"cannot be opened as HDF5: {exc}")
        try:
            meta_ds = handle.get("meta")
            if meta_ds is None:
                return ArrayFileCheck(meta_error="has no meta dataset")
            meta = bytes(meta_ds[()])
        except (OSError, KeyError, TypeError, ValueError) as exc:
            return ArrayFileCheck(meta_error=f"metadata cannot be read: {exc}")
        if not verify_data:
            return ArrayFileCheck(meta=meta)
        try:
            errors = _verify_data(handle, tuple(shape), np.dtype(dtype))
        except (OSError, KeyError) as exc:
            errors = [f"is damaged: {exc}"]
        return ArrayFileCheck(meta=meta, data_errors=tuple(errors))
