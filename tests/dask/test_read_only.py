"""A read-only client through the session's Dask cluster (worker processes): deker_dask's lazy
arrays, and deker's own tile tasks (``executor=``: reads, integrity checks).

The read-only choice travels with each task's :class:`~deker.tasks.FileSpec` (its lock
settings): on the workers the tasks take no lock they would have to create.  The storage is
made like a deker 1.1.7 one (no identity file, no tile mutexes), where a writable reader would
create both; a read-only one must create nothing.  (The real read-only mount is in
tests/test_scenarios_read_only.py, on the ``processes`` scheduler.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from storage_helpers.read_only_child import snapshot

import deker_dask
from deker import Client, DimensionSchema, VArraySchema
from deker.errors import DekerReadOnlyError
from deker.storage.identity import STORAGE_ID_FILE


def test_lazy_reads_on_a_cluster_create_nothing(tmp_path: Path, cluster: Any) -> None:
    storage = tmp_path / "st"
    values = np.arange(64, dtype=np.int32).reshape(8, 8)
    with Client(storage.as_uri()) as writer:
        grid = writer.create_collection(
            "grid",
            VArraySchema(
                dtype=np.int32, dimensions=[DimensionSchema("y", 8), DimensionSchema("x", 8)], vgrid=(2, 2)
            ),
        )
        grid.create()[:, :].update(values)
    for path in [*storage.rglob("*.lock"), *storage.rglob("*.fence")]:
        if path.parent != storage / "collections":  # keep the collection lock, drop tile mutexes/fences
            path.unlink()
    (storage / "collections" / STORAGE_ID_FILE).unlink()
    before = snapshot(storage)
    with Client(storage.as_uri(), read_only=True) as reader:
        varray = next(iter(reader.get_collection("grid")))  # type: ignore[arg-type]
        lazy = deker_dask.to_dask(varray)
        assert (lazy.compute(scheduler=cluster) == values).all()
        assert float(deker_dask.to_xarray(varray).sum().compute(scheduler=cluster)) == float(values.sum())
        with pytest.raises(DekerReadOnlyError):
            deker_dask.store(lazy + 1, varray, scheduler=cluster)
    with Client(storage.as_uri(), read_only=True, executor=cluster) as on_workers:  # deker's own tile tasks
        varray = next(iter(on_workers.get_collection("grid")))  # type: ignore[arg-type]
        assert (varray[:].read() == values).all()
        assert on_workers.check_integrity(4, progress=False).ok
    assert snapshot(storage) == before
