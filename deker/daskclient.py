"""What deker does with a Dask distributed client, by duck typing (deker never imports dask).

:class:`deker.executors.TaskRunner` runs tile tasks on a Dask client through these functions:
recognising one, counting its worker threads, scattering large arguments, fetching the results
(through the scheduler or straight from the workers), telling a lost task from a failed one,
and waiting until no live worker still runs a copy of a lost task.
"""

from __future__ import annotations

import concurrent.futures as cf
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import psutil

from deker.errors import DekerClientError

__all__ = [
    "GATHER_BYTES",
    "LOST_TASK_WAIT_SECONDS",
    "SCATTER_THRESHOLD",
    "check_open",
    "cluster_view",
    "gather",
    "is_lost",
    "keys_running",
    "looks_like_dask_client",
    "scatter_ahead",
    "scatter_large",
    "wait_until_not_running",
]

logger = logging.getLogger(__name__)

#: numpy arguments larger than this many bytes are scattered to Dask workers before submission.
SCATTER_THRESHOLD = 1024 * 1024
#: How long the copies of lost tasks still running on live workers are waited for.
LOST_TASK_WAIT_SECONDS = 600.0
#: Results fetched straight from the workers for a caller that consumes them as they come are
#: fetched in requests of about this many bytes.
GATHER_BYTES = 64 * 1024 * 1024
_RUNNING_STATES = frozenset({"executing", "long-running", "cancelled", "resumed"})
#: What an operation says when the Dask client it would run its tasks on was closed.
_CLOSED_MESSAGE = (
    "The Dask client this deker Client runs its tasks on is closed; open a deker Client with "
    "a running Dask client (or without one, for the thread pool)"
)


def check_open(client: Any) -> None:
    """Refuse a Dask client that was closed (or is closing) before tasks are sent to it.

    Parameters
    ----------
    client : distributed.Client
        The client (its ``status`` is ``"closed"`` or ``"closing"`` once closed).

    Raises
    ------
    DekerClientError
        If the client is closed.
    """
    if getattr(client, "status", "running") in ("closed", "closing"):
        raise DekerClientError(_CLOSED_MESSAGE)


def looks_like_dask_client(obj: Any) -> bool:
    """Whether ``obj`` has the methods of a Dask distributed ``Client`` that deker calls.

    Parameters
    ----------
    obj : object
        Anything given as a client's executor.

    Returns
    -------
    bool
        ``True`` if ``get_executor``, ``submit`` and ``scatter`` are callable on it.
    """
    return all(callable(getattr(obj, name, None)) for name in ("get_executor", "submit", "scatter"))


def cluster_view(client: Any, default: int = 1) -> tuple[int, bool]:
    """Count the worker threads of a Dask client's cluster, and say whether all its workers are here.

    One call to the scheduler (``client.nthreads()``) answers both.  A worker address on a
    loopback address, ``localhost``, an address of one of this host's network interfaces or
    ``inproc://`` (this very process) is on this host, and this process can normally connect
    to it (where it cannot, e.g. a scheduler reached through a tunnel whose workers listen on
    their own loopback, distributed fetches through the scheduler what it could not fetch
    directly).  A host name is not resolved: it counts as another host.

    Parameters
    ----------
    client : distributed.Client
        The client.
    default : int, optional
        The count to return when the client cannot say.

    Returns
    -------
    tuple of (int, bool)
        The threads of all workers (at least 1), and ``True`` if the cluster has workers and
        all of them are on this host (``False`` when the client cannot say).
    """
    try:
        counts = dict(client.nthreads())
        total = sum(int(n) for n in counts.values())
    except Exception:  # duck typing: an unusual client loses the estimate, keeps the scheduler's path
        return max(1, default), False
    return max(1, total), bool(counts) and _all_on_this_host(counts)


def _all_on_this_host(addresses: Iterable[Any]) -> bool:
    own: set[str] | None = None
    for address in addresses:
        scheme, _, rest = str(address).partition("://")
        host = rest.rsplit(":", 1)[0].strip("[]")
        if scheme == "inproc" or host == "localhost":
            continue
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False
        if loopback:
            continue
        if own is None:
            own = {a.address.split("%")[0] for nic in psutil.net_if_addrs().values() for a in nic}
        if host not in own:
            return False
    return True


def gather(
    client: Any,
    futures: list[Any],
    direct: bool,
    keep: Callable[[int, Any], Any] | None = None,
    group: int = 0,
) -> list[Any]:
    """Return the result, or the exception, of every Dask future, in order.

    Through the scheduler (distributed's default for a client outside the cluster) the results
    are fetched one future at a time, so that the scheduler holds one result at a time, not
    the whole answer of a read (fetched together, a 64 MiB read made the scheduler hold 64 MiB
    and took 0.55-0.66 s instead of 0.17-0.20 s the first time, on fresh memory).  ``direct``
    fetches the results straight from the workers, ``group`` futures a request or all in one
    (0.11-0.16 s for that read; for 256 MiB in 64 tiles from two local worker processes 0.32-0.41 s against
    0.64-1.0 s through the scheduler).

    Parameters
    ----------
    client : distributed.Client
        The client of the futures.
    futures : list of distributed.Future
        The futures.
    direct : bool
        Whether to fetch straight from the workers (this process must reach them).
    keep : callable, optional
        ``keep(n, outcome)`` is what the list holds for future ``n``, called as soon as its
        outcome is here (by default the outcome itself).
    group : int
        With ``direct``, how many futures one request fetches (0: all of them).

    Returns
    -------
    list
        For each future, what ``keep`` made of its result, or of its exception (as
        ``result()`` raises it) when it failed or was cancelled.

    Raises
    ------
    BaseException
        Whatever interrupts the wait (e.g. ``KeyboardInterrupt``), after cancelling every
        future.
    """
    out: list[Any] = []
    step = group if group > 0 else max(1, len(futures))
    try:
        for first in range(0, len(futures), step):
            part = dict(enumerate(futures[first : first + step], first))
            got = client.gather(part, errors="skip", direct=True) if direct else {}
            for n, future in part.items():
                if n in got and getattr(future, "status", "finished") == "finished":
                    value = got.pop(n)
                else:
                    try:  # through the scheduler; or failed or cancelled: its exception
                        value = future.result()
                    except Exception as exc:  # a task's failure is a result
                        value = exc
                out.append(value if keep is None else keep(n, value))
            del got
    except BaseException:
        for future in futures:
            future.cancel()
        raise
    return out


