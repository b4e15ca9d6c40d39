"""deker_dask.schema_from_xarray / store_xarray: netCDF and xarray data brought into collections.

Real netCDF files (h5netcdf) are written, opened with ``xr.open_dataset`` and ingested; what
deker reads back (``read_xarray``, ``deker_dask.to_xarray``) must have the same values, time
axis and coordinates.  Refused objects must leave nothing in the collection.
"""

from __future__ import annotations

import re
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

import deker_dask
from deker import (
    ArraySchema,
    AttributeSchema,
    Client,
    DimensionSchema,
    Scale,
    TimeDimensionSchema,
    VArraySchema,
)
from deker.errors import DekerArrayTypeError, DekerValidationError

pytest.importorskip("h5netcdf")

UTC = timezone.utc


def grid(dtype: Any = "f4", times: int = 4) -> xr.DataArray:
    """A small (time, lat, lon) field: a regular time axis and two scales."""
    data = np.arange(times * 5 * 6, dtype=dtype).reshape(times, 5, 6)
    return xr.DataArray(
        data,
        dims=("time", "lat", "lon"),
        coords={
            "time": pd.date_range("2024-01-01", periods=times, freq="6h"),
            "lat": np.array([60.0, 45.0, 30.0, 15.0, 0.0], dtype="f4"),
            "lon": np.arange(6) * 0.1 + 10.0,
        },
        name="t2m",
        attrs={"units": "K", "source": "model-a", "version": np.int32(3)},
    )


def netcdf(obj: xr.DataArray | xr.Dataset, path: Path, **open_kwargs: Any) -> xr.Dataset:
    obj.to_netcdf(path, engine="h5netcdf")
    return xr.open_dataset(path, engine="h5netcdf", **open_kwargs)


def nothing_stored(collection: Any) -> bool:
    files = [p for p in collection.path.rglob("*") if p.is_file() and p.suffix != ".json"]
    return not list(collection) and not files


# ----------------------------------------------------------------------------- schema inference


def test_schema_of_a_netcdf_grid(tmp_path: Path) -> None:
    ds = netcdf(grid(), tmp_path / "g.nc")
    schema = deker_dask.schema_from_xarray(ds)
    assert isinstance(schema, ArraySchema)
    time, lat, lon = schema.dimensions
    assert time == TimeDimensionSchema("time", 4, datetime(2024, 1, 1, tzinfo=UTC), timedelta(hours=6))
    assert lat == DimensionSchema("lat", 5, scale=Scale(60.0, -15.0))
    assert lon == DimensionSchema("lon", 6, scale=Scale(10.0, 0.1))  # the shortest step that fits
    assert schema.dtype is np.float32 and np.isnan(schema.fill_value)


def test_labels_plain_dimensions_and_float32_scales() -> None:
    arr = xr.DataArray(
        np.zeros((3, 4, 2, 5), dtype="i2"),
        dims=("station", "level", "member", "x"),
        coords={
            "station": ["oslo", "rome", "kyiv"],
            "level": [1000, 850, 500, 250],  # uneven: float labels
            "member": [0, 1],  # positions
            "x": np.arange(5, dtype="f4") * np.float32(0.1) + np.float32(100.0),  # float32 noise
        },
    )
    station, level, member, x = deker_dask.schema_from_xarray(arr).dimensions
    assert station == DimensionSchema("station", 3, labels=["oslo", "rome", "kyiv"])
    assert level == DimensionSchema("level", 4, labels=[1000.0, 850.0, 500.0, 250.0])
    assert member == DimensionSchema("member", 2)
    assert x == DimensionSchema("x", 5, scale=Scale(100.0, 0.1))


@pytest.mark.parametrize(
    "values",
    [
        np.array([0, 1_000_000, 2_000_001]),  # within the tolerance of a scale of step 1e6
        np.arange(4) / 3,  # its shortest fitting step, 0.3333333, drifts
        np.linspace(-179.5, 179.5, 16),  # read back on a 7-digit step, 179.5 was 179.499995
    ],
    ids=["ints", "thirds", "linspace"],
)
def test_a_coordinate_is_read_back_as_it_was_given(tmp_path: Path, values: np.ndarray) -> None:
    """A scale is taken only when the values read from it are the given ones; else labels."""
    arr = xr.DataArray(np.arange(len(values), dtype=np.float64), dims="x", coords={"x": values}, name="v")
    with Client(f"file://{tmp_path}") as client:
        collection = client.create_collection("v", deker_dask.schema_from_xarray(arr))
        stored = deker_dask.store_xarray(arr, collection)
        back = stored[:].read_xarray(cf=True)
        np.testing.assert_array_equal(back["x"].values, values.astype(np.float64))
        assert float(back.sel(x=values[-1])) == float(arr.sel(x=values[-1]))


