"""deker.daskclient: what deker does with a Dask client, on a real LocalCluster where it matters."""

from __future__ import annotations

from typing import Any

import numpy as np
import psutil
import pytest

from deker import daskclient
from deker.executors import TaskRunner


class Listed:
    """Anything with ``nthreads()``: the worker addresses a scheduler would report."""

    def __init__(self, *addresses: str, fails: bool = False) -> None:
        self.addresses = addresses
        self.fails = fails

    def nthreads(self) -> dict[str, int]:
        if self.fails:
            raise OSError("the scheduler went away")
        return dict.fromkeys(self.addresses, 1)


def _own_address() -> str | None:
    """An address of one of this host's interfaces that is not a loopback one (None: none)."""
    for nic in psutil.net_if_addrs().values():
        for entry in nic:
            if entry.family.name == "AF_INET" and not entry.address.startswith("127."):
                return str(entry.address)
    return None


@pytest.mark.parametrize(
    ("addresses", "here"),
    [
        (("inproc://10.0.0.1/123/1",), True),
        (("tcp://127.0.0.1:40001", "tls://127.0.0.2:40002"), True),
        (("tcp://[::1]:40003",), True),
        (("tcp://localhost:40004",), True),
        (("tcp://203.0.113.7:40005",), False),  # TEST-NET-3: never an address of this host
        (("tcp://127.0.0.1:40006", "tcp://203.0.113.7:40007"), False),  # one remote worker is enough
        (("tcp://node17:40008",), False),  # a host name is not resolved
        ((), False),  # no workers yet
    ],
)
def test_cluster_view_says_whether_the_workers_are_on_this_host(
    addresses: tuple[str, ...], here: bool
) -> None:
    assert daskclient.cluster_view(Listed(*addresses))[1] is here


def test_workers_on_an_address_of_this_host() -> None:
    own = _own_address()
    if own is None:
        pytest.skip("this host has no IPv4 address besides the loopback ones")
    assert daskclient.cluster_view(Listed(f"tcp://{own}:40010"))[1]
    assert not daskclient.cluster_view(Listed(f"tcp://{own}:40010", "tcp://203.0.113.7:1"))[1]


def test_a_client_that_cannot_say_keeps_the_scheduler_path() -> None:
    assert daskclient.cluster_view(Listed("tcp://127.0.0.1:1", fails=True), default=3) == (3, False)


def _spy_gather(client: Any, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    seen: list[Any] = []
    original = client.gather

    def gather(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("direct"))
        return original(*args, **kwargs)

    monkeypatch.setattr(client, "gather", gather)
    return seen


def test_results_come_straight_from_workers_on_this_host(
    dask_cluster_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The session's cluster: two worker processes listening on 127.0.0.1.  The client leaves
    # direct_to_workers open, so the runner fetches the results in one request from them.
    assert dask_cluster_client.direct_to_workers is None
    assert daskclient.cluster_view(dask_cluster_client) == (2, True)
    seen = _spy_gather(dask_cluster_client, monkeypatch)
    runner = TaskRunner.create(dask_cluster_client)
    big = np.arange(daskclient.SCATTER_THRESHOLD // 8 + 1, dtype=np.int64)
    results = runner.run_all(np.sum, [(big,), (big[:10],), ("not an array",)])
    assert results[:2] == [big.sum(), 45]
    assert isinstance(results[2], TypeError)  # a failure keeps its place and its exception
    assert seen == [True]


def test_a_client_made_not_direct_goes_through_the_scheduler(
    dask_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    distributed = pytest.importorskip("distributed")
    with distributed.Client(dask_cluster, set_as_default=False, direct_to_workers=False) as client:
        seen = _spy_gather(client, monkeypatch)
        runner = TaskRunner.create(client)
        assert runner.run_all(divmod, [(7, 2), (9, 4)]) == [(3, 1), (2, 1)]
        assert seen == []  # one future at a time, through the scheduler


def test_gather_in_groups_hands_each_outcome_over_as_it_comes(
    dask_cluster_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = dask_cluster_client
    futures = [client.submit(divmod, 10, d, pure=False) for d in (1, 2, 0, 3, 4)]
    seen = _spy_gather(client, monkeypatch)
    kept: list[int] = []

    def keep(n: int, outcome: Any) -> Any:
        kept.append(n)
        return None if isinstance(outcome, tuple) else outcome

    out = daskclient.gather(client, futures, True, keep, group=2)
    assert seen == [True, True, True]  # three requests of at most two futures each
    assert kept == [0, 1, 2, 3, 4]
    assert out[:2] == [None, None] and out[3:] == [None, None]
    assert isinstance(out[2], ZeroDivisionError)
    through = daskclient.gather(client, futures, False)  # one future at a time, through the scheduler
    assert isinstance(through.pop(2), ZeroDivisionError)
    assert through == [(10, 0), (5, 0), (3, 1), (2, 2)]
    assert seen == [True, True, True]
