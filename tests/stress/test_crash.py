"""Crash test: a writer process is killed (``SIGKILL``) at a random moment, again and again.

The writer runs random operations through the public API without pause: VArray updates
(whole tiles and unaligned regions), clears, custom-attribute updates, creations and deletions
of VArrays; partial, whole and clearing writes of a big Array (1.28 MB: changed in place under
the undo journal) and of small Arrays, their creation and deletion.  Before an operation it
logs ``B <json>``, after it ``E <i>`` (unbuffered appends, so the log survives the kill).  The
parent knows the content of everything from the operations that completed, so after each kill
it checks, file by file, that every array, tile and metadata holds either its content before
the interrupted operation or after it (never a mix, never unreadable), that lookups agree with
iteration, that nothing blocks a reader or a writer (short lock timeouts), and that every
leftover of the interrupted write is cleaned by the next writer or ``clean_storage``.  The
state it observed becomes the model for the next round.
"""

from __future__ import annotations

import copy
import json
import multiprocessing as mp
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from stress_support import Budget, Summary, leftover_lock_files  # type: ignore[import-not-found]

from deker import ArraySchema, AttributeSchema, Client, DimensionSchema, VArraySchema
from deker.storage.cleanup import clean_storage
from deker.storage.lockinfo import clear_locks
from deker.storage.locks import LockSettings

pytestmark = pytest.mark.timeout(3600)

CTX = mp.get_context("forkserver")
CTX.set_forkserver_preload(["deker", "numpy", "h5py"])

VSHAPE, TILE = (16, 48), (8, 16)
BIG = (400, 400)
SMALL = (4, 5)
NAMES = [f"s{i}" for i in range(6)]


def _schemas() -> dict[str, Any]:
    attrs = [AttributeSchema("name", str, primary=True), AttributeSchema("note", int, primary=False)]
    vdims = [DimensionSchema("y", VSHAPE[0]), DimensionSchema("x", VSHAPE[1])]
    return {
        "va": VArraySchema(
            dtype=np.int64, fill_value=-1, dimensions=vdims, arrays_shape=TILE, attributes=attrs
        ),
        "vb": VArraySchema(
            dtype=np.int64, fill_value=-1, dimensions=vdims, arrays_shape=TILE, attributes=attrs
        ),
        "big": ArraySchema(
            dtype=np.float64,
            dimensions=[DimensionSchema("y", BIG[0]), DimensionSchema("x", BIG[1])],
            attributes=attrs,
        ),
        "small": ArraySchema(
            dtype=np.int32,
            fill_value=-7,
            dimensions=[DimensionSchema("y", SMALL[0]), DimensionSchema("x", SMALL[1])],
            attributes=attrs,
        ),
    }


# --------------------------------------------------------------------------- the model


@dataclass
class Model:
    """What the storage holds (per object: data and the custom attribute ``note``)."""

    v: np.ndarray = field(default_factory=lambda: np.full(VSHAPE, -1, dtype=np.int64))
    v_note: int | None = None
    big: np.ndarray = field(default_factory=lambda: np.full(BIG, np.nan))
    big_note: int | None = None
    small: dict[str, tuple[int | None, np.ndarray]] = field(default_factory=dict)
    w: tuple[int | None, np.ndarray] | None = None


def _slices(region: list[list[int]]) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in region)


