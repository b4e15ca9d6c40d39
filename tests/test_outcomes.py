"""deker.outcomes: collecting task outcomes in order, as they finish, and a window at a time."""

from __future__ import annotations

import concurrent.futures as cf
import threading
from typing import Any

import pytest

from deker import outcomes


def test_windowed_keeps_no_more_than_the_window_waiting() -> None:
    # Every submitted unit counts as waiting until it was kept: never more than the window.
    lock = threading.Lock()
    waiting = most = 0

    def keep(n: int, outcome: Any) -> Any:
        nonlocal waiting
        with lock:
            waiting -= 1
        return outcome

    with cf.ThreadPoolExecutor(4) as pool:

        def submit(unit: int) -> cf.Future[Any]:
            nonlocal waiting, most
            with lock:
                waiting += 1
                most = max(most, waiting)
            return pool.submit(lambda: 10 // unit)

        out = outcomes.windowed(submit, [5, 2, 0, 1, 10, 3, 4], 3, keep)
    assert out[:2] == [2, 5] and out[3:] == [10, 1, 3, 2]
    assert isinstance(out[2], ZeroDivisionError)  # a failure keeps its place
    assert most == 3


def test_windowed_submits_nothing_more_after_an_interruption() -> None:
    submitted: list[int] = []

    def keep(n: int, outcome: Any) -> Any:
        raise KeyboardInterrupt

    with cf.ThreadPoolExecutor(1) as pool:

        def submit(unit: int) -> cf.Future[Any]:
            submitted.append(unit)
            return pool.submit(lambda: unit)

        with pytest.raises(KeyboardInterrupt):
            outcomes.windowed(submit, list(range(10)), 2, keep)
    assert submitted == [0, 1]


def test_keeper_hands_results_over_and_keeps_failures() -> None:
    got: dict[int, Any] = {}
    keep = outcomes.keeper(got.__setitem__, 3)
    assert keep is not None and outcomes.keeper(None, 3) is None
    failure = ValueError("one call")
    assert keep(1, [(True, "a"), (False, failure), (True, "c")]) == [
        (True, None),
        (False, failure),
        (True, None),
    ]
    whole = OSError("the batch did not unpickle")
    assert keep(2, whole) is whole
    assert got == {3: "a", 5: "c"}
    bare = outcomes.keeper(got.__setitem__, 0)
    assert bare is not None and bare(7, "x") is None and got[7] == "x"


def test_unbatch_gives_each_call_its_outcome() -> None:
    whole = OSError("lost")
    assert outcomes.unbatch([[(True, 1), (False, "e")], whole], [[(), ()], [(), (), ()]]) == [
        1,
        "e",
        whole,
        whole,
        whole,
    ]


def test_gather_futures_in_order_or_as_they_finish() -> None:
    release = threading.Event()
    with cf.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(release.wait, 30), pool.submit(lambda: "fast")]
        seen: list[int] = []

        def keep(n: int, outcome: Any) -> Any:
            seen.append(n)
            release.set()  # the first task finishes only once the second was kept
            return outcome

        assert outcomes.gather_futures(futures, lambda f: f.result(), lambda f: f.cancel(), keep) == [
            True,
            "fast",
        ]
        assert seen == [1, 0] and futures == [None, None]
