"""deker/storage/templates.py: byte images of new array files, made once and patched.

tests/test_fast_paths.py checks that ``empty_array_image`` equals h5py's bytes and that files
built from ``data_array_parts`` read back as written, and a few refusals.  Here: images differ
only inside the two patched fields (offsets asked from HDF5 on the written file, not from the
module), NUL padding and extreme counts, the data block sits at ``len(head)`` (rawio's
``contiguous_offset``) and the file is exactly head + data + tail, a fill value is kept bit for
bit (``-0.0``, NaN), the caches (one template per key, reused, bounded, the data cache keyed by
the fill value's bytes), concurrent first use from threads, no object header of any file deker
writes recording a time, the images of another process being byte-identical (no times or random
ids), and every ``None`` case (too-long metadata,
non-numeric, non-native or empty shapes, fill values the dtype cannot hold).
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from deker.storage import hdf5, rawio, templates
from deker.storage.templates import data_array_parts, empty_array_image


def _open(image: bytes) -> h5py.File:
    return h5py.File(io.BytesIO(image), "r")


def test_empty_image_holds_exactly_the_patched_values() -> None:
    for meta, empty in [(b"", 0), (b'{"id": "a"}', 1), (b"x" * 40, 2**62), (b'{"v": 1}', -5)]:
        image = empty_array_image(meta, "S40", empty)
        assert image is not None
        with _open(image) as handle:
            assert sorted(handle) == ["empty_cells", "meta"]
            assert handle["meta"].dtype == np.dtype("S40") and handle["meta"].shape == ()
            assert handle["meta"][()] == meta  # NUL padding is stripped by HDF5's type
            assert handle["empty_cells"].dtype == np.int64
            assert int(handle["empty_cells"][()]) == empty
            assert len(handle.attrs) == 0


def test_images_differ_only_inside_the_two_fields() -> None:
    first = empty_array_image(b'{"a": 1}', "S16", 5)
    second = empty_array_image(b'{"bbbbbbbbb": 2}', "S16", 2**40 + 3)
    assert first is not None and second is not None and len(first) == len(second)
    with _open(first) as handle:  # where HDF5 itself put the values
        meta_at, count_at = handle["meta"].id.get_offset(), handle["empty_cells"].id.get_offset()
    allowed = set(range(meta_at, meta_at + 16)) | set(range(count_at, count_at + 8))
    changed = {i for i, (a, b) in enumerate(zip(first, second, strict=True)) if a != b}
    assert changed and changed <= allowed
    assert first[meta_at : meta_at + 16] == b'{"a": 1}'.ljust(16, b"\0")
    assert second[count_at : count_at + 8] == np.int64(2**40 + 3).tobytes()


def test_metadata_longer_than_its_type_is_refused() -> None:
    assert empty_array_image(b"x" * 9, "S8", 0) is None
    assert empty_array_image(b"x" * 8, "S8", 0) is not None
    assert data_array_parts(b"x" * 9, "S8", 0, (2,), np.dtype("f4"), 0.0) is None
    assert data_array_parts(b"x" * 8, "S8", 0, (2,), np.dtype("f4"), 0.0) is not None


def test_empty_templates_are_cached_per_meta_type() -> None:
    empty_array_image(b"{}", "S77", 1)
    template = templates._cache["S77"]
    assert template is not None
    for count in range(5):
        assert empty_array_image(b"{}" * count, "S77", count) is not None
    assert templates._cache["S77"] is template  # built once, reused
    assert next(reversed(templates._cache)) == "S77"  # most recently used last


def test_the_empty_cache_is_bounded_and_keeps_recent_templates() -> None:
    limit = templates._MAX_TEMPLATES
    keep = "S4099"
    empty_array_image(b"{}", keep, 0)
    for n in range(4100, 4100 + limit + 4):
        empty_array_image(b"{}", f"S{n}", 0)
        if n % 64 == 0:
            empty_array_image(b"{}", keep, 0)  # used now and then: stays
    assert len(templates._cache) == limit
    assert keep in templates._cache
    assert "S4100" not in templates._cache  # the oldest went
    assert empty_array_image(b"{}", "S4100", 7) is not None  # rebuilt on demand


def _image_in_child(queue: Any) -> None:
    queue.put(empty_array_image(b"{}", "S5003", 1) is not None)  # a new type: a build, under the lock


def test_a_child_forked_during_a_build_makes_templates_of_its_own() -> None:
    """The forking thread holds the lock, as another thread building a template would."""
    context = mp.get_context("fork")
    queue = context.Queue()
    with templates._lock:
        child = context.Process(target=_image_in_child, args=(queue,))
        child.start()
    try:
        assert queue.get(timeout=60) is True
    finally:
        child.join(10)
        if child.exitcode is None:
            child.kill()
            child.join()
    assert child.exitcode == 0


def test_concurrent_first_use_from_threads() -> None:
    dtypes = [f"S{n}" for n in range(3000, 3024)]
    with ThreadPoolExecutor(8) as pool:
        images = list(pool.map(lambda dt: empty_array_image(b'{"t": 1}', dt, 9), dtypes))
    assert all(image is not None for image in images)
    for dtype, image in zip(dtypes, images, strict=True):
        assert image == empty_array_image(b'{"t": 1}', dtype, 9)


def _images_in_child() -> tuple[bytes | None, tuple[bytes, bytes] | None]:
    """Run in a forkserver worker: build both kinds of template from scratch."""
    return (
        empty_array_image(b'{"id": "same"}', "S31", 42),
        data_array_parts(b'{"id": "same"}', "S31", 3, (3, 5), np.dtype("<f8"), np.nan),
    )


def test_no_object_of_a_written_file_records_a_time(tmp_path: Path) -> None:
    """HDF5 keeps an object's times, to the second, in its header unless told not to.

    h5py's ``create_dataset`` turns that off; the data template made its ``data`` dataset with
    the low-level API, whose default is on, so its head depended on the clock: another process
    (or this one a second later) built other bytes, and ``template_data_offset`` refused the
    files of every process but the writer.  That made two tests below fail now and then on a
    loaded machine (the other-process bytes, and the offset found after the cache is cleared).
    Every kind of file deker writes is checked here.
    """
    meta = b'{"id": "times"}'
    values = np.arange(12, dtype=np.float64).reshape(3, 4)
    image = empty_array_image(meta, "S20", 12)
    parts = data_array_parts(meta, "S20", 0, (3, 4), np.dtype("<f8"), np.nan)
    assert image is not None and parts is not None
    (tmp_path / "empty.hdf5").write_bytes(image)
    (tmp_path / "whole.hdf5").write_bytes(parts[0] + values.tobytes() + parts[1])
    hdf5.create_array_file(  # through h5py (chunked: no template)
        tmp_path / "h5py.hdf5",
        meta,
        "S20",
        12,
        data=values,
        shape=(3, 4),
        fill_value=np.nan,
        dataset_kwargs={"chunks": (3, 2)},
    )
    for name in ("empty", "whole", "h5py"):
        with h5py.File(tmp_path / f"{name}.hdf5", "r", locking=False) as handle:
            for key in handle:
                info = h5py.h5o.get_info(handle[key].id)
                times = (info.atime, info.mtime, info.ctime, info.btime)
                assert times == (0, 0, 0, 0), (name, key, times)


def test_another_process_builds_the_same_bytes() -> None:
    """HDF5 stores no times or random ids in these files: a template is a pure function.

    (This failed now and then on a loaded machine, when the child built its data template in
    another second of the clock than this process: see the test above, which pins the cause.)
    """
    with ProcessPoolExecutor(1, mp_context=mp.get_context("forkserver")) as pool:
        image, parts = pool.submit(_images_in_child).result(timeout=60)
    assert image is not None and image == empty_array_image(b'{"id": "same"}', "S31", 42)
    assert parts is not None and parts == data_array_parts(
        b'{"id": "same"}', "S31", 3, (3, 5), np.dtype("<f8"), np.nan
    )


@pytest.mark.parametrize(
    ("dtype", "shape", "fill"),
    [
        ("<f4", (3, 4), np.nan),
        ("<i2", (7,), -1),
        ("<c16", (2, 3, 2), 0),
        ("<u8", (1, 1), 2**64 - 1),
        ("<f8", (5,), -0.0),
    ],
)
def test_data_file_layout(tmp_path: Path, dtype: str, shape: tuple[int, ...], fill: Any) -> None:
    np_dtype = np.dtype(dtype)
    values = (np.arange(1, 1 + int(np.prod(shape))) * 7).astype(np_dtype).reshape(shape)
    meta = b'{"id": "layout"}'
    parts = data_array_parts(meta, "S24", 11, shape, np_dtype, fill)
    assert parts is not None
    head, tail = parts
    path = tmp_path / "made.hdf5"
    path.write_bytes(head + values.tobytes() + tail)
    assert path.stat().st_size == len(head) + values.nbytes + len(tail)
    with h5py.File(path, "r", locking=False) as handle:
        data = handle["data"]
        assert rawio.contiguous_offset(data) == len(head)  # the data block starts right after head
        assert data.chunks is None and data.compression is None and data.dtype == np_dtype
        np.testing.assert_array_equal(data[...], values)
        stored_fill = np.asarray(data.fillvalue, dtype=np_dtype)
        assert stored_fill.tobytes() == np.asarray(fill, dtype=np_dtype).tobytes()  # bit for bit
        assert handle["meta"][()] == meta and handle["meta"].dtype == np.dtype("S24")
        assert int(handle["empty_cells"][()]) == 11
    got = hdf5.read_region(path, tuple(slice(0, n) for n in shape), np_dtype, fill)
    np.testing.assert_array_equal(got, values)


def test_data_templates_are_cached_by_meta_type_shape_dtype_and_fill() -> None:
    f8 = np.dtype("<f8")
    key = ("S9", (4, 4), "<f8", np.float64(0.0).tobytes())
    first = data_array_parts(b"{}", "S9", 0, (4, 4), f8, 0.0)
    template = templates._data_cache[key]
    assert template is not None
    again = data_array_parts(b'{"x": 1}', "S9", 16, (4, 4), f8, 0.0)
    assert first is not None and again is not None
    assert templates._data_cache[key] is template  # built once, reused
    assert again[0] != first[0] and len(again[0]) == len(first[0]) == len(template.head)
    assert again[1] == first[1] == template.tail
    assert [k for k in templates._data_cache if k[:3] == key[:3]] == [key]
    negative_zero = data_array_parts(b"{}", "S9", 0, (4, 4), f8, -0.0)
    nan = data_array_parts(b"{}", "S9", 0, (4, 4), f8, float("nan"))
    assert negative_zero is not None and nan is not None
    assert negative_zero[0] != first[0] and nan[0] != first[0]  # the fill value is in the header
    assert sorted(k[3] for k in templates._data_cache if k[:3] == key[:3]) == sorted(
        np.array(v, dtype=f8).tobytes() for v in (0.0, -0.0, float("nan"))
    )  # 0.0 == -0.0, yet they are other bytes: other templates
    assert data_array_parts(b"{}", "S9", 0, (16,), f8, 0.0) is not None
    assert ("S9", (16,), "<f8", key[3]) in templates._data_cache


def test_the_data_cache_is_bounded() -> None:
    limit = templates._MAX_DATA_TEMPLATES
    for n in range(limit + 3):
        assert data_array_parts(b"{}", "S5", 0, (n + 1,), np.dtype("<i1"), 0) is not None
    assert len(templates._data_cache) == limit
    assert ("S5", (1,), "|i1", b"\0") not in templates._data_cache
    assert ("S5", (limit + 3,), "|i1", b"\0") in templates._data_cache


@pytest.mark.parametrize(
    ("dtype", "shape", "fill", "why"),
    [
        ("?", (3,), False, "bool is an HDF5 enum"),
        (">i4", (3,), 0, "not native"),
        ("<M8[s]", (3,), 0, "datetime64"),
        ("<m8[s]", (3,), 0, "timedelta64"),
        ("S5", (3,), b"a", "bytes"),
        ("<f8", (), 0.0, "no dimension"),
        ("<f8", (3, 0), 0.0, "no cell"),
        ("<f8", (3,), "abc", "fill is not a number"),
        ("|i1", (3,), 300, "fill out of range"),
        ("<i4", (3,), float("nan"), "NaN in an int dtype"),
    ],
)
def test_data_parts_refusals(dtype: str, shape: tuple[int, ...], fill: Any, why: str) -> None:
    assert data_array_parts(b"{}", "S4", 0, shape, np.dtype(dtype), fill) is None, why


def _whole_file(path: Path, meta: bytes, values: np.ndarray, fill: Any) -> None:
    """An array file written whole, the way deker writes it (from the data template)."""
    hdf5.create_array_file(
        path, meta, f"S{len(meta) + 33}", values.size, data=values, shape=values.shape, fill_value=fill
    )


def _offset(path: Path, shape: tuple[int, ...], dtype: Any, fill: Any) -> int | None:
    with open(path, "rb") as fh:
        return templates.template_data_offset(fh.fileno(), path.stat().st_size, shape, np.dtype(dtype), fill)


@pytest.mark.parametrize("meta_length", [2, 40, 117, 1000])
def test_template_data_offset_finds_the_data_of_whole_files(tmp_path: Path, meta_length: int) -> None:
    """Whatever the metadata length (its type is worked out from the file size), and whether
    or not this process has the template yet, the offset is HDF5's own."""
    values = np.arange(600, dtype=np.float32).reshape(20, 30)
    path = tmp_path / "whole.hdf5"
    _whole_file(path, b"x" * meta_length, values, np.nan)
    with templates._lock:  # a reader that never wrote such a file builds the templates
        templates._data_cache.clear()
    offset = _offset(path, (20, 30), np.float32, np.nan)
    with h5py.File(path, "r", locking=False) as handle:
        assert offset == rawio.contiguous_offset(handle["data"])
    assert offset is not None
    assert path.read_bytes()[offset : offset + values.nbytes] == values.tobytes()
    assert _offset(path, (20, 30), np.float32, np.nan) == offset  # cached templates: same answer


