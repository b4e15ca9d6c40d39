"""Tests of deker.storage.hdf5: file format, regions, exact empty-cell accounting."""

from __future__ import annotations

import json
import math
import os
import tracemalloc
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from storage_helpers.conformance import assert_same, default_fill, oracle_fill_count

from deker.errors import DekerStorageError
from deker.storage import hdf5
from deker.storage.layout import CollectionPaths

META = b'{"id": "f61df9c1-c07a-48c3-bd57-8a470c80939a", "primary_attributes": {}, "custom_attributes": {}}'
META_DTYPE = f"S{len(META) + 33}"

DTYPES = [
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.float16,
    np.float32,
    np.float64,
    np.complex64,
    np.complex128,
]
if hasattr(np, "float128"):
    DTYPES += [np.float128, np.complex256]


def new_file(tmp_path: Path, shape: tuple[int, ...], name: str = "a.hdf5") -> Path:
    path = tmp_path / "sub" / name
    hdf5.create_array_file(path, META, META_DTYPE, math.prod(shape))
    return path


FULL = (slice(0, 4), slice(0, 5))


# --------------------------------------------------------------------------- format


def test_created_file_format(tmp_path: Path) -> None:
    path = new_file(tmp_path, (4, 5))
    with h5py.File(path, "r", locking=False) as f:
        assert sorted(f.keys()) == ["empty_cells", "meta"]
        assert dict(f.attrs) == {}
        assert f["meta"].shape == () and f["meta"].dtype == np.dtype(META_DTYPE)
        assert f["empty_cells"].shape == () and f["empty_cells"].dtype == np.int64
        assert f["empty_cells"][()] == 20
        assert all(dict(f[k].attrs) == {} for k in f)
    assert hdf5.read_meta(path) == META
    assert hdf5.read_empty_cells(path) == 20
    assert not hdf5.has_data(path)
    assert os.listdir(path.parent) == ["a.hdf5"]  # no temporary file left


def test_create_refuses_existing_file(tmp_path: Path) -> None:
    path = new_file(tmp_path, (4, 5))
    with pytest.raises(FileExistsError):
        hdf5.create_array_file(path, b"{}", "S40", 20)
    assert hdf5.read_meta(path) == META
    assert os.listdir(path.parent) == ["a.hdf5"]


def test_write_meta_in_place_and_resized(tmp_path: Path) -> None:
    path = new_file(tmp_path, (4, 5))
    same = META.replace(b"{}}", b'{"a": 1}}')[: len(META)]
    hdf5.write_meta(path, same, META_DTYPE)
    assert hdf5.read_meta(path) == same
    longer = META + b" " * 100
    hdf5.write_meta(path, longer.strip(), f"S{len(longer) + 33}")
    assert hdf5.read_meta(path) == longer.strip()
    with h5py.File(path, "r", locking=False) as f:
        assert f["meta"].dtype == np.dtype(f"S{len(longer) + 33}")


def test_data_dataset_format_after_write(tmp_path: Path) -> None:
    path = new_file(tmp_path, (4, 5))
    hdf5.write_region(path, (1, slice(0, 2)), np.array([1, 2], np.int16), (4, 5), np.int16(-32768), {})
    with h5py.File(path, "r", locking=False) as f:
        assert sorted(f.keys()) == ["data", "empty_cells", "meta"]
        assert f["data"].dtype == np.int16 and f["data"].shape == (4, 5)
        assert f["data"].fillvalue == -32768
        assert dict(f["data"].attrs) == {} and dict(f.attrs) == {}
        assert f["empty_cells"][()] == 18


def test_missing_and_damaged_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        hdf5.read_meta(tmp_path / "missing.hdf5")
    with pytest.raises(FileNotFoundError):
        hdf5.write_region(tmp_path / "missing.hdf5", (0,), np.int8(1), (1,), 0, {})
    bad = tmp_path / "bad.hdf5"
    bad.write_bytes(b"not an hdf5 file at all" * 10)
    with pytest.raises(DekerStorageError, match=r"bad\.hdf5"):
        hdf5.read_region(bad, (slice(0, 1),), np.int8, 0)
    good = new_file(tmp_path, (10,))
    hdf5.write_region(good, (slice(0, 10),), np.arange(10, dtype=np.int64), (10,), -1, {})
    truncated = tmp_path / "truncated.hdf5"
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(DekerStorageError, match=r"truncated\.hdf5"):
        hdf5.read_region(truncated, (slice(0, 10),), np.int64, -1)
    nometa = tmp_path / "nometa.hdf5"
    with h5py.File(nometa, "w", locking=False):
        pass
    with pytest.raises(DekerStorageError, match=r"nometa\.hdf5"):
        hdf5.read_meta(nometa)


