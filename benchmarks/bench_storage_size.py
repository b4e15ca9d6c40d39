"""Benchmark: ``Client.calculate_storage_size`` on a storage with many files.

Builds a storage tree the way deker lays it out (an id fan-out of directories per array, a
data file, its symlink and its lock file) with ``100_000 * size_scale`` data files, then times
``calculate_storage_size`` for the whole storage and for the collection (best of 3 runs).
The files hold a few bytes each: the cost measured is walking the tree, not reading data.

Run standalone: ``python benchmarks/bench_storage_size.py [size_scale]`` prints JSON.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from deker import Client
from deker.storage.layout import CollectionPaths

FILES = 100_000


def _build(root: Path, count: int) -> int:
    """Create ``count`` arrays in collection ``bench``; return the bytes written."""
    paths = CollectionPaths(root / "collections", "bench")
    paths.path.mkdir(parents=True)
    total = 0
    meta = b'{"name": "bench"}'
    paths.meta_file.write_bytes(meta)
    total += len(meta)
    (root / "collections" / "bench.lock").touch()
    payload = b"x" * 96
    for i in range(count):
        array_id = str(uuid.UUID(int=(i * 0x9E3779B97F4A7C15 + 12345) % (1 << 128), version=4))
        main = paths.main_file("array", array_id)
        main.parent.mkdir(parents=True, exist_ok=True)
        main.write_bytes(payload)
        (main.parent / f"{array_id}.lock").touch()
        link = paths.symlink_file("array", (str(i % 1000),), array_id)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(main, link)
        total += len(payload)
    return total


def _best(fn: Any, repeat: int = 3) -> tuple[float, Any]:
    best, value = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


def run(size_scale: float = 1.0) -> list[dict[str, Any]]:
    """Time the storage size of ``100_000 * size_scale`` arrays (at least 100).

    Parameters
    ----------
    size_scale : float
        Scales the number of data files.

    Returns
    -------
    list of dict
        One JSON-ready record per measurement: name, files (data files; each also has a lock
        file and a symlink), seconds (best of 3), files_per_second, bytes, build_seconds.
    """
    count = max(100, int(FILES * size_scale))
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="deker-bench-size-") as tmp:
        root = Path(tmp) / "storage"
        start = time.perf_counter()
        written = _build(root, count)
        build_seconds = time.perf_counter() - start
        with Client(root.as_uri()) as client:
            for name, collection in (("storage_size_all", ""), ("storage_size_collection", "bench")):
                seconds, size = _best(lambda c=collection: client.calculate_storage_size(c))
                if size.bytes != written:
                    raise AssertionError(f"size {size.bytes} != bytes written {written}")
                results.append(
                    {
                        "name": name,
                        "files": count,  # arrays; the walk also meets a lock file and a symlink each
                        "seconds": round(seconds, 4),
                        "files_per_second": round(count / seconds),
                        "bytes": size.bytes,
                        "build_seconds": round(build_seconds, 2),
                    }
                )
    return results


if __name__ == "__main__":
    scale = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    print(json.dumps(run(scale), indent=2))