def test_template_data_offset_refuses_every_other_file(tmp_path: Path) -> None:
    values = np.arange(600, dtype=np.float32).reshape(20, 30)
    meta = b'{"id": "t", "primary_attributes": {}, "custom_attributes": {}}'

    def fresh(name: str) -> Path:
        path = tmp_path / f"{name}.hdf5"
        _whole_file(path, meta, values, np.nan)
        return path

    assert _offset(fresh("good"), (20, 30), np.float32, np.nan) is not None
    same_type = fresh("meta-same-type")
    hdf5.write_meta(same_type, meta.replace(b'"t"', b'"u"'), f"S{len(meta) + 33}")
    assert _offset(same_type, (20, 30), np.float32, np.nan) is not None  # only the value changed
    longer = fresh("meta-longer")
    hdf5.write_meta(longer, meta + b" " * 50, f"S{len(meta) + 83}")  # re-created elsewhere
    assert _offset(longer, (20, 30), np.float32, np.nan) is None
    with h5py.File(fresh("attribute"), "r+", locking=False) as handle:
        handle["data"].attrs["x"] = 1
    assert _offset(tmp_path / "attribute.hdf5", (20, 30), np.float32, np.nan) is None
    grown = fresh("grown")
    with open(grown, "ab") as fh:
        fh.write(b"\0")
    assert _offset(grown, (20, 30), np.float32, np.nan) is None
    flipped = fresh("flipped")
    raw = bytearray(flipped.read_bytes())
    raw[100] ^= 0xFF  # inside the HDF5 structures before the data block
    flipped.write_bytes(bytes(raw))
    assert _offset(flipped, (20, 30), np.float32, np.nan) is None
    partial = tmp_path / "partial.hdf5"  # created empty, then a region written through h5py
    hdf5.create_array_file(partial, meta, f"S{len(meta) + 33}", values.size)
    hdf5.write_region(partial, (slice(0, 2), slice(0, 30)), values[:2], (20, 30), np.nan, {})
    assert _offset(partial, (20, 30), np.float32, np.nan) is None
    chunked = tmp_path / "chunked.hdf5"
    hdf5.create_array_file(
        chunked,
        meta,
        f"S{len(meta) + 33}",
        values.size,
        data=values,
        shape=(20, 30),
        fill_value=np.nan,
        dataset_kwargs={"chunks": (10, 10)},
    )
    assert _offset(chunked, (20, 30), np.float32, np.nan) is None
    good = tmp_path / "good.hdf5"
    for shape, dtype, fill in [
        ((30, 20), np.float32, np.nan),
        ((20, 30), np.int32, 0),
        ((20, 30), np.float32, 0.0),
    ]:
        assert _offset(good, shape, dtype, fill) is None, (shape, dtype, fill)
    empty = tmp_path / "tiny.hdf5"
    empty.write_bytes(b"")
    assert _offset(empty, (20, 30), np.float32, np.nan) is None
    assert _offset(good, (20, 30), np.bool_, False) is None  # no template for this dtype


def test_public_names() -> None:
    assert templates.__all__ == [
        "data_array_parts",
        "empty_array_image",
        "raw_bytes",
        "template_data_offset",
        "write_new_file",
        "write_parts",
    ]


def test_write_parts_finishes_writes_the_kernel_cuts_short(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large ``pwritev`` may write less than asked: the rest is written by the next calls."""
    real = os.pwritev
    calls: list[int] = []

    def short(fd: int, buffers: list[memoryview], offset: int) -> int:
        calls.append(offset)
        return real(fd, [buffers[0][:5]], offset)  # at most 5 bytes, of the first buffer only

    monkeypatch.setattr(os, "pwritev", short)
    values = np.arange(6, dtype=np.int16).reshape(2, 3)[:, ::-1]  # not contiguous: copied in C order
    path = tmp_path / "parts"
    path.write_bytes(b"")
    fd = os.open(path, os.O_WRONLY)
    try:
        templates.write_parts(fd, b"head", values, b"tail!")
    finally:
        os.close(fd)
    assert path.read_bytes() == b"head" + np.ascontiguousarray(values).tobytes() + b"tail!"
    assert len(calls) == 5 and calls == sorted(calls)  # 4 + 12 + 5 bytes, 5 at a time
