"""Tests of deker.storage.layout: paths of SPEC §2."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from deker.errors import DekerValidationError
from deker.storage import layout
from deker.storage.layout import CollectionPaths

AID = "f61df9c1-c07a-48c3-bd57-8a470c80939a"


def test_constants() -> None:
    assert (layout.COLLECTIONS_DIR, layout.ARRAY_DATA, layout.ARRAY_SYMLINKS) == (
        "collections",
        "array_data",
        "array_symlinks",
    )
    assert (layout.VARRAY_DATA, layout.VARRAY_SYMLINKS) == ("varray_data", "varray_symlinks")
    assert (layout.ARRAY_EXT, layout.VARRAY_EXT) == (".hdf5", ".json")


def test_id_dir_parts() -> None:
    assert layout.id_dir_parts(AID) == ("f", "6", "1", "d", "f", "9", "c", "1", "c07a-48c3-bd57-8a470c80939a")
    for bad in ["", "nodash", "-abc", "abc-", "ab/c-d", "abc-../x", "abc-..", "a:b-c", "ab.c-d"]:
        with pytest.raises(DekerValidationError):
            layout.id_dir_parts(bad)


def test_collection_paths(tmp_path: Path) -> None:
    paths = CollectionPaths(tmp_path / "collections", "weather")
    root = tmp_path / "collections"
    assert paths.path == root / "weather"
    assert paths.meta_file == root / "weather" / "weather.json"
    assert paths.lock_file == root / "weather.lock"
    assert paths.data_dir("array") == root / "weather" / "array_data"
    assert paths.data_dir("varray") == root / "weather" / "varray_data"
    assert paths.symlinks_dir("array") == root / "weather" / "array_symlinks"
    assert paths.symlinks_dir("varray") == root / "weather" / "varray_symlinks"
    main = root / "weather/array_data/f/6/1/d/f/9/c/1/c07a-48c3-bd57-8a470c80939a"
    assert paths.main_dir("array", AID) == main
    assert paths.main_file("array", AID) == main / f"{AID}.hdf5"
    assert paths.main_file("varray", AID) == (
        root / "weather/varray_data/f/6/1/d/f/9/c/1/c07a-48c3-bd57-8a470c80939a" / f"{AID}.json"
    )
    assert paths.symlink_dir("array", []) == root / "weather" / "array_symlinks"
    assert paths.symlink_dir("array", ["2023-01-01T00:00:00+00:00", "1"]) == (
        root / "weather/array_symlinks/2023-01-01T00:00:00+00:00/1"
    )
    assert paths.symlink_file("varray", ["a", "0-1"], AID) == (
        root / "weather/varray_symlinks/a/0-1" / f"{AID}.json"
    )
    # deker 1.1.7 joins raw values: '/' nests, '' collapses; an absolute value never escapes
    assert paths.symlink_dir("array", ["a/b", "", "c"]) == root / "weather/array_symlinks/a/b/c"
    assert paths.symlink_dir("array", ["/etc"]) == root / "weather/array_symlinks/etc"
    with pytest.raises(DekerValidationError):
        paths.data_dir("tiles")


def test_ids_in_dir_and_make_symlink(tmp_path: Path) -> None:
    links = tmp_path / "links" / "a" / "1"
    assert layout.ids_in_dir(links, ".hdf5") == []
    target = tmp_path / "data" / f"{AID}.hdf5"
    layout.make_symlink(target, links / f"{AID}.hdf5")
    link = links / f"{AID}.hdf5"
    assert link.is_symlink() and os.readlink(link) == str(target.absolute())  # dangling is fine
    with pytest.raises(FileExistsError):
        layout.make_symlink(target, link)
    other = "00000000-0000-4000-8000-000000000000"
    layout.make_symlink(target, links / f"{other}.hdf5")
    (links / f"{AID}:x:1:2.arrayreadlock").touch()
    (links / ".tmpfile.hdf5").touch()
    (links / "sub.hdf5").mkdir()
    assert layout.ids_in_dir(links, ".hdf5") == [other, AID]
    assert layout.ids_in_dir(links, ".json") == []


def test_iter_ids(tmp_path: Path) -> None:
    paths = CollectionPaths(tmp_path, "c")
    ids = [AID, "00000000-0000-4000-8000-000000000000", "00000000-1111-4000-8000-000000000000"]
    for i in ids:
        main = paths.main_file("array", i)
        main.parent.mkdir(parents=True)
        main.touch()
        (main.parent / f"{i}.lock").touch()
        (main.parent / f"{i}.hdf5:{os.getpid()}.varraylock").touch()
        (main.parent / f".{i}.hdf5.abc.tmp").touch()
    assert list(layout.iter_ids(paths.data_dir("array"), ".hdf5")) == sorted(ids)
    assert list(layout.iter_ids(paths.data_dir("varray"), ".json")) == []


def test_remove_file_and_empty_parents(tmp_path: Path) -> None:
    paths = CollectionPaths(tmp_path, "c")
    a = paths.main_file("array", AID)
    b = paths.main_file("array", "f61d0000-0000-4000-8000-000000000000")
    for f in (a, b):
        f.parent.mkdir(parents=True)
        f.touch()
    stop = paths.data_dir("array")
    layout.remove_file_and_empty_parents(a, stop)
    assert not a.exists() and not a.parent.exists()
    assert (stop / "f" / "6" / "1" / "d").exists()  # still holds b
    layout.remove_file_and_empty_parents(b, stop)
    assert stop.exists() and os.listdir(stop) == []
    layout.remove_file_and_empty_parents(b, stop)  # missing: no error
    outside = tmp_path / "elsewhere" / "x"
    outside.mkdir(parents=True)
    (outside / "f").touch()
    layout.remove_file_and_empty_parents(outside / "f", stop)  # not under stop: dirs kept
    assert outside.exists()


def test_legacy_storage_layout(legacy_storage: Path, fixtures_dir: Path) -> None:
    manifest = json.loads((fixtures_dir / "manifest.json").read_text())
    root = legacy_storage / "collections"
    paths = CollectionPaths(root, "uint8_cube")
    assert paths.meta_file.exists() and paths.lock_file.exists()
    expected = {a["id"] for a in manifest["collections"]["uint8_cube"]["arrays"]}
    assert set(layout.iter_ids(paths.data_dir("array"), ".hdf5")) == expected
    for array_id in expected:
        assert paths.main_file("array", array_id).is_file()
    # symlinks dangle after unpacking (absolute targets of the original root), ids still found
    found = []
    for dirpath, _dirs, _files in os.walk(paths.symlinks_dir("array")):
        found += layout.ids_in_dir(Path(dirpath), ".hdf5")
    assert set(found) == expected
    tiles = CollectionPaths(root, "tiles")
    varrays = {v["id"] for v in manifest["collections"]["tiles"]["varrays"]}
    assert set(layout.iter_ids(tiles.data_dir("varray"), ".json")) == varrays
