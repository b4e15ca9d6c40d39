"""The fast paths found by the benchmarks (issue 6) return exactly what the slow paths return.

- ``deker.storage.rawio``: regions of contiguous datasets read with ``preadv`` (into fresh
  arrays and into views of bigger ones), and the layout cache that skips opening a settled file
  with h5py (and notices every change of the file);
- ``deker.storage.templates``: new array files copied from a per-process byte image;
- lookups by primary key that read the custom attributes only when they are used;
- ``records.tile_ids`` for a few positions; ``check_memory`` for small results.
"""

from __future__ import annotations

import os
import pickle
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
from deker.errors import DekerMemoryError
from deker.records import tile_ids
from deker.sizes import check_memory
from deker.storage import hdf5, rawio, templates
from deker.storage.journal import journal_path

Bounds = tuple[Any, ...]


def _dataset(path: Path, data: np.ndarray, **kwargs: Any) -> None:
    with h5py.File(path, "w") as handle:
        handle.create_dataset("data", data=data, **kwargs)


def _random_bounds(rng: np.random.Generator, shape: tuple[int, ...]) -> Bounds:
    bounds: list[Any] = []
    for size in shape:
        if rng.random() < 0.2:
            bounds.append(int(rng.integers(0, size)))
        else:
            start = int(rng.integers(0, size))
            bounds.append(slice(start, int(rng.integers(start + 1, size + 1))))
    return tuple(bounds)


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((37, 53), "<f8"), ((6, 17, 29), "<f4"), ((1000,), "<i2"), ((5, 4, 3, 11), "<c16"), ((40, 40), "<u8")],
)
def test_preadv_reads_equal_hdf5_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shape: tuple[int, ...], dtype: str
) -> None:
    monkeypatch.setattr(rawio, "MIN_BYTES", 0)  # every region takes the preadv path
    rng = np.random.default_rng(len(shape))
    data = (rng.random(shape) * 1000).astype(dtype)
    path = tmp_path / "a.h5"
    _dataset(path, data)
    with h5py.File(path, "r") as handle:
        dataset = handle["data"]
        assert rawio.contiguous_offset(dataset) is not None
        for _ in range(60):
            bounds = _random_bounds(rng, shape)
            want = data[bounds]
            fresh = np.empty(np.shape(want), dtype=data.dtype)
            assert rawio.read_region_into(handle, dataset, bounds, fresh)
            assert np.array_equal(fresh, want)
            if fresh.ndim:  # into a view of a bigger array, as VArray reads do
                big = np.zeros(tuple(s + 3 for s in fresh.shape), dtype=data.dtype)
                view = big[tuple(slice(1, 1 + s) for s in fresh.shape)]
                if view.strides[-1] == view.itemsize:
                    assert rawio.read_region_into(handle, dataset, bounds, view)
                    assert np.array_equal(view, want)
                    view[...] = 0
                    assert not big.any()  # nothing written outside the view


def test_preadv_refuses_what_it_cannot_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rawio, "MIN_BYTES", 0)
    data = np.arange(64 * 64, dtype="<f4").reshape(64, 64)
    cases = {
        "chunked": {"chunks": (16, 16)},
        "compressed": {"chunks": (16, 16), "compression": "gzip"},
        "big-endian": {"dtype": ">f4"},
    }
    for name, kwargs in cases.items():
        path = tmp_path / f"{name}.h5"
        _dataset(path, data, **kwargs)
        with h5py.File(path, "r") as handle:
            out = np.empty((64, 64), dtype=handle["data"].dtype)
            assert not rawio.read_region_into(handle, handle["data"], (slice(0, 64), slice(0, 64)), out), name
        got = hdf5.read_region(path, (slice(3, 40), 7), np.dtype("<f4"), np.nan)  # the HDF5 path
        assert np.array_equal(got, data[3:40, 7]), name
    with h5py.File(tmp_path / "compressed.h5", "r") as handle:
        out = np.empty((64, 32), dtype="<f4")[:, ::2]  # rows not contiguous
        assert not rawio.read_region_into(handle, handle["data"], (slice(0, 64), slice(0, 16)), out)


def _settle(path: Path, settled_ns: int) -> None:
    """Wait until the file's last change is older than ``settled_ns`` (time must pass)."""
    st = os.stat(path)
    while time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < settled_ns:
        time.sleep(0.01)


