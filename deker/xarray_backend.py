"""The ``engine="deker"`` xarray backend: a collection opened lazily with ``xarray.open_dataset``.

``xr.open_dataset("file:///storage", engine="deker", group="<collection>")`` lists the arrays of
the collection and returns a Dataset whose one data variable (named after the collection) stacks
them along a leading dimension, labelled by their primary attributes (:func:`deker.cf.collection_layout`);
``filter={...}`` opens one array instead.  Nothing is read until values are asked: the data sits
behind a :class:`DekerBackendArray`, which reads exactly the region xarray asks for through
deker's public API (``array[bounds].read()``) and pickles to Dask workers (deker handles do).
Its ``preferred_chunks`` are one array along the stacking dimension and one tile (a VArray's
``arrays_shape``, an Array's whole shape) along the others, so ``chunks={}`` gives one dask
chunk per tile.  ``xr.open_datatree(uri, engine="deker")`` opens every collection, one node each.

The module is registered under the ``xarray.backends`` entry point; it needs xarray, not Dask.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import xarray
from xarray.backends import BackendArray, BackendEntrypoint
from xarray.core import indexing

from deker.arrays import Array, VArray
from deker.cf import Layout, array_layout, collection_layout, stacking_order, to_variables
from deker.client import Client
from deker.collection import Collection
from deker.errors import (
    DekerArrayNotFoundError,
    DekerCollectionNotExistsError,
    DekerFilterError,
    DekerValidationError,
)
from deker.storage.arrayfile import selection_shape

__all__ = ["DECODERS", "DekerBackendArray", "DekerBackendEntrypoint", "collection_dataset", "storage_uri"]

logger = logging.getLogger(__name__)

_COLLECTIONS = "collections"


def storage_uri(filename_or_obj: Any) -> str | None:
    """Return the ``file://`` URI of a deker storage, or ``None`` if ``filename_or_obj`` names none.

    Parameters
    ----------
    filename_or_obj : str or os.PathLike
        A ``file:///path`` URI, or the path of the storage directory.

    Returns
    -------
    str or None
        ``file://<absolute path>``, percent-encoded, when the place holds a ``collections``
        directory.
    """
    if isinstance(filename_or_obj, os.PathLike):
        filename_or_obj = os.fspath(filename_or_obj)
    if not isinstance(filename_or_obj, str):
        return None
    if filename_or_obj.startswith("file:"):
        parsed = urlparse(filename_or_obj)
        if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
            return None
        path = Path(unquote(parsed.path))
    elif "://" in filename_or_obj:
        return None
    else:
        path = Path(filename_or_obj).expanduser().absolute()
    if not (path / _COLLECTIONS).is_dir():
        return None
    return path.as_uri()  # (percent-encoded: "#", "?" or "%41" in a name must reach the Client as such)


def _bound(key: Any, size: int) -> tuple[int | slice, np.ndarray[Any, Any] | None]:
    """Return the contiguous bound deker reads for one key element, and what to take from it."""
    if isinstance(key, (int, np.integer)):
        k = int(key)
        return (k + size if k < 0 else k), None
    positions = np.arange(size)[key]
    if positions.size == 0:
        return slice(0, 0), positions
    lo, hi = int(positions.min()), int(positions.max()) + 1
    if positions.size == hi - lo and (positions.size == 1 or positions[1] > positions[0]):
        return slice(lo, hi), None
    return slice(lo, hi), positions - lo


class DekerBackendArray(BackendArray):  # type: ignore[misc]
    """The lazy data of one variable: arrays of a collection (stacked), or one array.

    Parameters
    ----------
    items : list of Array or VArray
        The arrays, in stacking order (one, if ``stacked`` is false).
    stacked : bool
        Whether the first dimension runs over ``items``.
    shape : tuple of int
        The shape of one array.
    dtype : numpy.dtype
        The data type.

    Notes
    -----
    Reads go through ``array[bounds].read()`` (basic indexing: ints and slices).  A slice with
    a step reads the smallest contiguous region that holds its positions; along the stacking
    dimension only the selected arrays are read.  Instances pickle (deker handles rebuild
    their storage context in the receiving process).
    """

    def __init__(
        self, items: list[Array | VArray], stacked: bool, shape: tuple[int, ...], dtype: np.dtype[Any]
    ) -> None:
        self.items = items
        self.stacked = stacked
        self.array_shape = shape
        self.shape = (len(items), *shape) if stacked else shape
        self.dtype = dtype

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray[Any, Any]:
        """Return the values of an explicit indexer (xarray's lazy indexing calls this)."""
        return indexing.explicit_indexing_adapter(  # type: ignore[no-any-return]
            key, self.shape, indexing.IndexingSupport.BASIC, self._raw_indexing_method
        )

    def _raw_indexing_method(self, key: tuple[Any, ...]) -> np.ndarray[Any, Any]:
        if not self.stacked:
            return self._read(self.items[0], key)
        first, rest = key[0], key[1:]
        if isinstance(first, (int, np.integer)):
            return self._read(self.items[int(first)], rest)
        chosen = np.arange(len(self.items))[first]
        parts = [self._read(self.items[int(i)], rest) for i in chosen]
        if parts:
            return np.stack(parts)
        inner = tuple(
            len(range(*k.indices(s)))
            for k, s in zip(rest, self.array_shape, strict=True)
            if isinstance(k, slice)
        )
        return np.empty((0, *inner), dtype=self.dtype)

    def _read(self, item: Array | VArray, key: tuple[Any, ...]) -> np.ndarray[Any, Any]:
        bounds: list[int | slice] = []
        takes: list[tuple[int, np.ndarray[Any, Any]]] = []
        axis = 0
        for k, size in zip(key, self.array_shape, strict=True):
            bound, take = _bound(k, size)
            bounds.append(bound)
            if isinstance(bound, slice):
                if take is not None:
                    takes.append((axis, take))
                axis += 1
        shape = selection_shape(tuple(bounds))
        if 0 in shape:
            out = np.empty(shape, dtype=self.dtype)
        else:
            out = np.asarray(item[tuple(bounds)].read(), dtype=self.dtype)
        for ax, take in takes:
            out = np.take(out, take, axis=ax)
        return out


def _preferred_chunks(collection: Collection, dims: tuple[str, ...], stacked: bool) -> dict[str, int]:
    schema = collection.varray_schema
    tile = tuple(schema.arrays_shape) if schema is not None else tuple(collection.array_schema.shape)
    inner = dims[1:] if stacked else dims
    chunks = dict(zip(inner, tile, strict=True))
    if stacked:
        chunks[dims[0]] = 1
    return chunks


def _variable(layout: Layout, data: DekerBackendArray, chunks: dict[str, int]) -> Any:
    return xarray.Variable(
        layout.dims,
        indexing.LazilyIndexedArray(data),
        attrs=dict(layout.attrs),
        encoding={"preferred_chunks": chunks},
    )


def _dtype(collection: Collection) -> np.dtype[Any]:
    schema = collection.varray_schema or collection.array_schema
    return np.dtype(schema.dtype)


def _shape(collection: Collection) -> tuple[int, ...]:
    schema = collection.varray_schema or collection.array_schema
    return tuple(schema.shape)


def collection_dataset(collection: Collection, filter: Mapping[str, Any] | None = None) -> Any:
    """Return the lazy Dataset of a collection (or of the one array ``filter`` finds).

    Parameters
    ----------
    collection : Collection
        An Array or VArray collection of an open client.
    filter : dict, optional
        ``{"id": ...}`` or every primary attribute: open that array alone (no stacking dimension).

    Returns
    -------
    xarray.Dataset
        One data variable named after the collection, over a :class:`DekerBackendArray`.

    Raises
    ------
    DekerArrayNotFoundError
        If ``filter`` finds no array.
    DekerFilterError
        If ``filter`` is not a dict or names unknown keys.
    """
    dtype, shape = _dtype(collection), _shape(collection)
    if filter is not None:
        if not isinstance(filter, Mapping) or not filter:
            raise DekerFilterError(
                f"filter must be a non-empty dict such as {{'id': ...}} or every primary attribute, "
                f"not {filter!r}"
            )
        found = collection.filter(dict(filter)).last()
        if found is None:
            raise DekerArrayNotFoundError(
                f"No array of collection {collection.name} matches {dict(filter)!r}"
            )
        layout = array_layout(found, [slice(0, s) for s in shape], positions=False)
        data = DekerBackendArray([found], False, shape, dtype)
        stacked = False
    else:
        items = stacking_order(collection)
        layout = collection_layout(collection, items, positions=False)
        data = DekerBackendArray(items, True, shape, dtype)
        stacked = True
    variable = _variable(layout, data, _preferred_chunks(collection, layout.dims, stacked))
    return xarray.Dataset(
        {layout.name: variable},
        coords=to_variables(xarray, layout.coords),
        attrs={"deker_collection": collection.name},
    )


def _drop(ds: Any, drop_variables: str | Iterable[str] | None) -> Any:
    if drop_variables is None:
        return ds
    names = [drop_variables] if isinstance(drop_variables, str) else list(drop_variables)
    return ds.drop_vars(names, errors="ignore")


#: xarray's CF decoding options: accepted (xarray passes them) and without effect.
DECODERS = frozenset(
    {"mask_and_scale", "decode_times", "decode_timedelta", "concat_characters", "use_cftime", "decode_coords"}
)


def _check_decoders(decoders: Mapping[str, Any]) -> None:
    unknown = sorted(set(decoders) - DECODERS)
    if unknown:
        raise DekerValidationError(
            f"engine='deker' takes no option {', '.join(map(repr, unknown))}: it takes group=, filter=, "
            "read_only= and drop_variables= (and ignores xarray's decoding options)"
        )


def _open_client(filename_or_obj: Any, read_only: bool = False) -> Client:
    uri = storage_uri(filename_or_obj)
    if uri is None:
        raise DekerValidationError(
            f"{filename_or_obj!r} is not a deker storage: give file:///<absolute path> of a directory "
            "holding a 'collections' directory"
        )
    # (a Client sets the level of the deker loggers: keep the one the application chose)
    level = logging.getLevelName(logging.getLogger("deker").level)
    return Client(
        uri,
        create=False,
        read_only=read_only,
        loglevel=level if isinstance(level, str) and " " not in level else "NOTSET",
    )


def _get(client: Client, group: Any) -> Collection:
    names = sorted(c.name for c in client)
    if group is None or not isinstance(group, str):
        raise DekerValidationError(
            "Pass group=<collection name> to open a deker storage "
            f"(collections: {', '.join(names) or 'none'})"
        )
    collection = client.get_collection(group.strip("/"))
    if collection is None:
        raise DekerCollectionNotExistsError(
            f"Collection {group} does not exist (collections: {', '.join(names) or 'none'})"
        )
    return collection


class DekerBackendEntrypoint(BackendEntrypoint):  # type: ignore[misc]
    """``engine="deker"``: open a collection of a deker storage as a lazy :class:`xarray.Dataset`.

    Examples
    --------
    >>> ds = xr.open_dataset("file:///data/deker", engine="deker", group="weather")  # doctest: +SKIP
    >>> one = xr.open_dataset(
    ...     "file:///data/deker", engine="deker", group="weather", filter={"day": "2024-01-01"}
    ... )  # doctest: +SKIP
    """

    description = "Open collections of a deker storage (file:///path URIs) as lazy Datasets"
    open_dataset_parameters = ("filename_or_obj", "drop_variables", "group", "filter", "read_only")
    supports_groups = True

    def guess_can_open(self, filename_or_obj: Any) -> bool:
        """Return whether ``filename_or_obj`` is a ``file://`` URI of a deker storage."""
        return (
            isinstance(filename_or_obj, str)
            and filename_or_obj.startswith("file://")
            and storage_uri(filename_or_obj) is not None
        )

    def open_dataset(  # type: ignore[override]
        self,
        filename_or_obj: Any,
        *,
        drop_variables: str | Iterable[str] | None = None,
        group: str | None = None,
        filter: Mapping[str, Any] | None = None,
        read_only: bool = False,
        **decoders: Any,
    ) -> Any:
        """Open one collection (``group``) of a storage lazily.

        Parameters
        ----------
        filename_or_obj : str or os.PathLike
            ``file:///path`` of the storage (or its path).
        drop_variables : str or iterable of str, optional
            Variables (coordinates) to leave out.
        group : str
            The collection name.
        filter : dict, optional
            Open the one array it finds (``{"id": ...}`` or every primary attribute).
        read_only : bool, default False
            Open the storage read-only (``Client(..., read_only=True)``): nothing is created,
            changed or deleted, no read marker is placed.  A storage that cannot be written
            (read-only mount, read permission only) is opened that way anyway.
        **decoders
            xarray's CF decoding options (``decode_times``, ``mask_and_scale``...): accepted
            and ignored: deker gives its values as stored, its fill value marked by a
            ``_FillValue`` attribute (``xr.decode_cf`` masks it).

        Returns
        -------
        xarray.Dataset
            Lazy; closing it closes the client it opened.

        Raises
        ------
        DekerValidationError
            If the place is not a deker storage, or ``group`` is missing.
        DekerClientError
            If the storage cannot be opened.
        DekerCollectionNotExistsError
            If the collection does not exist.
        DekerArrayNotFoundError
            If ``filter`` finds nothing.
        """
        _check_decoders(decoders)
        client = _open_client(filename_or_obj, read_only)
        try:
            ds = collection_dataset(_get(client, group), filter)
        except BaseException:
            client.close()
            raise
        ds = _drop(ds, drop_variables)
        ds.set_close(client.close)
        return ds

    def open_groups_as_dict(  # type: ignore[override]
        self,
        filename_or_obj: Any,
        *,
        drop_variables: str | Iterable[str] | None = None,
        group: str | None = None,
        read_only: bool = False,
        **decoders: Any,
    ) -> dict[str, Any]:
        """Return ``{"/": empty Dataset, "/<collection>": Dataset, ...}`` for every collection (lazy).

        With ``group="<collection>"``, ``{"/": that collection's Dataset}``.  The Datasets share
        one client, closed when the last of them is closed.
        """
        _check_decoders(decoders)
        client = _open_client(filename_or_obj, read_only)
        groups = _groups(client, drop_variables, group)
        shared = _SharedClose(client, len(groups))
        for ds in groups.values():
            ds.set_close(shared.closer())
        return groups

    def open_datatree(  # type: ignore[override]
        self,
        filename_or_obj: Any,
        *,
        drop_variables: str | Iterable[str] | None = None,
        group: str | None = None,
        read_only: bool = False,
        **decoders: Any,
    ) -> Any:
        """Return a :class:`xarray.DataTree` with one child node per collection (lazy).

        With ``group="<collection>"``, the tree of that collection alone.  Closing the tree
        closes the client it opened.
        """
        _check_decoders(decoders)
        client = _open_client(filename_or_obj, read_only)
        tree = xarray.DataTree.from_dict(_groups(client, drop_variables, group))
        tree.set_close(client.close)
        return tree


class _SharedClose:
    """Close a client once every Dataset reading through it was closed (each counted once)."""

    def __init__(self, client: Client, users: int) -> None:
        self._client = client
        self._open = users
        self._lock = threading.Lock()

    def closer(self) -> Callable[[], None]:
        closed = False

        def close() -> None:
            nonlocal closed
            with self._lock:
                if closed:
                    return
                closed = True
                self._open -= 1
                last = self._open == 0
            if last:
                self._client.close()

        return close


def _groups(client: Client, drop_variables: str | Iterable[str] | None, group: str | None) -> dict[str, Any]:
    try:
        if group is not None:
            return {"/": _drop(collection_dataset(_get(client, group)), drop_variables)}
        groups = {"/": xarray.Dataset()}
        for collection in sorted(client, key=lambda c: c.name):
            groups[f"/{collection.name}"] = _drop(collection_dataset(collection), drop_variables)
    except BaseException:
        client.close()
        raise
    return groups
