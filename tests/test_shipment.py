"""deker.shipment: task data made and scattered in a thread, on the session's real Dask cluster."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deker import Client, DimensionSchema, VArraySchema
from deker.daskclient import SCATTER_THRESHOLD
from deker.executors import TaskRunner
from deker.shipment import Shipment

BIG = SCATTER_THRESHOLD // 8 + 1  # float64 cells of an array that is scattered


def _count_scatters(client: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    original = client.scatter

    def scatter(data: Any, **kwargs: Any) -> Any:
        sizes.append(len(data))
        return original(data, **kwargs)

    monkeypatch.setattr(client, "scatter", scatter)
    return sizes


def test_values_are_made_in_another_thread_and_errors_reach_the_caller() -> None:
    import threading

    where: list[int] = []
    shipment = Shipment(lambda: where.append(threading.get_ident()) or [1, "two"])
    assert shipment.values() == [1, "two"]
    assert where != [threading.get_ident()]
    assert shipment.sent() == {}  # no client: nothing is scattered

    def fails() -> list[Any]:
        raise ValueError("bad piece")

    with pytest.raises(ValueError, match="bad piece"):
        Shipment(fails).values()


def test_large_arrays_are_scattered_ahead_and_not_again(
    dask_cluster_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = dask_cluster_client
    big = np.arange(BIG, dtype=np.float64)
    small = np.arange(10, dtype=np.float64)
    runner = TaskRunner.create(client)
    sizes = _count_scatters(client, monkeypatch)
    shipment = runner.ship(lambda: [big, small, big + 1])
    made = shipment.values()
    assert set(shipment.sent()) == {id(made[0]), id(made[2])}  # the small one travels in the task
    assert sizes == [2]
    results = runner.run_all(np.sum, [(v,) for v in made], shipment=shipment)
    assert results == [big.sum(), small.sum(), (big + 1).sum()]
    assert sizes == [2]  # nothing scattered again
    results = runner.run_all(np.sum, [(made[0],), (made[2] * 2,)], shipment=shipment)
    assert results == [big.sum(), (big * 2 + 2).sum()]
    assert sizes == [2, 1]  # only the array it had not sent


def test_an_abandoned_shipment_scatters_nothing(
    dask_cluster_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    sizes = _count_scatters(dask_cluster_client, monkeypatch)
    go = threading.Event()

    def make() -> list[Any]:
        assert go.wait(30)
        return [np.zeros(BIG)]

    shipment = Shipment(make, dask_cluster_client)
    shipment.abandon()  # e.g. the update's lock timed out while the values were being made
    go.set()
    assert len(shipment.values()) == 1
    assert shipment.sent() == {} and sizes == []


def test_a_failed_scatter_leaves_it_to_the_runner(caplog: pytest.LogCaptureFixture) -> None:
    class Refuses:
        def scatter(self, data: Any, **kwargs: Any) -> Any:
            raise OSError("scheduler unreachable")

    caplog.set_level(logging.DEBUG, logger="deker.shipment")
    shipment = Shipment(lambda: [np.zeros(BIG)], Refuses())
    assert len(shipment.values()) == 1
    assert shipment.sent() == {}
    assert "could not scatter the task data ahead: scheduler unreachable" in caplog.text


def test_an_update_through_dask_scatters_while_it_creates_tiles(
    dask_cluster_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The creation of the missing tiles (on this host) waits until the data was scattered: it
    # completes only if the scatter runs meanwhile, not after it.
    import threading

    from deker import pipeline

    scattered = threading.Event()
    original_scatter = dask_cluster_client.scatter

    def scatter(data: Any, **kwargs: Any) -> Any:
        futures = original_scatter(data, **kwargs)
        scattered.set()
        return futures

    original_create = pipeline._create_missing
    waited: list[bool] = []

    def create_missing(*args: Any, **kwargs: Any) -> Any:
        waited.append(scattered.wait(20))
        return original_create(*args, **kwargs)

    monkeypatch.setattr(dask_cluster_client, "scatter", scatter)
    monkeypatch.setattr(pipeline, "_create_missing", create_missing)
    with Client(tmp_path.as_uri(), executor=dask_cluster_client) as client:
        varray = client.create_collection("v", _schema()).create()
        varray[:].update(np.ones((1024, 1024)))
        assert waited == [True]
        np.testing.assert_array_equal(varray[:].read(), np.ones((1024, 1024)))


def _schema() -> VArraySchema:
    return VArraySchema(
        dtype=np.float64,
        dimensions=[DimensionSchema(name="y", size=1024), DimensionSchema(name="x", size=1024)],
        vgrid=(2, 2),
    )


def test_an_update_through_dask_sends_each_tile_once(
    dask_cluster_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = _schema()
    data = np.arange(1024 * 1024, dtype=np.float64).reshape(1024, 1024)
    with Client(tmp_path.as_uri(), executor=dask_cluster_client) as client:
        varray = client.create_collection("v", schema).create()
        sizes = _count_scatters(dask_cluster_client, monkeypatch)
        varray[:].update(data)  # four missing tiles of 2 MiB, created while their data travels
        assert sizes == [4]
        varray[:].update(data + 1)  # tiles that exist
        assert sizes == [4, 4]
        np.testing.assert_array_equal(varray[:].read(), data + 1)
