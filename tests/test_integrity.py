"""Integrity check, storage size, lock clearing and logging on real storages (no mocks).

One storage is built per module and copied for each test; each test damages its copy the way
a crash, a careless operator or a disk fault would, and checks that every level finds exactly
what it should (and the lower levels nothing).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from deker import (
    ArraySchema,
    AttributeSchema,
    Client,
    DimensionSchema,
    HDF5CompressionOpts,
    HDF5Options,
    VArraySchema,
)
from deker.errors import DekerCollectionNotExistsError, DekerIntegrityError, DekerValidationError
from deker.integrity import IntegrityReport
from deker.log import set_logging_level
from deker.records import create_record
from deker.storage import locks
from deker.storage.identity import STORAGE_ID_FILE
from deker.storage.inspection import _verify_blocks, tree_size
from deker.storage.layout import CollectionPaths
from deker.storage.locks import LockSettings

HELPER = Path(__file__).resolve().parent / "storage_helpers" / "lock_holder.py"
ROOT = Path(__file__).resolve().parents[1]
OLD = time.time() - 3600  # an mtime long past: leftovers older than the grace period


@dataclass
class Storage:
    """A copy of the module's storage, with the ids of its objects."""

    root: Path
    arr: list[str]  # ids of the arrays of "arr", by primary key k = 0, 1, 2
    var: dict[str, str]  # VArray ids of "var" by name
    tiles: dict[str, list[str]]  # tile ids by VArray name
    plain: str

    @property
    def uri(self) -> str:
        return self.root.as_uri()

    def paths(self, collection: str) -> CollectionPaths:
        return CollectionPaths(self.root / "collections", collection)

    def main(self, collection: str, array_id: str, kind: str = "array") -> Path:
        return self.paths(collection).main_file(kind, array_id)

    def arr_link(self, k: int) -> Path:
        return self.paths("arr").symlink_file("array", (str(k),), self.arr[k])


def build(root: Path) -> Storage:
    with Client(root.as_uri()) as client:
        arr = client.create_collection(
            "arr",
            ArraySchema(
                dtype=np.float64,
                dimensions=[DimensionSchema("y", 4), DimensionSchema("x", 8)],
                attributes=[AttributeSchema("k", int, True), AttributeSchema("note", str, False)],
            ),
            HDF5Options(chunks=(2, 4), compression_opts=HDF5CompressionOpts("gzip", 4)),
        )
        arr_ids = []
        for k in range(3):
            a = arr.create({"k": k}, {"note": f"n{k}"})
            a[:].update(np.arange(32, dtype=np.float64).reshape(4, 8) * (k + 1))
            arr_ids.append(a.id)
        var = client.create_collection(
            "var",
            VArraySchema(
                dtype=np.int16,
                dimensions=[DimensionSchema("y", 4), DimensionSchema("x", 6)],
                vgrid=(2, 3),
                attributes=[AttributeSchema("name", str, True)],
            ),
        )
        vids, tiles = {}, {}
        for name in ("a", "b"):
            v = var.create({"name": name})
            v[:, :4].update(np.full((4, 4), 7, np.int16))  # tiles (0, 0), (0, 1), (1, 0), (1, 1)
            vids[name] = v.id
            tiles[name] = sorted(t.id for t in var.arrays if t.primary_attributes["vid"] == v.id)
        plain = client.create_collection(
            "plain", ArraySchema(dtype=np.int32, dimensions=[DimensionSchema("n", 5)])
        ).create()
        plain[1:3].update(np.array([1, 2], np.int32))
    return Storage(root, arr_ids, vids, tiles, plain.id)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Storage:
    return build(tmp_path_factory.mktemp("pristine") / "storage")


@pytest.fixture()
def storage(pristine: Storage, tmp_path: Path) -> Storage:
    # symlinks of the copy still name the pristine files: a copied storage must check clean
    dest = tmp_path / "storage"
    shutil.copytree(pristine.root, dest, symlinks=True)
    return Storage(dest, pristine.arr, pristine.var, pristine.tiles, pristine.plain)


