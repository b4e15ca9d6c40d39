"""The throwaway virtual environment holding the reference deker 1.1.7.

It lives in a cache directory outside the checkout (``$DEKER_TEST_CACHE``, else
``$XDG_CACHE_HOME/deker-tests``, else ``~/.cache/deker-tests``), is built on first use with
``pip install deker==1.1.7 'numpy<2' hdf5plugin`` (needs the package registry; about a minute
and 300 MB) and reused afterwards.  Concurrent builders (two test runs at once) serialise on a
lock file next to it; a half-built venv is never taken for a finished one (a stamp file is
written last).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

REQUIREMENTS = ("deker==1.1.7", "numpy<2", "hdf5plugin")
PROBE = (
    "import importlib.metadata as m, deker, hdf5plugin; assert m.version('deker') == '1.1.7', deker.__file__"
)


class LegacyUnavailable(RuntimeError):
    """The deker 1.1.7 venv could not be built (no package registry, no venv module...)."""


def clean_env() -> dict[str, str]:
    """Return this process's environment without what would make the venv import another deker.

    A ``PYTHONPATH`` naming a checkout (as a worktree's test run sets it) would make the venv's
    python import this checkout's deker, whose dependencies it lacks, instead of deker 1.1.7.
    """
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def cache_dir() -> Path:
    """Return the folder that holds the cached venv (created on demand)."""
    explicit = os.environ.get("DEKER_TEST_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "deker-tests"


def venv_dir() -> Path:
    """Return the folder of the deker 1.1.7 venv."""
    return cache_dir() / "deker-1.1.7"


def _ready(python: Path, stamp: Path) -> bool:
    if not (python.exists() and stamp.exists()):
        return False
    # run from the venv folder: never import the checkout's own ``deker`` by accident
    probe = subprocess.run(
        [str(python), "-c", PROBE], capture_output=True, cwd=python.parent, env=clean_env()
    )
    return probe.returncode == 0


def legacy_python(timeout: float = 900.0) -> Path:
    """Return the python of a venv with deker 1.1.7, building the venv the first time.

    Parameters
    ----------
    timeout : float
        Seconds the ``pip install`` may take.

    Returns
    -------
    Path
        The venv's ``bin/python``.

    Raises
    ------
    LegacyUnavailable
        When the venv cannot be built here; the message says why.
    """
    root = venv_dir()
    python = root / "bin" / "python"
    stamp = root / ".deker-1.1.7-ready"
    if _ready(python, stamp):
        return python
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / "deker-1.1.7.build-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _ready(python, stamp):  # built by someone else meanwhile
            return python
        shutil.rmtree(root, ignore_errors=True)
        steps = (
            [sys.executable, "-m", "venv", str(root)],
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *REQUIREMENTS],
            [str(python), "-c", PROBE],
        )
        for step in steps:
            try:
                proc = subprocess.run(
                    step, capture_output=True, text=True, timeout=timeout, cwd=root.parent, env=clean_env()
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise LegacyUnavailable(f"cannot build the deker 1.1.7 venv at {root}: {exc}") from exc
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
                raise LegacyUnavailable(
                    f"cannot build the deker 1.1.7 venv at {root} ({' '.join(step[:4])} ...): "
                    + " | ".join(tail)
                )
        stamp.write_text("ok\n")
    return python
