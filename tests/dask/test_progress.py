"""deker_dask.progress: bars for store / store_xarray on a terminal, silence elsewhere or when asked.

The terminal is a real pseudo-terminal: a subprocess runs stores with its stderr on the pty's
slave end (and, for the other case, on a pipe); nothing fakes ``isatty``.  ``progress=True``
is checked in-process (the bar then goes to the captured stderr) on the local schedulers and on
the session's cluster, where the tasks are followed through their futures.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pytest
import xarray as xr

import deker_dask
from deker import Client, DimensionSchema, VArraySchema
from deker.errors import DekerValidationError
from deker_dask.progress import progress_enabled

SCRIPT = """
import sys
import dask.array as da
import numpy as np
import deker_dask
from deker import Client, DimensionSchema, VArraySchema

with Client(sys.argv[1]) as client:
    schema = VArraySchema(dtype=np.int32, dimensions=[DimensionSchema("x", 8)], vgrid=(4,))
    v = client.create_collection("c", schema).create()
    for progress in (None, False, True):
        sys.stderr.write(f"<{progress}>")
        sys.stderr.flush()
        deker_dask.store(da.ones(8, dtype=np.int32, chunks=2), v, progress=progress, scheduler="sync")
    sys.stderr.write("<end>")
    assert v[:].read().tolist() == [1] * 8
"""


def _sections(text: str) -> dict[str, str]:
    out = {}
    for name, nxt in (("None", "False"), ("False", "True"), ("True", "end")):
        out[name] = text.split(f"<{name}>", 1)[1].split(f"<{nxt}>", 1)[0]
    return out


def _run(tmp_path: Path, terminal: bool) -> str:
    script = tmp_path / "stores.py"
    script.write_text(SCRIPT)
    args = [sys.executable, str(script), f"file://{tmp_path / 'storage'}"]
    if not terminal:
        proc = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stderr
    master, slave = os.openpty()
    with subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave) as proc:
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        os.close(master)
        assert proc.wait(timeout=120) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


def test_a_terminal_shows_a_bar_unless_asked_not_to(tmp_path: Path) -> None:
    parts = _sections(_run(tmp_path, terminal=True))
    assert "deker store" in parts["None"] and "/4" in parts["None"]  # one task per tile
    assert parts["False"] == ""
    assert "deker store" in parts["True"]


def test_a_pipe_stays_silent_unless_asked(tmp_path: Path) -> None:
    parts = _sections(_run(tmp_path, terminal=False))
    assert parts["None"] == "" and parts["False"] == ""
    assert "deker store" in parts["True"]


def test_progress_enabled_switch() -> None:
    assert progress_enabled(True) and not progress_enabled(False)


@pytest.fixture()
def varray(tmp_path: Path) -> Any:
    with Client(f"file://{tmp_path / 'storage'}") as client:
        schema = VArraySchema(
            dtype=np.float32, dimensions=[DimensionSchema("y", 6), DimensionSchema("x", 8)], vgrid=(3, 4)
        )
        yield client.create_collection("c", schema).create()


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_bar_counts_the_tiles_on_local_schedulers(
    varray: Any, scheduler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    deker_dask.store(da.ones((6, 8), dtype="f4", chunks=(2, 2)), varray, progress=True, scheduler=scheduler)
    err = capsys.readouterr().err
    assert "deker store" in err and "12/12" in err
    assert varray[:].read().sum() == 48


def test_bar_on_a_cluster_and_errors_still_raise(
    varray: Any, dask_cluster_client: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    deker_dask.store(
        da.full((6, 8), 2, dtype="f4", chunks=(2, 2)), varray, progress=True, scheduler=dask_cluster_client
    )
    err = capsys.readouterr().err
    assert "deker store" in err and "/12" in err
    assert varray[:].read().sum() == 96

    def boom(block: np.ndarray) -> np.ndarray:
        raise ValueError("injected")

    failing = da.ones((6, 8), dtype="f4", chunks=(2, 2)).map_blocks(boom, dtype="f4")
    with pytest.raises(ValueError, match="injected"):
        deker_dask.store(failing, varray, progress=True, scheduler=dask_cluster_client)


def test_store_xarray_shows_progress_when_asked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arr = xr.DataArray(np.ones((6, 8), dtype="f4"), dims=("y", "x"))
    with Client(f"file://{tmp_path / 'other'}") as client:
        collection = client.create_collection("c", deker_dask.schema_from_xarray(arr, vgrid=(2, 2)))
        deker_dask.store_xarray(arr, collection, progress=True, scheduler="sync")
        assert "4/4" in capsys.readouterr().err
        deker_dask.store_xarray(arr, collection, progress=False, scheduler="sync")
        assert capsys.readouterr().err == ""


def test_a_progress_that_is_not_a_bool_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    arr = xr.DataArray(np.ones((6, 8), dtype="f4"), dims=("y", "x"))
    with Client(f"file://{tmp_path / 'storage'}") as client:
        collection = client.create_collection("c", deker_dask.schema_from_xarray(arr, vgrid=(2, 2)))
        target = collection.create()
        with pytest.raises(DekerValidationError, match="progress must be True, False or None, not 'yes'"):
            deker_dask.store(da.ones((6, 8), dtype="f4"), target, progress="yes")  # type: ignore[arg-type]
        assert target.tiles.ids() == {}  # (it used to count as True and write)
        with pytest.raises(DekerValidationError, match="progress must be"):
            deker_dask.store_xarray(arr, collection, progress=1, scheduler="sync")  # type: ignore[arg-type]
        assert [a.id for a in collection] == [target.id]  # no VArray was created