@pytest.fixture()
def client(storage: Storage) -> Iterator[Client]:
    with Client(storage.uri, write_lock_timeout=5) as c:
        yield c


def kinds(report: IntegrityReport) -> Counter[str]:
    return Counter(p.kind for p in report.problems)


def run_child_and_kill(mode: str, **args: Any) -> None:
    """Take a lock in another process, then kill it with SIGKILL: its lock file stays behind."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(ROOT)) if p)
    proc = subprocess.Popen(
        [sys.executable, str(HELPER), mode, json.dumps(args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ACQUIRED"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        if proc.stdin is not None:
            proc.stdin.close()
        if proc.stdout is not None:
            proc.stdout.close()


# --------------------------------------------------------------------------- damages


def rewrite_meta(path: Path, payload: bytes) -> None:
    with h5py.File(path, "r+", locking=False) as f:
        del f["meta"]
        f.create_dataset("meta", data=np.array(payload, dtype=f"S{len(payload) + 1}"))


def missing_symlink(s: Storage) -> None:
    os.unlink(s.arr_link(1))


def extra_symlink(s: Storage) -> None:
    link = s.paths("arr").symlink_file("array", ("7",), str(uuid.uuid4()))
    link.parent.mkdir(parents=True)
    os.symlink(s.main("arr", s.arr[0]), link)


def wrong_symlink(s: Storage) -> None:
    link = s.arr_link(1)
    os.unlink(link)
    os.symlink(s.main("arr", s.arr[2]), link)


def orphan_data_file(s: Storage) -> None:
    shutil.copy(s.main("arr", s.arr[0]), s.paths("arr").data_dir("array") / s.arr[0][0] / "stray.hdf5")


def orphan_tiles(s: Storage) -> None:
    vid = s.var["b"]
    os.unlink(s.main("var", vid, "varray"))
    os.unlink(s.paths("var").symlink_file("varray", ("b",), vid))


def duplicate_primary_key(s: Storage) -> None:
    payload = json.dumps({"id": s.arr[2], "primary_attributes": {"k": 1}, "custom_attributes": {"note": "x"}})
    rewrite_meta(s.main("arr", s.arr[2]), payload.encode())


def stale_read_lock(s: Storage) -> None:
    main = s.main("arr", s.arr[0])
    run_child_and_kill("read", main_dir=str(main.parent), array_id=s.arr[0])


def stale_varray_lock(s: Storage) -> None:
    tile = s.main("var", s.tiles["a"][0])
    run_child_and_kill("varray", tiles=[[str(tile.parent), s.tiles["a"][0]]], token=f"{uuid.uuid4().hex}-t")


def corrupted_chunk(s: Storage) -> None:
    path = s.main("arr", s.arr[1])
    with h5py.File(path, "r", locking=False) as f:
        info = f["data"].id.get_chunk_info(1)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset)
        fh.write(b"\xff" * info.size)


def damaged_file_header(s: Storage) -> None:
    with open(s.main("arr", s.arr[1]), "r+b") as fh:
        fh.write(b"\0" * 64)


def damaged_array_meta(s: Storage) -> None:
    rewrite_meta(s.main("arr", s.arr[0]), b'{"id": "broken')


def damaged_varray_json(s: Storage) -> None:
    s.main("var", s.var["a"], "varray").write_text('{"id": ')


def damaged_collection_json(s: Storage) -> None:
    s.paths("arr").meta_file.write_text('{"name": "arr", "type": ')


def missing_collection_lock(s: Storage) -> None:
    os.unlink(s.paths("plain").lock_file)


def orphan_collection_lock(s: Storage) -> None:
    (s.root / "collections" / "gone.lock").touch()


def leftover_temp_file(s: Storage) -> None:
    main = s.main("arr", s.arr[0])
    tmp = main.with_name(f".{main.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(b"half a file")
    os.utime(tmp, (OLD, OLD))


def leftover_journal(s: Storage) -> None:
    main = s.main("plain", s.plain)
    journal = main.with_name(f".{main.name}.journal")
    journal.write_bytes(b"records")
    os.utime(journal, (OLD, OLD))


DAMAGES: list[tuple[Callable[[Storage], None], int, dict[str, int]]] = [
    (missing_symlink, 3, {"missing-symlink": 1}),
    (extra_symlink, 3, {"extra-symlink": 1}),
    (wrong_symlink, 3, {"wrong-symlink": 1}),
    (orphan_data_file, 3, {"orphan-file": 1}),
    (orphan_tiles, 3, {"orphan-tile": 4}),
    (duplicate_primary_key, 3, {"duplicate-primary-key": 1, "missing-symlink": 1, "extra-symlink": 1}),
    (stale_read_lock, 2, {"stale-lock": 1}),
    (stale_varray_lock, 2, {"stale-lock": 1}),
    (corrupted_chunk, 4, {"corrupted-data": 1}),
    (damaged_file_header, 2, {"array-metadata": 1}),
    (damaged_array_meta, 2, {"array-metadata": 1}),
    (damaged_varray_json, 2, {"varray-metadata": 1}),
    (damaged_collection_json, 1, {"collection-metadata": 1}),
    (missing_collection_lock, 1, {"collection-lock-missing": 1}),
    (orphan_collection_lock, 1, {"collection-lock-orphan": 1}),
    (leftover_temp_file, 3, {"temp-file": 1}),
    (leftover_journal, 3, {"interrupted-write": 1}),
]


# --------------------------------------------------------------------------- levels


def test_clean_storage_passes_every_level(client: Client, capsys: pytest.CaptureFixture[str]) -> None:
    for level in (1, 2, 3, 4):
        report = client.check_integrity(level)  # stop_on_error=True: would raise on any problem
        assert report.ok and report.problems == [] and report.level == level
        assert report.collections == ["arr", "plain", "var"]
        assert report.files_checked == (0 if level == 1 else 3 + 8 + 1)
        assert capsys.readouterr().out == "Integrity check found no errors\n"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("damage", "level", "expected"), DAMAGES, ids=[d[0].__name__ for d in DAMAGES])
def test_each_level_finds_exactly_its_damage(
    storage: Storage, damage: Callable[[Storage], None], level: int, expected: dict[str, int]
) -> None:
    damage(storage)
    with Client(storage.uri, write_lock_timeout=5) as client:
        for check_level in (1, 2, 3, 4):
            report = client.check_integrity(check_level, stop_on_error=False, progress=False)
            found = kinds(report)
            assert found == (Counter(expected) if check_level >= level else Counter()), check_level
            assert all(p.level == level for p in report.problems)
            if check_level >= level:
                assert not report.ok
                assert report.text.startswith(report.problems[0].heading + "\n\t- ")


_KILLED_META_UPDATE = """
import os, signal, sys
from deker import Client
from deker.storage import journal
kill_at, calls = int(sys.argv[2]), [0]
real = journal.UndoJournal.write
def write(self, data):
    calls[0] += 1
    if calls[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, data)
