"""Storages written by deker 1.1.7 open and read exactly (SPEC §10 "must match").

The fixture storage is unpacked into a temporary folder, so its absolute symlinks dangle: every
lookup must locate files from ids, never from symlink targets.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deker import Array, Client, VArray
from deker.types import to_utc


@pytest.fixture(scope="module")
def manifest(fixtures_dir: Path) -> dict[str, Any]:
    return json.loads((fixtures_dir / "manifest.json").read_text())


@pytest.fixture()
def client(legacy_storage: Path, tmp_path: Path):
    # a private copy: reading takes locks (lock files), and tests must not share state
    dest = tmp_path / "storage"
    shutil.copytree(legacy_storage, dest, symlinks=True)
    with Client(f"file://{dest}") as c:
        yield c


def _entries(manifest: dict[str, Any]):
    for name, coll in manifest["collections"].items():
        for entry in coll.get("arrays", []) + coll.get("varrays", []):
            yield name, coll["kind"], entry


def _typed(value: Any, current: Any) -> Any:
    if isinstance(current, datetime):
        return to_utc(value)
    if isinstance(current, tuple):
        return tuple(value)
    return value


def test_every_collection_opens(client: Client, manifest: dict[str, Any]) -> None:
    names = sorted(c.name for c in client)
    assert names == sorted(manifest["collections"])
    for name in names:
        coll = client.get_collection(name)
        assert coll is not None and coll.name == name


@pytest.mark.parametrize(
    "coll_name", ["weather", "tiles", "compressed", "zstd_complex", "uint8_cube", "empty"]
)
def test_arrays_read_exactly(
    client: Client, manifest: dict[str, Any], fixtures_dir: Path, coll_name: str
) -> None:
    info = manifest["collections"][coll_name]
    coll = client.get_collection(coll_name)
    assert coll is not None
    entries = info.get("arrays", []) + info.get("varrays", [])
    objects = list(coll)
    assert sorted(o.id for o in objects) == sorted(e["id"] for e in entries)
    for entry in entries:
        obj = coll.filter({"id": entry["id"]}).last()
        assert obj is not None, entry["id"]
        assert isinstance(obj, VArray if info["kind"] == "VArray" else Array)
        expected = np.load(fixtures_dir / entry["expected"])
        data = obj[:].read()
        assert data.dtype == expected.dtype
        np.testing.assert_array_equal(data, expected)
        primary = entry.get("primary_attributes", {})
        for key, value in primary.items():
            assert _typed(value, obj.primary_attributes[key]) == obj.primary_attributes[key]
        if primary:
            by_key = coll.filter(dict(obj.primary_attributes)).last()
            assert by_key is not None and by_key.id == obj.id
        for key, value in entry.get("custom_attributes", {}).items():
            current = obj.custom_attributes[key]
            assert (_typed(value, current) if value is not None else None) == current


def test_varray_geometry(client: Client, manifest: dict[str, Any]) -> None:
    for name in ("tiles", "zstd_complex"):
        info = manifest["collections"][name]
        coll = client.get_collection(name)
        assert coll is not None and coll.varray_schema is not None
        assert list(coll.varray_schema.vgrid) == info["vgrid"]
        assert list(coll.varray_schema.arrays_shape) == info["arrays_shape"]
        for varray in coll.varrays:
            assert varray.vgrid == tuple(info["vgrid"])


def test_lookup_by_primary_key_coerces_values(client: Client) -> None:
    coll = client.get_collection("uint8_cube")
    assert coll is not None
    found = coll.filter({"station": 42, "level": 1.5}).last()
    assert found is not None and found.id == "d841b28e-34b3-41e4-8f53-195665e1a311"
    assert coll.filter({"station": 43, "level": 0.0}).last() is None  # created and deleted by 1.1.7
    weather = client.get_collection("weather")
    assert weather is not None
    hit = weather.filter({"dt": "2023-01-02T00:00:00+00:00"}).last()
    assert hit is not None and hit.id == "50084d3f-0ba7-4033-929c-ad7ba4b4ca45"


def test_weather_labels_scales_and_time(client: Client, fixtures_dir: Path) -> None:
    coll = client.get_collection("weather")
    assert coll is not None
    arr = coll.filter({"id": "9243f340-261e-4fa2-b609-c70e774fa523"}).last()
    assert arr is not None
    expected = np.load(fixtures_dir / "expected/weather_0.npy")
    # time value, scale value (0.25 step), label
    got = arr["2023-01-01T05:00:00", 89.0, -179.5, "pressure"].read()
    assert got == expected[5, 1, 2, 2]
    description = arr[0:2, 0, 0:3, "humidity"].describe()
    assert list(description) == ["day_hours", "y", "x", "weather"]
    assert description["x"] == [-180.0, -179.75, -179.5]
    assert description["weather"] == ["humidity"]
