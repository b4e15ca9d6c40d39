"""The conformance suite of the storage protocol (:class:`deker.storage.arrayfile.ArrayFiles`).

Every implementation must pass it.  A test module subclasses :class:`ArrayFilesConformance`
(its name starting with ``Test``) and gives the implementation as the ``files`` fixture::

    class TestHDF5Files(ArrayFilesConformance):
        @pytest.fixture
        def files(self) -> ArrayFiles:
            return HDF5_FILES

It may also override the ``options`` fixture (the dataset options the layouts of the tests
use: without any, chunked, compressed) to add its own.  The tests use only the protocol, real
files in ``tmp_path`` and numpy as the oracle (hypothesis draws operation sequences); they
know nothing of the file format, except that a file of garbage bytes is not a valid file.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deker.errors import DekerStorageError
from deker.storage.arrayfile import ArrayFiles, ArrayLayout, Bounds

META = b'{"id": "0b9f1d52-3a0e-4c7e-9d8e-5d7c2f3a1b00", "primary_attributes": {}, "custom_attributes": {}}'
META_DTYPE = f"S{len(META) + 33}"
SHAPE = (4, 5)
WHOLE = (slice(0, 4), slice(0, 5))

#: The dataset options of the layouts (chunks for SHAPE; the hypothesis test draws its own).
OPTIONS = {
    "contiguous": {},
    "chunked": {"chunks": (2, 3)},
    "gzip": {"chunks": (3, 2), "compression": "gzip", "compression_opts": 4},
    "shuffle-gzip": {"chunks": (2, 2), "shuffle": True, "compression": "gzip", "compression_opts": 1},
    "lzf": {"chunks": (4, 1), "compression": "lzf"},
}

DTYPES = ["<i1", "<i2", "<i4", "<i8", "<u1", "<u2", "<u4", "<u8", "<f2", "<f4", "<f8", "<c8", "<c16"]
if hasattr(np, "float128"):
    DTYPES += [np.dtype(np.float128).str, np.dtype(np.complex256).str]


def default_fill(dtype: Any) -> Any:
    """Deker's default fill value of a dtype: NaN for floats and complex, the minimum for ints."""
    dt = np.dtype(dtype)
    if dt.kind in "fc":
        return dt.type(np.nan)
    return dt.type(np.iinfo(dt).min)


def oracle_fill_count(values: np.ndarray, fill: Any) -> int:
    """Count the fill cells of ``values`` with plain numpy (NaN-aware, complex part by part)."""
    values = np.asarray(values)
    if values.dtype.kind == "c":
        f = complex(fill)
        re = np.isnan(values.real) if math.isnan(f.real) else values.real == f.real
        im = np.isnan(values.imag) if math.isnan(f.imag) else values.imag == f.imag
        return int(np.sum(re & im))
    if values.dtype.kind == "f" and math.isnan(float(fill)):
        return int(np.sum(np.isnan(values)))
    return int(np.sum(values == fill))


def sample(shape: tuple[int, ...], dtype: Any, seed: int = 1) -> np.ndarray:
    """Values of ``dtype`` with no fill cell for :func:`default_fill` (small non-negative numbers)."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 100, size=shape).astype(dtype)
    if np.dtype(dtype).kind == "c":
        data = data + (1j * rng.integers(0, 100, size=shape)).astype(dtype)
    return data


def assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal dtype, shape and cells (NaN equal to NaN)."""
    assert actual.dtype == np.asarray(expected).dtype
    np.testing.assert_array_equal(actual, expected)


def region(bounds: Bounds) -> tuple[int | slice, ...]:
    """The numpy index of normalised bounds (they are one already)."""
    return tuple(bounds)


