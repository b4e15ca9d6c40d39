"""Array and VArray handles.

A handle is light: the storage context, the collection's metadata, the id and the attribute
values.  It pickles (the context travels as its settings), so it can be sent to a worker.
Data lives in files and is reached through subsets: ``array[key]`` returns a
:class:`~deker.subset.Subset`, ``varray[key]`` a :class:`~deker.subset.VSubset`.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from deker import pipeline
from deker.attributes import primary_key_components, process_custom_update
from deker.context import StorageContext
from deker.dimensions import Dimension, TimeDimension, build_dimensions
from deker.errors import DekerBaseApplicationError, DekerInstanceNotExistsError
from deker.indexing import normalize_key
from deker.meta import CollectionMeta, as_read_back, encode_array_meta, meta_storage_dtype
from deker.records import (
    array_schema_of,
    delete_record,
    file_spec,
    read_record,
    varray_schema_of,
    write_varray_meta,
)
from deker.schemas import ArraySchema, DimensionSchema, TimeDimensionSchema, VArraySchema
from deker.sizes import check_memory
from deker.storage.hdf5files import HDF5_FILES
from deker.storage.layout import CollectionPaths
from deker.storage.locks import array_write_lock
from deker.subset import Subset, VSubset
from deker.tasks import FileSpec, storage_errors
from deker.tileindex import TileIndex

__all__ = ["Array", "VArray"]

logger = logging.getLogger(__name__)


class _StorageBound(Protocol):
    """What a handle builds for one storage identity (a FileSpec, a TileIndex)."""

    @property
    def storage_id(self) -> str | None: ...


_Bound = TypeVar("_Bound", bound=_StorageBound)


def _json_ready(values: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if hasattr(value, "isoformat"):
            out[key] = value.isoformat()
        elif isinstance(value, tuple):
            out[key] = list(value)
        else:
            out[key] = value
    return out


class _BaseArray:
    _kind = "array"
    _cls_name = "Array"

    def __init__(
        self,
        ctx: StorageContext,
        meta: CollectionMeta,
        id_: str,
        primary_attributes: Mapping[str, Any] | None = None,
        custom_attributes: Mapping[str, Any] | None = None,
        *,
        lazy_custom: bool = False,
    ) -> None:
        self._ctx = ctx
        self._meta = meta
        self._id = id_
        self._primary = OrderedDict(primary_attributes or {})
        # ``lazy_custom``: found by primary key, whose values are the query's: the custom values
        # are read from the file when first needed (a lookup then opens no file).
        self._custom_values: dict[str, Any] | None = (
            None if lazy_custom else OrderedDict(custom_attributes or {})
        )
        self._dims: tuple[Dimension | TimeDimension, ...] | None = None

    @property
    def _custom(self) -> dict[str, Any]:
        if self._custom_values is None:
            _id, _primary, custom = read_record(
                self._ctx.root, self._meta, self._kind, self._id, self._ctx.locks
            )
            self._custom_values = OrderedDict(custom)
        return self._custom_values

    @_custom.setter
    def _custom(self, value: dict[str, Any]) -> None:
        self._custom_values = value

    def _dimension_values(self) -> dict[str, Any]:
        """Return the attribute values the time axes start from (custom ones read only if named)."""
        named = {
            d.start_value[1:]
            for d in self.schema.dimensions
            if isinstance(d, TimeDimensionSchema) and isinstance(d.start_value, str)
        }
        if named <= set(self._primary):
            return dict(self._primary)
        return {**self._primary, **self._custom}

    # ----------------------------------------------------------------- identity
    @property
    def id(self) -> str:
        """The id (a UUID string)."""
        return self._id

    @property
    def collection(self) -> str:
        """The name of the collection."""
        return self._meta.name

    @property
    def schema(self) -> ArraySchema | VArraySchema:
        """The schema of this object."""
        raise NotImplementedError

    @property
    def dtype(self) -> type[np.generic]:
        """Numpy scalar type of the data."""
        return self.schema.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the array."""
        return tuple(self.schema.shape)

    @property
    def named_shape(self) -> tuple[tuple[str, int], ...]:
        """``(name, size)`` for every dimension."""
        return tuple(self.schema.named_shape)

    @property
    def fill_value(self) -> Any:
        """The value empty cells read as."""
        return self.schema.fill_value

    @property
    def dimensions(self) -> tuple[Dimension | TimeDimension, ...]:
        """The dimensions, with labels, scales and resolved time axes."""
        if self._dims is None:
            self._dims = build_dimensions(self.schema, self._dimension_values())
        return self._dims

    @property
    def primary_attributes(self) -> OrderedDict[str, Any]:
        """Primary attribute values, in schema order."""
        return OrderedDict(self._primary)

    @property
    def custom_attributes(self) -> dict[str, Any]:
        """Custom attribute values, in schema order."""
        return OrderedDict(self._custom)

    @property
    def as_dict(self) -> dict[str, Any]:
        """A plain description of the object."""
        return {
            "id": self.id,
            "collection": self.collection,
            "dimensions": tuple(d.as_dict for d in self.dimensions),
            "shape": self.shape,
            "named_shape": self.named_shape,
            "primary_attributes": self.primary_attributes,
            "custom_attributes": self.custom_attributes,
        }

    # ----------------------------------------------------------------- for deker's layers
    @property
    def storage_context(self) -> StorageContext:
        """The storage context of the client that opened this object.

        For deker's own layers and extensions (deker_dask): where the storage is, its lock
        settings, the task runner and whether the client is still open.
        """
        return self._ctx

    @property
    def collection_meta(self) -> CollectionMeta:
        """The stored metadata of the collection (schema and options), as deker decodes it."""
        return self._meta

    # ----------------------------------------------------------------- paths
    @property
    def _paths(self) -> CollectionPaths:
        return CollectionPaths(self._ctx.root, self._meta.name)

    @property
    def _main_dir(self) -> Path:
        found: Path | None = self.__dict__.get("_main_dir_cached")
        if found is None:  # the id never changes: build the path once (pathlib is slow)
            found = self.__dict__["_main_dir_cached"] = self._paths.main_dir(self._kind, self._id)
        return found

    @property
    def _main_file(self) -> Path:
        found: Path | None = self.__dict__.get("_main_file_cached")
        if found is None:
            found = self.__dict__["_main_file_cached"] = self._paths.main_file(self._kind, self._id)
        return found

    @property
    def _components(self) -> tuple[str, ...]:
        return primary_key_components(self.schema, self._primary) if self._primary else ()

    def _per_storage(self, key: str, build: Callable[[str, str | None], _Bound]) -> _Bound:
        """Return ``build(root, storage_id)``, kept under ``key`` while the storage identity holds."""
        storage_id = self._ctx.storage_id
        found: _Bound | None = self.__dict__.get(key)
        if found is None or found.storage_id != storage_id:
            found = self.__dict__[key] = build(str(self._ctx.settings.root), storage_id)
        return found

    # ----------------------------------------------------------------- behaviour
    def _selection(self, item: Any) -> Any:
        self._ctx.check_open()
        selection = normalize_key(item, self.shape, self.dimensions)
        check_memory(selection.shape, np.dtype(self.dtype), self._ctx.memory_limit)
        return selection

    def read_meta(self) -> dict[str, Any]:
        """Return the stored metadata: id, primary and custom attributes (JSON-ready values)."""
        self._ctx.check_open()
        array_id, primary, custom = read_record(
            self._ctx.root, self._meta, self._kind, self._id, self._ctx.locks
        )
        return {
            "id": array_id,
            "primary_attributes": _json_ready(primary),
            "custom_attributes": _json_ready(custom),
        }

    def _new_custom(self, attributes: Mapping[str, Any] | None) -> dict[str, Any]:
        return process_custom_update(
            self.schema, self._primary, self._custom, attributes, kind=self._cls_name
        )

    def _check_exists(self) -> None:
        """Raise if the object is known to be deleted before a change begins (VArray)."""

    def _write_meta(self, payload: bytes) -> None:
        raise NotImplementedError

    def _begin_change(self, doing: str) -> None:
        """Raise if the client is closed or read-only, or the object is known to be deleted."""
        self._ctx.check_open()
        self._ctx.check_writable(f"{doing} {self!r}")
        self._check_exists()

    @contextlib.contextmanager
    def _write_locked(self) -> Iterator[None]:
        """Hold the object's write lock; its file missing means the object was deleted."""
        try:
            with storage_errors(self._main_file), array_write_lock(self._main_dir, self._id, self._ctx.locks):
                yield
        except FileNotFoundError as exc:
            raise DekerInstanceNotExistsError(f"{self!r} was deleted") from exc

    def update_custom_attributes(self, attributes: Mapping[str, Any]) -> None:
        """Replace custom attribute values; unspecified ones keep their values.

        Parameters
        ----------
        attributes : dict
            New values by name.

        Raises
        ------
        DekerInstanceNotExistsError
            If the object was deleted (through this handle or another).
        """
        self._begin_change("update the attributes of")
        custom = self._new_custom(attributes)
        payload = encode_array_meta(self._id, self._primary, custom)
        with self._write_locked():
            self._write_meta(payload)
        self._custom = as_read_back(custom, self.schema.custom_attributes or ())
        self._dims = None

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is type(self)
            and isinstance(other, _BaseArray)
            and other._id == self._id
            and other._meta.name == self._meta.name
            and other._ctx.settings.root == self._ctx.settings.root
        )

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._id))

    def __repr__(self) -> str:
        text = f"{self._cls_name}(id={self._id!r}, collection={self.collection!r}"
        if self._primary:
            text += f", primary_attributes={dict(self._primary)}"
        try:
            custom = self._custom
        except DekerBaseApplicationError:  # a lazily read array deleted or damaged meanwhile
            custom = {}
        if custom:
            text += f", custom_attributes={dict(custom)}"
        return text + ")"

    def __str__(self) -> str:
        return f"{self._cls_name}({self._id})"

    def __reduce__(self) -> tuple[Any, ...]:
        custom = None if self._custom_values is None else dict(self._custom_values)
        return (_rebuild, (type(self), self._ctx, self._meta, self._id, dict(self._primary), custom))