# --------------------------------------------------------------------------- reads and writes


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_round_trip_dtypes(tmp_path: Path, dtype: Any) -> None:
    shape = (4, 5)
    fill = default_fill(dtype)
    path = new_file(tmp_path, shape)
    rng = np.random.default_rng(1)
    data = (rng.random(shape) * 100).astype(dtype)
    if np.dtype(dtype).kind == "c":
        data = data + (1j * data).astype(dtype)
    assert_same(hdf5.read_region(path, FULL, dtype, fill), np.full(shape, fill, dtype))
    hdf5.write_region(path, (slice(1, 3), slice(2, 5)), data[1:3, 2:5], shape, fill, {})
    expected = np.full(shape, fill, dtype)
    expected[1:3, 2:5] = data[1:3, 2:5]
    assert_same(hdf5.read_region(path, FULL, dtype, fill), expected)
    assert hdf5.read_empty_cells(path) == 14
    hdf5.write_region(path, FULL, data, shape, fill, {})
    assert_same(hdf5.read_region(path, FULL, dtype, fill), data)
    assert hdf5.read_empty_cells(path) == 0
    cell = hdf5.read_region(path, (2, 3), dtype, fill)
    assert cell.shape == () and cell == data[2, 3]
    assert_same(hdf5.read_region(path, (slice(0, 4), 1), dtype, fill), data[:, 1])


def test_scalar_broadcast_write_counts_every_cell(tmp_path: Path) -> None:
    shape = (4, 5)
    path = new_file(tmp_path, shape)
    hdf5.write_region(path, (slice(0, 2), slice(0, 5)), np.float64(7.5), shape, np.nan, {})
    assert hdf5.read_empty_cells(path) == 10
    hdf5.write_region(path, (slice(0, 4), slice(0, 1)), np.float64(np.nan), shape, np.nan, {})
    assert hdf5.read_empty_cells(path) == 12
    expected = np.full(shape, np.nan)
    expected[0:2, 1:5] = 7.5
    np.testing.assert_array_equal(hdf5.read_region(path, FULL, np.float64, np.nan), expected)


def test_all_fill_write_creates_no_dataset(tmp_path: Path) -> None:
    path = new_file(tmp_path, (4, 5))
    hdf5.write_region(path, (slice(0, 2), slice(0, 5)), np.full((2, 5), -1, np.int32), (4, 5), -1, {})
    assert not hdf5.has_data(path)
    assert hdf5.read_empty_cells(path) == 20


def test_overwriting_everything_with_fill_drops_data(tmp_path: Path) -> None:
    """SPEC §7.4: 1.1.7 kept the dataset (counter under-estimated); we count exactly."""
    path = new_file(tmp_path, (10,))
    hdf5.write_region(path, (slice(0, 10),), np.arange(10.0), (10,), np.nan, {})
    hdf5.write_region(path, (slice(0, 5),), np.full(5, np.nan), (10,), np.nan, {})
    assert hdf5.read_empty_cells(path) == 5 and hdf5.has_data(path)
    hdf5.write_region(path, (slice(3, 10),), np.full(7, np.nan), (10,), np.nan, {})
    assert hdf5.read_empty_cells(path) == 10
    assert not hdf5.has_data(path)


def test_spec_7_5_clear_of_empty_region_keeps_data(tmp_path: Path) -> None:
    """SPEC §7.5 / §8.1: write 2 cells of 10, clear an empty 5-cell region: nothing is lost."""
    path = new_file(tmp_path, (10,))
    hdf5.write_region(path, (slice(0, 2),), np.array([1.0, 2.0]), (10,), np.nan, {})
    assert hdf5.read_empty_cells(path) == 8
    hdf5.clear_region(path, (slice(5, 10),), (10,), np.nan)
    assert hdf5.has_data(path)
    assert hdf5.read_empty_cells(path) == 8
    np.testing.assert_array_equal(
        hdf5.read_region(path, (slice(0, 3),), np.float64, np.nan), [1.0, 2.0, np.nan]
    )
    hdf5.clear_region(path, (slice(1, 6),), (10,), np.nan)
    assert hdf5.read_empty_cells(path) == 9
    np.testing.assert_array_equal(hdf5.read_region(path, (slice(0, 2),), np.float64, np.nan), [1.0, np.nan])
    hdf5.clear_region(path, (0,), (10,), np.nan)
    assert not hdf5.has_data(path) and hdf5.read_empty_cells(path) == 10
    hdf5.clear_region(path, (slice(0, 10),), (10,), np.nan)  # no data: nothing happens
    assert hdf5.read_empty_cells(path) == 10


def test_full_clear_deletes_data(tmp_path: Path) -> None:
    path = new_file(tmp_path, (4, 5))
    hdf5.write_region(path, FULL, np.ones((4, 5), np.int8), (4, 5), np.int8(-128), {})
    hdf5.clear_region(path, FULL, (4, 5), np.int8(-128))
    assert not hdf5.has_data(path) and hdf5.read_empty_cells(path) == 20


