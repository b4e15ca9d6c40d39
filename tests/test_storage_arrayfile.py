"""Tests of deker.storage.arrayfile: the storage protocol's values and helpers.

The protocol's conformance suite is tests/storage_helpers/conformance.py; the HDF5
implementation runs it in ``test_storage_hdf5files.py``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from deker.errors import DekerStorageError
from deker.storage import hdf5
from deker.storage.arrayfile import ArrayLayout, count_fill, os_errors


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


def test_count_fill_tells_the_signs_of_zero_apart() -> None:
    """A file whose cells are all fill stores no data: -0.0 counted as 0.0's fill would read as 0.0."""
    values = np.array([0.0, -0.0, 1.0], dtype=np.float32)
    assert count_fill(values, 0.0) == 1 and count_fill(values, -0.0) == 1
    assert count_fill(np.float64(-0.0), 0.0) == 0
    assert count_fill(np.array([complex(0.0, -0.0), 0j]), 0j) == 1
    assert count_fill(np.array([-0.0, np.nan]), np.nan) == 1
