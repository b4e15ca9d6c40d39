"""The storage identity file (deker.storage.identity): made with a storage, given to a storage of
deker 1.1.7 at this deker's first write (never by a reader), and what tasks and ``check_workers``
compare against."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from deker import Client, DimensionSchema, VArraySchema
from deker.storage.identity import STORAGE_ID_FILE, ensure_storage_id, read_storage_id, storage_problem


def _schema() -> VArraySchema:
    return VArraySchema(
        dtype=np.float32, dimensions=[DimensionSchema("y", 4), DimensionSchema("x", 6)], vgrid=(2, 2)
    )


def test_a_new_storage_gets_an_id_at_once(tmp_path: Path) -> None:
    with Client(tmp_path.as_uri()) as client:
        root = client.root_path
        found = read_storage_id(root)
        assert found is not None and len(found) == 36
        assert (root / STORAGE_ID_FILE).read_text() == f"deker-storage {found}\n"
        assert client.storage_context.storage_id == found
        assert [c.name for c in client] == []  # not a collection
        client.create_collection("c", _schema())
        assert [c.name for c in client] == ["c"]
        assert client.check_integrity(4, stop_on_error=False).ok
    with Client(tmp_path.as_uri()) as again:
        assert again.storage_context.storage_id == found  # opening again keeps it


def test_concurrent_first_writers_agree(tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    ids: list[str] = []
    barrier = threading.Barrier(8)

    def one() -> None:
        barrier.wait()
        ids.append(ensure_storage_id(tmp_path))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1 and read_storage_id(tmp_path) == ids[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [STORAGE_ID_FILE]  # no temp file left


def test_a_117_storage_gets_one_at_the_first_write_not_at_a_read(
    tmp_path: Path, legacy_storage: Path
) -> None:
    storage = tmp_path / "s"
    shutil.copytree(legacy_storage, storage, symlinks=True)
    root = storage / "collections"
    assert not (root / STORAGE_ID_FILE).exists()
    with Client(storage.as_uri()) as client:
        for coll in client:
            for obj in coll:
                obj[:].read()
        assert client.storage_context.storage_id is None
        assert not (root / STORAGE_ID_FILE).exists()  # readers write nothing
        coll = next(c for c in client if not c.array_schema.attributes)
        coll.create()  # a write: the storage gets its identity
        found = read_storage_id(root)
        assert found is not None and client.storage_context.storage_id == found


def test_read_only_storage_without_an_id_is_read(tmp_path: Path) -> None:
    with Client(tmp_path.as_uri()) as client:
        v = client.create_collection("c", _schema()).create()
        v[:].update(np.ones((4, 6), dtype=np.float32))
        v[0:2, 0:3].clear()
    (tmp_path / "collections" / STORAGE_ID_FILE).unlink()  # as deker 1.1.7 made it
    if os.geteuid() == 0:
        pytest.skip("root ignores file permissions")  # pragma: no cover - covered by the test below
    os.chmod(tmp_path / "collections", 0o555)
    try:
        with Client(tmp_path.as_uri()) as client:
            (v,) = list(client.get_collection("c").varrays)
            expected = np.ones((4, 6), dtype=np.float32)
            expected[0:2, 0:3] = np.nan
            np.testing.assert_array_equal(v[:].read(), expected)
    finally:
        os.chmod(tmp_path / "collections", 0o755)


def test_without_an_id_absence_is_checked_against_the_collection(tmp_path: Path) -> None:
    with Client(tmp_path.as_uri()) as client:
        coll = client.create_collection("c", _schema())
        v = coll.create()
        v[:].update(np.ones((4, 6), dtype=np.float32))
        v[0:2, 0:3].clear()  # one tile absent: it reads as fill
    (tmp_path / "collections" / STORAGE_ID_FILE).unlink()
    with Client(tmp_path.as_uri()) as client:
        assert client.storage_context.storage_id is None
        (v,) = list(client.get_collection("c").varrays)
        assert np.isnan(v[0:2, 0:3].read()).all()
        assert not (tmp_path / "collections" / STORAGE_ID_FILE).exists()


def test_storage_problem(tmp_path: Path) -> None:
    root = tmp_path / "collections"
    assert "is not a directory" in str(storage_problem(root, "x", "c"))
    root.mkdir()
    assert "is missing (a storage that is not mounted?)" in str(storage_problem(root, "x", "c"))
    assert "c.json is missing" in str(storage_problem(root, None, "c"))
    made = ensure_storage_id(root)
    assert storage_problem(root, made, "c") is None
    assert f"holds another storage (id {made}, expected other)" in str(storage_problem(root, "other", "c"))
    (root / STORAGE_ID_FILE).write_text("garbage\n")
    assert read_storage_id(root) is None
    (root / "c").mkdir()
    (root / "c" / "c.json").write_text("{}")
    assert storage_problem(root, None, "c") is None
