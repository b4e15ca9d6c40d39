"""Disk-full and I/O-error faults: injected at each write call, or from a real full filesystem.

Shared by tests/test_disk_full.py and tests/stress/test_disk_full_loop.py, and run as a script so a
crash (SIGSEGV inside HDF5) kills a child process, not pytest::

    python disk_full.py inject OPERATION ERRNO ROOT [LIMIT [sticky]]  # each write step fails once
    python disk_full.py fill ROOT OPERATIONS SEED        # OPERATIONS runs on a filled filesystem

Both print one JSON line (what happened) and exit 0 when every check held, 1 otherwise (the
problems are in the JSON).  The checks after each failed operation: the error is a
``DekerStorageError`` (inside a ``DekerVSubsetError`` for VArrays) whose message names a path
and the cause; every array reads equal to its old or its new content, cell for cell per tile;
every ``.hdf5`` file starts with the HDF5 signature; after the next writer (the operation
repeated without faults) and ``clear_locks`` nothing is left over (journals, new versions,
markers, ``<name>.lock`` of collections that do not exist).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deker import ArraySchema, Client, DimensionSchema, HDF5CompressionOpts, HDF5Options, VArraySchema
from deker.errors import DekerExceptionGroup, DekerStorageError
from deker.storage import atomic

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
SHAPE = (96, 80)
VGRID = (2, 2)
_FLAGS_CREATE = os.O_CREAT


def failing_pwrite(monkeypatch: Any, code: int, after: int = 0) -> list[int]:
    """Make ``os.pwrite`` fail with ``code`` from its ``after``-th call on (counted in the list).

    ``monkeypatch`` is pytest's fixture (it undoes the patch after the test).
    """
    real = os.pwrite
    calls = [0]

    def pwrite(fd: int, data: Any, offset: int) -> int:
        calls[0] += 1
        if calls[0] > after:
            raise OSError(code, os.strerror(code))
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    return calls


class Injected(OSError):
    """The fault put in at a write call (an ``OSError`` like the real one)."""


@dataclass
class Injector:
    """Make the ``fail_at``-th write-like call of ``os`` fail with ``code`` (counting from 0).

    Wrapped: ``write``, ``pwrite``, ``pwritev``, ``ftruncate``, ``fsync``, ``replace``,
    ``rename``, ``link``, ``mkdir`` and ``open`` with ``O_CREAT``: every call the storage layer
    makes to change a file (HDF5's own writes go through deker's file objects, hence
    ``os.pwrite``).  ``fail_at=None`` only counts.  ``sticky`` makes every later call fail too
    (a disk that stays full).
    """

    code: int
    fail_at: int | None = None
    sticky: bool = False
    calls: int = 0
    failed: int = 0

    def _wrap(self, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if name == "open" and not (len(args) > 1 and args[1] & _FLAGS_CREATE):
                return func(*args, **kwargs)
            index = self.calls
            self.calls += 1
            if self.fail_at is not None and (index == self.fail_at or (self.sticky and index > self.fail_at)):
                self.failed += 1
                raise Injected(self.code, os.strerror(self.code))
            return func(*args, **kwargs)

        return wrapper

    @contextlib.contextmanager
    def active(self) -> Iterator[Injector]:
        names = (
            "write",
            "pwrite",
            "pwritev",
            "ftruncate",
            "fsync",
            "replace",
            "rename",
            "link",
            "mkdir",
            "open",
        )
        saved = {name: getattr(os, name) for name in names}
        try:
            for name, func in saved.items():
                setattr(os, name, self._wrap(name, func))
            yield self
        finally:
            for name, func in saved.items():
                setattr(os, name, func)


# ------------------------------------------------------------------------------ operations


def _options(compressed: bool) -> HDF5Options | None:
    if not compressed:
        return None
    return HDF5Options(
        chunks=(16, 16), compression_opts=HDF5CompressionOpts(compression="gzip", compression_opts=4)
    )


def _values(seed: int, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).random(shape)


@dataclass
class Case:
    """One operation on one array: ``before`` is set up, ``run`` changes it to ``after``."""

    name: str
    kind: str  # "array" or "varray"
    compressed: bool
    before: np.ndarray | None  # None: nothing written (all fill)
    region: tuple[slice, ...] | None  # None: a collection creation
    value: np.ndarray | float | None  # None: a clear

    def after(self) -> np.ndarray | None:
        if self.region is None:
            return self.before
        base = np.full(SHAPE, np.nan) if self.before is None else self.before.copy()
        base[self.region] = np.nan if self.value is None else self.value
        return base


def cases() -> dict[str, Case]:
    """Every operation tried, by name."""
    old = _values(1)
    part = (slice(10, 70), slice(5, 50))
    whole = (slice(0, SHAPE[0]), slice(0, SHAPE[1]))
    found: dict[str, Case] = {
        "create_collection": Case("create_collection", "array", False, None, None, None),
        "array-create": Case("array-create", "array", False, None, None, None),
        "varray-create": Case("varray-create", "varray", True, None, None, None),
    }
    for kind in ("array", "varray"):
        for compressed in (False, True):
            tag = f"{kind}-{'gzip' if compressed else 'plain'}"
            for what, before, region, value in (
                ("partial-update", old, part, _values(2, (60, 45))),
                ("first-partial-update", None, part, _values(2, (60, 45))),
                ("whole-update", old, whole, _values(3)),
                ("first-whole-update", None, whole, _values(3)),
                ("scalar-update", old, part, 0.5),
                ("partial-clear", old, part, None),
                ("whole-clear", old, whole, None),
            ):
                found[f"{tag}-{what}"] = Case(f"{tag}-{what}", kind, compressed, before, region, value)
    return found


def _schema(kind: str) -> ArraySchema | VArraySchema:
    dims = [DimensionSchema(name="y", size=SHAPE[0]), DimensionSchema(name="x", size=SHAPE[1])]
    if kind == "varray":
        return VArraySchema(dimensions=dims, dtype=float, vgrid=VGRID)
    return ArraySchema(dimensions=dims, dtype=float)


def _collection(client: Client, case: Case, name: str) -> Any:
    return client.create_collection(name, _schema(case.kind), collection_options=_options(case.compressed))


def _apply(array: Any, case: Case) -> None:
    assert case.region is not None
    if case.value is None:
        array[case.region].clear()
    else:
        array[case.region].update(case.value)


# ------------------------------------------------------------------------------ checks


def leaves(exc: BaseException) -> list[BaseException]:
    """The real errors inside (nested) exception groups."""
    if isinstance(exc, DekerExceptionGroup) or hasattr(exc, "exceptions"):
        found: list[BaseException] = []
        for sub in getattr(exc, "exceptions", ()):
            found.extend(leaves(sub))
        return found or [exc]
    return [exc]


def error_problems(exc: BaseException, code: int) -> list[str]:
    """What is wrong with the error a failed operation raised (empty: a good error)."""
    problems = []
    cause = os.strerror(code)
    for leaf in leaves(exc):
        text = str(leaf)
        if not isinstance(leaf, DekerStorageError):
            problems.append(f"raw {type(leaf).__name__}: {text}")
        elif cause not in text or "/" not in text:
            problems.append(f"DekerStorageError without the path or the cause ({cause}): {text}")
    return problems


def bad_signatures(root: Path) -> list[str]:
    """The ``.hdf5`` files under ``root`` that do not start with the HDF5 signature."""
    bad = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if name.endswith(".hdf5") and not name.startswith("."):
                path = Path(dirpath) / name
                with open(path, "rb") as fh:
                    if fh.read(8) != HDF5_SIGNATURE:
                        bad.append(str(path))
    return bad


def leftovers(root: Path) -> list[str]:
    """Journals, new versions, scratch directories and orphan collection locks under ``root``."""
    found = [str(item.path) for item in atomic.find_leftovers(root)]
    found += [str(p) for p in atomic.find_scratch_dirs(root)]
    collections = root / "collections"
    if collections.is_dir():
        for entry in collections.iterdir():
            if entry.name.endswith(".lock") and not (collections / entry.name[: -len(".lock")]).is_dir():
                found.append(str(entry))
    return sorted(found)


def _tiles(case: Case) -> list[tuple[slice, ...]]:
    if case.kind == "array":
        return [(slice(0, SHAPE[0]), slice(0, SHAPE[1]))]
    ty, tx = SHAPE[0] // VGRID[0], SHAPE[1] // VGRID[1]
    return [
        (slice(i * ty, (i + 1) * ty), slice(j * tx, (j + 1) * tx))
        for i in range(VGRID[0])
        for j in range(VGRID[1])
    ]


def content_problems(array: Any, case: Case) -> list[str]:
    """Tiles (the whole Array) that read neither as before nor as after the operation."""
    read = np.asarray(array[:].read())
    before = np.full(SHAPE, np.nan) if case.before is None else case.before
    after = case.after()
    assert after is not None
    problems = []
    for tile in _tiles(case):
        got = read[tile]
        if not (
            np.array_equal(got, before[tile], equal_nan=True)
            or np.array_equal(got, after[tile], equal_nan=True)
        ):
            problems.append(f"tile {tile} is neither old nor new")
    return problems


# ------------------------------------------------------------------------------ runs


def _fresh(root: Path, case: Case, name: str) -> tuple[Client, Any]:
    """The client and the target of ``case``: its array, its collection (creations) or None."""
    client = Client(f"file://{root}", write_lock_timeout=5)
    if case.name == "create_collection":
        return client, None
    collection = _collection(client, case, name)
    if case.region is None:
        return client, collection
    array = collection.create()
    if case.before is not None:
        array[:].update(case.before)
    return client, array


def _do(client: Client, target: Any, case: Case) -> None:
    if case.name == "create_collection":
        client.create_collection("new", _schema("array"))
    elif case.region is None:
        target.create()
    else:
        _apply(target, case)


def _judge(client: Client, target: Any, case: Case, error: BaseException | None, where: Path) -> list[str]:
    """Check what an operation left, then run the next writer (the operation without faults)."""
    problems = []
    if case.name == "create_collection":
        problems += [f"orphan before the next writer {p}" for p in leftovers(where)]
        if error is not None and client.get_collection("new") is not None:
            problems.append("create_collection failed but the collection exists")
        if client.get_collection("new") is None:
            client.create_collection("new", _schema("array"))
    elif case.region is None:
        for array in target:  # a failed creation made none, or one that works
            if not np.isnan(np.asarray(array[:].read())).all():
                problems.append(f"created array {array.id} is not empty")
        target.create()
    else:
        problems += content_problems(target, case)
        _apply(target, case)
        if not np.array_equal(np.asarray(target[:].read()), case.after(), equal_nan=True):
            problems.append("the next writer's operation did not land")
    return problems


def inject(case_name: str, code: int, root: Path, limit: int = 0, sticky: bool = False) -> dict[str, Any]:
    """Run ``case_name`` once per write step, that step failing with ``code``; check each run.

    ``limit`` > 0 tries only that many steps, spread evenly from the first to the last.
    ``sticky``: every write call after the failing one fails too (the rollback included, so
    the journal or new version stays for the next writer to deal with).
    """
    case = cases()[case_name]
    problems: list[str] = []
    # how many write calls the operation makes when nothing fails
    client, array = _fresh(root / "count", case, "c")
    with Injector(code).active() as counter:
        _do(client, array, case)
    client.close()
    steps = counter.calls
    failures = successes = 0
    chosen = range(steps)
    if 0 < limit < steps:
        chosen = sorted({round(i * (steps - 1) / (limit - 1)) for i in range(limit)})  # type: ignore[assignment]
    for step in chosen:
        where = root / f"s{step}"
        client, array = _fresh(where, case, "c")
        error: BaseException | None = None
        with Injector(code, fail_at=step, sticky=sticky).active():
            try:
                _do(client, array, case)
            except Exception as exc:  # judged below
                error = exc
        label = f"step {step}/{steps}"
        if error is None:
            successes += 1  # e.g. a failed directory flush, which is best effort
        else:
            failures += 1
            problems += [f"{label}: {p}" for p in error_problems(error, code)]
        problems += [f"{label}: bad signature {p}" for p in bad_signatures(where)]
        problems += [f"{label}: {p}" for p in _judge(client, array, case, error, where)]
        client.clear_locks()
        problems += [f"{label}: leftover {p}" for p in leftovers(where)]
        client.close()
        shutil.rmtree(where, ignore_errors=True)
    return {
        "case": case_name,
        "errno": errno.errorcode[code],
        "steps": steps,
        "tried": len(chosen),
        "failures": failures,
        "successes": successes,
        "problems": problems,
    }


def fill(root: Path, names: list[str], seed: int) -> dict[str, Any]:
    """Run the operations ``names`` on the filesystem of ``root`` while it is full.

    For each operation: a fresh array is set up, the filesystem is filled up to a random number
    of free bytes (0 to about one tile), the operation runs, its outcome is checked, the filler
    is removed (space freed), and the checks of the next writer run.
    """
    rng = np.random.default_rng(seed)
    problems: list[str] = []
    ops = failed = ok = 0
    for index, name in enumerate(names):
        case = cases()[name]
        where = root / f"r{index}"
        client, array = _fresh(where, case, "c")
        filler = root / "filler"
        _fill_up(filler, int(rng.integers(0, 96 * 80 * 8 + 8192)))
        error: BaseException | None = None
        try:
            _do(client, array, case)
        except Exception as exc:  # judged below
            error = exc
        ops += 1
        label = f"{name}#{index}"
        if error is None:
            ok += 1
        else:
            failed += 1
            problems += [f"{label}: {p}" for p in error_problems(error, errno.ENOSPC)]
        problems += [f"{label}: bad signature {p}" for p in bad_signatures(where)]
        filler.unlink()
        problems += [f"{label} (space freed): bad signature {p}" for p in bad_signatures(where)]
        problems += [f"{label}: {p}" for p in _judge(client, array, case, error, where)]
        client.clear_locks()
        problems += [f"{label}: leftover {p}" for p in leftovers(where)]
        client.close()
        shutil.rmtree(where, ignore_errors=True)
    return {"operations": ops, "failed": failed, "succeeded": ok, "problems": problems}


def _fill_up(filler: Path, leave: int) -> None:
    """Fill the filesystem of ``filler``, then give back ``leave`` bytes."""
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    block = b"\xff" * (1 << 16)
    try:
        while True:
            try:
                os.write(fd, block)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                if len(block) == 1:
                    break
                block = block[: len(block) // 2]
        size = os.fstat(fd).st_size
        os.ftruncate(fd, max(0, size - leave))
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    """The script entry point (see the module docstring)."""
    try:
        if argv[0] == "inject":
            limit = int(argv[4]) if len(argv) > 4 else 0
            sticky = len(argv) > 5 and argv[5] == "sticky"
            result = inject(argv[1], getattr(errno, argv[2]), Path(argv[3]), limit, sticky)
        else:
            result = fill(Path(argv[1]), argv[2].split(","), int(argv[3]))
    except BaseException:
        result = {"problems": ["raised: " + traceback.format_exc()]}
    print(json.dumps(result), flush=True)
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