@pytest.fixture
def quick_settle(monkeypatch: pytest.MonkeyPatch) -> int:
    rawio.forget()
    settled = 50_000_000  # 50 ms: far above any filesystem clock tick
    monkeypatch.setattr(rawio, "SETTLED_NS", settled)
    return settled


def test_layout_cache_serves_settled_files_and_notices_changes(tmp_path: Path, quick_settle: int) -> None:
    with Client(tmp_path.as_uri()) as client:
        schema = ArraySchema(
            dtype=np.float32, dimensions=[DimensionSchema("y", 64), DimensionSchema("x", 64)], fill_value=-1.0
        )
        array = client.create_collection("c", schema).create()
        path = Path(array._main_file)
        full = np.full((64, 64), -1.0, dtype=np.float32)
        _settle(path, quick_settle)
        assert np.array_equal(array[:].read(), full)  # through HDF5: no data yet, remembered
        assert rawio.read_cached(path, (2, slice(0, 5)), np.dtype(np.float32), -1.0) is not None
        expected = full.copy()
        steps = [
            ((slice(0, 10), slice(0, 64)), 1.0),  # the first data: appended in place
            ((slice(5, 20), slice(3, 9)), 2.0),  # a partial write under the journal
            ((slice(0, 64), slice(0, 64)), 3.0),  # a whole new version renamed into place
        ]
        for sel, value in steps:
            array[sel].update(np.full(expected[sel].shape, value, dtype=np.float32))
            expected[sel] = value
            assert np.array_equal(array[:].read(), expected)  # the stamps changed: HDF5 again
            _settle(path, quick_settle)
            assert np.array_equal(array[:].read(), expected)  # remembered now
            assert np.array_equal(array[7, 2:50].read(), expected[7, 2:50])  # served by the cache
            assert rawio.read_cached(path, (7, slice(2, 50)), np.dtype(np.float32), -1.0) is not None
        array[0:64, 0:32].clear()
        expected[:, :32] = -1.0
        assert np.array_equal(array[:].read(), expected)


def test_layout_cache_skips_fresh_files_and_journals(tmp_path: Path, quick_settle: int) -> None:
    path = tmp_path / "a.hdf5"
    data = np.arange(100, dtype=np.float64).reshape(10, 10)
    _dataset(path, data)
    rawio.SETTLED_NS = 10**12  # type: ignore[misc]  (restored by monkeypatch)
    hdf5.read_region(path, (slice(0, 10), slice(0, 10)), np.float64, np.nan)
    assert rawio.read_cached(path, (1, slice(0, 3)), np.dtype(np.float64), np.nan) is None  # not settled
    rawio.SETTLED_NS = quick_settle  # type: ignore[misc]
    _settle(path, quick_settle)
    hdf5.read_region(path, (slice(0, 10), slice(0, 10)), np.float64, np.nan)
    got = rawio.read_cached(path, (1, slice(0, 3)), np.dtype(np.float64), np.nan)
    assert got is not None and np.array_equal(got, data[1, 0:3])
    journal_path(path).write_bytes(b"")  # as if a write had been interrupted: read through HDF5
    assert rawio.read_cached(path, (1, slice(0, 3)), np.dtype(np.float64), np.nan) is None
    assert np.array_equal(hdf5.read_region(path, (1, slice(0, 3)), np.float64, np.nan), data[1, 0:3])


@pytest.mark.parametrize("length", [1, 40, 151, 4000])
def test_template_files_are_the_bytes_h5py_writes(tmp_path: Path, length: int) -> None:
    meta = (b'{"id": "x", "pad": "' + b"z" * length + b'"}')[: max(length, 12)]
    dtype = f"S{len(meta) + 3}"  # a longer type: the value is NUL-padded
    image = templates.empty_array_image(meta, dtype, 12345)
    assert image is not None
    by_h5py = tmp_path / "h5py.hdf5"
    with h5py.File(by_h5py, "w", locking=False) as handle:
        handle.create_dataset("meta", data=np.array(meta, dtype=dtype))
        handle.create_dataset("empty_cells", data=np.int64(12345))
    assert image == by_h5py.read_bytes()
    made = tmp_path / "made.hdf5"
    hdf5.create_array_file(made, meta, dtype, 12345)
    assert made.read_bytes() == image
    assert hdf5.read_meta(made) == meta and hdf5.read_empty_cells(made) == 12345