def is_lost(result: Any) -> bool:
    """Whether a task's outcome says it was lost, not that it failed.

    Dask cancels a task whose input died with a worker (data scattered to that worker cannot be
    recomputed): ``distributed.FutureCancelledError``, a ``concurrent.futures.CancelledError``.
    A task that failed by itself, or that Dask gave up after killing several workers
    (``KilledWorker``), is not lost: its error is the outcome.

    Parameters
    ----------
    result : object
        A task's result or exception, from :func:`gather`.

    Returns
    -------
    bool
        ``True`` if the task was lost.
    """
    return isinstance(result, cf.CancelledError)


def keys_running(keys: Sequence[Any], dask_worker: Any = None) -> list[Any]:
    """Return which of ``keys`` a Dask worker is still running (run on each worker by ``client.run``).

    A task whose future was cancelled keeps running in its thread until it returns.

    Parameters
    ----------
    keys : sequence
        Task keys.
    dask_worker : distributed.Worker, optional
        Given by ``client.run``.

    Returns
    -------
    list
        The keys still executing on this worker.
    """
    tasks = getattr(getattr(dask_worker, "state", None), "tasks", None) or {}
    running = []
    for key in keys:
        task = tasks.get(key)
        if task is not None and getattr(task, "state", None) in _RUNNING_STATES:
            running.append(key)
    return running


def wait_until_not_running(client: Any, keys: list[Any]) -> None:
    """Wait (up to :data:`LOST_TASK_WAIT_SECONDS`) until no live worker runs one of ``keys``.

    Parameters
    ----------
    client : distributed.Client
        The client.
    keys : list
        Task keys (``None`` entries are ignored).
    """
    keys = [k for k in keys if k is not None]
    if not keys:
        return
    deadline = time.monotonic() + LOST_TASK_WAIT_SECONDS
    delay = 0.02
    failures = 0
    while True:
        try:
            found = client.run(keys_running, keys, on_error="ignore")
            failures = 0
        except Exception as exc:  # a worker went away while asked: ask again, a few times
            failures += 1
            if failures > 10:
                logger.warning("cannot ask the Dask workers which lost tasks still run: %s", exc)
                return
            found = {"?": keys}
        if not any(found.values()):
            return
        if time.monotonic() > deadline:
            logger.warning(
                "copies of %d lost Dask tasks still run after %.0f s", len(keys), LOST_TASK_WAIT_SECONDS
            )
            return
        time.sleep(delay)  # polling the workers, not a wait for a window
        delay = min(0.5, delay * 2)


def _large(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.nbytes > SCATTER_THRESHOLD


def scatter_ahead(client: Any, values: list[Any]) -> dict[int, Any]:
    """Scatter the numpy arrays above :data:`SCATTER_THRESHOLD` among ``values``.

    Parameters
    ----------
    client : distributed.Client
        The client.
    values : list
        Anything; only the large arrays are sent.

    Returns
    -------
    dict
        ``{id(array): future}`` (the caller keeps the arrays alive while it uses the ids).
    """
    large = [v for v in values if _large(v)]
    if not large:
        return {}
    futures = client.scatter(large, hash=False)
    logger.debug("scattered %d large task arguments to the Dask workers", len(large))
    return {id(v): f for v, f in zip(large, futures, strict=True)}


def scatter_large(
    client: Any, calls: list[tuple[Any, ...]], sent: dict[int, Any] | None = None
) -> list[tuple[Any, ...]]:
    """Replace numpy arguments above :data:`SCATTER_THRESHOLD` by futures of scattered data.

    Parameters
    ----------
    client : distributed.Client
        The client.
    calls : list of tuple
        The argument tuples of the calls.
    sent : dict, optional
        Arrays scattered already (:func:`scatter_ahead`): their futures are used as they are.

    Returns
    -------
    list of tuple
        The same calls, large arrays replaced by futures (``calls`` itself if none is large).
    """
    where = [(i, j) for i, args in enumerate(calls) for j, arg in enumerate(args) if _large(arg)]
    if not where:
        return calls
    known = dict(sent or {})
    known.update(scatter_ahead(client, [calls[i][j] for i, j in where if id(calls[i][j]) not in known]))
    rows = [list(args) for args in calls]
    for i, j in where:
        rows[i][j] = known[id(calls[i][j])]
    return [tuple(row) for row in rows]
