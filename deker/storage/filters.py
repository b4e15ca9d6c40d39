"""HDF5 filter pipelines encoded and decoded in Python, with codecs that release the GIL.

The byte transforms of :mod:`deker.storage.chunkcodec` (which finds the chunks and runs these
in threads), nothing else: no file, no h5py.  A pipeline is a tuple of ``(filter id, client
values)`` in writing order, as HDF5 reports it for a dataset.

=============  ========  ==================================================================
filter         HDF5 id   decoded and encoded by
=============  ========  ==================================================================
deflate/gzip   1         :mod:`zlib` (the standard library; a zlib stream)
shuffle        2         numpy (HDF5's byte shuffle; its element size is the filter's value)
blosc          32001     ``numcodecs.blosc`` (a blosc frame carries its sizes and shuffle)
lz4            32004     ``numcodecs.lz4`` block by block (H5Z-LZ4's framing, done here)
zstd           32015     ``numcodecs.zstd`` (one zstd frame)
=============  ========  ==================================================================

Encoding makes what HDF5's filters make with the same client values (deflate at its level,
zstd at its level, blosc with its compressor, level, shuffle and type size, lz4 in blocks of
the filter's block size), so HDF5 decodes it; the bytes need not be identical to HDF5's own.
"""

import struct
import zlib
from types import ModuleType
from typing import Any

import numpy as np

__all__ = [
    "BLOSC",
    "DEFLATE",
    "LZ4",
    "SHUFFLE",
    "SUPPORTED_FILTERS",
    "ZSTD",
    "Pipeline",
    "decode",
    "encodable",
    "encode",
]

#: A filter pipeline: (HDF5 filter id, client values) in writing order.
Pipeline = tuple[tuple[int, tuple[int, ...]], ...]

DEFLATE = 1
SHUFFLE = 2
BLOSC = 32001
LZ4 = 32004
ZSTD = 32015
#: The HDF5 filter ids this module decodes and encodes.
SUPPORTED_FILTERS = frozenset({DEFLATE, SHUFFLE, BLOSC, LZ4, ZSTD})


_codecs: ModuleType | None = None


def _numcodecs() -> ModuleType:
    """Import numcodecs' compiled codecs on first use (they cost ~0.1 s to import)."""
    global _codecs
    if _codecs is None:
        import numcodecs.blosc
        import numcodecs.lz4
        import numcodecs.zstd

        _codecs = numcodecs
    return _codecs


def _shuffled(data: Any, size: int, *, undo: bool) -> Any:
    """HDF5's byte shuffle of ``size``-byte elements (byte ``k`` of every element together), or its undoing.

    Shuffling sees the whole elements as a (count, size) matrix of bytes and stores its
    transpose; undoing transposes back.  Trailing bytes (a partial element) stay in place.
    """
    raw = np.frombuffer(data, dtype=np.uint8)
    if size <= 1 or raw.size < size:
        return data
    count = raw.size // size
    stored = (size, count) if undo else (count, size)
    out = np.empty_like(raw)
    out[: count * size].reshape(stored[::-1])[...] = raw[: count * size].reshape(stored).T
    out[count * size :] = raw[count * size :]
    return out


def _lz4_decode(data: Any) -> bytes:
    """Decode H5Z-LZ4's framing: total size and block size (big-endian), then sized blocks."""
    view = memoryview(data).cast("B")
    total, block = struct.unpack_from(">QI", view, 0)
    if block <= 0:
        raise ValueError("lz4 chunk with a zero block size")
    lz4 = _numcodecs().lz4
    parts: list[Any] = []
    position, left = 12, total
    while left > 0:
        expected = min(block, left)
        (stored,) = struct.unpack_from(">I", view, position)
        position += 4
        piece = view[position : position + stored]
        position += stored
        if stored == expected:  # kept raw: it did not compress
            parts.append(piece)
        else:  # numcodecs' framing: the decoded size (little-endian), then one lz4 block
            parts.append(lz4.decompress(struct.pack("<I", expected) + piece.tobytes()))
        left -= expected
    return b"".join(parts)


def decode(raw: bytes, filters: Pipeline, mask: int, itemsize: int) -> Any:
    """Decode one stored chunk.

    Parameters
    ----------
    raw : bytes
        The chunk as stored.
    filters : Pipeline
        The dataset's pipeline, in writing order.
    mask : int
        The chunk's filter mask (bit ``i`` set: filter ``i`` was skipped for it).
    itemsize : int
        The element size (shuffle's default).

    Returns
    -------
    bytes-like
        The chunk's bytes.

    Raises
    ------
    Exception
        Whatever the codec raises for data it cannot decode.

    """
    data: Any = raw
    for i in reversed(range(len(filters))):
        if mask >> i & 1:
            continue  # HDF5 skipped this filter for this chunk
        code, values = filters[i]
        if code == DEFLATE:
            data = zlib.decompress(data)
        elif code == SHUFFLE:
            data = _shuffled(data, values[0] if values else itemsize, undo=True)
        elif code == ZSTD:
            data = _numcodecs().zstd.decompress(data)
        elif code == BLOSC:
            data = _numcodecs().blosc.decompress(data)
        else:
            data = _lz4_decode(data)
    return data