@settings(max_examples=40, deadline=None)
@given(
    dtype=st.sampled_from(
        ["int8", "uint16", "int32", "int64", "float16", "float32", "float64", "complex64", "complex128"]
    ),
    shape=st.lists(st.integers(1, 9), min_size=1, max_size=3).map(tuple),
    fill=st.sampled_from([0, -1, 7, float("nan")]),
    extra=st.integers(0, 60),
    seed=st.integers(0, 2**16),
)
def test_data_templates_make_what_h5py_reads_as_written(
    tmp_path_factory: pytest.TempPathFactory,
    dtype: str,
    shape: tuple[int, ...],
    fill: float,
    extra: int,
    seed: int,
) -> None:
    """A file built from a data template reads back (with h5py) exactly like one h5py wrote."""
    np_dtype = np.dtype(dtype)
    if np_dtype.kind in "iu" and fill != fill:  # NaN fill exists for inexact dtypes only
        fill = -1
    if np_dtype.kind == "u" and fill == -1:
        fill = 7
    folder = tmp_path_factory.mktemp("tpl")
    rng = np.random.default_rng(seed)
    values = (rng.integers(-50, 50, size=shape) * 1.5).astype(np_dtype)
    meta = b'{"id": "' + b"m" * extra + b'"}'
    meta_dtype = f"S{len(meta) + extra % 7}"
    parts = templates.data_array_parts(meta, meta_dtype, 3, shape, np_dtype, fill)
    assert parts is not None
    made = folder / "made.hdf5"
    made.write_bytes(parts[0] + np.ascontiguousarray(values).tobytes() + parts[1])
    by_h5py = folder / "h5py.hdf5"
    with h5py.File(by_h5py, "w", locking=False) as handle:
        handle.create_dataset("meta", data=np.array(meta, dtype=meta_dtype))
        handle.create_dataset("empty_cells", data=np.int64(3))
        handle.create_dataset("data", data=values, fillvalue=np.asarray(fill, dtype=np_dtype)[()])
    with h5py.File(made, "r") as a, h5py.File(by_h5py, "r") as b:
        assert bytes(a["meta"][()]) == bytes(b["meta"][()]) == meta
        assert a["meta"].dtype == b["meta"].dtype
        assert a["empty_cells"][()] == 3
        assert a["data"].dtype == b["data"].dtype and a["data"].shape == shape
        assert a["data"].chunks is None and a["data"].compression is None
        np.testing.assert_array_equal(a["data"][...], values)
        assert np.array_equal(
            np.asarray(a["data"].fillvalue), np.asarray(b["data"].fillvalue), equal_nan=True
        )
    got = hdf5.read_region(made, tuple(slice(0, n) for n in shape), np_dtype, fill)
    assert np.array_equal(got, values)


def test_data_templates_decline_what_they_cannot_write(tmp_path: Path) -> None:
    assert templates.data_array_parts(b"{}", "S4", 0, (3,), np.dtype(bool), False) is None  # an HDF5 enum
    assert templates.data_array_parts(b"{}", "S4", 0, (3,), np.dtype(">f8"), 0.0) is None  # not native
    assert templates.data_array_parts(b"{}", "S4", 0, (0, 3), np.dtype("f8"), 0.0) is None  # no cells
    assert templates.data_array_parts(b"{}", "S4", 0, (3,), np.dtype("i4"), float("nan")) is None
    assert templates.data_array_parts(b"{}" * 4, "S4", 0, (3,), np.dtype("f8"), 0.0) is None  # meta too long