def test_a_time_axis_before_1677_is_taken_and_read_back_as_it_was(tmp_path: Path) -> None:
    """Cast to datetime64[ns], 1500-01-01 wrapped around: refused as having "nanoseconds"."""
    times = np.array(["1500-01-01", "1500-01-02", "1500-01-03"], dtype="datetime64[s]")
    arr = xr.DataArray(np.arange(3.0), dims="time", coords={"time": times}, name="v")
    schema = deker_dask.schema_from_xarray(arr)
    assert schema.dimensions[0] == TimeDimensionSchema(
        "time", 3, datetime(1500, 1, 1, tzinfo=UTC), timedelta(days=1)
    )
    with Client(f"file://{tmp_path}") as client:
        stored = deker_dask.store_xarray(arr, client.create_collection("old", schema))
        got = stored[:].read_xarray(cf=True)["time"].values
        assert got.dtype == np.dtype("datetime64[us]")  # ([ns] vs [us] compares wrapped values alike)
        np.testing.assert_array_equal(got, times.astype("datetime64[us]"))


@pytest.mark.parametrize(
    "values",
    [np.arange(0, 10, 0.1), np.arange(0, 360, 0.1, dtype="f4"), np.arange(-90, 90.25, 0.25, dtype="f4")],
    ids=["arange-f8", "arange-f4", "quarter-f4"],
)
def test_a_grid_made_by_arange_keeps_its_scale(values: np.ndarray) -> None:
    """``arange(0, 10, 0.1)`` holds 0.30000000000000004: a unit in the last place is no reason for labels."""
    arr = xr.DataArray(np.zeros(len(values)), dims="x", coords={"x": values})
    (x,) = deker_dask.schema_from_xarray(arr).dimensions
    assert x.scale is not None and x.labels is None
    assert x.scale.step in (0.1, 0.25) and x.scale.start_value == float(values[0])


def test_integers_that_float64_labels_would_round_are_refused() -> None:
    offsets = np.array([0, 1000, 2500, 3000]) + 1_700_000_000_000_000_000  # epoch nanoseconds
    arr = xr.DataArray(np.zeros(4), dims="x", coords={"x": offsets})
    with pytest.raises(DekerValidationError, match=r"integers beyond 2\*\*53 .*astype\(str\)"):
        deker_dask.schema_from_xarray(arr)


def test_a_dimension_without_coordinate_and_a_one_point_number_axis() -> None:
    arr = xr.DataArray(np.zeros((2, 1)), dims=("y", "z"), coords={"z": [7.5]})
    y, z = deker_dask.schema_from_xarray(arr).dimensions
    assert y == DimensionSchema("y", 2) and z == DimensionSchema("z", 1, labels=[7.5])


def test_varray_schema_attributes_dtype_and_fill() -> None:
    arr = grid(dtype="f8")
    schema = deker_dask.schema_from_xarray(
        arr,
        arrays_shape=(2, 5, 3),
        primary_attributes={"run": str, "issued": datetime},
        custom_attributes={"source": str},
        dtype="float32",
        fill_value=-999.0,
    )
    assert isinstance(schema, VArraySchema) and schema.vgrid == (2, 1, 2)
    assert schema.dtype is np.float32 and schema.fill_value == np.float32(-999.0)
    assert schema.attributes == (
        AttributeSchema("run", str, True),
        AttributeSchema("issued", datetime, True),
        AttributeSchema("source", str, False),
    )
    with pytest.raises(DekerValidationError, match="without remainder"):
        deker_dask.schema_from_xarray(arr, vgrid=(3, 1, 1))


def test_fill_value_from_attributes_and_encoding(tmp_path: Path) -> None:
    ints = xr.DataArray(np.array([1, -1, 3], dtype="i4"), dims="n", attrs={"_FillValue": np.int32(-1)})
    assert deker_dask.schema_from_xarray(ints).fill_value == np.int32(-1)
    # decoded by xarray: integers with a _FillValue are masked into floats, so the fill is NaN
    ds = netcdf(xr.Dataset({"v": ints}), tmp_path / "f.nc")
    assert ds["v"].dtype.kind == "f" and np.isnan(deker_dask.schema_from_xarray(ds).fill_value)
    # not decoded: the encoded integer fill value is the fill value
    raw = xr.open_dataset(tmp_path / "f.nc", engine="h5netcdf", mask_and_scale=False)
    schema = deker_dask.schema_from_xarray(raw)
    assert schema.dtype is np.int32 and schema.fill_value == np.int32(-1)
    missing = xr.DataArray(np.zeros(2, dtype="u1"), dims="n", attrs={"missing_value": 255})
    assert deker_dask.schema_from_xarray(missing).fill_value == np.uint8(255)


