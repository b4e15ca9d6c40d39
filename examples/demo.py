"""The README demo: a storage, schemas, Arrays, a tiled VArray, indexing by labels/scales/time.

Run: ``python examples/demo.py [storage-dir]`` (a temporary folder by default).
"""

from __future__ import annotations

import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from deker import (
    ArraySchema,
    AttributeSchema,
    Client,
    DimensionSchema,
    HDF5CompressionOpts,
    HDF5Options,
    TimeDimensionSchema,
    VArraySchema,
)


def main(root: Path) -> None:
    with Client(f"file://{root}") as client:
        # 1. An Array collection: one HDF5 file per array, a time axis that starts at an attribute.
        schema = ArraySchema(
            dtype=np.float32,
            dimensions=[
                TimeDimensionSchema(name="time", size=24, start_value="$day", step=timedelta(hours=1)),
                DimensionSchema(name="lat", size=181, scale={"start_value": 90.0, "step": -1.0}),
                DimensionSchema(name="lon", size=360, scale={"start_value": -180.0, "step": 1.0}),
                DimensionSchema(name="var", size=2, labels=["temperature", "pressure"]),
            ],
            attributes=[
                AttributeSchema(name="day", dtype=datetime, primary=True),
                AttributeSchema(name="source", dtype=str, primary=False),
            ],
        )
        weather = client.create_collection("weather", schema, HDF5Options(chunks=(1, 181, 360, 1)))
        day = datetime(2024, 1, 1, tzinfo=timezone.utc)
        array = weather.create({"day": day}, {"source": "demo"})
        print(f"created {array!r}")

        field = np.linspace(-30, 30, 181 * 360, dtype=np.float32).reshape(181, 360)
        array[6, :, :, "temperature"].update(field)
        value = array["2024-01-01T06:00:00", 0.0, 10.0, "temperature"].read()
        print(f"temperature at 06:00, lat 0, lon 10: {value:.3f}")
        print("untouched cells read as the fill value:", array[0, 0, 0, "pressure"].read())
        print("description of a subset:", dict(array[6, 0:2, 0, "temperature"].describe()))

        same = weather.filter({"day": "2024-01-01T00:00:00Z"}).last()
        print(f"found again by primary key: {same is not None and same.id == array.id}")

        # 2. A VArray: one big virtual array tiled over a grid of HDF5 files.
        vschema = VArraySchema(
            dtype=np.int32,
            dimensions=[DimensionSchema(name="y", size=2048), DimensionSchema(name="x", size=2048)],
            vgrid=(4, 4),
        )
        opts = HDF5Options(chunks=True, compression_opts=HDF5CompressionOpts("gzip", 4))
        images = client.create_collection("images", vschema, opts)
        mosaic = images.create()
        block = np.arange(1000 * 1500, dtype=np.int32).reshape(1000, 1500)
        mosaic[300:1300, 200:1700].update(block)
        tiles = list(images.arrays)
        print(
            f"VArray {mosaic.shape} on a {mosaic.vgrid} grid of {mosaic.arrays_shape} tiles: "
            f"{len(tiles)} tile files written"
        )
        window = mosaic[500:520, 510:530].read()
        assert np.array_equal(window, block[200:220, 310:330])
        print(f"cross-tile window read matches: shape {window.shape}, sum {int(window.sum())}")
        mosaic[0:1024, 0:1024].clear()
        print(f"after clearing the top-left quarter: {len(list(images.arrays))} tile files")
        size = client.calculate_storage_size()
        print(f"storage size: {size.human}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]).resolve())
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp) / "storage")
