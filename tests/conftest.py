"""Shared pytest configuration: hypothesis profiles and fixture-storage helpers."""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

# CI runs with a fixed seed (derandomize) so a red run can be reproduced; locally examples vary.
settings.register_profile(
    "ci", derandomize=True, deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "dev", deadline=None, max_examples=100, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "deker117"


def pytest_addoption(parser: pytest.Parser) -> None:
    """Options: ``--soak`` runs tests/stress/ for long; ``--lock-primitive`` picks the lock primitive."""
    parser.addoption(
        "--soak", action="store_true", default=False, help="run tests/stress/ in soak (long) mode"
    )
    parser.addoption(
        "--lock-primitive",
        choices=("flock", "posix"),
        default=None,
        help="kernel lock primitive of the lock protocol (sets DEKER_LOCK_PRIMITIVE for the whole "
        "session and its child processes; posix = POSIX record locks, what an NFS client does)",
    )
    parser.addoption(
        "--soak-seconds",
        type=float,
        default=300.0,
        help="with --soak: seconds for each stress test (default 300)",
    )
    parser.addoption(
        "--stress-cap",
        type=float,
        default=None,
        help="without --soak: at most this many seconds for each timed stress loop (counts stay)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Apply ``--lock-primitive`` before any test (child processes inherit the environment)."""
    primitive = config.getoption("--lock-primitive")
    if primitive:
        os.environ["DEKER_LOCK_PRIMITIVE"] = primitive


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the posix re-run of the lock tests now, if it is to run, to work beside the rest."""
    if session.config.option.collectonly:
        return
    for item in session.items:
        if item.name == "test_lock_tests_pass_under_posix_locks" and isinstance(item, pytest.Function):
            item.module.start_child(session.config)
            return


def pytest_report_header(config: pytest.Config) -> str:
    """Say which lock primitive the run uses."""
    return f"deker lock primitive: {os.environ.get('DEKER_LOCK_PRIMITIVE', 'flock')}"


@pytest.fixture(params=["flock", "posix"])
def prim(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test under each kernel lock primitive (``DEKER_LOCK_PRIMITIVE``); the one in use."""
    from deker.storage import kernellock

    assert request.param in (kernellock.FLOCK, kernellock.POSIX)
    monkeypatch.setenv(kernellock.PRIMITIVE_ENV, request.param)
    return str(request.param)


@pytest.fixture
def held_before() -> frozenset[tuple[int, int]]:
    """What this process's lock registry held before the test (see ``storage_helpers.prim.registry_keys``)."""
    from storage_helpers.prim import registry_keys

    return registry_keys()


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The folder of deker 1.1.7 fixtures (``tests/fixtures/deker117``, see its ``regenerate.py``)."""
    if not (FIXTURES / "manifest.json").exists():
        pytest.fail(f"fixtures not found at {FIXTURES}: restore them from git or run regenerate.py there")
    return FIXTURES


@pytest.fixture(scope="session")
def legacy_storage(tmp_path_factory: pytest.TempPathFactory, fixtures_dir: Path) -> Path:
    """The deker 1.1.7 storage unpacked into a temporary folder (its symlinks dangle on purpose).

    Session-scoped and shared: tests must treat it as read-only (copy it to write).
    """
    dest = tmp_path_factory.mktemp("legacy")
    with tarfile.open(fixtures_dir / "storage.tar.gz") as tar:
        tar.extractall(dest, filter="tar") if hasattr(tarfile, "data_filter") else tar.extractall(dest)
    return dest / "storage"


@pytest.fixture(scope="session")
def legacy_python() -> Path:
    """The python of the throwaway deker 1.1.7 venv (``tests/legacy/venv.py``), built on first use.

    Skips, with the reason, where it cannot be built (no package registry).
    """
    from legacy.venv import LegacyUnavailable
    from legacy.venv import legacy_python as build

    try:
        return build()
    except LegacyUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The one ``distributed.LocalCluster`` of the session: 2 worker processes, 1 thread each.

    Shared by every test that needs a Dask cluster (starting one costs seconds).  Tests must
    leave it as they found it: two live workers.
    """
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        local_directory=str(tmp_path_factory.mktemp("dask-workers")),
    ) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def dask_cluster_client(dask_cluster: Any) -> Iterator[Any]:
    """A ``distributed.Client`` of :func:`dask_cluster` (not the default scheduler: pass it explicitly)."""
    distributed = pytest.importorskip("distributed")
    with distributed.Client(dask_cluster, set_as_default=False) as client:
        client.wait_for_workers(2, timeout=60)
        yield client


@pytest.fixture
def children() -> Any:
    """Start lock-holding helper processes (``children(mode, **args)``); all are killed at the end."""
    from storage_helpers.children import Child

    made: list[Child] = []

    def make(mode: str, **args: Any) -> Child:
        child = Child(mode, **args)
        made.append(child)
        return child

    yield make
    for child in made:
        child.close()
