"""Running per-tile tasks on whatever executor a client has (SPEC §4.6, DESIGN "executors").

:class:`TaskRunner` hides three kinds of executor behind one ``run_all`` call:

- the client's own :class:`~concurrent.futures.ThreadPoolExecutor`, created lazily on first
  use and shut down with the client;
- any :class:`concurrent.futures.Executor` the user gives (threads or processes), used as is
  and never shut down by deker;
- a Dask distributed ``Client``, recognised by duck typing (deker never imports dask): tasks
  are submitted with ``pure=False`` so the scheduler never merges two calls with equal
  arguments (a write must run every time it is asked for), and large numpy arguments are
  scattered to the workers first instead of being embedded in the task graph.

Submitted functions must be module-level (picklable) and take picklable arguments.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from deker import daskclient, outcomes
from deker.daskclient import GATHER_BYTES, LOST_TASK_WAIT_SECONDS, SCATTER_THRESHOLD, keys_running
from deker.errors import DekerClientError, DekerValidationError
from deker.shipment import Shipment
from deker.sizes import usable_cores

__all__ = [
    "GATHER_BYTES",
    "DASK_RESUBMITS",
    "LOST_TASK_WAIT_SECONDS",
    "SCATTER_THRESHOLD",
    "TARGET_TASK_BYTES",
    "TaskRunner",
    "keys_running",
    "run_batch",
    "run_gated",
]

logger = logging.getLogger(__name__)

R = TypeVar("R")

#: A batch of small tile calls aims at about this much I/O per task.
TARGET_TASK_BYTES = 4 * 1024 * 1024
#: How many times the tasks lost with a Dask worker (or with the data scattered to it) are
#: submitted again, their data scattered again, before their calls fail.
DASK_RESUBMITS = 3
_RECOUNT_SECONDS = 10.0


def run_batch(fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> list[tuple[bool, Any]]:
    """Run ``fn(*args)`` for each call of a batch, catching each call's exception.

    Module-level so that a batch pickles to another process or a Dask worker.

    Parameters
    ----------
    fn : callable
        A module-level function.
    calls : sequence of tuple
        The positional arguments of each call.

    Returns
    -------
    list of (bool, object)
        ``(True, result)`` or ``(False, exception)`` per call, in order.

    """
    out: list[tuple[bool, Any]] = []
    for args in calls:
        try:
            out.append((True, fn(*args)))
        except Exception as exc:  # a task's failure is a result, reported per call
            out.append((False, exc))
    return out


def run_gated(
    gate: threading.Semaphore,
    stop: threading.Event,
    fn: Callable[..., Any],
    calls: Sequence[tuple[Any, ...]],
) -> list[tuple[bool, Any]]:
    """:func:`run_batch` once ``gate`` lets this task in (in-process runners only: not pickled).

    A task let in after ``stop`` was set (the caller was interrupted while it waited) runs
    none of its calls: each fails with ``concurrent.futures.CancelledError``, like a task the
    executor cancelled before it started.

    Parameters
    ----------
    gate : threading.Semaphore
        Counts the tasks of one operation that may run at once.
    stop : threading.Event
        Set when the operation no longer wants the results.
    fn, calls
        As for :func:`run_batch`.

    Returns
    -------
    list of (bool, object)
        As for :func:`run_batch`.

    """
    with gate:
        if stop.is_set():
            return [(False, cf.CancelledError()) for _ in calls]
        return run_batch(fn, calls)


def _default_workers() -> int:
    return (os.cpu_count() or 1) + 4


def _submit(executor: cf.Executor, fn: Callable[..., R], *args: Any) -> cf.Future[R]:
    """Submit to a ``concurrent.futures`` executor; one that takes no tasks is a :class:`DekerClientError`."""
    try:
        return executor.submit(fn, *args)
    except RuntimeError as exc:  # shut down by its owner, or the interpreter is exiting
        raise DekerClientError(
            f"The executor this deker Client runs its tasks on takes no tasks ({exc}); open a deker "
            "Client with a running executor (or without one, for its own thread pool)"
        ) from exc


class TaskRunner:
    """Runs batches of independent calls on the executor of a client.

    Build it with :meth:`create`.

    Parameters
    ----------
    kind : str
        ``"threads"``, ``"processes"``, ``"executor"`` or ``"dask"``.
    executor : concurrent.futures.Executor or None
        The executor to use (None for an owned pool, created lazily, or for Dask).
    owns_executor : bool
        Whether the runner creates and shuts down its executor.
    workers : int
        The parallelism of the executor (its worker count, or an estimate).
    client : object, optional
        The Dask client (kind ``"dask"``).
    submit_kwargs : dict, optional
        Extra keyword arguments of ``client.submit`` (e.g. ``workers`` or ``resources`` of an
        executor obtained from ``client.get_executor(...)``).
    local_workers : bool, default False
        Whether every Dask worker listens on this host (asked again with the thread count).

    """

    def __init__(
        self,
        kind: str,
        executor: cf.Executor | None,
        owns_executor: bool,
        workers: int,
        client: Any = None,
        submit_kwargs: dict[str, Any] | None = None,
        local_workers: bool = False,
    ) -> None:
        self._kind = kind
        self._executor = executor
        self._owns = owns_executor
        self._workers = max(1, int(workers))
        self._client = client
        self._submit_kwargs = dict(submit_kwargs or {})
        self._submit_kwargs["pure"] = False
        self._lock = threading.Lock()
        self._counted_at = time.monotonic()  # when the Dask cluster was last asked about
        self._local_workers = local_workers

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, executor: Any = None, workers: int | None = None) -> TaskRunner:
        """Build the runner for a client's ``executor`` and ``workers`` settings.

        Parameters
        ----------
        executor : None, concurrent.futures.Executor or dask distributed Client
            None: an owned thread pool of ``workers`` threads (default ``cpu_count() + 4``),
            created on first use.  An Executor: used as is, never shut down.  An object with
            callable ``get_executor``, ``submit`` and ``scatter`` (a Dask distributed
            ``Client``): tasks are submitted to it with ``pure=False``.
        workers : int, optional
            The size of the owned thread pool (ignored for a given executor).

        Returns
        -------
        TaskRunner
            The runner.

        Raises
        ------
        DekerValidationError
            If ``workers`` is not a positive int or ``executor`` is of another type.
        DekerClientError
            If ``executor`` is a Dask client (or its executor) that was closed.

        """
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise DekerValidationError(f"workers must be a positive int or None, not {workers!r}")
        if executor is None:
            return cls("threads", None, True, workers or _default_workers())
        if isinstance(executor, cf.Executor):
            inner = getattr(executor, "_client", None)
            if inner is not None and daskclient.looks_like_dask_client(inner):
                # client.get_executor(...): submit through its client so that pure=False holds.
                options = {
                    k: v for k, v in dict(getattr(executor, "_kwargs", {}) or {}).items() if k != "pure"
                }
                daskclient.check_open(inner)
                threads, here = daskclient.cluster_view(inner)
                return cls("dask", None, False, threads, inner, options, local_workers=here)
            count = int(getattr(executor, "_max_workers", 0) or (os.cpu_count() or 1))
            if isinstance(executor, cf.ThreadPoolExecutor):
                return cls("threads", executor, False, count)
            if isinstance(executor, cf.ProcessPoolExecutor):
                return cls("processes", executor, False, count)
            return cls("executor", executor, False, count)
        if daskclient.looks_like_dask_client(executor):
            daskclient.check_open(executor)
            threads, here = daskclient.cluster_view(executor)
            return cls("dask", None, False, threads, client=executor, local_workers=here)
        raise DekerValidationError(
            f"executor must be None, a concurrent.futures.Executor (e.g. ThreadPoolExecutor) or a Dask "
            f"distributed Client, not {type(executor).__module__}.{type(executor).__qualname__}"
        )

    # ------------------------------------------------------------------ properties
    @property
    def kind(self) -> str:
        """``"threads"``, ``"processes"``, ``"executor"`` (another Executor) or ``"dask"``."""
        return self._kind

    @property
    def owns_executor(self) -> bool:
        """Whether the runner created its executor (and shuts it down)."""
        return self._owns

    @property
    def in_process(self) -> bool:
        """Whether tasks run in this process (threads): they may then share memory with the caller."""
        return self._kind == "threads"

    @property
    def workers(self) -> int:
        """The best estimate of how many tasks run at the same time."""
        self._look_at_cluster()
        return self._workers

    def _look_at_cluster(self) -> None:
        # Dask clusters scale: ask the scheduler again (its thread count and where its workers
        # are, in one call), at most every few seconds.
        if self._kind == "dask" and time.monotonic() - self._counted_at > _RECOUNT_SECONDS:
            self._workers, self._local_workers = daskclient.cluster_view(self._client, self._workers)
            self._counted_at = time.monotonic()

    def __repr__(self) -> str:
        return f"TaskRunner(kind={self._kind!r}, workers={self._workers}, owns_executor={self._owns})"

    # ------------------------------------------------------------------ execution
    def _get_executor(self) -> cf.Executor:
        with self._lock:
            if self._executor is None:
                self._executor = cf.ThreadPoolExecutor(self._workers, thread_name_prefix="deker")
            return self._executor

    def run_all(
        self,
        fn: Callable[..., R],
        calls: Sequence[tuple[Any, ...]],
        *,
        batch_size: int = 1,
        max_parallel: int | None = None,
        shipment: Shipment | None = None,
    ) -> list[R | BaseException]:
        """Run ``fn(*args)`` for every call and return each result or exception, in order.

        A task's exception is returned in its place, never raised.  With ``batch_size > 1``
        consecutive calls are grouped into one task (:func:`run_batch`).  On an in-process
        runner a single call, or a single batch holding every call, runs in the caller's
        thread (handing it to a pool thread would only add the hand-off), and ``max_parallel``
        caps how many of the tasks run at once (see :meth:`suggest_parallelism`; the others
        wait in their pool threads).  If waiting is interrupted (e.g. by
        ``KeyboardInterrupt``), the tasks not started yet are cancelled (those waiting at the
        cap run none of their calls) and the interruption propagates.

        Parameters
        ----------
        fn : callable
            A module-level function (it must pickle for process and Dask executors).
        calls : sequence of tuple
            The positional arguments of each call.
        batch_size : int
            How many consecutive calls make one task.
        max_parallel : int, optional
            On an in-process runner, the most tasks that run at once (None: as many as the
            pool runs).  Other runners ignore it.
        shipment : Shipment, optional
            From :meth:`ship`: the calls' large arrays that it scattered already are not sent
            again (only on the first submission; tasks lost with a worker scatter anew).

        Returns
        -------
        list
            The result, or the raised exception, of every call.

        """
        return self._run(fn, calls, batch_size, max_parallel, None, 0, shipment)

    def run_into(
        self,
        fn: Callable[..., Any],
        calls: Sequence[tuple[Any, ...]],
        consume: Callable[[int, Any], object],
        *,
        batch_size: int = 1,
        result_bytes: int = 0,
    ) -> list[BaseException | None]:
        """Run the calls as :meth:`run_all` does, handing each result to ``consume`` as it comes.

        Every result (not an exception) is handed to ``consume(i, result)`` in the calling
        thread as soon as this process has it (in the order they finish on threads and process
        pools; in the calls' order on a Dask runner), and the list holds ``None`` in its place:
        the runner keeps no reference to it, so a large answer arriving from other processes
        is here about once, plus the results in flight.  A process pool (or another executor
        outside this process) gets at most two tasks per worker at a time, so no more results
        than that wait here; a Dask runner that fetches straight from the workers fetches
        them in requests of about :data:`GATHER_BYTES`.  An exception raised by ``consume``
        propagates (after the tasks not started are cancelled).

        Parameters
        ----------
        fn, calls, batch_size
            As for :meth:`run_all`.
        consume : callable
            Called with each call's index and result.
        result_bytes : int
            About how many bytes one call's result holds (0: unknown).

        Returns
        -------
        list
            ``None`` for every call that succeeded, the raised exception for the others.
        """
        return self._run(fn, calls, batch_size, None, consume, result_bytes, None)

    def _run(
        self,
        fn: Callable[..., Any],
        calls: Sequence[tuple[Any, ...]],
        batch_size: int,
        max_parallel: int | None,
        consume: Callable[[int, Any], object] | None,
        result_bytes: int,
        shipment: Shipment | None,
    ) -> list[Any]:
        calls = list(calls)
        if not calls:
            return []
        size = max(1, int(batch_size))
        if self.in_process and (len(calls) == 1 or size >= len(calls)):  # one task: no hand-off
            outcome, keep = run_batch(fn, calls), outcomes.keeper(consume, len(calls))
            return outcomes.unbatch([outcome if keep is None else keep(0, outcome)], [calls])
        if self._kind == "dask":
            group = max(1, GATHER_BYTES // (result_bytes * size)) if result_bytes > 0 else 0
            return self._run_dask(fn, calls, size, consume, group, shipment)
        executor = self._get_executor()
        batches = [calls[i : i + size] for i in range(0, len(calls), size)]
        keep = outcomes.keeper(consume, size)
        if keep is not None and not self.in_process:
            # Other processes send results back as fast as they make them: with at most two
            # tasks a worker under way, no more than those results wait here to be consumed.
            outcome = outcomes.windowed(
                lambda batch: _submit(executor, run_batch, fn, batch), batches, 2 * self._workers, keep
            )
            return outcomes.unbatch(outcome, batches)
        cap = max_parallel if self.in_process and max_parallel is not None else 0
        gated = 0 < cap < min(len(batches), self._workers)
        if size == 1 and not gated:
            futures = [_submit(executor, fn, *args) for args in calls]
            return outcomes.gather_futures(
                futures, lambda f: f.result(), lambda f: f.cancel(), outcomes.keeper(consume, 0)
            )
        if not gated:
            batch_futures = [_submit(executor, run_batch, fn, batch) for batch in batches]
            outcome = outcomes.gather_futures(batch_futures, lambda f: f.result(), lambda f: f.cancel(), keep)
            return outcomes.unbatch(outcome, batches)
        gate = threading.BoundedSemaphore(cap)
        stop = threading.Event()  # tasks waiting at the gate have started: they see this instead

        def cancel(future: cf.Future[Any]) -> None:
            stop.set()
            future.cancel()

        batch_futures = [_submit(executor, run_gated, gate, stop, fn, batch) for batch in batches]
        return outcomes.unbatch(
            outcomes.gather_futures(batch_futures, lambda f: f.result(), cancel, keep), batches
        )

    def ship(self, make: Callable[[], list[Any]]) -> Shipment:
        """Make task data in a thread and, for a Dask runner, scatter its large arrays there.

        For an update that must first create tiles here: its data travels meanwhile.

        Parameters
        ----------
        make : callable
            Returns the values (it runs in another thread).

        Returns
        -------
        Shipment
            Give it to :meth:`run_all` with calls holding the values it made.
        """
        return Shipment(make, self._client if self._kind == "dask" else None)

    def run_here(
        self, fn: Callable[..., R], calls: Sequence[tuple[Any, ...]], *, max_parallel: int | None = None
    ) -> list[R | BaseException]:
        """Run ``fn(*args)`` for every call in threads of this process, whatever the executor.

        For the work that must happen where the caller is (file work under a lock this process
        holds, such as creating the tiles an update claims), while the tasks themselves may run
        elsewhere.  A thread runner uses its pool; any other runs the calls on a pool of its own
        that lives for this call.  Results and exceptions as for :meth:`run_all`.

        Parameters
        ----------
        fn : callable
            Any callable (nothing is pickled).
        calls : sequence of tuple
            The positional arguments of each call.
        max_parallel : int, optional
            The most calls that run at once (``suggest_parallelism(here=True)``; None: as many
            as the pool runs).

        Returns
        -------
        list
            The result, or the raised exception, of every call.
        """
        calls = list(calls)
        if self.in_process:
            return self.run_all(fn, calls, max_parallel=max_parallel)
        if len(calls) < 2:
            return [value for _ok, value in run_batch(fn, calls)]
        threads = min(len(calls), max_parallel or _default_workers())
        with cf.ThreadPoolExecutor(threads, thread_name_prefix="deker-here") as pool:
            futures = [pool.submit(fn, *args) for args in calls]
            return outcomes.gather_futures(futures, lambda f: f.result(), lambda f: f.cancel())

    def _run_dask(
        self,
        fn: Callable[..., R],
        calls: list[tuple[Any, ...]],
        size: int,
        consume: Callable[[int, Any], object] | None,
        group: int,
        shipment: Shipment | None,
    ) -> list[R | BaseException | None]:
        # One unit per task: a call, or a batch of consecutive calls run by run_batch.
        units = [calls[i : i + size] for i in range(0, len(calls), size)]
        outcome: list[Any] = [None] * len(units)
        pending = list(range(len(units)))
        keep = outcomes.keeper(consume, 0 if size == 1 else size)
        for attempt in range(DASK_RESUBMITS + 1):
            attempted = pending

            def keep_unit(n: int, outcome: Any) -> Any:
                # ``n`` counts this attempt's units; ``keep`` knows the units of the whole run
                if keep is None:
                    return outcome
                try:
                    return keep(attempted[n], outcome)  # noqa: B023 (called now)
                except Exception as exc:  # the caller's consume failed: not a submission problem
                    raise outcomes.ConsumeFailed(exc) from exc

            sent = shipment.sent() if shipment is not None and attempt == 0 else None
            consume_error: Exception | None = None
            try:
                results, keys = self._submit_and_gather(
                    fn, [units[i] for i in pending], size, keep_unit, group, sent
                )
            except outcomes.ConsumeFailed as failed:
                consume_error = failed.error  # raised below, outside this handler: as it was raised
            except Exception as exc:
                if attempt == 0:
                    raise
                # e.g. the Dask client was closed meanwhile: the lost calls keep their errors
                logger.warning("could not submit %d lost Dask tasks again: %s", len(pending), exc)
                break
            if consume_error is not None:
                raise consume_error
            for i, result in zip(pending, results, strict=True):
                outcome[i] = result
            lost_at = [n for n, result in enumerate(results) if daskclient.is_lost(result)]
            lost = [pending[n] for n in lost_at]
            if not lost or attempt == DASK_RESUBMITS:
                break
            logger.warning(
                "%d of %d Dask tasks were lost with a worker (or with the data scattered to it): "
                "submitting them again with their data (attempt %d of %d)",
                len(lost), len(units), attempt + 2, DASK_RESUBMITS + 1,
            )  # fmt: skip
            # A copy of a lost task may still run on a live worker (Dask cannot stop a thread):
            # let it end before its call is sent again.
            daskclient.wait_until_not_running(self._client, [keys[n] for n in lost_at])
            pending = lost
        return outcome if size == 1 else outcomes.unbatch(outcome, units)

    def _submit_and_gather(
        self,
        fn: Callable[..., Any],
        units: list[list[tuple[Any, ...]]],
        size: int,
        keep: Callable[[int, Any], Any],
        group: int,
        sent: dict[int, Any] | None,
    ) -> tuple[list[Any], list[Any]]:
        client = self._client
        kwargs = self._submit_kwargs
        daskclient.check_open(client)
        futures: list[Any] = []
        try:
            flat = daskclient.scatter_large(client, [a for unit in units for a in unit], sent)
            start = 0
            for unit in units:
                rows = flat[start : start + len(unit)]
                start += len(unit)
                if size == 1:
                    futures.append(client.submit(fn, *rows[0], **kwargs))
                else:
                    futures.append(client.submit(run_batch, fn, rows, **kwargs))
        except BaseException as exc:
            for future in futures:
                future.cancel()
            if not isinstance(exc, Exception):
                raise
            daskclient.check_open(client)  # closed meanwhile: say so (and why the error came)
            raise
        keys = [getattr(f, "key", None) for f in futures]
        return daskclient.gather(client, futures, self._gathers_direct(), keep, group), keys

    def _gathers_direct(self) -> bool:
        """Whether Dask results are fetched straight from the workers (:func:`deker.daskclient.gather`).

        As the client says (``direct_to_workers``), or when it leaves that open (``None``, its
        default), whether every worker listens on this host (:func:`deker.daskclient.cluster_view`).
        """
        setting = getattr(self._client, "direct_to_workers", None)
        if setting is not None:
            return setting is True
        self._look_at_cluster()
        return self._local_workers

    # ------------------------------------------------------------------ sizing
    def suggest_batch_size(self, n_calls: int, bytes_per_call: int, *, cheap_files: bool = False) -> int:
        """Suggest how many calls to group into one task.

        The rule: a task should move at least :data:`TARGET_TASK_BYTES` (4 MiB), so tiny tiles
        are grouped, but there must stay at least ``4 * workers`` tasks so that every worker
        has work; when the two conflict, the second wins (more, smaller tasks).  With
        ``cheap_files``, on a runner of this process's threads, an operation that moves no
        more than one task's worth in all is one task, run in the caller's thread: where
        opening and locking a file costs microseconds, handing small tiles to other threads
        costs more than it saves (the GIL lets one of them work at a time; 512 tiles of
        8 x 8 read in 0.28 s instead of 0.40 s here).  Worker processes and Dask workers do
        work in parallel, so there it changes nothing (one task of 512 tiny tiles on one Dask
        worker took twice the time of 16 tasks on two).

        Parameters
        ----------
        n_calls : int
            The number of calls of the operation.
        bytes_per_call : int
            The I/O size of one call (e.g. the bytes of one tile).
        cheap_files : bool, default False
            Whether the files lie on a local filesystem
            (:func:`deker.storage.mounts.is_local_filesystem`).  On a network filesystem each
            file costs round trips, which parallel tasks overlap.

        Returns
        -------
        int
            A batch size ``>= 1``.

        """
        if n_calls <= 1:
            return 1
        if cheap_files and self.in_process and n_calls * max(1, int(bytes_per_call)) <= TARGET_TASK_BYTES:
            return n_calls  # the whole operation is one task's worth: one task
        by_bytes = max(1, -(-TARGET_TASK_BYTES // max(1, int(bytes_per_call))))
        by_tasks = max(1, n_calls // (4 * self.workers))
        return max(1, min(by_bytes, by_tasks))

    def suggest_parallelism(self, *, cheap_files: bool = False, here: bool = False) -> int | None:
        """Suggest the most tasks of one operation that should run at once (for :meth:`run_all`).

        On a runner of this process's threads, with ``cheap_files``, the cores this process
        may run on (:func:`deker.sizes.usable_cores`) when the pool has more threads than
        that.  Tile tasks on a local filesystem are bound by the CPU and give the GIL up and
        take it back around every system call: more of them at once than there are cores
        only make them wait for each other.  On 2 cores, with the default 6 threads against
        2, a full read of 64 tiles of 4 MiB took 81-99 ms against 60-75 ms, the same read of
        zstd chunks 107-122 against 77-98 ms, and a full write 215-260 against 166-213 ms.
        On a network filesystem tasks wait for round trips, which more of them overlap, and
        other runners work in parallel elsewhere: there it is None (as many as the executor
        runs).

        Parameters
        ----------
        cheap_files : bool, default False
            Whether the files lie on a local filesystem (as for :meth:`suggest_batch_size`).
        here : bool, default False
            For work that :meth:`run_here` runs in this process whatever the runner (creating
            the tiles an update claims): capped by the same rule on every runner.

        Returns
        -------
        int or None
            The cap, or None for none.

        """
        if not cheap_files or not (here or self.in_process):
            return None
        threads = self._workers if self.in_process else _default_workers()
        cores = usable_cores()
        return cores if cores < threads else None

    # ------------------------------------------------------------------ lifetime
    def shutdown(self, wait: bool = True) -> None:
        """Shut the owned thread pool down (no-op for a user's executor or a Dask client).

        Idempotent; the runner creates a new pool if it is used again.

        Parameters
        ----------
        wait : bool
            Wait for running tasks to finish.

        """
        if not self._owns:
            return
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=wait, cancel_futures=not wait)
