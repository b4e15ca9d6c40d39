"""Round trips through the public API for every chunking mode and every compression filter.

Each case creates a collection with the options, writes an Array and a VArray, closes the
client, reopens the storage with a new client and reads everything back: the values, the
options stored in the collection JSON, and the filters HDF5 really applied to the data files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import hdf5plugin
import numpy as np
import pytest

from deker import (
    ArraySchema,
    Client,
    DimensionSchema,
    HDF5CompressionOpts,
    HDF5Options,
    VArraySchema,
)
from deker.errors import DekerValidationError
from deker.storage.identity import STORAGE_ID_FILE

SHAPE = (12, 10)

# (id, compression options, h5py filter id or name expected on the dataset, lossless)
FILTERS: list[tuple[str, HDF5CompressionOpts, str, bool]] = [
    ("gzip", HDF5CompressionOpts("gzip", [5]), "gzip", True),
    ("lzf", HDF5CompressionOpts("lzf", None), "lzf", True),
    ("szip", HDF5CompressionOpts("szip", ["nn", 8]), "szip", True),
    ("zstd", HDF5CompressionOpts(**hdf5plugin.Zstd(clevel=5)), "32015", True),
    ("lz4", HDF5CompressionOpts(**hdf5plugin.LZ4()), "32004", True),
    ("blosc", HDF5CompressionOpts(**hdf5plugin.Blosc(cname="zstd", clevel=3)), "32001", True),
    ("blosc2", HDF5CompressionOpts(**hdf5plugin.Blosc2(cname="lz4", clevel=5)), "32026", True),
    ("bitshuffle", HDF5CompressionOpts(**hdf5plugin.Bitshuffle()), "32008", True),
    ("bzip2", HDF5CompressionOpts(**hdf5plugin.BZip2(blocksize=5)), "307", True),
    ("sz3", HDF5CompressionOpts(**hdf5plugin.SZ3(absolute=1e-3)), "32024", False),
    ("zfp", HDF5CompressionOpts(**hdf5plugin.Zfp(accuracy=1e-3)), "32013", False),
]


def _data(shape: tuple[int, ...]) -> np.ndarray:
    return (np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape) / 7.0).astype(np.float32)


def _filters(path: Path) -> set[str]:
    with h5py.File(path, "r", locking=False) as f:
        dset = f["data"]
        names = set(dset._filters)
        if dset.compression:
            names.add(str(dset.compression))
        return names


def _roundtrip(
    root: Path, options: HDF5Options, fill: float | None = None
) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    dims = [DimensionSchema(name="y", size=SHAPE[0]), DimensionSchema(name="x", size=SHAPE[1])]
    with Client(f"file://{root}") as client:
        arrays = client.create_collection(
            "a", ArraySchema(dtype=np.float32, dimensions=dims, fill_value=fill), collection_options=options
        )
        arrays.create()[:].update(_data(SHAPE))
        tiles = client.create_collection(
            "v",
            VArraySchema(dtype=np.float32, dimensions=dims, vgrid=(2, 2), fill_value=fill),
            collection_options=options,
        )
        varr = tiles.create()
        varr[2:11, 1:9].update(_data((9, 8)))
    with Client(f"file://{root}") as client:  # a new client reads what the first one wrote
        a_coll, v_coll = client.get_collection("a"), client.get_collection("v")
        assert a_coll is not None and v_coll is not None
        assert a_coll.options == options and v_coll.options == options
        arr = next(iter(a_coll))
        got_a = arr[:].read()
        got_v = next(iter(v_coll.varrays))[2:11, 1:9].read()
        files = [arr._main_file] + [t._main_file for t in v_coll.arrays]
    return got_a, got_v, files


@pytest.mark.parametrize(("name", "opts", "filter_id", "lossless"), FILTERS, ids=[f[0] for f in FILTERS])
def test_every_compression_filter(
    tmp_path: Path, name: str, opts: HDF5CompressionOpts, filter_id: str, lossless: bool
) -> None:
    # lossy filters cannot store NaN (see test_lossy_filter_refuses_nan_fill): use a finite fill
    fill = None if lossless else -9999.0
    got_a, got_v, files = _roundtrip(tmp_path, HDF5Options(chunks=(4, 5), compression_opts=opts), fill)
    if lossless:
        np.testing.assert_array_equal(got_a, _data(SHAPE))
        np.testing.assert_array_equal(got_v, _data((9, 8)))
    else:
        np.testing.assert_allclose(got_a, _data(SHAPE), atol=2e-3)
        np.testing.assert_allclose(got_v, _data((9, 8)), atol=2e-3)
    assert len(files) == 5  # one Array, four tiles
    for path in files:
        assert filter_id in _filters(path), (name, path, _filters(path))


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [(None, None), (True, "auto"), ((4, 5), (4, 5)), ((20, 20), (12, 10))],
    ids=["contiguous", "auto", "tuple", "tuple-larger-than-shape"],
)
def test_every_chunking_mode(tmp_path: Path, chunks: Any, expected: Any) -> None:
    got_a, got_v, files = _roundtrip(tmp_path, HDF5Options(chunks=chunks))
    np.testing.assert_array_equal(got_a, _data(SHAPE))
    np.testing.assert_array_equal(got_v, _data((9, 8)))
    with h5py.File(files[0], "r", locking=False) as f:
        stored = f["data"].chunks
    if expected is None:
        assert stored is None
    elif expected == "auto":
        assert stored is not None
    else:
        assert stored == expected


def test_compression_without_chunks_gets_chunked(tmp_path: Path) -> None:
    """HDF5 filters need chunks: ``chunks=None`` with a filter still stores compressed data."""
    opts = HDF5Options(chunks=None, compression_opts=HDF5CompressionOpts("gzip", [9]))
    got_a, _, files = _roundtrip(tmp_path, opts)
    np.testing.assert_array_equal(got_a, _data(SHAPE))
    assert "gzip" in _filters(files[0])


@pytest.mark.parametrize("name", ["sz3", "zfp"])
def test_lossy_filter_refuses_nan_fill(tmp_path: Path, name: str) -> None:
    """SZ3 segfaults and ZFP returns garbage on chunks holding NaN: refuse, and write nothing."""
    opts = next(f[1] for f in FILTERS if f[0] == name)
    dims = [DimensionSchema(name="x", size=4)]
    with Client(f"file://{tmp_path}") as client:
        with pytest.raises(DekerValidationError, match="cannot store NaN"):
            client.create_collection(
                "c", ArraySchema(dtype=np.float64, dimensions=dims), HDF5Options(compression_opts=opts)
            )
        assert client.get_collection("c") is None
        # nothing but the storage's identity file (made with the storage)
        assert [p.name for p in (tmp_path / "collections").iterdir()] == [STORAGE_ID_FILE]
        ints = client.create_collection(  # integer data has no NaN: accepted
            "i", ArraySchema(dtype=np.int32, dimensions=dims), HDF5Options(compression_opts=opts)
        )
        assert ints.options is not None
