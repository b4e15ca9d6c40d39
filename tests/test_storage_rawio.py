"""deker/storage/rawio.py: ``preadv`` reads of contiguous datasets and the layout cache.

tests/test_fast_paths.py compares ``read_region_into`` with h5py on h5py-made files (with
``MIN_BYTES`` lowered) and follows the cache through Array updates.  Here, on files made by
:mod:`deker.storage.hdf5` and with the module's real thresholds: ``contiguous_offset`` (the
bytes at the offset are the data, byte for byte; every refusal: chunked, compressed, external,
unallocated, byte-swapped, bool), ``read_region_into`` as a hypothesis property against numpy
(int indices and slices, fresh and padded destinations, refusals below ``MIN_BYTES``, rows not
contiguous, wrong dtype, read-only, another driver), and ``remember``/``read_cached``/``forget``
as a hypothesis property on settled files (waited for once, ``SETTLED_NS`` untouched), plus
the cases where the cache must answer ``None``.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deker.storage import hdf5, rawio
from deker.storage.journal import journal_path

Bounds = tuple[Any, ...]

FILES = {
    # name: (shape, dtype)
    "big": ((12, 24, 64), np.float64),  # 147 KiB: regions above and below MIN_BYTES
    "four": ((5, 7, 9, 11), np.int16),
    "cplx": ((30, 40), np.complex64),
    "mutable": ((10, 10), np.float32),
}
FILL = -7


def _values(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    n = int(np.prod(shape))
    values = (np.arange(n) * 3 % 1001 - 500).astype(dtype).reshape(shape)
    if np.dtype(dtype).kind == "c":
        values = values + 1j * values[::-1].reshape(shape)
    return values.astype(dtype)


def _full(shape: tuple[int, ...]) -> Bounds:
    return tuple(slice(0, n) for n in shape)


def _deker_file(
    path: Path, shape: tuple[int, ...], dtype: Any, kwargs: dict[str, Any] | None = None
) -> np.ndarray:
    """An array file made the way deker makes them, holding every cell."""
    values = _values(shape, dtype)
    hdf5.create_array_file(path, b'{"id": "t"}', "S11", int(np.prod(shape)))
    hdf5.write_region(path, _full(shape), values, shape, FILL, kwargs or {})
    return values


def _settle(paths: list[Path]) -> None:
    newest = max(max(os.stat(p).st_mtime_ns, os.stat(p).st_ctime_ns) for p in paths)
    while time.time_ns() - newest < rawio.SETTLED_NS + 10_000_000:
        time.sleep(0.02)


@pytest.fixture(scope="module")
def settled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Path, np.ndarray]]]:
    """Deker files (plus one without data), left alone until they count as settled."""
    folder = tmp_path_factory.mktemp("rawio")
    made = {name: (folder / f"{name}.hdf5", None) for name in FILES}
    out: dict[str, tuple[Path, np.ndarray]] = {}
    for name, (shape, dtype) in FILES.items():
        path = made[name][0]
        out[name] = (path, _deker_file(path, shape, dtype))
    empty = folder / "empty.hdf5"
    hdf5.create_array_file(empty, b'{"id": "e"}', "S11", 60)
    out["empty"] = (empty, np.full((6, 10), FILL, dtype=np.float32))
    chunked = folder / "chunked.hdf5"
    out["chunked"] = (chunked, _deker_file(chunked, (4, 4), np.float64, {"chunks": (2, 4)}))
    spare = folder / "spare.hdf5"
    out["spare"] = (spare, _deker_file(spare, (4, 4), np.float64))
    _settle([p for p, _ in out.values()])
    rawio.forget()
    for path, _values in out.values():
        with h5py.File(path, "r", locking=False) as handle:
            rawio.remember(path, handle, handle.get("data"))
    yield out
    rawio.forget()


def _bounds(shape: tuple[int, ...]) -> st.SearchStrategy[Bounds]:
    axes = []
    for n in shape:
        index = st.integers(0, n - 1)
        span = st.integers(0, n - 1).flatmap(
            lambda s, n=n: st.integers(s + 1, n).map(lambda e, s=s: slice(s, e))
        )
        axes.append(st.one_of(index, span, span))
    return st.tuples(*axes)


def _shape_of(bounds: Bounds) -> tuple[int, ...]:
    return tuple(b.stop - b.start for b in bounds if isinstance(b, slice))


def _padded(shape: tuple[int, ...], dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """A view of ``shape`` inside a bigger zeroed array (1 cell before, 2 after, on every axis)."""
    big = np.zeros(tuple(n + 3 for n in shape), dtype=dtype)
    return big, big[(*(slice(1, 1 + n) for n in shape), Ellipsis)]  # 0-d: still a view


def _outside_is_zero(big: np.ndarray, shape: tuple[int, ...]) -> bool:
    mask = np.ones(big.shape, dtype=bool)
    mask[tuple(slice(1, 1 + n) for n in shape)] = False
    return not big[mask].any()


# ------------------------------------------------------------------------------ contiguous_offset


def test_contiguous_offset_points_at_the_data_bytes(tmp_path: Path) -> None:
    for name, (shape, dtype) in FILES.items():
        path = tmp_path / f"{name}.hdf5"
        values = _deker_file(path, shape, dtype)
        with h5py.File(path, "r", locking=False) as handle:
            offset = rawio.contiguous_offset(handle["data"])
        assert offset is not None
        raw = path.read_bytes()
        assert raw[offset : offset + values.nbytes] == np.ascontiguousarray(values).tobytes(), name


def test_contiguous_offset_refusals(tmp_path: Path) -> None:
    shape = (16, 16)
    _deker_file(tmp_path / "chunked.hdf5", shape, np.float32, {"chunks": (4, 16)})
    _deker_file(tmp_path / "gzip.hdf5", shape, np.float32, {"chunks": (8, 8), "compression": "gzip"})
    with h5py.File(tmp_path / "other.hdf5", "w") as handle:
        handle.create_dataset("unallocated", shape=shape, dtype=np.float64)  # never written
        handle.create_dataset("swapped", data=np.ones(shape, dtype=">f8"))
        handle.create_dataset("bool", data=np.ones(shape, dtype=bool))
        handle.create_dataset("text", data=np.array([b"ab", b"cd"]))
        handle.create_dataset(
            "external", shape=shape, dtype=np.int32, external=[(str(tmp_path / "ext.bin"), 0, 16 * 16 * 4)]
        )
        handle.create_dataset("plain", data=np.ones(shape, dtype="<f8"))
    refused = {}
    for name in ("chunked", "gzip"):
        with h5py.File(tmp_path / f"{name}.hdf5", "r") as handle:
            refused[name] = rawio.contiguous_offset(handle["data"])
    with h5py.File(tmp_path / "other.hdf5", "r") as handle:
        for name in ("unallocated", "swapped", "bool", "text", "external"):
            refused[name] = rawio.contiguous_offset(handle[name])
        assert rawio.contiguous_offset(handle["plain"]) is not None
    assert refused == dict.fromkeys(refused)


# ------------------------------------------------------------------------------ read_region_into


@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_read_region_into_equals_numpy(settled: dict[str, tuple[Path, np.ndarray]], data: Any) -> None:
    name = data.draw(st.sampled_from(["big", "four", "cplx"]))
    path, values = settled[name]
    bounds = data.draw(_bounds(values.shape))
    shape = _shape_of(bounds)
    want = values[bounds]
    nbytes = int(np.prod(shape)) * values.itemsize
    with h5py.File(path, "r", locking=False) as handle:
        dataset = handle["data"]
        fresh = np.zeros(shape, dtype=values.dtype)
        done = rawio.read_region_into(handle, dataset, bounds, fresh)
        assert done is (nbytes >= rawio.MIN_BYTES)
        if done:
            np.testing.assert_array_equal(fresh, want)
        else:
            assert not fresh.any()  # nothing read below MIN_BYTES
        big, view = _padded(shape, values.dtype)
        done = rawio.read_region_into(handle, dataset, bounds, view)
        assert done is (nbytes >= rawio.MIN_BYTES)
        if done:
            np.testing.assert_array_equal(view, want)
        assert _outside_is_zero(big, shape)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
@pytest.mark.parametrize(("scratch", "copy_below"), [(1000, 1 << 30), (4096, 1 << 30), (1 << 20, 0)])
def test_both_ways_of_reading_short_runs_equal_numpy(
    settled: dict[str, tuple[Path, np.ndarray]], scratch: int, copy_below: int, data: Any
) -> None:
    """Evenly spaced runs go through the scratch buffer (in several stretches when it is
    smaller than the region, down to one run per stretch) or, with ``_COPY_BELOW`` 0,
    straight into the destination with one vector per run: both equal numpy."""
    name = data.draw(st.sampled_from(["big", "four", "cplx"]))
    path, values = settled[name]
    bounds = data.draw(_bounds(values.shape))
    shape = _shape_of(bounds)
    with pytest.MonkeyPatch.context() as patch, h5py.File(path, "r", locking=False) as handle:
        patch.setattr(rawio, "_SCRATCH_BYTES", scratch)
        patch.setattr(rawio, "_COPY_BELOW", copy_below)
        patch.setattr(rawio, "MIN_BYTES", 0)
        big, view = _padded(shape, values.dtype)
        assert rawio.read_region_into(handle, handle["data"], bounds, view) is True
        np.testing.assert_array_equal(view, values[bounds])
        assert _outside_is_zero(big, shape)


def test_a_short_file_is_refused_through_the_scratch_buffer(tmp_path: Path) -> None:
    """A data block cut short by a damaged file: the scratch path reads less and says so."""
    path = tmp_path / "cut.hdf5"
    values = _deker_file(path, (64, 512), np.float64)  # rows of 4 KiB, 256 KiB in all
    with h5py.File(path, "r", locking=False) as handle:
        offset = rawio.contiguous_offset(handle["data"])
    assert offset is not None
    os.truncate(path, offset + values.nbytes - 100)
    fd = os.open(path, os.O_RDONLY)
    try:
        out = np.zeros((64, 1024), np.float64)[:, 100:612]  # rows in a wider array: the scratch path
        assert rawio._read_runs(fd, offset, values.shape, _full(values.shape), out) is False
        head = np.zeros((32, 1024), np.float64)[:, :512]
        assert rawio._read_runs(fd, offset, values.shape, (slice(0, 32), slice(0, 512)), head) is True
        np.testing.assert_array_equal(head, values[:32])
    finally:
        os.close(fd)


def test_read_region_into_refusals(settled: dict[str, tuple[Path, np.ndarray]], tmp_path: Path) -> None:
    path, values = settled["big"]
    whole = _full(values.shape)
    with h5py.File(path, "r", locking=False) as handle:
        dataset = handle["data"]
        cases = {
            "small": (np.zeros((2, 64), np.float64), (0, slice(0, 2), slice(0, 64))),
            "empty": (np.zeros((0, 64), np.float64), (0, slice(3, 3), slice(0, 64))),
            "fortran": (np.zeros(values.shape, np.float64, order="F"), whole),
            "rows-not-contiguous": (np.zeros((12, 24, 128), np.float64)[:, :, ::2], whole),
            "dtype": (np.zeros(values.shape, np.float32), whole),
            "bounds-count": (np.zeros((24, 64), np.float64), (slice(0, 24), slice(0, 64))),
        }
        for name, (out, bounds) in cases.items():
            assert rawio.read_region_into(handle, dataset, bounds, out) is False, name
            assert not out.any(), name
        readonly = np.zeros(values.shape, np.float64)
        readonly.flags.writeable = False
        assert rawio.read_region_into(handle, dataset, whole, readonly) is False
        out = np.zeros(values.shape, np.float64)
        assert rawio.read_region_into(handle, dataset, whole, out) is True  # the same call, allowed
        np.testing.assert_array_equal(out, values)
    with h5py.File(path, "r", driver="core", backing_store=False) as handle:  # not sec2
        out = np.zeros(values.shape, np.float64)
        assert rawio.read_region_into(handle, handle["data"], whole, out) is False
        assert not out.any()
    chunked = tmp_path / "chunked.hdf5"
    _deker_file(chunked, (12, 24, 64), np.float64, {"chunks": (1, 24, 64)})
    with h5py.File(chunked, "r") as handle:
        out = np.zeros(values.shape, np.float64)
        assert rawio.read_region_into(handle, handle["data"], whole, out) is False
        assert not out.any()


def test_read_region_into_returns_a_bool_for_empty_regions_at_any_threshold(
    settled: dict[str, tuple[Path, np.ndarray]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``MIN_BYTES`` is a public tunable; lowering it must not turn empty regions into crashes.

    Defect found by this test: with ``MIN_BYTES = 0`` an empty region raised IndexError,
    ValueError or TypeError; ``_read_runs`` now returns at once for an empty output.
    """
    monkeypatch.setattr(rawio, "MIN_BYTES", 0)
    path, values = settled["big"]
    with h5py.File(path, "r", locking=False) as handle:
        for bounds in ((slice(0, 12), 3, slice(5, 5)), (1, slice(3, 3), 2), _full((0, 0, 0))):
            out = np.zeros(_shape_of(bounds), dtype=values.dtype)
            assert rawio.read_region_into(handle, handle["data"], bounds, out) in (True, False)


