"""The tiles of one VArray as a plain, picklable value: find, create, describe and forget them.

A :class:`TileIndex` is what the tile pipeline (:mod:`deker.pipeline`) and deker_dask's store
tasks know of a VArray: where its collection lives, its metadata, its id, the lock timing and
the storage identity.  It holds no client, no open file and no lock, so it travels to any
worker.  The coordinator's VArray builds one and keeps it (:attr:`deker.VArray.tiles`); a copy
made for a worker (:meth:`TileIndex.on_worker`) resolves the storage path as that process sees
it (``DEKER_ROOT_MAP``, see :func:`deker.tasks.resolve_root`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from deker.meta import CollectionMeta
from deker.records import (
    create_tile_with,
    delete_record,
    file_spec,
    pass_tile_creations,
    position_key,
    tile_ids,
    varray_schema_of,
)
from deker.schemas import VArraySchema
from deker.storage.layout import CollectionPaths
from deker.storage.locks import LockSettings
from deker.tasks import FileSpec, resolve_root

__all__ = ["TileIndex"]

logger = logging.getLogger(__name__)

#: The most tile specs one :class:`TileIndex` keeps (then it starts again).
MAX_SPECS = 16384


@dataclass(frozen=True)
class TileIndex:
    """The tile records of one VArray, reached from plain values.

    Parameters
    ----------
    root : str
        The collections directory as the coordinator names it.
    meta : CollectionMeta
        The VArray collection's metadata.
    vid : str
        The VArray id.
    locks : LockSettings
        Lock timing of the client that opened the VArray.
    storage_id : str, optional
        The storage identity the coordinator knows (tile tasks prove they see that storage).
    on_worker_side : bool, default False
        Resolve ``root`` as a worker does (with ``DEKER_ROOT_MAP``) rather than as given.
    """

    root: str
    meta: CollectionMeta
    vid: str
    locks: LockSettings = field(default_factory=LockSettings)
    storage_id: str | None = None
    on_worker_side: bool = False

    def __reduce__(self) -> tuple[Any, ...]:
        # the fields only: paths cached in this process are no answer in another one
        fields = (self.root, self.meta, self.vid, self.locks, self.storage_id, self.on_worker_side)
        return (TileIndex, fields)

    def on_worker(self) -> TileIndex:
        """Return the copy a task on a worker uses: the storage path as that worker sees it."""
        return replace(self, on_worker_side=True)

    @cached_property
    def paths(self) -> CollectionPaths:
        """The collection's paths in this process."""
        base = resolve_root(self.root) if self.on_worker_side else Path(self.root)
        return CollectionPaths(base, self.meta.name)

    @property
    def schema(self) -> VArraySchema:
        """The VArray schema."""
        return varray_schema_of(self.meta)

    @cached_property
    def tile_bytes(self) -> int:
        """Bytes of one tile's data in memory."""
        schema = self.schema
        return int(np.prod(schema.arrays_shape, dtype=np.int64)) * np.dtype(schema.dtype).itemsize

    @cached_property
    def varray_file(self) -> Path:
        """The VArray's metadata file (it exists as long as the VArray does)."""
        return self.paths.main_file("varray", self.vid)

    def exists(self) -> bool:
        """Return whether the VArray still exists."""
        return self.varray_file.exists()

    def ids(self, positions: Iterable[tuple[int, ...]] | None = None) -> dict[tuple[int, ...], str]:
        """Return the ids of the existing tiles by grid position (only ``positions`` if given)."""
        return tile_ids(self.paths.root, self.meta, self.vid, positions)

    def create(
        self,
        position: tuple[int, ...],
        values: Mapping[str, Any],
        data: Any = None,
        claim: Callable[[Path, str], AbstractContextManager[None]] | None = None,
    ) -> tuple[str, bool]:
        """Return the id of the tile at ``position``, creating it if missing (with ``data`` in it).

        See :func:`deker.records.create_tile_with` for ``values``, ``data`` and ``claim``.

        Returns
        -------
        tuple of (str, bool)
            The tile id, and whether this call created the tile holding ``data``.
        """
        return create_tile_with(
            self.paths.root, self.meta, self.vid, position, values, self.locks, data, claim
        )

    @cached_property
    def _specs(self) -> dict[tuple[str, tuple[int, ...] | None], FileSpec]:
        return {}

    def for_tile(self, tile_id: str, position: tuple[int, ...] | None = None) -> FileSpec:
        """Return the :class:`~deker.tasks.FileSpec` of a tile (with its symlink if ``position``).

        Built once per tile and kept (up to :data:`MAX_SPECS` tiles): a spec also keeps the
        paths it resolved, which every read of the tile would otherwise build again.
        """
        key = (tile_id, position)
        spec = self._specs.get(key)
        if spec is None:
            symlink = (self.vid, position_key(position)) if position is not None else ()
            spec = file_spec(self.root, self.meta, tile_id, self.locks, symlink, self.storage_id)
            if len(self._specs) >= MAX_SPECS:
                self._specs.clear()
            self._specs[key] = spec
        return spec

    def lock_key(self, tile_id: str) -> tuple[Path, str]:
        """Return what a :class:`~deker.storage.locks.VArrayWriteLock` takes for a tile."""
        return self.for_tile(tile_id).main_dir, tile_id  # where the tile tasks will look for it

    def forget(self, tile_id: str, position: tuple[int, ...]) -> None:
        """Remove what a deleted tile leaves behind (its record, lock files, empty directories)."""
        delete_record(self.paths.root, self.meta, "array", tile_id, (self.vid, position_key(position)))

    def pass_creations(self, positions: Iterable[tuple[int, ...]]) -> None:
        """Wait out the tile creations that began at ``positions`` (see ``pass_tile_creations``)."""
        pass_tile_creations(self.paths.root, self.meta, self.vid, positions, self.locks)
