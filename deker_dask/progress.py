"""Progress bars for long dask computations of deker_dask (stores and ingests).

:func:`compute_with_progress` computes a delayed value like :func:`dask.compute` and, when
asked, shows a :mod:`tqdm` bar on stderr that counts the write tasks as they finish:

- ``progress=None`` (the default everywhere): a bar only when stderr is a terminal, as
  ``deker check`` does; nothing when the output goes to a file, a pipe or a notebook log;
- ``progress=True``: always a bar (on stderr);
- ``progress=False``: never.

On a ``distributed`` cluster (a :class:`distributed.Client` passed as ``scheduler=``, or the
default client) the tasks are followed through their futures; on the local schedulers
(threads, processes, synchronous) through a :class:`dask.callbacks.Callback`.  In both cases
the result and the errors are those of ``dask.compute``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import dask
from dask.base import get_scheduler
from dask.callbacks import Callback
from dask.delayed import Delayed

from deker.log import progress_enabled

__all__ = ["compute_with_progress", "progress_enabled"]

logger = logging.getLogger(__name__)


def _size() -> dict[str, int]:
    """Return tqdm's ``ncols`` / ``nrows`` where the terminal reports no size (tqdm would draw nothing)."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # not a terminal, or not a real stream
        return {}
    out = {}
    if not size.columns:
        out["ncols"] = 80
    if not size.lines:
        out["nrows"] = 24
    return out


def _bar(total: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, unit="task", leave=False, **_size())


def _distributed_client(delayed: Delayed, compute_kwargs: dict[str, Any]) -> Any:
    """Return the distributed Client that would run ``delayed``, or None (a local scheduler)."""
    scheduler = compute_kwargs.get("scheduler")
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover - distributed is in the dask extra
        return None
    if isinstance(scheduler, Client):
        return scheduler
    get = get_scheduler(scheduler=scheduler, collections=[delayed])  # type: ignore[no-untyped-call]
    owner = getattr(get, "__self__", None)
    return owner if isinstance(owner, Client) else None


def compute_with_progress(
    delayed: Delayed,
    keys: Sequence[Any],
    *,
    progress: bool | None,
    desc: str,
    **compute_kwargs: Any,
) -> Any:
    """Compute ``delayed`` (which depends on ``keys``), with a bar counting ``keys`` when enabled.

    Parameters
    ----------
    delayed : dask.delayed.Delayed
        The value to compute (the last task of a graph holding ``keys``).
    keys : sequence
        The task keys the bar counts (e.g. one write task per tile).
    progress : bool or None
        See :func:`progress_enabled`.
    desc : str
        The label of the bar.
    **compute_kwargs
        As for :func:`dask.compute` (``scheduler=`` a scheduler name or a distributed Client).

    Returns
    -------
    Any
        The computed value of ``delayed``.
    """
    if not keys or not progress_enabled(progress):
        (result,) = dask.compute(delayed, **compute_kwargs)  # type: ignore[attr-defined,no-untyped-call]
        return result
    client = _distributed_client(delayed, compute_kwargs)
    if client is not None:
        return _on_cluster(client, delayed, keys, desc, compute_kwargs)
    wanted = set(keys)
    bar = _bar(len(keys), desc)

    def posttask(key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if key in wanted:
            bar.update(1)

    try:
        with Callback(posttask=posttask):  # type: ignore[no-untyped-call]
            (result,) = dask.compute(delayed, **compute_kwargs)  # type: ignore[attr-defined,no-untyped-call]
        bar.refresh()  # the final count, even within tqdm's minimum interval
    finally:
        bar.close()
    return result


def _on_cluster(client: Any, delayed: Delayed, keys: Sequence[Any], desc: str, kwargs: dict[str, Any]) -> Any:
    from distributed import as_completed

    options = {k: v for k, v in kwargs.items() if k != "scheduler"}
    graph = delayed.__dask_graph__()
    layer = delayed.__dask_layers__()[0]
    parts = [Delayed(key, graph, layer=layer) for key in keys]  # type: ignore[no-untyped-call]
    futures = client.compute([delayed, *parts], **options)
    final, pieces = futures[0], futures[1:]
    bar = _bar(len(pieces), desc)
    try:
        for _ in as_completed(pieces, loop=client.loop):  # type: ignore[no-untyped-call]
            bar.update(1)
        result = final.result()
        bar.refresh()
        return result
    finally:
        bar.close()
        client.cancel(futures)
