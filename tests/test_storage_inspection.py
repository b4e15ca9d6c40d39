"""deker/storage/inspection.py: read-only looks at a storage tree.

tests/test_integrity.py exercises these through ``check_integrity``; here they are called
directly.  Covered: ``is_leftover_name``; ``tree_size`` (regular files only: symlinks, FIFOs and
linked directories are not counted, missing paths are 0) against an independent ``os.walk``
sum on a real storage; ``scan_data_tree`` (ids of a real collection in path order, misplaced
files: a copy at the wrong place, a stray file, a symlink, a bad id; lock, temporary and
scratch-directory files skipped); ``scan_symlink_tree`` (real primary-key links with their
targets, a regular file where a link belongs); ``stale_leftovers`` (``min_age``, flock-held
files skipped, kinds and targets, sorting); ``inspect_array_file`` on real and damaged files.
Nothing may change a file: every test that scans checks the tree is byte-for-byte unchanged.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from deker import ArraySchema, AttributeSchema, Client, DimensionSchema
from deker.storage import hdf5
from deker.storage.inspection import (
    LEFTOVER_MIN_AGE,
    ArrayFileCheck,
    DataTreeScan,
    SymlinkEntry,
    inspect_array_file,
    is_leftover_name,
    scan_data_tree,
    scan_symlink_tree,
    stale_leftovers,
    tree_size,
)
from deker.storage.layout import CollectionPaths, Leftover, journal_file_name, temp_file_name

OLD = time.time() - 3600
HEX32 = "0123456789abcdef" * 2


def _snapshot(root: Path) -> dict[str, bytes | str]:
    """Every entry under ``root``: file bytes, link targets, directories."""
    out: dict[str, bytes | str] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(dirpath, name)
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_dir():
                out[rel] = "dir"
            elif path.is_file():
                out[rel] = path.read_bytes()
    return out


def _walk_size(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if os.path.isfile(os.path.join(dirpath, name)) and not os.path.islink(
                os.path.join(dirpath, name)
            ):
                total += st.st_size
    return total


@pytest.fixture
def storage(tmp_path: Path) -> tuple[Path, CollectionPaths, list[str]]:
    """A real storage: collection "c" with three Arrays keyed by ``k``, two holding data."""
    with Client(tmp_path.as_uri()) as client:
        schema = ArraySchema(
            dtype=np.int32,
            dimensions=[DimensionSchema("y", 4), DimensionSchema("x", 5)],
            attributes=[AttributeSchema("k", int, primary=True)],
        )
        coll = client.create_collection("c", schema)
        ids = []
        for k in range(3):
            array = coll.create({"k": k})
            if k:
                array[:].update(np.full((4, 5), k, dtype=np.int32))
            ids.append(array.id)
    return tmp_path, CollectionPaths(tmp_path / "collections", "c"), ids


# ------------------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (temp_file_name("a.hdf5"), True),
        (journal_file_name("a.hdf5"), True),
        (".c.json." + HEX32 + ".tmp", True),
        (".x.hdf5:tok-t.varraylock.0123456789ab.tmp", True),  # a lock marker being created
        (".anything.tmp", True),
        ("a.hdf5.journal", False),  # not hidden
        ("a.tmp", False),
        (".a.hdf5", False),
        (".a.lock", False),
        ("a.hdf5", False),
        ("", False),
    ],
)
def test_is_leftover_name(name: str, expected: bool) -> None:
    assert is_leftover_name(name) is expected


# ------------------------------------------------------------------------------------- sizes


def test_tree_size_counts_regular_files_only(tmp_path: Path) -> None:
    root = tmp_path / "t"
    (root / "a" / "b").mkdir(parents=True)
    (root / "one").write_bytes(b"x" * 10)
    (root / "a" / "two").write_bytes(b"y" * 300)
    (root / "a" / "b" / "three").write_bytes(b"z" * 7)
    (root / "a" / "empty").write_bytes(b"")
    (root / ("." + HEX32 + ".trash")).mkdir()  # scratch directories hold files on disk too
    (root / ("." + HEX32 + ".trash") / "old").write_bytes(b"w" * 5)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big").write_bytes(b"o" * 1000)
    (root / "link-to-file").symlink_to(root / "a" / "two")
    (root / "link-to-dir").symlink_to(outside, target_is_directory=True)
    (root / "dangling").symlink_to(tmp_path / "nothing")
    os.mkfifo(root / "fifo")
    assert tree_size(root) == 10 + 300 + 7 + 5
    assert tree_size(root / "a") == 307
    assert tree_size(tmp_path / "missing") == 0
    assert tree_size(root / "one") == 0  # not a directory
    assert tree_size(root / "link-to-dir") == 1000  # the root itself may be a link: it is listed


def test_tree_size_of_a_real_storage(storage: tuple[Path, CollectionPaths, list[str]]) -> None:
    root, paths, _ids = storage
    assert tree_size(root) == _walk_size(root) > 0
    assert tree_size(paths.path) == _walk_size(paths.path)
    data_files = sum(f.stat().st_size for f in paths.data_dir("array").rglob("*.hdf5"))
    assert tree_size(paths.symlinks_dir("array")) == 0  # only links there
    assert tree_size(paths.data_dir("array")) >= data_files


# ------------------------------------------------------------------------------------- scans


def test_scan_data_tree_of_a_real_collection(storage: tuple[Path, CollectionPaths, list[str]]) -> None:
    root, paths, ids = storage
    before = _snapshot(root)
    scan = scan_data_tree(paths.data_dir("array"), ".hdf5")
    assert isinstance(scan, DataTreeScan)
    assert scan.ids == sorted(ids)  # walk order: sorted by path, which is sorted by UUID
    assert scan.misplaced == []
    assert scan_data_tree(paths.data_dir("varray"), ".json") == DataTreeScan([], [])
    assert scan_data_tree(paths.data_dir("array"), ".json").misplaced == sorted(
        paths.main_file("array", i) for i in ids
    )
    assert _snapshot(root) == before


def test_scan_data_tree_finds_misplaced_files(storage: tuple[Path, CollectionPaths, list[str]]) -> None:
    root, paths, ids = storage
    data = paths.data_dir("array")
    main = paths.main_file("array", ids[0])
    wrong_place = paths.main_dir("array", ids[1]) / main.name  # a data file in another id's folder
    shutil.copyfile(main, wrong_place)
    stray = main.parent / "notes.txt"
    stray.write_text("stray")
    link = data / "f" / "link.hdf5"
    link.parent.mkdir(exist_ok=True)
    link.symlink_to(main)
    bad_id = data / "noid.hdf5"
    bad_id.write_bytes(b"")
    only_ext = data / ".hdf5"
    only_ext.write_bytes(b"")
    # skipped: locks, markers, temporary files, journals, scratch directories
    (main.parent / f"{ids[0]}.lock").touch()
    (main.parent / f"{ids[0]}.hdf5:{os.getpid()}.arrayreadlock").touch()
    (main.parent / temp_file_name(main.name)).touch()
    (main.parent / journal_file_name(main.name)).touch()
    scratch = data / f".{HEX32}.trash" / "0" / "x"
    scratch.mkdir(parents=True)
    (scratch / "lost.hdf5").touch()
    before = _snapshot(root)
    scan = scan_data_tree(data, ".hdf5")
    assert scan.ids == sorted(ids)
    assert sorted(scan.misplaced) == sorted([wrong_place, stray, link, bad_id, only_ext])
    assert _snapshot(root) == before


def test_scan_symlink_tree(storage: tuple[Path, CollectionPaths, list[str]]) -> None:
    root, paths, ids = storage
    links = paths.symlinks_dir("array")
    intruder = links / "1" / "intruder.hdf5"
    intruder.write_bytes(b"not a link")
    (links / "0" / "x.arrlock").touch()  # skipped: a lock
    (links / "0" / temp_file_name("y")).touch()  # skipped: a temporary file
    before = _snapshot(root)
    entries = scan_symlink_tree(links)
    expected = [
        SymlinkEntry(
            paths.symlink_file("array", (str(k),), ids[k]), True, str(paths.main_file("array", ids[k]))
        )
        for k in range(3)
    ]
    expected.append(SymlinkEntry(intruder, False, None))
    assert entries == sorted(expected, key=lambda e: e.path)
    for entry in (e for e in entries if e.is_symlink):
        assert entry.target is not None and os.readlink(entry.path) == entry.target
    assert scan_symlink_tree(paths.symlinks_dir("varray")) == []
    assert scan_symlink_tree(root / "missing") == []
    assert _snapshot(root) == before


# --------------------------------------------------------------------------------- leftovers


def test_stale_leftovers_age_locks_kinds_and_order(tmp_path: Path) -> None:
    d = tmp_path / "c" / "array_data" / "a"
    d.mkdir(parents=True)
    temp = d / temp_file_name("x.hdf5")
    journal = d / journal_file_name("x.hdf5")
    marker_temp = d / ".x.hdf5:tok-t.varraylock.0123456789ab.tmp"
    fresh = d / temp_file_name("y.hdf5")
    held = d / journal_file_name("z.hdf5")
    in_scratch = tmp_path / "c" / f".{HEX32}.new" / journal_file_name("q.hdf5")
    in_scratch.parent.mkdir()
    for path in (temp, journal, marker_temp, fresh, held, in_scratch, d / "x.hdf5", d / ".hidden"):
        path.write_bytes(b"data")
    for path in (temp, journal, marker_temp, held, in_scratch):
        os.utime(path, (OLD, OLD))
    fd = os.open(held, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)  # a live writer (any flock, even shared)
    try:
        found = stale_leftovers(tmp_path / "c")
        expected = [
            Leftover(journal, "journal", d / "x.hdf5"),
            Leftover(marker_temp, "temp", None),
            Leftover(temp, "temp", d / "x.hdf5"),
        ]
        assert found == sorted(expected, key=lambda x: x.path)
        with_young = stale_leftovers(tmp_path / "c", min_age=0)
        assert [x.path for x in with_young] == sorted([journal, marker_temp, temp, fresh])
        assert stale_leftovers(tmp_path / "c", min_age=7200) == []
    finally:
        os.close(fd)
    assert Leftover(held, "journal", held.parent / "z.hdf5") in stale_leftovers(
        tmp_path / "c"
    )  # released now
    assert stale_leftovers(tmp_path / "missing") == []
    assert LEFTOVER_MIN_AGE == 10.0


def test_stale_leftovers_default_age_is_ten_seconds(tmp_path: Path) -> None:
    path = tmp_path / temp_file_name("a.hdf5")
    path.write_bytes(b"")
    os.utime(path, (time.time() - 5, time.time() - 5))
    assert stale_leftovers(tmp_path) == []
    os.utime(path, (time.time() - 11, time.time() - 11))
    assert stale_leftovers(tmp_path) == [Leftover(path, "temp", tmp_path / "a.hdf5")]


# ------------------------------------------------------------------------------ array files


def test_inspect_a_sound_array_file(storage: tuple[Path, CollectionPaths, list[str]]) -> None:
    root, paths, ids = storage
    before = _snapshot(root)
    for array_id in ids:
        path = paths.main_file("array", array_id)
        quick = inspect_array_file(path, (4, 5), np.int32, verify_data=False)
        assert quick == ArrayFileCheck(meta=hdf5.read_meta(path))
        assert array_id.encode() in quick.meta  # type: ignore[operator]
        full = inspect_array_file(path, (4, 5), "int32", verify_data=True)
        assert full == ArrayFileCheck(meta=quick.meta, data_errors=())
    assert _snapshot(root) == before


def _make(path: Path, **datasets: object) -> Path:
    with h5py.File(path, "w") as handle:
        for name, value in datasets.items():
            handle.create_dataset(name, data=value)
    return path


def test_inspect_damaged_files(tmp_path: Path) -> None:
    meta = np.array(b'{"id": "x"}', dtype="S11")
    shape = (4, 5)
    good = np.zeros(shape, dtype=np.int32)
    missing = inspect_array_file(tmp_path / "gone.hdf5", shape, np.int32, True)
    assert missing == ArrayFileCheck(vanished=True)
    garbage = tmp_path / "garbage.hdf5"
    garbage.write_bytes(b"not an HDF5 file at all")
    check = inspect_array_file(garbage, shape, np.int32, True)
    assert check.meta is None and check.meta_error is not None
    assert check.meta_error.startswith("cannot be opened as HDF5: ")
    no_meta = _make(tmp_path / "nometa.hdf5", empty_cells=np.int64(0))
    assert inspect_array_file(no_meta, shape, np.int32, True) == ArrayFileCheck(
        meta_error="has no meta dataset"
    )
    cases = {
        "no-counter": ({"meta": meta, "data": good}, ["has no empty_cells dataset"]),
        "range": (
            {"meta": meta, "empty_cells": np.int64(21), "data": good},
            ["empty_cells is 21, outside 0..20"],
        ),
        "negative": ({"meta": meta, "empty_cells": np.int64(-1)}, ["empty_cells is -1, outside 0..20"]),
        "float-counter": (
            {"meta": meta, "empty_cells": np.float64(3)},
            ["empty_cells is not an integer scalar (float64, shape ())"],
        ),
        "shape": (
            {"meta": meta, "empty_cells": np.int64(0), "data": np.zeros((5, 4), np.int32)},
            ["data has shape (5, 4), expected (4, 5)"],
        ),
        "dtype": (
            {"meta": meta, "empty_cells": np.int64(0), "data": np.zeros(shape, np.int64)},
            ["data has incorrect dtype int64, expected int32"],
        ),
        "fine-without-data": ({"meta": meta, "empty_cells": np.int64(20)}, []),
        "data-lost": (  # (it passed, and read back as all fill)
            {"meta": meta, "empty_cells": np.int64(0)},
            ["has no data dataset, but empty_cells says 20 cells hold data"],
        ),
    }
    for name, (datasets, errors) in cases.items():
        path = _make(tmp_path / f"{name}.hdf5", **datasets)
        check = inspect_array_file(path, shape, np.int32, verify_data=True)
        assert check.meta == b'{"id": "x"}', name
        assert list(check.data_errors) == errors, name
        assert inspect_array_file(path, shape, np.int32, verify_data=False).data_errors == ()


def test_inspect_finds_a_damaged_compressed_chunk(tmp_path: Path) -> None:
    path = tmp_path / "z.hdf5"
    shape = (64, 64)
    hdf5.create_array_file(path, b'{"id": "z"}', "S11", 64 * 64)
    values = np.random.default_rng(1).integers(0, 1000, shape).astype(np.float64)
    kwargs = {"chunks": (16, 64), "compression": "gzip"}
    hdf5.write_region(path, (slice(0, 64), slice(0, 64)), values, shape, 0.0, kwargs)
    assert inspect_array_file(path, shape, np.float64, True).data_errors == ()
    with h5py.File(path, "r") as handle:
        info = handle["data"].id.get_chunk_info(2)  # rows 32..47
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        fh.write(os.urandom(64))
    check = inspect_array_file(path, shape, np.float64, verify_data=True)
    assert check.meta == b'{"id": "z"}'
    assert len(check.data_errors) == 1
    assert check.data_errors[0].startswith(
        "data is corrupted: chunk (2, 0) (cells [32:48, 0:64]) does not decode: "
    )
    assert inspect_array_file(path, shape, np.float64, verify_data=False).data_errors == ()