def test_inexact_legacy_counter_never_loses_data(tmp_path: Path) -> None:
    """A deker 1.1.7 file may over-estimate empty_cells; the last partial clear verifies."""
    path = new_file(tmp_path, (10,))
    hdf5.write_region(path, (slice(0, 3),), np.array([1.0, 2.0, 3.0]), (10,), np.nan, {})
    with h5py.File(path, "r+", locking=False) as f:
        f["empty_cells"][()] = 9  # 1.1.7 state after clearing an empty cell: true count is 7
    hdf5.clear_region(path, (0,), (10,), np.nan)  # counter would say 10: verified instead
    assert hdf5.has_data(path)
    assert hdf5.read_empty_cells(path) == 8
    np.testing.assert_array_equal(
        hdf5.read_region(path, (slice(0, 4),), np.float64, np.nan), [np.nan, 2.0, 3.0, np.nan]
    )


def test_complex_nan_fill_counts_both_parts(tmp_path: Path) -> None:
    fill = np.complex128(complex(np.nan, 0))
    path = new_file(tmp_path, (4,))
    data = np.array([complex(np.nan, 0), complex(np.nan, 1), complex(0, np.nan), 1 + 2j])
    hdf5.write_region(path, (slice(0, 4),), data, (4,), fill, {})
    assert hdf5.read_empty_cells(path) == 1
    assert hdf5.count_fill(data, fill) == 1
    hdf5.write_region(path, (slice(1, 4),), np.full(3, fill), (4,), fill, {})
    assert not hdf5.has_data(path)


def test_partial_first_write_touches_only_its_chunks(tmp_path: Path) -> None:
    shape = (100, 100)
    path = new_file(tmp_path, shape)
    hdf5.write_region(path, (slice(0, 5), slice(0, 5)), np.ones((5, 5)), shape, np.nan, {"chunks": (10, 10)})
    with h5py.File(path, "r", locking=False) as f:
        assert f["data"].chunks == (10, 10)
        assert f["data"].id.get_storage_size() == 10 * 10 * 8  # one chunk, not 80 kB
    hdf5.write_region(path, (slice(15, 25), 50), np.ones(10), shape, np.nan, {"chunks": (10, 10)})
    with h5py.File(path, "r", locking=False) as f:
        assert f["data"].id.get_storage_size() == 3 * 800
    assert hdf5.read_empty_cells(path) == 10000 - 35


def test_first_write_and_empty_read_allocate_only_the_selection(tmp_path: Path) -> None:
    shape = (2000, 2000)  # 32 MB of float64
    path = new_file(tmp_path, shape)
    tracemalloc.start()
    try:
        piece = hdf5.read_region(path, (slice(0, 10), slice(0, 10)), np.float64, np.nan)
        hdf5.write_region(path, (slice(0, 10), slice(0, 10)), np.ones((10, 10)), shape, np.nan, {})
        hdf5.write_region(path, (slice(5, 15), slice(0, 10)), np.ones((10, 10)), shape, np.nan, {})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert piece.shape == (10, 10)
    assert peak < 2_000_000
    assert hdf5.read_empty_cells(path) == 4_000_000 - 150


