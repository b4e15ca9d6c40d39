"""Tests of deker_dask.handles: deker objects turned into the plain targets deker_dask works on."""

from __future__ import annotations

import os
import pickle
import re
from typing import Any

import numpy as np
import pytest
from dask_helpers import varray

from deker import ArraySchema, AttributeSchema, Client, DimensionSchema, HDF5Options
from deker.errors import DekerClientError, DekerInstanceNotExistsError, DekerValidationError
from deker_dask.handles import collection_items, resolve


def make_array(storage: Client, options: HDF5Options | None = None) -> Any:
    schema = ArraySchema(
        dtype=np.int32,
        dimensions=[DimensionSchema("y", 6), DimensionSchema("x", 8)],
        attributes=[
            AttributeSchema(name="run", dtype=int, primary=True),
            AttributeSchema(name="note", dtype=str, primary=False),
        ],
        fill_value=-1,
    )
    return storage.create_collection("a", schema, options).create({"run": 3}, {"note": "n"})


def test_resolve_gives_the_object_and_its_region(storage: Client) -> None:
    arr = make_array(storage)
    whole = resolve(arr)
    assert whole.obj is arr and whole.bounds == (slice(0, 6), slice(0, 8))
    sub = resolve(arr[1:4, 5])
    assert sub.obj.id == arr.id and sub.bounds == (slice(1, 4), 5)
    assert sub.shape == (3,) and whole.shape == (6, 8)  # integer-indexed dimensions drop
    assert not whole.is_varray and whole.tile_shape == (6, 8)
    assert whole.dtype == np.int32 and whole.fill_value == -1
    assert whole.values == {"run": 3, "note": "n"}
    assert whole.meta.name == "a" and whole.locks.timeout == 60
    assert whole.identity() == (whole.root, "a", "Array", arr.id)
    v = varray(storage, (8, 10), (2, 2))
    tiles = resolve(v[2:7, 1:9])
    assert tiles.is_varray and tiles.tile_shape == (4, 5) and tiles.bounds == (slice(2, 7), slice(1, 9))
    assert tiles.tiles().vid == v.id


@pytest.mark.parametrize("wrong", [np.zeros(3), "a", None])
def test_resolve_names_what_it_was_given_instead(wrong: Any) -> None:
    kind = f"{type(wrong).__module__}.{type(wrong).__qualname__}"
    with pytest.raises(DekerValidationError, match=f"not {re.escape(kind)}$"):
        resolve(wrong)


def test_hdf5_chunks_are_the_declared_ones_clipped_to_a_file(storage: Client) -> None:
    assert resolve(make_array(storage)).hdf5_chunks is None
    chunked = storage.create_collection(
        "c",
        ArraySchema(dtype=np.int32, dimensions=[DimensionSchema("y", 6), DimensionSchema("x", 8)]),
        HDF5Options(chunks=(4, 100)),
    ).create()
    assert resolve(chunked).hdf5_chunks == (4, 8)
    auto = storage.create_collection(
        "auto",
        ArraySchema(dtype=np.int32, dimensions=[DimensionSchema("y", 6)]),
        HDF5Options(chunks=True),
    ).create()
    assert resolve(auto).hdf5_chunks is None  # h5py picks them: not known up front


def test_files_of_a_varray_are_its_existing_tiles_and_their_version_follows_writes(storage: Client) -> None:
    v = varray(storage, (8, 10), (2, 2))
    target = resolve(v)
    assert target.files() == ({}, ())
    v[0:4, 5:10].update(np.ones((4, 5), np.float32))
    files, _ = target.files()
    assert list(files) == [(0, 1)]
    shipped = pickle.loads(pickle.dumps(files[(0, 1)]))  # ships to any worker
    assert (shipped.array_id, shipped.main_file) == (files[(0, 1)].array_id, files[(0, 1)].main_file)
    old = 946684800 * 10**9  # 2000-01-01: a write must move the time on, even at 1 s resolution
    os.utime(files[(0, 1)].main_file, ns=(old, old))
    version = target.files()[1]
    v[0, 5].update(2.0)
    assert target.files()[1] != version  # a write changes the file's version
    v[4:8, 0:5].update(np.ones((4, 5), np.float32))
    assert list(target.files()[0]) == [(0, 1), (1, 0)]


def test_files_and_check_of_a_deleted_array_say_so(storage: Client) -> None:
    arr = make_array(storage)
    target = resolve(arr)
    files, _ = target.files()
    assert list(files) == [(0, 0)] and files[(0, 0)] == target.array_spec()
    target.check()
    arr.delete()
    with pytest.raises(DekerInstanceNotExistsError, match="was deleted"):
        target.files()
    with pytest.raises(DekerInstanceNotExistsError, match="was deleted"):
        target.check()


def test_check_and_the_session_of_a_closed_client_refuse(storage: Client) -> None:
    target = resolve(varray(storage, (4,), (2,)))
    session = target.session()
    storage.close()
    with pytest.raises(DekerClientError, match="closed"):
        target.check()
    assert session.closed


def test_collection_items_are_ordered_by_primary_attribute(storage: Client) -> None:
    make_array(storage)
    coll = storage.get_collection("a")
    assert coll is not None
    for run in (1, 7, 2):
        coll.create({"run": run}, {"note": ""})
    assert [a.primary_attributes["run"] for a in collection_items(coll)] == [1, 2, 3, 7]
    with pytest.raises(DekerValidationError, match="Expected a deker Collection, not VArray"):
        collection_items(varray(storage, (4,), (2,)))  # type: ignore[arg-type]