journal.UndoJournal.write = write
client = Client(sys.argv[1])
next(iter(client.get_collection("arr"))).update_custom_attributes({"note": "new" * 300})
"""


@pytest.mark.timeout(120)
def test_an_array_whose_writer_was_killed_mid_journal_is_checked_as_readers_see_it(storage: Storage) -> None:
    """A custom-attribute update killed at each journal write: the file is sound for readers
    (the old version, through the journal), so level 2 reports nothing and levels 3 and 4 only
    the journal.  The check read the torn file itself: "has no meta dataset" at level 2.
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with Client(storage.uri, write_lock_timeout=5) as client:
        for kill_at in range(1, 100):
            child = [sys.executable, "-c", _KILLED_META_UPDATE, storage.uri, str(kill_at)]
            if subprocess.run(child, env=env, timeout=60).returncode == 0:
                break  # past the last journal write: committed
            journals = list(storage.paths("arr").path.rglob(".*.journal"))
            for path in journals:
                os.utime(path, (OLD, OLD))
            assert client.check_integrity(2, stop_on_error=False, progress=False).ok, kill_at
            for level in (3, 4):
                report = client.check_integrity(level, stop_on_error=False, progress=False)
                assert kinds(report) == Counter({"interrupted-write": len(journals)}), (kill_at, report.text)
            client.clear_locks()  # rolls the journal back for the next round
        else:
            pytest.fail("the update never committed")
        assert kill_at > 3


