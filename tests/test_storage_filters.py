"""deker/storage/filters.py: HDF5 filter pipelines encoded and decoded in Python.

Each pipeline against HDF5's own filters, both ways, is tested where the chunks are found and
written (tests/test_storage_chunkcodec.py); here: what the module refuses, and each codec's
round trip and framing on bytes alone.
"""

from __future__ import annotations

import struct

import numcodecs
import numcodecs.blosc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deker.storage import filters

PIPELINES = {
    "deflate": ((filters.DEFLATE, (4,)),),
    "shuffle+deflate": ((filters.SHUFFLE, (4,)), (filters.DEFLATE, (1,))),
    "zstd": ((filters.ZSTD, (3,)),),
    "shuffle+zstd": ((filters.SHUFFLE, (4,)), (filters.ZSTD, (1,))),
    "lz4": ((filters.LZ4, (0,)),),
    "lz4 blocks": ((filters.LZ4, (100,)),),
    "blosc zstd": ((filters.BLOSC, (2, 2, 4, 0, 5, 1, 5)),),
    "blosc lz4 bitshuffle": ((filters.BLOSC, (2, 2, 4, 0, 5, 2, 1)),),
    "shuffle": ((filters.SHUFFLE, (4,)),),
}


@pytest.mark.parametrize("name", sorted(PIPELINES))
@settings(max_examples=30, deadline=None)
@given(cells=st.integers(1, 3000), noise=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_encode_then_decode_gives_the_chunk_back(name: str, cells: int, noise: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    if noise:  # incompressible: lz4 stores such blocks raw
        chunk = rng.integers(0, 2**31, size=cells, dtype=np.int32)
    else:
        chunk = np.cumsum(rng.integers(-3, 4, size=cells)).astype(np.int32)
    pipeline = PIPELINES[name]
    encoded = filters.encode(chunk, pipeline)
    assert encoded is not None
    assert bytes(filters.decode(encoded, pipeline, 0, 4)) == chunk.tobytes()


def test_lz4_framing_is_h5z_lz4s() -> None:
    """Total size (8 bytes) and block size (4 bytes) big-endian, then each block's size and bytes."""
    chunk = np.zeros(1000, dtype=np.int32)  # 4000 bytes in blocks of 1024: 4 blocks
    encoded = filters.encode(chunk, ((filters.LZ4, (1024,)),))
    assert encoded is not None
    total, block = struct.unpack_from(">QI", encoded, 0)
    assert (total, block) == (4000, 1024)
    position, sizes = 12, []
    while position < len(encoded):
        (size,) = struct.unpack_from(">I", encoded, position)
        sizes.append(size)
        position += 4 + size
    assert position == len(encoded) and len(sizes) == 4 and all(s < 1024 for s in sizes)


def test_a_mask_skips_filters() -> None:
    chunk = np.arange(100, dtype=np.int32)
    pipeline = ((filters.SHUFFLE, (4,)), (filters.DEFLATE, (4,)))
    only_shuffled = filters.encode(chunk, pipeline[:1])
    assert only_shuffled is not None
    assert bytes(filters.decode(only_shuffled, pipeline, 0b10, 4)) == chunk.tobytes()  # deflate skipped
    assert filters.encode(chunk, pipeline, 0b10) == only_shuffled  # encoding with that mask
    assert filters.encode(chunk, pipeline, 0b11) == chunk.tobytes()  # every filter skipped
    only_deflated = filters.encode(chunk, pipeline, 0b01)
    assert bytes(filters.decode(only_deflated, pipeline, 0b01, 4)) == chunk.tobytes()


def test_garbage_does_not_decode() -> None:
    for pipeline in (PIPELINES["deflate"], PIPELINES["zstd"], PIPELINES["blosc zstd"]):
        with pytest.raises(Exception):  # each codec raises its own type
            filters.decode(b"\x00garbage" * 10, pipeline, 0, 4)


def test_blosc_codecs_numcodecs_lacks_are_left_to_h5py() -> None:
    snappy = ((filters.BLOSC, (2, 2, 4, 65536, 5, 1, 3)),)  # compressor 3: snappy
    assert "snappy" not in numcodecs.blosc.list_compressors()
    assert not filters.encodable(snappy)
    assert not filters.encodable(())
    assert filters.encodable(((filters.BLOSC, (2, 2, 4, 65536, 5, 1, 5)),))  # zstd


@pytest.mark.parametrize(
    ("typesize", "recorded"),
    [(4, 4), (8, 8), (3, 3), (300, 1)],  # blosc's header keeps 1 for a size over 255
)
def test_blosc_frames_record_the_filters_type_size(typesize: int, recorded: int) -> None:
    """The type size comes from the filter's values (numcodecs 0.13 has no argument for it)."""
    if typesize == 3 and numcodecs.__version__.startswith("0.13."):
        pytest.skip("numcodecs 0.13 cannot give blosc a type size that does not divide the chunk")
    chunk = np.arange(600, dtype=np.float64)  # 4800 bytes: divisible by 3, 4 and 8, not by 300
    if typesize == 3:
        chunk = chunk[:599]  # 4792 bytes: not divisible by 3
    pipeline = ((filters.BLOSC, (2, 2, typesize, 0, 5, 1, 1)),)
    encoded = filters.encode(chunk, pipeline)
    assert encoded is not None
    assert encoded[3] == recorded  # blosc header: version, version of the codec, flags, type size
    assert bytes(filters.decode(encoded, pipeline, 0, 8)) == chunk.tobytes()