# ------------------------------------------------------------------------------ layout cache


@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_read_cached_equals_numpy(settled: dict[str, tuple[Path, np.ndarray]], data: Any) -> None:
    name = data.draw(st.sampled_from(["big", "four", "cplx", "empty"]))
    path, values = settled[name]
    bounds = data.draw(_bounds(values.shape))
    shape = _shape_of(bounds)
    want = values[bounds]
    got = rawio.read_cached(path, bounds, values.dtype, FILL)
    assert got is not None
    assert got.shape == shape and got.dtype == values.dtype
    np.testing.assert_array_equal(got, want)
    big, view = _padded(shape, values.dtype)
    assert rawio.read_cached(path, bounds, values.dtype, FILL, out=view) is view
    np.testing.assert_array_equal(view, want)
    assert _outside_is_zero(big, shape)


def test_read_cached_refuses_what_does_not_fit(settled: dict[str, tuple[Path, np.ndarray]]) -> None:
    path, values = settled["cplx"]
    bounds = (slice(2, 5), slice(0, 40))
    assert rawio.read_cached(path, bounds, np.complex128, FILL) is None  # another dtype
    assert rawio.read_cached(path, (slice(2, 5),), np.complex64, FILL) is None  # bounds count
    assert rawio.read_cached(path, bounds, np.complex64, FILL, out=np.zeros((3, 39), np.complex64)) is None
    assert rawio.read_cached(path, bounds, np.complex64, FILL, out=np.zeros((3, 40), np.complex128)) is None
    readonly = np.zeros((3, 40), np.complex64)
    readonly.flags.writeable = False
    assert rawio.read_cached(path, bounds, np.complex64, FILL, out=readonly) is None
    fortran = np.zeros((3, 40), np.complex64, order="F")
    assert rawio.read_cached(path, bounds, np.complex64, FILL, out=fortran) is None
    assert not fortran.any()
    got = rawio.read_cached(path, bounds, np.complex64, FILL)  # still remembered after refusals
    assert got is not None
    np.testing.assert_array_equal(got, values[bounds])
    assert rawio.read_cached(path.with_name("unknown.hdf5"), bounds, np.complex64, FILL) is None


