"""Labelled lazy arrays: dask-backed :class:`xarray.DataArray` objects over deker data.

By default (``cf=True``) the labels are the CF- and netCDF-safe ones of :mod:`deker.cf`, so
``to_netcdf`` and ``to_zarr`` write the result as is: for an Array, VArray or subset those of
``read_xarray(cf=True)`` (integer-indexed dimensions stay, with one coordinate); for a
collection those of :func:`deker.cf.collection_layout` (a leading dimension named after the
primary attribute when there is exactly one, else ``array``, with the ids, primary attributes
and varying custom attributes along it; a dimension whose coordinates differ between arrays,
a time axis starting at an attribute of each array, gets a two-dimensional
``<dimension>_values`` coordinate).  ``cf=False`` gives the labels of ``read_xarray()`` (deker
1.1.7's dict attributes), and for collections the earlier form of this module.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np

from deker.cf import (
    array_layout,
    collection_layout,
    data_array,
    datetime64_values,
    import_xarray,
    one_time_unit,
)
from deker.collection import Collection
from deker.errors import DekerSubsetError, DekerValidationError
from deker.schemas import TimeDimensionSchema
from deker_dask.handles import collection_items
from deker_dask.lazy import build_keepdims, stack

__all__ = ["to_xarray"]

logger = logging.getLogger(__name__)


def coordinate(values: Sequence[Any]) -> np.ndarray[Any, Any]:
    """Turn a list of coordinate values into an array (datetimes: :func:`deker.cf.datetime64_values`).

    Parameters
    ----------
    values : sequence
        Labels, scale values, positions, datetimes or attribute values.

    Returns
    -------
    numpy.ndarray
        The coordinate.
    """
    if values and all(isinstance(v, datetime) for v in values):
        return datetime64_values(values)
    if values and any(isinstance(v, (tuple, list, dict)) or v is None for v in values):
        out = np.empty(len(values), dtype=object)
        for i, v in enumerate(values):
            out[i] = v
        return out
    return np.asarray(values)


def _describe(obj: Any, bounds: Sequence[int | slice]) -> dict[str, list[Any]]:
    return {dim.name: dim.describe(b) for dim, b in zip(obj.dimensions, bounds, strict=True)}


def _single(obj: Any, tiles_per_chunk: Any, chunks: Any, name: Any, cf: bool) -> Any:
    xarray = import_xarray()
    data, target = build_keepdims(obj, tiles_per_chunk, chunks, name)
    if target.shape == ():
        kind = "VSubset" if target.is_varray else "Subset"
        raise DekerSubsetError(f"Cannot convert a scalar deker.{kind} to xarray.DataArray")
    owner = target.obj
    if cf:
        layout = array_layout(owner, target.bounds)
        return data_array(xarray, data, layout)
    description = _describe(owner, target.bounds)
    kind = "VArray" if target.is_varray else "Array"
    sub = "VSubset" if target.is_varray else "Subset"
    title = f"Deker {sub} of {kind}(id={owner.id}) from collection `{owner.collection}`"
    return xarray.DataArray(
        data,
        coords={dim: coordinate(values) for dim, values in description.items()},
        dims=list(description),
        name=title,
        attrs={
            "primary_attributes": owner.primary_attributes,
            "custom_attributes": owner.custom_attributes,
        },
    )


def _collection(collection: Collection, options: dict[str, Any], cf: bool) -> Any:
    xarray = import_xarray()
    items = collection_items(collection)
    data = stack(collection, items, **options)
    if cf:
        layout = collection_layout(collection, items)
        return data_array(xarray, data, layout)
    schema = collection.varray_schema or collection.array_schema
    primary = [a.name for a in schema.attributes if a.primary]
    lead = primary[0] if len(primary) == 1 else "array"
    dims = [d.name for d in schema.dimensions]
    coords: dict[str, Any] = {}
    if "id" not in primary:
        coords["id"] = (lead, np.asarray([a.id for a in items], dtype=object))
    for attr in primary:
        values = coordinate([a.primary_attributes[attr] for a in items])
        coords[attr] = values if attr == lead else (lead, values)
    varying = {
        d.name
        for d in schema.dimensions
        if isinstance(d, TimeDimensionSchema) and str(d.start_value).startswith("$")
    }
    full = [slice(0, s) for s in schema.shape]
    if items:
        described = _describe(items[0], full)
        for dim in dims:
            if dim not in varying:
                coords[dim] = coordinate(described[dim])
                continue
            rows = one_time_unit([coordinate(_describe_one(a, dims.index(dim), full)) for a in items])
            if all(np.array_equal(rows[0], r) for r in rows[1:]):
                coords[dim] = rows[0]
            else:
                coords[f"{dim}_values"] = ((lead, dim), np.stack(rows))
    return xarray.DataArray(
        data,
        coords=coords,
        dims=[lead, *dims],
        name=f"Deker collection `{collection.name}`",
        attrs={"collection": collection.name},
    )


def _describe_one(obj: Any, axis: int, bounds: Sequence[int | slice]) -> list[Any]:
    return list(obj.dimensions[axis].describe(bounds[axis]))


def to_xarray(
    obj: Any,
    *,
    tiles_per_chunk: int | Sequence[int] | None = None,
    chunks: Any = None,
    arrays_per_chunk: int | None = None,
    name: str | bool | None = None,
    cf: bool = True,
) -> Any:
    """Return a dask-backed :class:`xarray.DataArray` over deker data.

    Parameters
    ----------
    obj : Array, VArray, Subset, VSubset or Collection
        What to read.  A collection is stacked as by :func:`~deker_dask.from_collection`.
    tiles_per_chunk, chunks, name : optional
        The chunking and graph name, as for :func:`~deker_dask.to_dask`.
    arrays_per_chunk : int, optional
        Collections only: as for :func:`~deker_dask.from_collection`.
    cf : bool, default True
        CF- and netCDF-safe labels (:mod:`deker.cf`): named after the collection, one scalar
        attribute per attribute, CF-encoded times; ``to_netcdf`` and ``to_zarr`` write it as
        is.  ``False``: the labels of ``read_xarray()`` (dict attributes, as deker 1.1.7).

    Returns
    -------
    xarray.DataArray
        Lazy: nothing is read until it is computed.

    Raises
    ------
    ImportError
        If xarray is not installed.
    DekerSubsetError
        If ``obj`` is a single cell.
    DekerValidationError
        If an option does not apply to ``obj``.
    """
    if isinstance(obj, Collection):
        options = {
            "tiles_per_chunk": tiles_per_chunk,
            "chunks": chunks,
            "arrays_per_chunk": arrays_per_chunk,
            "name": name,
        }
        return _collection(obj, options, cf)
    if arrays_per_chunk is not None:
        raise DekerValidationError("arrays_per_chunk applies to collections only")
    return _single(obj, tiles_per_chunk, chunks, name, cf)
