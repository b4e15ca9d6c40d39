"""Subsets of Arrays: read, update (upsert, broadcasting, dtype rules), clear, describe, xarray."""

from __future__ import annotations

import importlib.util
import warnings
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import from_dtype

from deker import ArraySchema, AttributeSchema, Client, DimensionSchema, HDF5Options, TimeDimensionSchema
from deker.errors import DekerArrayError, DekerArrayTypeError, DekerMemoryError, DekerSubsetError
from deker.subset import prepare_update_data


@pytest.fixture()
def client(tmp_path: Path):
    with Client(f"file://{tmp_path}", write_lock_timeout=5) as c:
        yield c


def make(client: Client, dtype: type = np.float64, shape: tuple[int, ...] = (6, 5), **kw: object):
    dims = [DimensionSchema(name=f"d{i}", size=s) for i, s in enumerate(shape)]
    coll = client.create_collection("c", ArraySchema(dtype=dtype, dimensions=dims, **kw))
    return coll.create()


def test_empty_reads_fill_and_scalar(client: Client) -> None:
    arr = make(client, np.int16)
    data = arr[:].read()
    assert data.shape == (6, 5) and (data == np.iinfo(np.int16).min).all()
    cell = arr[1, 2].read()
    assert isinstance(cell, np.int16)


def test_upsert_broadcast_and_oracle(client: Client) -> None:
    arr = make(client)
    oracle = np.full((6, 5), np.nan)
    arr[1:4, 2:].update(np.arange(9.0).reshape(3, 3))
    oracle[1:4, 2:] = np.arange(9.0).reshape(3, 3)
    arr[0].update(7.0)
    oracle[0] = 7.0
    arr[:, 1].update(np.arange(6.0))
    oracle[:, 1] = np.arange(6.0)
    arr[4:, :].update(np.arange(5.0))  # a row broadcast over two rows
    oracle[4:, :] = np.arange(5.0)
    arr[..., -1].update([1, 2, 3, 4, 5, 6])  # a list of Python ints into float64
    oracle[..., -1] = [1, 2, 3, 4, 5, 6]
    np.testing.assert_array_equal(arr[:].read(), oracle)
    np.testing.assert_array_equal(arr[-3:, ::1].read(), oracle[-3:])
    np.testing.assert_array_equal(arr[..., 2].read(), oracle[..., 2])


def test_first_partial_write_does_not_write_everything(client: Client) -> None:
    coll = client.create_collection(
        "big",
        ArraySchema(
            dtype=np.float32,
            dimensions=[DimensionSchema(name="y", size=1024), DimensionSchema(name="x", size=1024)],
        ),
        HDF5Options(chunks=(64, 64)),
    )
    arr = coll.create()
    arr[0:64, 0:64].update(np.ones((64, 64), dtype=np.float32))
    with h5py.File(arr._main_file, "r", locking=False) as f:
        assert f["data"].id.get_storage_size() == 64 * 64 * 4
        assert int(f["empty_cells"][()]) == 1024 * 1024 - 64 * 64
    assert np.isnan(arr[100, 100].read())