def test_objects_created_or_deleted_while_the_check_runs_are_no_problems(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another client works while the data files are checked (the longest part of a check).

    The symlink trees are walked afterwards: an Array or VArray created meanwhile was an
    "extra-symlink", an Array deleted after its file was checked a "missing-symlink", a tile
    of a VArray created after the VArrays were listed an "orphan-tile".
    """
    import deker.integrity as integrity

    real = integrity.check_array_file
    busy = threading.Lock()
    done: set[str] = set()
    other = Client(storage.uri, write_lock_timeout=5)

    def check_array_file(root: str, collection: str, *args: Any) -> Any:
        got = real(root, collection, *args)
        with busy:
            if collection not in done:
                done.add(collection)
                if collection == "arr":
                    arr = other.get_collection("arr")
                    assert arr is not None
                    arr.create({"k": 10})[:].update(1.0)
                    arr.filter({"k": 2}).last().delete()
                elif collection == "var":
                    var = other.get_collection("var")
                    assert var is not None
                    var.create({"name": "new"})[:2, :2].update(np.int16(5))
        return got

    monkeypatch.setattr(integrity, "check_array_file", check_array_file)
    with other, Client(storage.uri, write_lock_timeout=5) as client:
        report = client.check_integrity(3, stop_on_error=False, progress=False)
        assert done == {"arr", "plain", "var"}
        assert report.problems == [], report.text
        # the tile of a VArray made between the listing of the VArrays and that of the tiles
        vid = str(uuid.uuid4())
        listed = integrity._Checker.varray_records

        def varray_records_then_a_creation(self: Any, meta: Any, paths: CollectionPaths) -> Any:
            found = listed(self, meta, paths)
            if meta.name == "var":
                var = other.get_collection("var")
                assert var is not None
                var.create({"name": "later"}, id_=vid)[:2, :2].update(np.int16(6))
            return found

        monkeypatch.setattr(integrity, "check_array_file", real)
        monkeypatch.setattr(integrity._Checker, "varray_records", varray_records_then_a_creation)
        report = client.check_integrity(3, stop_on_error=False, progress=False)
        assert report.problems == [], report.text
        monkeypatch.setattr(integrity._Checker, "varray_records", listed)
        assert client.check_integrity(4, stop_on_error=False, progress=False).ok


def test_the_lock_of_a_collection_being_created_is_no_orphan(storage: Storage) -> None:
    """create_collection takes ``<name>.lock``, then builds the directory: the check (level 1)
    called the lock of a creation at work an orphan; nobody holding it, it is one."""
    root = storage.root / "collections"
    with Client(storage.uri) as client:
        with locks.collection_lock(root, "coming", LockSettings(timeout=5)):
            assert client.check_integrity(1, stop_on_error=False, progress=False).ok
        report = client.check_integrity(1, stop_on_error=False, progress=False)
        assert kinds(report) == Counter({"collection-lock-orphan": 1})


def test_equal_keys_spelt_apart_are_duplicates(tmp_path: Path) -> None:
    """deker 1.1.7 stored ``-0.0`` and ``0.0`` as two keys (two arrays); they are one key now."""
    schema = ArraySchema(
        dtype=np.int8, dimensions=[DimensionSchema("x", 2)], attributes=[AttributeSchema("q", float, True)]
    )
    with Client(tmp_path.as_uri()) as client:
        coll = client.create_collection("zeros", schema)
        legacy = str(uuid.uuid4())  # stored as 1.1.7 stored it: metadata and folder "-0.0"
        create_record(client.root_path, coll._meta, "array", legacy, {"q": -0.0}, {}, LockSettings(timeout=5))
        for level in (1, 2, 3, 4):  # one -0.0 key alone is sound
            assert client.check_integrity(level, stop_on_error=False, progress=False).ok
        # and a second array of key 0.0 beside it, as 1.1.7 stored it (refused here now: made
        # with another key, then moved to folder "0.0" with its metadata saying 0.0)
        new = coll.create({"q": 5.0}).id
        links = coll.path / "array_symlinks"
        (links / "5.0").rename(links / "0.0")
        payload = {"id": new, "primary_attributes": {"q": 0.0}, "custom_attributes": {}}
        rewrite_meta(
            CollectionPaths(client.root_path, "zeros").main_file("array", new), json.dumps(payload).encode()
        )
        for level in (1, 2):
            assert client.check_integrity(level, stop_on_error=False, progress=False).ok
        report = client.check_integrity(3, stop_on_error=False, progress=False)
        assert kinds(report) == Counter({"duplicate-primary-key": 1})
        message = report.problems[0].message
        assert "equal primary attributes" in message and legacy in message and new in message
        assert "array_symlinks/-0.0" in message and "array_symlinks/0.0" in message


def test_report_text_groups_problems_under_headings(storage: Storage) -> None:
    missing_symlink(storage)
    wrong_symlink_other = storage.arr_link(2)
    os.unlink(wrong_symlink_other)
    missing_collection_lock(storage)
    with Client(storage.uri) as client:
        report = client.check_integrity(3, stop_on_error=False)
    lines = report.text.splitlines()
    assert lines[0] == "Collections locks errors:"
    assert re.fullmatch(r"\t- BaseLock for plain not found: .*plain\.lock is missing", lines[1])
    assert lines[2] == "Collection arr arrays integrity errors:"
    in_id_order = sorted((1, 2), key=lambda k: storage.arr[k])  # objects are visited in id order
    assert lines[3:] == [
        f"\t- Symlink {storage.arr_link(k)} of Array {storage.arr[k]} not found" for k in in_id_order
    ]
    assert report.errors == {
        "Collections locks errors:": [lines[1][3:]],
        "Collection arr arrays integrity errors:": [line[3:] for line in lines[3:]],
    }
    doc = json.loads(json.dumps(report.as_dict()))
    assert doc["ok"] is False and [p["kind"] for p in doc["problems"]] == [
        "collection-lock-missing",
        "missing-symlink",
        "missing-symlink",
    ]
    assert doc["problems"][1]["collection"] == "arr"
    assert doc["problems"][1]["path"] == str(storage.arr_link(in_id_order[0]))


def test_live_locks_are_not_problems(storage: Storage) -> None:
    main = storage.main("arr", storage.arr[0])
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    args = json.dumps({"main_dir": str(main.parent), "array_id": storage.arr[0]})
    proc = subprocess.Popen(
        [sys.executable, str(HELPER), "read", args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ACQUIRED"
        with Client(storage.uri, write_lock_timeout=5) as client:
            assert client.check_integrity(4, progress=False).ok  # readers share: no wait, no problem
            assert [i.stale for i in client.list_locks("arr") if i.kind == "array read lock"] == [False]
    finally:
        proc.communicate("\n", timeout=10)


def test_young_or_locked_temp_files_are_not_reported(storage: Storage) -> None:
    import fcntl

    main = storage.main("arr", storage.arr[0])
    young = main.with_name(f".{main.name}.{uuid.uuid4().hex}.tmp")
    young.write_bytes(b"being written")
    held = main.with_name(f".{main.name}.{uuid.uuid4().hex}.tmp")
    held.write_bytes(b"being written slowly")
    os.utime(held, (OLD, OLD))
    with open(held, "rb") as fh, Client(storage.uri) as client:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        assert client.check_integrity(3).ok
    with Client(storage.uri) as client:
        report = client.check_integrity(3, stop_on_error=False)
    assert [(p.kind, p.path) for p in report.problems] == [("temp-file", str(held))]


# --------------------------------------------------------------------------- stop / continue


def test_stop_on_error_raises_at_the_first_problem(
    storage: Storage, capsys: pytest.CaptureFixture[str]
) -> None:
    missing_collection_lock(storage)
    missing_symlink(storage)
    corrupted_chunk(storage)
    with Client(storage.uri) as client:
        with pytest.raises(DekerIntegrityError) as info:
            client.check_integrity(4)
        assert str(info.value) == (
            "Collections locks errors:\n"
            f"\t- BaseLock for plain not found: {storage.paths('plain').lock_file} is missing\n"
        )
        assert capsys.readouterr().out == ""  # the report travels in the exception
        report = client.check_integrity(4, stop_on_error=False)
    assert kinds(report) == Counter({"collection-lock-missing": 1, "missing-symlink": 1, "corrupted-data": 1})
    assert capsys.readouterr().out == report.text


def test_level_4_runs_on_a_process_pool(storage: Storage) -> None:
    corrupted_chunk(storage)
    with (
        ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool,
        Client(storage.uri, executor=pool) as client,
    ):
        report = client.check_integrity(4, stop_on_error=False, progress=False)
    assert kinds(report) == Counter({"corrupted-data": 1})
    assert storage.arr[1] in report.problems[0].message and "corrupted" in report.problems[0].message


# --------------------------------------------------------------------------- to_file / collection


def test_to_file_true_writes_the_named_report(
    storage: Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing_symlink(storage)
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    with Client(storage.uri) as client:
        report = client.check_integrity(3, stop_on_error=False, to_file=True)
    (written,) = workdir.iterdir()
    assert re.fullmatch(r"deker_integrity_report_\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.txt", written.name)
    assert report.report_file == written and written.read_text() == report.text
    assert capsys.readouterr().out == report.text + f"Integrity check logged errors in {written}\n"


@pytest.mark.parametrize("as_type", [str, Path])
def test_to_file_path_writes_the_report(
    storage: Storage, tmp_path: Path, as_type: Callable[[str], Any]
) -> None:
    target = tmp_path / "reports" / "check.txt"
    target.parent.mkdir()
    with Client(storage.uri) as client:
        clean = client.check_integrity(2, to_file=as_type(str(target)))
        assert target.read_text() == "Integrity check found no errors\n" and clean.report_file == target
        wrong_symlink(storage)
        with pytest.raises(DekerIntegrityError) as info:
            client.check_integrity(3, to_file=as_type(str(target)))
    assert target.read_text() == str(info.value)  # written before the check stops
    assert "Incorrect symlink" in target.read_text()


def test_to_file_in_a_missing_directory_fails_before_checking(storage: Storage, tmp_path: Path) -> None:
    with Client(storage.uri) as client:
        with pytest.raises(DekerValidationError, match="does not exist"):
            client.check_integrity(1, to_file=tmp_path / "nowhere" / "r.txt")
        with pytest.raises(DekerValidationError, match="is a directory"):
            client.check_integrity(1, to_file=tmp_path)
        for bad in (0, 5, True, "2"):
            with pytest.raises(DekerValidationError, match="level"):
                client.check_integrity(bad)  # type: ignore[arg-type]


def test_collection_limits_the_run(storage: Storage, capsys: pytest.CaptureFixture[str]) -> None:
    missing_symlink(storage)  # in arr
    damaged_varray_json(storage)  # in var
    orphan_collection_lock(storage)  # storage-wide
    with Client(storage.uri) as client:
        report = client.check_integrity(4, stop_on_error=False, collection="var")
        assert report.collections == ["var"]
        assert kinds(report) == Counter({"varray-metadata": 1})
        assert {p.collection for p in report.problems} == {"var"}
        report = client.check_integrity(4, stop_on_error=False, collection="arr")
        assert kinds(report) == Counter({"missing-symlink": 1})
        assert client.check_integrity(4, collection="plain").ok
        with pytest.raises(DekerCollectionNotExistsError):
            client.check_integrity(1, collection="nope")
        with pytest.raises(DekerValidationError):
            client.check_integrity(1, collection="../var")


def test_progress_bar_only_when_asked_or_on_a_terminal(
    client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    client.check_integrity(2)  # stderr is captured here: not a terminal
    assert capsys.readouterr().err == ""
    client.check_integrity(2, progress=True)
    err = capsys.readouterr().err
    assert 'Checking collection "arr"' in err and "/3 " in err and 'Checking collection "var"' in err
    client.check_integrity(2, progress=False)
    assert capsys.readouterr().err == ""


def test_fixture_storage_from_deker_117_passes_level_4(legacy_storage: Path, tmp_path: Path) -> None:
    dest = tmp_path / "storage"
    shutil.copytree(legacy_storage, dest, symlinks=True)
    with Client(dest.as_uri()) as client:
        report = client.check_integrity(4, progress=False)
    assert report.ok and len(report.collections) == 6 and report.files_checked == 28


@st.composite
def block_cases(draw: st.DrawFn) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    shape = tuple(draw(st.lists(st.integers(1, 12), min_size=1, max_size=3)))
    unit = tuple(draw(st.integers(1, n)) for n in shape)
    return shape, unit, draw(st.integers(1, 300))


@given(block_cases())
def test_verify_blocks_cover_the_shape_once(case: tuple[tuple[int, ...], tuple[int, ...], int]) -> None:
    import deker.storage.inspection as inspection

    shape, unit, limit = case
    counts = np.zeros(shape, np.int64)
    old, inspection._VERIFY_CELLS = inspection._VERIFY_CELLS, limit
    try:
        blocks = list(_verify_blocks(shape, unit))
    finally:
        inspection._VERIFY_CELLS = old
    for block in blocks:
        counts[block] += 1
        assert int(np.prod([s.stop - s.start for s in block])) <= max(limit, int(np.prod(unit)))
    assert (counts == 1).all()


# --------------------------------------------------------------------------- storage size


def independent_size(path: Path) -> int:
    out = subprocess.run(
        ["find", str(path), "-type", "f", "-printf", "%s\\n"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return sum(int(x) for x in out.stdout.split())


def test_storage_size_is_the_sum_of_all_files(storage: Storage, capsys: pytest.CaptureFixture[str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Client(storage.uri) as client:
            total = client.calculate_storage_size()
            assert total.bytes == independent_size(storage.root / "collections") > 0
            per = {name: client.calculate_storage_size(name).bytes for name in ("arr", "var", "plain")}
            for name, size in per.items():
                assert size == independent_size(storage.paths(name).path)
            identity = (storage.root / "collections" / STORAGE_ID_FILE).stat().st_size
            assert total.bytes == sum(per.values()) + identity  # collection locks are empty files
            varray_json = storage.main("var", storage.var["a"], "varray")
            hdf5_only = sum(
                p.stat().st_size for p in storage.paths("var").path.rglob("*.hdf5") if not p.is_symlink()
            )
            assert per["var"] >= hdf5_only + varray_json.stat().st_size  # tiles and VArray json counted
            with open(varray_json, "ab") as fh:
                fh.write(b" " * 1000)
            assert client.calculate_storage_size("var").bytes == per["var"] + 1000
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_storage_size_counts_a_file_with_two_names_once(storage: Storage) -> None:
    """What an exclusive creation killed between its link and its unlink leaves (the new file
    under its temporary name and its own): one file, counted twice before."""
    with Client(storage.uri) as client:
        before = client.calculate_storage_size("plain").bytes
        main = storage.main("plain", storage.plain)
        os.link(main, main.with_name(f".{main.name}.{uuid.uuid4().hex}.tmp"))
        assert client.calculate_storage_size("plain").bytes == before
        assert client.calculate_storage_size().bytes == independent_size(storage.root / "collections") - (
            main.stat().st_size
        )


def test_storage_size_of_the_117_fixture(legacy_storage: Path) -> None:
    with Client(legacy_storage.as_uri()) as client:
        size = client.calculate_storage_size()
        assert size.bytes == independent_size(legacy_storage / "collections")
        assert client.calculate_storage_size("tiles").bytes == independent_size(
            legacy_storage / "collections" / "tiles"
        )
    assert tree_size(legacy_storage / "missing") == 0


# --------------------------------------------------------------------------- locks and logging


def test_clear_locks_removes_dead_owners_only(storage: Storage, caplog: pytest.LogCaptureFixture) -> None:
    stale_read_lock(storage)
    main = storage.main("plain", storage.plain)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    args = json.dumps({"main_dir": str(main.parent), "array_id": storage.plain})
    live = subprocess.Popen(
        [sys.executable, str(HELPER), "read", args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert live.stdout is not None and live.stdout.readline().strip() == "ACQUIRED"
        with Client(storage.uri) as client:
            markers = {i.path: i.stale for i in client.list_locks() if i.kind == "array read lock"}
            assert sorted(markers.values()) == [False, True]
            assert client.clear_locks("plain") == []  # only the live one is there
            with caplog.at_level(logging.INFO, logger="deker"):
                removed = client.clear_locks()
            assert removed == [p for p, stale in markers.items() if stale]
            assert any(str(removed[0]) in r.getMessage() for r in caplog.records)
            assert client.check_integrity(2).ok
            removed = client.clear_locks(force=True)
            assert removed == [p for p, stale in markers.items() if not stale]
    finally:
        live.communicate("\n", timeout=10)


def test_logging_controls_deker_loggers_only(storage: Storage, capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    root_level, root_handlers = root.level, list(root.handlers)
    deker_logger = logging.getLogger("deker")
    handlers = list(deker_logger.handlers)
    try:
        with Client(storage.uri, loglevel="debug") as client:
            assert deker_logger.level == logging.DEBUG
            assert logging.getLogger("deker.integrity").getEffectiveLevel() == logging.DEBUG
            set_logging_level("WARNING")
            assert deker_logger.level == logging.WARNING
            coll = client.get_collection("arr")
            assert coll is not None
            array = coll.filter({"k": 0}).last()
            array[0, 0].update(5.0)
            assert array[0, 0].read() == 5.0
            client.calculate_storage_size()
            client.list_locks()
            client.clear_locks()
        assert root.level == root_level and root.handlers == root_handlers
        assert deker_logger.handlers == handlers
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err == ""  # nothing prints but check_integrity
    finally:
        set_logging_level("ERROR")


def test_on_a_local_disk_no_more_file_checks_run_at_once_than_there_are_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Reading and checking array files on a local disk is bound by the CPU and h5py's lock: the
    # client's pool (cores + 3 threads here) runs no more of them at once than there are cores.
    from storage_helpers.overlap import Overlap

    from deker import integrity
    from deker.sizes import usable_cores
    from deker.storage.mounts import is_local_filesystem

    if not is_local_filesystem(tmp_path):
        pytest.skip(f"{tmp_path} is not on a local filesystem: there every pool thread may work")
    cores = usable_cores()
    schema = ArraySchema(dtype=np.float32, dimensions=[DimensionSchema(name="x", size=64)])
    with Client((tmp_path / "s").as_uri(), workers=cores + 3) as client:
        collection = client.create_collection("c", schema)
        for n in range(8):
            collection.create()[:].update(np.full(64, n, dtype=np.float32))
        probe = Overlap(expect=min(cores, 8), hold=0.2)
        check = integrity.check_array_file
        monkeypatch.setattr(integrity, "check_array_file", lambda *args: probe.inside_while(check, *args))
        assert client.check_integrity(4, stop_on_error=False, progress=False).ok
    assert probe.entered == 8 and probe.most == min(cores, 8)
