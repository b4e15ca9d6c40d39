"""Byte images of new, empty array files, built once per metadata length and reused.

A new array file (no ``data`` yet) holds only the ``meta`` and ``empty_cells`` datasets
(:mod:`deker.storage.hdf5`).  Files of the same metadata length are byte for byte the same
except for those two values: HDF5 stores no names, times or random ids in them.  Building one
with h5py costs about a millisecond (most of the time of creating an array); copying an image
and patching two fields costs microseconds.

The image of each metadata type is made once per process by HDF5 itself, in memory (core
driver), with the calls :func:`deker.storage.hdf5.create_array_file` makes; the offsets of the
two values are asked from HDF5 (``get_offset``), never searched for.  When HDF5 keeps a value
elsewhere than in a plain block (it does not today), :func:`empty_array_image` returns
``None`` and the caller builds the file with h5py as before.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict
from typing import NamedTuple

import h5py
import numpy as np

__all__ = ["empty_array_image"]

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
    with _lock:  # builds are serialised too: HDF5 refuses two open in-memory files of one name
        if meta_dtype in _cache:
            template = _cache[meta_dtype]
            _cache.move_to_end(meta_dtype)
        else:
            template = _cache[meta_dtype] = _build(meta_dtype)
            while len(_cache) > _MAX_TEMPLATES:
                _cache.popitem(last=False)
    if template is None or len(meta) > template.meta_size:
        return None
    image = bytearray(template.image)
    image[template.meta_offset : template.meta_offset + template.meta_size] = meta.ljust(
        template.meta_size, b"\0"
    )
    count = np.array(empty_cells, dtype=template.count_dtype).tobytes()
    image[template.count_offset : template.count_offset + len(count)] = count
    return bytes(image)