@pytest.mark.parametrize(
    ("dtype", "data", "exc"),
    [
        (np.int32, None, DekerArrayError),
        (np.int32, "text", DekerArrayTypeError),
        (np.int32, 7.5, DekerArrayTypeError),
        (np.int8, 300, DekerArrayTypeError),
        (np.int32, [1.5, 2], DekerArrayTypeError),
        (np.int32, np.zeros(3, dtype=np.int64), DekerArrayTypeError),
        (np.int32, np.zeros(4, dtype=np.int32), IndexError),
        (np.int32, True, DekerArrayTypeError),
        (np.int32, {"a": 1}, DekerArrayTypeError),
        (np.float32, 1e40, DekerArrayTypeError),  # it became inf (a loss, not a rounding)
        (np.float16, 70000, DekerArrayTypeError),
        (np.complex64, complex(1e40, 0), DekerArrayTypeError),
        (np.float32, [1 + 2j, 0, 0], DekerArrayTypeError),
        (np.float32, [1e40, 0, 0], DekerArrayTypeError),
        (np.uint64, [-1, 0, 0], DekerArrayTypeError),  # it was stored as 2**64 - 1
        (np.uint8, [np.int8(-1), 0, 0], DekerArrayTypeError),
        (np.float16, [-(2**63), 0, 0], DekerArrayTypeError),
        (np.int32, [np.float16("-inf")] * 3, DekerArrayTypeError),  # it was stored as -2**31 (x86)
        (np.int64, [2.0**63, 0, 0], DekerArrayTypeError),  # undefined cast (ARM saturates it)
        (np.complex64, [complex(16_777_217, float("nan")), 0, 0], DekerArrayTypeError),
    ],
)
def test_bad_update_data(dtype: type, data: object, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        prepare_update_data(data, np.dtype(dtype), (3,))


@pytest.mark.parametrize(
    ("dtype", "data"),
    [
        (np.int32, [1, 2, 3]),
        (np.uint8, (1, 2, 255)),
        (np.float32, [0.5, 1, 2]),
        (np.int32, 7.0),
        (np.complex64, [1j, 2, 3]),
        (np.float16, 1),
        (np.complex64, [0.5, 1.0, 2.0]),  # real values into a complex array
        (np.float32, [1 + 0j, 2, 3]),  # complex values without imaginary parts into a real one
        (np.float32, float("inf")),  # infinite already: nothing is lost
    ],
)
def test_accepted_update_data(dtype: type, data: object) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (a real list into a complex array warned ComplexWarning)
        out = prepare_update_data(data, np.dtype(dtype), (3,))
    assert out.dtype == np.dtype(dtype) and out.shape == (3,)


@pytest.mark.parametrize(
    "dtype",
    [
        np.int8,
        np.int16,
        np.int32,
        np.int64,
        np.uint8,
        np.uint16,
        np.uint32,
        np.uint64,
        np.float16,
        np.float32,
        np.float64,
        np.longdouble,
        np.complex64,
        np.complex128,
        np.clongdouble,
    ],
)
def test_dtype_roundtrip(client: Client, dtype: type) -> None:
    arr = make(client, dtype, (4, 3))
    data = (np.arange(12) % 7).reshape(4, 3).astype(dtype)
    arr[:].update(data)
    np.testing.assert_array_equal(arr[:].read(), data)
    arr[1:3, 1].clear()
    data[1:3, 1] = arr.fill_value
    np.testing.assert_array_equal(arr[:].read(), data)


def test_clear_never_loses_data_outside_bounds(client: Client) -> None:
    arr = make(client, np.float64, (10,))
    arr[0:2].update(np.array([1.0, 2.0]))
    arr[5:10].clear()  # already empty: deker 1.1.7 deleted the whole dataset here
    np.testing.assert_array_equal(arr[0:2].read(), [1.0, 2.0])
    arr[0:2].clear()
    with h5py.File(arr._main_file, "r", locking=False) as f:
        assert "data" not in f and int(f["empty_cells"][()]) == 10


def test_memory_limit_on_getitem(tmp_path: Path) -> None:
    with Client(f"file://{tmp_path}", memory_limit="1K", skip_collection_create_memory_check=True) as client:
        arr = make(client, np.float64, (100, 100))
        arr[0:10, 0:10].read()
        with pytest.raises(DekerMemoryError):
            arr[:, :]


def test_describe_and_xarray(client: Client) -> None:
    coll = client.create_collection(
        "w",
        ArraySchema(
            dtype=np.float32,
            dimensions=[
                TimeDimensionSchema(name="t", size=3, start_value="$dt", step=timedelta(hours=1)),
                DimensionSchema(name="y", size=4, scale={"start_value": 0.1, "step": 0.1, "name": "lat"}),
                DimensionSchema(name="w", size=3, labels=["a", "b", "c"]),
            ],
            attributes=[AttributeSchema(name="dt", dtype=datetime, primary=True)],
        ),
    )
    dt = datetime(2023, 1, 1, tzinfo=timezone.utc)
    arr = coll.create({"dt": dt})
    arr[:].update(np.arange(36, dtype=np.float32).reshape(3, 4, 3))
    sub = arr[1, 1:3, -1]
    described = sub.describe()
    assert described["t"] == [dt + timedelta(hours=1)]
    assert described["y"] == [0.2, 0.3]
    assert described["w"] == ["c"]
    with pytest.raises(IndexError):
        arr[0.3]  # a float on a time axis is a timestamp: this one is out of range
    xr = sub.read_xarray()
    assert xr.shape == (1, 2, 1) and list(xr.dims) == ["t", "y", "w"]
    assert xr.attrs["primary_attributes"]["dt"] == dt
    np.testing.assert_array_equal(xr.values.ravel(), arr[1, 1:3, 2].read())
    with pytest.raises(DekerSubsetError):
        arr[0, 0, 0].read_xarray()
    with pytest.raises(DekerSubsetError):
        arr[0, 0, 0].read_xarray(cf=True)
    # the netCDF-safe form (deker/cf.py): named after the collection, scalar attributes, CF times
    safe = sub.read_xarray(cf=True)
    assert safe.name == "w_data"  # named after the collection, which has a dimension "w" too
    assert safe.dims == xr.dims and safe.shape == xr.shape
    assert safe.attrs == {"dt": "2023-01-01T00:00:00+00:00", "deker_collection": "w", "deker_id": arr.id}
    assert safe["t"].encoding["units"] == "days since 2023-01-01T01:00:00"
    assert safe["y"].attrs == {"long_name": "lat"}
    np.testing.assert_array_equal(safe.values, xr.values)
    if importlib.util.find_spec("h5netcdf") is not None:
        path = client.root_path.parent / "sub.nc"
        safe.to_netcdf(path, engine="h5netcdf")
        with xarray.open_dataarray(path, engine="h5netcdf") as back:
            xarray.testing.assert_identical(back.load(), safe)
    # a 0.1-step scale is addressable by value (SPEC §8 item 5 fixed)
    assert arr[:, 0.3, "b"].read().tolist() == arr[:, 2, 1].read().tolist()


def test_repr_and_str(client: Client) -> None:
    arr = make(client)
    sub = arr[1:3, 0]
    assert repr(sub) == f"Subset(bounds=[1:3, 0], shape=(2,), array={arr.id})"
    assert str(arr[:]) == f"Array({arr.id})[:]"


@pytest.mark.parametrize(
    ("dtype", "data"), [(np.int32, 1e40), (np.uint8, 70000), (np.uint8, -1), (np.int64, float("inf"))]
)
def test_a_number_out_of_the_dtypes_range_is_called_a_loss(dtype: type, data: object) -> None:
    """Out of range is a value that cannot be stored, not a wrong type (it was "Invalid data type")."""
    with pytest.raises(
        DekerArrayTypeError,
        match=rf"Invalid data value: .* cannot be stored as {np.dtype(dtype)} without loss",
    ):
        prepare_update_data(data, np.dtype(dtype), (3,))


@pytest.mark.parametrize(
    ("dtype", "data"),
    [
        (np.float64, 2**60 + 1),  # numpy compared it after rounding it to float64
        (np.float64, np.int64(2**60 + 1)),
        (np.float32, 16_777_217),  # 2**24 + 1
        (np.float32, 0.1),  # NumPy 2 compared the Python float at float32 precision
        (np.float32, np.float64(0.1)),
        (np.complex64, 0.1),
        (np.float32, np.complex64(1 + 2j)),  # the imaginary part (it warned and was dropped)
        (np.float32, 1 + 2j),
        (np.uint8, np.int8(-1)),  # 255, which converts back to int8 as -1
        (np.int64, np.uint64(2**64 - 1)),
        (np.float16, -(2**63)),  # -inf, which converts back to int64 as -2**63 (x86)
        (np.longdouble, 2**70 + 1),
        (np.complex64, complex(float("nan"), 0.1)),  # a NaN part does not excuse the other one
    ],
)
def test_a_scalar_that_changes_when_stored_is_refused(dtype: type, data: object) -> None:
    """A scalar is accepted only if converting it back gives the same number, on any numpy."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DekerArrayTypeError, match="without loss"):
            prepare_update_data(data, np.dtype(dtype), (3,))


@pytest.mark.parametrize(
    ("dtype", "data"),
    [
        (np.float32, 1 + 0j),  # as the list [1 + 0j, 2, 3] is
        (np.float32, np.complex128(2 + 0j)),
        (np.float64, 2**60),
        (np.float32, 16_777_216),
        (np.longdouble, 2**62 + 1),
        (np.uint64, 2**64 - 1),
        (np.float64, 2**70),  # a Python int no numpy integer holds, exactly a float64
        (np.float32, 0.5),
    ],
)
def test_a_scalar_stored_unchanged_is_accepted(dtype: type, data: object) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = prepare_update_data(data, np.dtype(dtype), (3,))
    assert out.dtype == np.dtype(dtype) and out.shape == (3,)
    assert out[0] == data


_SCALAR_DTYPES = [
    np.int8, np.int32, np.uint8, np.int64, np.uint64, np.float16, np.float32, np.float64, np.longdouble,
    np.complex64, np.complex128,
]  # fmt: skip


def _exactly(x: object) -> tuple[object, object]:
    """``x`` as exact fractions (real and imaginary parts), a NaN as "nan", an infinity by sign."""

    def part(v: object) -> object:
        if isinstance(v, (int, np.integer)):
            return Fraction(int(v))
        assert isinstance(v, (float, np.floating)), v
        if np.isnan(v):
            return "nan"
        if np.isinf(v):
            return str(np.sign(v))
        return Fraction(*v.as_integer_ratio())

    if isinstance(x, (complex, np.complexfloating)):
        return part(x.real), part(x.imag)
    return part(x), Fraction(0)


_NUMBERS = st.one_of(
    st.integers(min_value=-(2**65), max_value=2**65),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.complex_numbers(allow_nan=True, allow_infinity=True),
    st.sampled_from(_SCALAR_DTYPES).flatmap(lambda t: from_dtype(np.dtype(t))),  # numpy scalars
)


@settings(deadline=None)
@given(value=_NUMBERS, dtype=st.sampled_from(_SCALAR_DTYPES))
def test_a_scalar_and_a_list_of_it_convert_by_one_rule(value: object, dtype: type) -> None:
    """``update(x)`` is accepted only if the stored number is exactly ``x``; ``update([x])`` alike.

    Exactly: as fractions, not with ``==`` (which rounds one side, so a lossy conversion would
    pass).  A list of a number no 64-bit type holds is refused (numpy makes it an object list).
    """

    def verdict(data: object) -> object:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                out = prepare_update_data(data, np.dtype(dtype), (1,))
            except DekerArrayTypeError:
                return "refused"
        return out[0]

    alone, listed = verdict(value), verdict([value])
    if not isinstance(alone, str):
        assert _exactly(alone) == _exactly(value), "a changed number was accepted"
    if not isinstance(listed, str):
        assert _exactly(listed) == _exactly(value), "a changed number was accepted in a list"
        assert not isinstance(alone, str), "the list was accepted, the number alone refused"
    elif not isinstance(alone, str):
        assert isinstance(value, int) and not -(2**63) <= value < 2**64, "refused in a list only"


@pytest.mark.parametrize(
    ("dtype", "data"),
    [
        (np.float64, [2**53 + 1, 0.5]),  # np.asarray made it float64: 2**53
        (np.complex128, [2**53 + 1, 1j]),
        (np.float64, [-1, 2**63 + 1]),  # beyond int64 and uint64 together: float64
        (np.float64, [np.int64(-1), np.uint64(2**64 - 1)]),  # numpy promotes them to float64
        (np.float32, [[2**60 + 1, 0.5], [1, 2]]),
    ],
)
def test_a_list_whose_integers_numpy_rounds_is_refused(dtype: type, data: object) -> None:
    """``np.asarray`` of a mixed list rounds big integers before the exactness check sees them."""
    with pytest.raises(DekerArrayTypeError, match="integers of the list"):
        prepare_update_data(data, np.dtype(dtype), np.shape(data))


@pytest.mark.parametrize(
    "data",
    [[2**53, 0.5], [2**60, -1.5], [np.longdouble(0.5), 2**60 + 1], [float("nan"), 2**53 + 2, 1]],
)
def test_a_list_of_integers_a_float_holds_is_accepted(data: list[object]) -> None:
    raw = np.asarray(data)
    out = prepare_update_data(data, raw.dtype, raw.shape)
    assert out.tolist() == raw.tolist() or np.isnan(out[0])


def test_negative_zeros_keep_their_sign_where_the_fill_value_is_zero(client: Client) -> None:
    """Every cell "fill" drops the data; -0.0 must not count as the fill value 0.0 then."""
    schema = ArraySchema(dtype=np.float64, dimensions=[DimensionSchema("x", 4)], fill_value=0.0)
    array = client.create_collection("signed_zeros", schema).create()
    array[:].update(np.array([-0.0, 1.0, -0.0, -0.0]))
    array[1].update(0.0)
    assert np.signbit(array[:].read()).tolist() == [True, False, True, True]
    array[:].update(np.full(4, -0.0))
    assert np.signbit(array[:].read()).all()
