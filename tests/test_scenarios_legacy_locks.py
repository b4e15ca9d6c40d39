"""Scenario: a deker 1.1.7 process deletes a tile that this deker is waiting for (issue 15, case 5).

A child process imitates 1.1.7's lock steps for ``VSubset.clear`` of a whole tile
(tests/storage_helpers/legacy_clear.py): it holds the tile file's ``flock`` and its pid marker.
Our update of that tile waits for the flock; only once it waits (it has the tile file open)
does the child delete the tile and release.  The update must then find the tile gone, list
the tiles again and create it, within its ``write_lock_timeout``, instead of failing with
"Tile file ... vanished during the write".
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from storage_helpers.prim import refusals_of

from deker import Client, DimensionSchema, VArraySchema

pytestmark = pytest.mark.timeout(120)

HELPER = Path(__file__).resolve().parent / "storage_helpers" / "legacy_clear.py"


def wait_until(predicate: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + 30
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.mark.parametrize("region", ["partial", "whole"])
def test_update_of_a_tile_deleted_by_117_meanwhile_creates_it_again(
    tmp_path: Path, region: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = VArraySchema(
        dtype=np.float32, dimensions=[DimensionSchema("y", 8), DimensionSchema("x", 8)], vgrid=(2, 2)
    )
    with Client(f"file://{tmp_path}", write_lock_timeout=30) as client:
        v = client.create_collection("v", schema).create()
        v[:].update(np.zeros((8, 8), dtype=np.float32))
        tid = v._tile_ids()[(0, 0)]
        spec = v._tile_spec(tid, (0, 0))
        symlink = spec.paths.symlink_file("array", spec.symlink, tid)
        assert symlink.is_symlink()
        legacy = subprocess.Popen(
            [sys.executable, str(HELPER), str(spec.main_file), str(symlink)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert legacy.stdout is not None and legacy.stdin is not None
            assert legacy.stdout.readline().strip() == "ACQUIRED"
            bounds = (slice(0, 2), slice(0, 2)) if region == "partial" else (slice(0, 4), slice(0, 4))
            outcome: list[BaseException | None] = []

            def update() -> None:
                try:
                    v[bounds].update(5.0)
                except BaseException as exc:
                    outcome.append(exc)
                else:
                    outcome.append(None)

            refused = refusals_of(spec.main_file, monkeypatch)
            writer = threading.Thread(target=update)
            writer.start()
            wait_until(lambda: outcome or refused.is_set(), "the update to wait for the tile")
            legacy.stdin.write("\n")
            legacy.stdin.flush()
            assert legacy.stdout.readline().strip() == "RELEASED"
            writer.join(60)
            assert outcome == [None], f"the update failed: {outcome}"
        finally:
            if legacy.poll() is None:
                legacy.kill()
            legacy.wait(10)
        expected = np.zeros((8, 8), dtype=np.float32)
        expected[0:4, 0:4] = np.nan  # the deleted tile reads as fill...
        expected[bounds] = 5.0  # ...where the update did not write it again
        np.testing.assert_array_equal(v[:].read(), expected)
        new_tid = v._tile_ids()[(0, 0)]
        assert new_tid != tid
        assert client.check_integrity(4).ok
        assert not any(info.stale for info in client.list_locks())
