"""Small helpers to start or check a Dask cluster for deker.

Workers need no preload and no environment: whatever a task needs (hdf5plugin's filters,
HDF5 file locking off for deker's files) happens inside deker's task code.  What a cluster
does need is a filesystem every worker sees (the same path, or one mapped with
``DEKER_ROOT_MAP`` on the worker, see :func:`deker.tasks.resolve_root`);
:func:`check_workers` verifies that before a long job starts.

Worker *processes* with one thread each suit HDF5 best: libhdf5 serialises the calls of one
process, so threads of one worker would wait for each other.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

from deker.errors import DekerClientError
from deker.storage.identity import STORAGE_ID_FILE, ensure_storage_id, read_storage_id
from deker.storage.layout import COLLECTIONS_DIR

__all__ = ["check_workers", "local_cluster", "worker_report"]

logger = logging.getLogger(__name__)


def local_cluster(
    n_workers: int | None = None,
    *,
    threads_per_worker: int = 1,
    processes: bool = True,
    dashboard_address: str = ":0",
    **kwargs: Any,
) -> Any:
    """Start a :class:`distributed.LocalCluster` suited to deker (worker processes, one thread each).

    Parameters
    ----------
    n_workers : int, optional
        Number of worker processes (default: the number of CPUs, at least 1).
    threads_per_worker : int, default 1
        Threads per worker.
    processes : bool, default True
        Workers in separate processes (False runs them as threads of this process).
    dashboard_address : str, default ":0"
        Where the scheduler serves its dashboard and HTTP endpoints (``":0"``: a free port;
        ``":8787"``: Dask's usual one).
    **kwargs
        Passed to :class:`distributed.LocalCluster` (``memory_limit``, ``local_directory``...).

    Returns
    -------
    distributed.LocalCluster
        The running cluster; close it (or use it as a context manager).
    """
    from distributed import LocalCluster

    workers = n_workers if n_workers is not None else max(1, os.cpu_count() or 1)
    return LocalCluster(  # type: ignore[no-untyped-call]
        n_workers=workers,
        threads_per_worker=threads_per_worker,
        processes=processes,
        dashboard_address=dashboard_address,
        **kwargs,
    )


def _collections_dir(storage_root: str) -> str:
    """Return the collections directory of a storage path (or the path itself if it is one)."""
    path = Path(storage_root)
    if path.name != COLLECTIONS_DIR and (path / COLLECTIONS_DIR).is_dir():
        return str(path / COLLECTIONS_DIR)
    return str(path)


def worker_report(storage_root: str | None = None, storage_id: str | None = None) -> dict[str, Any]:
    """Describe this process as a deker worker (run on each worker by :func:`check_workers`).

    Parameters
    ----------
    storage_root : str, optional
        The collections directory of a storage as the coordinator sees it.
    storage_id : str, optional
        The id the storage's identity file holds on the coordinator (None: it has none).

    Returns
    -------
    dict
        ``pid``, ``host``, ``filters`` (HDF5 filter name -> available), ``storage`` (the path this
        worker uses for ``storage_root``), ``storage_visible`` (a directory is there),
        ``storage_id`` (what this worker finds in the identity file) and ``storage_problem``
        (None, or why this worker does not see *that* storage).
    """
    import h5py
    import hdf5plugin

    import deker.tasks  # what every deker task imports: it registers the filters

    filters = {name: bool(h5py.h5z.filter_avail(fid)) for name, fid in hdf5plugin.FILTERS.items()}
    report: dict[str, Any] = {"pid": os.getpid(), "host": socket.gethostname(), "filters": filters}
    if storage_root is not None:
        local = deker.tasks.resolve_root(str(storage_root))
        report["storage"] = str(local)
        report["storage_visible"] = local.is_dir()
        found: str | None = None
        problem: str | None = None
        try:
            found = read_storage_id(local)
        except OSError as exc:
            problem = f"its identity file cannot be read ({exc})"
        report["storage_id"] = found
        if problem is None:
            if not local.is_dir():
                problem = f"{local} is not a directory on this worker"
            elif storage_id is not None and found is None:
                problem = f"{local} has no identity file {STORAGE_ID_FILE} (an empty mount point?)"
            elif storage_id is not None and found != storage_id:
                problem = f"{local} holds another storage (id {found}, expected {storage_id})"
        report["storage_problem"] = problem
    return report


def check_workers(
    client: Any, storage_root: str | os.PathLike[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Check that every worker of a Dask client can serve deker tasks.

    Each worker must have the HDF5 filters of ``hdf5plugin`` and, with ``storage_root``, see
    *this* storage: the storage's identity file (``collections/.deker-storage``, see
    :mod:`deker.storage.identity`) with the id the coordinator reads.  An empty directory at the
    storage path (a failed mount) fails the check.  A storage without an identity file (written
    only by deker 1.1.7) gets one here when the coordinator may write it; on a read-only storage
    without one, the check falls back to "the path is a directory".

    Parameters
    ----------
    client : distributed.Client
        The client of the cluster.
    storage_root : str or PathLike, optional
        A storage path (``/data/storage``, or the ``collections`` directory) every worker must see.

    Returns
    -------
    dict
        :func:`worker_report` of each worker, by address.

    Raises
    ------
    DekerClientError
        If a worker lacks an HDF5 filter or does not see the storage; the message names each
        such worker (address, host, pid) and the path it looked at.
    """
    root = None if storage_root is None else _collections_dir(str(Path(storage_root)))
    expected = None
    if root is not None and Path(root).name == COLLECTIONS_DIR and Path(root).is_dir():
        try:
            expected = ensure_storage_id(Path(root))
        except OSError as exc:  # read-only: check what is there
            logger.debug("storage %s has no identity file and cannot get one: %s", root, exc)
            expected = read_storage_id(Path(root))
    reports: dict[str, dict[str, Any]] = client.run(worker_report, root, expected)
    problems = []
    for address, report in sorted(reports.items()):
        who = f"{address} (host {report.get('host')}, pid {report.get('pid')})"
        missing = sorted(name for name, ok in report["filters"].items() if not ok)
        if missing:
            problems.append(f"{who}: HDF5 filters {missing} are not available (reinstall hdf5plugin)")
        if root is not None and report.get("storage_problem"):
            problems.append(
                f"{who}: does not see the storage at {report.get('storage')}: {report['storage_problem']} "
                "(mount the shared filesystem there, or map the path with DEKER_ROOT_MAP)"
            )
    if problems:
        raise DekerClientError("Some Dask workers cannot serve deker tasks:\n" + "\n".join(problems))
    return reports
