"""Per-file work, as module-level functions over small picklable specs.

These functions are what a VArray operation sends to its executor (a thread pool, a process
pool, or Dask workers on other hosts).  Each call receives only plain values: a
:class:`FileSpec` (storage-relative location, id, shape, dtype, fill value, HDF5 creation
options, lock settings), bounds inside the file, data, and the owner token of the operation's
lock.  A task opens its file itself, checks that the token still owns it, works, and closes;
a write or clear holds the tile's fence meanwhile (:func:`~deker.storage.locks.tile_write_guard`),
so that it cannot land after a later writer's write if its coordinator dies.
Nothing here refers to a client, a collection, an open file or a lock object.

A worker may see the storage at another path than the coordinator (the same filesystem
mounted elsewhere): :func:`resolve_root` maps the coordinator's path with the
``DEKER_ROOT_MAP`` environment variable of the worker (``"/coordinator/path=/worker/path"``,
several pairs separated by ``;``).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, fields
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from deker.errors import DekerInstanceNotExistsError, DekerStorageError
from deker.storage.arrayfile import ArrayLayout, Bounds, os_errors, selection_shape
from deker.storage.hdf5files import HDF5_FILES
from deker.storage.identity import storage_problem
from deker.storage.layout import ARRAY_EXT, CollectionPaths, remove_file_and_empty_parents
from deker.storage.locks import (
    LockSettings,
    array_read_lock,
    array_write_lock,
    tile_read_guard,
    tile_write_guard,
)

__all__ = [
    "FileSpec",
    "clear_array",
    "read_array",
    "storage_errors",
    "write_array",
    "clear_piece",
    "read_piece",
    "read_piece_into",
    "resolve_root",
    "write_piece",
    "check_storage",
    "check_storage_at",
    "process_name",
    "write_piece_broadcast",
]

logger = logging.getLogger(__name__)


def storage_errors(path: Path | str) -> AbstractContextManager[None]:
    """Turn an operating-system error met while working on ``path`` into a deker error.

    :func:`deker.storage.arrayfile.os_errors` with the words ``"work on"``:
    :class:`DekerStorageError` names the file; ``FileNotFoundError`` (the callers turn it into
    "deleted") and deker's own errors pass unchanged.

    Parameters
    ----------
    path : Path or str
        The file (or directory) the work is about.

    Returns
    -------
    contextlib.AbstractContextManager
        The context the work runs in.
    """
    return os_errors(path, "work on")


@lru_cache(maxsize=64)
def _root_map(raw: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in raw.split(";"):
        if "=" in item:
            src, dst = item.split("=", 1)
            pairs.append((src.rstrip("/"), dst.rstrip("/")))
    return tuple(pairs)


def resolve_root(root: str) -> Path:
    """Return the collections directory as this process sees it.

    Parameters
    ----------
    root : str
        The path the coordinator uses.

    Returns
    -------
    Path
        ``root`` itself, or its remapped form when ``DEKER_ROOT_MAP`` names a prefix of it.
    """
    raw = os.environ.get("DEKER_ROOT_MAP", "")
    if raw:
        for src, dst in _root_map(raw):
            if root == src or root.startswith(src + "/"):
                return Path(dst + root[len(src) :])
    return Path(root)


@dataclass(frozen=True)
class FileSpec:
    """Everything a task needs to reach and interpret one array (or tile) file.

    Parameters
    ----------
    root : str
        Collections directory as the coordinator sees it.
    collection : str
        Collection name.
    array_id : str
        Id of the array or tile.
    shape : tuple of int
        Shape of the array stored in the file.
    dtype : str
        Numpy dtype string of the data.
    fill_value : Any
        The fill value of the collection.
    dataset_kwargs : dict
        h5py creation options of the ``data`` dataset.
    locks : LockSettings
        Lock timing used when the task locks by itself.
    symlink : tuple of str
        Symlink components of the file (used when a task deletes the file).
    storage_id : str, optional
        The id of the storage (:mod:`deker.storage.identity`) the coordinator knows; None for a
        storage without an identity file.  A task proves that it sees this storage before it
        takes a missing file for an empty one (:func:`check_storage`).
    """

    root: str
    collection: str
    array_id: str
    shape: tuple[int, ...]
    dtype: str
    fill_value: Any
    dataset_kwargs: dict[str, Any] = field(default_factory=dict)
    locks: LockSettings = field(default_factory=LockSettings)
    symlink: tuple[str, ...] = ()
    storage_id: str | None = None

    # The derived values below are computed once per spec object and never pickled
    # (:meth:`__reduce__`).  The paths are this process's: kept with the ``DEKER_ROOT_MAP``
    # they were resolved under, and resolved again when it changes.
    @cached_property
    def layout(self) -> ArrayLayout:
        """What the file holds, as the storage protocol takes it (built once per spec)."""
        return ArrayLayout(self.shape, self.dtype, self.fill_value, self.dataset_kwargs)

    def _located(self) -> tuple[CollectionPaths, Path, Path]:
        raw = os.environ.get("DEKER_ROOT_MAP", "")
        kept = self.__dict__.get("_located_under")
        if kept is None or kept[0] != raw:
            paths = CollectionPaths(resolve_root(self.root), self.collection)
            main_dir = paths.main_dir("array", self.array_id)
            kept = (raw, paths, main_dir, paths.main_file("array", self.array_id))
            self.__dict__["_located_under"] = kept  # a frozen dataclass: set past __setattr__
        return kept[1], kept[2], kept[3]

    @property
    def paths(self) -> CollectionPaths:
        """Paths of the collection, resolved in this process."""
        return self._located()[0]

    @property
    def main_dir(self) -> Path:
        """Directory of the data file."""
        return self._located()[1]

    @property
    def main_file(self) -> Path:
        """The data file."""
        return self._located()[2]

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), tuple(getattr(self, f.name) for f in fields(self)))


# Storages this process has seen where it expected them: (root here, collection or "", id).
_SEEN_STORAGES: set[tuple[str, str, str | None]] = set()


def process_name() -> str:
    """Name this process for an error message: the Dask worker address if any, host and pid.

    Returns
    -------
    str
        E.g. ``"Dask worker tcp://10.0.0.7:40331 (host node7, pid 4242)"`` or
        ``"process 4242 on host node7"``.
    """
    host = socket.gethostname()
    pid = os.getpid()
    dist = sys.modules.get("distributed")  # never imported here: only named if already running
    get_worker = getattr(dist, "get_worker", None)
    if get_worker is not None:
        try:
            address = get_worker().address
        except Exception:  # not inside a worker (a plain client process)
            address = None
        if address:
            return f"Dask worker {address} (host {host}, pid {pid})"
    return f"process {pid} on host {host}"


def check_storage(spec: FileSpec) -> None:
    """Make sure this process sees the storage of ``spec`` before trusting that a file is absent.

    A worker whose mount of the shared filesystem failed sees an empty directory at the storage
    path: without this check, it would read every tile as fill.  The first call per process,
    storage root and storage id reads the storage's identity file (or, for a storage without
    one, the collection's metadata file); later calls cost a set lookup.

    Parameters
    ----------
    spec : FileSpec
        The file a task is about.

    Raises
    ------
    DekerStorageError
        If this process does not see the storage; the message names the process and the path.
    """
    check_storage_at(spec.root, spec.collection, spec.storage_id)


def check_storage_at(root: str, collection: str, storage_id: str | None = None) -> None:
    """:func:`check_storage` for a storage root (as the coordinator names it) and a collection.

    Parameters
    ----------
    root : str
        The collections directory as the coordinator sees it.
    collection : str
        The collection the work is about.
    storage_id : str, optional
        The storage id the coordinator knows (None: check the collection's metadata file).

    Raises
    ------
    DekerStorageError
        If this process does not see the storage; the message names the process and the path.
    """
    local = resolve_root(root)
    key = (str(local), "" if storage_id else collection, storage_id)
    if key in _SEEN_STORAGES:
        return
    problem = storage_problem(local, storage_id, collection)
    if problem is not None:
        mapped = f" (mapped from {root} by DEKER_ROOT_MAP)" if str(local) != root else ""
        raise DekerStorageError(
            f"{process_name()} does not see the storage at {local}{mapped}: {problem}; mount the shared "
            "filesystem there, or map the path with DEKER_ROOT_MAP"
        )
    _SEEN_STORAGES.add(key)


def _fill_piece(spec: FileSpec, bounds: Bounds) -> np.ndarray[Any, Any]:
    return np.full(selection_shape(bounds), spec.fill_value, dtype=spec.layout.np_dtype)


def read_piece(spec: FileSpec, bounds: Bounds, token: str | None = None) -> np.ndarray[Any, Any]:
    """Read ``bounds`` of one file and return the piece.

    Parameters
    ----------
    spec : FileSpec
        The file.
    bounds : tuple
        Normalised bounds inside the file.
    token : str, optional
        Owner token when the calling operation already holds the file's lock.

    Returns
    -------
    numpy.ndarray
        The piece; fill values if the file no longer exists (a concurrent clear removed it),
        once :func:`check_storage` has shown that this process sees the storage.

    Raises
    ------
    DekerStorageError
        If the file is missing because this process does not see the storage (a failed mount).
    """
    try:
        with storage_errors(spec.main_file), _read_guard(spec, token):
            return _read(spec, bounds)
    except FileNotFoundError:
        check_storage(spec)  # absence is evidence only where the storage is really there
        return _fill_piece(spec, bounds)


def _read_guard(spec: FileSpec, token: str | None) -> AbstractContextManager[Any]:
    if token:  # the operation holds the lock: check that it still does
        return tile_read_guard(spec.main_dir, spec.array_id, token)
    return array_read_lock(spec.main_dir, spec.array_id, spec.locks)


def _read(spec: FileSpec, bounds: Bounds, out: np.ndarray[Any, Any] | None = None) -> np.ndarray[Any, Any]:
    return HDF5_FILES.read(spec.main_file, spec.layout, bounds, out)


def read_piece_into(
    spec: FileSpec,
    bounds: Bounds,
    out: np.ndarray[Any, Any],
    out_index: tuple[slice, ...],
    token: str | None = None,
) -> None:
    """:func:`read_piece` straight into ``out[out_index]`` (threads only).

    Parameters
    ----------
    spec, bounds, token
        As for :func:`read_piece`.
    out : numpy.ndarray
        The caller's output buffer.
    out_index : tuple of slice
        Where the piece goes in ``out``.
    """
    target = out[out_index]
    try:
        with storage_errors(spec.main_file), _read_guard(spec, token):
            if isinstance(target, np.ndarray) and target.base is not None:  # a view of ``out``
                _read(spec, bounds, target)
                return
            out[out_index] = _read(spec, bounds)
    except FileNotFoundError:
        check_storage(spec)
        out[out_index] = spec.fill_value


def read_array(spec: FileSpec, bounds: Bounds) -> np.ndarray[Any, Any]:
    """Read ``bounds`` of an Array's file under the Array's read lock.

    Parameters
    ----------
    spec, bounds
        As for :func:`read_piece` (``spec``: the Array's file).

    Returns
    -------
    numpy.ndarray
        The region.

    Raises
    ------
    FileNotFoundError
        If the file does not exist (the Array was deleted): the caller names the Array.
    """
    with storage_errors(spec.main_file), array_read_lock(spec.main_dir, spec.array_id, spec.locks):
        return _read(spec, bounds)


def write_array(spec: FileSpec, bounds: Bounds, data: Any) -> None:
    """Write ``data`` into ``bounds`` of an Array's file under the Array's write lock.

    Parameters
    ----------
    spec, bounds
        As for :func:`read_array`.
    data : numpy.ndarray or numpy scalar
        Of the file's dtype and of the selection's shape (or a scalar).

    Raises
    ------
    FileNotFoundError
        As for :func:`read_array`.
    """
    with storage_errors(spec.main_file), array_write_lock(spec.main_dir, spec.array_id, spec.locks):
        HDF5_FILES.write(spec.main_file, spec.layout, bounds, data)


def clear_array(spec: FileSpec, bounds: Bounds) -> None:
    """Reset ``bounds`` of an Array's file to the fill value under the Array's write lock.

    Parameters
    ----------
    spec, bounds
        As for :func:`read_array`.

    Raises
    ------
    FileNotFoundError
        As for :func:`read_array`.
    """
    with storage_errors(spec.main_file), array_write_lock(spec.main_dir, spec.array_id, spec.locks):
        HDF5_FILES.clear(spec.main_file, spec.layout, bounds)


def write_piece(spec: FileSpec, bounds: Bounds, data: Any, token: str) -> None:
    """Write ``data`` into ``bounds`` of one file under the operation's lock.

    Idempotent: running it twice (a retried Dask task) leaves the same content.

    Parameters
    ----------
    spec, bounds
        As for :func:`read_piece`.
    data : numpy.ndarray or numpy scalar
        The piece, already of the file's dtype and of the selection's shape (or a scalar).
    token : str
        Owner token of the lock the coordinator holds on this file.
    """
    check_storage(spec)  # (cached) a worker without the storage says so, not "lock lost"
    with storage_errors(spec.main_file), tile_write_guard(spec.main_dir, spec.array_id, token, spec.locks):
        try:
            HDF5_FILES.write(spec.main_file, spec.layout, bounds, data)
        except FileNotFoundError as exc:
            raise DekerInstanceNotExistsError(
                f"Tile file {spec.main_file} vanished during the write"
            ) from exc


def write_piece_broadcast(spec: FileSpec, bounds: Bounds, data: Any, token: str) -> None:
    """:func:`write_piece` for data that travels small and is broadcast on arrival.

    A scalar update, or one with data that broadcasts along some axes, sends each task only the
    distinct values (e.g. shape ``(1, 512)`` for a ``(256, 512)`` piece); the task broadcasts them
    to the piece's shape.

    Parameters
    ----------
    spec, bounds, token
        As for :func:`write_piece`.
    data : numpy.ndarray or numpy scalar
        Values that broadcast to the selection's shape.
    """
    if isinstance(data, np.ndarray):
        shape = selection_shape(bounds)
        if data.shape != shape:
            data = np.broadcast_to(data, shape)
    write_piece(spec, bounds, data, token)


def clear_piece(spec: FileSpec, bounds: Bounds, full: bool, token: str) -> bool:
    """Reset ``bounds`` of one file to the fill value; remove the file when ``full``.

    Parameters
    ----------
    spec, bounds, token
        As for :func:`write_piece`.
    full : bool
        The bounds cover the whole file: delete the file and its symlink.

    Returns
    -------
    bool
        Whether the file was deleted.
    """
    check_storage(spec)  # (cached) a worker without the storage says so, not "lock lost"
    with storage_errors(spec.main_file), tile_write_guard(spec.main_dir, spec.array_id, token, spec.locks):
        if full:
            delete_files(spec)
            return True
        try:
            HDF5_FILES.clear(spec.main_file, spec.layout, bounds)
        except FileNotFoundError:
            pass
        return False


def delete_files(spec: FileSpec) -> None:
    """Remove the data file of ``spec`` and its symlink (locks are the caller's business).

    Parameters
    ----------
    spec : FileSpec
        The file.
    """
    paths = spec.paths
    HDF5_FILES.delete(spec.main_file)  # first: an interrupted deletion leaves a symlink naming nothing
    link = paths.symlink_file("array", spec.symlink, spec.array_id)
    remove_file_and_empty_parents(link, paths.symlinks_dir("array"))


def tile_file_name(array_id: str) -> str:
    """Return the data file name of an id."""
    return f"{array_id}{ARRAY_EXT}"
