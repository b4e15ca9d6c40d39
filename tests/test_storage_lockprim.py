"""Tests of deker.storage.lockprim: the process registry and the fs check at the first write.

Each protocol test runs with both primitives (``flock`` and ``posix``, set through
``DEKER_LOCK_PRIMITIVE``).  A forked child looks at the kernel locks as another host would
(:func:`storage_helpers.prim.seen_locked`).
"""

from __future__ import annotations

import errno
import fcntl
import gc
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from storage_helpers.prim import registry_keys, seen_locked

from deker import ArraySchema, Client, DimensionSchema
from deker.errors import DekerLockError, DekerStorageError
from deker.storage import kernellock, lockinfo, lockprim, locks, lockwait
from deker.storage.layout import CollectionPaths

FAST = locks.LockSettings(timeout=0.3, interval=0.02)
AID = "f61df9c1-c07a-48c3-bd57-8a470c80939a"


@pytest.fixture
def fresh_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget which filesystems were checked (the check runs once per filesystem and process)."""
    monkeypatch.setattr(lockprim, "_registry", lockprim._Registry())


def make_array(tmp_path: Path) -> tuple[Path, str]:
    main_file = CollectionPaths(tmp_path / "collections", "coll").main_file("array", AID)
    main_file.parent.mkdir(parents=True, exist_ok=True)
    main_file.write_bytes(b"data")
    return main_file.parent, AID


def open_fds(under: Path) -> int:
    """Descriptors of this process open on files below ``under``.

    Only the test's own directory counts: other threads of the process (a thread pool or a
    Dask client left by an earlier test) open and close descriptors of their own at any time.
    """
    gc.collect()  # objects of earlier tests that close descriptors when collected (not test order)
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed since it was listed
            continue
        count += target.startswith(f"{under}/")
    return count


def test_holds_of_one_process_exclude_each_other(tmp_path: Path, prim: str) -> None:
    path = tmp_path / "mutex"
    before = open_fds(tmp_path)
    assert before == 0
    first = lockprim.hold(path, True, create=True)
    assert first is not None and seen_locked(path) and open_fds(tmp_path) == 1
    assert lockprim.hold(path, True) is None and lockprim.hold(path, False) is None
    assert lockprim.probe(path) and lockprim.probe(path, True)
    assert seen_locked(path)  # the probes closed no descriptor of the locked file
    lockprim.release(first)
    lockprim.release(first)  # idempotent
    assert not seen_locked(path) and open_fds(tmp_path) == before
    readers = [lockprim.hold(path, False), lockprim.hold(path, False)]
    assert all(r is not None for r in readers) and lockprim.hold(path, True) is None
    assert seen_locked(path) and not seen_locked(path, exclusive=False)
    assert lockprim.probe(path) is False and lockprim.probe(path, True) is True
    for r in readers:
        assert r is not None
        lockprim.release(r)
    assert lockprim.probe(path, True) is False and lockprim.probe(tmp_path / "missing") is None
    assert open_fds(tmp_path) == before


def test_protocol_excludes_after_a_descriptor_of_the_data_file_is_closed(tmp_path: Path, prim: str) -> None:
    """A writer's data file is opened and closed (h5py, rawio): the protocol still excludes."""
    main_dir, aid = make_array(tmp_path)
    data, mutex = main_dir / f"{aid}.hdf5", locks.mutex_path(main_dir, aid)
    with locks.array_write_lock(main_dir, aid, FAST):
        os.close(os.open(data, os.O_RDONLY))  # like h5py.File(data).close()
        assert seen_locked(mutex)  # other processes / hosts are still excluded
        # posix: the data-file lock (deker 1.1.7 interop only) went with the close
        assert seen_locked(data) is (prim == "flock")
        for lock in (locks.array_read_lock, locks.array_write_lock):
            errors: list[BaseException] = []

            def other_thread(lock: object = lock, errors: list[BaseException] = errors) -> None:
                try:
                    with lock(main_dir, aid, FAST):  # type: ignore[operator]
                        pass
                except BaseException as exc:
                    errors.append(exc)

            thread = threading.Thread(target=other_thread)
            thread.start()
            thread.join(10)
            assert len(errors) == 1 and isinstance(errors[0], DekerLockError)
        assert lockinfo.is_locked(mutex) and [i.alive for i in lockinfo.list_locks(main_dir)] == [True]
        assert seen_locked(mutex)  # neither the waiters nor the listing dropped it
    assert not seen_locked(mutex)