def test_a_file_without_data_is_all_fill(settled: dict[str, tuple[Path, np.ndarray]]) -> None:
    path, _values = settled["empty"]
    got = rawio.read_cached(path, (slice(1, 3), 4), np.dtype(np.int8), 5)
    assert got is not None and got.dtype == np.int8 and got.tolist() == [5, 5]
    out = np.zeros((2, 3), np.float32)
    assert rawio.read_cached(path, (slice(0, 2), slice(0, 3)), np.float32, 2.5, out=out) is out
    assert out.tolist() == [[2.5] * 3] * 2


def test_changes_and_journals_make_the_cache_forget(settled: dict[str, tuple[Path, np.ndarray]]) -> None:
    path, values = settled["mutable"]
    bounds = (slice(0, 10), slice(0, 10))
    got = rawio.read_cached(path, bounds, np.float32, FILL)
    assert got is not None and np.array_equal(got, values)
    journal_path(path).write_bytes(b"")  # an interrupted write: read through HDF5 instead
    try:
        assert rawio.read_cached(path, bounds, np.float32, FILL) is None
    finally:
        journal_path(path).unlink()
    assert rawio.read_cached(path, bounds, np.float32, FILL) is None  # forgotten, not just skipped
    with h5py.File(path, "r", locking=False) as handle:
        rawio.remember(path, handle, handle["data"])
    assert rawio.read_cached(path, bounds, np.float32, FILL) is not None
    hdf5.write_region(path, (3, slice(0, 10)), np.zeros(10, np.float32), (10, 10), FILL, {})
    assert rawio.read_cached(path, bounds, np.float32, FILL) is None  # the stamps changed
    with h5py.File(path, "r", locking=False) as handle:
        rawio.remember(path, handle, handle["data"])  # changed just now: not settled, not kept
    assert rawio.read_cached(path, bounds, np.float32, FILL) is None


