"""deker.executors: TaskRunner on an owned thread pool, a user's executors and a real Dask client."""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from storage_helpers.overlap import Overlap, overlapping

from deker.errors import DekerClientError, DekerValidationError
from deker.executors import GATHER_BYTES, SCATTER_THRESHOLD, TARGET_TASK_BYTES, TaskRunner, run_batch
from deker.sizes import usable_cores

# ----------------------------------------------------------------------------- module-level tasks


def thread_id() -> int:
    return threading.get_ident()


def append_line(path: str, text: str) -> int:
    with open(path, "a") as f:
        f.write(text + "\n")
    return len(text)


def total(array: np.ndarray, extra: int) -> int:
    return int(array.sum()) + extra


def slow_or_interrupt(i: int, log: list[int]) -> int:
    if i == 0:
        raise KeyboardInterrupt
    time.sleep(0.05)
    log.append(i)
    return i


def runner_default_threads() -> int:
    return TaskRunner.create().workers  # the owned pool's default size (cores + 4)


def interrupt_or_wait(i: int, log: list[int], released: threading.Event) -> int:
    if i == 0:
        raise KeyboardInterrupt
    assert released.wait(30)
    log.append(i)
    return i


def _check_results(runner: TaskRunner, batch_size: int, max_parallel: int | None = None) -> None:
    calls = [(i, 3) for i in range(-2, 9)]
    results = runner.run_all(
        divmod, [(10, 0), *calls, (1, 0)], batch_size=batch_size, max_parallel=max_parallel
    )
    assert isinstance(results[0], ZeroDivisionError) and isinstance(results[-1], ZeroDivisionError)
    assert results[1:-1] == [divmod(*c) for c in calls]


def _check_consumed(runner: TaskRunner, batch_size: int, result_bytes: int = 8) -> None:
    # With consume, every result goes to it once, with its call's index; the list keeps None
    # in its place and the exceptions where they were.
    calls = [(i, 3) for i in range(-2, 9)]
    got: dict[int, Any] = {}

    def consume(i: int, value: Any) -> None:
        assert i not in got
        got[i] = value

    results = runner.run_into(
        divmod, [(10, 0), *calls, (1, 0)], consume, batch_size=batch_size, result_bytes=result_bytes
    )
    assert isinstance(results[0], ZeroDivisionError) and isinstance(results[-1], ZeroDivisionError)
    assert results[1:-1] == [None] * len(calls)
    assert got == {n + 1: divmod(*c) for n, c in enumerate(calls)}
    one: list[Any] = []
    assert runner.run_into(divmod, [(7, 2)], lambda i, v: one.append((i, v))) == [None]
    assert one == [(0, (3, 1))]


# ----------------------------------------------------------------------------- owned threads


def test_owned_pool_is_lazy_and_reopens() -> None:
    runner = TaskRunner.create()
    assert (runner.kind, runner.owns_executor, runner.in_process) == ("threads", True, True)
    assert runner.workers >= 5
    assert runner._executor is None
    assert runner.run_all(pow, []) == []
    assert runner.run_all(pow, [(2, 3)]) == [8]  # a single call runs inline: still no pool
    assert runner._executor is None
    _check_results(runner, 1)
    assert runner._executor is not None
    runner.shutdown()
    runner.shutdown()  # idempotent
    assert runner._executor is None
    _check_results(runner, 4)  # re-created lazily
    for batch_size in (1, 4, 20):  # 20: one task, inline
        _check_consumed(runner, batch_size)
    runner.shutdown(wait=False)


def test_single_call_inline_others_in_pool() -> None:
    runner = TaskRunner.create(workers=2)
    assert runner.workers == 2
    try:
        assert runner.run_all(thread_id, [()]) == [threading.get_ident()]
        ids = runner.run_all(thread_id, [()] * 6)
        assert threading.get_ident() not in ids
        [error] = runner.run_all(divmod, [(1, 0)])
        assert isinstance(error, ZeroDivisionError)
    finally:
        runner.shutdown()