def test_an_integer_fill_value_keeps_missing_cells_missing_through_deker(
    storage: Client, tmp_path: Path
) -> None:
    """netCDF -> deker -> netCDF: the cells a file marks missing stay missing (review of stop 37).

    The views had no ``_FillValue``, so those cells came back as the value -999; and stored
    into a collection of another fill value, they became values without a word.
    """
    field = xr.DataArray(
        np.array([[1, -999, 3], [-999, 5, 6]], dtype=np.int16), dims=("y", "x"), attrs={"_FillValue": -999}
    )
    raw = netcdf(xr.Dataset({"v": field}), tmp_path / "in.nc", mask_and_scale=False)
    schema = deker_dask.schema_from_xarray(raw, primary_attributes={"k": int})
    assert schema.fill_value == np.int16(-999)
    collection = storage.create_collection("v", schema)
    deker_dask.store_xarray(raw, collection, primary_attributes={"k": 1})
    collection.create({"k": 2})  # never written: every cell absent
    for view in (
        deker_dask.to_xarray(collection),
        collection.filter({"k": 1}).last()[:].read_xarray(cf=True),
    ):
        view.to_netcdf(tmp_path / "out.nc", engine="h5netcdf")
        with xr.open_dataset(tmp_path / "out.nc", engine="h5netcdf") as back:
            np.testing.assert_array_equal(
                back[view.name].values, np.where(view.values == -999, np.nan, view.values)
            )
    # into a collection of another fill value: refused, nothing stored, saying what to do
    other = storage.create_collection("other", deker_dask.schema_from_xarray(raw, fill_value=-1))
    encoded = raw["v"].drop_attrs()
    encoded.encoding["_FillValue"] = np.int16(-999)
    for data, where, ref in ((raw, "attrs", "obj['v']"), (encoded, "encoding", "obj")):
        hint = f"{ref} = {ref}.where({ref} != -999, -1); del {ref}.{where}['_FillValue']"
        with pytest.raises(
            DekerValidationError,
            match=rf"{where}\['_FillValue'\] = -999, the collection's fill value is -1.*fill_value=-999"
            rf".*{re.escape(hint)}",
        ):
            deker_dask.store_xarray(data, other)
    assert len(list(other)) == 0
    floats = storage.create_collection(
        "floats", deker_dask.schema_from_xarray(raw, dtype=np.float32, fill_value=np.nan)
    )
    with pytest.raises(DekerValidationError, match=r"fill value is nan.*\.where\(obj\['v'\] != -999\);"):
        deker_dask.store_xarray(raw, floats)
    obj = raw.copy()
    obj["v"] = obj["v"].where(obj["v"] != -999, -1)  # what the message says
    del obj["v"].attrs["_FillValue"]
    np.testing.assert_array_equal(deker_dask.store_xarray(obj, other)[:].read(), [[1, -1, 3], [-1, 5, 6]])


@pytest.mark.parametrize(
    ("coords", "message"),
    [
        ({"t": pd.to_datetime(["2024-01-01", "2024-02-01", "2024-03-01"])}, "not regularly spaced"),
        ({"t": pd.to_datetime(["2024-01-01", "NaT", "2024-01-03"])}, "missing values"),
        (
            {"t": pd.to_datetime(["2024-01-01T00", "2024-01-01T00"]) + pd.to_timedelta([0, 1], "ns")},
            "nanoseconds",
        ),
        ({"t": pd.to_timedelta([1, 2], "h")}, "timedelta"),
        ({"t": [True, False]}, "bool"),
        ({"t": [1.0, 1.0]}, "repeated"),
        ({"t": ["a", "a"]}, "repeated"),
        ({"t": [0.0, np.nan]}, "NaN"),
    ],
    ids=[
        "irregular-time",
        "nat",
        "nanoseconds",
        "timedelta",
        "bool",
        "repeated-number",
        "repeated-str",
        "nan",
    ],
)
def test_coordinates_deker_cannot_express(coords: dict[str, Any], message: str) -> None:
    n = len(next(iter(coords.values())))
    arr = xr.DataArray(np.zeros(n), dims="t", coords=coords)
    with pytest.raises(DekerValidationError, match=message):
        deker_dask.schema_from_xarray(arr)


