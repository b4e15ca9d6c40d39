"""Helpers of the Dask tests (importable by the test modules and by workers: ``tests/dask`` is on
their ``sys.path``)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from dask.array.core import getter, getter_nofancy
from distributed import WorkerPlugin

from deker import Client, DimensionSchema, HDF5Options, VArraySchema
from deker_dask.lazy import TileReader

LOCK_PATTERNS = ("*.varraylock", "*.arrayreadlock", "*.arrlock", "*.tmp")


def lock_files(path: Path) -> list[Path]:
    """Every lock marker, creation lock or temporary file left under ``path``."""
    return sorted(p for pattern in LOCK_PATTERNS for p in path.rglob(pattern))


def held(path: Path) -> bool:
    """Whether some process holds a lock (of the primitive in use) on ``path`` (False if missing)."""
    from storage_helpers.prim import seen_locked  # tests/ is on the test process's sys.path only

    return seen_locked(path, exclusive=False)


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


@contextlib.contextmanager
def legacy_read_marker(main_dir: Path, array_id: str) -> Iterator[Path]:
    """Hold a deker 1.1.7 style read marker (``<id>:<uuid4>:<pid>:<tid>.arrayreadlock``) on a file.

    deker treats it as a live reader while this process runs: a writer that already holds the
    file's lock waits for the marker to go, so a test can keep a write "in the middle".
    """
    marker = main_dir / f"{array_id}:{uuid.uuid4()}:{os.getpid()}:{threading.get_native_id()}.arrayreadlock"
    marker.touch()
    try:
        yield marker
    finally:
        with contextlib.suppress(FileNotFoundError):
            marker.unlink()


def holder_of(path: Path, pids: dict[str, int]) -> str | None:
    """The address of the worker (``{address: pid}``) whose process has ``path`` open, if any."""
    for address, pid in pids.items():
        with contextlib.suppress(psutil.Error):
            if any(f.path == str(path) for f in psutil.Process(pid).open_files()):
                return address
    return None


def executing_keys(dask_worker: Any) -> list[Any]:
    """The keys a worker is executing now (run with ``client.run``)."""
    return [ts.key for ts in list(dask_worker.state.executing)]


def keys_executing(client: Any) -> set[Any]:
    """The keys being executed on any worker of ``client``."""
    return {key for keys in client.run(executing_keys).values() for key in keys}


def _read_tasks(array: Any) -> list[tuple[Any, tuple[Any, ...]]]:
    """Every task of a dask collection's graph as (function, arguments).

    A chunk read through a :class:`deker_dask.lazy.TileReader` (dask's getter on the reader)
    is given as the task the reader runs for that chunk (``fill_chunk``, ``read_region`` or
    ``read_chunk`` with their arguments); the reader itself is no task.
    """
    graph = dict(array.__dask_graph__())
    out: list[tuple[Any, tuple[Any, ...]]] = []
    for task in graph.values():
        if isinstance(task, TileReader):
            continue
        if isinstance(task, tuple) and task and callable(task[0]):
            out.append((task[0], task[1:]))
            continue
        func = getattr(task, "func", None)
        args = tuple(getattr(a, "value", a) for a in getattr(task, "args", ()))
        if func in (getter, getter_nofancy) and args:
            source = getattr(task.args[0], "key", None)
            reader = graph.get(source) if source is not None else args[0]
            if isinstance(reader, TileReader):
                bounds, _ = reader.region(args[1])
                read, *read_args = reader.task(bounds)
                out.append((read, tuple(read_args)))
                continue
        out.append((func, args))
    return out


def task_functions(array: Any) -> list[Any]:
    """The function of every task of a dask collection's graph (reads: what the reader runs)."""
    return [func for func, _ in _read_tasks(array)]


def task_args(array: Any, fn: Callable[..., Any]) -> list[tuple[Any, ...]]:
    """The arguments of the tasks of ``array`` that call ``fn``."""
    return [args for func, args in _read_tasks(array) if func is fn]


def varray(
    client: Client,
    shape: tuple[int, ...],
    vgrid: tuple[int, ...],
    dtype: Any = np.float32,
    name: str = "v",
    options: HDF5Options | None = None,
) -> Any:
    """A new VArray in a new collection."""
    dims = [DimensionSchema(name=f"d{i}", size=s) for i, s in enumerate(shape)]
    coll = client.create_collection(name, VArraySchema(dtype=dtype, dimensions=dims, vgrid=vgrid), options)
    return coll.create()


def tile_dir(v: Any, position: tuple[int, ...]) -> tuple[Path, str]:
    """The main directory and id of the tile of ``v`` at ``position`` (it must exist)."""
    tid = v.tiles.ids()[position]
    return v.tiles.for_tile(tid).main_dir, tid


class BlockTask(WorkerPlugin):  # type: ignore[misc]
    """A Dask worker plugin that freezes a worker when it starts a task whose key begins with
    ``prefix``, until the test kills that worker (or creates ``<folder>/release``).

    It does so ``times`` times in all, across workers: the n-th freeze belongs to the worker that
    creates ``<folder>/armed<n>``; it writes its name to ``<folder>/blocked<n>`` and stops in the
    transition of the task to ``executing``, so that the task (and the data scattered to that
    worker) stays "in the middle" for as long as the test wants.  Register it with
    ``client.register_plugin(BlockTask(folder, "write_piece"), name=...)``.
    """

    idempotent = False

    def __init__(self, folder: str, prefix: str, times: int = 1) -> None:
        self.folder = folder
        self.prefix = prefix
        self.times = times

    def setup(self, worker: Any) -> None:
        self.worker = worker

    def teardown(self, worker: Any) -> None:
        pass

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        name = key if isinstance(key, str) else str(key[0] if isinstance(key, tuple) else key)
        if finish != "executing" or not name.startswith(self.prefix):
            return
        folder = Path(self.folder)
        for n in range(self.times):
            try:
                fd = os.open(folder / f"armed{n}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                continue
            os.close(fd)
            (folder / f"blocked{n}.tmp").write_text(str(self.worker.name))
            os.rename(folder / f"blocked{n}.tmp", folder / f"blocked{n}")
            while not (folder / "release").exists():  # until the test kills this process
                time.sleep(0.01)
            return