def test_remember_keeps_only_what_it_can_serve(
    settled: dict[str, tuple[Path, np.ndarray]], tmp_path: Path
) -> None:
    """Fresh files are never kept, settled chunked ones neither; ``forget`` drops entries."""
    fresh = tmp_path / "fresh.hdf5"
    _deker_file(fresh, (4, 4), np.float64)
    with h5py.File(fresh, "r", locking=False) as handle:
        rawio.remember(fresh, handle, handle["data"])
    assert rawio.read_cached(fresh, (1, slice(0, 4)), np.float64, FILL) is None
    chunked = settled["chunked"][0]  # settled, remembered by the fixture: refused all the same
    assert rawio.read_cached(chunked, (1, slice(0, 4)), np.float64, FILL) is None
    spare, values = settled["spare"]
    rawio.forget(str(spare))
    assert rawio.read_cached(spare, (1, slice(0, 4)), np.float64, FILL) is None
    with h5py.File(spare, "r", driver="core", backing_store=False) as handle:
        rawio.remember(spare, handle, handle["data"])  # not sec2: not kept
    assert rawio.read_cached(spare, (1, slice(0, 4)), np.float64, FILL) is None
    with h5py.File(spare, "r", locking=False) as handle:
        rawio.remember(spare, handle, handle["data"])
    got = rawio.read_cached(spare, (1, slice(0, 4)), np.float64, FILL)
    assert got is not None and np.array_equal(got, values[1])
    rawio.forget(tmp_path / "never-seen.hdf5")  # no error
    rawio.forget()
    assert rawio.read_cached(spare, (1, slice(0, 4)), np.float64, FILL) is None  # everything dropped
    for path, _values in settled.values():  # put the module's entries back
        with h5py.File(path, "r", locking=False) as handle:
            rawio.remember(path, handle, handle.get("data"))


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_read_templated_equals_numpy_on_new_files(
    tmp_path_factory: pytest.TempPathFactory, data: Any
) -> None:
    """Files written whole are read without HDF5 while they are new (not settled)."""
    shape, dtype = data.draw(st.sampled_from([((12, 24, 64), np.float64), ((5, 7, 9, 11), np.int16)]))
    values = _values(shape, dtype)
    path = tmp_path_factory.mktemp("templated") / "new.hdf5"
    meta = b'{"id": "n"}'
    hdf5.create_array_file(
        path, meta, f"S{len(meta) + 33}", values.size, data=values, shape=shape, fill_value=FILL
    )
    bounds = data.draw(_bounds(shape))
    got = rawio.read_templated(path, bounds, shape, np.dtype(dtype), FILL)
    assert got is not None
    np.testing.assert_array_equal(got, values[bounds])
    big, view = _padded(_shape_of(bounds), dtype)
    assert rawio.read_templated(path, bounds, shape, np.dtype(dtype), FILL, view) is view
    np.testing.assert_array_equal(view, values[bounds])
    assert _outside_is_zero(big, _shape_of(bounds))


