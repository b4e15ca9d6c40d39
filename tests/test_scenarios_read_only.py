"""Issue 17, read-only storages: a real read-only bind mount, a user with read permission only,
and ``Client(read_only=True)`` on a writable storage.

Each scenario builds a small archive (an Array collection, a VArray collection with absent tiles,
and an Array whose in-place write was interrupted: its file holds the new bytes, its undo journal
the old ones), then a client reads everything (Array and VArray reads, ``describe``,
``read_xarray``, deker_dask's lazy arrays (on the read-only mount through the ``processes``
scheduler: their tasks are pickled, so the read-only choice must travel with them); integrity
checks 1-4; the CLI) and
tries every write.  Nothing on disk may change (names, sizes, modification times, contents),
the reads must match what a writable client reads, the torn write must not be seen, and every
write must raise ``DekerReadOnlyError`` (also a ``PermissionError``).

The mount and user scenarios run a child python (``storage_helpers/read_only_child.py``) in a
private mount namespace (``unshare --mount``: nothing is mounted on the host) or as uid 65534
(``setpriv``); they need root and are skipped otherwise.  On the code before this change
every read there failed with ``EROFS`` / ``EACCES`` on ``<id>.lock`` or a read marker.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from storage_helpers import read_only_child as child
from storage_helpers.other_user import NOBODY, as_user, needs_root

from deker import Client

HELPER = Path(child.__file__)


@pytest.fixture
def archive() -> Iterator[Path]:
    """An archive under a world-traversable directory (pytest's tmp_path is 0700)."""
    top = Path(tempfile.mkdtemp(prefix="deker-ro-"))
    try:
        top.chmod(0o755)
        (top / "src").mkdir(mode=0o755)
        (top / "ro").mkdir(mode=0o755)
        child.build(top / "src" / "st")
        for dirpath, _dirs, files in os.walk(top):
            os.chmod(dirpath, 0o755)
            for name in files:
                os.chmod(Path(dirpath) / name, 0o644)
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _torn_file(storage: Path) -> Path:
    journals = list(storage.rglob("*.journal"))
    assert len(journals) == 1, journals
    return journals[0].with_name(journals[0].name[1 : -len(".journal")])


def _check(result: dict[str, Any], storage: Path, before: dict[str, Any], *, reason: str) -> None:
    assert child.snapshot(storage) == before  # nothing created, changed or removed
    assert result["read_only"] is True and reason in result["reason"]
    assert result["reads"] == child.expected()  # the torn write is not seen
    assert result["window"] == np.asarray(child.expected()["varray"])[2:6, 1:5].tolist()
    assert result["dask"]["varray"] == child.expected()["varray"]
    assert result["dask"]["collection"] == float(
        np.sum(child.expected()["first"]) + np.sum(child.expected()["torn"])
    )
    assert result["dask"]["xarray"] == float(np.sum(child.expected()["varray"]))
    assert result["xarray"] == float(np.sum(child.expected()["first"]))
    assert result["backend"] == float(np.sum(child.expected()["varray"]))  # engine="deker"
    assert result["backend_one"] == float(np.sum(child.expected()["first"]))
    assert result["attributes"] == {"note": "first"}
    assert set(result["check"]) <= {"interrupted-write"}  # reported (once old enough), never repaired
    assert result["locks"] == ["array mutex", "collection lock", "tile fence"]
    assert result["size"] > 0
    assert set(result["cli"].values()) == {0}
    assert set(result["cli_check"]) <= {0, 1}  # ran (1: the journal was reported)
    assert result["cli_clear"] == [3, True]  # 'locks --clear' refused, saying read-only
    assert result["writes"] == dict.fromkeys(result["writes"], "refused")


def _run(command: list[str]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HELPER.parent.parent), *sys.path])}
    env["HOME"] = tempfile.gettempdir()  # another uid may not enter root's home (spawned processes)
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd="/")
    if done.returncode != 0 and "Operation not permitted" in done.stderr and "unshare" in done.stderr:
        pytest.skip(f"mount namespaces are not allowed here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_the_archive_holds_a_torn_write(archive: Path) -> None:
    """The fixture is what it claims: the torn file itself holds the interrupted write's bytes."""
    torn = _torn_file(archive / "src" / "st")
    with h5py.File(torn, "r") as handle:
        values = np.asarray(handle["data"])
    assert (values[: child.TORN_ROWS] == 99).all() and (values[child.TORN_ROWS :] == 5).all()


@needs_root
def test_read_only_bind_mount(archive: Path) -> None:
    """A client on a read-only bind mount chooses read-only by itself; reads work, writes refused."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    before = child.snapshot(archive / "src" / "st")
    script = (
        f"mount --bind {archive / 'src'} {archive / 'ro'} && "
        f"mount -o remount,ro,bind {archive / 'ro'} && "
        f'exec "$0" {HELPER} {(archive / "ro" / "st").as_uri()}'
    )
    result = _run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, sys.executable])
    _check(result, archive / "src" / "st", before, reason="EROFS")
    assert not os.path.ismount(archive / "ro")  # the mount stayed in the child's namespace


@needs_root
def test_read_permission_only(archive: Path) -> None:
    """A user who may only read the archive: the client chooses read-only by itself."""
    command = as_user(NOBODY)
    before = child.snapshot(archive / "src" / "st")
    # (dask's threads: a spawned process of another uid cannot start from root's environment)
    result = _run([*command, sys.executable, str(HELPER), (archive / "src" / "st").as_uri(), "--threads"])
    _check(result, archive / "src" / "st", before, reason="EACCES")


def test_requested_read_only_on_a_writable_storage(tmp_path: Path) -> None:
    """``read_only=True`` on a storage it could write: the same, in this process (no root needed)."""
    storage = tmp_path / "st"
    child.build(storage)
    before = child.snapshot(storage)
    result = json.loads(json.dumps(child.exercise(storage.as_uri(), read_only=True, scheduler="threads")))
    _check(result, storage, before, reason="read_only=True")
    with Client(storage.as_uri()) as writable:  # a writable client reads the same values
        assert not writable.read_only and writable.read_only_reason is None
        first = writable.get_collection("plain").filter({"k": 1}).last()  # type: ignore[union-attr]
        assert first[:].read().tolist() == result["reads"]["first"]


READER = """
import json, sys
import numpy as np
import deker_dask
from deker import Client
client = Client(sys.argv[1], create=False, write_lock_timeout=5)
plain, grid = client.get_collection("plain"), client.get_collection("grid")
varray = next(iter(grid))
print(json.dumps({
    "read_only": client.read_only,
    "first": plain.filter({"k": 1}).last()[:].read().tolist(),
    "torn": plain.filter({"k": 2}).last()[:].read().tolist(),
    "varray": varray[:].read().tolist(),
    "dask": deker_dask.to_dask(varray).compute(scheduler="threads").tolist(),
}))
"""


@needs_root
def test_read_permission_only_below_a_writable_root(archive: Path) -> None:
    """The collections directory is writable, the collections are not: a writable client, whose
    reads fall back to the read-only lock where they cannot make their lock files."""
    command = as_user(NOBODY)
    storage = archive / "src" / "st"
    (storage / "collections").chmod(0o777)
    before = child.snapshot(storage)
    result = _run([*command, sys.executable, "-c", READER, storage.as_uri()])
    assert result.pop("read_only") is False
    dask_values = result.pop("dask")
    assert result == child.expected() and dask_values == child.expected()["varray"]
    assert child.snapshot(storage) == before