def test_one_point_time_axis_says_what_to_do() -> None:
    arr = xr.DataArray(np.zeros(1), dims="t", coords={"t": pd.to_datetime(["2024-01-01"])})
    with pytest.raises(DekerValidationError, match=r"one value.*isel\(t=0\).*strftime"):
        deker_dask.schema_from_xarray(arr)


def test_cftime_and_timezone_aware_times_say_how_to_convert_them(storage: Client) -> None:
    # both were refused as "values of dtype object", with a hint about timedeltas
    pytest.importorskip("cftime")
    aware = pd.date_range("2024-01-01", periods=3, freq="h", tz="Europe/Oslo")
    cases = [
        (
            xr.DataArray(np.zeros(3), dims="time", coords={"time": aware}),
            r"timezone-aware.*UTC.*pd\.to_datetime\(obj\.indexes\['time'\], utc=True\)\.tz_convert\(None\)",
            lambda obj: obj.assign_coords(
                time=pd.to_datetime(obj.indexes["time"], utc=True).tz_convert(None)
            ),
        ),
        (
            xr.DataArray(
                np.zeros(2), dims="time", coords={"time": [datetime(2024, 1, d, tzinfo=UTC) for d in (1, 2)]}
            ),
            r"timezone-aware",
            lambda obj: obj.assign_coords(
                time=pd.to_datetime(obj.indexes["time"], utc=True).tz_convert(None)
            ),
        ),
        (
            xr.DataArray(
                np.zeros(3),
                dims="time",
                coords={"time": xr.date_range("2024-01-01", periods=3, calendar="noleap", use_cftime=True)},
            ),
            r"cftime dates \(calendar 'noleap'\).*convert_calendar\('standard', align_on='date'\)"
            r".*to_datetimeindex\(time_unit='us'\).*strftime",
            lambda obj: obj.convert_calendar("standard", align_on="date"),
        ),
        (
            xr.DataArray(
                np.zeros(3),
                dims="time",
                coords={
                    "time": xr.date_range(
                        "1500-01-01", periods=3, calendar="proleptic_gregorian", use_cftime=True
                    )
                },
            ),
            r"cftime dates \(calendar 'proleptic_gregorian'\)",
            lambda obj: obj.assign_coords(time=obj.indexes["time"].to_datetimeindex(time_unit="us")),
        ),
    ]
    for obj, message, convert in cases:
        with pytest.raises(DekerValidationError, match=message):
            deker_dask.schema_from_xarray(obj)
        fixed = convert(obj)
        schema = deker_dask.schema_from_xarray(fixed)
        assert isinstance(schema.dimensions[0], TimeDimensionSchema)
        collection = storage.create_collection(f"c{len(list(storage))}", schema)
        with pytest.raises(DekerValidationError, match=message):  # into a collection: the same
            deker_dask.store_xarray(obj, collection)
        assert len(list(collection)) == 0
        deker_dask.store_xarray(fixed, collection)


def test_other_coordinates_and_variables() -> None:
    arr = xr.DataArray(np.zeros((2, 3)), dims=("y", "x"))
    two_d = arr.assign_coords(lat=(("y", "x"), np.zeros((2, 3))))
    with pytest.raises(DekerValidationError, match=r"'lat'.*drop_vars"):
        deker_dask.schema_from_xarray(two_d)
    along = arr.assign_coords(label=("x", ["a", "b", "c"]))
    with pytest.raises(
        DekerValidationError, match=r"not the coordinate of a dimension.*swap_dims\(\{'x': 'label'\}\)"
    ):
        deker_dask.schema_from_xarray(along)
    swapped = deker_dask.schema_from_xarray(along.swap_dims({"x": "label"}))
    assert swapped.dimensions[1] == DimensionSchema("label", 3, labels=["a", "b", "c"])
    scalar = arr.assign_coords(level=500)  # a scalar coordinate is left out
    assert deker_dask.schema_from_xarray(scalar).shape == (2, 3)
    ds = xr.Dataset({"a": arr, "b": arr})
    with pytest.raises(DekerValidationError, match=r"2 data variables \['a', 'b'\].*ds\['a'\]"):
        deker_dask.schema_from_xarray(ds)
    assert deker_dask.schema_from_xarray(ds["b"]).shape == (2, 3)
    with pytest.raises(DekerValidationError, match="no data variable"):
        deker_dask.schema_from_xarray(xr.Dataset())
    with pytest.raises(DekerValidationError, match=r"no dimensions.*expand_dims"):  # it said
        deker_dask.schema_from_xarray(xr.DataArray(np.float32(1)))  # "Dimensions shall be a list"
    assert deker_dask.schema_from_xarray(xr.Dataset({"b": arr})).shape == (2, 3)
    with pytest.raises(DekerValidationError, match=r"Expected an xarray\.DataArray"):
        deker_dask.schema_from_xarray(np.zeros(3))
    with pytest.raises(DekerValidationError, match="mapping of attribute names to types"):
        deker_dask.schema_from_xarray(arr, primary_attributes=["run"])  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", ["bool", "datetime64[ns]", "U3", "O"])