def test_interrupt_cancels_pending() -> None:
    runner = TaskRunner.create(workers=1)
    log: list[int] = []
    try:
        with pytest.raises(KeyboardInterrupt):
            runner.run_all(slow_or_interrupt, [(i, log) for i in range(10)])
    finally:
        runner.shutdown()
    assert len(log) <= 1  # at most the call already running when the interruption came


@pytest.fixture
def sigint_raises() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt here, as in a terminal.

    A process started in the background by a shell without job control inherits SIGINT
    ignored, and Python then leaves it ignored: a real signal would change nothing.
    """
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def test_interrupt_while_waiting_cancels_the_task_awaited_too(sigint_raises: None) -> None:
    # The pool (a user's, shared) is busy with someone else's task; the interruption comes while
    # run_all waits for its first task, which has not started: none of its calls may run later.
    log: list[int] = []
    with cf.ThreadPoolExecutor(1) as pool:
        release = threading.Event()
        pool.submit(release.wait, 30)
        runner = TaskRunner.create(pool)

        def interrupt_once_queued() -> None:
            assert _wait(lambda: pool._work_queue.qsize() == 3)
            os.kill(os.getpid(), signal.SIGINT)  # a real signal: it wakes the waiting main thread

        interrupter = threading.Thread(target=interrupt_once_queued)
        interrupter.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                runner.run_all(append_to, [(log, i) for i in range(3)])
        finally:
            interrupter.join(30)
            release.set()
    assert log == []


def append_to(log: list[int], i: int) -> int:
    log.append(i)
    return i


def test_interrupt_runs_none_of_the_tasks_waiting_at_the_cap() -> None:
    # Tasks waiting at the cap have started as far as the pool knows (cancel() fails on
    # them): after the interruption they must still run none of their calls.  The one let
    # in when the first failed waits until run_all has raised.
    runner = TaskRunner.create(workers=4)
    log: list[int] = []
    released = threading.Event()
    try:
        with pytest.raises(KeyboardInterrupt):
            runner.run_all(interrupt_or_wait, [(i, log, released) for i in range(10)], max_parallel=1)
        released.set()
    finally:
        released.set()
        runner.shutdown()
    assert len(log) <= 1  # at most the call let in before the interruption was seen


@pytest.mark.parametrize("workers", [0, -1, 1.5, True, "2"])
def test_bad_workers(workers: Any) -> None:
    with pytest.raises(DekerValidationError, match="workers"):
        TaskRunner.create(None, workers)


@pytest.mark.parametrize("executor", [object(), "threads", 4, cf.ThreadPoolExecutor])
def test_bad_executor(executor: Any) -> None:
    with pytest.raises(DekerValidationError, match=r"concurrent\.futures\.Executor") as info:
        TaskRunner.create(executor)
    assert type(executor).__qualname__ in str(info.value)


# ----------------------------------------------------------------------------- user executors


def test_user_thread_pool_not_shut_down() -> None:
    with cf.ThreadPoolExecutor(3) as pool:
        runner = TaskRunner.create(pool, workers=50)
        assert (runner.kind, runner.owns_executor, runner.in_process) == ("threads", False, True)
        assert runner.workers == 3
        _check_results(runner, 1)
        _check_results(runner, 5)
        runner.shutdown()
        assert pool.submit(pow, 2, 2).result() == 4


@pytest.mark.parametrize("kind", [cf.ThreadPoolExecutor, cf.ProcessPoolExecutor])
def test_an_executor_shut_down_by_its_owner_is_a_deker_error(kind: type[cf.Executor]) -> None:
    """It was the executor's raw ``RuntimeError: cannot schedule new futures after shutdown``."""
    pool = (
        kind(2, mp_context=multiprocessing.get_context("spawn"))
        if kind is cf.ProcessPoolExecutor
        else kind(2)
    )
    runner = TaskRunner.create(pool)
    assert runner.run_all(pow, [(2, 3), (3, 2)]) == [8, 9]
    pool.shutdown()
    for run in (
        lambda: runner.run_all(pow, [(2, 3), (3, 2)]),
        lambda: runner.run_all(pow, [(2, 3), (3, 2), (4, 2)], batch_size=2),
        lambda: runner.run_into(pow, [(2, 3), (3, 2)], lambda i, r: None),
    ):
        with pytest.raises(
            DekerClientError, match=r"takes no tasks \(cannot schedule new futures after shutdown\)"
        ):
            run()


