"""What deker_dask needs to know about deker objects, in one place.

deker's handles (:class:`~deker.Array`, :class:`~deker.VArray`, their subsets, collections)
show deker's layers their storage context, their collection's metadata, an Array's file spec
and a VArray's tile index (:class:`~deker.tileindex.TileIndex`).  This module turns them into
the plain :class:`Target` the rest of deker_dask works on, next to
:class:`~deker.tasks.FileSpec` and :class:`~deker.tileindex.TileIndex` values, which pickle
to any worker.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deker.arrays import Array, VArray
from deker.cf import stacking_order
from deker.collection import Collection
from deker.errors import DekerInstanceNotExistsError, DekerValidationError
from deker.meta import CollectionMeta
from deker.storage.arrayfile import Bounds, selection_shape
from deker.storage.layout import CollectionPaths
from deker.storage.locks import LockSettings
from deker.subset import Subset, VSubset
from deker.tasks import FileSpec
from deker.tileindex import TileIndex
from deker_dask.graph_tasks import Owner, Session

__all__ = ["FileVersion", "Target", "collection_items", "resolve"]

logger = logging.getLogger(__name__)

#: ``(mtime_ns, ctime_ns, size, inode)`` of a file: changes whenever deker writes the file.
FileVersion = tuple[int, int, int, int]


def _stat(path: os.PathLike[str] | str) -> FileVersion | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)


@dataclass(frozen=True)
class Target:
    """A stored object and a region of it, as plain values.

    Parameters
    ----------
    obj : Array or VArray
        The handle.
    bounds : tuple
        Normalised bounds of the region (the whole object for an Array or VArray).
    """

    obj: Array | VArray
    bounds: Bounds

    # ------------------------------------------------------------------ identity
    @property
    def is_varray(self) -> bool:
        """Whether the object is a VArray."""
        return isinstance(self.obj, VArray)

    @property
    def root(self) -> str:
        """The collections directory as the coordinator sees it (workers may remap it)."""
        return str(self.obj.storage_context.settings.root)

    @property
    def meta(self) -> CollectionMeta:
        """The collection metadata."""
        return self.obj.collection_meta

    @property
    def locks(self) -> LockSettings:
        """Lock timing of the client that opened the object."""
        return self.obj.storage_context.locks

    @property
    def storage_id(self) -> str | None:
        """The identity of the storage as the client knows it (tasks prove they see it)."""
        return self.obj.storage_context.storage_id

    def tiles(self) -> TileIndex:
        """Return the :class:`~deker.tileindex.TileIndex` of a VArray."""
        assert isinstance(self.obj, VArray)
        return self.obj.tiles

    def _data_file(self) -> Path:
        """Return the Array's data file, or the VArray's metadata file, as the client sees it."""
        if isinstance(self.obj, VArray):
            return self.obj.tiles.varray_file
        return CollectionPaths(self.obj.storage_context.root, self.meta.name).main_file("array", self.obj.id)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the region (integer-indexed dimensions dropped)."""
        return selection_shape(self.bounds)

    @property
    def dtype(self) -> np.dtype[Any]:
        """Numpy dtype of the data."""
        return np.dtype(self.obj.dtype)

    @property
    def fill_value(self) -> Any:
        """The value empty cells read as."""
        return self.obj.fill_value

    @property
    def tile_shape(self) -> tuple[int, ...]:
        """Shape of one file: a VArray's tile, or the whole Array."""
        if isinstance(self.obj, VArray):
            return tuple(self.obj.arrays_shape)
        return tuple(self.obj.shape)

    @property
    def hdf5_chunks(self) -> tuple[int, ...] | None:
        """The HDF5 chunk shape the collection declares (clipped to a file), if it is explicit."""
        options = self.meta.options
        chunks = options.chunks if options is not None else None
        if not isinstance(chunks, tuple):
            return None
        return tuple(max(1, min(int(c), s)) for c, s in zip(chunks, self.tile_shape, strict=True))

    @property
    def values(self) -> dict[str, Any]:
        """Primary and custom attribute values (time axes of VArray tiles start from them)."""
        return {**self.obj.primary_attributes, **self.obj.custom_attributes}

    def session(self) -> Session:
        """Return the session every task of a graph over this object carries (tasks raise once closed)."""
        return Session(self.obj.storage_context)

    def owner(self) -> Owner | None:
        """Return the object as a lazy read checks it still exists (None outside the root)."""
        try:
            relative = self._data_file().relative_to(self.root)
        except ValueError:
            return None
        obj = self.obj
        storage_id = obj.tiles.storage_id if isinstance(obj, VArray) else obj.spec.storage_id
        return Owner(self.root, self.meta.name, str(relative), storage_id, repr(obj))

    def check(self) -> None:
        """Raise if the client is closed or the object was deleted."""
        self.obj.storage_context.check_open()
        if not self._data_file().exists():
            raise DekerInstanceNotExistsError(f"{self.obj!r} was deleted")

    # ------------------------------------------------------------------ files
    def array_spec(self) -> FileSpec:
        """Return the :class:`FileSpec` of an Array's data file."""
        assert isinstance(self.obj, Array)
        return self.obj.spec

    def files(self) -> tuple[dict[tuple[int, ...], FileSpec], tuple[Any, ...]]:
        """Return the existing data files by grid position, and their data version.

        Returns
        -------
        files : dict
            ``{position: FileSpec}`` of every existing tile (``{(0, ...): spec}`` for an Array).
        version : tuple
            ``(position, id, FileVersion)`` of each file: it changes when a file is written,
            created or deleted.
        """
        obj = self.obj
        if isinstance(obj, VArray):
            index = obj.tiles
            found = index.ids()
            files: dict[tuple[int, ...], FileSpec] = {}
            version = []
            for pos in sorted(found):
                tid = found[pos]
                stat = _stat(index.paths.main_file("array", tid))
                if stat is None:  # deleted since the listing
                    continue
                files[pos] = index.for_tile(tid)
                version.append((pos, tid, stat))
            return files, tuple(version)
        stat = _stat(self._data_file())
        if stat is None:
            raise DekerInstanceNotExistsError(f"{obj!r} was deleted")
        origin = (0,) * len(obj.shape)
        return {origin: self.array_spec()}, ((origin, obj.id, stat),)

    def identity(self) -> tuple[Any, ...]:
        """Storage location and id, for names and tokens."""
        return (self.root, self.meta.name, type(self.obj).__name__, self.obj.id)


def resolve(obj: Any) -> Target:
    """Return the :class:`Target` of an Array, VArray, Subset or VSubset.

    Parameters
    ----------
    obj : Array, VArray, Subset or VSubset
        What to read or write.

    Returns
    -------
    Target
        The object and its region.

    Raises
    ------
    DekerValidationError
        If ``obj`` is of another type.
    """
    if isinstance(obj, (Array, VArray)):
        return Target(obj, tuple(slice(0, s) for s in obj.shape))
    if isinstance(obj, (Subset, VSubset)):
        owner = obj.array
        assert isinstance(owner, (Array, VArray))
        return Target(owner, tuple(obj.bounds))
    raise DekerValidationError(
        f"Expected a deker Array, VArray, Subset or VSubset, not {type(obj).__module__}."
        f"{type(obj).__qualname__}"
    )


def collection_items(collection: Collection) -> list[Array | VArray]:
    """Return the Arrays (or VArrays) of a collection, ordered by primary attributes, then id.

    Parameters
    ----------
    collection : Collection
        The collection.

    Returns
    -------
    list
        The handles.
    """
    if not isinstance(collection, Collection):
        raise DekerValidationError(f"Expected a deker Collection, not {type(collection).__qualname__}")
    return stacking_order(collection)
