"""Benchmark: the filesystem floor of creating an Array in deker's on-disk format.

Creating an Array in the layout of deker 1.1.7 (SPEC §2.2), which deker keeps, takes these
filesystem operations and nothing else: the directories of the id fan-out and of the primary
key, a creation lock file, the symlink, the data file (a fixed 2.4 KB image written under a
temporary name and linked into place), and removing the lock and the temporary name.  This
script runs exactly those calls with ``os`` in a loop, with no HDF5, JSON, validation or
locking logic, to show how fast creation can be on this machine at best.

Run standalone: ``python benchmarks/bench_create_floor.py [count]`` prints one JSON line.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from typing import Any

COUNT = 2000
_IMAGE = b"\0" * 2400  # about the size of a new Array file


def measure(count: int = COUNT) -> dict[str, Any]:
    """Create ``count`` arrays' worth of files and directories; return the rate."""
    folder = tempfile.mkdtemp(prefix="deker-bench-floor-")
    try:
        start = time.perf_counter()
        for i in range(count):
            array_id = str(uuid.uuid4())
            main = os.path.join(folder, "array_data", *array_id.split("-")[0], array_id[9:])
            os.makedirs(main, exist_ok=True)
            link_dir = os.path.join(folder, "array_symlinks", str(i), "key")
            os.makedirs(link_dir, exist_ok=True)
            lock = os.path.join(folder, f"{i}.arrlock")
            os.close(os.open(lock, os.O_CREAT | os.O_WRONLY, 0o644))
            target = os.path.join(main, f"{array_id}.hdf5")
            os.symlink(target, os.path.join(link_dir, f"{array_id}.hdf5"))
            tmp = os.path.join(main, f".{array_id}.hdf5.tmp")
            fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
            os.write(fd, _IMAGE)
            os.close(fd)
            os.link(tmp, target)
            os.unlink(tmp)
            os.unlink(lock)
        seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"suite": "bench_create_floor", "count": count, "seconds": seconds, "rate": count / seconds}


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]) if len(sys.argv) > 1 else COUNT)))
