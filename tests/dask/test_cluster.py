"""deker_dask/cluster.py: ``worker_report`` in this process, ``local_cluster`` and ``check_workers``.

``worker_report`` is called directly on real storages (one with its identity file, one of another
id, an empty directory standing for a failed mount, a missing path).  ``local_cluster`` starts a
real cluster (threads of this process, so it is quick); ``check_workers`` runs the report there.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from deker import ArraySchema, Client, DimensionSchema
from deker.errors import DekerClientError
from deker.storage.identity import read_storage_id
from deker_dask.cluster import check_workers, local_cluster, worker_report

distributed = pytest.importorskip("distributed")


@pytest.fixture()
def storage(tmp_path: Path) -> Path:
    with Client(f"file://{tmp_path / 'storage'}") as client:  # its first write adds the identity
        client.create_collection("c", ArraySchema(dimensions=[DimensionSchema("x", 4)], dtype=float))
    return tmp_path / "storage"


def test_report_without_a_storage_names_the_process_and_its_filters() -> None:
    report = worker_report()
    assert report["pid"] == os.getpid()
    assert report["filters"]["zstd"] and report["filters"]["lz4"]
    assert "storage" not in report


def test_report_on_the_storage_it_expects(storage: Path) -> None:
    collections = storage / "collections"
    sid = read_storage_id(collections)
    assert sid is not None
    report = worker_report(str(collections), sid)
    assert report["storage_visible"] and report["storage_id"] == sid
    assert report["storage_problem"] is None


def test_report_on_another_storage_an_empty_mount_and_no_directory(storage: Path, tmp_path: Path) -> None:
    collections = storage / "collections"
    other = worker_report(str(collections), "0" * 32)
    assert "holds another storage" in other["storage_problem"]
    empty = tmp_path / "mnt"
    empty.mkdir()
    assert "has no identity file" in worker_report(str(empty), "0" * 32)["storage_problem"]
    missing = worker_report(str(tmp_path / "nowhere"))
    assert not missing["storage_visible"] and "is not a directory" in missing["storage_problem"]


def test_check_workers_on_a_local_cluster(storage: Path, tmp_path: Path) -> None:
    with (
        local_cluster(n_workers=1, processes=False) as cluster,
        distributed.Client(cluster) as client,
    ):
        reports = check_workers(client, storage)  # the storage path: its collections are found
        (report,) = reports.values()
        assert report["storage"] == str(storage / "collections") and report["storage_problem"] is None
        with pytest.raises(DekerClientError, match="does not see the storage"):
            check_workers(client, tmp_path / "nowhere")


def test_worker_processes_code_each_region_in_one_thread(cluster: object) -> None:
    """A worker's task threads are its parallelism: its regions are not split over every core too.

    Dask's nanny starts each worker process with ``OMP_NUM_THREADS=1``, which caps deker's
    coding threads; before, n worker processes each split their regions over every core.
    """
    from deker import sizes
    from deker.storage import chunkcodec

    started_with = sizes._initial_environment()  # (what this process passes on to the nanny)
    if "DEKER_CODEC_THREADS" in os.environ or "OMP_NUM_THREADS" in started_with:
        pytest.skip("DEKER_CODEC_THREADS or OMP_NUM_THREADS is set for this run: the workers inherit it")
    threads = cluster.run(chunkcodec.decode_threads)  # type: ignore[attr-defined]
    assert set(threads.values()) == {1}, threads