@st.composite
def scenarios(draw: st.DrawFn, options: dict[str, Any]) -> dict[str, Any]:
    """A layout (shape, dtype, fill, chunks if ``options`` has any) and operations on its file."""
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=3)))
    dtype = draw(st.sampled_from(["<i2", "<u1", "<f4", "<f8", "<c8"]))
    fill = draw(st.sampled_from([default_fill(dtype), np.dtype(dtype).type(0)]))
    kwargs = dict(options)
    if "chunks" in kwargs:
        kwargs["chunks"] = tuple(draw(st.integers(1, n)) for n in shape)
    ops = []
    for _ in range(draw(st.integers(1, 8))):
        bounds: list[int | slice] = []
        for size in shape:
            if draw(st.booleans()):
                start = draw(st.integers(0, size))
                bounds.append(slice(start, draw(st.integers(start, size))))
            else:
                bounds.append(draw(st.integers(0, size - 1)))
        kind = draw(st.sampled_from(["array", "scalar", "fill", "clear", "whole", "read-into"]))
        ops.append((kind, tuple(bounds), draw(st.integers(0, 2**32 - 1))))
    first = draw(st.sampled_from(["empty", "data", "scalar"]))
    return {"shape": shape, "dtype": dtype, "fill": fill, "kwargs": kwargs, "ops": ops, "first": first}