def _tile_axis(
    dim: Dimension | TimeDimension,
    vdim: DimensionSchema | TimeDimensionSchema,
    index: int,
    varray_values: Mapping[str, Any] | None,
) -> Dimension | TimeDimension:
    """Return the time axis of the tile at grid index ``index`` of its VArray's axis ``vdim``."""
    if not isinstance(dim, TimeDimension) or not isinstance(vdim, TimeDimensionSchema):
        return dim
    start: Any = vdim.start_value
    if isinstance(start, str):  # "$name": the VArray's attribute, else the tile's copy of it
        start = (varray_values or {}).get(start[1:])
        if not isinstance(start, datetime):
            return dim
    return TimeDimension(dim.name, dim.size, start + dim.step * dim.size * index, dim.step)


def _rebuild(
    cls: type[_BaseArray],
    ctx: StorageContext,
    meta: CollectionMeta,
    id_: str,
    primary: dict[str, Any],
    custom: dict[str, Any] | None,
) -> _BaseArray:
    """Unpickle a handle (its custom attributes stay unread if they were)."""
    return cls(ctx, meta, id_, primary, custom, lazy_custom=custom is None)


class Array(_BaseArray):
    """An N-d array stored in one HDF5 file.

    Obtained from a collection (``collection.create(...)``, ``filter(...).last()``, iteration);
    never built directly.
    """

    @property
    def schema(self) -> ArraySchema:
        """The collection's array schema (the tile schema in a VArray collection)."""
        return array_schema_of(self._meta)

    @property
    def spec(self) -> FileSpec:
        """The :class:`~deker.tasks.FileSpec` of the Array's data file (what its tasks get).

        Built once per handle (again only once the storage gets its identity file).
        """
        return self._per_storage(
            "_spec_cached",
            lambda root, storage_id: file_spec(
                root, self._meta, self._id, self._ctx.locks, self._components, storage_id
            ),
        )

    @property
    def dimensions(self) -> tuple[Dimension | TimeDimension, ...]:
        """The dimensions, with labels, scales and resolved time axes.

        A tile of a VArray collection starts its time axes at its own first instant, from its
        VArray's start as it is now: the tile schema's fixed starts are the VArray's, and the
        tile's ``parent.<name>`` attributes keep the VArray's attribute as it was when the tile
        was created (they are used only if the VArray is gone).
        """
        if self._dims is None:
            dims = build_dimensions(self.schema, self._dimension_values())
            position = self._v_position
            vschema = self._meta.schema
            if position is not None and isinstance(vschema, VArraySchema) and len(position) == len(dims):
                values = self._varray_values()
                dims = tuple(
                    _tile_axis(d, vdim, k, values)
                    for d, vdim, k in zip(dims, vschema.dimensions, position, strict=True)
                )
            self._dims = dims
        return self._dims

    def _varray_values(self) -> dict[str, Any] | None:
        """Return the attribute values of the tile's VArray (None if it is unknown or gone)."""
        vid = self._vid
        if vid is None:
            return None
        try:
            _id, primary, custom = read_record(self._ctx.root, self._meta, "varray", vid, self._ctx.locks)
        except DekerBaseApplicationError:
            return None
        return {**primary, **custom}

    @property
    def _vid(self) -> str | None:
        value = self._primary.get("vid") if isinstance(self._meta.schema, VArraySchema) else None
        return str(value) if value is not None else None

    @property
    def _v_position(self) -> tuple[int, ...] | None:
        value = self._primary.get("v_position") if isinstance(self._meta.schema, VArraySchema) else None
        return tuple(value) if value is not None else None

    def __getitem__(self, item: Any) -> Subset:
        """Return the subset selected by ``item`` (ints, slices, ``...``, labels, scale/time values)."""
        return Subset(self, self._selection(item))

    def _write_meta(self, payload: bytes) -> None:
        HDF5_FILES.write_meta(self._main_file, payload, meta_storage_dtype(payload))

    def delete(self) -> None:
        """Delete the array: its file, its symlink, and the directories they leave empty.

        Raises
        ------
        DekerInstanceNotExistsError
            If the array was deleted already (through this handle or another).
        """
        self._begin_change("delete")
        with self._write_locked():
            delete_record(self._ctx.root, self._meta, "array", self._id, self._components)