def apply(model: Model, op: list[Any], k: int) -> Model:
    """The model after ``op`` (value ``k``) completed."""
    m = copy.deepcopy(model)
    kind = op[0]
    if kind in ("v_write", "v_clear"):
        m.v[_slices(op[1])] = k if kind == "v_write" else -1
    elif kind == "v_note":
        m.v_note = k
    elif kind in ("big_write", "big_clear"):
        m.big[_slices(op[1])] = float(k) if kind == "big_write" else np.nan
    elif kind == "big_whole":
        m.big[...] = float(k)
    elif kind == "big_note":
        m.big_note = k
    elif kind == "small_create":
        m.small[op[1]] = (k, np.full(SMALL, -7, dtype=np.int32))
    elif kind == "small_write":
        note, data = m.small[op[1]]
        data = data.copy()
        data[_slices(op[2])] = k % 100_000
        m.small[op[1]] = (note, data)
    elif kind == "small_note":
        m.small[op[1]] = (k, m.small[op[1]][1])
    elif kind == "small_delete":
        del m.small[op[1]]
    elif kind == "w_create":
        m.w = (k, np.full(VSHAPE, -1, dtype=np.int64))
    elif kind == "w_write":
        assert m.w is not None
        data = m.w[1].copy()
        data[_slices(op[1])] = k
        m.w = (m.w[0], data)
    elif kind == "w_delete":
        m.w = None
    else:  # pragma: no cover
        raise AssertionError(kind)
    return m