def test_dtypes_deker_refuses(dtype: str) -> None:
    arr = xr.DataArray(np.zeros(2, dtype=dtype), dims="n")
    with pytest.raises(DekerArrayTypeError, match="only numeric types"):
        deker_dask.schema_from_xarray(arr)
    with pytest.raises(DekerArrayTypeError, match="only numeric types"):
        deker_dask.schema_from_xarray(xr.DataArray(np.zeros(2), dims="n"), dtype=dtype)


# ----------------------------------------------------------------------------- store


def test_netcdf_file_into_a_varray_on_the_cluster(storage: Client, cluster: Any, tmp_path: Path) -> None:
    ds = netcdf(grid(), tmp_path / "g.nc")  # lazily loaded: the workers read the file themselves
    schema = deker_dask.schema_from_xarray(
        ds, arrays_shape=(2, 5, 3), primary_attributes={"run": str}, custom_attributes={"source": str}
    )
    collection = storage.create_collection("t2m", schema)
    v = deker_dask.store_xarray(
        ds, collection, primary_attributes={"run": "r1"}, attrs_as_custom=True, scheduler=cluster
    )
    assert v.custom_attributes == {"source": "model-a"}
    assert collection.filter({"run": "r1"}).last() == v
    back = v[:].read_xarray()
    np.testing.assert_array_equal(back.values, ds["t2m"].values)
    np.testing.assert_array_equal(back["time"].values, ds["time"].values)
    np.testing.assert_allclose(back["lat"].values, ds["lat"].values)
    np.testing.assert_allclose(back["lon"].values, ds["lon"].values, rtol=0, atol=1e-12)
    lazy = deker_dask.to_xarray(v)
    np.testing.assert_array_equal(lazy.compute(scheduler=cluster).values, ds["t2m"].values)
    back.drop_attrs().to_netcdf(tmp_path / "again.nc", engine="h5netcdf")  # and out to netCDF again
    with xr.open_dataarray(tmp_path / "again.nc", engine="h5netcdf") as again:
        np.testing.assert_array_equal(again.values, ds["t2m"].values)


def test_dask_backed_input_is_stored_where_its_chunks_are(storage: Client, cluster: Any) -> None:
    arr = grid(dtype="i4").chunk({"time": 1, "lat": 2})
    collection = storage.create_collection("g", deker_dask.schema_from_xarray(arr, vgrid=(2, 1, 2)))
    v = deker_dask.store_xarray(arr, collection, scheduler=cluster, progress=False)
    np.testing.assert_array_equal(v[:].read(), arr.values)


def test_numpy_input_into_an_array_collection(storage: Client) -> None:
    arr = grid(dtype="u2")
    collection = storage.create_collection("g", deker_dask.schema_from_xarray(arr))
    a = deker_dask.store_xarray(arr, collection, scheduler="sync")
    assert collection.arrays.filter({"id": a.id}).first() == a
    np.testing.assert_array_equal(a[:].read(), arr.values)
    back = a[:].read_xarray()
    assert back.dims == arr.dims and back.dtype == np.uint16


def test_a_safe_cast_is_stored_and_an_unsafe_one_refused(storage: Client) -> None:
    collection = storage.create_collection("g", deker_dask.schema_from_xarray(grid(), dtype="f8"))
    a = deker_dask.store_xarray(grid(dtype="f4"), collection, scheduler="sync")
    assert a[:].read().dtype == np.float64
    narrow = storage.create_collection("n", deker_dask.schema_from_xarray(grid(), dtype="i2"))
    with pytest.raises(DekerArrayTypeError, match=r"astype\('int16'\)"):
        deker_dask.store_xarray(grid(dtype="f4"), narrow, scheduler="sync")
    assert nothing_stored(narrow)


