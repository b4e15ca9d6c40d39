"""Small real filesystems for the disk-full tests: a tmpfs and an ext4 loop filesystem (root only)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

__all__ = ["KINDS", "cannot_mount", "mounted"]

KINDS = ("tmpfs", "ext4")


def cannot_mount(kind: str) -> str | None:
    """Why ``kind`` cannot be mounted here (``None``: it can)."""
    if os.geteuid() != 0:
        return "mounting a small filesystem needs root"
    if kind == "ext4":
        if shutil.which("mkfs.ext4") is None:
            return "mkfs.ext4 is not installed"
        if not os.path.exists("/dev/loop-control"):
            return "no loop devices in this sandbox (/dev/loop-control is missing)"
    return None


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


@contextlib.contextmanager
def mounted(kind: str, where: Path, size_mib: int = 4) -> Iterator[Path]:
    """Mount a ``size_mib`` MiB filesystem of ``kind`` on ``where / "mnt"``; unmount after."""
    mnt = where / "mnt"
    mnt.mkdir(parents=True, exist_ok=True)
    if kind == "tmpfs":
        _run("mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(mnt))
    else:
        image = where / "fs.img"
        _run("truncate", "-s", f"{max(size_mib, 2)}M", str(image))
        _run("mkfs.ext4", "-q", "-F", "-m", "0", "-b", "1024", str(image))
        _run("mount", "-o", "loop", str(image), str(mnt))
    try:
        yield mnt
    finally:
        _run("umount", "-l", str(mnt))
