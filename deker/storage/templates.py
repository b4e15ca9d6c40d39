"""Byte images of new, empty array files, built once per metadata length and reused.

A new array file (no ``data`` yet) holds only the ``meta`` and ``empty_cells`` datasets
(:mod:`deker.storage.hdf5`).  Files of the same metadata length are byte for byte the same
except for those two values: HDF5 stores no names or random ids in them, nor times (h5py
turns off the times of its datasets; the data template, made with the low-level API, turns them
off itself), so a template is the same in every process at any time.  Building one
with h5py costs about a millisecond (most of the time of creating an array); copying an image
and patching two fields costs microseconds.

The image of each metadata type is made once per process by HDF5 itself, in memory (core
driver), with the calls :func:`deker.storage.hdf5.create_array_file` makes; the offsets of the
two values are asked from HDF5 (``get_offset``), never searched for.  When HDF5 keeps a value
elsewhere than in a plain block (it does not today), :func:`empty_array_image` returns
``None`` and the caller builds the file with h5py as before.

Files *with* data (:func:`data_array_parts`) work the same way when ``data`` is contiguous
and unfiltered: the file is the bytes before the data block (``meta`` and ``empty_cells``
patched), the data itself, and the bytes after it.  The template is made once per metadata
type, shape, dtype and fill value by HDF5 in a small temporary file, with the data block
allocated at creation and never filled (so its size costs nothing); markers written by HDF5 at
both ends of the block check that the values are stored as they are in memory.  Writing the
three parts with one ``pwritev`` needs neither HDF5 nor the GIL, so the tiles of a VArray are
written in parallel.

Reads use the same templates backwards (:func:`template_data_offset`): a file that is, byte
for byte, a template's head and tail around a data block (the two values aside) has that
template's layout, so its data is read at once without opening it with HDF5, even while it is
too new for the layout cache of :mod:`deker.storage.rawio`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np

from deker.dtypes import check_integer_range
from deker.storage import lockprim
from deker.storage.journal import NewFile

__all__ = [
    "data_array_parts",
    "empty_array_image",
    "raw_bytes",
    "template_data_offset",
    "write_new_file",
    "write_parts",
]

logger = logging.getLogger(__name__)

_MAX_TEMPLATES = 256


class _Template(NamedTuple):
    image: bytes
    meta_offset: int
    meta_size: int
    count_offset: int
    count_dtype: np.dtype  # type: ignore[type-arg]


_cache: OrderedDict[str, _Template | None] = OrderedDict()
_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # only the forking thread lives on in the child: a build another thread had under way
    # would leave the lock held for ever
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _build(meta_dtype: str) -> _Template | None:
    dtype = np.dtype(meta_dtype)
    name = f"deker-template-{meta_dtype}-{uuid.uuid4().hex}"  # in memory only (no backing store)
    with h5py.File(name, "w", driver="core", backing_store=False) as handle:
        meta = handle.create_dataset("meta", data=np.array(b"\x01" * dtype.itemsize, dtype=dtype))
        count = handle.create_dataset("empty_cells", data=np.int64(-1))
        meta_offset, count_offset = meta.id.get_offset(), count.id.get_offset()
        count_dtype = count.dtype
        handle.flush()
        image = bytes(handle.id.get_file_image())
    if meta_offset is None or count_offset is None:
        return None
    if image[meta_offset : meta_offset + dtype.itemsize] != b"\x01" * dtype.itemsize:
        return None  # not a plain block: let h5py write the file
    return _Template(image, int(meta_offset), dtype.itemsize, int(count_offset), count_dtype)


def empty_array_image(meta: bytes, meta_dtype: str, empty_cells: int) -> bytes | None:
    """Return the bytes of a new array file holding ``meta`` and ``empty_cells`` only.

    Parameters
    ----------
    meta : bytes
        The UTF-8 JSON metadata.
    meta_dtype : str
        Its HDF5 type, ``"S<n>"`` with ``n >= len(meta)`` (shorter values are NUL-padded).
    empty_cells : int
        The initial count of empty cells.

    Returns
    -------
    bytes or None
        The whole file, or ``None`` when no template can be made (write it with h5py).

    """
    template = _cached(_cache, meta_dtype, lambda: _build(meta_dtype), _MAX_TEMPLATES)
    if template is None or len(meta) > template.meta_size:
        return None
    return _patched(template.image, template, meta, empty_cells)


def _cached(cache: OrderedDict[Any, Any], key: Any, build: Callable[[], Any], limit: int) -> Any:
    """Return ``cache[key]``, building it first if missing (least recently used dropped)."""
    with _lock:  # builds are serialised too: HDF5 refuses two open in-memory files of one name
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        value = cache[key] = build()
        while len(cache) > limit:
            cache.popitem(last=False)
        return value


def _patched(image: bytes, template: _Template | _DataTemplate, meta: bytes, empty_cells: int) -> bytes:
    """Return ``image`` with the template's ``meta`` and ``empty_cells`` values replaced."""
    out = bytearray(image)
    start, stop = template.meta_offset, template.meta_offset + template.meta_size
    out[start:stop] = meta.ljust(template.meta_size, b"\0")
    count = np.array(empty_cells, dtype=template.count_dtype).tobytes()
    out[template.count_offset : template.count_offset + len(count)] = count
    return bytes(out)


