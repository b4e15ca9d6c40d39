"""Running this Python as another (unprivileged) user, for the read-permission tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

NOBODY = 65534

#: Marks a test that needs root: bind mounts, or setpriv to another uid.
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (bind mounts, setpriv to another uid)")


def as_user(uid: int = NOBODY) -> list[str]:
    """The command prefix that runs a program as ``uid`` (its group too, no other groups).

    Skips the calling test where that cannot run this Python: no ``setpriv``, or an interpreter
    the user may not load (one below root's home, such as a pyenv build whose ``libpython`` lies
    in ``/root``).  That is this machine's setup, not deker's behaviour, so it is a skip.
    """
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed")
    command = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    done = subprocess.run(
        [*command, sys.executable, "-c", "pass"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"this Python ({sys.executable}) cannot start as uid {uid}: {done.stderr.strip()[-300:]}")
    return command