@pytest.mark.parametrize(
    "kwargs",
    [
        {"chunks": (5, 5), "compression": "gzip", "compression_opts": 4},
        {"chunks": (5, 5), **hdf5plugin.Zstd(clevel=3)},
    ],
    ids=["gzip", "zstd"],
)
def test_compression(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    shape = (10, 10)
    path = new_file(tmp_path, shape)
    data = np.arange(100, dtype=np.complex128).reshape(shape)
    hdf5.write_region(path, (slice(0, 10), slice(0, 10)), data, shape, np.nan, kwargs)
    with h5py.File(path, "r", locking=False) as f:
        assert f["data"].chunks == (5, 5)
        if kwargs.get("compression") == "gzip":
            assert f["data"].compression == "gzip" and f["data"].compression_opts == 4
        else:
            assert "32015" in f["data"]._filters
    assert_same(hdf5.read_region(path, (slice(0, 10), slice(0, 10)), np.complex128, np.nan), data)


def test_out_reads(tmp_path: Path) -> None:
    shape = (4, 5)
    path = new_file(tmp_path, shape)
    out = np.zeros((2, 5))
    assert hdf5.read_region(path, (slice(0, 2), slice(0, 5)), np.float64, np.nan, out=out) is out
    assert np.isnan(out).all()
    data = np.arange(20.0).reshape(shape)
    hdf5.write_region(path, FULL, data, shape, np.nan, {})
    big = np.zeros((6, 5))
    window = big[1:3]  # C-contiguous view into a larger buffer: read straight into it
    assert window.flags.c_contiguous and window.base is big
    assert hdf5.read_region(path, (slice(1, 3), slice(0, 5)), np.float64, np.nan, out=window) is window
    np.testing.assert_array_equal(big[1:3], data[1:3])
    row = hdf5.read_region(path, (2, slice(0, 5)), np.float64, np.nan, out=big[4])
    np.testing.assert_array_equal(row, data[2])
    np.testing.assert_array_equal(big[4], data[2])
    assert (big[0] == 0).all() and (big[3] == 0).all()
    contiguous = np.empty((4, 5))
    assert hdf5.read_region(path, FULL, np.float64, np.nan, out=contiguous) is contiguous
    np.testing.assert_array_equal(contiguous, data)
    column = np.empty((4, 3))[:, 1]  # strided: falls back to assignment
    hdf5.read_region(path, (slice(0, 4), 2), np.float64, np.nan, out=column)
    np.testing.assert_array_equal(column, data[:, 2])


def test_zero_size_selection(tmp_path: Path) -> None:
    path = new_file(tmp_path, (4, 5))
    hdf5.write_region(path, (slice(2, 2), slice(0, 5)), np.empty((0, 5)), (4, 5), np.nan, {})
    assert not hdf5.has_data(path)
    assert hdf5.read_region(path, (slice(2, 2), slice(0, 5)), np.float64, np.nan).shape == (0, 5)


# --------------------------------------------------------------------------- property test


@st.composite
def operations(draw: st.DrawFn) -> tuple[Any, list[tuple[Any, ...]]]:
    dtype = draw(st.sampled_from([np.int16, np.uint8, np.float32, np.complex64]))
    ops = []
    for _ in range(draw(st.integers(1, 8))):
        bounds = []
        for size in (4, 5):
            if draw(st.booleans()):
                start = draw(st.integers(0, size - 1))
                bounds.append(slice(start, draw(st.integers(start + 1, size))))
            else:
                bounds.append(draw(st.integers(0, size - 1)))
        kind = draw(st.sampled_from(["array", "scalar", "fill", "clear"]))
        ops.append((kind, tuple(bounds), draw(st.integers(0, 2**32 - 1))))
    return dtype, ops


@settings(max_examples=60, deadline=None)
@given(operations())
def test_exact_empty_cells_against_numpy(tmp_path_factory: pytest.TempPathFactory, case: Any) -> None:
    dtype, ops = case
    shape = (4, 5)
    fill = default_fill(dtype)
    path = new_file(tmp_path_factory.mktemp("prop"), shape)
    oracle = np.full(shape, fill, dtype)
    kwargs = {"chunks": (2, 2)} if dtype == np.float32 else {}
    for kind, bounds, seed in ops:
        region_shape = oracle[bounds].shape
        rng = np.random.default_rng(seed)
        if kind == "clear":
            hdf5.clear_region(path, bounds, shape, fill)
            oracle[bounds] = fill
            continue
        if kind == "scalar":
            value: Any = np.asarray(rng.integers(0, 3), dtype=dtype)[()]
        else:
            value = rng.integers(0, 3, size=region_shape).astype(dtype)
            if kind == "fill" or rng.random() < 0.5:
                mask = rng.random(region_shape) < 0.5
                value[mask] = fill
        hdf5.write_region(path, bounds, value, shape, fill, kwargs)
        oracle[bounds] = value
    expected_empty = oracle_fill_count(oracle, fill)
    assert hdf5.read_empty_cells(path) == expected_empty
    assert hdf5.has_data(path) == (expected_empty < oracle.size)
    assert_same(hdf5.read_region(path, (slice(0, 4), slice(0, 5)), dtype, fill), oracle)


# --------------------------------------------------------------------------- deker 1.1.7 files


def test_reads_deker_1_1_7_arrays(legacy_storage: Path, fixtures_dir: Path) -> None:
    manifest = json.loads((fixtures_dir / "manifest.json").read_text())
    checked = 0
    for name, coll in manifest["collections"].items():
        if coll["kind"] != "Array":
            continue
        paths = CollectionPaths(legacy_storage / "collections", name)
        for array in coll["arrays"]:
            if "expected" not in array:
                continue
            expected = np.load(fixtures_dir / array["expected"])
            path = paths.main_file("array", array["id"])
            meta = json.loads(hdf5.read_meta(path))
            assert meta["id"] == array["id"]
            bounds = tuple(slice(0, n) for n in expected.shape)
            fill = expected.flat[0] if not hdf5.has_data(path) else coll.get("fill_value", np.nan)
            assert_same(hdf5.read_region(path, bounds, expected.dtype, fill), expected)
            checked += 1
    assert checked >= 4
