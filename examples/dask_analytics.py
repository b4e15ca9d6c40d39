"""Lazy analytics over a whole collection: stack its arrays with deker_dask, reduce with xarray.

Run: ``python examples/dask_analytics.py [storage-dir]`` (a temporary folder by default).

A collection holds one Array per day (hourly fields on a lat/lon grid, a time axis starting at
each array's ``day``).  ``deker_dask.to_xarray(collection)`` opens all of them as one lazy,
labelled array; the reductions run on a LocalCluster's workers, which read the files.
"""

from __future__ import annotations

import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from distributed import Client as DaskClient

import deker_dask
from deker import ArraySchema, AttributeSchema, Client, DimensionSchema, HDF5Options, TimeDimensionSchema

DAYS = 10


def main(root: Path) -> None:
    with Client(f"file://{root}") as client:
        schema = ArraySchema(
            dtype=np.float32,
            dimensions=[
                TimeDimensionSchema(name="time", size=24, start_value="$day", step=timedelta(hours=1)),
                DimensionSchema(name="lat", size=90, scale={"start_value": 89.0, "step": -2.0}),
                DimensionSchema(name="lon", size=180, scale={"start_value": -179.0, "step": 2.0}),
            ],
            attributes=[AttributeSchema(name="day", dtype=datetime, primary=True)],
        )
        temperature = client.create_collection("temperature", schema, HDF5Options(chunks=(6, 90, 180)))
        lat = np.linspace(89, -89, 90, dtype=np.float32)[None, :, None]
        hours = np.arange(24, dtype=np.float32)[:, None, None]
        for d in reversed(range(DAYS)):  # stored in any order; stacked by primary attribute
            day = datetime(2024, 7, 1, tzinfo=timezone.utc) + timedelta(days=d)
            field = 30 * np.cos(np.radians(lat)) + 5 * np.sin(hours / 24 * 2 * np.pi) + 0.1 * d
            temperature.create({"day": day})[:].update(
                np.broadcast_to(field, (24, 90, 180)).astype(np.float32)
            )
        print(f"{DAYS} daily arrays stored")

        with deker_dask.local_cluster(n_workers=2) as cluster, DaskClient(cluster):
            # lazy: nothing read yet; one task per 2 days (by default: chunks of up to 32 MiB)
            cube = deker_dask.to_xarray(temperature, arrays_per_chunk=2)
            print(f"lazy cube {dict(cube.sizes)}, {cube.data.npartitions} tasks")
            daily_mean = cube.mean(dim=("time", "lat", "lon")).compute()
            for day, value in zip(daily_mean["day"].values[:3], daily_mean.values[:3], strict=True):
                print(f"  {np.datetime_as_string(day, unit='D')}: mean {float(value):.3f}")
            warming = float(daily_mean[-1] - daily_mean[0])
            print(f"change over {DAYS} days: {warming:+.3f}")
            assert abs(warming - 0.1 * (DAYS - 1)) < 1e-3

            tropics = cube.sel(lat=slice(23.0, -23.0)).max(dim=("day", "time")).compute()
            print(
                f"tropical maximum per longitude: {tropics.sizes['lon']} values, "
                f"{float(tropics.max()):.2f} at most"
            )


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]).resolve())
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp) / "storage")
