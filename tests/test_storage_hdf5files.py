"""Tests of deker.storage.hdf5files: the HDF5 implementation of the storage protocol.

It runs the conformance suite (tests/storage_helpers/conformance.py) for every layout of the
suite and zstd; the rest checks what is its own: that it is one stateless value, and that it
picks the fast paths from the layout.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin
import numpy as np
import pytest
from storage_helpers.conformance import META, META_DTYPE, OPTIONS, SHAPE, WHOLE, ArrayFilesConformance

from deker.storage import arrayfile, hdf5
from deker.storage.arrayfile import ArrayFiles, ArrayLayout
from deker.storage.hdf5files import HDF5_FILES, HDF5Files

HDF5_OPTIONS = {**OPTIONS, "zstd": {"chunks": (3, 3), **hdf5plugin.Zstd(clevel=3)}}


class TestHDF5Files(ArrayFilesConformance):
    @pytest.fixture
    def files(self) -> ArrayFiles:
        return HDF5_FILES

    @pytest.fixture(params=list(HDF5_OPTIONS), ids=list(HDF5_OPTIONS))
    def options(self, request: pytest.FixtureRequest) -> dict[str, Any]:
        return dict(HDF5_OPTIONS[request.param])


def test_the_implementation_is_one_stateless_value() -> None:
    assert isinstance(HDF5Files(), arrayfile.ArrayFiles)
    assert pickle.loads(pickle.dumps(HDF5_FILES)).__dict__ == {}


def _h5py_opens(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    opened: list[Any] = []
    real = h5py.File

    def counting(name: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(name)  # (the per-process templates are made in files of their own)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(hdf5.h5py, "File", counting)
    return opened


@pytest.mark.parametrize("options", [{}, {"chunks": (2, 5)}], ids=["contiguous", "chunked"])
def test_fresh_files_written_whole_are_read_without_hdf5_when_contiguous(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, options: dict[str, Any]
) -> None:
    """The implementation picks the template read from the layout (no caller says file_shape)."""
    layout = ArrayLayout((64, 256), "<f8", np.nan, options)  # 128 KiB: over rawio.MIN_BYTES
    data = np.arange(64 * 256, dtype=np.float64).reshape(64, 256)
    path = tmp_path / "a.hdf5"
    HDF5_FILES.create(path, layout, META, META_DTYPE, data)
    opened = _h5py_opens(monkeypatch)
    np.testing.assert_array_equal(HDF5_FILES.read(path, layout, (slice(0, 64), slice(0, 256))), data)
    np.testing.assert_array_equal(HDF5_FILES.read(path, layout, (3, slice(10, 20))), data[3, 10:20])
    ours = [name for name in opened if isinstance(name, (str, Path)) and Path(name) == path]
    assert (ours == []) == layout.contiguous  # a fresh file: no layout cached yet


def test_delete_removes_what_an_interrupted_change_left(tmp_path: Path) -> None:
    layout = ArrayLayout(SHAPE, "<f8", np.nan)
    path = tmp_path / "a.hdf5"
    HDF5_FILES.create(path, layout, META, META_DTYPE)
    with hdf5._modify(path) as handle:  # a change in place leaves an undo journal while it runs
        handle["empty_cells"][()] = np.int64(20)
        leftovers = sorted(p.name for p in tmp_path.iterdir())
    HDF5_FILES.delete(path)
    assert list(tmp_path.iterdir()) == []
    assert leftovers  # (the journal existed meanwhile)
    with pytest.raises(FileNotFoundError):
        HDF5_FILES.read(path, layout, WHOLE)