class ArrayFilesConformance:
    """What every implementation of :class:`~deker.storage.arrayfile.ArrayFiles` must do."""

    @pytest.fixture
    def files(self) -> ArrayFiles:
        """The implementation under test (a subclass gives it)."""
        raise NotImplementedError("a conformance test class gives its implementation as 'files'")

    @pytest.fixture(params=list(OPTIONS), ids=list(OPTIONS))
    def options(self, request: pytest.FixtureRequest) -> dict[str, Any]:
        """Dataset options of the layouts under test."""
        return dict(OPTIONS[request.param])

    @pytest.fixture
    def layout(self, options: dict[str, Any]) -> ArrayLayout:
        """A float64 layout of SHAPE with a NaN fill value."""
        return ArrayLayout(SHAPE, "<f8", np.nan, options)

    @pytest.fixture
    def empty(self, files: ArrayFiles, layout: ArrayLayout, tmp_path: Path) -> Path:
        """A new file of ``layout`` without data."""
        path = tmp_path / "sub" / "a.hdf5"
        files.create(path, layout, META, META_DTYPE)
        return path

    # ------------------------------------------------------------------ the implementation

    def test_is_a_picklable_implementation(self, files: ArrayFiles, layout: ArrayLayout) -> None:
        assert isinstance(files, ArrayFiles)
        assert isinstance(pickle.loads(pickle.dumps(files)), type(files))
        assert layout.cells == 20 and layout.np_dtype == np.float64
        again = pickle.loads(pickle.dumps(layout))
        assert (again.shape, again.dtype, dict(again.dataset_kwargs)) == (SHAPE, "<f8", layout.dataset_kwargs)
        assert again.contiguous == layout.contiguous == (not layout.dataset_kwargs)

    # ------------------------------------------------------------------ creation

    def test_new_file_is_all_fill(self, files: ArrayFiles, layout: ArrayLayout, empty: Path) -> None:
        assert files.read_meta(empty) == META
        assert files.empty_cells(empty) == 20
        assert not files.has_data(empty)
        assert_same(files.read(empty, layout, WHOLE), np.full(SHAPE, np.nan))
        assert [p.name for p in empty.parent.iterdir()] == [empty.name]  # nothing else left

    def test_create_refuses_an_existing_file(
        self, files: ArrayFiles, layout: ArrayLayout, empty: Path
    ) -> None:
        files.write(empty, layout, (1, slice(0, 5)), np.arange(5.0))
        with pytest.raises(FileExistsError):
            files.create(empty, layout, b"{}", "S40", np.zeros(SHAPE))
        assert files.read_meta(empty) == META
        assert files.empty_cells(empty) == 15

    def test_create_holding_every_cell(self, files: ArrayFiles, layout: ArrayLayout, tmp_path: Path) -> None:
        data = sample(SHAPE, np.float64)
        data[0, :2] = np.nan
        path = tmp_path / "full.hdf5"
        files.create(path, layout, META, META_DTYPE, data)
        assert_same(files.read(path, layout, WHOLE), data)
        assert files.empty_cells(path) == 2 and files.has_data(path)
        assert files.read_meta(path) == META

    def test_create_with_scalar_broadcasts(
        self, files: ArrayFiles, layout: ArrayLayout, tmp_path: Path
    ) -> None:
        files.create(tmp_path / "s.hdf5", layout, META, META_DTYPE, np.float64(2.5))
        assert_same(files.read(tmp_path / "s.hdf5", layout, WHOLE), np.full(SHAPE, 2.5))
        assert files.empty_cells(tmp_path / "s.hdf5") == 0
        files.create(tmp_path / "f.hdf5", layout, META, META_DTYPE, np.float64(np.nan))
        assert not files.has_data(tmp_path / "f.hdf5") and files.empty_cells(tmp_path / "f.hdf5") == 20

    def test_create_with_only_fill_stores_nothing(
        self, files: ArrayFiles, layout: ArrayLayout, tmp_path: Path
    ) -> None:
        files.create(tmp_path / "a.hdf5", layout, META, META_DTYPE, np.full(SHAPE, np.nan))
        assert not files.has_data(tmp_path / "a.hdf5") and files.empty_cells(tmp_path / "a.hdf5") == 20

    def test_create_with_misshapen_data_creates_nothing(
        self, files: ArrayFiles, layout: ArrayLayout, tmp_path: Path
    ) -> None:
        with pytest.raises((TypeError, ValueError)):
            files.create(tmp_path / "a.hdf5", layout, META, META_DTYPE, np.ones((3, 5)))
        assert not (tmp_path / "a.hdf5").exists()

    # ------------------------------------------------------------------ reads and writes

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_round_trip_dtypes(
        self, files: ArrayFiles, options: dict[str, Any], tmp_path: Path, dtype: str
    ) -> None:
        fill = default_fill(dtype)
        layout = ArrayLayout(SHAPE, dtype, fill, options)
        path = tmp_path / "a.hdf5"
        files.create(path, layout, META, META_DTYPE)
        data = sample(SHAPE, dtype)
        assert_same(files.read(path, layout, WHOLE), np.full(SHAPE, fill, dtype))
        files.write(path, layout, (slice(1, 3), slice(2, 5)), data[1:3, 2:5])
        expected = np.full(SHAPE, fill, dtype)
        expected[1:3, 2:5] = data[1:3, 2:5]
        assert_same(files.read(path, layout, WHOLE), expected)
        assert files.empty_cells(path) == 14
        files.write(path, layout, WHOLE, data)
        assert_same(files.read(path, layout, WHOLE), data)
        assert files.empty_cells(path) == 0
        cell = files.read(path, layout, (2, 3))
        assert cell.shape == () and cell.dtype == np.dtype(dtype) and cell == data[2, 3]
        assert_same(files.read(path, layout, (slice(0, 4), 1)), data[:, 1])

    def test_partial_updates_keep_the_rest(self, files: ArrayFiles, layout: ArrayLayout, empty: Path) -> None:
        oracle = np.full(SHAPE, np.nan)
        for bounds, value in [
            ((slice(0, 2), slice(0, 5)), np.arange(10.0).reshape(2, 5)),
            ((slice(1, 4), 2), np.array([7.0, np.nan, 9.0])),
            ((3, slice(3, 5)), np.array([1.5, 2.5])),
            ((0, 0), np.float64(-1.0)),
        ]:
            files.write(empty, layout, bounds, value)
            oracle[bounds] = value
            assert_same(files.read(empty, layout, WHOLE), oracle)
            assert files.empty_cells(empty) == oracle_fill_count(oracle, np.nan)

    def test_scalars_broadcast_over_the_region(
        self, files: ArrayFiles, layout: ArrayLayout, empty: Path
    ) -> None:
        files.write(empty, layout, (slice(0, 2), slice(0, 5)), np.float64(7.5))
        assert files.empty_cells(empty) == 10
        files.write(empty, layout, (slice(0, 4), slice(0, 1)), np.float64(np.nan))
        assert files.empty_cells(empty) == 12
        expected = np.full(SHAPE, np.nan)
        expected[0:2, 1:5] = 7.5
        assert_same(files.read(empty, layout, WHOLE), expected)

    def test_writing_only_fill_stores_nothing(
        self, files: ArrayFiles, layout: ArrayLayout, empty: Path
    ) -> None:
        files.write(empty, layout, (slice(0, 2), slice(0, 5)), np.full((2, 5), np.nan))
        assert not files.has_data(empty) and files.empty_cells(empty) == 20
        files.write(empty, layout, WHOLE, np.full(SHAPE, np.nan))
        assert not files.has_data(empty) and files.empty_cells(empty) == 20

    def test_overwriting_every_cell_with_fill_drops_the_data(
        self, files: ArrayFiles, layout: ArrayLayout, empty: Path
    ) -> None:
        files.write(empty, layout, WHOLE, sample(SHAPE, np.float64))
        files.write(empty, layout, (slice(0, 2), slice(0, 5)), np.full((2, 5), np.nan))
        assert files.empty_cells(empty) == 10 and files.has_data(empty)
        files.write(empty, layout, (slice(1, 4), slice(0, 5)), np.float64(np.nan))
        assert files.empty_cells(empty) == 20 and not files.has_data(empty)
        assert_same(files.read(empty, layout, WHOLE), np.full(SHAPE, np.nan))

    def test_misshapen_data_changes_nothing(
        self, files: ArrayFiles, layout: ArrayLayout, empty: Path
    ) -> None:
        for stored in (False, True):
            before = files.read(empty, layout, WHOLE)
            for bounds, data in [((slice(0, 2), slice(0, 5)), np.ones((3, 5))), (WHOLE, np.ones((3, 5)))]:
                with pytest.raises((TypeError, ValueError)):
                    files.write(empty, layout, bounds, data)
                assert_same(files.read(empty, layout, WHOLE), before)
                assert files.has_data(empty) == stored
                assert files.empty_cells(empty) == (0 if stored else 20)
            files.write(empty, layout, WHOLE, sample(SHAPE, np.float64))

    def test_complex_nan_fill_counts_both_parts(
        self, files: ArrayFiles, options: dict[str, Any], tmp_path: Path
    ) -> None:
        fill = np.complex128(complex(np.nan, 0))
        layout = ArrayLayout(SHAPE, "<c16", fill, options)
        path = tmp_path / "c.hdf5"
        files.create(path, layout, META, META_DTYPE)
        row = np.array([complex(np.nan, 0), complex(np.nan, 1), complex(0, np.nan), 1 + 2j, fill])
        files.write(path, layout, (0, slice(0, 5)), row)
        assert files.empty_cells(path) == 17
        files.write(path, layout, (0, slice(1, 4)), np.full(3, fill))
        assert not files.has_data(path) and files.empty_cells(path) == 20

    def test_empty_regions(self, files: ArrayFiles, layout: ArrayLayout, empty: Path) -> None:
        files.write(empty, layout, (slice(2, 2), slice(0, 5)), np.empty((0, 5)))
        assert not files.has_data(empty)
        assert files.read(empty, layout, (slice(2, 2), slice(0, 5))).shape == (0, 5)
        files.write(empty, layout, WHOLE, sample(SHAPE, np.float64))
        files.clear(empty, layout, (slice(0, 4), slice(3, 3)))
        assert files.empty_cells(empty) == 0
        piece = files.read(empty, layout, (slice(0, 4), slice(3, 3)))
        assert piece.shape == (4, 0) and piece.dtype == np.float64

    def test_reads_into_out(self, files: ArrayFiles, layout: ArrayLayout, empty: Path) -> None:
        out = np.zeros((2, 5))
        assert files.read(empty, layout, (slice(0, 2), slice(0, 5)), out) is out
        assert np.isnan(out).all()
        data = sample(SHAPE, np.float64)
        files.write(empty, layout, WHOLE, data)
        big = np.zeros((6, 5))
        window = big[1:3]  # a view into a larger buffer
        assert files.read(empty, layout, (slice(1, 3), slice(0, 5)), window) is window
        row = big[4]
        assert files.read(empty, layout, (2, slice(0, 5)), row) is row
        assert_same(big[1:3], data[1:3])
        assert_same(big[4], data[2])
        assert (big[0] == 0).all() and (big[3] == 0).all() and (big[5] == 0).all()
        column = np.zeros((4, 3))[:, 1]  # strided
        files.read(empty, layout, (slice(0, 4), 2), column)
        assert_same(column, data[:, 2])
        with pytest.raises(ValueError):
            files.read(empty, layout, (slice(0, 2), slice(0, 5)), np.empty((3, 5)))

    # ------------------------------------------------------------------ clears

    def test_clear_of_an_empty_region_keeps_the_data(
        self, files: ArrayFiles, options: dict[str, Any], tmp_path: Path
    ) -> None:
        """SPEC §7.5 / §8.1: write 2 cells of 10, clear an empty 5-cell region: nothing is lost."""
        layout = ArrayLayout((10,), "<f8", np.nan, {**options, "chunks": (3,)} if options else {})
        path = tmp_path / "a.hdf5"
        files.create(path, layout, META, META_DTYPE)
        files.write(path, layout, (slice(0, 2),), np.array([1.0, 2.0]))
        files.clear(path, layout, (slice(5, 10),))
        assert files.has_data(path) and files.empty_cells(path) == 8
        assert_same(files.read(path, layout, (slice(0, 3),)), np.array([1.0, 2.0, np.nan]))
        files.clear(path, layout, (slice(1, 6),))
        assert files.empty_cells(path) == 9
        files.clear(path, layout, (0,))
        assert not files.has_data(path) and files.empty_cells(path) == 10
        files.clear(path, layout, (slice(0, 10),))
        assert not files.has_data(path) and files.empty_cells(path) == 10

    def test_clears(self, files: ArrayFiles, layout: ArrayLayout, empty: Path) -> None:
        data = sample(SHAPE, np.float64)
        files.write(empty, layout, WHOLE, data)
        files.clear(empty, layout, (slice(1, 3), slice(1, 4)))
        data[1:3, 1:4] = np.nan
        assert_same(files.read(empty, layout, WHOLE), data)
        assert files.empty_cells(empty) == 6
        files.clear(empty, layout, (3, 0))
        assert files.empty_cells(empty) == 7
        files.clear(empty, layout, WHOLE)
        assert not files.has_data(empty) and files.empty_cells(empty) == 20
        assert_same(files.read(empty, layout, WHOLE), np.full(SHAPE, np.nan))
        assert files.read_meta(empty) == META

    # ------------------------------------------------------------------ metadata

    def test_metadata_round_trips(self, files: ArrayFiles, layout: ArrayLayout, empty: Path) -> None:
        data = sample(SHAPE, np.float64)
        files.write(empty, layout, WHOLE, data)
        same_length = META.replace(b"{}}", b'{"a": 1}}')[: len(META)]
        longer = META[:-1] + b', "b": "' + b"x" * 200 + b'"}'
        shorter = b"{}"
        for meta in (same_length, longer, shorter, META):
            files.write_meta(empty, meta, f"S{len(meta) + 33}")
            assert files.read_meta(empty) == meta
            assert_same(files.read(empty, layout, WHOLE), data)
            assert files.empty_cells(empty) == 0

    # ------------------------------------------------------------------ missing, damaged, deleted

    def test_a_missing_file_raises_file_not_found(
        self, files: ArrayFiles, layout: ArrayLayout, tmp_path: Path
    ) -> None:
        missing = tmp_path / "missing.hdf5"
        calls = [
            lambda: files.read(missing, layout, WHOLE),
            lambda: files.read(missing, layout, (slice(0, 0), slice(0, 5))),
            lambda: files.write(missing, layout, (0, slice(0, 5)), np.float64(1)),
            lambda: files.write(missing, layout, WHOLE, np.ones(SHAPE)),
            lambda: files.write(missing, layout, (slice(0, 0), slice(0, 5)), np.empty((0, 5))),
            lambda: files.clear(missing, layout, (0, slice(0, 5))),
            lambda: files.clear(missing, layout, WHOLE),
            lambda: files.read_meta(missing),
            lambda: files.write_meta(missing, META, META_DTYPE),
            lambda: files.empty_cells(missing),
            lambda: files.has_data(missing),
        ]
        for call in calls:
            with pytest.raises(FileNotFoundError):
                call()
        assert not missing.exists()

    def test_garbage_is_damage(self, files: ArrayFiles, layout: ArrayLayout, tmp_path: Path) -> None:
        bad = tmp_path / "bad.hdf5"
        bad.write_bytes(b"not an array file at all" * 40)
        for call in (
            lambda: files.read(bad, layout, WHOLE),
            lambda: files.read_meta(bad),
            lambda: files.write(bad, layout, (0, slice(0, 5)), np.float64(1)),
        ):
            with pytest.raises(DekerStorageError, match=r"bad\.hdf5"):
                call()

    def test_delete(self, files: ArrayFiles, layout: ArrayLayout, empty: Path) -> None:
        files.write(empty, layout, (0, slice(0, 5)), np.arange(5.0))
        files.delete(empty)
        assert list(empty.parent.iterdir()) == []
        with pytest.raises(FileNotFoundError):
            files.read(empty, layout, WHOLE)
        files.delete(empty)  # a missing file is no error
        files.create(empty, layout, META, META_DTYPE)
        assert files.empty_cells(empty) == 20
        assert_same(files.read(empty, layout, WHOLE), np.full(SHAPE, np.nan))

    # ------------------------------------------------------------------ against numpy

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(data=st.data())
    def test_operations_against_numpy(
        self,
        files: ArrayFiles,
        options: dict[str, Any],
        tmp_path_factory: pytest.TempPathFactory,
        data: st.DataObject,
    ) -> None:
        case = data.draw(scenarios(options))
        shape, dtype, fill = case["shape"], case["dtype"], case["fill"]
        layout = ArrayLayout(shape, dtype, fill, case["kwargs"])
        path = tmp_path_factory.mktemp("conformance") / "a.hdf5"
        oracle = np.full(shape, fill, dtype)
        if case["first"] == "empty":
            files.create(path, layout, META, META_DTYPE)
        else:
            first = sample(shape, dtype) if case["first"] == "data" else np.dtype(dtype).type(3)
            files.create(path, layout, META, META_DTYPE, first)
            oracle[...] = first
        for kind, bounds, seed in case["ops"]:
            index = region(bounds)
            rng = np.random.default_rng(seed)
            if kind == "whole":
                bounds = index = tuple(slice(0, n) for n in shape)
            part_shape = oracle[index].shape
            if kind == "read-into":
                big = np.zeros((2, *part_shape), dtype)
                target = big[1, ...]  # a view, 0-d for a single cell
                assert files.read(path, layout, bounds, target) is target
                assert_same(big[1], oracle[index])
                assert (big[0] == 0).all()
                continue
            if kind == "clear":
                files.clear(path, layout, bounds)
                oracle[index] = fill
            else:
                if kind == "scalar":
                    value: Any = np.asarray(rng.integers(0, 3), dtype=dtype)[()]
                else:
                    value = rng.integers(0, 3, size=part_shape).astype(dtype)
                    if kind == "fill" or rng.random() < 0.5:
                        value[rng.random(part_shape) < 0.5] = fill
                files.write(path, layout, bounds, value)
                oracle[index] = value
            expected_empty = oracle_fill_count(oracle, fill)
            assert files.empty_cells(path) == expected_empty
            assert files.has_data(path) == (expected_empty < oracle.size)
            assert_same(files.read(path, layout, bounds), oracle[index])
        assert_same(files.read(path, layout, tuple(slice(0, n) for n in shape)), oracle)
        assert files.read_meta(path) == META