def test_full_tiles_of_a_new_varray_are_created_with_their_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing tile covered entirely is written once, at its creation; others as before."""
    writes: list[Any] = []
    real = hdf5.write_region

    def counting(path: Path, bounds: Any, *args: Any, **kwargs: Any) -> None:
        writes.append(bounds)
        real(path, bounds, *args, **kwargs)

    monkeypatch.setattr(hdf5, "write_region", counting)
    schema = VArraySchema(
        dtype=np.float32, dimensions=[DimensionSchema("y", 8), DimensionSchema("x", 12)], vgrid=(2, 3)
    )
    values = np.arange(96, dtype=np.float32).reshape(8, 12)
    with Client(f"file://{tmp_path}") as client:
        varray = client.create_collection("v", schema).create()
        varray[0:4, :].update(values[0:4])  # three whole tiles, all missing
        assert writes == []
        coll = client.get_collection("v")
        assert coll is not None
        assert sorted(tile_ids(client.storage_context.root, coll._meta, varray.id)) == [
            (0, 0),
            (0, 1),
            (0, 2),
        ]
        # tiles of 4 x 4: (0, 0) and (0, 1) exist (written in part), (1, 0) is missing and
        # covered, (1, 1) is missing and written in part: created empty, then written
        varray[2:8, 0:6].update(values[2:8, 0:6] + 1)
        assert len(writes) == 3
        varray[:].update(values)  # (1, 2) is created with its data; the five others are written
        assert len(writes) == 8
        np.testing.assert_array_equal(varray[:].read(), values)
        assert client.check_integrity(4, stop_on_error=False).problems == []


def _meta_collection(client: Client) -> Any:
    schema = ArraySchema(
        dtype=np.float32,
        dimensions=[
            TimeDimensionSchema(name="t", size=4, start_value="$start", step=timedelta(hours=1)),
            DimensionSchema("x", 3),
        ],
        attributes=[
            AttributeSchema("station", int, primary=True),
            AttributeSchema("day", datetime, primary=True),
            AttributeSchema("start", datetime, primary=False),
            AttributeSchema("note", str, primary=False),
        ],
    )
    return client.create_collection("m", schema)


def test_lookup_by_key_reads_custom_attributes_when_used(tmp_path: Path) -> None:
    day = datetime(2024, 5, 1, tzinfo=timezone.utc)
    start = datetime(2024, 5, 1, 6, tzinfo=timezone.utc)
    with Client(tmp_path.as_uri()) as client:
        coll = _meta_collection(client)
        made = coll.create({"day": day, "station": 7}, {"start": start, "note": "a"})
        found = coll.filter({"station": 7, "day": "2024-05-01T00:00:00+00:00"}).last()
        assert found.id == made.id
        assert list(found.primary_attributes.items()) == [("station", 7), ("day", day)]
        assert found._custom_values is None  # nothing read yet
        made.update_custom_attributes({"note": "b"})
        assert found.custom_attributes == {"start": start, "note": "b"}  # read at first use
        assert found.dimensions[0].start_value == start  # the time axis starts at a custom value
        again = pickle.loads(pickle.dumps(coll.filter({"station": 7, "day": day}).last()))
        assert again._custom_values is None and again.custom_attributes["note"] == "b"
        by_id = coll.filter({"id": made.id}).last()
        assert by_id.custom_attributes == found.custom_attributes
        assert by_id.primary_attributes == found.primary_attributes
        lazy = coll.filter({"station": 7, "day": day}).last()
        made.delete()
        assert "Array(" in repr(lazy)  # a deleted array's repr does not raise
        assert coll.filter({"station": 7, "day": day}).last() is None


def test_tile_ids_of_some_positions(tmp_path: Path) -> None:
    schema = VArraySchema(
        dtype=np.float64, dimensions=[DimensionSchema("y", 8), DimensionSchema("x", 8)], vgrid=(4, 4)
    )
    options = HDF5Options(chunks=True, compression_opts=HDF5CompressionOpts("gzip", 1))
    with Client(tmp_path.as_uri()) as client:
        coll = client.create_collection("v", schema, options)
        v = coll.create()
        v[0:4, 2:8].update(np.ones((4, 6)))
        every = tile_ids(client.storage_context.root, coll._meta, v.id)
        assert sorted(every) == [(i, j) for i in range(2) for j in range(1, 4)]
        some = tile_ids(client.storage_context.root, coll._meta, v.id, [(0, 1), (3, 3), (1, 3)])
        assert some == {(0, 1): every[(0, 1)], (1, 3): every[(1, 3)]}
        assert np.array_equal(v[0:4, 0:8].read()[:, 2:], np.ones((4, 6)))


def test_small_results_skip_the_free_memory_probe_but_keep_the_limit() -> None:
    check_memory((512, 1024), np.float64, 0)  # 4 MiB: allowed without asking the kernel
    with pytest.raises(DekerMemoryError):
        check_memory((512, 1024), np.float64, 1024)  # over the client's limit all the same
