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
from pathlib import Path
from typing import Any

from deker.errors import DekerClientError

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


def worker_report(storage_root: str | None = None) -> dict[str, Any]:
    """Describe this process as a deker worker (run on each worker by :func:`check_workers`).

    Parameters
    ----------
    storage_root : str, optional
        A storage path (or its ``collections`` directory) as the coordinator sees it.

    Returns
    -------
    dict
        ``pid``, ``filters`` (HDF5 filter name -> available), ``storage`` (the path this worker
        uses for ``storage_root``) and ``storage_visible``.
    """
    import h5py
    import hdf5plugin

    import deker.tasks  # what every deker task imports: it registers the filters

    filters = {name: bool(h5py.h5z.filter_avail(fid)) for name, fid in hdf5plugin.FILTERS.items()}
    report: dict[str, Any] = {"pid": os.getpid(), "filters": filters}
    if storage_root is not None:
        local = deker.tasks.resolve_root(str(storage_root))
        report["storage"] = str(local)
        report["storage_visible"] = Path(local).is_dir()
    return report


def check_workers(
    client: Any, storage_root: str | os.PathLike[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Check that every worker of a Dask client can serve deker tasks.

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
        If a worker lacks an HDF5 filter or does not see the storage.
    """
    root = None if storage_root is None else str(Path(storage_root))
    reports: dict[str, dict[str, Any]] = client.run(worker_report, root)
    problems = []
    for address, report in sorted(reports.items()):
        missing = sorted(name for name, ok in report["filters"].items() if not ok)
        if missing:
            problems.append(f"{address}: HDF5 filters {missing} are not available (reinstall hdf5plugin)")
        if root is not None and not report.get("storage_visible"):
            problems.append(
                f"{address}: storage {report.get('storage')} is not a directory on this worker (mount the "
                "shared filesystem there, or map the path with DEKER_ROOT_MAP)"
            )
    if problems:
        raise DekerClientError("Some Dask workers cannot serve deker tasks:\n" + "\n".join(problems))
    return reports