def _region(
    rng: random.Random, shape: tuple[int, ...], aligned: tuple[int, ...] | None = None
) -> list[list[int]]:
    out = []
    for axis, n in enumerate(shape):
        if aligned:
            t = aligned[axis]
            a = rng.randrange(n // t)
            b = rng.randrange(a, n // t) + 1
            out.append([a * t, b * t])
        else:
            a = rng.randrange(n)
            out.append([a, rng.randrange(a, n) + 1])
    return out


def choose(rng: random.Random, model: Model) -> list[Any]:
    """A random next operation that is valid for ``model``."""
    while True:
        kind = rng.choice(
            ["v_write", "v_write", "v_tiles", "v_clear", "v_note", "big_write", "big_write", "big_whole",
             "big_clear", "big_note", "small_create", "small_write", "small_note", "small_delete",
             "w_create", "w_write", "w_delete"]
        )  # fmt: skip
        if kind == "v_tiles":
            return ["v_write", _region(rng, VSHAPE, TILE)]
        if kind in ("v_write", "v_clear"):
            return [kind, _region(rng, VSHAPE)]
        if kind in ("big_write", "big_clear"):
            return [kind, _region(rng, BIG)]
        if kind in ("v_note", "big_note", "big_whole"):
            return [kind]
        absent = [n for n in NAMES if n not in model.small]
        present = sorted(model.small)
        if kind == "small_create" and absent:
            return [kind, rng.choice(absent)]
        if kind in ("small_write", "small_note", "small_delete") and present:
            name = rng.choice(present)
            return [kind, name, _region(rng, SMALL)] if kind == "small_write" else [kind, name]
        if kind == "w_create" and model.w is None:
            return [kind]
        if kind in ("w_write", "w_delete") and model.w is not None:
            return [kind, _region(rng, VSHAPE)] if kind == "w_write" else [kind]


# --------------------------------------------------------------------------- the writer


def _open(client: Client) -> dict[str, Any]:
    return {name: client.get_collection(name) for name in ("va", "vb", "big", "small")}


def run_op(colls: dict[str, Any], op: list[Any], k: int) -> None:
    """Perform ``op`` with value ``k`` through the public API."""
    kind = op[0]
    if kind.startswith("v_"):
        v = colls["va"].filter({"name": "v"}).last()
        if kind == "v_write":
            region = _slices(op[1])
            v[region].update(np.full([s.stop - s.start for s in region], k, dtype=np.int64))
        elif kind == "v_clear":
            v[_slices(op[1])].clear()
        else:
            v.update_custom_attributes({"note": k})
    elif kind.startswith("big_"):
        b = colls["big"].filter({"name": "b"}).last()
        if kind == "big_write":
            region = _slices(op[1])
            b[region].update(np.full([s.stop - s.start for s in region], float(k)))
        elif kind == "big_clear":
            b[_slices(op[1])].clear()
        elif kind == "big_whole":
            b[:].update(np.full(BIG, float(k)))
        else:
            b.update_custom_attributes({"note": k})
    elif kind == "small_create":
        colls["small"].create({"name": op[1]}, {"note": k})
    elif kind.startswith("small_"):
        a = colls["small"].filter({"name": op[1]}).last()
        if kind == "small_write":
            region = _slices(op[2])
            a[region].update(np.full([s.stop - s.start for s in region], k % 100_000, dtype=np.int32))
        elif kind == "small_note":
            a.update_custom_attributes({"note": k})
        else:
            a.delete()
    elif kind == "w_create":
        colls["vb"].create({"name": "w"}, {"note": k})
    else:
        w = colls["vb"].filter({"name": "w"}).last()
        if kind == "w_write":
            region = _slices(op[1])
            w[region].update(np.full([s.stop - s.start for s in region], k, dtype=np.int64))
        else:
            w.delete()


def crash_writer(root: str, seed: int, model: Model, base: int, log_path: str, ready: Any) -> None:
    """Run random operations until killed; log ``B <json>`` before and ``E <i>`` after each."""
    rng = random.Random(seed)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    with Client(f"file://{root}", write_lock_timeout=30, write_lock_check_interval=0.01, workers=3) as client:
        colls = _open(client)
        ready.set()
        for i in range(100_000):
            op = choose(rng, model)
            k = base + i
            os.write(fd, ("B " + json.dumps({"i": i, "op": op, "k": k}) + "\n").encode())
            try:
                run_op(colls, op, k)
            except Exception as exc:
                os.write(fd, f"X {i} {exc!r}\n".encode())
                return
            os.write(fd, f"E {i}\n".encode())
            model = apply(model, op, k)


# --------------------------------------------------------------------------- the checks


def _parse_log(text: str) -> tuple[list[tuple[list[Any], int]], tuple[list[Any], int] | None, str | None]:
    """Completed operations, the interrupted one (if any), and an error the writer logged."""
    done, pending = [], None
    for line in text.split("\n")[:-1]:  # the last piece is empty or a line cut by the kill
        if line.startswith("B "):
            entry = json.loads(line[2:])
            pending = (entry["op"], entry["k"])
        elif line.startswith("E "):
            assert pending is not None
            done.append(pending)
            pending = None
        elif line.startswith("X "):
            return done, pending, line
    return done, pending, None


def _one_of(actual: Any, options: list[Any], what: str, problems: list[str]) -> Any:
    for option in options:
        if isinstance(option, np.ndarray) and isinstance(actual, np.ndarray):
            if option.shape == actual.shape and np.array_equal(option, actual, equal_nan=True):
                return option
        elif option == actual:
            return option
    problems.append(f"{what}: neither its content before nor after the interrupted operation")
    return actual


def _tiles(before: np.ndarray, after: np.ndarray, actual: np.ndarray, what: str, problems: list[str]) -> None:
    for i in range(0, VSHAPE[0], TILE[0]):
        for j in range(0, VSHAPE[1], TILE[1]):
            t = (slice(i, i + TILE[0]), slice(j, j + TILE[1]))
            options = [before[t], after[t]]
            _one_of(actual[t], options, f"{what} tile ({i // TILE[0]}, {j // TILE[1]})", problems)


def observe(root: Path, before: Model, after: Model, problems: list[str]) -> Model:
    """Read everything; check it against ``before`` / ``after``; return what is there."""
    seen = Model()
    with Client(f"file://{root}", write_lock_timeout=10, write_lock_check_interval=0.01) as client:
        colls = _open(client)
        v = colls["va"].filter({"name": "v"}).last()
        seen.v = v[:].read()
        _tiles(before.v, after.v, seen.v, "VArray v", problems)
        seen.v_note = _one_of(
            v.custom_attributes["note"], [before.v_note, after.v_note], "note of v", problems
        )
        b = colls["big"].filter({"name": "b"}).last()
        seen.big = _one_of(b[:].read(), [before.big, after.big], "big Array data", problems)
        seen.big_note = _one_of(
            b.custom_attributes["note"], [before.big_note, after.big_note], "note of b", problems
        )
        found = {a.primary_attributes["name"]: a for a in colls["small"]}
        for name in NAMES:
            by_key = colls["small"].filter({"name": name}).last()
            if (by_key is None) != (name not in found):
                problems.append(f"small {name}: lookup by key and iteration disagree")
            options = [m.small.get(name) for m in (before, after)]
            if by_key is None:
                if None not in options:
                    problems.append(f"small {name} vanished")
                continue
            state = (by_key.custom_attributes["note"], by_key[:].read())
            if not any(
                o is not None and o[0] == state[0] and np.array_equal(o[1], state[1]) for o in options
            ):
                problems.append(f"small {name}: {state[0]} is neither its state before nor after")
            seen.small[name] = state
        w = colls["vb"].filter({"name": "w"}).last()
        if len(list(colls["vb"])) != (w is not None):
            problems.append("VArray w: lookup by key and iteration disagree")
        if w is not None:
            data = w[:].read()
            old = before.w[1] if before.w is not None else np.full(VSHAPE, -1, dtype=np.int64)
            new = after.w[1] if after.w is not None else np.full(VSHAPE, -1, dtype=np.int64)
            _tiles(old, new, data, "VArray w", problems)  # a deletion removes tiles one by one
            notes = [m.w[0] for m in (before, after) if m.w is not None]
            seen.w = (_one_of(w.custom_attributes["note"], notes, "note of w", problems), data)
        elif before.w is not None and after.w is not None:
            problems.append("VArray w vanished")
        # Nothing blocks a writer either: write back what is there (recovering journals).
        v[0:1, 0:1].update(seen.v[0:1, 0:1])
        b[0:1, 0:2].update(seen.big[0:1, 0:2])
    return seen


def _setup(root: Path) -> Model:
    with Client(f"file://{root}") as client:
        colls = {name: client.create_collection(name, schema) for name, schema in _schemas().items()}
        colls["va"].create({"name": "v"}, {"note": 0})
        b = colls["big"].create({"name": "b"}, {"note": 0})
        b[:].update(np.zeros(BIG))
    model = Model(v_note=0, big_note=0)
    model.big[...] = 0.0
    return model


def test_killed_writers_leave_old_or_new_content(tmp_path: Path, budget: Budget, summary: Summary) -> None:
    root = tmp_path / "storage"
    model = _setup(root)
    rng = random.Random(20260101)
    deadline = time.monotonic() + budget.scaled(45.0)
    iterations = mid_operation = operations = 0
    kinds: dict[str, int] = {}
    problems: list[str] = []
    # the deadline, but at least the fault counts asserted below (a loaded machine runs fewer)
    while (
        (time.monotonic() < deadline or iterations < 10 or mid_operation < 5)
        and iterations < 200
        and not problems
    ):
        iterations += 1
        log = tmp_path / f"log{iterations}.txt"
        ready = CTX.Event()
        proc = CTX.Process(
            target=crash_writer,
            args=(str(root), rng.randrange(1 << 30), model, iterations * 100_000, str(log), ready),
        )
        proc.start()
        assert ready.wait(120), "the writer did not start"
        time.sleep(rng.uniform(0.0, 0.5))  # the fault: a kill at a random moment
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(60)
        done, pending, error = _parse_log(log.read_text())
        assert error is None, f"iteration {iterations}: the writer failed: {error}"
        operations += len(done)
        for op, k in done:
            model = apply(model, op, k)
        after = model
        if pending is not None:
            mid_operation += 1
            kinds[pending[0][0]] = kinds.get(pending[0][0], 0) + 1
            after = apply(model, *pending)
        found: list[str] = []
        model = observe(root, model, after, found)
        problems += [f"iteration {iterations} (interrupted {pending}): {p}" for p in found]
        log.unlink()
    clean_storage(root, LockSettings(timeout=10, interval=0.01))  # journals, temporary files
    clear_locks(root)  # markers of the killed writers
    leftovers = leftover_lock_files(root)
    summary.values.update(
        iterations=iterations,
        faults_injected=iterations,
        killed_mid_operation=mid_operation,
        operations_completed=operations,
        interrupted=kinds,
        problems=len(problems),
        leftovers_after_clean=len(leftovers),
    )
    assert problems == [], "\n".join(problems[:20])
    assert leftovers == []
    assert iterations >= 10 and mid_operation >= 5
