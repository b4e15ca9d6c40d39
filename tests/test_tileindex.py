"""TileIndex (deker.tileindex): a VArray's tile records as a plain value, on real files."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from deker import Client, DimensionSchema, VArraySchema
from deker.tileindex import TileIndex


@pytest.fixture()
def client(tmp_path: Path) -> Iterator[Client]:
    with Client((tmp_path / "s").as_uri()) as c:
        yield c


def _varray(client: Client):  # type: ignore[no-untyped-def]
    schema = VArraySchema(
        dtype=np.int16,
        dimensions=[DimensionSchema(name="y", size=4), DimensionSchema(name="x", size=6)],
        vgrid=(2, 3),
        fill_value=-1,
    )
    return client.create_collection("c", schema).create()


def test_create_find_and_forget_tiles(client: Client) -> None:
    varray = _varray(client)
    index = varray.tiles
    assert index.exists() and index.ids() == {}
    tid, filled = index.create((1, 2), {})
    assert not filled
    assert index.ids() == {(1, 2): tid} == index.ids([(1, 2), (0, 0)])
    again, filled = index.create((1, 2), {}, np.zeros((2, 2), dtype=np.int16))
    assert again == tid and not filled  # an existing tile is found, never written
    spec = index.for_tile(tid, (1, 2))
    assert spec.main_file.exists() and spec.symlink == (varray.id, "1-2") and spec.shape == (2, 2)
    assert index.lock_key(tid) == (spec.main_dir, tid)
    spec.main_file.unlink()
    index.forget(tid, (1, 2))
    assert index.ids() == {}


def test_a_tile_created_with_its_data_holds_it(client: Client) -> None:
    varray = _varray(client)
    data = np.arange(4, dtype=np.int16).reshape(2, 2)
    _tid, filled = varray.tiles.create((0, 1), {}, data)
    assert filled
    np.testing.assert_array_equal(varray[0:2, 2:4].read(), data)


def test_the_handle_keeps_one_index_until_the_storage_gets_an_identity(client: Client) -> None:
    varray = _varray(client)
    assert varray.tiles is varray.tiles
    assert varray.tiles.storage_id == varray.storage_context.storage_id
    assert varray.tiles.tile_bytes == 2 * 2 * 2


def test_it_pickles_and_a_worker_copy_maps_the_root(
    client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    varray = _varray(client)
    index = pickle.loads(pickle.dumps(varray.tiles))
    assert isinstance(index, TileIndex) and index == varray.tiles
    monkeypatch.setenv("DEKER_ROOT_MAP", f"{tmp_path / 's'}={tmp_path / 'elsewhere'}")
    assert str(index.paths.root).startswith(str(tmp_path / "s"))  # the coordinator's view
    worker = index.on_worker()
    assert str(worker.paths.root).startswith(str(tmp_path / "elsewhere"))
    assert not worker.exists()  # nothing is there on that "node"
