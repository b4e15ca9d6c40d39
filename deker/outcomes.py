"""Collecting the outcomes of submitted tasks, for :class:`deker.executors.TaskRunner`.

A task's outcome is its result or the exception it raised (never raised here).  The runner
collects them in order, or as the tasks finish (handing each result to the caller's
``consume`` at once), submits units a window at a time where results arrive from other
processes faster than they are consumed, and unpacks the outcomes of batched calls.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable
from typing import Any

__all__ = ["ConsumeFailed", "gather_futures", "keeper", "unbatch", "windowed"]


def gather_futures(
    futures: list[Any],
    result: Callable[[Any], Any],
    cancel: Callable[[Any], Any],
    keep: Callable[[int, Any], Any] | None = None,
) -> list[Any]:
    """Wait for every future and return its outcome (its result, or the exception it raised).

    With ``keep``, outcomes are taken as the futures finish (not in order), and each future is
    dropped from ``futures`` once read: what ``keep`` consumed is then freed while others
    still run.  An interruption (or an exception from ``keep``) cancels every future not
    read yet, the awaited one included, and propagates.

    Parameters
    ----------
    futures : list of concurrent.futures.Future
        The futures (the list is emptied of them, entry by entry).
    result : callable
        Returns a future's result or raises its exception.
    cancel : callable
        Cancels a future.
    keep : callable, optional
        ``keep(n, outcome)`` is what the list holds for future ``n``.

    Returns
    -------
    list
        The outcome, or what ``keep`` made of it, of every future, in order.
    """
    order = {future: n for n, future in enumerate(futures)}
    out: list[Any] = [None] * len(futures)
    try:
        for future in futures if keep is None else cf.as_completed(futures):
            n = order[future]
            try:
                value = result(future)
            except Exception as exc:  # a task's failure is a result
                value = exc
            out[n] = value if keep is None else keep(n, value)
            del order[future]  # (only now: an interruption while waiting cancels this one too)
            futures[n] = None
    except BaseException:
        for future in order:
            cancel(future)
        raise
    return out


class ConsumeFailed(Exception):
    """Carries an exception of the caller's ``consume`` past the resubmission's error handling."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def windowed(
    submit: Callable[[Any], cf.Future[Any]], units: list[Any], window: int, keep: Callable[[int, Any], Any]
) -> list[Any]:
    """Submit the units at most ``window`` at a time; keep each outcome as its task finishes.

    A new unit is submitted only when a finished one was kept, so no more than ``window``
    outcomes are ever waiting.  An interruption cancels the tasks submitted; the others are
    never submitted.

    Parameters
    ----------
    submit : callable
        Submits one unit and returns its future.
    units : list
        What to submit.
    window : int
        The most units submitted and not kept yet (at least 1).
    keep : callable
        ``keep(n, outcome)`` is what the list holds for unit ``n``.

    Returns
    -------
    list
        What ``keep`` made of every unit's outcome, in order.
    """
    out: list[Any] = [None] * len(units)
    pending: dict[cf.Future[Any], int] = {}
    following = 0
    try:
        while following < len(units) or pending:
            while following < len(units) and len(pending) < max(1, window):
                pending[submit(units[following])] = following
                following += 1
            done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for future in done:
                n = pending[future]
                try:
                    value = future.result()
                except Exception as exc:  # a task's failure is a result
                    value = exc
                out[n] = keep(n, value)
                del pending[future]
    except BaseException:
        for future in pending:
            future.cancel()
        raise
    return out


def keeper(consume: Callable[[int, Any], object] | None, size: int) -> Callable[[int, Any], Any] | None:
    """Build what :func:`gather_futures` keeps of each unit's outcome.

    It keeps exceptions, and ``None`` where ``consume`` took a result.

    Parameters
    ----------
    consume : callable or None
        ``consume(i, result)`` for every call's result (None: nothing to build).
    size : int
        0: a unit is one call's bare result; otherwise the ``(ok, value)`` pairs of a batch
        of ``size`` calls (:func:`deker.executors.run_batch`), call ``i`` being
        ``n * size + j``.

    Returns
    -------
    callable or None
        ``keep(n, outcome)``, or None when ``consume`` is None (keep the outcome itself).
    """
    if consume is None:
        return None

    def keep(n: int, outcome: Any) -> Any:
        if isinstance(outcome, BaseException):  # the task failed as a whole
            return outcome
        if size == 0:
            consume(n, outcome)
            return None
        kept = []
        for j, (ok, value) in enumerate(outcome):
            if ok:
                consume(n * size + j, value)
            kept.append((ok, None if ok else value))
        return kept

    return keep


def unbatch(outcome: list[Any], batches: list[list[tuple[Any, ...]]]) -> list[Any]:
    """Return one outcome per call from the outcomes of batch tasks.

    Parameters
    ----------
    outcome : list
        Per batch: its ``(ok, value)`` pairs, or the exception that failed the whole task
        (e.g. it did not unpickle), which then stands for each of its calls.
    batches : list of list
        The calls of each batch.

    Returns
    -------
    list
        The value (result or exception) of every call, in order.
    """
    out: list[Any] = []
    for result, batch in zip(outcome, batches, strict=True):
        if isinstance(result, BaseException):  # the whole batch task failed (e.g. did not unpickle)
            out.extend([result] * len(batch))
        else:
            out.extend(value for _ok, value in result)
    return out