def test_an_int64_field_is_refused_by_a_float64_collection(storage: Client) -> None:
    """Not numpy's "safe" rule: that one would round 2**53 + 1 to 2**53 on the way in."""
    collection = storage.create_collection("g", deker_dask.schema_from_xarray(grid(), dtype="f8"))
    field = grid(dtype="i8") + 2**53 + 1
    with pytest.raises(
        DekerArrayTypeError, match=r"int64 data into the float64 collection .*astype\('float64'\)"
    ):
        deker_dask.store_xarray(field, collection, scheduler="sync")
    assert nothing_stored(collection)


def _changed(arr: xr.DataArray, case: str) -> Any:
    if case == "scale-values":
        return arr.assign_coords(lat=arr["lat"] + 1.0)
    if case == "scale-step":
        return arr.assign_coords(lon=np.arange(6) * 0.2 + 10.0)
    if case == "time-start":
        return arr.assign_coords(time=arr["time"] + np.timedelta64(1, "h"))
    if case == "time-step":
        return arr.assign_coords(time=pd.date_range("2024-01-01", periods=4, freq="3h"))
    if case == "time-as-numbers":
        return arr.assign_coords(time=np.arange(4.0))
    if case == "shape":
        return arr.isel(lon=slice(0, 5))
    if case == "order":
        return arr.transpose("time", "lon", "lat")
    if case == "names":
        return arr.rename(lat="latitude")
    if case == "labels-on-plain":
        return arr.rename(time="t").assign_coords(t=["a", "b", "c", "d"])
    if case == "two-variables":
        return xr.Dataset({"a": arr, "b": arr})
    if case == "non-index-coordinate":
        return arr.assign_coords(hour=("time", [0, 6, 12, 18]))
    if case == "missing-primary":
        return arr
    raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("scale-values", r"'lat' disagrees.*start=60\.0, step=-15\.0"),
        ("scale-step", r"'lon' disagrees.*step=0\.1"),
        ("time-start", r"'time' disagrees.*starts at 2024-01-01T00:00:00\+00:00.*position 0"),
        ("time-step", r"'time' disagrees.*step 6:00:00.*position 1"),
        ("time-as-numbers", r"'time' disagrees.*float64"),
        ("shape", r"shape of the data \(4, 5, 5\).*'lon': \(5, 6\)"),
        ("order", r"transpose it first"),
        ("names", r"\('time', 'latitude', 'lon'\).*\('time', 'lat', 'lon'\)$"),
        ("labels-on-plain", r"'t' disagrees.*plain positions"),
        ("two-variables", "2 data variables"),
        ("non-index-coordinate", "'hour'"),
        ("missing-primary", "No primary attributes provided"),
    ],
)
def test_disagreeing_objects_leave_nothing_behind(storage: Client, case: str, message: str) -> None:
    arr = grid()
    schema = deker_dask.schema_from_xarray(arr, vgrid=(2, 1, 2), primary_attributes={"run": str})
    if case == "labels-on-plain":
        schema = deker_dask.schema_from_xarray(arr.rename(time="t").drop_vars("t"), vgrid=(2, 1, 2))
    collection = storage.create_collection("c", schema)
    primary = None if case in ("missing-primary", "labels-on-plain") else {"run": "r"}
    with pytest.raises(DekerValidationError, match=message):
        deker_dask.store_xarray(_changed(arr, case), collection, primary_attributes=primary, scheduler="sync")
    assert nothing_stored(collection)


def test_an_existing_primary_key_is_refused_before_writing(storage: Client) -> None:
    collection = storage.create_collection(
        "c", deker_dask.schema_from_xarray(grid(), primary_attributes={"run": str})
    )
    first = deker_dask.store_xarray(grid(), collection, primary_attributes={"run": "r"}, scheduler="sync")
    with pytest.raises(DekerValidationError, match="primary attributes must be unique"):
        deker_dask.store_xarray(grid() * 2, collection, primary_attributes={"run": "r"}, scheduler="sync")
    assert list(collection) == [first]
    np.testing.assert_array_equal(first[:].read(), grid().values)


def _fail_on_block(block: np.ndarray, block_info: Any = None) -> np.ndarray:
    if block_info is not None and block_info[None]["chunk-location"] == (1, 0, 1):
        raise OSError("injected: the source file cannot be read")
    return block


