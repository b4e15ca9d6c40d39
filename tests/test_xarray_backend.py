"""deker/xarray_backend.py: ``xr.open_dataset(uri, engine="deker", group=...)`` through xarray itself.

Laziness is checked with the kernel (inotify, tests/storage_helpers/file_opens.py): which data
files any process opened, not a count kept by the code under test.  Values are compared with
numpy oracles; keys (ints, slices with any step) with hypothesis.
"""

from __future__ import annotations

import logging
import pickle
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from storage_helpers.file_opens import FileOpens, available

from deker import (
    ArraySchema,
    AttributeSchema,
    Client,
    DimensionSchema,
    TimeDimensionSchema,
    VArraySchema,
)
from deker.errors import (
    DekerArrayNotFoundError,
    DekerClientError,
    DekerCollectionNotExistsError,
    DekerFilterError,
    DekerValidationError,
)
from deker.xarray_backend import DekerBackendEntrypoint, storage_uri

SHAPE = (6, 4, 2)
TILE = (3, 2, 1)
RUNS = (2, 0, 1)  # created out of order


def _grid_schema() -> VArraySchema:
    return VArraySchema(
        dtype=np.float32,
        dimensions=[
            TimeDimensionSchema(
                name="time",
                size=6,
                start_value=datetime(2024, 3, 1, tzinfo=timezone.utc),
                step=timedelta(hours=3),
            ),
            DimensionSchema(
                name="lat", size=4, scale={"start_value": 50.0, "step": -0.5, "name": "latitude"}
            ),
            DimensionSchema(name="level", size=2),
        ],
        attributes=[
            AttributeSchema(name="run", dtype=int, primary=True),
            AttributeSchema(name="units", dtype=str, primary=False),
        ],
        arrays_shape=TILE,
    )