@pytest.fixture(scope="module")
def process_pool() -> Iterator[cf.ProcessPoolExecutor]:
    with cf.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


def test_cheap_files_change_nothing_for_workers_elsewhere(process_pool: cf.ProcessPoolExecutor) -> None:
    # Processes work in parallel (no GIL between them): small operations keep several tasks.
    runner = TaskRunner.create(process_pool)
    assert runner.suggest_parallelism(cheap_files=True) is None
    here = runner.suggest_parallelism(cheap_files=True, here=True)
    assert here == (usable_cores() if usable_cores() < runner_default_threads() else None)
    probe = Overlap(expect=2, hold=0.2)  # run_here's own pool of this process, capped
    assert runner.run_here(overlapping, [(i, probe) for i in range(6)], max_parallel=2) == list(range(6))
    assert probe.most == 2
    assert runner.suggest_batch_size(1000, 1024, cheap_files=True) == runner.suggest_batch_size(1000, 1024)
    assert runner.suggest_batch_size(1000, 1024, cheap_files=True) == 125


def test_process_pool(process_pool: cf.ProcessPoolExecutor) -> None:
    runner = TaskRunner.create(process_pool)
    assert (runner.kind, runner.owns_executor, runner.in_process) == ("processes", False, False)
    assert runner.workers == 2
    _check_results(runner, 1)
    _check_results(runner, 3)
    _check_consumed(runner, 1)
    _check_consumed(runner, 3)
    assert runner.run_all(pow, [(3, 2)]) == [9]  # one call still goes to the pool (no inline)
    # a function that cannot be pickled fails per call, it does not raise
    results = runner.run_all(lambda x: x, [(1,), (2,)])
    assert all(isinstance(r, Exception) for r in results)
    results = runner.run_all(lambda x: x, [(1,), (2,), (3,)], batch_size=2)
    assert len(results) == 3 and all(isinstance(r, Exception) for r in results)
    runner.shutdown()
    assert process_pool.submit(pow, 2, 5).result() == 32


