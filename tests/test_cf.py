"""deker/cf.py: netCDF-safe attribute values, coordinates and CF time encodings (pure values).

The time encodings are checked against xarray's own CF encoder and decoder (hypothesis over
starts, steps and sizes): every instant is a whole number of the chosen unit and decodes back.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from deker import ArraySchema, AttributeSchema, Client, DimensionSchema, TimeDimensionSchema
from deker.cf import (
    array_attributes,
    array_layout,
    attribute_value,
    collection_layout,
    coordinate_values,
    datetime64_values,
    stacking_order,
    time_encoding,
)

UTC = timezone.utc


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("K", "K"),
        (3, 3),
        (np.int16(3), np.int16(3)),  # keeps its netCDF type
        (np.float16(0.5), 0.5),  # netCDF has no float16
        (2.5, 2.5),
        (np.float32(0.5), np.float32(0.5)),
        (1 + 2j, "(1+2j)"),
        (np.complex64(1 - 1j), "(1-1j)"),
        (datetime(2024, 1, 2, 3, tzinfo=UTC), "2024-01-02T03:00:00+00:00"),
        (datetime(2024, 1, 2, 3, tzinfo=timezone(timedelta(hours=2))), "2024-01-02T01:00:00+00:00"),
        (datetime(2024, 1, 2, 3, 4, 5, 600), "2024-01-02T03:04:05.000600+00:00"),  # naive is UTC
        ((1, "x", datetime(2024, 1, 1, tzinfo=UTC)), '[1, "x", "2024-01-01T00:00:00+00:00"]'),
        ((5,), "[5]"),
        ((), "[]"),
        ((1, (2, 1j)), '[1, [2, "1j"]]'),
        (None, None),
    ],
)
def test_attribute_value(value: Any, expected: Any) -> None:
    got = attribute_value(value)
    assert got == expected and type(got) is type(expected)


def test_numeric_tuples_become_arrays() -> None:
    got = attribute_value((0, 100))
    assert isinstance(got, np.ndarray) and got.dtype == np.int64
    np.testing.assert_array_equal(got, [0, 100])
    mixed = attribute_value((0, 2.5))
    assert isinstance(mixed, np.ndarray) and mixed.dtype == np.float64


def test_array_attributes_leave_none_out_and_keep_order() -> None:
    attrs = array_attributes({"run": 3}, {"units": "K", "note": None, "at": datetime(2024, 1, 1, tzinfo=UTC)})
    assert attrs == {"run": 3, "units": "K", "at": "2024-01-01T00:00:00+00:00"}
    assert list(attrs) == ["run", "units", "at"]


def test_coordinate_values() -> None:
    times = coordinate_values([datetime(2024, 1, 1, tzinfo=UTC), None])
    assert times.dtype == np.dtype("datetime64[ns]") and np.isnat(times[1])
    assert coordinate_values([1, 2]).dtype.kind == "i"
    floats = coordinate_values([1, None])
    assert floats.dtype == np.float64 and np.isnan(floats[1])
    assert list(coordinate_values(["a", None, (1, 2)])) == ["a", "", "[1, 2]"]
    assert coordinate_values([1 + 1j]).dtype.kind == "U"
    # the deker 1.1.7-style form keeps Python objects where netCDF cannot store them
    assert coordinate_values([(1, 2), None], cf=False).dtype == object
    assert coordinate_values([], cf=True).shape == (0,)


_starts = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1))
_steps = st.one_of(
    st.integers(1, 400).map(lambda n: timedelta(days=n)),
    st.integers(1, 400).map(lambda n: timedelta(hours=n)),
    st.integers(1, 10**6).map(lambda n: timedelta(seconds=n)),
    st.integers(1, 10**6).map(lambda n: timedelta(microseconds=n)),
)


def _units(text: str) -> tuple[str, Any]:
    unit, reference = text.split(" since ")  # (xarray rewrites the reference in its own format)
    return unit, np.datetime64(reference.replace(" ", "T"), "ns")


@settings(max_examples=60)
@given(start=_starts, step=_steps, size=st.integers(1, 50))
def test_time_encoding_is_whole_numbers_that_decode_back(start: datetime, step: timedelta, size: int) -> None:
    values = np.asarray([np.datetime64(start + i * step, "ns") for i in range(size)])
    encoding = time_encoding(values)
    assert encoding["calendar"] == "proleptic_gregorian" and encoding["dtype"] == "int64"
    variable = xr.Variable(("time",), values, encoding=encoding)
    encoded = xr.conventions.encode_cf_variable(variable)
    assert encoded.dtype == np.int64 and _units(encoded.attrs["units"]) == _units(encoding["units"])
    assert int(encoded.values[0]) == 0
    decoded = xr.conventions.decode_cf_variable("time", encoded)
    np.testing.assert_array_equal(decoded.values, values)


def test_time_encoding_units_and_nat() -> None:
    day = np.datetime64("2024-01-01T00:00", "ns")
    assert (
        time_encoding(np.asarray([day, day + np.timedelta64(6, "h")]))["units"]
        == "hours since 2024-01-01T00:00:00"
    )
    assert time_encoding(np.asarray([day, day + np.timedelta64(90, "m")]))["units"].startswith("minutes")
    assert time_encoding(np.asarray([day]))["units"] == "days since 2024-01-01T00:00:00"
    odd = day + np.timedelta64(1500, "us")
    assert time_encoding(np.asarray([odd]))["units"] == "days since 2024-01-01T00:00:00.001500"
    assert time_encoding(np.asarray([day, odd]))["units"] == "microseconds since 2024-01-01T00:00:00"
    with_nat = time_encoding(np.asarray([day, np.datetime64("NaT", "ns")]))
    assert "dtype" not in with_nat and with_nat["units"].startswith("days")
    assert time_encoding(np.asarray([np.datetime64("NaT", "ns")])) == {}


def test_datetimes_outside_the_nanosecond_range_become_microseconds_not_other_instants() -> None:
    """``datetime64[ns]`` holds about 1677-2262: numpy wrapped 1500-01-01 to 2084-07-20."""
    inside = [
        datetime(2024, 1, 1, tzinfo=UTC),
        None,
        datetime(1700, 1, 1, 12, tzinfo=timezone(timedelta(hours=2))),
    ]
    got = datetime64_values(inside)
    assert got.dtype == np.dtype("datetime64[ns]")
    np.testing.assert_array_equal(
        got, np.array(["2024-01-01", "NaT", "1700-01-01T10:00"], dtype="datetime64[ns]")
    )
    for outside in (datetime(1500, 1, 1, tzinfo=UTC), datetime(2263, 1, 1), datetime(1, 1, 1, 0, 0, 0, 1)):
        values = [datetime(2000, 1, 1), outside, None]
        got = datetime64_values(values)
        assert got.dtype == np.dtype("datetime64[us]")
        back = [None if np.isnat(v) else v.astype(datetime) for v in got]
        assert back == [v if v is None else v.replace(tzinfo=None) for v in values]
    assert datetime64_values([]).dtype == np.dtype("datetime64[ns]")


@settings(max_examples=40)
@given(
    start=st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9000, 1, 1)),
    step=_steps,
    size=st.integers(1, 20),
)
def test_time_encoding_of_microsecond_values_decodes_back(
    start: datetime, step: timedelta, size: int
) -> None:
    values = np.asarray([np.datetime64(start + i * step, "us") for i in range(size)])
    encoding = time_encoding(values)
    assert encoding["calendar"] == "proleptic_gregorian" and encoding["dtype"] == "int64"
    unit, reference = encoding["units"].split(" since ")
    ref = np.datetime64(reference, "us")
    per_tick = {
        "days": 86_400 * 10**6,
        "hours": 3_600 * 10**6,
        "minutes": 60 * 10**6,
        "seconds": 10**6,
        "milliseconds": 10**3,
        "microseconds": 1,
    }[unit]
    offsets = (values - ref).astype(np.int64)
    assert ref == values.min() and not np.any(offsets % per_tick)  # whole numbers of the unit


def test_a_time_axis_from_1600_reads_as_its_own_instants(tmp_path: Any) -> None:
    start = datetime(1600, 1, 1, tzinfo=UTC)  # (before 1677: outside datetime64[ns])
    schema = ArraySchema(
        dtype=np.float32,
        dimensions=[TimeDimensionSchema(name="time", size=3, start_value=start, step=timedelta(days=1))],
    )
    want = np.array(["1600-01-01", "1600-01-02", "1600-01-03"], dtype="datetime64[us]")
    with Client(f"file://{tmp_path}") as client:
        array = client.create_collection("old", schema).create()
        for cf in (True, False):
            _same_instants(array[:].read_xarray(cf=cf)["time"].values, want)
        ds = array[:].read_xarray(cf=True).to_dataset(name="t")
        ds.to_netcdf(tmp_path / "old.nc", engine="h5netcdf")
        coder = xr.coders.CFDatetimeCoder(time_unit="us")  # (xarray decodes to [ns] by default)
        with xr.open_dataset(tmp_path / "old.nc", engine="h5netcdf", decode_times=coder) as back:
            _same_instants(back["time"].values, want)
    with xr.open_dataset(tmp_path, engine="deker", group="old") as ds:
        _same_instants(ds["time"].values, want)


def test_a_collection_with_time_axes_in_and_out_of_the_nanosecond_range_stacks_them_exactly(
    tmp_path: Any,
) -> None:
    """numpy stacks [ns] and [us] rows in [ns]: the row from 1500 wrapped to 2084 (review)."""
    import deker_dask

    schema = ArraySchema(
        dtype=np.float32,
        dimensions=[TimeDimensionSchema("time", 2, "$run", timedelta(days=1)), DimensionSchema("x", 2)],
        attributes=[AttributeSchema("run", datetime, primary=True)],
    )
    want = np.array([["1500-01-01", "1500-01-02"], ["2000-01-01", "2000-01-02"]], dtype="datetime64[us]")
    with Client(f"file://{tmp_path}") as client:
        collection = client.create_collection("runs", schema)
        for year in (2000, 1500):
            collection.create({"run": datetime(year, 1, 1, tzinfo=UTC)})
        for cf in (True, False):
            _same_instants(deker_dask.to_xarray(collection, cf=cf)["time_values"].values, want)
    with xr.open_dataset(tmp_path, engine="deker", group="runs") as ds:
        _same_instants(ds["time_values"].values, want)


def _same_instants(got: np.ndarray, want: np.ndarray) -> None:
    # (not assert_array_equal alone: comparing [ns] with [us] converts both to [ns], wrapping both alike)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def test_stacking_order_and_name_clashes(tmp_path: Any) -> None:
    schema = ArraySchema(
        dtype=float,
        dimensions=[
            TimeDimensionSchema(
                name="time", size=2, start_value="2024-01-01T00:00:00", step=timedelta(days=1)
            ),
            DimensionSchema(name="x", size=2),
        ],
        attributes=[
            AttributeSchema(name="x", dtype=float, primary=True),  # named like a dimension
            AttributeSchema(name="id", dtype=str, primary=False),  # named like the id coordinate
        ],
    )
    with Client(f"file://{tmp_path}") as client:
        coll = client.create_collection("c", schema)
        for x in (2.0, float("nan"), 1.0):
            coll.create({"x": x}, {"id": f"custom {x}"})
        items = stacking_order(coll)
        assert [a.primary_attributes["x"] for a in items][:2] == [1.0, 2.0]  # NaN last
        layout = collection_layout(coll, items, positions=False)
        named_like_a_dimension = client.create_collection("time", schema)
        one = named_like_a_dimension.create({"x": 1.0})
        assert collection_layout(named_like_a_dimension, [one]).name == "time_data"
        assert array_layout(one, [slice(0, 2), slice(0, 2)]).name == "time_data"
    assert layout.name == "c"
    assert layout.dims == ("array", "time", "x")
    assert set(layout.coords) == {"id", "x_attribute", "id_attribute", "time"}
    assert layout.coords["x_attribute"].dims == ("array",)
    assert list(layout.coords["id_attribute"].values) == ["custom 1.0", "custom 2.0", "custom nan"]


def test_datetime_coordinates_along_the_stacking_dimension_have_cf_time_attributes(tmp_path: Any) -> None:
    """They had no ``standard_name``, which every other time coordinate has (review of stop 37)."""
    import deker_dask

    schema = ArraySchema(
        dtype=np.float32,
        dimensions=[TimeDimensionSchema("time", 2, "$run", timedelta(hours=6)), DimensionSchema("x", 2)],
        attributes=[
            AttributeSchema("run", datetime, primary=True),  # the start of each time axis
            AttributeSchema("day", datetime, primary=True),
            AttributeSchema("issued", datetime, primary=False),
        ],
    )
    time = {"standard_name": "time"}

    def check(ds: xr.Dataset) -> None:
        assert ds["run"].dims == ds["day"].dims == ds["issued"].dims == ("array",)
        assert ds["run"].attrs == {"standard_name": "forecast_reference_time"}
        assert ds["day"].attrs == ds["issued"].attrs == ds["time_values"].attrs == time
        assert ds["run"].encoding["units"] == "days since 2024-01-01T00:00:00"
        ds.to_netcdf(tmp_path / "runs.nc", engine="h5netcdf")
        with xr.open_dataset(tmp_path / "runs.nc", engine="h5netcdf") as back:
            xr.testing.assert_identical(back.load(), ds.load())

    single = ArraySchema(
        dtype=np.float32,
        dimensions=[DimensionSchema("x", 2)],
        attributes=[AttributeSchema("day", datetime, True)],
    )
    with Client(f"file://{tmp_path}") as client:
        collection = client.create_collection("runs", schema)
        for d in (1, 2):
            at = datetime(2024, 1, d, tzinfo=UTC)
            collection.create({"run": at, "day": at}, {"issued": at + timedelta(hours=5)})
        check(deker_dask.to_xarray(collection).to_dataset())
        daily = client.create_collection("daily", single)
        daily.create({"day": datetime(2024, 1, 1, tzinfo=UTC)})
        assert deker_dask.to_xarray(daily)["day"].attrs == time  # the stacking dimension's own coordinate
    with xr.open_dataset(tmp_path, engine="deker", group="runs") as ds:
        check(ds)


@pytest.mark.parametrize("start", [datetime(2024, 1, 1, tzinfo=UTC), "$run"])
def test_an_empty_collection_has_the_coordinates_and_dtypes_of_a_full_one(tmp_path: Any, start: Any) -> None:
    """Its stacking coordinate was float64 and its dimension coordinates were missing (review of stop 37)."""
    import deker_dask

    schema = ArraySchema(
        dtype=np.int16,
        dimensions=[
            TimeDimensionSchema("time", 2, start, timedelta(hours=1)),
            DimensionSchema("station", 2, labels=["oslo", "bergen"]),
            DimensionSchema("y", 3),
        ],
        attributes=[
            AttributeSchema("run", datetime, primary=True),
            AttributeSchema("n", int, primary=False),
            AttributeSchema("model", str, primary=False),
            AttributeSchema("level", np.float32, primary=False),
        ],
    )

    def form(ds: xr.Dataset) -> dict[str, Any]:  # (strings: any length)
        dtypes = {k: v.dtype.str if v.dtype.kind != "U" else "U" for k, v in ds.variables.items()}
        attrs = {
            k: {a: x for a, x in v.attrs.items() if a != "deker_collection"} for k, v in ds.variables.items()
        }
        return {k: (v.dims, dtypes[k], attrs[k]) for k, v in ds.variables.items()}

    with Client(f"file://{tmp_path}") as client:
        empty = client.create_collection("c", schema)
        full = client.create_collection("full", schema)
        for d in (1, 2):
            at = datetime(2024, 1, d, tzinfo=UTC)
            full.create({"run": at}, {"n": d, "model": f"v{d}", "level": np.float32(d)})
        views = {
            name: deker_dask.to_xarray(c).rename("c").to_dataset()
            for name, c in (("c", empty), ("full", full))
        }
        assert views["c"]["c"].shape == (0, 2, 2, 3)
        assert form(views["c"]) == form(views["full"])
        assert list(views["c"]["station"].values) == ["oslo", "bergen"]
    opened: dict[str, xr.Dataset] = {}
    for name in ("c", "full"):
        with xr.open_dataset(tmp_path, engine="deker", group=name) as ds:
            opened[name] = ds.rename({name: "c"}).load()
    assert form(opened["c"]) == form(opened["full"])
    opened["c"].to_netcdf(tmp_path / "empty.nc", engine="h5netcdf")
    with xr.open_dataset(tmp_path / "empty.nc", engine="h5netcdf", mask_and_scale={"c": False}) as back:
        xr.testing.assert_identical(back.load(), opened["c"])


@pytest.mark.parametrize(
    ("dtype", "fill", "marked"),
    [
        (np.int16, -999, True),
        (np.int32, None, True),  # (the default: the minimum)
        (np.uint8, 255, True),
        (np.uint8, None, False),  # (the default 0 is mostly real data)
        (np.float32, -1.0, True),
        (np.float32, None, False),  # (NaN: xarray writes it as the _FillValue of float data itself)
        (np.complex64, 0j, False),  # (CF has no complex fill value)
    ],
)
def test_every_cf_view_marks_the_fill_value_as_its_FillValue(
    tmp_path: Any, dtype: Any, fill: Any, marked: bool
) -> None:
    """Absent cells read back from netCDF as data: the views had no ``_FillValue`` (review of stop 37)."""
    import deker_dask

    schema = ArraySchema(
        dtype=dtype,
        dimensions=[DimensionSchema("x", 3)],
        attributes=[AttributeSchema("run", int, primary=True)],
        fill_value=fill,
    )
    with Client(f"file://{tmp_path}") as client:
        collection = client.create_collection("c", schema)
        array = collection.create({"run": 1})
        array[0].update(dtype(7))  # cells 1 and 2 are absent
        want = {"_FillValue": array.fill_value} if marked else {}
        views = [
            array[:].read_xarray(cf=True),
            array[1:].read_xarray(cf=True),
            deker_dask.to_xarray(array),
            deker_dask.to_xarray(collection),
        ]
        for view in views:
            got = {k: v for k, v in view.attrs.items() if k == "_FillValue"}
            assert got == want and all(type(got[k]) is type(want[k]) for k in got), view
        safe = views[0].load()
    for options in ({}, {"filter": {"run": 1}}):
        with xr.open_dataset(tmp_path, engine="deker", group="c", **options) as ds:
            got = {k: v for k, v in ds["c"].attrs.items() if k == "_FillValue"}
            assert got == want and all(type(got[k]) is type(want[k]) for k in got)
    if not marked:
        return
    safe.to_netcdf(tmp_path / "c.nc", engine="h5netcdf")
    with xr.open_dataset(tmp_path / "c.nc", engine="h5netcdf") as back:  # missing cells stay missing
        np.testing.assert_array_equal(back["c"].values, [7.0, np.nan, np.nan])
    with xr.open_dataset(tmp_path / "c.nc", engine="h5netcdf", mask_and_scale=False) as back:
        xr.testing.assert_identical(back["c"].load(), safe)
