"""deker/storage/writable.py: whether a storage can be written, found out without changing it.

The read-only mount and the unprivileged user run in a child process (``unshare --mount``,
``setpriv``) and need root; they are skipped otherwise.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from storage_helpers.other_user import NOBODY, as_user, needs_root

from deker.storage.identity import STORAGE_ID_FILE
from deker.storage.writable import write_problem

PROBE = (
    "import sys; from pathlib import Path; from deker.storage.writable import write_problem; "
    "print(write_problem(Path(sys.argv[1])))"
)


def _listing(directory: Path) -> list[tuple[str, int, int]]:
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in directory.iterdir())


def test_a_writable_directory_has_no_problem(tmp_path: Path) -> None:
    (tmp_path / "c.lock").touch()
    (tmp_path / STORAGE_ID_FILE).write_text("deker-storage x\n")  # opened for writing, not written
    before = _listing(tmp_path)
    assert write_problem(tmp_path) is None
    assert _listing(tmp_path) == before  # nothing made, nothing changed


@pytest.fixture
def shared() -> Iterator[Path]:
    top = Path(tempfile.mkdtemp(prefix="deker-writable-"))
    for sub in ("src", "ro"):
        (top / sub).mkdir()
    (top / "src" / "c.lock").touch()
    for path in (top, top / "src", top / "ro"):
        path.chmod(0o755)
    (top / "src" / "c.lock").chmod(0o644)
    yield top
    shutil.rmtree(top, ignore_errors=True)


@needs_root
def test_a_read_only_mount_is_found(shared: Path) -> None:
    script = (
        f"mount --bind {shared / 'src'} {shared / 'ro'} && mount -o remount,ro,bind {shared / 'ro'} && "
        f'exec "$0" -c "$1" {shared / "ro"}'
    )
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, sys.executable, PROBE],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0 and "Operation not permitted" in done.stderr:
        pytest.skip(f"mount namespaces are not allowed here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    assert "mounted read-only (EROFS)" in done.stdout


@needs_root
def test_a_user_with_read_permission_only_is_found(shared: Path) -> None:
    command = as_user(NOBODY)
    before = _listing(shared / "src")
    done = subprocess.run(
        [*command, sys.executable, "-c", PROBE, str(shared / "src")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr
    assert "uid 65534" in done.stdout and "(EACCES)" in done.stdout
    assert _listing(shared / "src") == before
