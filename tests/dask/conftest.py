"""Fixtures of the deker_dask tests.

The Dask cluster is the session's ``dask_cluster`` (tests/conftest.py): one LocalCluster of two
worker processes with one thread each, shared by every test that needs one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deker import Client

pytest.importorskip("distributed")


@pytest.fixture()
def cluster(dask_cluster_client: Any) -> Any:
    """The session's ``distributed.Client`` (pass it as ``scheduler=`` / ``client=``)."""
    return dask_cluster_client


@pytest.fixture()
def storage(tmp_path: Path) -> Iterator[Client]:
    """A deker client on a fresh storage, with the client's own thread pool."""
    with Client(f"file://{tmp_path / 'storage'}", write_lock_timeout=60) as client:
        yield client