def test_a_failed_write_deletes_the_new_array(storage: Client, cluster: Any) -> None:
    arr = grid()
    failing = arr.copy(data=da.from_array(arr.values, chunks=(2, 5, 3)).map_blocks(_fail_on_block))
    collection = storage.create_collection("c", deker_dask.schema_from_xarray(arr, vgrid=(2, 1, 2)))
    with pytest.raises(OSError, match="injected"):
        deker_dask.store_xarray(failing, collection, scheduler=cluster)
    assert nothing_stored(collection)
    v = deker_dask.store_xarray(arr, collection, scheduler=cluster)  # the collection is usable
    np.testing.assert_array_equal(v[:].read(), arr.values)


def test_time_axis_starting_at_an_attribute(storage: Client) -> None:
    schema = VArraySchema(
        dtype=np.float32,
        dimensions=[
            TimeDimensionSchema("time", 4, "$run", timedelta(hours=6)),
            DimensionSchema("lat", 5, scale=Scale(60.0, -15.0)),
            DimensionSchema("lon", 6),
        ],
        attributes=[AttributeSchema("run", datetime, True)],
        vgrid=(1, 1, 2),
    )
    collection = storage.create_collection("runs", schema)
    arr = grid().drop_vars("lon")
    run = datetime(2024, 1, 1, tzinfo=UTC)
    v = deker_dask.store_xarray(arr, collection, primary_attributes={"run": run}, scheduler="sync")
    np.testing.assert_array_equal(v[:].read_xarray()["time"].values, arr["time"].values)
    with pytest.raises(DekerValidationError, match="'time' disagrees"):
        deker_dask.store_xarray(
            arr, collection, primary_attributes={"run": run + timedelta(days=1)}, scheduler="sync"
        )
    assert list(collection) == [v]


def test_an_attribute_its_numpy_dtype_cannot_hold_is_refused_before_anything_is_stored(
    storage: Client,
) -> None:
    """``np.int8(300)`` raised a bare OverflowError (NumPy 2) or stored 44 (NumPy 1.26)."""
    schema = deker_dask.schema_from_xarray(grid(), custom_attributes={"level": np.int8})
    collection = storage.create_collection("levels", schema)
    for wrong in (300, 1.5):
        with pytest.raises(DekerValidationError, match=r"attribute 'level' change when stored as int8"):
            deker_dask.store_xarray(grid().assign_attrs(level=wrong), collection, attrs_as_custom=True)
    assert nothing_stored(collection)
    stored = deker_dask.store_xarray(grid().assign_attrs(level=100), collection, attrs_as_custom=True)
    assert stored.custom_attributes["level"] == np.int8(100)


def test_attrs_become_custom_attributes_only_when_asked(storage: Client) -> None:
    schema = deker_dask.schema_from_xarray(
        grid(),
        custom_attributes={"source": str, "version": int, "units": str, "issued": datetime, "shape": tuple},
    )
    collection = storage.create_collection("c", schema)
    plain = deker_dask.store_xarray(grid(), collection, scheduler="sync")
    assert set(plain.custom_attributes.values()) == {None}
    arr = grid().assign_attrs(issued="2024-01-01T00:00:00", shape=np.array([1, 2]), other="ignored")
    a = deker_dask.store_xarray(
        arr, collection, custom_attributes={"units": "degC"}, attrs_as_custom=True, scheduler="sync"
    )
    assert a.custom_attributes == {
        "source": "model-a",
        "version": 3,
        "units": "degC",  # given wins over attrs
        "issued": datetime(2024, 1, 1, tzinfo=UTC),
        "shape": (1, 2),
    }


# ----------------------------------------------------------------------------- round trips

DTYPES = ["i1", "i2", "i4", "i8", "u1", "u2", "f4", "f8"]


