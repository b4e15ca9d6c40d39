"""Tests of deker.storage.arrayfile and .hdf5files: the storage protocol and its HDF5 implementation.

The HDF5 implementation runs the conformance suite (tests/storage_helpers/conformance.py) for
every layout of the suite and zstd; the rest checks what is its own: the layout value, and
that it picks the fast paths from the layout.
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

from deker.errors import DekerStorageError
from deker.storage import arrayfile, hdf5
from deker.storage.arrayfile import ArrayFiles, ArrayLayout, count_fill, os_errors
from deker.storage.hdf5files import HDF5_FILES, HDF5Files

HDF5_OPTIONS = {**OPTIONS, "zstd": {"chunks": (3, 3), **hdf5plugin.Zstd(clevel=3)}}


class TestHDF5Files(ArrayFilesConformance):
    @pytest.fixture
    def files(self) -> ArrayFiles:
        return HDF5_FILES

    @pytest.fixture(params=list(HDF5_OPTIONS), ids=list(HDF5_OPTIONS))
    def options(self, request: pytest.FixtureRequest) -> dict[str, Any]:
        return dict(HDF5_OPTIONS[request.param])


def test_layout_is_a_normalised_frozen_value() -> None:
    kwargs = {"chunks": (2, 2)}
    layout = ArrayLayout([4, np.int64(5)], "float64", np.nan, kwargs)  # type: ignore[arg-type]
    assert layout.shape == (4, 5) and type(layout.shape[1]) is int
    assert layout.dtype == "<f8" and layout.np_dtype == np.dtype("<f8")
    kwargs["chunks"] = (1, 1)
    assert layout.dataset_kwargs == {"chunks": (2, 2)}  # a copy
    with pytest.raises(AttributeError):
        layout.shape = (1,)  # type: ignore[misc]
    assert not layout.contiguous and ArrayLayout((3,), "<i4", -1).contiguous
    assert hash(layout) == hash(ArrayLayout((4, 5), "<f8", layout.fill_value, {"chunks": (1, 1)}))
    assert layout.cells == 20
    again = pickle.loads(pickle.dumps(layout))  # with its computed answers
    assert (again.shape, again.dtype, again.dataset_kwargs) == (
        layout.shape,
        layout.dtype,
        layout.dataset_kwargs,
    )
    assert np.isnan(again.fill_value) and again.cells == 20 and again.np_dtype == np.float64
    assert pickle.loads(pickle.dumps(ArrayLayout((2,), "<i2", -1))) == ArrayLayout((2,), "<i2", -1)


def test_count_fill_is_hdf5s() -> None:
    assert hdf5.count_fill is count_fill  # the old name keeps working
    values = np.array([np.nan, 1.0, np.nan])
    assert count_fill(values, np.nan) == 2 and count_fill(values, 1.0) == 1
    assert count_fill(np.array([complex(np.nan, 0), complex(np.nan, 1)]), complex(np.nan, 0)) == 1
    assert count_fill(np.int8(3), 3) == 1


def test_os_errors_name_the_file(tmp_path: Path) -> None:
    denied = r"Cannot write array file .*x\.hdf5: .*denied"
    with pytest.raises(DekerStorageError, match=denied), os_errors(tmp_path / "x.hdf5", "write array file"):
        raise PermissionError(13, "Permission denied")
    with pytest.raises(FileNotFoundError), os_errors(tmp_path, "work on"):
        raise FileNotFoundError(2, "gone")
    with pytest.raises(DekerStorageError, match="mine"), os_errors(tmp_path, "work on"):
        raise DekerStorageError("mine")


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
