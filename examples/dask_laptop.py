"""deker_dask on a laptop: lazy dask arrays over a VArray, computed with dask's thread pool.

Run: ``python examples/dask_laptop.py [storage-dir]`` (a temporary folder by default).

No cluster: dask's default threaded scheduler runs the chunk tasks, and deker's own thread pool
runs the VArray's tile tasks.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import dask
import dask.array as da
import numpy as np

import deker_dask
from deker import Client, DimensionSchema, VArraySchema


def main(root: Path) -> None:
    with Client(f"file://{root}") as client, dask.config.set(scheduler="threads"):
        schema = VArraySchema(
            dtype=np.float32,
            dimensions=[DimensionSchema(name="y", size=2000), DimensionSchema(name="x", size=3000)],
            vgrid=(4, 6),  # 24 tiles of 500 x 500
        )
        collection = client.create_collection("field", schema)
        field = collection.create()

        # Store a lazily computed dask array: one task per tile, whatever the source's chunks.
        y, x = da.meshgrid(
            da.linspace(-1, 1, 2000, chunks=700, dtype=np.float32),
            da.linspace(-1, 1, 3000, chunks=800, dtype=np.float32),
            indexing="ij",
        )
        wave = da.sin(6 * x) * da.cos(4 * y)
        deker_dask.store(wave[:, :1500], field[:, :1500])  # only the left half: 12 tiles
        print(f"stored the left half: {len(list(collection.arrays))} tile files written")

        # Read it back lazily: chunks are tiles, absent tiles are NaN without touching the disk.
        lazy = deker_dask.to_dask(field)
        print(f"lazy view {lazy.shape} {lazy.dtype}, chunks of {lazy.chunksize}, {lazy.npartitions} tasks")
        mean_left = float(da.nanmean(lazy).compute())
        expected = float(wave[:, :1500].mean().compute())
        print(f"mean over stored cells: {mean_left:.6f} (numpy-side expectation {expected:.6f})")
        assert abs(mean_left - expected) < 1e-5

        # Labelled, with xarray: reduce along a named dimension.
        profile = deker_dask.to_xarray(field[:, 0:1500]).mean(dim="y").compute()
        print(f"xarray profile along x: {profile.sizes['x']} values, first {float(profile[0]):.4f}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]).resolve())
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp) / "storage")
