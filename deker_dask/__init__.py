"""Deker on Dask: lazy dask arrays over deker arrays and storing dask arrays into VArrays."""
