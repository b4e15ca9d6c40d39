"""Tests of deker_dask.labels: dask-backed xarray objects over deker data, labelled as deker does.

An Array, VArray or subset gets the labels of ``read_xarray`` (``cf=True`` by default, deker
1.1.7's dict attributes with ``cf=False``); a collection gets a leading dimension.  Values
are computed on the session's LocalCluster of worker processes.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest
import xarray as xr

import deker_dask
from deker import ArraySchema, AttributeSchema, Client, DimensionSchema, TimeDimensionSchema, VArraySchema
from deker.errors import DekerSubsetError, DekerValidationError
from deker_dask.labels import coordinate


def labelled_varray(storage: Client) -> Any:
    schema = VArraySchema(
        dtype=np.float32,
        dimensions=[
            TimeDimensionSchema(name="time", size=6, start_value="$start", step=timedelta(hours=1)),
            DimensionSchema(name="lat", size=4, scale={"start_value": 10.0, "step": -0.5}),
            DimensionSchema(name="var", size=3, labels=["t", "p", "q"]),
        ],
        attributes=[
            AttributeSchema(name="start", dtype=datetime, primary=True),
            AttributeSchema(name="note", dtype=str, primary=False),
        ],
        vgrid=(2, 2, 1),
    )
    coll = storage.create_collection("lab", schema)
    v = coll.create({"start": datetime(2024, 5, 1, tzinfo=timezone.utc)}, {"note": "x"})
    v[:].update(np.arange(72, dtype=np.float32).reshape(6, 4, 3))
    return v


def test_to_xarray_matches_read_xarray(storage: Client, cluster: Any) -> None:
    v = labelled_varray(storage)
    for key in [np.s_[:], np.s_[1:5, 1:4, "p"], np.s_[2, :, :], np.s_["2024-05-01T03:00:00", 10.0, :]]:
        sub = v[key]
        lazy = deker_dask.to_xarray(sub)
        assert lazy.chunks is not None  # dask-backed
        xr.testing.assert_identical(lazy.compute(scheduler=cluster), sub.read_xarray(cf=True))
        old_form = deker_dask.to_xarray(sub, cf=False)  # deker 1.1.7's dict attributes
        xr.testing.assert_identical(old_form.compute(scheduler=cluster), sub.read_xarray())
    whole = deker_dask.to_xarray(v)
    xr.testing.assert_identical(whole.compute(scheduler=cluster), v[:].read_xarray(cf=True))
    assert whole["time"].encoding == v[:].read_xarray(cf=True)["time"].encoding != {}
    with pytest.raises(DekerSubsetError):
        deker_dask.to_xarray(v[0, 0, 0])


# ----------------------------------------------------------------------------- coordinates


def test_aware_datetimes_become_utc_datetime64() -> None:
    plus_two = timezone(timedelta(hours=2))
    values = [datetime(2024, 5, 1, 2, tzinfo=plus_two), datetime(2024, 5, 1, 1, tzinfo=timezone.utc)]
    out = coordinate(values)
    assert out.dtype == np.dtype("datetime64[ns]")
    assert list(out) == [np.datetime64("2024-05-01T00:00", "ns"), np.datetime64("2024-05-01T01:00", "ns")]
    naive = coordinate([datetime(2024, 5, 1, 3)])
    assert naive[0] == np.datetime64("2024-05-01T03:00", "ns")  # a naive time is taken as it is


def test_tuples_and_missing_values_stay_whole_in_an_object_coordinate() -> None:
    out = coordinate([(1, 2), None, "a"])
    assert out.dtype == object and out.shape == (3,)
    assert out[0] == (1, 2) and out[1] is None and out[2] == "a"
    assert coordinate([1.5, 2.5]).dtype == np.float64
    assert coordinate(["x", "y"]).tolist() == ["x", "y"]
    assert coordinate([]).shape == (0,)


# ----------------------------------------------------------------------------- collections


def _days(storage: Client, primary: list[str]) -> Any:
    schema = ArraySchema(
        dtype=np.float32,
        dimensions=[
            TimeDimensionSchema(name="time", size=2, start_value="$day", step=timedelta(hours=12)),
            DimensionSchema(name="x", size=3),
        ],
        attributes=[
            AttributeSchema(name="day", dtype=datetime, primary="day" in primary),
            AttributeSchema(name="site", dtype=str, primary="site" in primary),
        ],
    )
    coll = storage.create_collection("days", schema)
    for day, site in ((2, "b"), (1, "a")):
        values = {"day": datetime(2024, 1, day, tzinfo=timezone.utc), "site": site}
        primary_values = {k: v for k, v in values.items() if k in primary}
        custom = {k: v for k, v in values.items() if k not in primary}
        coll.create(primary_values, custom)[:].update(np.full((2, 3), day, np.float32))
    return coll


def test_the_old_form_of_a_collection_leads_with_its_one_primary_attribute(
    storage: Client, cluster: Any
) -> None:
    coll = _days(storage, ["day"])
    old = deker_dask.to_xarray(coll, cf=False)
    assert old.dims == ("day", "time", "x")
    assert old.name == "Deker collection `days`" and old.attrs == {"collection": "days"}
    assert old["id"].dims == ("day",) and len(set(old["id"].values)) == 2
    assert list(old["day"].values) == [np.datetime64("2024-01-01", "ns"), np.datetime64("2024-01-02", "ns")]
    assert old["time_values"].dims == ("day", "time")  # each array's time axis starts at its day
    assert old["time_values"].values[1, 1] == np.datetime64("2024-01-02T12:00", "ns")
    np.testing.assert_array_equal(old.compute(scheduler=cluster).values[:, 0, 0], [1.0, 2.0])


def test_the_old_form_leads_with_array_for_two_primary_attributes(storage: Client, cluster: Any) -> None:
    coll = _days(storage, ["day", "site"])
    old = deker_dask.to_xarray(coll, cf=False)
    assert old.dims[0] == "array"
    assert old["site"].dims == ("array",) and sorted(old["site"].values) == ["a", "b"]
    assert old["day"].dims == ("array",)
    np.testing.assert_array_equal(old.sum(dim=("time", "x")).compute(scheduler=cluster).values, [6.0, 12.0])


def test_options_that_do_not_apply_are_refused(storage: Client) -> None:
    v = storage.create_collection(
        "v", VArraySchema(dtype=np.float32, dimensions=[DimensionSchema("n", 4)], vgrid=(2,))
    ).create()
    with pytest.raises(DekerValidationError, match="arrays_per_chunk applies to collections only"):
        deker_dask.to_xarray(v, arrays_per_chunk=2)
    with pytest.raises(DekerSubsetError, match=r"Cannot convert a scalar deker\.VSubset"):
        deker_dask.to_xarray(v[1])
    with pytest.raises(DekerValidationError, match="Expected a deker Array"):
        deker_dask.to_xarray(np.zeros(3))
