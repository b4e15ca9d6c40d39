"""A batch job on a Dask cluster: many independent tasks fill one VArray, then check it.

Run: ``python examples/dask_batch.py [storage-dir]`` (a temporary folder by default).

A ``LocalCluster`` of worker processes stands in for a real cluster (whose workers would share
the storage over NFS or Lustre).  Three ways to write are shown:

1. independent tasks (``client.map``), each opening the storage on its worker and updating its
   own block: the tile locks keep concurrent writers apart;
2. ``deker_dask.store`` of a dask array: one task per tile;
3. ``deker.Client(executor=dask_client)``: the client's VArray operations run on the workers.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import dask.array as da
import numpy as np
from distributed import Client as DaskClient

import deker_dask
from deker import Client, DimensionSchema, VArraySchema

ROWS, COLS, BAND = 1200, 1600, 100


def block_values(row: int) -> np.ndarray:
    """The data of one band of rows (what a real job would compute)."""
    y = np.arange(row, row + BAND, dtype=np.float64)[:, None]
    x = np.arange(COLS, dtype=np.float64)[None, :]
    return np.sqrt(y * y + x * x)


def fill_band(uri: str, collection: str, varray_id: str, row: int) -> int:
    """One independent task: open the storage on the worker, write one band of rows."""
    with Client(uri) as client:
        coll = client.get_collection(collection)
        assert coll is not None
        varray = coll.filter({"id": varray_id}).last()
        varray[row : row + BAND, :].update(block_values(row))
    return row


def main(root: Path) -> None:
    uri = f"file://{root}"
    with (
        deker_dask.local_cluster(n_workers=2) as cluster,
        DaskClient(cluster) as dask_client,
        Client(uri, executor=dask_client) as client,
    ):
        deker_dask.check_workers(dask_client, root)  # every worker sees the storage
        schema = VArraySchema(
            dtype=np.float64,
            dimensions=[DimensionSchema(name="y", size=ROWS), DimensionSchema(name="x", size=COLS)],
            vgrid=(4, 4),  # tiles of 300 x 400: a band of rows touches one or two tile rows
        )
        coll = client.create_collection("distances", schema)
        target = coll.create()

        # 1. Many independent tasks, writing overlapping tiles at the same time.
        rows = list(range(0, ROWS, BAND))
        n = len(rows)
        futures = dask_client.map(fill_band, [uri] * n, ["distances"] * n, [target.id] * n, rows)
        done = dask_client.gather(futures)
        print(f"{len(done)} independent tasks wrote {len(list(coll.arrays))} tiles")

        expected = np.vstack([block_values(r) for r in rows])
        assert np.array_equal(target[:].read(), expected)  # read by tile tasks on the workers
        print("VArray equals the expected field (read through the cluster)")

        # 2. Store a dask array: one task per tile, each under that tile's lock.
        copy = coll.create()
        source = deker_dask.to_dask(target) * 2
        deker_dask.store(source.rechunk((500, 700)), copy)  # chunks need not follow the tiles
        total = float(deker_dask.to_dask(copy).sum().compute())
        print(f"stored a derived copy; its sum is {total:.1f}")
        assert np.isclose(total, 2 * expected.sum())

        # 3. The client's own operations, executed by the workers.
        copy[0:600, 0:800].clear()
        print(f"after a clear: {int(da.isnan(deker_dask.to_dask(copy)).sum().compute())} empty cells")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]).resolve())
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp) / "storage")
