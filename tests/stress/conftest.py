"""Fixtures of the stress tests: short in CI, long with ``--soak`` (options in tests/conftest.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from stress_support import Budget, Summary  # type: ignore[import-not-found]


@pytest.fixture
def budget(request: pytest.FixtureRequest) -> Budget:
    """Short durations in CI; ``--soak`` / ``--soak-seconds`` for long runs."""
    soak = bool(request.config.getoption("--soak"))
    cap = request.config.getoption("--stress-cap")
    return Budget(soak, float(request.config.getoption("--soak-seconds")), cap)


@pytest.fixture
def summary(request: pytest.FixtureRequest, record_property: Any) -> Iterator[Summary]:
    """Collects what a stress run did; printed, recorded, and appended to $DEKER_STRESS_REPORT."""
    item = Summary(request.node.name)
    yield item
    text = item.line()
    record_property("stress", text)
    print(text)
    report = os.environ.get("DEKER_STRESS_REPORT")
    if report:
        with open(report, "a") as fh:
            fh.write(text + "\n")


@pytest.fixture
def dask_scheduler(request: pytest.FixtureRequest) -> str | None:
    """The address of the session's Dask cluster, or None when distributed is not installed."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        return None
    address: str = request.getfixturevalue("dask_cluster").scheduler_address
    return address