def _values(run: int) -> np.ndarray:
    return (np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE) + 100 * run).astype(np.float32)


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A storage with a VArray collection ``grid`` (three runs, tile 0 of run 1 never written)
    and an Array collection ``days`` (a time axis starting at each array's ``day``)."""
    root = tmp_path_factory.mktemp("xr") / "storage"
    with Client(f"file://{root}") as client:
        grid = client.create_collection("grid", _grid_schema())
        for run in RUNS:
            v = grid.create({"run": run}, {"units": "K"})
            if run == 1:
                v[3:, :, :].update(_values(run)[3:])
            else:
                v[:].update(_values(run))
        days = client.create_collection(
            "days",
            ArraySchema(
                dtype=np.int32,
                dimensions=[
                    TimeDimensionSchema(name="time", size=4, start_value="$day", step=timedelta(hours=6)),
                    DimensionSchema(name="station", size=3, labels=["a", "b", "c"]),
                ],
                attributes=[
                    AttributeSchema(name="day", dtype=datetime, primary=True),
                    AttributeSchema(name="note", dtype=str, primary=False),
                ],
            ),
        )
        for d in (2, 1):
            a = days.create({"day": datetime(2024, 1, d, tzinfo=timezone.utc)}, {"note": f"day {d}"})
            a[:].update(np.full((4, 3), d, dtype=np.int32))
        client.create_collection(
            "empty", ArraySchema(dtype=float, dimensions=[DimensionSchema(name="x", size=2)])
        )
    return root


def _uri(root: Path) -> str:
    return f"file://{root}"


def _oracle() -> np.ndarray:
    out = np.stack([_values(r) for r in sorted(RUNS)])
    out[1, :3] = np.nan  # run 1: its first time tiles were never written
    return out


def _data_files(root: Path, collection: str) -> list[Path]:
    return sorted((root / "collections" / collection / "array_data").rglob("*.hdf5"))


def _tile_files(root: Path, run: int) -> dict[tuple[int, ...], Path]:
    """The data file of every existing tile of the VArray ``run``, by grid position."""
    with Client(_uri(root)) as client:
        grid = client.get_collection("grid")
        assert grid is not None
        vid = grid.filter({"run": run}).last().id
        out = {}
        for tile in grid.arrays:
            if tile.primary_attributes["vid"] == vid:
                (path,) = (root / "collections" / "grid" / "array_data").rglob(f"{tile.id}.hdf5")
                out[tuple(tile.primary_attributes["v_position"])] = path
        return out


# ------------------------------------------------------------------------------ the Dataset


def test_collection_opens_as_a_labelled_stack(storage: Path) -> None:
    with xr.open_dataset(_uri(storage), engine="deker", group="grid") as ds:
        var = ds["grid"]
        assert var.dims == ("run", "time", "lat", "level") and var.shape == (3, *SHAPE)
        assert var.dtype == np.float32
        assert list(ds["run"].values) == [0, 1, 2]
        assert ds["id"].dims == ("run",) and ds["id"].dtype.kind == "U"
        assert ds["time"].dtype == np.dtype("datetime64[ns]")
        assert ds["time"].values[1] == np.datetime64("2024-03-01T03:00", "ns")
        assert ds["time"].attrs == {"standard_name": "time"}
        assert ds["time"].encoding["units"] == "hours since 2024-03-01T00:00:00"
        np.testing.assert_array_equal(ds["lat"].values, [50.0, 49.5, 49.0, 48.5])
        assert ds["lat"].attrs == {"long_name": "latitude"}
        assert "level" not in ds.coords  # no labels, scale or time: positions, as in netCDF
        assert var.attrs == {"units": "K", "deker_collection": "grid"}  # equal in every array
        np.testing.assert_array_equal(var.values, _oracle())


def test_a_time_axis_that_starts_at_an_attribute(storage: Path) -> None:
    with xr.open_dataset(_uri(storage), engine="deker", group="days") as ds:
        assert ds["days"].dims == ("day", "time", "station")
        assert list(ds["day"].values) == [np.datetime64(f"2024-01-0{d}", "ns") for d in (1, 2)]
        assert ds["time_values"].dims == ("day", "time")
        assert ds["time_values"].values[1, 1] == np.datetime64("2024-01-02T06:00", "ns")
        assert list(ds["note"].values) == ["day 1", "day 2"]  # differs: a coordinate along the stack
        assert list(ds["station"].values) == ["a", "b", "c"]
        np.testing.assert_array_equal(ds["days"].values[:, 0, 0], [1, 2])


def test_filter_opens_one_array(storage: Path) -> None:
    with xr.open_dataset(_uri(storage), engine="deker", group="grid", filter={"run": 2}) as ds:
        var = ds["grid"]
        assert var.dims == ("time", "lat", "level")
        assert var.attrs["run"] == 2 and var.attrs["units"] == "K"
        np.testing.assert_array_equal(var.values, _values(2))
        ident = var.attrs["deker_id"]
    with xr.open_dataset(_uri(storage), engine="deker", group="days", filter={"day": "2024-01-02"}) as ds:
        assert ds["days"].attrs["day"] == "2024-01-02T00:00:00+00:00"
        assert ds["time"].values[0] == np.datetime64("2024-01-02", "ns")
    with xr.open_dataset(_uri(storage), engine="deker", group="grid", filter={"id": ident}) as ds:
        assert ds["grid"].attrs["run"] == 2


def test_empty_collection_and_drop_variables(storage: Path) -> None:
    with xr.open_dataset(_uri(storage), engine="deker", group="empty") as ds:
        assert ds["empty"].shape == (0, 2) and ds["empty"].values.shape == (0, 2)
    with xr.open_dataset(_uri(storage), engine="deker", group="days", drop_variables=["note", "id"]) as ds:
        assert "note" not in ds and "id" not in ds and "day" in ds


def test_open_datatree_has_one_node_per_collection(storage: Path) -> None:
    with xr.open_datatree(_uri(storage), engine="deker") as tree:
        assert sorted(tree.children) == ["days", "empty", "grid"]
        with xr.open_dataset(_uri(storage), engine="deker", group="grid") as ds:
            xr.testing.assert_identical(tree["grid"].to_dataset().load(), ds.load())
    with xr.open_datatree(_uri(storage), engine="deker", group="days") as tree:
        assert tree.name is None and "days" in tree.dataset and not tree.children


# ------------------------------------------------------------------------------ laziness and chunks


@pytest.mark.skipif(not available(), reason="inotify is Linux only")
def test_nothing_is_read_until_values_are_asked(storage: Path) -> None:
    tiles = _tile_files(storage, 2)
    with FileOpens(_data_files(storage, "grid")) as watch:
        ds = xr.open_dataset(_uri(storage), engine="deker", group="grid")
        var = ds["grid"]
        repr(ds), var.attrs, ds["time"].values, var.isel(run=2, time=slice(0, 4)).shape
        assert watch.opened() == set()  # listing VArrays opens no tile
        # run 2, times 3..5, lat 0..1, level 1: exactly one tile, position (1, 0, 1)
        np.testing.assert_array_equal(var[2, 3:6, 0:2, 1].values, _values(2)[3:6, 0:2, 1])
        assert watch.opened() == {tiles[(1, 0, 1)]}
        # a strided selection reads the tiles of the smallest region that holds its positions
        np.testing.assert_array_equal(var[2, ::4, 3, 0].values, _values(2)[::4, 3, 0])
        assert watch.opened() == {tiles[(0, 1, 0)], tiles[(1, 1, 0)]}
        ds.close()


@pytest.mark.skipif(not available(), reason="inotify is Linux only")
def test_array_collection_reads_only_the_arrays_asked(storage: Path) -> None:
    ds = xr.open_dataset(_uri(storage), engine="deker", group="days")
    files = _data_files(storage, "days")
    assert len(files) == 2
    with FileOpens(files) as watch:
        assert int(ds["days"][1, 2, 0]) == 2
        (one,) = watch.opened()
        fill = np.iinfo(np.int32).min  # (the default fill value: absent cells are missing in netCDF)
        assert ds["days"].attrs == {"_FillValue": np.int32(fill), "deker_collection": "days"}
        assert watch.opened() == set()
        assert one.stem == ds["id"].values[1]
    ds.close()


def test_chunks_follow_tiles(storage: Path, dask_cluster_client: Any) -> None:
    ds = xr.open_dataset(_uri(storage), engine="deker", group="grid", chunks={})
    var = ds["grid"]
    assert var.encoding["preferred_chunks"] == {"run": 1, "time": 3, "lat": 2, "level": 1}
    assert var.chunks == ((1, 1, 1), (3, 3), (2, 2), (1, 1))
    # the graph carries the backend array to the worker processes (it pickles)
    np.testing.assert_array_equal(var.data.compute(scheduler=dask_cluster_client), _oracle())
    total = var.sum(dim=("time", "lat", "level")).compute(scheduler=dask_cluster_client)
    np.testing.assert_allclose(total.values, np.nansum(_oracle(), axis=(1, 2, 3)))
    one = xr.open_dataset(
        _uri(storage), engine="deker", group="days", filter={"day": "2024-01-01"}, chunks={}
    )
    assert one["days"].chunks == ((4,), (3,))  # an Array is one file: one chunk
    ds.close()
    one.close()


def test_backend_array_pickles(storage: Path) -> None:
    with xr.open_dataset(_uri(storage), engine="deker", group="grid") as ds:
        var = ds["grid"].variable
        again = pickle.loads(pickle.dumps(var))
        np.testing.assert_array_equal(again.values, _oracle())


_keys = st.tuples(
    st.one_of(
        st.integers(-3, 2),
        st.builds(
            slice,
            st.none() | st.integers(-4, 4),
            st.none() | st.integers(-4, 4),
            st.sampled_from([None, 1, 2, -1, -2]),
        ),
    ),
    *[
        st.one_of(
            st.integers(-n, n - 1),
            st.builds(
                slice,
                st.none() | st.integers(-n - 1, n + 1),
                st.none() | st.integers(-n - 1, n + 1),
                st.sampled_from([None, 1, 2, 3, -1, -2]),
            ),
        )
        for n in SHAPE
    ],
)


@settings(max_examples=40)
@given(key=_keys)
def test_any_basic_key_reads_what_numpy_gives(storage: Path, key: tuple[Any, ...]) -> None:
    sizes = (len(RUNS), *SHAPE)
    # (xarray itself fails on an empty slice with a negative step, whatever the backend)
    assume(
        not any(
            isinstance(k, slice) and (k.step or 1) < 0 and not range(n)[k]
            for k, n in zip(key, sizes, strict=True)
        )
    )
    with xr.open_dataset(_uri(storage), engine="deker", group="grid") as ds:
        np.testing.assert_array_equal(ds["grid"][key].values, _oracle()[key])


def test_opening_keeps_the_level_of_the_deker_loggers(storage: Path) -> None:
    logger = logging.getLogger("deker")
    before = logger.level
    try:
        logger.setLevel(logging.DEBUG)
        xr.open_dataset(_uri(storage), engine="deker", group="grid").close()
        assert logger.level == logging.DEBUG  # a Client(...) alone would have set ERROR
    finally:
        logger.setLevel(before)


def test_closing_the_dataset_closes_its_client(storage: Path) -> None:
    ds = xr.open_dataset(_uri(storage), engine="deker", group="grid")
    ds.close()
    with pytest.raises(DekerClientError, match="closed"):
        ds["grid"].values  # noqa: B018


def test_the_groups_share_a_client_closed_with_the_last_of_them(storage: Path) -> None:
    """Closing one group's Dataset closed the client of every other group (h5netcdf's go on)."""
    groups = xr.open_groups(_uri(storage), engine="deker")
    assert {"/days", "/grid"} <= set(groups)
    groups["/days"].close()
    groups["/days"].close()  # (counted once)
    variable = groups["/grid"]["grid"]
    assert variable[:1].values.shape == (1, *variable.shape[1:])  # still reads (xarray keeps no part)
    for name, ds in groups.items():
        if name != "/":
            ds.close()
    groups["/"].close()  # the last one: the client closes now
    with pytest.raises(DekerClientError, match="closed"):
        variable.values  # noqa: B018


# ------------------------------------------------------------------------------ errors and discovery


def test_errors_say_what_is_wrong(storage: Path, tmp_path: Path) -> None:
    uri = _uri(storage)
    with pytest.raises(DekerValidationError, match=r"group=<collection name>.*days, empty, grid"):
        xr.open_dataset(uri, engine="deker")
    with pytest.raises(DekerCollectionNotExistsError, match="Collection nope does not exist") as info:
        xr.open_dataset(uri, engine="deker", group="nope")
    assert isinstance(info.value, KeyError)
    with pytest.raises(DekerArrayNotFoundError, match="No array of collection grid matches") as found:
        xr.open_dataset(uri, engine="deker", group="grid", filter={"run": 7})
    assert isinstance(found.value, KeyError)
    with pytest.raises(DekerFilterError, match="non-empty dict"):
        xr.open_dataset(uri, engine="deker", group="grid", filter={})
    with pytest.raises(DekerFilterError):
        xr.open_dataset(uri, engine="deker", group="grid", filter={"colour": 1})
    with pytest.raises(DekerValidationError, match="takes no option 'filters'"):
        xr.open_dataset(uri, engine="deker", group="grid", filters={"run": 2})  # a typo is not ignored
    with xr.open_dataset(uri, engine="deker", group="grid", decode_times=False, mask_and_scale=True) as ds:
        assert ds["time"].dtype.kind == "M"  # decoding options change nothing: the data is decoded
    with pytest.raises(DekerValidationError, match="is not a deker storage"):
        xr.open_dataset(f"file://{tmp_path}", engine="deker", group="grid")
    assert not (tmp_path / "collections").exists()  # nothing created


def test_guess_can_open(storage: Path, tmp_path: Path) -> None:
    backend = DekerBackendEntrypoint()
    assert backend.guess_can_open(_uri(storage))
    assert not backend.guess_can_open(f"file://{tmp_path}")
    assert not backend.guess_can_open(str(storage))  # plain paths are opened, not guessed
    # (without engine=, xarray asks netCDF4 first, which claims every URI: pass engine="deker")
    assert not backend.guess_can_open(str(tmp_path / "x.nc"))
    assert not backend.guess_can_open("http://host/storage")
    assert storage_uri(storage) == storage_uri(_uri(storage)) == _uri(storage)
    with xr.open_dataset(storage, engine="deker", group="grid") as ds:  # a path works with the engine
        assert "grid" in ds


@pytest.mark.parametrize("name", ["run#2", "run?x=1", "run%41", "run 2"])
def test_a_storage_whose_name_needs_quoting_opens_itself_not_a_sibling(tmp_path: Path, name: str) -> None:
    """``#``, ``?`` and ``%41`` were handed to the Client unencoded: it read ``run`` (or ``runA``)."""
    siblings = {"run": 1.0, "runA": 3.0, name: 2.0}
    for folder, value in siblings.items():
        with Client((tmp_path / folder).as_uri()) as client:
            schema = ArraySchema(dtype=np.float64, dimensions=[DimensionSchema("x", 2)])
            client.create_collection("v", schema).create()[:].update(np.full(2, value))
    for where in ((tmp_path / name).as_uri(), tmp_path / name, str(tmp_path / name)):
        with xr.open_dataset(where, engine="deker", group="v") as ds:
            np.testing.assert_array_equal(ds["v"].values.ravel(), [2.0, 2.0])


def test_the_entry_point_is_found_in_a_fresh_interpreter() -> None:
    script = (
        "import sys, xarray as xr\n"
        "engines = xr.backends.list_engines()\n"
        "print(type(engines['deker']).__name__)\n"
        "print('deker_dask' in sys.modules, 'dask.array' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["DekerBackendEntrypoint", "False", "False"]  # the backend needs no Dask
