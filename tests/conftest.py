"""Shared pytest configuration: hypothesis profiles and fixture-storage helpers."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

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

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The folder of deker 1.1.7 fixtures (``../shared/fixtures``)."""
    if not (FIXTURES / "manifest.json").exists():
        pytest.fail(f"fixtures not found at {FIXTURES}")
    return FIXTURES


@pytest.fixture(scope="session")
def legacy_storage(tmp_path_factory: pytest.TempPathFactory, fixtures_dir: Path) -> Path:
    """The deker 1.1.7 storage unpacked into a temporary folder (its symlinks dangle on purpose).

    Session-scoped and shared: tests must treat it as read-only (copy it to write).
    """
    dest = tmp_path_factory.mktemp("legacy")
    with tarfile.open(fixtures_dir / "deker-1.1.7-storage.tar.gz") as tar:
        tar.extractall(dest, filter="tar") if hasattr(tarfile, "data_filter") else tar.extractall(dest)
    return dest / "storage"