@st.composite
def datasets(draw: Any) -> xr.DataArray:
    ndim = draw(st.integers(1, 3))
    dims: list[str] = []
    coords: dict[str, Any] = {}
    shape: list[int] = []
    for i in range(ndim):
        kind = draw(st.sampled_from(["none", "positions", "scale", "labels", "numbers", "time"]))
        size = draw(st.integers(2 if kind in ("time", "scale") else 1, 5))
        name = f"d{i}"
        dims.append(name)
        shape.append(size)
        if kind == "positions":
            coords[name] = np.arange(size)
        elif kind == "scale":
            start = draw(st.integers(-1000, 1000)) / 4
            step = draw(st.sampled_from([0.1, 0.25, -0.5, 1.0, 2.5, 0.01]))
            fdtype = draw(st.sampled_from(["f4", "f8"]))
            coords[name] = (start + np.arange(size) * step).astype(fdtype)
        elif kind == "labels":
            coords[name] = draw(
                st.lists(st.text("abcxyz", min_size=1, max_size=4), min_size=size, max_size=size, unique=True)
            )
        elif kind == "numbers":
            coords[name] = (
                np.asarray(
                    draw(st.lists(st.integers(-50, 50), min_size=size, max_size=size, unique=True)),
                    dtype="f8",
                )
                ** 3
            )
        elif kind == "time":
            start = np.datetime64("2020-01-01") + np.timedelta64(draw(st.integers(0, 10_000)), "h")
            step = np.timedelta64(draw(st.sampled_from([1, 15, 60, 360, 1440, 10080, -60])), "m")
            coords[name] = start + np.arange(size) * step
    dtype = draw(st.sampled_from(DTYPES))
    data = np.random.default_rng(draw(st.integers(0, 2**16))).integers(0, 100, size=shape).astype(dtype)
    return xr.DataArray(data, dims=dims, coords=coords, name="v")


def _same_coordinate(got: np.ndarray, want: np.ndarray) -> None:
    if want.dtype.kind in "fiu" and got.dtype.kind == "f":
        np.testing.assert_allclose(got, want.astype("f8"), rtol=1e-6, atol=1e-9)
    else:
        np.testing.assert_array_equal(got, want)


@settings(max_examples=20, deadline=None)
@given(arr=datasets(), data=st.data())
def test_netcdf_round_trip(arr: xr.DataArray, data: st.DataObject) -> None:
    # None: an Array; else a VArray with a tile count dividing each dimension
    tiled = data.draw(st.booleans())
    vgrid = (
        tuple(data.draw(st.sampled_from([d for d in range(1, n + 1) if n % d == 0])) for n in arr.shape)
        if tiled
        else None
    )
    with tempfile.TemporaryDirectory() as tmp, Client(f"file://{tmp}/storage") as client:
        ds = netcdf(arr, Path(tmp) / "in.nc")
        schema = deker_dask.schema_from_xarray(ds, vgrid=vgrid)
        collection = client.create_collection("v", schema)
        stored = deker_dask.store_xarray(ds, collection, scheduler="sync", progress=False)
        for back in (stored[:].read_xarray(), deker_dask.to_xarray(stored).compute(scheduler="sync")):
            assert back.dims == arr.dims and back.dtype == arr.dtype
            np.testing.assert_array_equal(back.values, arr.values)
            for dim in arr.dims:
                if dim in arr.coords:
                    _same_coordinate(back[dim].values, arr[dim].values)
        # and through the xarray backend, then out to netCDF again
        opened = xr.open_dataset(f"file://{tmp}/storage", engine="deker", group="v", filter={"id": stored.id})
        back = opened["v"]
        assert back.dims == arr.dims and back.dtype == arr.dtype
        np.testing.assert_array_equal(back.values, arr.values)
        for dim in arr.dims:
            if dim in arr.coords:
                _same_coordinate(back[dim].values, arr[dim].values)
        opened.to_netcdf(Path(tmp) / "out.nc", engine="h5netcdf")
        opened.close()
        again = xr.open_dataset(Path(tmp) / "out.nc", engine="h5netcdf")
        np.testing.assert_array_equal(again["v"].values, arr.values)
        for dim in arr.dims:
            if dim in arr.coords:
                _same_coordinate(again[dim].values, arr[dim].values)
        again.close()
        ds.close()


def test_labels_that_differ_are_refused(storage: Client) -> None:
    arr = xr.DataArray(np.zeros((3, 2)), dims=("station", "n"), coords={"station": ["a", "b", "c"]})
    collection = storage.create_collection("s", deker_dask.schema_from_xarray(arr))
    other = arr.assign_coords(station=["a", "c", "b"])
    with pytest.raises(DekerValidationError, match=r"'station' disagrees.*position 1 is 'c'.*'b'"):
        deker_dask.store_xarray(other, collection, scheduler="sync")
    numbers = arr.assign_coords(station=[1.0, 2.0, 3.0])
    with pytest.raises(DekerValidationError, match=r"'station' disagrees.*labels differ"):
        deker_dask.store_xarray(numbers, collection, scheduler="sync")
    assert nothing_stored(collection)
    deker_dask.store_xarray(arr.drop_vars("station"), collection, scheduler="sync")  # by position
    assert len(list(collection)) == 1
