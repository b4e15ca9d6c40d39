"""Deker on Dask: lazy dask arrays over deker data, and dask arrays stored into VArrays.

- :func:`to_dask`: an Array, VArray, Subset or VSubset as a lazy :class:`dask.array.Array`
  (one chunk per tile; absent tiles are fill values without I/O).
- :func:`to_xarray`: the same, labelled, as a dask-backed :class:`xarray.DataArray`; also a
  whole collection.
- :func:`from_collection`: every array of a collection stacked along a new leading axis.
- :func:`store`: write a dask array into a VArray / Array region, tiles batched into tasks, each under
  its own tile lock.
- :func:`schema_from_xarray`, :func:`store_xarray`: infer a collection schema from an xarray
  object (a netCDF file opened with xarray), and store such an object as a new Array / VArray.
- :func:`local_cluster`, :func:`check_workers`: start a suitable local cluster; check that the
  workers of a cluster see the storage.

To run a client's VArray operations on a cluster, pass the Dask client as its executor:
``deker.Client(uri, executor=distributed_client)``.
"""

from deker_dask.cluster import check_workers, local_cluster
from deker_dask.ingest import schema_from_xarray, store_xarray
from deker_dask.labels import to_xarray
from deker_dask.lazy import from_collection, to_dask
from deker_dask.writes import store

__all__ = [
    "check_workers",
    "from_collection",
    "local_cluster",
    "schema_from_xarray",
    "store",
    "store_xarray",
    "to_dask",
    "to_xarray",
]
