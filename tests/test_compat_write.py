"""A storage written by this project reads identically in deker 1.1.7 (installed in a throwaway
virtual environment: ``deker==1.1.7 'numpy<2'``), and passes its ``check_integrity(4)``.

The legacy venv is built once in a cache folder outside the checkout (``tests/legacy/venv.py``,
the ``legacy_python`` fixture); building it needs PyPI, and the test skips with the reason where
it cannot be built.
"""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import hdf5plugin
import numpy as np
import pytest
from legacy.venv import clean_env

from deker import (
    ArraySchema,
    AttributeSchema,
    Client,
    DimensionSchema,
    HDF5CompressionOpts,
    HDF5Options,
    TimeDimensionSchema,
    VArraySchema,
)

ROOT = Path(__file__).resolve().parents[1]


def write_storage(root: Path) -> dict[str, np.ndarray]:
    expected: dict[str, np.ndarray] = {}
    day = datetime(2023, 3, 1, tzinfo=timezone.utc)
    with Client(f"file://{root}") as client:
        weather = client.create_collection(
            "weather",
            ArraySchema(
                dtype=np.float64,
                dimensions=[
                    TimeDimensionSchema(name="t", size=6, start_value="$dt", step=timedelta(hours=1)),
                    DimensionSchema(
                        name="y", size=5, scale={"start_value": 10.0, "step": -0.5, "name": "lat"}
                    ),
                    DimensionSchema(name="w", size=3, labels=["a", "b", "c"]),
                ],
                attributes=[
                    AttributeSchema(name="dt", dtype=datetime, primary=True),
                    AttributeSchema(name="n", dtype=int, primary=False),
                    AttributeSchema(name="where", dtype=tuple, primary=False),
                ],
            ),
        )
        for k in range(2):
            arr = weather.create({"dt": day + timedelta(days=k)}, {"n": k, "where": (1, 2.5, "x")})
            data = np.full(arr.shape, np.nan)
            if k == 0:
                data[1:4, :, 1:] = np.arange(3 * 5 * 2).reshape(3, 5, 2)
                arr[1:4, :, 1:].update(data[1:4, :, 1:])
                arr.update_custom_attributes({"n": 10})
            expected[f"weather__{arr.id}"] = data
        tiles = client.create_collection(
            "tiles",
            VArraySchema(
                dtype=np.int16,
                dimensions=[DimensionSchema(name="y", size=12), DimensionSchema(name="x", size=16)],
                vgrid=(3, 4),
                attributes=[
                    AttributeSchema(name="name", dtype=str, primary=True),
                    AttributeSchema(name="version", dtype=int, primary=True),
                ],
            ),
        )
        v = tiles.create({"name": "alpha", "version": 1})
        data = np.full((12, 16), np.iinfo(np.int16).min, dtype=np.int16)
        block = (np.arange(7 * 9) % 500).astype(np.int16).reshape(7, 9)
        v[2:9, 3:12].update(block)
        data[2:9, 3:12] = block
        v[0:4, 0:8].clear()
        data[0:4, 0:8] = np.iinfo(np.int16).min
        expected[f"tiles__{v.id}"] = data
        comp = client.create_collection(
            "zstd",
            VArraySchema(
                dtype=np.complex128,
                dimensions=[
                    TimeDimensionSchema(name="t", size=6, start_value=day, step=timedelta(minutes=30)),
                    DimensionSchema(name="band", size=4, labels=["b1", "b2", "b3", "b4"]),
                ],
                arrays_shape=(3, 2),
            ),
            HDF5Options(chunks=True, compression_opts=HDF5CompressionOpts(**hdf5plugin.Zstd(3))),
        )
        z = comp.create()
        data = np.full((6, 4), np.nan + 0j)
        data[1:5, 1:4] = (np.arange(12) + 1j).reshape(4, 3)
        z[1:5, 1:4].update(data[1:5, 1:4])
        expected[f"zstd__{z.id}"] = data
        gz = client.create_collection(
            "gzip",
            ArraySchema(
                dtype=np.uint8,
                dimensions=[DimensionSchema(name="a", size=10), DimensionSchema(name="b", size=10)],
                fill_value=255,
            ),
            HDF5Options(chunks=(5, 5), compression_opts=HDF5CompressionOpts("gzip", 4)),
        )
        g = gz.create()
        data = np.full((10, 10), 255, dtype=np.uint8)
        data[2:7, 3:9] = 7
        g[2:7, 3:9].update(np.uint8(7))
        expected[f"gzip__{g.id}"] = data
        # whole tiles and arrays written with their chunks encoded by deker (chunkcodec), not by HDF5
        codecs = {
            "gzip": HDF5CompressionOpts("gzip", 5),
            "zstd": HDF5CompressionOpts(**hdf5plugin.Zstd(5)),
            "blosc": HDF5CompressionOpts(**hdf5plugin.Blosc("zstd", 4, hdf5plugin.Blosc.SHUFFLE)),
            "lz4": HDF5CompressionOpts(**hdf5plugin.LZ4()),
        }
        for name, opts in codecs.items():
            whole = client.create_collection(
                f"whole_{name}",
                VArraySchema(
                    dtype=np.float32,
                    dimensions=[DimensionSchema(name="y", size=12), DimensionSchema(name="x", size=10)],
                    vgrid=(2, 2),
                    fill_value=-1.0,
                ),
                HDF5Options(chunks=(4, 3), compression_opts=opts),  # edge chunks in every tile
            )
            w = whole.create()
            data = (np.arange(120, dtype=np.float32).reshape(12, 10) % 17) / 4
            w[:].update(data)
            expected[f"whole_{name}__{w.id}"] = data
        client.create_collection(
            "empty", ArraySchema(dtype=np.int32, dimensions=[DimensionSchema(name="i", size=3)])
        )
    return expected


@pytest.mark.slow
def test_deker_117_reads_what_we_write(tmp_path: Path, legacy_python: Path) -> None:
    python = legacy_python
    storage = tmp_path / "storage"
    expected = write_storage(storage)
    out = tmp_path / "out"
    proc = subprocess.run(
        [str(python), str(ROOT / "tests/legacy/read_with_117.py"), str(storage), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=clean_env(),  # the venv's own deker 1.1.7, whatever PYTHONPATH this run has
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    assert report["integrity"] == "ok"
    seen = {p.stem for p in out.glob("*.npy")}
    assert seen == set(expected)
    for key, data in expected.items():
        got = np.load(out / f"{key}.npy")
        assert got.dtype == data.dtype, key
        np.testing.assert_array_equal(got, data, err_msg=key)
    weather = report["collections"]["weather"]["objects"]
    customs = sorted((o["custom"]["n"], o["custom"]["where"]) for o in weather.values())
    assert customs == [(1, [1, 2.5, "x"]), (10, [1, 2.5, "x"])]
    assert all(
        o.get("found_by_key", True) for c in report["collections"].values() for o in c["objects"].values()
    )