def test_a_process_pool_gets_two_tasks_per_worker_while_results_are_consumed(
    process_pool: cf.ProcessPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its processes send results back as fast as they make them: with a window of two tasks
    # per worker, no more results than that ever wait here to be consumed.
    runner = TaskRunner.create(process_pool)
    outstanding = most = 0
    submit = process_pool.submit

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal outstanding, most
        outstanding += 1
        most = max(most, outstanding)
        return submit(*args, **kwargs)

    def consume(i: int, value: Any) -> None:
        nonlocal outstanding
        outstanding -= 1

    monkeypatch.setattr(process_pool, "submit", counted)
    assert runner.run_into(pow, [(2, i) for i in range(20)], consume) == [None] * 20
    assert most == 2 * runner.workers


def meet(barrier: threading.Barrier, label: str) -> tuple[str, int, str]:
    """Wait for the other calls at ``barrier`` (a call run alone times out), then say where it ran."""
    barrier.wait(30)
    return label, os.getpid(), threading.current_thread().name


def test_run_here_runs_in_threads_of_this_process_for_every_kind(
    process_pool: cf.ProcessPoolExecutor, dask_client: Any
) -> None:
    # Work that must stay with the caller (the tiles an update claims) runs in this process's
    # threads at once, whatever runs the tasks: the calls meet at a barrier, which they
    # could not do one after the other (nor in another process: a Barrier does not pickle).
    runners = [TaskRunner.create(workers=3), TaskRunner.create(process_pool), TaskRunner.create(dask_client)]
    for runner in runners:
        barrier = threading.Barrier(3)
        results = runner.run_here(meet, [(barrier, "a"), (barrier, "b"), (barrier, "c")])
        assert [r[:2] for r in results] == [("a", os.getpid()), ("b", os.getpid()), ("c", os.getpid())]
        assert all(name != threading.current_thread().name for _, _, name in results)
        failed = runner.run_here(divmod, [(1, 0), (7, 2)])
        assert isinstance(failed[0], ZeroDivisionError) and failed[1] == (3, 1)
        assert runner.run_here(divmod, [(7, 2)]) == [(3, 1)]
        assert runner.run_here(divmod, []) == []
    runners[0].shutdown()


def test_other_executor_kind() -> None:
    class Inline(cf.Executor):
        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
            future: cf.Future[Any] = cf.Future()
            try:
                future.set_result(fn(*args, **kwargs))
            except Exception as exc:
                future.set_exception(exc)
            return future

    runner = TaskRunner.create(Inline())
    assert (runner.kind, runner.in_process, runner.owns_executor) == ("executor", False, False)
    _check_results(runner, 1)
    _check_results(runner, 2)


def test_run_batch() -> None:
    out = run_batch(divmod, [(7, 2), (1, 0)])
    assert out[0] == (True, (3, 1))
    assert out[1][0] is False and isinstance(out[1][1], ZeroDivisionError)


def test_suggest_batch_size() -> None:
    runner = TaskRunner.create(workers=2)  # at least 8 tasks wanted
    assert runner.suggest_batch_size(0, 10) == 1
    assert runner.suggest_batch_size(1, 10) == 1
    assert runner.suggest_batch_size(1000, TARGET_TASK_BYTES) == 1  # big tiles: one per task
    assert runner.suggest_batch_size(1000, 1024) == 125  # tiny tiles: capped to keep 8 tasks
    assert runner.suggest_batch_size(10_000, 1024) == 1250  # 4096 would leave 3 tasks: keep 8
    assert runner.suggest_batch_size(100_000, 1024**2) == 4  # 4 MiB per task, plenty of tasks
    assert runner.suggest_batch_size(10, 1) == 1
    assert runner.suggest_batch_size(100, 0) == 12
    # files are cheap (a local disk): an operation of one task's worth of bytes is one task
    assert runner.suggest_batch_size(4, 256 * 1024, cheap_files=True) == 4
    assert runner.suggest_batch_size(1000, 1024, cheap_files=True) == 1000
    assert runner.suggest_batch_size(4, TARGET_TASK_BYTES // 4, cheap_files=True) == 4
    assert runner.suggest_batch_size(5, TARGET_TASK_BYTES // 4, cheap_files=True) == 1  # more: as before
    assert runner.suggest_batch_size(10_000, 1024, cheap_files=True) == 1250
    assert runner.suggest_batch_size(4, 256 * 1024) == 1  # a network filesystem: in parallel


@pytest.mark.parametrize("batch_size", [1, 2])
def test_max_parallel_caps_the_tasks_running_at_once(batch_size: int) -> None:
    runner = TaskRunner.create(workers=6)
    try:
        capped = Overlap(expect=2, hold=0.2)  # nobody else may come in: each waits 0.2 s
        calls = [(i, capped) for i in range(12 // batch_size * batch_size)]
        got = runner.run_all(overlapping, calls, batch_size=batch_size, max_parallel=2)
        assert got == list(range(len(calls))) and capped.most == 2
        free = Overlap(expect=2, hold=30)  # without a cap a third comes in at once
        got = runner.run_all(overlapping, [(i, free) for i in range(6)], batch_size=batch_size)
        assert got == list(range(6)) and free.most > 2
        _check_results(runner, batch_size)  # results and exceptions in order, gated or not
        _check_results(runner, batch_size, max_parallel=2)
        results = runner.run_all(
            divmod, [(10, 0), (7, 2), (1, 0), (9, 4)], batch_size=batch_size, max_parallel=1
        )
        assert isinstance(results[0], ZeroDivisionError) and isinstance(results[2], ZeroDivisionError)
        assert results[1::2] == [(3, 1), (2, 1)]
    finally:
        runner.shutdown()


def test_suggest_parallelism() -> None:
    cores = usable_cores()
    many = TaskRunner.create(workers=cores + 4)
    assert many.suggest_parallelism(cheap_files=True) == cores  # a local disk: the cores
    assert many.suggest_parallelism() is None  # a network filesystem: as many as the pool runs
    assert TaskRunner.create(workers=cores).suggest_parallelism(cheap_files=True) is None
    with cf.ThreadPoolExecutor(cores + 2) as pool:
        assert TaskRunner.create(pool).suggest_parallelism(cheap_files=True) == cores
    # work run_here does in this process whatever the runner (creating tiles): the same rule
    assert many.suggest_parallelism(cheap_files=True, here=True) == cores
    assert many.suggest_parallelism(here=True) is None


def test_one_batch_of_all_calls_runs_in_the_callers_thread() -> None:
    runner = TaskRunner.create(workers=2)
    try:
        assert runner.run_all(thread_id, [()] * 4, batch_size=4) == [threading.get_ident()] * 4
        assert runner._executor is None
        [error, fine] = runner.run_all(divmod, [(1, 0), (7, 2)], batch_size=2)
        assert isinstance(error, ZeroDivisionError) and fine == (3, 1)
        assert threading.get_ident() not in runner.run_all(thread_id, [()] * 4, batch_size=2)
    finally:
        runner.shutdown()


# ----------------------------------------------------------------------------- Dask


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def test_dask_results(dask_client: Any) -> None:
    runner = TaskRunner.create(dask_client)
    assert (runner.kind, runner.owns_executor, runner.in_process, runner.workers) == ("dask", False, False, 2)
    _check_results(runner, 1)
    _check_results(runner, 4)
    _check_consumed(runner, 1)  # fetched straight from the in-process worker, all in one request
    _check_consumed(runner, 4)
    _check_consumed(runner, 1, result_bytes=GATHER_BYTES)  # one task a request
    _check_consumed(runner, 4, result_bytes=GATHER_BYTES // 8)  # two batches of 4 a request
    runner.shutdown()
    assert dask_client.submit(pow, 2, 2).result() == 4  # the client is not closed
    distributed = pytest.importorskip("distributed")
    with distributed.Client(dask_client.scheduler.address, direct_to_workers=False) as through:
        runner = TaskRunner.create(through)
        _check_consumed(runner, 1)  # through the scheduler
        _check_consumed(runner, 4)


def test_dask_results_straight_from_the_workers(dask_client: Any) -> None:
    # A client made with direct_to_workers=True: the results come in one request from the
    # workers; failures keep their place and their exception.
    distributed = pytest.importorskip("distributed")
    with distributed.Client(dask_client.scheduler.address, direct_to_workers=True) as direct:
        runner = TaskRunner.create(direct)
        _check_results(runner, 1)
        _check_results(runner, 4)
        big = np.arange(SCATTER_THRESHOLD // 8 + 1, dtype=np.int64)  # scattered, then gathered
        assert runner.run_all(np.sum, [(big,), (big[:10],)]) == [big.sum(), 45]


def test_dask_never_deduplicates(dask_client: Any, tmp_path: Path) -> None:
    path = str(tmp_path / "log.txt")
    runner = TaskRunner.create(dask_client)
    assert runner.run_all(append_line, [(path, "x"), (path, "x")]) == [1, 1]
    assert runner.run_all(append_line, [(path, "x"), (path, "x")], batch_size=1) == [1, 1]
    assert runner.run_all(append_line, [(path, "x")] * 3, batch_size=2) == [1, 1, 1]
    assert Path(path).read_text() == "x\n" * 7
    # an executor from client.get_executor() defaults to pure=True: the runner overrides it
    runner = TaskRunner.create(dask_client.get_executor())
    assert runner.kind == "dask"
    assert runner.run_all(append_line, [(path, "y"), (path, "y")]) == [1, 1]
    assert Path(path).read_text().count("y") == 2


def test_dask_scatters_large_arrays(dask_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    scattered: list[int] = []
    original = dask_client.scatter

    def spy(data: Any, **kwargs: Any) -> Any:
        assert kwargs.get("hash") is False
        scattered.extend(a.nbytes for a in data)
        return original(data, **kwargs)

    monkeypatch.setattr(dask_client, "scatter", spy)
    runner = TaskRunner.create(dask_client)
    big = np.ones(SCATTER_THRESHOLD // 8 + 1, dtype=np.float64)
    small = np.ones(10, dtype=np.int64)
    results = runner.run_all(total, [(big, 1), (small, 2), (big, 3)])
    assert results == [big.size + 1, 12, big.size + 3]
    assert scattered == [big.nbytes, big.nbytes]
    results = runner.run_all(total, [(big, 0), (small, 0), ("bad", 0)], batch_size=2)
    assert results[:2] == [big.size, 10] and isinstance(results[2], AttributeError)
    assert len(scattered) == 3


def test_dask_worker_processes() -> None:
    # Tasks and batches pickle to separate worker processes (only builtins and deker run there).
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        runner = TaskRunner.create(client)
        assert runner.workers == 1
        _check_results(runner, 1)
        _check_results(runner, 3)
        big = np.arange(SCATTER_THRESHOLD // 8 + 1, dtype=np.int64)
        assert runner.run_all(np.sum, [(big,), (big[:10],)], batch_size=2) == [big.sum(), 45]


_GATE = threading.Event()


def gated(path: str, label: str) -> str:
    """Log its start, wait for the test's gate (in-process workers share it), log its end."""
    with open(path, "a") as fh:
        fh.write(f"start {label}\n")
    assert _GATE.wait(120)
    with open(path, "a") as fh:
        fh.write(f"end {label}\n")
    return label


@pytest.mark.parametrize("consume_fails", [False, True])
def test_a_lost_dask_task_is_sent_again_after_its_copy_ended(
    dask_client: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture, consume_fails: bool
) -> None:
    # A task cancelled while it runs (as when the data it was given is lost with a worker) is
    # submitted again, but only once its running copy has ended: never two copies at once.
    # When the caller's consume fails on the result of the copy sent again, its error reaches
    # the caller (it is not a failure to submit the lost tasks again).
    distributed = pytest.importorskip("distributed")
    from deker.executors import keys_running

    _GATE.clear()
    log = tmp_path / "log.txt"
    caplog.set_level(logging.WARNING, logger="deker.executors")  # whatever a client set before
    runner = TaskRunner.create(dask_client)
    out: list[Any] = []
    raised: list[BaseException] = []

    def consume(i: int, value: Any) -> None:
        raise ValueError(f"cannot place result {i}") from KeyError("slot")

    def run() -> None:
        try:
            calls = [(str(log), "a")]
            out.extend(
                runner.run_into(gated, calls, consume) if consume_fails else runner.run_all(gated, calls)
            )
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert _wait(lambda: log.exists() and log.read_text() == "start a\n")
        (key,) = [k for keys in dask_client.processing().values() for k in keys]
        assert list(dask_client.run(keys_running, [key]).values()) == [[key]]
        distributed.Future(key, dask_client).cancel()
        assert _wait(lambda: "submitting them again" in caplog.text)  # the runner saw the loss...
        assert log.read_text() == "start a\n"  # ...and waits: the copy still runs (the gate is shut)
        _GATE.set()
        thread.join(60)
    finally:
        _GATE.set()
    assert log.read_text() == "start a\nend a\nstart a\nend a\n"
    if consume_fails:
        assert [type(e) for e in raised] == [ValueError] and str(raised[0]) == "cannot place result 0"
        assert isinstance(raised[0].__cause__, KeyError)  # as consume raised it
    else:
        assert (out, raised) == (["a"], [])


def test_an_interruption_while_dask_tasks_run_propagates(
    dask_client: Any, tmp_path: Path, sigint_raises: None
) -> None:
    # An interruption while the results are awaited propagates (it is no task's failure).
    import signal

    _GATE.clear()
    log = tmp_path / "log.txt"
    runner = TaskRunner.create(dask_client)
    main = threading.get_ident()

    def interrupt_when_started() -> None:
        if _wait(lambda: log.exists() and "start a" in log.read_text()):
            signal.pthread_kill(main, signal.SIGINT)

    interrupter = threading.Thread(target=interrupt_when_started)
    interrupter.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            runner.run_all(gated, [(str(log), "a"), (str(log), "b")])
        assert "end" not in log.read_text()  # it came while the tasks waited, not after them
    finally:
        _GATE.set()
        interrupter.join(60)


def _wait(predicate: Any, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
