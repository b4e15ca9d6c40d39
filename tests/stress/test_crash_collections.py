"""Crash test of collection creation, deletion and clear: a writer is killed again and again.

The writer creates, fills, clears and deletes Array and VArray collections without pause,
logging ``B <json>`` before and ``E <i>`` after each operation (unbuffered appends).  After each
``SIGKILL`` the parent checks that every collection directory holds its metadata (a crash must
not leave a directory that blocks the name), that every collection holds either all its arrays
from before the interrupted operation or what the operation leaves (a clear: none; never a
subset), that every array holds its whole pattern (or fill, for an interrupted creation), and
that the next writer can create, clear and delete everything again.  At the end
``Client.clear_locks`` removes the scratch directories of the interrupted operations.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from stress_support import Budget, Summary  # type: ignore[import-not-found]

from deker import ArraySchema, AttributeSchema, Client, DimensionSchema, VArraySchema
from deker.storage import atomic
from deker.storage.layout import is_scratch_dir_name

pytestmark = pytest.mark.timeout(3600)

CTX = mp.get_context("forkserver")
CTX.set_forkserver_preload(["deker", "numpy", "h5py"])

NAMES = [f"c{i}" for i in range(5)]
SHAPE = (4, 6)
FILL = -1

State = dict[str, set[int]]  # collection name -> primary keys of its arrays


def _schema(name: str) -> ArraySchema | VArraySchema:
    dims = [DimensionSchema("y", SHAPE[0]), DimensionSchema("x", SHAPE[1])]
    attrs = [AttributeSchema("k", int, primary=True)]
    if int(name[1:]) % 2:
        return VArraySchema(dtype=np.int64, fill_value=FILL, dimensions=dims, vgrid=(2, 3), attributes=attrs)
    return ArraySchema(dtype=np.int64, fill_value=FILL, dimensions=dims, attributes=attrs)


def choose(rng: random.Random, state: State) -> list[Any]:
    name = rng.choice(NAMES)
    if name not in state:
        return ["create", name]
    roll = rng.random()
    if roll < 0.6:
        return ["add", name, rng.randrange(1_000_000)]
    return ["clear", name] if roll < 0.8 else ["delete", name]


def apply(state: State, op: list[Any]) -> State:
    new = {name: set(keys) for name, keys in state.items()}
    if op[0] == "create":
        new[op[1]] = set()
    elif op[0] == "add":
        new[op[1]].add(op[2])
    elif op[0] == "clear":
        new[op[1]] = set()
    else:
        del new[op[1]]
    return new


def run_op(client: Client, op: list[Any]) -> None:
    kind, name = op[0], op[1]
    if kind == "create":
        client.create_collection(name, _schema(name))
        return
    coll = client.get_collection(name)
    assert coll is not None, f"collection {name} vanished"
    if kind == "add":
        array = coll.create({"k": op[2]})
        array[:].update(np.full(SHAPE, op[2], dtype=np.int64))
    elif kind == "clear":
        coll.clear()
    else:
        coll.delete()


def writer(root: str, seed: int, state: State, log_path: str, ready: Any) -> None:
    """Run random collection operations until killed."""
    rng = random.Random(seed)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    with Client(f"file://{root}", write_lock_timeout=30, write_lock_check_interval=0.01, workers=2) as client:
        ready.set()
        for i in range(100_000):
            op = choose(rng, state)
            os.write(fd, ("B " + json.dumps(op) + "\n").encode())
            try:
                run_op(client, op)
            except Exception as exc:
                os.write(fd, f"X {i} {exc!r}\n".encode())
                return
            os.write(fd, f"E {i}\n".encode())
            state = apply(state, op)


def parse(text: str) -> tuple[list[list[Any]], list[Any] | None, str | None]:
    done, pending = [], None
    for line in text.split("\n")[:-1]:
        if line.startswith("B "):
            pending = json.loads(line[2:])
        elif line.startswith("E "):
            assert pending is not None
            done.append(pending)
            pending = None
        elif line.startswith("X "):
            return done, pending, line
    return done, pending, None


def observe(root: Path, before: State, after: State, unfinished: set[int], problems: list[str]) -> State:
    """Read every collection and array; compare with the states before and after.

    ``unfinished``: keys of arrays whose filling was interrupted (some of their files may
    still hold the fill value).
    """
    seen: State = {}
    collections = root / "collections"
    for entry in sorted(os.scandir(collections), key=lambda e: e.name) if collections.exists() else []:
        named = entry.is_dir() and not is_scratch_dir_name(entry.name)
        if named and not Path(entry.path, f"{entry.name}.json").is_file():
            problems.append(f"collection directory {entry.path} has no metadata file")
    with Client(f"file://{root}", write_lock_timeout=10, write_lock_check_interval=0.01) as client:
        for coll in client:
            keys = set()
            for array in coll:
                key = array.primary_attributes["k"]
                data = array[:].read()
                interrupted_add = key in unfinished
                # Each file (the Array, or each 2 x 2 tile of a VArray) holds all or nothing.
                step = (2, 2) if isinstance(coll.varray_schema, VArraySchema) else SHAPE
                for i in range(0, SHAPE[0], step[0]):
                    for j in range(0, SHAPE[1], step[1]):
                        part = data[i : i + step[0], j : j + step[1]]
                        filled = bool((part == FILL).all())
                        if not (bool((part == key).all()) or (filled and interrupted_add)):
                            problems.append(f"array {key} of {coll.name} holds a mix at {(i, j)}: {part}")
                keys.add(key)
            seen[coll.name] = keys
    for name in sorted(set(before) | set(after) | set(seen)):
        options = [before.get(name), after.get(name)]
        if seen.get(name) not in options:
            problems.append(f"collection {name}: {seen.get(name)} is neither {options[0]} nor {options[1]}")
    return seen


def test_killed_collection_operations_leave_whole_collections(
    tmp_path: Path, budget: Budget, summary: Summary, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "storage"
    Client(f"file://{root}").close()
    state: State = {}
    rng = random.Random(20261127)
    deadline = time.monotonic() + budget.scaled(25.0)
    iterations = mid_operation = operations = 0
    kinds: dict[str, int] = {}
    problems: list[str] = []
    unfinished: set[int] = set()
    # the deadline, but at least the fault counts asserted below (a loaded machine runs fewer)
    while (
        (time.monotonic() < deadline or iterations < 10 or mid_operation < 5)
        and iterations < 200
        and not problems
    ):
        iterations += 1
        log = tmp_path / f"log{iterations}.txt"
        ready = CTX.Event()
        proc = CTX.Process(target=writer, args=(str(root), rng.randrange(1 << 30), state, str(log), ready))
        proc.start()
        assert ready.wait(120), "the writer did not start"
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(60)
        done, pending, error = parse(log.read_text())
        assert error is None, f"iteration {iterations}: the writer failed: {error}"
        operations += len(done)
        for op in done:
            state = apply(state, op)
        after = state
        if pending is not None:
            mid_operation += 1
            kinds[pending[0]] = kinds.get(pending[0], 0) + 1
            after = apply(state, pending)
        found: list[str] = []
        if pending is not None and pending[0] == "add":
            unfinished.add(pending[2])
        state = observe(root, state, after, unfinished, found)
        problems += [f"iteration {iterations} (interrupted {pending}): {p}" for p in found]
        log.unlink()
    monkeypatch.setattr(atomic, "SCRATCH_MIN_AGE", 0.0)
    with Client(f"file://{root}", write_lock_timeout=10, write_lock_check_interval=0.01) as client:
        removed = client.clear_locks()
        scratch = atomic.find_scratch_dirs(root)
        report = client.check_integrity(2, stop_on_error=False)
        for name in NAMES:  # every name can be used again: created, filled, cleared, deleted
            coll = client.get_collection(name) or client.create_collection(name, _schema(name))
            coll.create({"k": -5})[:].update(np.zeros(SHAPE, dtype=np.int64))
            coll.clear()
            assert list(coll) == []
            coll.delete()
    summary.values.update(
        iterations=iterations,
        faults_injected=iterations,
        killed_mid_operation=mid_operation,
        operations_completed=operations,
        interrupted=kinds,
        problems=len(problems),
        removed_by_clear_locks=len(removed),
    )
    assert problems == [], "\n".join(problems[:20])
    assert scratch == []
    assert report.problems == []
    assert iterations >= 10 and mid_operation >= 5
