"""The installed ``deker`` command, run in subprocesses against real storages."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deker import ArraySchema, AttributeSchema, Client, DimensionSchema, VArraySchema
from deker.storage.layout import CollectionPaths

DEKER = Path(sys.executable).parent / "deker"
ROOT = Path(__file__).resolve().parents[1]
HELPER = Path(__file__).resolve().parent / "storage_helpers" / "lock_holder.py"

pytestmark = pytest.mark.timeout(120)


def deker(
    *args: str, cwd: Path | None = None, storage_env: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``deker ARGS``; ``DEKER_STORAGE`` is unset unless ``storage_env`` gives it."""
    if not DEKER.exists():
        pytest.fail(f"{DEKER} is missing: install the package (pip install -e .)")
    env = {k: v for k, v in os.environ.items() if k != "DEKER_STORAGE"}
    if storage_env is not None:
        env["DEKER_STORAGE"] = storage_env
    return subprocess.run([str(DEKER), *args], capture_output=True, text=True, timeout=90, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "storage"
    with Client(root.as_uri()) as client:
        coll = client.create_collection(
            "temps",
            ArraySchema(
                dtype=np.float32,
                dimensions=[DimensionSchema("y", 3), DimensionSchema("x", 4, labels=list("abcd"))],
                attributes=[AttributeSchema("station", int, True)],
            ),
        )
        for station in (1, 2):
            coll.create({"station": station})[0].update(np.ones(4, np.float32))
        grid = client.create_collection(
            "grid",
            VArraySchema(
                dtype=np.int16, dimensions=[DimensionSchema("y", 4), DimensionSchema("x", 4)], vgrid=(2, 2)
            ),
        )
        grid.create()[:2, :].update(np.full((2, 4), 3, np.int16))  # two of the four tiles
        client.create_collection("empty", ArraySchema(dtype=np.int64, dimensions=[DimensionSchema("n", 2)]))
    return root


@pytest.fixture()
def storage(pristine: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "storage"
    shutil.copytree(pristine, dest, symlinks=True)
    return dest


@pytest.fixture()
def client(storage: Path) -> Iterator[Client]:
    with Client(storage.as_uri()) as c:
        yield c


def temps_link(client: Client) -> Path:
    coll = client.get_collection("temps")
    assert coll is not None
    array = coll.filter({"station": 1}).last()
    assert array is not None
    return CollectionPaths(client.root_path, "temps").symlink_file("array", ("1",), array.id)


def test_help_explains_every_command() -> None:
    result = deker("--help")
    assert result.returncode == 0, result.stderr
    for word in ("STORAGE", "ls", "info", "check", "size", "locks", "--json", "exit status", "130"):
        assert word in result.stdout
    result = deker("check", "/x", "--help")
    assert result.returncode == 0
    for word in ("--level", "--collection", "--to-file", "--stop-on-error", "4  + every stored value"):
        assert word in result.stdout
    result = deker("locks", "/x", "--help")
    assert result.returncode == 0 and "--clear" in result.stdout and "--force" in result.stdout


def test_ls_table_and_json(storage: Path, client: Client) -> None:
    result = deker("ls", str(storage))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "KIND", "SHAPE", "DTYPE", "ARRAYS", "VARRAYS"]
    assert [line.split()[0] for line in lines[1:]] == ["empty", "grid", "temps"]
    assert lines[3].split() == ["temps", "array", "(3,", "4)", "float32", "2", "-"]
    result = deker("--json", "ls", storage.as_uri())
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["grid"] == {
        "name": "grid",
        "kind": "varray",
        "shape": [4, 4],
        "dtype": "int16",
        "arrays": len(list(client.get_collection("grid").arrays)),  # type: ignore[union-attr]
        "varrays": 1,
        "error": None,
    }
    assert rows["temps"]["arrays"] == 2 and rows["empty"]["arrays"] == 0


def test_ls_reports_a_damaged_collection(storage: Path) -> None:
    (storage / "collections" / "temps" / "temps.json").write_text("{")
    result = deker("ls", str(storage), "--json")
    assert result.returncode == 1
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert "not valid JSON" in rows["temps"]["error"] and rows["grid"]["error"] is None


def test_ls_skips_collections_being_created_or_deleted(storage: Path) -> None:
    """The scratch directories of a running (or interrupted) creation or deletion are no
    collections: ls listed them as collections without metadata and exited with status 1."""
    collections = storage / "collections"
    (collections / f".{'0' * 32}.trash").mkdir()  # a deletion at work: the renamed collection
    (collections / "temps").rename(collections / f".{'0' * 32}.trash" / "temps")
    (collections / f".{'1' * 32}.new").mkdir()  # a creation at work
    result = deker("--json", "ls", str(storage))
    assert result.returncode == 0, result.stdout
    assert [row["name"] for row in json.loads(result.stdout)] == ["empty", "grid"]


def test_info_and_size_agree_with_the_client(storage: Path, client: Client) -> None:
    result = deker("info", str(storage), "grid", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    grid = client.get_collection("grid")
    assert grid is not None
    assert doc["metadata"] == json.loads(json.dumps(grid.as_dict))
    assert doc["size"]["bytes"] == client.calculate_storage_size("grid").bytes
    assert (doc["vgrid"], doc["arrays_shape"], doc["varrays"], doc["arrays"]) == ([2, 2], [2, 2], 1, 2)
    result = deker("info", str(storage), "temps")
    assert result.returncode == 0, result.stderr
    assert "Collection: temps (array)" in result.stdout
    assert "  - x: size 4, labels [a, b, c, d]" in result.stdout
    assert "  - station: int, primary" in result.stdout
    result = deker("--json", "size", str(storage))
    assert json.loads(result.stdout)["bytes"] == client.calculate_storage_size().bytes
    result = deker("size", str(storage), "temps")
    size = client.calculate_storage_size("temps")
    assert result.returncode == 0 and result.stdout == f"{size.human} ({size.bytes} bytes)\n"


def test_check_clean_and_damaged(storage: Path, client: Client, tmp_path: Path) -> None:
    result = deker("check", str(storage), "--level", "4")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Integrity check found no errors\n")
    assert "3 collection(s), 4 data file(s) checked, 0 problem(s)" in result.stdout
    os.unlink(temps_link(client))
    (storage / "collections" / "empty" / "empty.json").write_text("[]")
    result = deker("check", str(storage), "--level", "3", "--json")
    assert result.returncode == 1, result.stderr
    doc = json.loads(result.stdout)
    assert doc["ok"] is False and doc["level"] == 3
    assert sorted(p["kind"] for p in doc["problems"]) == ["collection-metadata", "missing-symlink"]
    report = tmp_path / "report.txt"
    result = deker("check", str(storage), "--level", "3", "--collection", "temps", "--to-file", str(report))
    assert result.returncode == 1
    assert report.read_text().startswith("Collection temps arrays integrity errors:\n\t- Symlink ")
    assert result.stdout.startswith(report.read_text()) and f"Report written to {report}" in result.stdout
    result = deker("check", str(storage), "--level", "3", "-x")
    assert result.returncode == 1
    assert result.stdout.count("\t- ") == 1 and "Stopped at the first problem" in result.stdout
    result = deker("check", str(storage), "--level", "9")
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_locks_list_and_clear(storage: Path, client: Client) -> None:
    coll = client.get_collection("temps")
    assert coll is not None
    array = coll.filter({"station": 2}).last()
    assert array is not None
    main_dir = CollectionPaths(client.root_path, "temps").main_dir("array", array.id)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    args = json.dumps({"main_dir": str(main_dir), "array_id": array.id})
    proc = subprocess.Popen(
        [sys.executable, str(HELPER), "read", args],
        stdin=subprocess.PIPE,  # the holder keeps its lock until a line (or EOF) arrives
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ACQUIRED"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()
    result = deker("locks", str(storage))
    assert result.returncode == 1
    assert (
        "array read lock" in result.stdout and "stale" in result.stdout and "locks --clear" in result.stdout
    )
    result = deker("--json", "locks", str(storage), "--all")
    doc: dict[str, Any] = json.loads(result.stdout)
    assert doc["stale"] == 1 and doc["removed"] == []
    assert {(lock["kind"], lock["state"]) for lock in doc["locks"]} >= {
        ("array read lock", "stale"),
        ("collection lock", "free"),
        ("array mutex", "free"),
    }
    (stale,) = [lock for lock in doc["locks"] if lock["state"] == "stale"]
    assert stale["collection"] == "temps" and stale["array_id"] == array.id
    assert deker("locks", str(storage), "--force").returncode == 3
    result = deker("locks", str(storage), "--clear", "--json")
    assert result.returncode == 0
    assert json.loads(result.stdout)["removed"] == [stale["path"]]
    result = deker("locks", str(storage))
    assert result.returncode == 0 and result.stdout == "no lock files\n"


def test_errors_give_exit_status_3(storage: Path, tmp_path: Path) -> None:
    result = deker("ls", str(tmp_path / "nothing"))
    assert result.returncode == 3 and f"No deker storage at {tmp_path / 'nothing'}" in result.stderr
    assert not (tmp_path / "nothing").exists()  # nothing is created
    result = deker("info", str(storage), "nope")
    assert result.returncode == 3 and "nope does not exist" in result.stderr
    result = deker("check", str(storage), "--to-file", str(tmp_path / "no" / "r.txt"))
    assert result.returncode == 3 and "does not exist" in result.stderr
    result = deker("ls", "http://host/x")
    assert result.returncode == 3 and "only file:// storages" in result.stderr
    assert deker(str(storage)).returncode == 2


def test_missing_command_or_storage_says_what_is_missing() -> None:
    result = deker()
    assert result.returncode == 2
    assert "missing COMMAND and STORAGE: write 'deker COMMAND STORAGE'" in result.stderr
    result = deker("ls")
    assert result.returncode == 2
    assert "missing STORAGE: write 'deker ls STORAGE'" in result.stderr and "DEKER_STORAGE" in result.stderr
    result = deker("info", "temps")  # one word: the collection, not the storage
    assert result.returncode == 2 and "missing STORAGE: write 'deker info STORAGE'" in result.stderr


def test_both_orders_and_the_environment_name_the_same_storage(storage: Path, tmp_path: Path) -> None:
    conventional = deker("--json", "info", storage.as_uri(), "temps")
    assert conventional.returncode == 0, conventional.stderr
    older = deker("--json", str(storage), "info", "temps")
    assert older.returncode == 0, older.stderr
    from_env = deker("--json", "info", "temps", storage_env=str(storage))
    assert from_env.returncode == 0, from_env.stderr
    assert json.loads(conventional.stdout) == json.loads(older.stdout) == json.loads(from_env.stdout)
    # a storage on the command line wins over the environment
    result = deker("size", str(storage), "--collection", "temps", storage_env=str(tmp_path / "elsewhere"))
    assert result.returncode == 0, result.stderr
    assert deker("size", "--collection", "temps", storage_env=str(storage)).stdout == result.stdout
    assert deker("size", str(storage), "temps", "--collection", "grid").returncode == 3
    # a relative path, a file: URI relative to the working directory
    assert deker("ls", "storage", cwd=storage.parent).returncode == 0
    assert deker("ls", "file:storage", cwd=storage.parent).returncode == 0


def test_the_command_never_creates_a_storage(tmp_path: Path) -> None:
    for args in (("ls", str(tmp_path / "typo")), ("check", (tmp_path / "typo").as_uri()), ("locks",)):
        result = deker(*args, storage_env=str(tmp_path / "typo"))
        assert result.returncode == 3, result.stderr
        assert f"No deker storage at {tmp_path / 'typo'}" in result.stderr
        assert not (tmp_path / "typo").exists()
    result = deker("ls", "file://typo", cwd=tmp_path)  # a host name: the message says what to write
    assert result.returncode == 3 and f"write '{(tmp_path / 'typo').as_uri()}'" in result.stderr


def test_tile_errors_heading_does_not_repeat_a_collection_name(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with Client(root.as_uri()) as client:
        dims = [DimensionSchema("y", 4), DimensionSchema("x", 4)]
        tiles = client.create_collection("tiles", VArraySchema(dtype=np.int16, dimensions=dims, vgrid=(2, 2)))
        tiles.create()[:].update(np.int16(1))
        tile = next(iter(tiles.arrays))
        next((tiles.path / "array_data").rglob(f"{tile.id}.hdf5")).write_bytes(b"damaged")
    result = deker("check", str(root), "--level", "2", "--no-progress")
    assert result.returncode == 1
    assert "Collection tiles (V)Arrays initialization errors:\n\t- Array " in result.stdout
    assert "tiles tiles" not in result.stdout


def test_python_m_deker_and_the_117_fixture(legacy_storage: Path, tmp_path: Path) -> None:
    dest = tmp_path / "storage"
    shutil.copytree(legacy_storage, dest, symlinks=True)
    result = subprocess.run(
        [sys.executable, "-m", "deker", "--json", "check", dest.as_uri(), "--level", "4"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["ok"] is True and doc["files_checked"] == 28 and len(doc["collections"]) == 6
    assert result.stderr == ""


def test_read_only_commands_change_nothing(storage: Path) -> None:
    """Issue 17: with --read-only (chosen by itself on a storage it cannot write) nothing changes."""
    from storage_helpers.read_only_child import run_cli, snapshot

    before = snapshot(storage)
    where = str(storage)
    for args in (["ls", where], ["info", where, "grid"], ["size", where], ["locks", where, "--all"]):
        assert run_cli(*args, read_only=True)[0] == 0
    assert run_cli("check", where, "--level", "4", "--no-progress", read_only=True)[0] == 0
    code, text = run_cli("locks", where, "--clear", read_only=True)
    assert code == 3 and "Cannot clear locks" in text and "read-only (read_only=True)" in text
    assert snapshot(storage) == before
