"""Lock files as things on disk: their names, who owns them, whether the owner lives.

:mod:`deker.storage.locks` takes and releases locks (the protocol); this module knows the
lock file names (SPEC §3), probes lock state (through :mod:`deker.storage.lockprim`, so a
probe never drops a lock this process holds), and lists and cleans lock files.  A marker
(read lock, VArray write lock, creation lock) is *stale* when its owner is dead, i.e. nobody
holds the ``flock`` the owner took on it (deker 1.1.7 markers: its pid is gone from this
host).  Stale markers are harmless for deker (they are recovered on the fly) but block deker
1.1.7 processes until removed; :func:`clear_locks` removes them.  Array mutexes
(``<id>.lock``), tile fences (``<id>.fence``) and collection locks (``<name>.lock``) are
permanent files and are never removed here.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil

from deker.errors import DekerValidationError
from deker.storage import lockprim
from deker.storage.layout import ARRAY_EXT, id_dir_parts, walk_storage

__all__ = [
    "CREATION_LOCK_EXT",
    "FENCE_EXT",
    "KIND_COLLECTION",
    "KIND_CREATION",
    "KIND_FENCE",
    "KIND_MUTEX",
    "KIND_READ",
    "KIND_VARRAY",
    "LOCK_EXT",
    "OWN_READ_PREFIX",
    "READ_LOCK_EXT",
    "REMOVABLE_KINDS",
    "VARRAY_LOCK_EXT",
    "LockInfo",
    "Marker",
    "clear_locks",
    "fence_busy",
    "held_by_someone",
    "legacy_owner_alive",
    "marker_alive",
    "marker_temp_path",
    "parse_marker",
    "remove_orphan_collection_locks",
    "is_locked",
    "list_locks",
]

logger = logging.getLogger(__name__)

READ_LOCK_EXT = ".arrayreadlock"
VARRAY_LOCK_EXT = ".varraylock"
CREATION_LOCK_EXT = ".arrlock"
LOCK_EXT = ".lock"
FENCE_EXT = ".fence"
OWN_READ_PREFIX = "dk2-"
_TMP_EXT = ".tmp"

KIND_READ = "array read lock"
KIND_VARRAY = "varray write lock"
KIND_CREATION = "array creation lock"
KIND_MUTEX = "array mutex"
KIND_COLLECTION = "collection lock"
KIND_FENCE = "tile fence"

#: Kinds of lock files that only exist while an operation runs (removed when their owner died).
REMOVABLE_KINDS = (KIND_READ, KIND_VARRAY, KIND_CREATION)

_LOCK_SUFFIXES = (READ_LOCK_EXT, VARRAY_LOCK_EXT, CREATION_LOCK_EXT, LOCK_EXT, FENCE_EXT)


# --------------------------------------------------------------------------- low level


def held_by_someone(path: Path, operation: int = fcntl.LOCK_SH) -> bool | None:
    """Whether someone (this process included) holds a lock conflicting with ``operation``.

    ``operation`` is ``fcntl.LOCK_SH`` or ``fcntl.LOCK_EX``; None if the file is missing.
    """
    return lockprim.probe(path, operation == fcntl.LOCK_EX)


def legacy_owner_alive(pid: str, marker: Path) -> bool:
    """Whether the deker 1.1.7 process that made ``marker`` still runs on this host.

    The process with that pid must exist and be older than the marker (else the pid was
    reused).  A 1.1.7 process on another host is not seen: its markers count as dead.
    """
    if not pid.isdigit() or int(pid) <= 0:
        return False
    try:
        made = os.stat(marker).st_mtime
        return bool(psutil.Process(int(pid)).create_time() <= made + 1.0)
    except (FileNotFoundError, psutil.NoSuchProcess):
        return False
    except psutil.Error:  # e.g. access denied: it exists
        return True


# --------------------------------------------------------------------------- markers


@dataclass(frozen=True)
class Marker:
    """A read marker or a VArray write marker, as its name describes it (see :func:`parse_marker`).

    Its ``path``; its ``kind`` (:data:`KIND_READ` or :data:`KIND_VARRAY`); the ``array_id`` of
    the array (or tile) it is on; its ``owner`` (our owner token or read-marker id, the pid for
    deker 1.1.7 markers); and whether it is ``legacy``, written by deker 1.1.7 (liveness by pid
    heuristics).
    """

    path: Path
    kind: str
    array_id: str
    owner: str
    legacy: bool  # written by deker 1.1.7 (liveness by pid heuristics)


def parse_marker(path: Path) -> Marker | None:
    """Return what the name of a marker file says, or None if it names no marker.

    Parameters
    ----------
    path : Path
        A file that may be a read marker (``.arrayreadlock``) or a VArray marker (``.varraylock``).

    Returns
    -------
    Marker or None
        None for any other name, or a marker name of the wrong shape.

    """
    name = path.name
    if name.endswith(READ_LOCK_EXT):
        parts = name[: -len(READ_LOCK_EXT)].split(":")
        if len(parts) != 4:
            return None
        own = parts[1].startswith(OWN_READ_PREFIX)
        return Marker(path, KIND_READ, parts[0], parts[1] if own else parts[2], not own)
    if name.endswith(VARRAY_LOCK_EXT):
        head, sep, owner = name[: -len(VARRAY_LOCK_EXT)].rpartition(":")
        if not sep or not head.endswith(ARRAY_EXT):
            return None
        return Marker(path, KIND_VARRAY, head[: -len(ARRAY_EXT)], owner, owner.isdigit())
    return None


def marker_alive(marker: Marker) -> bool:
    """Return whether the owner of a marker lives (ours: it holds its lock; 1.1.7: by pid heuristics).

    A deker 1.1.7 VArray marker is live while someone holds the tile's data file locked.
    """
    if not marker.legacy:
        return bool(held_by_someone(marker.path))
    if marker.kind == KIND_READ:
        return legacy_owner_alive(marker.owner, marker.path)
    return bool(held_by_someone(marker.path.parent / f"{marker.array_id}{ARRAY_EXT}"))


def fence_busy(marker: Marker) -> bool:
    """Whether a tile task holds the fence of the tile a VArray marker of ours is on.

    The marker of a dead coordinator is then kept (by :func:`clear_locks` and by writers that
    meet it) until the task has ended: deker 1.1.7 readers know no fence, the marker keeps
    them out.
    """
    if marker.kind != KIND_VARRAY or marker.legacy:
        return False
    return bool(held_by_someone(marker.path.parent / f"{marker.array_id}{FENCE_EXT}"))


# --------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class LockInfo:
    """One lock file found in a storage.

    Parameters
    ----------
    path : Path
        The file.
    kind : str
        ``"array read lock"``, ``"varray write lock"``, ``"array creation lock"``,
        ``"array mutex"``, ``"tile fence"`` or ``"collection lock"``.
    array_id : str or None
        The array (or tile) it concerns.
    owner : str or None
        Owner token, read-marker id or pid (deker 1.1.7 markers).
    alive : bool
        Whether its owner still holds it (for mutexes, fences and collection locks: whether
        anyone holds it now).

    """

    path: Path
    kind: str
    array_id: str | None
    owner: str | None
    alive: bool

    @property
    def stale(self) -> bool:
        """Whether this is a marker left behind by a dead owner (what :func:`clear_locks` removes)."""
        return self.kind in REMOVABLE_KINDS and not self.alive


def is_locked(path: Path) -> bool:
    """Return whether some open file description holds a ``flock`` on ``path``.

    Parameters
    ----------
    path : Path
        Any file (a lock file, a data file...), whoever may hold it.

    Returns
    -------
    bool
        ``False`` also when the file does not exist.

    """
    return bool(held_by_someone(path, fcntl.LOCK_EX))


def _is_mutex(path: Path) -> bool:
    stem = path.name[: -len(LOCK_EXT)]
    try:
        parts = id_dir_parts(stem)
    except DekerValidationError:
        return False
    return path.parent.parts[-len(parts) :] == parts


def _info(path: Path) -> LockInfo | None:
    name = path.name
    if name.startswith("."):
        return None
    marker = parse_marker(path)
    if marker is not None:
        return LockInfo(path, marker.kind, marker.array_id, marker.owner, marker_alive(marker))
    if name.endswith(CREATION_LOCK_EXT):
        return LockInfo(path, KIND_CREATION, None, None, is_locked(path))
    if name.endswith(FENCE_EXT):
        return LockInfo(path, KIND_FENCE, name[: -len(FENCE_EXT)], None, is_locked(path))
    if name.endswith(LOCK_EXT):
        if _is_mutex(path):
            return LockInfo(path, KIND_MUTEX, name[: -len(LOCK_EXT)], None, is_locked(path))
        return LockInfo(path, KIND_COLLECTION, None, None, is_locked(path))
    return None


def list_locks(directory: Path) -> list[LockInfo]:
    """List the lock files under ``directory`` (recursively, symlinks not followed).

    Parameters
    ----------
    directory : Path
        A storage, collections or collection directory.

    Returns
    -------
    list of LockInfo
        Sorted by path.

    """
    found: list[LockInfo] = []
    for dirpath, files in walk_storage(directory):
        for name in files:
            if name.endswith(_LOCK_SUFFIXES):
                info = _info(Path(dirpath) / name)
                if info is not None:
                    found.append(info)
    found.sort(key=lambda i: str(i.path))
    return found


def marker_temp_path(marker: Path) -> Path:
    """Return a new temporary name for ``marker`` (``.<name>.<12 hex>.tmp``, next to it).

    A marker is created under such a name, locked, then renamed into place; one left behind
    by a creator that died before the rename is removed by :func:`clear_locks`.

    Parameters
    ----------
    marker : Path
        The marker to create.

    Returns
    -------
    Path
        A fresh temporary path (random, so practically never taken).

    """
    return marker.with_name(f".{marker.name}.{uuid.uuid4().hex[:12]}{_TMP_EXT}")


def _stale_temp_markers(directory: Path) -> list[Path]:
    """Temporary marker files (``.<marker>.<hex>.tmp``) whose creator died before renaming them."""
    stale = []
    for dirpath, files in walk_storage(directory):
        for name in files:
            if (
                name.startswith(".")
                and name.endswith(_TMP_EXT)
                and (READ_LOCK_EXT in name or VARRAY_LOCK_EXT in name)
            ):
                path = Path(dirpath) / name
                if held_by_someone(path) is False:
                    stale.append(path)
    return stale


def remove_orphan_collection_locks(collections_dir: Path) -> list[Path]:
    """Remove the collection locks ``<name>.lock`` that name no collection and nobody holds.

    An interrupted ``create_collection`` (killed before its directory appeared) or
    ``Collection.delete`` (killed between removing the directory and its lock) leaves one.  Each
    is locked first (without waiting): a running creation holds its lock, so a lock taken here
    belongs to no running operation, and it is removed only if the directory is still absent.

    Parameters
    ----------
    collections_dir : Path
        The collections directory of a storage.

    Returns
    -------
    list of Path
        The removed lock files, sorted.

    """
    removed: list[Path] = []
    try:
        with os.scandir(collections_dir) as entries:
            names = [
                e.name for e in entries if e.name.endswith(LOCK_EXT) and e.is_file(follow_symlinks=False)
            ]
    except FileNotFoundError:
        return removed
    for name in names:
        path, collection_dir = collections_dir / name, collections_dir / name[: -len(LOCK_EXT)]
        if collection_dir.is_dir():
            continue
        try:
            held = lockprim.hold(path, True)
        except FileNotFoundError:
            continue
        if held is None:
            continue
        try:
            if lockprim.same_file(held, path) and not collection_dir.is_dir():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    removed.append(path)
        finally:
            lockprim.release(held)
    removed.sort(key=str)
    return removed


def clear_locks(directory: Path, *, force: bool = False) -> list[Path]:
    """Remove dead read markers, VArray markers and creation locks under ``directory``.

    Collection ``.lock`` files and array mutexes are never removed.  A dead VArray marker of
    this deker is kept while a tile task still holds its tile's fence (its coordinator died
    mid-update): deker 1.1.7 readers, which know no fence, are kept out of the tile by it.

    Parameters
    ----------
    directory : Path
        A storage, collections or collection directory.
    force : bool
        Remove live ones too (breaks the protection of running operations).

    Returns
    -------
    list of Path
        The removed files, sorted.

    """
    removed: list[Path] = []
    for info in list_locks(directory):
        if info.kind in REMOVABLE_KINDS and (force or not info.alive):
            marker = parse_marker(info.path)
            if not force and marker is not None and fence_busy(marker):
                logger.info("kept %s: a tile task of its dead coordinator still holds the fence", info.path)
                continue
            if not force and info.kind == KIND_CREATION:
                # its name is taken again by the next creator of that key, who may have locked
                # it since it was listed: removed only while held here (like a releasing creator)
                if lockprim.unlink_unheld(info.path, is_locked):
                    removed.append(info.path)
                continue
            try:
                os.unlink(info.path)
            except FileNotFoundError:
                continue
            removed.append(info.path)
    for path in _stale_temp_markers(directory):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            removed.append(path)
    removed.sort(key=str)
    for path in removed:
        logger.info("removed lock file %s", path)
    return removed