def test_read_templated_refusals(settled: dict[str, tuple[Path, np.ndarray]], tmp_path: Path) -> None:
    values = _values((12, 24, 64), np.float64)
    path = tmp_path / "new.hdf5"
    meta = b'{"id": "n"}'
    hdf5.create_array_file(
        path, meta, f"S{len(meta) + 33}", values.size, data=values, shape=values.shape, fill_value=FILL
    )
    whole = _full(values.shape)
    dt = np.dtype(np.float64)
    assert rawio.read_templated(path, whole, values.shape, dt, FILL) is not None
    journal_path(path).write_bytes(b"")  # an interrupted write: only HDF5 (through the journal)
    assert rawio.read_templated(path, whole, values.shape, dt, FILL) is None
    journal_path(path).unlink()
    assert rawio.read_templated(tmp_path / "missing.hdf5", whole, values.shape, dt, FILL) is None
    assert rawio.read_templated(path, whole, (12, 24), dt, FILL) is None  # bounds of another shape
    assert rawio.read_templated(path, whole, values.shape, dt, FILL, np.zeros((2, 2))) is None
    assert rawio.read_templated(path, whole, values.shape, np.dtype(np.float32), FILL) is None
    # created empty, data written through h5py: since no object records a time, its head and
    # tail are the template's byte for byte, so it is recognised, and must read right
    written_by_h5py, big = settled["big"]
    got = rawio.read_templated(written_by_h5py, whole, values.shape, dt, FILL)
    assert got is not None
    np.testing.assert_array_equal(got, big)
    empty = settled["empty"][0]
    assert rawio.read_templated(empty, _full((6, 10)), (6, 10), np.dtype(np.float32), FILL) is None


