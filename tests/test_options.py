"""Tests of deker.options: HDF5Options / HDF5CompressionOpts rules and codecs (SPEC §1.10)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin
import numpy as np
import pytest

from deker.errors import DekerValidationError
from deker.options import HDF5CompressionOpts, HDF5Options


def test_defaults() -> None:
    opts = HDF5Options()
    assert opts.chunks is None
    assert opts.compression_opts == HDF5CompressionOpts(None, None)
    assert HDF5Options(compression_opts=None).compression_opts == HDF5CompressionOpts(None, None)
    assert opts.as_dict == {"chunks": {"mode": "none"}, "compression": {"compression": "none", "options": []}}


def test_compression_opts_are_required() -> None:
    with pytest.raises(TypeError):
        HDF5CompressionOpts("gzip")  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("opts", "expected"),
    [
        (HDF5Options(chunks=True), {"mode": "true"}),
        (HDF5Options(chunks=[5, 5]), {"mode": "manual", "size": [5, 5]}),
        (HDF5Options(chunks=(1, 2, 3)), {"mode": "manual", "size": [1, 2, 3]}),
    ],
)
def test_chunks_as_dict(opts: HDF5Options, expected: dict[str, Any]) -> None:
    assert opts.as_dict["chunks"] == expected
    assert list(opts.as_dict) == ["chunks", "compression"]


@pytest.mark.parametrize(
    ("compression", "expected"),
    [
        (HDF5CompressionOpts("gzip", 4), {"compression": "gzip", "options": ["4"]}),
        (HDF5CompressionOpts("gzip", [4]), {"compression": "gzip", "options": ["4"]}),
        (HDF5CompressionOpts("gzip", None), {"compression": "gzip", "options": None}),
        (HDF5CompressionOpts("gzip", []), {"compression": "gzip", "options": None}),
        (HDF5CompressionOpts("lzf", None), {"compression": "lzf", "options": None}),
        (HDF5CompressionOpts("szip", ["nn", 16]), {"compression": "szip", "options": ["nn", "16"]}),
        (HDF5CompressionOpts(**hdf5plugin.Zstd(3)), {"compression": "32015", "options": ["3"]}),
        (HDF5CompressionOpts(32015, 3), {"compression": "32015", "options": ["3"]}),
        (HDF5CompressionOpts("32015", (3,)), {"compression": "32015", "options": ["3"]}),
        (HDF5CompressionOpts(None, None), {"compression": "none", "options": []}),
    ],
)
def test_compression_as_dict(compression: HDF5CompressionOpts, expected: dict[str, Any]) -> None:
    assert compression.as_dict == expected
    opts = HDF5Options(compression_opts=compression)
    assert opts.as_dict["compression"] == expected
    assert HDF5Options.from_dict(json.loads(json.dumps(opts.as_dict))) == opts


def test_normalisation() -> None:
    assert HDF5CompressionOpts("gzip", [4]).compression_opts == 4
    assert HDF5CompressionOpts(32015, 3).compression_opts == (3,)
    assert HDF5CompressionOpts(32001, [0, 0, 0, 0, 5, 1, 1]).compression_opts == (0, 0, 0, 0, 5, 1, 1)
    assert HDF5CompressionOpts(np.int64(32015), None).compression == 32015
    assert HDF5CompressionOpts("gzip", []).compression_opts is None
    assert HDF5Options(chunks=[2, 3]).chunks == (2, 3)
    zstd = HDF5CompressionOpts(**hdf5plugin.Zstd(6))
    assert zstd == HDF5CompressionOpts(32015, (6,))


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((True, None), "Invalid compression type"),
        ((1.5, None), "Invalid compression type"),
        (([32015], None), "Invalid compression type"),
        (("", None), "Invalid compression value"),
        (("  ", None), "Invalid compression value"),
        ((-1, None), "Invalid compression value"),
        (("zstd", None), "Invalid compression value"),
        ((None, 4), "Perhaps you forgot to indicate filter name"),
        ((None, [4]), "Perhaps you forgot to indicate filter name"),
        (("gzip", True), "Invalid compression options"),
        (("gzip", "4"), "Invalid compression options"),
        (("gzip", 4.0), "Invalid compression options"),
        (("gzip", {"level": 4}), "Invalid compression options"),
        (("gzip", -1), "Invalid compression level value"),
        ((32015, [-3]), "Invalid compression level value"),
        (("gzip", 10), "gzip takes one level"),
        (("gzip", [4, 5]), "gzip takes one level"),
        (("lzf", 4), "lzf takes no options"),
        ((32015, ["3"]), "Invalid compression options"),
        ((32015, [1.5]), "Invalid compression options"),
        (("szip", [1.5]), "Invalid compression options"),
    ],
)
def test_compression_invalid(args: tuple[Any, Any], match: str) -> None:
    with pytest.raises(DekerValidationError, match=match):
        HDF5CompressionOpts(*args)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"chunks": False}, "Invalid chunks"),
        ({"chunks": 5}, "Invalid chunks"),
        ({"chunks": "auto"}, "Invalid chunks"),
        ({"chunks": []}, "non-empty list of positive ints"),
        ({"chunks": [5.0, 5]}, "non-empty list of positive ints"),
        ({"chunks": [0, 5]}, "non-empty list of positive ints"),
        ({"chunks": [-1]}, "non-empty list of positive ints"),
        ({"chunks": [True]}, "non-empty list of positive ints"),
        ({"compression_opts": "gzip"}, "Invalid compression_opts"),
        ({"compression_opts": {"compression": "gzip", "compression_opts": 4}}, "Invalid compression_opts"),
    ],
)
def test_options_invalid(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(DekerValidationError, match=match):
        HDF5Options(**kwargs)


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        (
            {
                "chunks": {"mode": "manual", "size": [5, 5]},
                "compression": {"compression": "gzip", "options": ["4"]},
            },
            HDF5Options(chunks=(5, 5), compression_opts=HDF5CompressionOpts("gzip", 4)),
        ),
        (
            {"chunks": {"mode": "true"}, "compression": {"compression": "32015", "options": ["3"]}},
            HDF5Options(chunks=True, compression_opts=HDF5CompressionOpts(32015, (3,))),
        ),
        ({"chunks": {"mode": "none"}, "compression": {"compression": "none", "options": []}}, HDF5Options()),
        ({}, HDF5Options()),
        (
            {"chunks": {"mode": "none"}, "compression": {"compression": "lzf", "options": None}},
            HDF5Options(compression_opts=HDF5CompressionOpts("lzf", None)),
        ),
        (  # deker 1.1.7 failed here with a raw ValueError; the useless options are dropped
            {"chunks": {"mode": "none"}, "compression": {"compression": "lzf", "options": ["1"]}},
            HDF5Options(compression_opts=HDF5CompressionOpts("lzf", None)),
        ),
        (
            {"chunks": {"mode": "none"}, "compression": {"compression": "szip", "options": ["nn", "16"]}},
            HDF5Options(compression_opts=HDF5CompressionOpts("szip", ("nn", 16))),
        ),
        (
            {"chunks": {"mode": "none"}, "compression": {"compression": "gzip", "options": None}},
            HDF5Options(compression_opts=HDF5CompressionOpts("gzip", None)),
        ),
    ],
)
def test_from_dict(stored: dict[str, Any], expected: HDF5Options) -> None:
    assert HDF5Options.from_dict(stored) == expected


@pytest.mark.parametrize(
    "stored",
    [
        {"chunks": {"mode": "none"}, "compression": {"compression": "blosc", "options": []}},
        {"chunks": {"mode": "none"}, "compression": {"compression": "gzip", "options": ["x"]}},
        {"chunks": {"mode": "manual", "size": []}, "compression": {"compression": "none", "options": []}},
        {"chunks": "true"},
        {"compression": "gzip"},
        [1, 2],
    ],
)
def test_from_dict_invalid(stored: Any) -> None:
    with pytest.raises(DekerValidationError):
        HDF5Options.from_dict(stored)


def test_h5py_kwargs() -> None:
    assert HDF5Options().h5py_dataset_kwargs((3, 4)) == {
        "chunks": None,
        "compression": None,
        "compression_opts": None,
    }
    kw = HDF5Options(chunks=(5, 5), compression_opts=HDF5CompressionOpts("gzip", 4)).h5py_dataset_kwargs(
        (10, 3)
    )
    assert kw == {"chunks": (5, 3), "compression": "gzip", "compression_opts": 4}
    kw = HDF5Options(
        chunks=True, compression_opts=HDF5CompressionOpts(**hdf5plugin.Zstd(2))
    ).h5py_dataset_kwargs((4,))
    assert kw == {"chunks": True, "compression": 32015, "compression_opts": (2,)}
    with pytest.raises(DekerValidationError, match="one chunk size per dimension"):
        HDF5Options(chunks=(5, 5)).h5py_dataset_kwargs((10,))


@pytest.mark.parametrize(
    "opts",
    [
        HDF5Options(),
        HDF5Options(chunks=True),
        HDF5Options(chunks=(50, 2)),
        HDF5Options(chunks=(2, 2), compression_opts=HDF5CompressionOpts("gzip", 9)),
        HDF5Options(compression_opts=HDF5CompressionOpts("gzip", None)),
        HDF5Options(compression_opts=HDF5CompressionOpts("lzf", None)),
        HDF5Options(compression_opts=HDF5CompressionOpts(**hdf5plugin.Zstd(6))),
        HDF5Options(compression_opts=HDF5CompressionOpts(**hdf5plugin.Blosc())),
        HDF5Options(compression_opts=HDF5CompressionOpts(**hdf5plugin.LZ4())),
    ],
)
def test_h5py_accepts_kwargs(tmp_path: Path, opts: HDF5Options) -> None:
    data = np.arange(12, dtype=np.float64).reshape(4, 3)
    path = tmp_path / "f.hdf5"
    with h5py.File(path, "w", locking=False) as f:
        f.create_dataset("data", data=data, **opts.h5py_dataset_kwargs(data.shape))
    with h5py.File(path, "r", locking=False) as f:
        np.testing.assert_array_equal(f["data"][()], data)
