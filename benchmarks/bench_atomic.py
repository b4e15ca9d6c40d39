"""Benchmark: the cost of crash-safe writes at the storage layer (docs/RELIABILITY.md, "Cost").

Times the operations of ``deker.storage.hdf5`` on an 8 MiB Array file (1024 x 1024 float64)
and a 512 KiB tile (256 x 256 float64), and raw h5py writing the same new files, in child
processes without and with ``DEKER_FSYNC=1`` (which is read at each write).  Each operation
runs ``ROUNDS`` times on fresh files; the median is reported.

Run standalone: ``python benchmarks/bench_atomic.py [rounds]`` prints one JSON line per
measurement and a Markdown table.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROUNDS = 15
BIG = (1024, 1024)
TILE = (256, 256)
META = b'{"id": "f61df9c1-c07a-48c3-bd57-8a470c80939a", "primary_attributes": {}, "custom_attributes": {}}'


def _timed(
    setup: Callable[[Path], Any], step: Callable[[Path, Any], None], folder: Path, rounds: int
) -> float:
    times = []
    for i in range(rounds):
        path = folder / f"f{i}.hdf5"
        state = setup(path)
        start = time.perf_counter()
        step(path, state)
        times.append(time.perf_counter() - start)
        path.unlink()
    return statistics.median(times)


def _measure_shape(folder: Path, label: str, shape: tuple[int, int], rounds: int) -> dict[str, float]:
    import h5py

    from deker.storage import hdf5

    meta_dtype = f"S{len(META) + 40}"
    values = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    whole = tuple(slice(0, n) for n in shape)
    rows = (slice(8, 16), slice(0, shape[1]))
    half = (slice(0, shape[0] // 2), slice(0, shape[1]))
    cells = int(np.prod(shape))

    def new(path: Path) -> None:
        hdf5.create_array_file(path, META, meta_dtype, cells)

    def stored(path: Path) -> None:
        new(path)
        hdf5.write_region(path, whole, values, shape, np.nan, {})

    def raw(path: Path, _state: Any) -> None:
        with h5py.File(path, "w", locking=False) as handle:
            handle.create_dataset("meta", data=np.array(META, dtype=meta_dtype))
            handle.create_dataset("empty_cells", data=np.int64(0))
            handle.create_dataset("data", data=values)

    def create_and_write(path: Path, _state: Any) -> None:
        hdf5.create_array_file(path, META, meta_dtype, cells, data=values, shape=shape, fill_value=np.nan)

    def write(bounds: Any, data: np.ndarray) -> Callable[[Path, Any], None]:
        return lambda path, _state: hdf5.write_region(path, bounds, data, shape, np.nan, {})

    steps: list[tuple[str, Callable[[Path], Any], Callable[[Path, Any], None]]] = [
        (f"raw h5py: a new {label} file", lambda p: None, raw),
        (f"{label}: create holding all its data", lambda p: None, create_and_write),
        (f"{label}: first write of every cell", new, write(whole, values + 1)),
        (f"{label}: rewrite of every cell", stored, write(whole, values + 1)),
        (f"{label}: first write of 8 rows", new, write(rows, values[rows] + 1)),
        (f"{label}: write 8 rows of stored data", stored, write(rows, values[rows] + 1)),
        (f"{label}: write half of stored data", stored, write(half, values[half] + 1)),
    ]
    return {what: _timed(setup, step, folder, rounds) for what, setup, step in steps}


def measure(rounds: int) -> dict[str, float]:
    """Median seconds of every operation, in this process (``DEKER_FSYNC`` as set)."""
    from deker.storage import hdf5

    meta_dtype = f"S{len(META) + 40}"
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="deker-bench-atomic-") as name:
        folder = Path(name)
        out.update(_measure_shape(folder, "8 MiB Array", BIG, rounds))
        out.update(_measure_shape(folder, "tile", TILE, rounds))
        out["update the metadata of an Array"] = _timed(
            lambda p: hdf5.create_array_file(p, META, meta_dtype, 4),
            lambda p, _s: hdf5.write_meta(p, META.replace(b"{}}", b'{"x": 1}}'), meta_dtype),
            folder,
            rounds,
        )
    return out


def main(rounds: int = ROUNDS) -> list[dict[str, Any]]:
    """Measure without and with ``DEKER_FSYNC=1`` in child processes; print JSON and a table."""
    results: dict[str, dict[str, float]] = {}
    for fsync in ("0", "1"):
        env = dict(os.environ, DEKER_FSYNC=fsync)
        code = f"import json, benchmarks.bench_atomic as b; print(json.dumps(b.measure({rounds})))"
        done = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        results[fsync] = json.loads(done.stdout.strip().splitlines()[-1])
    rows = []
    for name, seconds in results["0"].items():
        row = {
            "suite": "bench_atomic",
            "measurement": name,
            "seconds": seconds,
            "fsync_seconds": results["1"][name],
        }
        rows.append(row)
        print(json.dumps(row))
    print("\n| operation | time | with `DEKER_FSYNC=1` |\n|---|---|---|")
    for row in rows:
        fsync_cell = "" if row["measurement"].startswith("raw") else f"{row['fsync_seconds'] * 1000:.1f} ms"
        print(f"| {row['measurement']} | {row['seconds'] * 1000:.1f} ms | {fsync_cell} |")
    return rows


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else ROUNDS)
