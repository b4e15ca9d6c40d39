"""Collections of Arrays or VArrays, and the managers that create, find and iterate them."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from deker.arrays import Array, VArray
from deker.attributes import (
    equal_key_components,
    normalize_filters,
    primary_key_components,
    process_attributes,
    validate_id,
)
from deker.context import StorageContext
from deker.errors import DekerFilterError, DekerInstanceNotExistsError, DekerInvalidManagerCallError
from deker.meta import CollectionMeta, as_read_back, collection_meta_as_dict
from deker.options import HDF5Options
from deker.records import array_schema_of, create_record, find_by_primary, read_record
from deker.schemas import ArraySchema, VArraySchema
from deker.storage.atomic import empty_directory, remove_tree
from deker.storage.layout import (
    ARRAY_DATA,
    ARRAY_EXT,
    ARRAY_SYMLINKS,
    VARRAY_DATA,
    VARRAY_EXT,
    VARRAY_SYMLINKS,
    CollectionPaths,
    iter_ids,
)
from deker.storage.locks import collection_lock

__all__ = ["ArrayManager", "Collection", "DataManager", "FilteredManager", "VArrayManager"]

logger = logging.getLogger(__name__)

# What Collection.clear removes first: without ``varray_data`` (VArrays) or ``array_data``
# (Arrays) nothing else is reachable, so a crash after the first rename leaves a cleared
# collection with unreachable leftovers the next clear removes.
_CLEAR_ORDER = (VARRAY_DATA, ARRAY_DATA, VARRAY_SYMLINKS, ARRAY_SYMLINKS)


#: What tells a collection from a later one of the same name: the inode and modification time
#: of its metadata file, which is written once, when the collection is created.
MetaStamp = tuple[int, int]


def meta_stamp(st: os.stat_result) -> MetaStamp:
    """Return the :data:`MetaStamp` of a collection's metadata file from its status.

    Parameters
    ----------
    st : os.stat_result
        The status of ``<name>/<name>.json``.

    Returns
    -------
    tuple of int
        Its inode and modification time (ns).
    """
    return (st.st_ino, st.st_mtime_ns)


def _stamp_of(path: Path | str) -> MetaStamp | None:
    try:
        return meta_stamp(os.stat(path))
    except OSError:
        return None


def _check_collection(
    ctx: StorageContext, path: Path | str, name: str, meta_file: Path | str, stamp: MetaStamp | None
) -> None:
    """Raise if the client is closed or the collection was deleted (even if one of its name exists now).

    A handle keeps its collection's schema and options: on a collection created again under
    the same name it would read the new files with the old ones, and write them so.
    """
    ctx.check_open()
    found = _stamp_of(meta_file)
    if found is None:  # (a collection whose metadata file is missing is still its directory)
        if not os.path.isdir(path):
            raise DekerInstanceNotExistsError(f"Collection {name!r} does not exist (it was deleted)")
        return
    if stamp is not None and found != stamp:
        raise DekerInstanceNotExistsError(
            f"Collection {name!r} was deleted, and a new collection of that name created, since this "
            "handle was obtained; get the new one with client.get_collection"
        )


class _Manager:
    """Creates, finds and iterates the objects of one kind in a collection."""

    _kind = "array"

    def __init__(self, collection: Collection) -> None:
        self._ctx = collection.storage_context
        self._meta = collection.collection_meta
        self._paths = CollectionPaths(self._ctx.root, self._meta.name)
        self._dir = str(self._paths.path)
        self._meta_file = str(self._paths.meta_file)
        self._stamp = collection.meta_stamp

    def _check(self) -> None:
        _check_collection(self._ctx, self._dir, self._meta.name, self._meta_file, self._stamp)

    @property
    def _schema(self) -> ArraySchema | VArraySchema:
        meta = self._meta
        return meta.schema if self._kind == "varray" else array_schema_of(meta)

    @property
    def _cls(self) -> type[Array] | type[VArray]:
        return VArray if self._kind == "varray" else Array

    def _build(self, array_id: str, primary: dict[str, Any], custom: dict[str, Any]) -> Any:
        return self._cls(self._ctx, self._meta, array_id, primary, custom)

    def create(
        self,
        primary_attributes: dict[str, Any] | None = None,
        custom_attributes: dict[str, Any] | None = None,
        id_: str | None = None,
    ) -> Any:
        """Create an object with the given attributes (and optional id).

        Parameters
        ----------
        primary_attributes : dict, optional
            Values of the primary attributes (all are required when the schema has any).
        custom_attributes : dict, optional
            Values of custom attributes (missing ones are ``None``).
        id_ : str, optional
            A UUID string; a new uuid4 by default.

        Returns
        -------
        Array or VArray
            The new object.
        """
        self._check()
        cls_name = self._cls.__name__
        ctx, meta = self._ctx, self._meta
        ctx.check_writable(f"create a {cls_name} in collection {meta.name}")
        if id_ is not None:
            validate_id(id_, cls_name)
        primary, custom = process_attributes(
            self._schema, primary_attributes, custom_attributes, kind=cls_name
        )
        if self._kind == "array" and isinstance(meta.schema, VArraySchema):
            vid = primary.get("vid")
            if not isinstance(vid, str) or not self._paths.main_file("varray", vid).exists():
                from deker.errors import DekerArrayError

                raise DekerArrayError(f"VArray with id={vid} doesn't exist")
        array_id = id_ or str(uuid.uuid4())
        ctx.ensure_storage_id()  # (a storage of deker 1.1.7 gets its identity at its first write)
        create_record(ctx.root, meta, self._kind, array_id, primary, custom, ctx.locks)
        return self._build(array_id, primary, as_read_back(custom, self._schema.custom_attributes or ()))

    def filter(self, filters: dict[str, Any]) -> FilteredManager:
        """Return a lazy lookup by ``{"id": ...}`` or by every primary attribute."""
        return FilteredManager(self, filters)

    def _get(self, array_id: str) -> Any | None:
        try:
            array_id, primary, custom = read_record(
                self._ctx.root, self._meta, self._kind, array_id, self._ctx.locks
            )
        except DekerInstanceNotExistsError:
            return None
        return self._build(array_id, primary, custom)

    def find(self, filters: dict[str, Any]) -> Any | None:
        """Return the object matching ``filters``, or ``None`` (what ``filter(filters).last()`` runs).

        Parameters
        ----------
        filters : dict
            ``{"id": ...}`` or a value for every primary attribute (coerced to the schema).

        Returns
        -------
        Array, VArray or None
            The match; there is at most one.
        """
        self._check()
        ctx, meta = self._ctx, self._meta
        query = normalize_filters(self._schema, filters)
        if "id" in query and len(query) == 1:
            return self._get(str(query["id"]))
        components = primary_key_components(self._schema, query)
        array_id = find_by_primary(ctx.root, meta, self._kind, components)
        if array_id is None:
            # An equal key that deker 1.1.7 stored spelt with a -0.0: its metadata holds the
            # -0.0 (and its path is built from it), so the object is read, not built from ``query``.
            for other in equal_key_components(self._schema, query):
                array_id = find_by_primary(ctx.root, meta, self._kind, other)
                if array_id is not None:
                    return self._get(array_id)
            return None
        if self._kind == "array":
            # The key's values are the primary attributes (in schema order, typed); the custom
            # ones are read from the file when first used, so a lookup opens no HDF5 file.
            return self._cls(ctx, meta, array_id, query, None, lazy_custom=True)
        return self._get(array_id)

    def __iter__(self) -> Iterator[Any]:
        self._check()
        ext = VARRAY_EXT if self._kind == "varray" else ARRAY_EXT
        for array_id in iter_ids(self._paths.data_dir(self._kind), ext):
            obj = self._get(array_id)
            if obj is not None:
                yield obj


class ArrayManager(_Manager):
    """``collection.arrays``: the Arrays of a collection (tiles, in a VArray collection)."""

    _kind = "array"


class VArrayManager(_Manager):
    """``collection.varrays``: the VArrays of a VArray collection."""

    _kind = "varray"


class DataManager(_Manager):
    """The collection's default manager: VArrays in a VArray collection, else Arrays."""

    def __init__(self, collection: Collection) -> None:
        super().__init__(collection)
        self._kind = "varray" if isinstance(self._meta.schema, VArraySchema) else "array"


