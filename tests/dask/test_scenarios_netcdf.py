"""Every xarray output of deker goes to netCDF (h5netcdf and netCDF4) and zarr and reads back equal.

Outputs: ``read_xarray(cf=True)`` of Array and VArray subsets (integer-indexed dimensions kept),
``deker_dask.to_xarray`` of an Array, a VArray, a subset and both kinds of collection, and
``xr.open_dataset(engine="deker")`` of both kinds of collection, stacked and filtered, and
``xr.open_datatree``.  The arrays carry every attribute type (datetimes, tuples, complex, None).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

import deker_dask
from deker import ArraySchema, AttributeSchema, Client, DimensionSchema, TimeDimensionSchema, VArraySchema

pytest.importorskip("h5netcdf")

ENGINES = ["h5netcdf", "netcdf4"]


def _engines() -> list[str]:
    import importlib.util

    return [e for e in ENGINES if importlib.util.find_spec("netCDF4" if e == "netcdf4" else e) is not None]


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    root = tmp_path_factory.mktemp("nc") / "storage"
    with Client(f"file://{root}") as client:
        days = client.create_collection(
            "days",
            ArraySchema(
                dtype=np.float64,
                dimensions=[
                    TimeDimensionSchema(name="time", size=4, start_value="$day", step=timedelta(minutes=90)),
                    DimensionSchema(
                        name="lat", size=3, scale={"start_value": 1.0, "step": 0.25, "name": "lat"}
                    ),
                    DimensionSchema(name="station", size=2, labels=["north", "south"]),
                ],
                attributes=[
                    AttributeSchema(name="day", dtype=datetime, primary=True),
                    AttributeSchema(name="units", dtype=str, primary=False),
                    AttributeSchema(name="issued", dtype=datetime, primary=False),
                    AttributeSchema(name="box", dtype=tuple, primary=False),
                    AttributeSchema(name="gain", dtype=complex, primary=False),
                    AttributeSchema(name="count", dtype=np.int16, primary=False),
                ],
            ),
        )
        for d, issued in ((3, None), (1, datetime(2023, 12, 31, 18, tzinfo=timezone.utc))):
            a = days.create(
                {"day": datetime(2024, 1, d, tzinfo=timezone.utc)},
                {"units": "K", "issued": issued, "box": (1, 2.5, "x"), "gain": 1 + 2j, "count": np.int16(d)},
            )
            a[:].update(np.arange(24, dtype=np.float64).reshape(4, 3, 2) * d)
        grid = client.create_collection(
            "grid",
            VArraySchema(
                dtype=np.int16,
                dimensions=[DimensionSchema(name="y", size=4), DimensionSchema(name="x", size=6)],
                attributes=[
                    AttributeSchema(name="run", dtype=str, primary=True),
                    AttributeSchema(name="valid", dtype=tuple, primary=False),
                ],
                vgrid=(2, 3),
                fill_value=-1,
            ),
        )
        for run in ("b", "a"):
            v = grid.create({"run": run}, {"valid": (0, 100)})
            v[1:3, 2:5].update(np.full((2, 3), ord(run), dtype=np.int16))
        yield client


def _uri(client: Client) -> str:
    return f"file://{client.root_path.parent}"


def _first(client: Client, name: str) -> Any:
    coll = client.get_collection(name)
    assert coll is not None
    return deker_dask.handles.collection_items(coll)[0]


OUTPUTS: dict[str, Callable[[Client], Any]] = {
    "read_xarray Array": lambda c: _first(c, "days")[:].read_xarray(cf=True),
    "read_xarray Array subset": lambda c: _first(c, "days")[1:3, 0, :].read_xarray(cf=True),
    "read_xarray VSubset": lambda c: _first(c, "grid")[1, 1:6].read_xarray(cf=True),
    "to_xarray Array": lambda c: deker_dask.to_xarray(_first(c, "days")),
    "to_xarray VArray": lambda c: deker_dask.to_xarray(_first(c, "grid")),
    "to_xarray VSubset": lambda c: deker_dask.to_xarray(_first(c, "grid")[:, 2]),
    "to_xarray Array collection": lambda c: deker_dask.to_xarray(c.get_collection("days")),
    "to_xarray VArray collection": lambda c: deker_dask.to_xarray(c.get_collection("grid")),
    "open_dataset Arrays": lambda c: xr.open_dataset(_uri(c), engine="deker", group="days"),
    "open_dataset VArrays": lambda c: xr.open_dataset(_uri(c), engine="deker", group="grid", chunks={}),
    "open_dataset filter": lambda c: xr.open_dataset(
        _uri(c), engine="deker", group="days", filter={"day": "2024-01-03"}
    ),
}


def _units(text: str) -> tuple[str, Any]:
    unit, reference = text.split(" since ")
    return unit, np.datetime64(reference.replace(" ", "T"), "ns")


def _as_dataset(obj: Any) -> xr.Dataset:
    return obj.to_dataset() if isinstance(obj, xr.DataArray) else obj


@pytest.mark.parametrize("output", list(OUTPUTS))
def test_every_output_round_trips_through_netcdf_and_zarr(
    storage: Client, output: str, tmp_path: Path
) -> None:
    obj = OUTPUTS[output](storage)
    expected = _as_dataset(obj).load()
    # an integer fill value is the _FillValue: xarray decodes those cells as missing (NaN), and
    # reads the stored values back as they were with mask_and_scale=False
    fills = {k: v.attrs["_FillValue"] for k, v in expected.data_vars.items() if "_FillValue" in v.attrs}
    raw = {"mask_and_scale": False} if fills else {}
    for engine in _engines():
        path = tmp_path / f"{engine}.nc"
        obj.to_netcdf(path, engine=engine)
        with xr.open_dataset(path, engine=engine) as decoded:
            for name, fill in fills.items():
                missing = expected[name].values == fill
                assert missing.any() and (~missing).any(), name
                np.testing.assert_array_equal(np.isnan(decoded[name].values), missing)
        with xr.open_dataset(path, engine=engine, **raw) as back:
            xr.testing.assert_identical(back.load(), expected)
            for name, var in expected.variables.items():
                if var.dtype.kind == "M":  # stored as CF times: integer counts since an instant
                    assert _units(back[name].encoding["units"]) == _units(var.encoding["units"]), name
                    assert back[name].encoding["dtype"] == np.int64, name
    with warnings.catch_warnings():  # zarr 3: fixed-length strings have no v3 specification yet
        warnings.simplefilter("ignore")
        _as_dataset(obj).to_zarr(tmp_path / "out.zarr", consolidated=False)
        with xr.open_zarr(tmp_path / "out.zarr", consolidated=False, **raw) as back:
            xr.testing.assert_identical(back.load(), expected)


def test_attributes_are_scalars_and_times_iso(storage: Client) -> None:
    attrs = _first(storage, "days")[:].read_xarray(cf=True).attrs
    assert attrs["day"] == "2024-01-01T00:00:00+00:00"
    assert attrs["issued"] == "2023-12-31T18:00:00+00:00"
    assert attrs["box"] == '[1, 2.5, "x"]' and attrs["gain"] == "(1+2j)" and attrs["count"] == 1
    assert attrs["units"] == "K"
    stacked = deker_dask.to_xarray(storage.get_collection("days"))
    assert "issued" not in stacked.attrs  # differs: a coordinate, NaT where None
    assert np.isnat(stacked["issued"].values[1]) and stacked.attrs["units"] == "K"
    valid = deker_dask.to_xarray(storage.get_collection("grid")).attrs["valid"]
    np.testing.assert_array_equal(valid, [0, 100])


def test_the_datatree_of_every_collection_round_trips(storage: Client, tmp_path: Path) -> None:
    with xr.open_datatree(_uri(storage), engine="deker") as tree:
        tree.to_netcdf(tmp_path / "tree.nc", engine="h5netcdf")
        raw = {"grid": False}  # (its int16 fill value is its _FillValue: keep the stored values)
        with xr.open_datatree(tmp_path / "tree.nc", engine="h5netcdf", mask_and_scale=raw) as back:
            xr.testing.assert_identical(back.load(), tree.load())


def test_the_deker_117_form_still_has_dict_attributes(storage: Client, tmp_path: Path) -> None:
    old = _first(storage, "days")[:].read_xarray()
    assert old.name.startswith("Deker Subset of Array(id=")
    assert old.attrs["primary_attributes"]["day"] == datetime(2024, 1, 1, tzinfo=timezone.utc)
    with pytest.raises(TypeError, match="primary_attributes"):  # as deker 1.1.7: netCDF cannot store it
        old.to_netcdf(tmp_path / "old.nc", engine="h5netcdf")  # (a path: older xarray makes no bytes so)
