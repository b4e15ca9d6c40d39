"""Tests of deker.storage.kernellock: the two kernel primitives and the mount-option check.

The raw primitive runs with both ``flock`` and ``posix``; a forked child looks at the kernel
locks as another host would (:func:`storage_helpers.prim.seen_locked`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

import pytest
from storage_helpers.prim import foreign_lock, seen_locked

from deker.errors import DekerValidationError
from deker.storage import kernellock


def test_primitive_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(kernellock.PRIMITIVE_ENV, raising=False)
    assert kernellock.primitive() == "flock"
    monkeypatch.setenv(kernellock.PRIMITIVE_ENV, " POSIX ")
    assert kernellock.primitive() == "posix"
    monkeypatch.setenv(kernellock.PRIMITIVE_ENV, "fcntl")
    with pytest.raises(DekerValidationError, match="DEKER_LOCK_PRIMITIVE"):
        kernellock.primitive()


def test_posix_primitive_has_nfs_semantics(tmp_path: Path, prim: str) -> None:
    """The raw primitive: posix locks belong to the process and die with any descriptor's close."""
    path = tmp_path / "f"
    path.touch()
    first = os.open(path, os.O_RDWR)
    assert kernellock.try_lock(first, True, prim)
    assert seen_locked(path)
    second = os.open(path, os.O_RDWR)
    # posix: a second descriptor of the same process is not refused; flock: it is
    assert kernellock.try_lock(second, True, prim) is (prim == "posix")
    if prim == "flock":
        assert seen_locked(path, exclusive=False)
    os.close(second)  # what h5py does when it closes a file a writer holds locked
    assert seen_locked(path) is (prim == "flock")  # posix: every lock of the process is gone
    os.close(first)
    assert not seen_locked(path)


def test_lock_new_waits_out_a_momentary_probe_and_gives_up_on_a_lasting_one(
    tmp_path: Path, prim: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "new"
    path.touch()
    fd = os.open(path, os.O_RDWR)
    try:
        monkeypatch.setattr(kernellock, "NEW_FILE_BUSY_SECONDS", 0.05)
        with foreign_lock(path):  # a sweeper's probe that does not end
            assert kernellock.lock_new(fd, prim) is False
        prober = contextlib.ExitStack()
        prober.enter_context(foreign_lock(path))
        real = kernellock.try_lock
        tries: list[bool] = []

        def probe_ends_after_the_first_try(fd: int, exclusive: bool, primitive: str) -> bool:
            tries.append(real(fd, exclusive, primitive))
            prober.close()
            return tries[-1]

        monkeypatch.setattr(kernellock, "try_lock", probe_ends_after_the_first_try)
        monkeypatch.setattr(kernellock, "NEW_FILE_BUSY_SECONDS", 30.0)
        assert kernellock.lock_new(fd, prim) is True
        assert tries == [False, True]
        assert seen_locked(path)
    finally:
        os.close(fd)


MOUNTS = """\
/dev/sda1 / ext4 rw,relatime 0 0
10.0.0.1:/export /shared nfs4 rw,vers=4.2,hard,local_lock=none 0 0
10.0.0.1:/old /shared/old nfs rw,vers=3,nolock,local_lock=all 0 0
10.0.0.1:/f /mnt/f\\040dir nfs rw,vers=3,local_lock=flock 0 0
mgs@tcp:/fs /lustre lustre rw,flock 0 0
mgs@tcp:/fs2 /lustre2 lustre rw,localflock 0 0
mgs@tcp:/fs3 /lustre3 lustre rw 0 0
"""


@pytest.mark.parametrize(
    ("directory", "primitive", "problem"),
    [
        ("/home/me", "flock", None),
        ("/shared/storage", "flock", None),
        ("/shared/old/storage", "flock", "/shared/old is a nfs mount with nolock"),
        ("/shared/older", "posix", None),  # /shared/old is not a parent of /shared/older
        ("/mnt/f dir/s", "flock", "/mnt/f dir is a nfs mount with local_lock=flock"),
        ("/mnt/f dir/s", "posix", None),  # POSIX locks of that mount do reach the server
        ("/lustre/s", "flock", None),
        ("/lustre2/s", "flock", "/lustre2 is a lustre mount with localflock"),
        ("/lustre3", "posix", "/lustre3 is a lustre mount without flock"),
    ],
)
def test_mount_options_that_keep_locks_local(directory: str, primitive: str, problem: str | None) -> None:
    """Host-local locks cannot be probed from one host: the mount options tell."""
    found = kernellock.mount_problem(MOUNTS, directory, primitive)
    assert found == problem if problem is None else found is not None and found.startswith(problem)


def test_a_sweeper_probing_the_new_probe_file_gives_no_false_verdict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweeper's momentary probe of the fresh lock-check file is waited out, not taken for broken locks.

    The probe file's name looks like a leftover temporary file, so a sweeper of another process
    (``find_leftovers``) may hold a shared ``flock`` on it for a moment right after it is made.
    Here a second description takes that lock as the file is created, and lets go at the
    check's first pause.
    """
    held: list[int] = []
    real_open, real_sleep = os.open, time.sleep

    def open_(path: os.PathLike[str] | str, flags: int, mode: int = 0o777) -> int:
        fd = real_open(path, flags, mode)
        if flags & os.O_EXCL and ".deker-lockcheck." in os.fspath(path):
            sweeper = real_open(path, os.O_RDONLY)
            fcntl.flock(sweeper, fcntl.LOCK_SH | fcntl.LOCK_NB)
            held.append(sweeper)
        return fd

    def sleep(seconds: float) -> None:
        while held:  # the sweeper's probe is over
            sweeper = held.pop()
            fcntl.flock(sweeper, fcntl.LOCK_UN)
            os.close(sweeper)
        real_sleep(seconds)

    monkeypatch.setattr(kernellock.os, "open", open_)
    monkeypatch.setattr(kernellock.time, "sleep", sleep)
    assert kernellock.probe_exclusion(tmp_path, kernellock.FLOCK) is None
    assert not held and not list(tmp_path.iterdir())