class FilteredManager:
    """A lazy lookup; :meth:`first` and :meth:`last` run it.

    Only exact matches exist (by id or by every primary attribute), so there is at most one
    result and both methods return it (or ``None``).
    """

    def __init__(self, manager: _Manager, filters: dict[str, Any]) -> None:
        if not isinstance(filters, Mapping):
            raise DekerFilterError(
                f"Filters shall be a dict such as {{'id': ...}} or {{<primary attribute>: <value>, ...}}, "
                f"got {type(filters).__name__}"
            )
        self._manager = manager
        self._filters = dict(filters)

    def first(self) -> Any | None:
        """Return the matching object, or ``None``."""
        return self._manager.find(self._filters)

    def last(self) -> Any | None:
        """Return the matching object, or ``None``."""
        return self._manager.find(self._filters)


class Collection:
    """A named set of Arrays or VArrays sharing one schema and HDF5 options.

    Obtained from :class:`deker.Client` (``create_collection``, ``get_collection``,
    iteration); never built directly.
    """

    def __init__(self, ctx: StorageContext, meta: CollectionMeta, stamp: MetaStamp | None = None) -> None:
        self._ctx = ctx
        self._meta = meta
        self._paths = CollectionPaths(ctx.root, meta.name)
        self._dir = str(self._paths.path)
        self._meta_file = str(self._paths.meta_file)
        # (given by the caller that read ``meta``: the stamp of the very file it read)
        self._stamp = stamp if stamp is not None else _stamp_of(self._meta_file)
        self._default = DataManager(self)

    def _check(self) -> None:
        _check_collection(self._ctx, self._dir, self.name, self._meta_file, self._stamp)

    @property
    def meta_stamp(self) -> MetaStamp | None:
        """The :data:`MetaStamp` of the metadata file this collection was opened from (for deker's layers)."""
        return self._stamp

    @property
    def storage_context(self) -> StorageContext:
        """The storage context of the client that opened the collection (for deker's layers)."""
        return self._ctx

    @property
    def collection_meta(self) -> CollectionMeta:
        """The stored metadata of the collection (schema and options), as deker decodes it."""
        return self._meta

    @property
    def name(self) -> str:
        """The collection name."""
        return self._meta.name

    @property
    def path(self) -> Path:
        """The collection directory."""
        return self._paths.path

    @property
    def options(self) -> HDF5Options | None:
        """HDF5 options applied to every data file (tiles included)."""
        return self._meta.options

    @property
    def array_schema(self) -> ArraySchema:
        """Schema of the Arrays (in a VArray collection: the derived tile schema)."""
        return array_schema_of(self._meta)

    @property
    def varray_schema(self) -> VArraySchema | None:
        """Schema of the VArrays, or ``None`` in an Array collection."""
        schema = self._meta.schema
        return schema if isinstance(schema, VArraySchema) else None

    @property
    def as_dict(self) -> dict[str, Any]:
        """The stored metadata of the collection."""
        return collection_meta_as_dict(self._meta)

    @property
    def arrays(self) -> ArrayManager:
        """Manager of the Arrays (tiles, in a VArray collection)."""
        return ArrayManager(self)

    @property
    def varrays(self) -> VArrayManager:
        """Manager of the VArrays.

        Raises
        ------
        DekerInvalidManagerCallError
            In an Array collection.
        """
        if self.varray_schema is None:
            raise DekerInvalidManagerCallError(
                "``.varrays`` in `Arrays` collection is unavailable; use ``.arrays`` instead"
            )
        return VArrayManager(self)

    def create(
        self,
        primary_attributes: dict[str, Any] | None = None,
        custom_attributes: dict[str, Any] | None = None,
        id_: str | None = None,
    ) -> Any:
        """Create a VArray (VArray collection) or an Array, see :meth:`ArrayManager.create`."""
        return self._default.create(primary_attributes, custom_attributes, id_)

    def filter(self, filters: dict[str, Any]) -> FilteredManager:
        """Find by ``{"id": ...}`` or by every primary attribute (values coerced to the schema)."""
        return self._default.filter(filters)

    def clear(self) -> None:
        """Delete every array of the collection, keeping the collection and its metadata.

        The data directories are renamed away one by one (the one listing the arrays first),
        then deleted: a crash leaves every array either whole or gone.
        """
        self._check()
        self._ctx.check_writable(f"clear collection {self.name}")
        with collection_lock(self._ctx.root, self.name, self._ctx.locks):
            empty_directory(self.path, keep=self._paths.meta_file.name, first=_CLEAR_ORDER)

    def delete(self) -> None:
        """Delete the collection with everything in it (deleting twice is harmless).

        The collection directory is renamed away at once, then deleted: a crash leaves the
        whole collection or nothing of it (plus a hidden scratch directory that
        :meth:`deker.Client.clear_locks` deletes).  The collection lock is held throughout and
        unlinked while held: a collection of that name created meanwhile waits, and keeps the
        lock file it makes.
        """
        self._ctx.check_open()
        self._ctx.check_writable(f"delete collection {self.name}")
        with collection_lock(self._ctx.root, self.name, self._ctx.locks):
            if self._stamp is not None and _stamp_of(self._meta_file) not in (None, self._stamp):
                raise DekerInstanceNotExistsError(
                    f"Collection {self.name!r} was deleted already, and a new collection of that "
                    "name created: it is not deleted through this handle (get it with "
                    "client.get_collection)"
                )
            remove_tree(self.path)
            try:
                os.unlink(self._paths.lock_file)
            except FileNotFoundError:
                pass

    def __iter__(self) -> Iterator[Any]:
        return iter(self._default)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Collection):
            return False
        return other.collection_meta == self._meta and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        text = f"Collection(name={self.name}, array_schema={self.array_schema!r}"
        if self.varray_schema is not None:
            text += f", varray_schema={self.varray_schema!r}"
        return text + ")"

    def __str__(self) -> str:
        return self.name