def test_tile_guard_of_the_coordinators_process(tmp_path: Path, prim: str) -> None:
    """A thread of the coordinator checks its marker: held (posix never reports own locks)."""
    main_dir, aid = make_array(tmp_path)
    token = locks.new_token()
    with locks.VArrayWriteLock(FAST, token) as lock:
        lock.acquire([(main_dir, aid)])
        other = locks.VArrayWriteLock(FAST, locks.new_token())
        with pytest.raises(DekerLockError):
            other.acquire([(main_dir, aid)], wait=False)
        for _ in range(3):
            with locks.tile_write_guard(main_dir, aid, token):
                pass
        assert seen_locked(lock.marker(main_dir, aid)) and seen_locked(locks.mutex_path(main_dir, aid))
    with pytest.raises(DekerLockError, match="lock lost"), locks.tile_write_guard(main_dir, aid, token):
        pass


# --------------------------------------------------------------------------- filesystem check


def schema() -> ArraySchema:
    return ArraySchema(dtype=np.float64, dimensions=[DimensionSchema(name="x", size=3)])


@pytest.fixture
def failing_primitive(monkeypatch: pytest.MonkeyPatch, fresh_checks: None) -> Iterator[list[int]]:
    """Make the kernel lock call fail like a filesystem without lock support (errno injected)."""
    real = kernellock.try_lock
    failure: list[int] = []

    def kernel_try(fd: int, exclusive: bool, prim: str) -> bool:
        if failure and failure[0] == 0:
            return True  # a fake lock: granted to everyone
        if failure:
            raise OSError(failure[0], os.strerror(failure[0]))
        return real(fd, exclusive, prim)

    monkeypatch.setattr(kernellock, "try_lock", kernel_try)
    yield failure
    failure.clear()


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP])
def test_filesystem_without_locks_is_refused_at_the_first_write(
    tmp_path: Path, prim: str, failing_primitive: list[int], code: int
) -> None:
    """Injected: this machine has no filesystem without lock support to mount (as root or not)."""
    with Client(f"file://{tmp_path}") as client:
        failing_primitive.append(code)
        with pytest.raises(DekerStorageError, match=r"-o flock.*local_lock=none") as info:
            client.create_collection("c", schema())
        assert errno.errorcode[code] in str(info.value) and str(tmp_path) in str(info.value)
        with pytest.raises(DekerStorageError, match="cannot be written safely"):  # remembered
            client.create_collection("c", schema())
    assert not list(tmp_path.rglob(".deker-lockcheck*"))


def test_locks_that_do_not_exclude_are_refused(
    tmp_path: Path, prim: str, failing_primitive: list[int]
) -> None:
    """Lustre without ``-o flock`` (``localflock`` across hosts) or a fake lock: granted twice."""
    failing_primitive.append(0)
    with Client(f"file://{tmp_path}") as client, pytest.raises(DekerStorageError, match="do not exclude"):
        client.create_collection("c", schema())