_BLOSC_NAMES = {0: "blosclz", 1: "lz4", 2: "lz4hc", 3: "snappy", 4: "zlib", 5: "zstd"}
_BLOSC_MAX_TYPESIZE = 255  # blosc's BLOSC_MAX_TYPESIZE: a larger type size is taken as 1
_LZ4_DEFAULT_BLOCK = 1 << 30  # H5Z-LZ4's block size when the filter has none


def _lz4_encode(data: Any, block: int) -> bytes:
    """H5Z-LZ4's framing: total size and block size (big-endian), then sized lz4 blocks.

    A block that does not get smaller is stored raw, as the filter does (its size then equals
    the block's, which is how the decoder tells).
    """
    view = memoryview(data).cast("B")
    total = len(view)
    block = min(block if block > 0 else _LZ4_DEFAULT_BLOCK, max(total, 1))
    lz4 = _numcodecs().lz4
    parts = [struct.pack(">QI", total, block)]
    for start in range(0, total, block):
        piece = view[start : start + block]
        packed = memoryview(lz4.compress(piece))[4:]  # numcodecs' 4-byte size header dropped
        if len(packed) >= len(piece):
            packed = piece
        parts.append(struct.pack(">I", len(packed)))
        parts.append(bytes(packed))
    return b"".join(parts)


def _blosc_compressor(values: tuple[int, ...]) -> str | None:
    """Return the name of the blosc compressor H5Z-blosc's client values ask for, if numcodecs has it."""
    name = _BLOSC_NAMES.get(values[6] if len(values) > 6 else 0)
    return name if name is not None and name in _numcodecs().blosc.list_compressors() else None


def _blosc_encode(data: Any, values: tuple[int, ...], itemsize: int) -> bytes:
    """Make a blosc frame as H5Z-blosc does from its client values (a compressor numcodecs has)."""
    typesize = values[2] if len(values) > 2 and values[2] > 0 else itemsize
    clevel = values[4] if len(values) > 4 else 5
    shuffle = values[5] if len(values) > 5 else 1
    name = _blosc_compressor(values)
    if name is None:
        raise ValueError(f"blosc compressor {values[6] if len(values) > 6 else 0} is not available")
    blosc = _numcodecs().blosc
    view = memoryview(data).cast("B")
    if typesize > _BLOSC_MAX_TYPESIZE:  # blosc itself takes such a size as 1
        typesize = 1
    if len(view) % typesize == 0:
        # blosc takes the type size from the buffer's item size: numcodecs 0.13 (the last for
        # Python 3.10) has no ``typesize`` argument, and later versions default to it
        source = np.frombuffer(view, dtype=np.dtype((np.void, typesize)))
        return bytes(blosc.compress(source, name.encode(), clevel, shuffle))
    try:  # a type size that does not divide the chunk (the filter's values say so)
        return bytes(blosc.compress(view, name.encode(), clevel, shuffle, typesize=typesize))
    except TypeError:  # numcodecs 0.13: bytes shuffled one by one, which any blosc reader decodes
        return bytes(blosc.compress(view, name.encode(), clevel, shuffle))


def encodable(filters: Pipeline) -> bool:
    """Tell whether :func:`encode` can encode with ``filters``.

    Parameters
    ----------
    filters : Pipeline
        A pipeline of :data:`SUPPORTED_FILTERS`.

    Returns
    -------
    bool
        ``False`` for an empty pipeline, or a blosc compressor numcodecs' blosc lacks (snappy).

    """
    return bool(filters) and all(code != BLOSC or _blosc_compressor(values) for code, values in filters)


def encode(chunk: np.ndarray[Any, Any], filters: Pipeline, mask: int = 0) -> bytes:
    """Encode one whole chunk with the filter pipeline, in writing order.

    Parameters
    ----------
    chunk : numpy.ndarray
        The chunk, C-contiguous, of the chunk shape (edge chunks padded).
    filters : Pipeline
        A pipeline :func:`encodable` accepts.
    mask : int, default 0
        The chunk's filter mask: the filters whose bit is set (bit ``i``: filter ``i``) are
        skipped, as HDF5 skips an optional filter that fails (so that the stored chunk is read
        back with that mask).

    Returns
    -------
    bytes
        The chunk as HDF5 stores it.

    Raises
    ------
    ValueError
        For a blosc compressor numcodecs lacks (see :func:`encodable`).

    """
    data: Any = chunk.reshape(-1).view(np.uint8)
    itemsize = chunk.dtype.itemsize
    for i, (code, values) in enumerate(filters):
        if mask >> i & 1:
            continue
        if code == DEFLATE:
            data = zlib.compress(data, values[0] if values else 6)
        elif code == SHUFFLE:
            data = _shuffled(data, values[0] if values else itemsize, undo=False)
        elif code == ZSTD:
            data = _numcodecs().zstd.compress(data, values[0] if values else 3)
        elif code == BLOSC:
            data = _blosc_encode(data, values, itemsize)
        else:
            data = _lz4_encode(data, values[0] if values else 0)
    return bytes(data)