class VArray(_BaseArray):
    """A virtual array tiled over many HDF5 files on a regular grid (``vgrid``).

    Obtained from a VArray collection; never built directly.  Reads, updates and clears run
    as per-tile tasks on the client's executor.
    """

    _kind = "varray"
    _cls_name = "VArray"

    @property
    def schema(self) -> VArraySchema:
        """The collection's VArray schema."""
        return varray_schema_of(self._meta)

    @property
    def vgrid(self) -> tuple[int, ...]:
        """Number of tiles along each dimension."""
        return tuple(self.schema.vgrid)

    @property
    def arrays_shape(self) -> tuple[int, ...]:
        """Shape of one tile."""
        return tuple(self.schema.arrays_shape)

    @property
    def as_dict(self) -> dict[str, Any]:
        """A plain description of the VArray (with its ``vgrid``)."""
        return {**super().as_dict, "vgrid": self.vgrid}

    def __getitem__(self, item: Any) -> VSubset:
        """Return the subset selected by ``item`` (ints, slices, ``...``, labels, scale/time values)."""
        return VSubset(self, self._selection(item))

    # ------------------------------------------------------------- tiles
    @property
    def tiles(self) -> TileIndex:
        """The :class:`~deker.tileindex.TileIndex` of the VArray's tiles (what the tile pipeline uses).

        Built once per handle (again only once the storage gets its identity file).
        """
        return self._per_storage(
            "_tiles_cached",
            lambda root, storage_id: TileIndex(root, self._meta, self._id, self._ctx.locks, storage_id),
        )

    def _check_exists(self) -> None:
        pipeline.require(self.tiles, repr(self))

    def _write_meta(self, payload: bytes) -> None:
        write_varray_meta(self._ctx.root, self._meta, self._id, payload)

    # ------------------------------------------------------------- public methods

    def delete(self) -> None:
        """Delete the VArray and all its tiles (under the tiles' write locks).

        Raises
        ------
        DekerInstanceNotExistsError
            If the VArray was deleted already (through this handle or another).
        """
        self._begin_change("delete")
        index = self.tiles
        tiles = sorted(index.ids().items())
        pipeline.delete_tiles(self._ctx, index, tiles)
        with self._write_locked():  # raises if another handle deleted it meanwhile
            delete_record(self._ctx.root, self._meta, "varray", self._id, self._components)
        # A concurrent writer (an update, a partial clear, a deker_dask.store task) may have been
        # creating a tile the listing above did not see yet.  Now that the record is gone no
        # creation can begin (create_tile_with checks it under its lock): wait out those that
        # began, then delete the tiles they made.
        listed = {pos for pos, _ in tiles}
        with storage_errors(self._main_file):
            index.pass_creations(p for p in np.ndindex(*self.vgrid) if p not in listed)
        pipeline.delete_tiles(self._ctx, index, sorted(index.ids().items()))