def test_working_filesystem_is_checked_once(
    tmp_path: Path, prim: str, fresh_checks: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    probes: list[Path] = []
    real = kernellock.probe_exclusion

    def probe_exclusion(directory: Path, primitive: str) -> str | None:
        probes.append(directory)
        return real(directory, primitive)

    monkeypatch.setattr(kernellock, "probe_exclusion", probe_exclusion)
    with Client(f"file://{tmp_path}") as client:
        coll = client.create_collection("c", schema())
        coll.create()[:].update(np.arange(3.0))
        coll.create()
    assert len(probes) == 1 and not list(tmp_path.rglob(".deker-lockcheck*"))
    assert lockprim._reg().checked == {(os.stat(tmp_path).st_dev, prim): None}
    lockprim.check_filesystem(tmp_path / "missing")  # nothing to check yet: the write will say so


def test_descriptors_of_a_held_file_keep_its_lock(tmp_path: Path, prim: str) -> None:
    """I/O on a held file goes through the registry's descriptor; a close never drops the lock."""
    path = tmp_path / "f.bin"
    path.write_bytes(b"0123456789")
    own, own_shared = lockprim.open_fd(path, False)  # opened before anyone here held it
    assert own_shared is None
    held = lockprim.hold(path, True)
    assert held is not None
    fd, shared = lockprim.open_fd(path, True)
    assert shared is not None and fd == held.fd  # the held descriptor itself, shared
    os.pwrite(fd, b"AB", 0)
    lockprim.close_fd(fd, shared)
    lockprim.close_fd(own, own_shared)  # held meanwhile: kept open until the lock goes
    assert seen_locked(path)
    assert lockprim.hold(path, False) is None  # still exclusive in this process too
    lockprim.release(held)
    assert not seen_locked(path)
    assert path.read_bytes() == b"AB23456789"
    assert lockprim.reuse(path) is None and lockprim.reuse(tmp_path / "missing") is None


def test_an_attached_hold_goes_with_its_owner(tmp_path: Path, prim: str) -> None:
    """A new version renamed over a held file stays locked until the old file's lock is released."""
    old, new = tmp_path / "f.hdf5", tmp_path / ".f.hdf5.tmp"
    old.write_bytes(b"old")
    owner = lockprim.hold(old, True)
    successor = lockprim.hold_new(new)
    assert owner is not None
    share = lockprim.reuse(old)
    assert share is not None
    os.replace(new, old)
    lockprim.attach(share, successor)
    lockprim.release(share)
    assert seen_locked(old)  # the new file, under the old name
    assert lockprim.hold(old, True) is None
    lockprim.release(owner)
    assert not seen_locked(old)
    late = lockprim.hold_new(new)
    lockprim.attach(owner, late)  # the owner is gone: released at once
    assert not seen_locked(new)


@pytest.mark.parametrize("failure", ["busy", "error"])
def test_a_new_file_that_cannot_be_locked_is_removed_and_not_held(
    tmp_path: Path,
    prim: str,
    monkeypatch: pytest.MonkeyPatch,
    failure: str,
    held_before: frozenset[tuple[int, int]],
) -> None:
    new = tmp_path / ".marker.tmp"

    def refused(fd: int, primitive: str) -> bool:
        if failure == "error":
            raise OSError(errno.EIO, "Input/output error")
        return False  # a probe held it for all of NEW_FILE_BUSY_SECONDS

    monkeypatch.setattr(kernellock, "lock_new", refused)
    expected = DekerStorageError if failure == "busy" else OSError
    with pytest.raises(expected, match="stays busy" if failure == "busy" else "Input/output"):
        lockprim.hold_new(new)
    assert not new.exists()
    assert registry_keys() <= held_before
    assert open_fds(tmp_path) == 0


def test_a_readonly_hold_opens_read_only_and_creates_nothing(tmp_path: Path, prim: str) -> None:
    """Issue 17: ``readonly=True`` (a read-only storage) opens O_RDONLY and never creates the file."""
    missing = tmp_path / "missing.lock"
    with pytest.raises(FileNotFoundError):
        lockprim.hold(missing, False, create=True, readonly=True)
    assert not missing.exists()
    path = tmp_path / "mutex"
    path.touch()
    held = lockprim.hold(path, False, readonly=True)
    assert held is not None and seen_locked(path) and not seen_locked(path, exclusive=False)
    flags = fcntl.fcntl(held.fd, fcntl.F_GETFL)
    assert flags & os.O_ACCMODE == os.O_RDONLY
    assert lockprim.hold(path, True) is None  # a writer is refused while the reader holds it
    lockprim.release(held)


_GC_UNDER_THE_MUTEX = r"""
import faulthandler, gc, sys, tempfile, threading, time
from pathlib import Path

import h5py
import numpy as np

from deker.storage import journal, lockprim

faulthandler.dump_traceback_later(30, exit=True)  # a deadlock: the stacks, then exit status 1
tmp = Path(tempfile.mkdtemp())
target = tmp / "t.hdf5"
with h5py.File(target, "w") as f:
    f.create_dataset("x", data=np.zeros(1000))
other = h5py.File(tmp / "o.hdf5", "w")
other.create_dataset("y", data=np.zeros(10))
dataset = other["y"]  # (h5py's lock is the writer's below)
gc.set_threshold(1)  # an automatic collection at (nearly) every allocation
reg = lockprim._reg()
reg.mutex.acquire()  # this thread inside a lockprim call
undo = journal.UndoJournal(target)
handle = h5py.File(undo, "r+")


def writer():  # HDF5 writes through the journal, which registers it under the mutex
    handle["x"][...] = np.ones(1000)
    handle.flush()


thread = threading.Thread(target=writer, daemon=True)
thread.start()
deadline = time.monotonic() + 3  # until the writer waits for the mutex inside HDF5
while time.monotonic() < deadline:
    frame, names = sys._current_frames().get(thread.ident), []
    while frame is not None:
        names.append(frame.f_code.co_name)
        frame = frame.f_back
    if "hold_new" in names:
        break
    time.sleep(0.01)
print("writer waits in", names[:3], flush=True)


class Cycle:
    pass


c = Cycle()
c.me, c.ds = c, dataset  # garbage: a reference cycle holding the only h5py dataset object
del c, dataset
junk = [[] for _ in range(1000)]  # allocations: the collector would free the dataset here
reg.mutex.release()
thread.join(30)
handle.close()
undo.close()
print("no deadlock", flush=True)
"""


def test_a_garbage_collection_under_the_registry_mutex_does_not_deadlock_with_hdf5(tmp_path: Path) -> None:
    """Found by a soak run: a tile thread inside HDF5 (h5py's lock held) registered a new undo
    journal and waited for the registry's mutex, while the mutex's holder, collecting garbage,
    freed an h5py dataset and waited for h5py's lock.  The mutex's holder now runs no garbage
    collection (an allocation inside its section starts none).  Run in a child process: on the old code it
    hangs until faulthandler ends it."""
    script = tmp_path / "gc_under_mutex.py"
    script.write_text(_GC_UNDER_THE_MUTEX)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and "no deadlock" in proc.stdout, proc.stderr[-3000:]


def test_a_directory_removed_during_the_check_is_no_verdict(
    tmp_path: Path, prim: str, fresh_checks: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A concurrent clear removes an empty tile directory between the check's stat and its probe.

    The vanished directory says nothing about the filesystem's locks: the check must neither
    refuse it nor remember a verdict, so the writer's retry (``acquire_in`` makes the directory
    again) and every later write in the process go on.  The hook removes the directory at the
    exact point a concurrent cleanup can.
    """
    tile_dir = tmp_path / "tile"
    tile_dir.mkdir()
    real = kernellock.mount_problem_at
    removed: list[Path] = []

    def mount_problem_at(directory: Path, primitive: str) -> str | None:
        if not removed:
            directory.rmdir()  # the concurrent clear's cleanup of an empty directory
            removed.append(directory)
        return real(directory, primitive)

    monkeypatch.setattr(kernellock, "mount_problem_at", mount_problem_at)
    waiter = lockwait.Waiter(lockwait.LockSettings(timeout=1, interval=0.01))
    held = lockwait.acquire_in(lambda d: d.mkdir(exist_ok=True), tile_dir / "x.lock", waiter, "a tile")
    lockprim.release(held)
    assert removed == [tile_dir]
    assert lockprim._reg().checked == {(os.stat(tmp_path).st_dev, prim): None}
    lockprim.check_filesystem(tile_dir)  # and the next write of the process is not refused either
