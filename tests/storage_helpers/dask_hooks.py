"""Dask worker plugins that hold or slow down tile tasks at chosen points (fault tests).

Importable by the test process and by the workers (``tests/`` is on their ``sys.path``: a
LocalCluster's spawned workers inherit it, CLI-started ones get it through ``PYTHONPATH``).
The plugins wrap deker's own functions on the worker to *stop* a task at a precise point
(waiting for a file the test creates) or to *delay* it; nothing is replaced by a fake.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin


class HoldTileWrite(WorkerPlugin):
    """A Dask worker plugin that holds one tile task of a VArray write at a chosen point.

    ``point`` is where the task stops: ``"guard"`` before it checks its lock (and takes the
    tile's fence), ``"write"`` when it starts writing the file, ``"journal"`` once it holds the
    undo journal of an in-place change.  The first task that gets there for ``tile_id``
    creates ``<signals>/blocked`` and waits until ``<signals>/go`` exists, then goes on and
    writes its outcome (``ok`` or the exception's class name) to ``<signals>/done``.  Other
    tasks pass.  ``teardown`` (unregistering the plugin) puts the real functions back.
    """

    def __init__(self, signals: Path, tile_id: str, point: str, name: str) -> None:
        self.signals = str(signals)
        self.tile_id = tile_id
        self.point = point
        self.name = name
        self._restore: list[tuple[Any, str, Any]] = []
        self._holding = False

    def _claim(self, path: Any) -> bool:
        if self.tile_id not in str(path):
            return False
        try:
            os.close(os.open(os.path.join(self.signals, "claimed"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True

    def _hold(self) -> None:
        Path(self.signals, "blocked").touch()
        deadline = time.monotonic() + 120
        while not Path(self.signals, "go").exists() and time.monotonic() < deadline:
            time.sleep(0.01)

    def _record(self, outcome: str) -> None:
        Path(self.signals, "done").write_text(outcome)

    def setup(self, worker: Any = None) -> None:
        import deker.storage.journal as journal
        import deker.tasks as tasks
        from deker.storage import hdf5

        plugin = self
        if self.point == "guard":
            real_guard = tasks.tile_write_guard

            @contextlib.contextmanager
            def guard(main_dir: Any, tile_id: str, token: str, *args: Any) -> Iterator[None]:
                mine = plugin._claim(Path(main_dir) / tile_id)
                if mine:
                    plugin._hold()
                try:
                    with real_guard(main_dir, tile_id, token, *args):
                        yield
                except BaseException as exc:
                    if mine:
                        plugin._record(type(exc).__name__)
                    raise
                if mine:
                    plugin._record("ok")

            self._patch(tasks, "tile_write_guard", guard)
        elif self.point in ("write", "journal"):
            real_write = hdf5.write_region
            real_start = journal.UndoJournal._start_journal

            def write_region(path: Any, *args: Any, **kwargs: Any) -> Any:
                mine = plugin.point == "write" and plugin._claim(path)
                if mine:
                    plugin._hold()
                try:
                    result = real_write(path, *args, **kwargs)
                except BaseException as exc:
                    if mine or plugin._holding:
                        plugin._record(type(exc).__name__)
                    raise
                if mine or plugin._holding:
                    plugin._record("ok")
                return result

            def start_journal(this: Any) -> None:
                real_start(this)
                if plugin.point == "journal" and plugin._claim(this.path):
                    plugin._holding = True
                    plugin._hold()

            self._patch(hdf5, "write_region", write_region)
            self._patch(journal.UndoJournal, "_start_journal", start_journal)
        else:
            raise ValueError(self.point)

    def _patch(self, owner: Any, attr: str, value: Any) -> None:
        self._restore.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, value)

    def teardown(self, worker: Any = None) -> None:
        for owner, attr, value in reversed(self._restore):
            setattr(owner, attr, value)
        self._restore.clear()


class SlowTileWrites(WorkerPlugin):
    """A Dask worker plugin that delays every tile write and records how each write task ended.

    Each ``deker.tasks.write_piece`` call on the worker writes ``<signals>/<hex>.<outcome>``
    (``ok`` or the exception's class name) when it ends; each ``hdf5.write_region`` call first
    sleeps a random 0 to ``max_delay`` seconds (a slow disk: widens the window in which a
    killed coordinator's tasks still run).  ``teardown`` puts the real functions back.
    """

    def __init__(self, signals: Path, max_delay: float, seed: int, name: str) -> None:
        self.signals = str(signals)
        self.max_delay = max_delay
        self.seed = seed
        self.name = name
        self._restore: list[tuple[Any, str, Any]] = []

    def setup(self, worker: Any = None) -> None:
        import deker.tasks as tasks
        from deker.storage import hdf5

        rng = random.Random(f"{self.seed}-{os.getpid()}")
        real_write, real_piece = hdf5.write_region, tasks.write_piece
        signals, max_delay = self.signals, self.max_delay

        def write_region(*args: Any, **kwargs: Any) -> Any:
            time.sleep(rng.uniform(0, max_delay))
            return real_write(*args, **kwargs)

        def write_piece(*args: Any, **kwargs: Any) -> Any:
            outcome = "ok"
            try:
                return real_piece(*args, **kwargs)
            except BaseException as exc:
                outcome = type(exc).__name__
                raise
            finally:
                Path(signals, f"{uuid.uuid4().hex}.{outcome}").touch()

        for owner, attr, value in ((hdf5, "write_region", write_region), (tasks, "write_piece", write_piece)):
            self._restore.append((owner, attr, getattr(owner, attr)))
            setattr(owner, attr, value)

    def teardown(self, worker: Any = None) -> None:
        for owner, attr, value in reversed(self._restore):
            setattr(owner, attr, value)
        self._restore.clear()


def executing_keys(dask_worker: Any) -> list[Any]:
    """The keys a worker is executing now (run with ``client.run``)."""
    return [ts.key for ts in list(dask_worker.state.executing)]


def scheduler_task_count(dask_scheduler: Any) -> int:
    """How many tasks the scheduler still knows (run with ``client.run_on_scheduler``)."""
    return len(dask_scheduler.tasks)
