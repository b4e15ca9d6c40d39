"""deker/storage/chunkcodec.py: chunked datasets decoded outside h5py's lock.

h5py's own reading of the same file is the oracle: hypothesis round trips per filter pipeline
(shuffle, deflate, zstd, lz4 with raw and compressed blocks, blosc with its own shuffles, no
filter) over random shapes, chunk shapes (edge chunks included), dtypes, chunks never written
(fill) and regions with integer and slice bounds.  Then: a chunk whose mask says a filter was
skipped, unsupported pipelines left to h5py, damaged chunks reported (also where h5py hands back
garbage without error), the kept index dropped when the file changes or has a journal, a forked
child, and the two properties the module exists for, made certain with hooks rather than
timing: a read completes while another thread holds h5py's lock, and two threads decode chunks
of one region at the same time.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deker.errors import DekerStorageError
from deker.storage import chunkcodec, filters, hdf5, rawio
from deker.storage.inspection import inspect_array_file
from deker.storage.journal import journal_path

PIPELINES: dict[str, Callable[[], dict[str, Any]]] = {
    "zstd": lambda: dict(hdf5plugin.Zstd(clevel=3)),
    "shuffle+zstd": lambda: {"shuffle": True, **hdf5plugin.Zstd(clevel=1)},
    "gzip": lambda: {"compression": "gzip", "compression_opts": 4},
    "shuffle+gzip": lambda: {"compression": "gzip", "shuffle": True},
    "lz4": lambda: dict(hdf5plugin.LZ4(nbytes=0)),
    "lz4-blocks": lambda: dict(hdf5plugin.LZ4(nbytes=96)),  # many blocks per chunk
    "blosc-zstd": lambda: dict(hdf5plugin.Blosc(cname="zstd", clevel=3, shuffle=hdf5plugin.Blosc.SHUFFLE)),
    "blosc-lz4-bitshuffle": lambda: dict(
        hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.BITSHUFFLE)
    ),
    "chunks only": lambda: {},
}
DTYPES = ["i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8", "c8", "c16"]


def _values(
    rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype[Any], noise: bool
) -> np.ndarray:
    if noise:  # incompressible: lz4 keeps such blocks raw, blosc stores them memcpy'd
        return (
            rng.integers(0, 256, size=int(np.prod(shape)) * dtype.itemsize, dtype=np.uint8)
            .view(dtype)
            .reshape(shape)
        )
    smooth = np.cumsum(rng.normal(size=shape), axis=-1)  # compressible, like most arrays
    if dtype.kind in "iu":
        smooth = np.clip(smooth * 3, np.iinfo(dtype).min, np.iinfo(dtype).max)
    values = smooth.astype(dtype)
    if dtype.kind == "c":
        values = values + 1j * values[..., ::-1]
    return values.astype(dtype)


def _write(
    path: Path,
    values: np.ndarray,
    chunks: tuple[int, ...],
    kwargs: dict[str, Any],
    fill: Any,
    written: list[tuple[slice, ...]] | None = None,
) -> np.ndarray:
    """A file with a ``data`` dataset; only ``written`` regions stored (all when ``None``)."""
    with h5py.File(path, "w", locking=False) as handle:
        dataset = handle.create_dataset(
            "data", shape=values.shape, dtype=values.dtype, chunks=chunks, fillvalue=fill, **kwargs
        )
        for region in written if written is not None else [tuple(slice(None) for _ in values.shape)]:
            dataset[region] = values[region]
        handle.create_dataset("meta", data=b"{}")
        handle.create_dataset("empty_cells", data=np.int64(0))
    with h5py.File(path, "r", locking=False) as handle:
        expected: np.ndarray = handle["data"][...]
    return expected


def _read_open(path: Path, bounds: tuple[Any, ...], out: np.ndarray | None = None) -> np.ndarray | None:
    with h5py.File(path, "r", locking=False) as handle:
        return chunkcodec.read_open(path, handle, handle["data"], bounds, out)


@st.composite
def _case(draw: st.DrawFn) -> dict[str, Any]:
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(1, 23), min_size=ndim, max_size=ndim)))
    chunks = tuple(draw(st.integers(1, n)) for n in shape)
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    bounds: list[Any] = []
    for n in shape:
        start = draw(st.integers(0, n - 1))
        if draw(st.booleans()):
            bounds.append(slice(start, draw(st.integers(start + 1, n))))
        else:
            bounds.append(start)
    written = []
    for _ in range(draw(st.integers(0, 3))):
        region = []
        for n in shape:
            start = draw(st.integers(0, n - 1))
            region.append(slice(start, draw(st.integers(start + 1, n))))
        written.append(tuple(region))
    return {
        "shape": shape,
        "chunks": chunks,
        "dtype": dtype,
        "bounds": tuple(bounds),
        "written": written if draw(st.booleans()) else None,
        "noise": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**32 - 1)),
        "padded": draw(st.booleans()),
    }


@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_case())
def test_regions_decode_as_h5py_decodes_them(tmp_path: Path, pipeline: str, case: dict[str, Any]) -> None:
    path = tmp_path / "array.hdf5"
    rng = np.random.default_rng(case["seed"])
    values = _values(rng, case["shape"], case["dtype"], case["noise"])
    fill = np.asarray(3, dtype=case["dtype"])[()]
    expected = _write(path, values, case["chunks"], PIPELINES[pipeline](), fill, case["written"])[
        case["bounds"]
    ]
    got = _read_open(path, case["bounds"])
    assert got is not None, "the pipeline is decodable: it must not fall back to h5py"
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    if case["padded"] and expected.ndim:  # into a view of a bigger destination
        outer = np.zeros(tuple(n + 2 for n in expected.shape), dtype=expected.dtype)
        view = outer[tuple(slice(1, n + 1) for n in expected.shape)]
        assert _read_open(path, case["bounds"], view) is view
        np.testing.assert_array_equal(view, expected)
        assert not outer[(0,) * outer.ndim]


def test_a_chunk_stored_with_a_filter_skipped(tmp_path: Path) -> None:
    """HDF5 records in a chunk's mask which filters it skipped (e.g. an optional one failed)."""
    path = tmp_path / "masked.hdf5"
    values = np.arange(64, dtype=np.int32).reshape(8, 8)
    _write(path, values, (4, 8), {"compression": "gzip"}, 0)
    with h5py.File(path, "r+", locking=False) as handle:
        handle["data"].id.write_direct_chunk((4, 0), (values[4:] * 10).tobytes(), filter_mask=1)
    with h5py.File(path, "r", locking=False) as handle:
        expected = handle["data"][...]
    assert (expected[4:] == values[4:] * 10).all()
    got = _read_open(path, (slice(0, 8), slice(0, 8)))
    assert got is not None
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"compression": "lzf"},
        {"fletcher32": True},
        {"scaleoffset": 0},
        {"compression": "gzip", "fletcher32": True},
        dict(hdf5plugin.Bitshuffle()),
    ],
    ids=["lzf", "fletcher32", "scaleoffset", "gzip+fletcher32", "bitshuffle"],
)
def test_other_pipelines_are_left_to_h5py(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    path = tmp_path / "other.hdf5"
    values = np.arange(120, dtype=np.int32).reshape(10, 12)
    expected = _write(path, values, (4, 5), kwargs, 0)
    with h5py.File(path, "r", locking=False) as handle:
        assert chunkcodec.chunk_index(handle["data"]) is None
    assert _read_open(path, (slice(0, 10), slice(0, 12))) is None
    np.testing.assert_array_equal(
        hdf5.read_region(path, (slice(0, 10), slice(2, 9)), np.int32, 0), expected[:, 2:9]
    )


def test_contiguous_and_non_numeric_datasets_are_not_indexed(tmp_path: Path) -> None:
    path = tmp_path / "misc.hdf5"
    with h5py.File(path, "w", locking=False) as handle:
        handle.create_dataset("contiguous", data=np.zeros((4, 4)))
        handle.create_dataset("swapped", data=np.zeros((4, 4), dtype=">f8"), chunks=(2, 2))
        handle.create_dataset("flags", data=np.zeros((4, 4), dtype=bool), chunks=(2, 2))
        handle.create_dataset("empty", shape=(0, 4), maxshape=(None, 4), dtype="f4", chunks=(1, 4))
    with h5py.File(path, "r", locking=False) as handle:
        assert all(chunkcodec.chunk_index(handle[name]) is None for name in handle)


def test_a_damaged_chunk_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "damaged.hdf5"
    values = np.cumsum(np.ones((64, 64)), axis=1).astype(np.float32)
    _write(path, values, (32, 32), dict(hdf5plugin.Zstd()), 0)
    with h5py.File(path, "r", locking=False) as handle:
        index = chunkcodec.chunk_index(handle["data"])
    assert index is not None
    with open(path, "r+b") as raw:  # overwrite the middle of the second chunk
        raw.seek(int(index.offsets[0, 1]) + int(index.sizes[0, 1]) // 2)
        raw.write(b"\xff" * 16)
    np.testing.assert_array_equal(_read_open(path, (slice(0, 64), slice(0, 32))), values[:, :32])
    with h5py.File(path, "r", locking=False) as handle:  # h5py (hdf5plugin's zstd) hands back garbage
        assert not np.array_equal(handle["data"][:, 32:], values[:, 32:])
    with pytest.raises(DekerStorageError, match=r"damaged.*chunk \(0, 1\).*does not decode"):
        hdf5.read_region(path, (slice(0, 64), slice(0, 64)), np.float32, 0)
    found = inspect_array_file(path, (64, 64), np.float32, verify_data=True)  # check_integrity(4)
    assert (
        len(found.data_errors) == 1
        and "chunk (0, 1) (cells [0:32, 32:64]) does not decode" in found.data_errors[0]
    )
    assert inspect_array_file(path, (64, 64), np.float32, verify_data=False).data_errors == ()
    with open(path, "r+b") as raw:  # a file cut inside its last chunk
        raw.truncate(int(index.offsets[1, 1]) + 10)
    with pytest.raises(DekerStorageError, match=r"damaged"):
        hdf5.read_region(path, (slice(32, 64), slice(32, 64)), np.float32, 0)


def _settle(path: Path) -> None:
    st_ = os.stat(path)
    newest = max(st_.st_mtime_ns, st_.st_ctime_ns)
    while time.time_ns() - newest < rawio.SETTLED_NS + 10_000_000:
        time.sleep(0.02)  # file times, not a race: the index is kept only for settled files


@pytest.fixture
def settled_file(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A zstd file of 16 chunks, settled and read once: its chunk index is kept."""
    path = tmp_path / "settled.hdf5"
    values = np.cumsum(np.random.default_rng(5).normal(size=(512, 512)), axis=1).astype(np.float32)
    _write(path, values, (128, 128), dict(hdf5plugin.Zstd(clevel=3)), 0)
    _settle(path)
    chunkcodec.forget()
    np.testing.assert_array_equal(
        hdf5.read_region(path, (slice(0, 512), slice(0, 512)), np.float32, 0), values
    )
    return path, values


def test_the_kept_index_reads_without_h5py_until_the_file_changes(
    settled_file: tuple[Path, np.ndarray],
) -> None:
    path, values = settled_file
    got = chunkcodec.read_cached(path, (slice(3, 300), 7), np.dtype(np.float32))
    assert got is not None
    np.testing.assert_array_equal(got, values[3:300, 7])
    assert chunkcodec.read_cached(path, (slice(0, 2), 1), np.dtype(np.float64)) is None  # another dtype
    journal_path(path).write_bytes(b"")  # an interrupted write: read its old version with h5py
    assert chunkcodec.read_cached(path, (slice(0, 2), 1), np.dtype(np.float32)) is None
    journal_path(path).unlink()
    assert chunkcodec.read_cached(path, (slice(0, 2), 1), np.dtype(np.float32)) is None  # forgotten
    hdf5.read_region(path, (slice(0, 2), 1), np.float32, 0)  # learnt again
    assert chunkcodec.read_cached(path, (slice(0, 2), 1), np.dtype(np.float32)) is not None
    with h5py.File(path, "r+", locking=False) as handle:  # rewritten in place: chunks move
        handle["data"][:, :300] = -values[:, :300]
    assert chunkcodec.read_cached(path, (slice(0, 2), 1), np.dtype(np.float32)) is None
    got = hdf5.read_region(path, (slice(0, 512), slice(0, 512)), np.float32, 0)
    np.testing.assert_array_equal(got[:, :300], -values[:, :300])
    np.testing.assert_array_equal(got[:, 300:], values[:, 300:])


def test_reads_complete_while_another_thread_holds_h5pys_lock(settled_file: tuple[Path, np.ndarray]) -> None:
    """Decoding does not take h5py's lock: a read ends while the test thread holds it."""
    path, values = settled_file
    result: list[np.ndarray] = []
    reader = threading.Thread(
        target=lambda: result.append(hdf5.read_region(path, (slice(0, 512), slice(0, 512)), np.float32, 0))
    )
    with h5py._objects.phil:  # what every h5py call takes first
        reader.start()
        reader.join(60)
        finished = not reader.is_alive()
    reader.join()
    assert finished, "the read waited for h5py's lock"
    np.testing.assert_array_equal(result[0], values)


def _meet_in_two_threads(monkeypatch: pytest.MonkeyPatch, name: str) -> set[str]:
    """Make the first call of ``filters.<name>`` in each of two threads wait for the other.

    If the calls run one after the other (under h5py's lock, or in one thread), the barrier
    breaks (``BrokenBarrierError`` after its timeout) and the operation fails.  Returns the
    names of the threads that called.
    """
    barrier = threading.Barrier(2, timeout=60)
    waited: set[str] = set()
    lock = threading.Lock()
    real = getattr(filters, name)

    def meeting(*args: Any) -> Any:
        thread = threading.current_thread().name
        with lock:
            first = thread not in waited and len(waited) < 2
            waited.add(thread)
        if first:
            barrier.wait()
        return real(*args)

    monkeypatch.setattr(filters, name, meeting)
    return waited


ONE_CODING_THREAD = pytest.mark.skipif(
    chunkcodec.decode_threads() < 2,
    reason="one coding thread here (one core, or DEKER_CODEC_THREADS / OMP_NUM_THREADS = 1)",
)


@ONE_CODING_THREAD
def test_two_threads_decode_chunks_of_one_region_at_once(
    settled_file: tuple[Path, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each decode waits for a second one to start: serialised decoding breaks the barrier."""
    path, values = settled_file
    waited = _meet_in_two_threads(monkeypatch, "decode")
    got = hdf5.read_region(path, (slice(0, 512), slice(0, 512)), np.float32, 0)
    np.testing.assert_array_equal(got, values)
    assert len(waited) >= 2


def test_a_region_read_beside_another_is_not_split(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two cores, two regions at once: the second is not split (each region keeps one core).

    The first region is held inside :func:`chunkcodec._run` (its work waits for an event) while
    the second runs; alone, the same region is split between this thread and the pool.
    """
    monkeypatch.setattr(chunkcodec, "decode_threads", lambda: 2)
    jobs = list(range(8))
    weight = 1 << 30  # (far above the size worth splitting)
    release = threading.Event()
    started = threading.Event()

    def held(part: Any) -> bool:
        started.set()
        return release.wait(60)

    first = threading.Thread(target=chunkcodec._run, args=(jobs, held, weight), name="first-region")
    first.start()
    try:
        assert started.wait(60)
        threads: list[str] = []
        calls: list[list[int]] = []

        def work(part: Any) -> bool:
            threads.append(threading.current_thread().name)
            calls.append(list(part))
            return True

        assert chunkcodec._run(jobs, work, weight)
        assert threads == [threading.current_thread().name] and calls == [jobs]  # one call, here
    finally:
        release.set()
        first.join(60)
    threads.clear()
    calls.clear()
    assert chunkcodec._run(jobs, work, weight)  # alone: split with the pool
    assert len(threads) == 2 and sorted(j for c in calls for j in c) == jobs
    assert any(name.startswith("deker-decode") for name in threads)


def _child_read(path: str, queue: Any) -> None:
    got = hdf5.read_region(Path(path), (slice(0, 512), slice(0, 512)), np.float32, 0)
    queue.put(float(got.sum()))


def test_a_forked_child_decodes_with_a_pool_of_its_own(settled_file: tuple[Path, np.ndarray]) -> None:
    path, values = settled_file
    hdf5.read_region(path, (slice(0, 512), slice(0, 512)), np.float32, 0)  # the parent's pool exists
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_read, args=(str(path), queue))
    child.start()
    total = queue.get(timeout=120)
    child.join(60)
    assert child.exitcode == 0 and total == pytest.approx(float(values.sum()))


def _child_count_then_read(path: str, queue: Any) -> None:
    queue.put(chunkcodec._busy)
    _child_read(path, queue)


def test_a_child_forked_while_a_region_was_in_progress_counts_none_and_does_not_hang(
    settled_file: tuple[Path, np.ndarray],
) -> None:
    """The fork copies the count of regions in progress and, held, the lock around it.

    Here the forking thread itself holds the lock and counts a region, as another thread
    inside a read would at the moment of the fork; the child must neither wait for that lock
    for ever nor count a region that no thread of its own decodes.
    """
    path, values = settled_file
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    with chunkcodec._busy_lock:
        chunkcodec._busy += 1
        try:
            child = context.Process(target=_child_count_then_read, args=(str(path), queue))
            child.start()
        finally:
            chunkcodec._busy -= 1
    try:
        assert queue.get(timeout=60) == 0
        total = queue.get(timeout=60)
    finally:
        child.join(10)
        if child.exitcode is None:
            child.kill()
            child.join()
    assert child.exitcode == 0 and total == pytest.approx(float(values.sum()))


# ------------------------------------------------------------------------------ whole writes


def _new_dataset(
    path: Path, shape: tuple[int, ...], dtype: Any, chunks: tuple[int, ...], kwargs: dict[str, Any], fill: Any
) -> h5py.File:
    handle = h5py.File(path, "w", locking=False)
    handle.create_dataset("data", shape=shape, dtype=dtype, chunks=chunks, fillvalue=fill, **kwargs)
    return handle


@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_case(), scalar=st.booleans())
def test_whole_writes_decode_in_h5py(
    tmp_path: Path, pipeline: str, case: dict[str, Any], scalar: bool
) -> None:
    """Chunks encoded here are what HDF5's own filters decode (edge chunks padded, scalars too)."""
    path = tmp_path / "written.hdf5"
    rng = np.random.default_rng(case["seed"])
    values = _values(rng, case["shape"], case["dtype"], case["noise"])
    given_values = values[(0,) * values.ndim] if scalar else values
    fill = np.asarray(3, dtype=case["dtype"])[()]
    with _new_dataset(
        path, case["shape"], case["dtype"], case["chunks"], PIPELINES[pipeline](), fill
    ) as handle:
        done = chunkcodec.write_whole(handle["data"], np.asarray(given_values))
        if pipeline == "chunks only":  # nothing to encode: h5py writes
            assert not done and handle["data"].id.get_num_chunks() == 0
            return
        assert done
    with h5py.File(path, "r", locking=False) as handle:
        got = handle["data"][...]
        assert handle["data"].id.get_num_chunks() == math.prod(
            -(-n // c) for n, c in zip(case["shape"], case["chunks"], strict=True)
        )
    np.testing.assert_array_equal(got, np.broadcast_to(given_values, case["shape"]))
    np.testing.assert_array_equal(_read_open(path, case["bounds"]), got[case["bounds"]])


@pytest.mark.parametrize(
    "kwargs",
    [{"compression": "lzf"}, {"fletcher32": True}, {"compression": "gzip", "fletcher32": True}, {}],
    ids=["lzf", "fletcher32", "gzip+fletcher32", "no filter"],
)
def test_whole_writes_of_other_pipelines_are_left_to_h5py(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    with _new_dataset(tmp_path / "other.hdf5", (10, 12), "i4", (4, 5), kwargs, 0) as handle:
        assert not chunkcodec.write_whole(handle["data"], np.ones((10, 12), dtype=np.int32))
        assert not chunkcodec.write_whole(handle["data"], np.ones((10, 12), dtype=np.int64))  # another dtype
        assert handle["data"].id.get_num_chunks() == 0


def test_a_dataset_with_chunks_written_is_left_to_h5py(tmp_path: Path) -> None:
    with _new_dataset(tmp_path / "started.hdf5", (8, 8), "f4", (4, 4), dict(hdf5plugin.Zstd()), 0) as handle:
        handle["data"][0, 0] = 1
        assert not chunkcodec.write_whole(handle["data"], np.zeros((8, 8), dtype=np.float32))


def _plain_h5py_reads_whole_arrays(storage: Path, expected: np.ndarray) -> None:
    """Every Array file of ``expected``'s shape below ``storage`` reads as it with plain h5py."""
    for path in storage.rglob("*.hdf5"):
        with h5py.File(path, "r", locking=False) as handle:
            if "data" in handle and handle["data"].shape == expected.shape:
                np.testing.assert_array_equal(handle["data"][...], expected)


@pytest.mark.parametrize("codec", ["gzip", "zstd", "lz4", "blosc"])
def test_whole_updates_of_compressed_arrays_encode_here(
    tmp_path: Path, codec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole VArray update and an Array's first whole write go through write_whole."""
    from deker import ArraySchema, Client, DimensionSchema, HDF5CompressionOpts, HDF5Options, VArraySchema

    opts = {
        "gzip": HDF5CompressionOpts("gzip", 4),
        "zstd": HDF5CompressionOpts(**hdf5plugin.Zstd(3)),
        "lz4": HDF5CompressionOpts(**hdf5plugin.LZ4()),
        "blosc": HDF5CompressionOpts(**hdf5plugin.Blosc("lz4", 5, hdf5plugin.Blosc.BITSHUFFLE)),
    }[codec]
    calls: list[bool] = []
    write_whole = chunkcodec.write_whole

    def spy(dataset: h5py.Dataset, values: np.ndarray) -> bool:
        calls.append(write_whole(dataset, values))
        return calls[-1]

    monkeypatch.setattr(chunkcodec, "write_whole", spy)
    dims = [DimensionSchema(name="y", size=40), DimensionSchema(name="x", size=30)]
    values = np.cumsum(np.ones((40, 30), dtype=np.float64), axis=0)
    with Client(f"file://{tmp_path}/storage") as client:
        tiles = client.create_collection(
            "tiles",
            VArraySchema(dtype=np.float64, dimensions=dims, vgrid=(2, 3), fill_value=np.nan),
            HDF5Options(chunks=(7, 4), compression_opts=opts),
        )
        varray = tiles.create()
        varray[:].update(values)  # first write: each tile created holding its data
        varray[:].update(values * 2)  # rewrite: new versions of tiles with data
        arrays = client.create_collection(
            "arrays",
            ArraySchema(dtype=np.float64, dimensions=dims, fill_value=np.nan),
            HDF5Options(chunks=(8, 8), compression_opts=opts),
        )
        array = arrays.create()
        array[:].update(values)
        assert calls and all(calls), calls
        assert len(calls) == 2 * 6 + 1
        np.testing.assert_array_equal(varray[:].read(), values * 2)
        np.testing.assert_array_equal(array[:].read(), values)
        _plain_h5py_reads_whole_arrays(tmp_path / "storage", values)


@ONE_CODING_THREAD
def test_two_threads_encode_chunks_of_one_write_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each encode waits for a second one to start: serialised encoding breaks the barrier."""
    waited = _meet_in_two_threads(monkeypatch, "encode")
    values = np.cumsum(np.ones((512, 512), dtype=np.float32), axis=1)
    with _new_dataset(
        tmp_path / "w.hdf5", values.shape, values.dtype, (128, 128), dict(hdf5plugin.Zstd()), 0
    ) as handle:
        assert chunkcodec.write_whole(handle["data"], values)
    with h5py.File(tmp_path / "w.hdf5", "r", locking=False) as handle:
        np.testing.assert_array_equal(handle["data"][...], values)
    assert len(waited) >= 2


def test_large_whole_writes_hold_one_batch_of_encoded_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chunkcodec, "_WRITE_BATCH_BYTES", 1)  # batches of 2 * threads chunks
    step = 2 * chunkcodec.decode_threads()
    outstanding = [0, 0]  # encoded and not yet written, the most seen
    encode = filters.encode
    lock = threading.Lock()

    def counted(*args: Any) -> Any:
        with lock:
            outstanding[0] += 1
            outstanding[1] = max(outstanding)
        return encode(*args)

    monkeypatch.setattr(filters, "encode", counted)
    values = np.cumsum(np.ones((95, 100), dtype=np.int16), axis=0)
    with _new_dataset(
        tmp_path / "big.hdf5", values.shape, values.dtype, (10, 10), dict(hdf5plugin.LZ4()), -1
    ) as handle:
        dsid = handle["data"].id

        class Writes:  # counts the chunks handed to HDF5
            def __getattr__(self, name: str) -> Any:
                return getattr(dsid, name)

            def write_direct_chunk(self, *args: Any) -> Any:
                with lock:
                    outstanding[0] -= 1
                return dsid.write_direct_chunk(*args)

        dataset = handle["data"]
        monkeypatch.setattr(type(dataset), "id", property(lambda self: Writes()), raising=True)
        try:
            assert chunkcodec.write_whole(dataset, values)
        finally:
            monkeypatch.undo()
    with h5py.File(tmp_path / "big.hdf5", "r", locking=False) as handle:
        np.testing.assert_array_equal(handle["data"][...], values)
    assert outstanding[0] == 0 and outstanding[1] <= step + 1


@ONE_CODING_THREAD
def test_pool_threads_make_no_h5py_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the calling thread asks h5py anything: the pool threads never wait for h5py's lock."""
    asked: set[str] = set()
    for name in ("dtype", "fillvalue", "shape", "chunks", "id", "file"):
        real = getattr(h5py.Dataset, name)

        def recorded(self: h5py.Dataset, real: property = real) -> Any:
            asked.add(threading.current_thread().name)
            return real.fget(self)  # type: ignore[misc]

        monkeypatch.setattr(h5py.Dataset, name, property(recorded))
    encoders: set[str] = set()
    encode = filters.encode

    def recording(*args: Any) -> Any:
        encoders.add(threading.current_thread().name)
        return encode(*args)

    monkeypatch.setattr(filters, "encode", recording)
    values = np.cumsum(np.ones((500, 500), dtype=np.float32), axis=1)  # edge chunks too
    with _new_dataset(
        tmp_path / "w.hdf5", values.shape, values.dtype, (64, 64), {"compression": "gzip"}, 0
    ) as handle:
        assert chunkcodec.write_whole(handle["data"], values)
    assert any(n.startswith("deker-decode") for n in encoders), encoders  # the pool encoded
    assert asked == {threading.current_thread().name}, asked


def test_a_chunk_decoding_to_a_partial_element_is_damage(tmp_path: Path) -> None:
    """A stored chunk that inflates to 3 bytes of a float32 chunk: damage, not a raw ValueError."""
    path = tmp_path / "partial.hdf5"
    values = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    _write(path, values, (32, 32), {"compression": "gzip"}, 0)
    with h5py.File(path, "r", locking=False) as handle:
        index = chunkcodec.chunk_index(handle["data"])
    assert index is not None
    stream = zlib.compress(b"abc")  # zlib ignores what follows the end of its stream
    assert len(stream) <= int(index.sizes[0, 0])
    with open(path, "r+b") as raw:
        raw.seek(int(index.offsets[0, 0]))
        raw.write(stream)
    with pytest.raises(DekerStorageError, match=r"damaged.*chunk \(0, 0\).*does not decode"):
        hdf5.read_region(path, (slice(0, 32), slice(0, 32)), np.float32, 0)
    found = inspect_array_file(path, (64, 64), np.float32, verify_data=True)
    assert (
        len(found.data_errors) == 1
        and "chunk (0, 0) (cells [0:32, 0:32]) does not decode" in found.data_errors[0]
    )


# ------------------------------------------------------------------------------ partial writes


def _copy(path: Path, name: str) -> Path:
    other = path.with_name(name)
    other.write_bytes(path.read_bytes())
    return other


@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_case(), scalar=st.booleans(), count_old=st.booleans())
def test_partial_writes_make_what_h5py_makes(
    tmp_path: Path, pipeline: str, case: dict[str, Any], scalar: bool, count_old: bool
) -> None:
    """h5py's own partial write of a copy is the oracle: the same cells, read by HDF5's filters.

    Over chunks stored, partly stored and never written, edge chunks, integer bounds, scalars,
    and the count of fill cells the region held before.
    """
    rng = np.random.default_rng(case["seed"])
    fill = np.asarray(3, dtype=case["dtype"])[()]
    ours = tmp_path / "ours.hdf5"
    before = _write(
        ours,
        _values(rng, case["shape"], case["dtype"], case["noise"]),
        case["chunks"],
        PIPELINES[pipeline](),
        fill,
        case["written"],
    )
    theirs = _copy(ours, "theirs.hdf5")
    bounds = case["bounds"]
    new = _values(rng, np.shape(before[bounds]), case["dtype"], not case["noise"]).reshape(
        np.shape(before[bounds])
    )
    given_values = np.asarray(new.reshape(-1)[0]) if scalar else new
    with h5py.File(ours, "r+", locking=False) as handle:
        old_fill = chunkcodec.write_region(handle["data"], bounds, given_values, fill, count_old)
    if pipeline == "chunks only":  # no codec to take out of h5py's lock: h5py writes
        assert old_fill is None
        return
    assert old_fill == (hdf5.count_fill(before[bounds], fill) if count_old else 0)
    with h5py.File(theirs, "r+", locking=False) as handle:
        handle["data"][bounds] = given_values
    with h5py.File(ours, "r", locking=False) as mine, h5py.File(theirs, "r", locking=False) as oracle:
        np.testing.assert_array_equal(mine["data"][...], oracle["data"][...])
    np.testing.assert_array_equal(_read_open(ours, bounds), np.broadcast_to(given_values, np.shape(new)))


def _encoding_to(size: int, pipeline: filters.Pipeline, shape: tuple[int, ...]) -> np.ndarray:
    """A complex64 chunk whose encoding is ``size`` bytes long (searched: random bytes, then zeros)."""
    rng = np.random.default_rng(7)
    for attempt in range(20000):
        raw = np.zeros(size, dtype=np.uint8)
        raw[: attempt % (size + 1)] = rng.integers(0, 256, attempt % (size + 1))
        chunk = raw.view(np.complex64).reshape(shape)
        if len(filters.encode(chunk, pipeline)) == size:
            return chunk
    pytest.fail(f"no chunk encodes to {size} bytes with {pipeline}")


@pytest.mark.parametrize(
    "pipeline", ["gzip", "shuffle+gzip", "lz4", "lz4-blocks", "blosc-zstd", "blosc-lz4-bitshuffle"]
)
def test_a_chunk_stored_unfiltered_then_rewritten_at_its_size_reads_back(
    tmp_path: Path, pipeline: str
) -> None:
    """HDF5 keeps the filter mask of a chunk overwritten by one of the same size.

    A chunk that its filters did not shrink is stored unfiltered, its filter mask saying so.
    Written over by an encoding of exactly that size, it kept the mask, and HDF5 read the
    encoded bytes as the values (a hypothesis case of
    ``test_partial_writes_make_what_h5py_makes``: a complex64 blosc-zstd chunk of 528 bytes).
    """
    path = tmp_path / "a.hdf5"
    shape = (6, 11)
    old = np.arange(66, dtype=np.complex64).reshape(shape) * (1 + 1j)
    with _new_dataset(path, shape, "c8", shape, PIPELINES[pipeline](), np.complex64(0)) as handle:
        chain = chunkcodec._pipeline(handle["data"])
        assert chain
        handle["data"].id.write_direct_chunk((0, 0), old.tobytes(), filter_mask=(1 << len(chain)) - 1)
    new = _encoding_to(old.nbytes, chain, shape)
    with h5py.File(path, "r+", locking=False) as handle:
        np.testing.assert_array_equal(handle["data"][...], old)  # (HDF5 reads it unfiltered)
        assert chunkcodec.write_region(handle["data"], (slice(0, 6), slice(0, 11)), new, 0, False) == 0
    with h5py.File(path, "r", locking=False) as handle:
        np.testing.assert_array_equal(handle["data"][...], new)
    np.testing.assert_array_equal(_read_open(path, (slice(0, 6), slice(0, 11))), new)


def test_partial_writes_of_other_pipelines_or_values_are_left_to_h5py(tmp_path: Path) -> None:
    path = tmp_path / "other.hdf5"
    with _new_dataset(path, (10, 12), "i4", (4, 5), {"compression": "lzf"}, 0) as handle:
        assert (
            chunkcodec.write_region(handle["data"], (slice(1, 3), 4), np.ones(2, np.int32), 0, True) is None
        )
    with _new_dataset(path, (10, 12), "i4", (4, 5), dict(hdf5plugin.Zstd()), 0) as handle:
        region = (slice(1, 3), slice(0, 4))
        assert chunkcodec.write_region(handle["data"], region, np.ones((2, 4), np.int64), 0, True) is None
        assert chunkcodec.write_region(handle["data"], region, np.ones((1, 4), np.int32), 0, True) is None
        assert handle["data"].id.get_num_chunks() == 0  # (another dtype, a shape to broadcast)


@ONE_CODING_THREAD
@pytest.mark.parametrize("name", ["decode", "encode"])
def test_two_threads_code_chunks_of_one_partial_write_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """Each decode (encode) waits for a second one to start: serialised coding breaks the barrier."""
    path = tmp_path / "w.hdf5"
    values = np.cumsum(np.ones((512, 512), dtype=np.float32), axis=1)
    _write(path, values, (128, 128), dict(hdf5plugin.Zstd()), 0)
    waited = _meet_in_two_threads(monkeypatch, name)
    region = (slice(10, 500), slice(3, 509))  # every chunk touched, none covered whole
    with h5py.File(path, "r+", locking=False) as handle:
        assert chunkcodec.write_region(handle["data"], region, np.float32(-1), 0, False) == 0
    values[region] = -1
    with h5py.File(path, "r", locking=False) as handle:
        np.testing.assert_array_equal(handle["data"][...], values)
    assert len(waited) >= 2


def test_a_partial_write_over_a_damaged_chunk_changes_nothing(tmp_path: Path) -> None:
    """The chunk that must be kept in part does not decode: DekerStorageError, file as it was."""
    path = tmp_path / "array.hdf5"
    values = np.cumsum(np.ones((64, 64), dtype=np.float32), axis=0)
    with h5py.File(path, "w", locking=False) as handle:
        handle.create_dataset("data", data=values, chunks=(32, 32), fillvalue=0, **hdf5plugin.Zstd())
        handle.create_dataset("meta", data=b"{}")
        handle.create_dataset("empty_cells", data=np.int64(0))
        offset = handle["data"].id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as fh:  # the first chunk's zstd frame magic: it no longer decodes
        fh.seek(offset)
        fh.write(b"\0\0\0\0")
    damaged = path.read_bytes()
    with pytest.raises(DekerStorageError, match=r"damaged or incomplete.*chunk \(0, 0\)"):
        hdf5.write_region(path, (slice(5, 40), slice(5, 40)), np.float32(7), (64, 64), 0, {})
    assert path.read_bytes() == damaged


def test_partial_updates_of_compressed_arrays_code_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Region updates and clears of compressed Arrays and tiles go through write_region.

    The counts of fill cells stay exact (the integrity check's level 4 decodes every chunk and
    counts again) and plain h5py reads what was written.
    """
    from deker import ArraySchema, Client, DimensionSchema, HDF5CompressionOpts, HDF5Options, VArraySchema

    calls: list[int | None] = []
    write_region = chunkcodec.write_region

    def spy(*args: Any, **kwargs: Any) -> int | None:
        calls.append(write_region(*args, **kwargs))
        return calls[-1]

    monkeypatch.setattr(chunkcodec, "write_region", spy)
    dims = [DimensionSchema(name="y", size=40), DimensionSchema(name="x", size=30)]
    values = np.cumsum(np.ones((40, 30), dtype=np.float64), axis=0)
    opts = HDF5Options(chunks=(7, 4), compression_opts=HDF5CompressionOpts(**hdf5plugin.Zstd(3)))
    with Client(f"file://{tmp_path}/storage") as client:
        varray = client.create_collection(
            "tiles", VArraySchema(dtype=np.float64, dimensions=dims, vgrid=(2, 3), fill_value=np.nan), opts
        ).create()
        array = client.create_collection(
            "arrays", ArraySchema(dtype=np.float64, dimensions=dims, fill_value=np.nan), opts
        ).create()
        expected = np.full((40, 30), np.nan)
        for region, update in [
            ((slice(3, 17), slice(2, 29)), values[3:17, 2:29]),  # first writes: new datasets, in part
            ((slice(10, 40), slice(0, 11)), values[10:40, 0:11] * 3),  # over stored and new chunks
            ((5, slice(1, 30)), np.float64(np.nan)),  # fill written back: the count goes down
        ]:
            varray[region].update(update)
            array[region].update(update)
            expected[region] = update
        assert calls and all(c is not None for c in calls), calls
        np.testing.assert_array_equal(varray[:].read(), expected)
        np.testing.assert_array_equal(array[:].read(), expected)
        assert client.check_integrity(4, stop_on_error=False, progress=False).ok
        _plain_h5py_reads_whole_arrays(tmp_path / "storage", expected)