class _DataTemplate(NamedTuple):
    head: bytes  # the file before the data block
    tail: bytes  # the file after it
    meta_offset: int
    meta_size: int
    count_offset: int
    count_dtype: np.dtype  # type: ignore[type-arg]


_data_cache: OrderedDict[tuple[Any, ...], _DataTemplate | None] = OrderedDict()
_MAX_DATA_TEMPLATES = 64
# dtype kinds whose values HDF5 stores as their memory bytes (bool is an HDF5 enum: not used)
_PLAIN_KINDS = frozenset("iufc")


def _build_data(
    meta_dtype: str, shape: tuple[int, ...], dtype: np.dtype[Any], fill: np.ndarray[Any, Any]
) -> _DataTemplate | None:
    mdt = np.dtype(meta_dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    folder = tempfile.mkdtemp(prefix="deker-template-")
    path = os.path.join(folder, "t.hdf5")
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        # through a file object that never fails a write inside HDF5 (a full temporary
        # directory would otherwise leave HDF5 in a state that crashes the process later)
        with NewFile(Path(path)) as fileobj, h5py.File(fileobj, "w", locking=False) as handle:
            meta = handle.create_dataset("meta", data=np.array(b"\x01" * mdt.itemsize, dtype=mdt))
            count = handle.create_dataset("empty_cells", data=np.int64(-1))
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
            dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
            dcpl.set_fill_value(fill)
            # HDF5's own default (unlike h5py's ``create_dataset``) records the creation and
            # modification times, to the second, in the dataset's object header: the head
            # would then depend on the clock (templates of two processes, or of one process
            # a second apart, would differ and not verify each other's files).
            dcpl.set_obj_track_times(False)
            space = h5py.h5s.create_simple(shape)
            tid = h5py.h5t.py_create(dtype, logical=True)
            data = h5py.Dataset(h5py.h5d.create(handle.id, b"data", tid, space, dcpl=dcpl))
            marker = np.frombuffer(bytes(range(1, dtype.itemsize + 1)), dtype=dtype)[0]
            first, last = (0,) * len(shape), tuple(n - 1 for n in shape)
            data[first] = marker
            data[last] = marker
            offsets = meta.id.get_offset(), count.id.get_offset(), data.id.get_offset()
            count_dtype = count.dtype
        if fileobj.failure is not None:
            logger.debug("no data template (%s): h5py writes the file", fileobj.failure)
            return None
        if any(o is None for o in offsets):
            return None
        meta_offset, count_offset, data_offset = (int(o) for o in offsets)  # type: ignore[arg-type]
        with open(path, "rb") as fh:
            head = fh.read(data_offset)
            fh.seek(data_offset)
            start = fh.read(dtype.itemsize)
            fh.seek(data_offset + nbytes - dtype.itemsize)
            end = fh.read(dtype.itemsize)
            tail = fh.read()
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(folder)
    expected = np.asarray(marker, dtype=dtype).tobytes()
    if start != expected or end != expected:
        return None  # HDF5 converts the values: let h5py write the file
    if head[meta_offset : meta_offset + mdt.itemsize] != b"\x01" * mdt.itemsize:
        return None
    if count_offset + 8 > data_offset or meta_offset + mdt.itemsize > data_offset:
        return None
    return _DataTemplate(head, tail, meta_offset, mdt.itemsize, count_offset, count_dtype)


def data_array_parts(
    meta: bytes,
    meta_dtype: str,
    empty_cells: int,
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
    fill_value: Any,
) -> tuple[bytes, bytes] | None:
    """Return the bytes before and after the data of a new file holding a whole array.

    The file is ``head + data + tail``, where ``data`` is the C-ordered bytes of the array
    (``dtype``, native byte order): what h5py writes for ``meta``, ``empty_cells`` and a
    contiguous, unfiltered ``data`` dataset with fill value ``fill_value``.

    Parameters
    ----------
    meta : bytes
        The UTF-8 JSON metadata.
    meta_dtype : str
        Its HDF5 type, ``"S<n>"`` with ``n >= len(meta)``.
    empty_cells : int
        The count of fill cells of the data.
    shape : tuple of int
        The shape of the array (at least one cell).
    dtype : numpy.dtype
        The dtype of the data.
    fill_value : Any
        The fill value stored with the dataset.

    Returns
    -------
    tuple of (bytes, bytes) or None
        ``(head, tail)``, or ``None`` when this dtype cannot be written this way (write the
        file with h5py).

    """
    template = _data_template(meta_dtype, shape, dtype, fill_value)
    if template is None or len(meta) > template.meta_size:
        return None
    return _patched(template.head, template, meta, empty_cells), template.tail


def _data_template(
    meta_dtype: str, shape: tuple[int, ...], dtype: np.dtype[Any], fill_value: Any
) -> _DataTemplate | None:
    dtype = np.dtype(dtype)
    if dtype.kind not in _PLAIN_KINDS or not dtype.isnative or not shape or 0 in shape:
        return None
    try:
        check_integer_range(dtype, fill_value)
        fill = np.array(fill_value, dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        return None
    key = (meta_dtype, tuple(shape), dtype.str, fill.tobytes())
    template: _DataTemplate | None = _cached(
        _data_cache, key, lambda: _build_data(meta_dtype, tuple(shape), dtype, fill), _MAX_DATA_TEMPLATES
    )
    return template


#: The metadata type of the template that tells how the head's length depends on the type.
_PROBE_META = "S64"


def template_data_offset(
    fd: int, file_size: int, shape: tuple[int, ...], dtype: np.dtype[Any], fill_value: Any
) -> int | None:
    """Return where the data block of a file written from a data template starts, verified.

    A file written by :func:`data_array_parts` (and not changed by HDF5 since) is the
    template's head, the data block and the template's tail, byte for byte, except for the
    values of ``meta`` and ``empty_cells``.  The metadata type (``S<n>``) is worked out from
    the file's size, the head and tail are read and compared with the template of that type,
    everything but those two values; only if they are equal is the data block's offset
    returned.  So a file changed in any other way (another layout, datasets rewritten or
    moved by HDF5, attributes added, a different size) gives ``None``: read it through HDF5.

    Parameters
    ----------
    fd : int
        The file, open for reading; the caller holds its read lock.
    file_size : int
        Its size in bytes.
    shape : tuple of int
        The array's shape.
    dtype : numpy.dtype
        The array's dtype.
    fill_value : Any
        The array's fill value.

    Returns
    -------
    int or None
        The offset of the data block, or ``None``.

    """
    dtype = np.dtype(dtype)
    probe = _data_template(_PROBE_META, shape, dtype, fill_value)
    if probe is None:
        return None
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    size = file_size - nbytes - len(probe.tail) - (len(probe.head) - probe.meta_size)
    if size <= 0:
        return None
    template = _data_template(f"S{size}", shape, dtype, fill_value)
    if template is None or len(template.head) + nbytes + len(template.tail) != file_size:
        return None
    head = bytearray(os.pread(fd, len(template.head), 0))
    if len(head) != len(template.head):
        return None
    for start, stop in (
        (template.meta_offset, template.meta_offset + template.meta_size),
        (template.count_offset, template.count_offset + template.count_dtype.itemsize),
    ):
        head[start:stop] = template.head[start:stop]  # the two values may differ
    if head != template.head:
        return None
    if template.tail and os.pread(fd, len(template.tail), len(template.head) + nbytes) != template.tail:
        return None
    return len(template.head)


# ------------------------------------------------------------------------------ writing parts


def raw_bytes(values: np.ndarray[Any, Any]) -> memoryview:
    """Return the bytes of ``values`` in C order (a copy only when it is not contiguous).

    Parameters
    ----------
    values : numpy.ndarray
        Any array.

    Returns
    -------
    memoryview
        Its bytes, one dimension.

    """
    return memoryview(np.ascontiguousarray(values).reshape(-1).view(np.uint8))  # type: ignore[arg-type]


def write_parts(fd: int, head: bytes, values: np.ndarray[Any, Any], tail: bytes) -> None:
    """Write ``head``, the bytes of ``values`` and ``tail`` at the start of the open file ``fd``.

    One ``pwritev`` (repeated if the kernel writes less), which releases the GIL: the files of
    several threads are written at the same time.

    Parameters
    ----------
    fd : int
        A descriptor open for writing.
    head, tail : bytes
        The bytes before and after the data (a template's parts).
    values : numpy.ndarray
        The data, written in C order.

    """
    pieces = [v for v in (memoryview(head), raw_bytes(values), memoryview(tail)) if len(v)]
    offset = 0
    while pieces:
        written = os.pwritev(fd, pieces, offset)
        offset += written
        while written:  # drop what was written (a large write may stop early)
            step = min(written, len(pieces[0]))
            pieces[0] = pieces[0][step:]
            written -= step
            if not len(pieces[0]):
                pieces.pop(0)


def write_new_file(tmp: Path, head: bytes, values: np.ndarray[Any, Any], tail: bytes) -> None:
    """Write a new version through the held descriptor of ``tmp`` (closing none of its own).

    Parameters
    ----------
    tmp : Path
        The new, empty temporary file (its writer holds it: :mod:`deker.storage.lockprim`).
    head, tail : bytes
        The bytes before and after the data.
    values : numpy.ndarray
        The data.

    """
    fd, shared = lockprim.open_fd(tmp, True)
    try:
        write_parts(fd, head, values, tail)
    finally:
        lockprim.close_fd(fd, shared)