def test_read_templated_remembers_settled_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    values = _values((12, 24, 64), np.float64)
    path = tmp_path / "whole.hdf5"
    meta = b'{"id": "s"}'
    hdf5.create_array_file(
        path, meta, f"S{len(meta) + 33}", values.size, data=values, shape=values.shape, fill_value=FILL
    )
    dt, row = np.dtype(np.float64), (3, 4, slice(0, 64))
    assert rawio.read_templated(path, _full(values.shape), values.shape, dt, FILL) is not None
    assert rawio.read_cached(path, row, dt, FILL) is None  # new: not remembered
    monkeypatch.setattr(rawio, "SETTLED_NS", 0)
    assert rawio.read_templated(path, _full(values.shape), values.shape, dt, FILL) is not None
    got = rawio.read_cached(path, row, dt, FILL)  # settled: remembered, head not read again
    assert got is not None
    np.testing.assert_array_equal(got, values[row])
    rawio.forget(path)


def test_public_names_and_constants() -> None:
    assert sorted(rawio.__all__) == [
        "FileCache",
        "MIN_BYTES",
        "SETTLED_NS",
        "contiguous_offset",
        "destination",
        "file_stamp",
        "forget",
        "read_cached",
        "read_region_into",
        "read_templated",
        "remember",
        "settled",
    ]
    assert rawio.MIN_BYTES == 64 * 1024
    assert rawio.SETTLED_NS == 1_000_000_000


def test_file_cache_keeps_the_most_recently_kept_files() -> None:
    stamp = (1, 2, 3, 4, 5)
    cache: rawio.FileCache[int] = rawio.FileCache(2)
    cache.keep("/a", stamp, 1)
    cache.keep(Path("/b"), stamp, 2)
    cache.keep("/a", stamp, 3)  # kept again: now the most recent
    cache.keep("/c", stamp, 4)  # full: "/b", the least recently kept, goes
    assert (cache.get(Path("/a")), cache.get("/b"), cache.get("/c")) == (3, None, 4)
    cache.forget("/a")
    assert cache.get("/a") is None and cache.get("/c") == 4
    cache.forget()
    assert cache.get("/c") is None


def _forget_in_child(cache: rawio.FileCache[int], queue: Any) -> None:
    cache.forget()  # takes the cache's lock
    queue.put("forgot")


def test_a_child_forked_while_a_cache_lock_was_held_does_not_hang() -> None:
    """The forking thread holds the lock, as another thread updating the cache would."""
    cache: rawio.FileCache[int] = rawio.FileCache(2)
    cache.keep("/a", (1, 2, 3, 4, 5), 1)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    with cache._lock:
        child = context.Process(target=_forget_in_child, args=(cache, queue))
        child.start()
    try:
        assert queue.get(timeout=60) == "forgot"
    finally:
        child.join(10)
        if child.exitcode is None:
            child.kill()
            child.join()
    assert child.exitcode == 0 and cache.get("/a") == 1  # the parent's cache is its own


def test_caches_that_go_away_leave_nothing_for_the_fork_hook() -> None:
    """A fork hook per cache could never be removed: 200 000 caches held 160 MB (review)."""
    import gc

    before = len(rawio._caches)
    made = [rawio.FileCache[int](1) for _ in range(1000)]
    assert len(rawio._caches) == before + 1000
    del made
    gc.collect()
    assert len(rawio._caches) == before


def test_file_cache_opens_a_file_only_while_what_it_keeps_is_true(tmp_path: Path) -> None:
    path = tmp_path / "f.hdf5"
    path.write_bytes(b"0123456789")
    cache: rawio.FileCache[str] = rawio.FileCache(8)
    with cache.opened(path) as found:
        assert found is None  # nothing kept
    cache.keep(path, rawio.file_stamp(os.stat(path)), "layout")
    with cache.opened(path) as found:
        assert found is not None and found[1] == "layout" and os.pread(found[0], 4, 2) == b"2345"
    journal_path(path).write_bytes(b"")  # an interrupted write: read through h5py
    with cache.opened(path) as found:
        assert found is None
    assert cache.get(path) is None  # and forgotten
    journal_path(path).unlink()
    cache.keep(path, rawio.file_stamp(os.stat(path)), "layout")
    os.truncate(path, 5)  # changed: stale
    with cache.opened(path) as found:
        assert found is None
    cache.keep(path, rawio.file_stamp(os.stat(path)), "layout")
    path.unlink()  # gone: the h5py path reports it
    with cache.opened(path) as found:
        assert found is None
