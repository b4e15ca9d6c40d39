"""``python -m benchmarks --compare REV``: this checkout's deker against another revision's.

Issue 16 asks that a change of structure be "no slower on any scenario". On a shared virtual
machine one run of each side cannot decide that: identical runs differ by up to 2x. So this
mode runs both sides several times, **alternating** which one goes first, each run in a fresh
interpreter, one scenario at a time (all the rounds of both sides of a scenario before the
next one, so that the two sides of a step are measured close together), and compares the
medians of all repetitions of a step.

How a side is run: ``REV``'s ``deker`` and ``deker_dask`` are exported with ``git archive``
into a temporary folder that comes first on ``PYTHONPATH``; this checkout comes after it, so
both sides run *this* checkout's benchmark code (the same measurement, the same verification)
and differ only in the deker they import. Every run is ``python -m benchmarks --only ...
--out FILE``, started from a folder outside the checkout, without the memory warm-up (the
parent warms up once). Only deker's own measurements are compared (engine ``deker`` of the
scenarios and of the zarr suite, and the Dask suite's records): the peers ran in both runs and
only cost time here.

The verdict of a step is ``slower`` when the head's median exceeds the base's by more than
``--tolerance`` (default 5 %) *and* the head's fastest repetition is slower than the base's
median, so a single outlier on either side does not decide it; ``faster`` the other way round;
``same`` otherwise. The spread (slowest / fastest repetition) of each side is printed beside it,
so a reader sees how much the machine moved during the run.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("deker", "deker_dask")
SIDES = ("base", "head")

#: A measured step: (scenario, name, and for the Dask suite's records the executor and path).
Key = tuple[str, ...]


def export(rev: str, dest: Path, repo: Path = ROOT) -> str:
    """Write the packages of ``rev`` into ``dest``; return the full commit id.

    Parameters
    ----------
    rev : str
        Any revision git understands (a commit, a branch, ``HEAD~3``).
    dest : pathlib.Path
        A new or empty folder; it receives ``deker/`` and ``deker_dask/``.
    repo : pathlib.Path
        The git checkout to read ``rev`` from.

    Returns
    -------
    str
        The commit ``rev`` names.

    Raises
    ------
    ValueError
        When git does not know ``rev``.
    """
    found = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if found.returncode != 0:
        raise ValueError(f"--compare {rev!r}: git knows no such commit in {repo}")
    commit = found.stdout.strip()
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", "--format=tar", commit, *PACKAGES],
        capture_output=True,
        check=True,
    )
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return commit


def side_env(side_root: Path | None) -> dict[str, str]:
    """The environment of one run: ``side_root`` (the base's packages) before this checkout."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    paths = [str(side_root)] if side_root is not None else []
    env["PYTHONPATH"] = os.pathsep.join([*paths, str(ROOT)])
    return env


def measurements(rows: Sequence[Mapping[str, Any]]) -> dict[Key, list[float]]:
    """Deker's repetitions of every step in the JSON lines of one run, in seconds per operation.

    Parameters
    ----------
    rows : sequence of mapping
        The records one ``python -m benchmarks`` run wrote.

    Returns
    -------
    dict
        Seconds per operation of each repetition, by step. Memory steps are left out (they
        are not times).
    """
    out: dict[Key, list[float]] = {}
    for row in rows:
        if "error" in row:
            continue
        if row.get("engine") == "deker" and "runs" in row and "memory_ratio" not in row:
            ops = float(row.get("ops", 1))
            key: Key = (str(row["scenario"]), str(row["name"]))
            out.setdefault(key, []).extend(float(s) / ops for s in row["runs"])
        elif row.get("kind") == "extra" and "seconds" in row:
            key = ("g", str(row["name"]), str(row.get("executor", "")), str(row.get("path", "")))
            out.setdefault(key, []).append(float(row["seconds"]))
    return out


@dataclass(frozen=True)
class Verdict:
    """The comparison of one step: medians, spreads and what they say."""

    key: Key
    base: tuple[float, ...]
    head: tuple[float, ...]
    tolerance: float

    @property
    def ratio(self) -> float:
        """Head median / base median (below 1: the head is faster)."""
        return statistics.median(self.head) / statistics.median(self.base)

    @property
    def word(self) -> str:
        """``"slower"``, ``"faster"`` or ``"same"`` (see the module docstring)."""
        base, head = statistics.median(self.base), statistics.median(self.head)
        if head > base * (1 + self.tolerance) and min(self.head) > base:
            return "slower"
        if base > head * (1 + self.tolerance) and min(self.base) > head:
            return "faster"
        return "same"


def compare(
    found: Mapping[str, Sequence[Mapping[Key, Sequence[float]]]], tolerance: float = 0.05
) -> list[Verdict]:
    """One verdict per step measured on both sides.

    Parameters
    ----------
    found : mapping
        For ``"base"`` and ``"head"``, the :func:`measurements` of each of their runs.
    tolerance : float
        How much slower a median may be before a step is called slower.

    Returns
    -------
    list of Verdict
        In the order the steps were first measured.
    """
    pooled: dict[str, dict[Key, list[float]]] = {side: {} for side in SIDES}
    for side in SIDES:
        for run in found.get(side, ()):
            for key, values in run.items():
                pooled[side].setdefault(key, []).extend(values)
    keys = [k for k in pooled["head"] if k in pooled["base"]]
    return [Verdict(k, tuple(pooled["base"][k]), tuple(pooled["head"][k]), tolerance) for k in keys]


def table(verdicts: Sequence[Verdict], base: str, head: str) -> str:
    """The verdicts as a Markdown table."""
    lines = [
        f"| step | base {base[:10]} median | head {head} median | head/base | spread base / head | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for v in verdicts:
        spread = f"{max(v.base) / min(v.base):.2f} / {max(v.head) / min(v.head):.2f}"
        b, h = statistics.median(v.base), statistics.median(v.head)
        lines.append(
            f"| {' '.join(v.key)} | {_seconds(b)} | {_seconds(h)} | {v.ratio:.3f} | {spread} | {v.word} |"
        )
    return "\n".join(lines)


def _seconds(value: float) -> str:
    return f"{value * 1000:.3f} ms" if value < 1 else f"{value:.3f} s"


def _one_run(
    side_root: Path | None, workdir: Path, args: Sequence[str], label: str
) -> dict[Key, list[float]]:
    out = workdir / f"{label}.jsonl"
    cmd = [sys.executable, "-m", "benchmarks", *args, "--warm-gib", "0", "--out", str(out)]
    proc = subprocess.run(
        cmd, cwd=workdir, env=side_env(side_root), capture_output=True, text=True, timeout=7200
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    errors = [r for r in rows if "error" in r]
    if proc.returncode != 0 and not rows:
        raise RuntimeError(f"the {label} run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    expected = (side_root or ROOT) / "deker"
    imported = next((r.get("deker_path") for r in rows if r.get("kind") == "machine"), None)
    if imported is None or Path(imported).resolve() != expected.resolve():
        raise RuntimeError(f"the {label} run imported deker from {imported}, not from {expected}")
    for row in errors:
        print(f"{label}: error in scenario {row.get('scenario')}: {row['error']}", file=sys.stderr)
    return measurements(rows)


def one_scenario_each(args: Sequence[str]) -> list[list[str]]:
    """Split the options of a run into one run's options per scenario of its ``--only``.

    Both sides of a scenario then run all their rounds one after the other before the next
    scenario starts: the two sides of a step are measured minutes apart, not a whole run apart
    (over half an hour at full size, while the machine drifts).

    Parameters
    ----------
    args : sequence of str
        The options of every run; without ``--only`` they are kept whole.

    Returns
    -------
    list of list of str
        One option list per scenario letter, in the order given.
    """
    if "--only" not in args:
        return [list(args)]
    at = list(args).index("--only")
    letters = dict.fromkeys(args[at + 1])  # (in order, once each)
    return [[*args[:at], "--only", letter, *args[at + 2 :]] for letter in letters]


def run(
    rev: str,
    rounds: int,
    args: Sequence[str],
    tolerance: float = 0.05,
    tmpdir: str | None = None,
    emit: Callable[[dict[str, Any]], None] | None = None,
) -> int:
    """Run both sides ``rounds`` times each, alternating, and print the verdicts.

    Parameters
    ----------
    rev : str
        The base revision.
    rounds : int
        Runs per side and scenario (the order alternates: base first in even rounds, head first
        in odd); the scenarios of ``--only`` run one after the other (:func:`one_scenario_each`).
    args : sequence of str
        The options of every run (``--only``, ``--sizes``, ``--reps``...).
    tolerance : float
        See :class:`Verdict`.
    tmpdir : str, optional
        Where the temporary folder goes.
    emit : callable, optional
        Called with one JSON-ready record per verdict.

    Returns
    -------
    int
        1 if any step is slower, else 0.
    """
    with tempfile.TemporaryDirectory(prefix="deker-compare-", dir=tmpdir) as tmp:
        work = Path(tmp)
        commit = export(rev, work / "base")
        head = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True
        ).stdout.strip()
        found: dict[str, list[dict[Key, list[float]]]] = {side: [] for side in SIDES}
        roots = {"base": work / "base", "head": None}
        for part in one_scenario_each(args):
            what = part[part.index("--only") + 1] if "--only" in part else "all"
            for number in range(max(1, rounds)):
                order = SIDES if number % 2 == 0 else SIDES[::-1]
                for side in order:
                    print(
                        f"scenario {what}, round {number + 1}/{rounds}: {side}", file=sys.stderr, flush=True
                    )
                    found[side].append(_one_run(roots[side], work, part, f"{side}{what}{number}"))
    verdicts = compare(found, tolerance)
    for v in verdicts:
        if emit is not None:
            emit(
                {
                    "kind": "compare",
                    "step": list(v.key),
                    "base": commit,
                    "head": head,
                    "base_runs": list(v.base),
                    "head_runs": list(v.head),
                    "ratio": round(v.ratio, 4),
                    "verdict": v.word,
                }
            )
    print()
    print(table(verdicts, commit, head))
    slower = [v for v in verdicts if v.word == "slower"]
    print(
        f"\n{len(verdicts)} steps: {len(slower)} slower, "
        f"{sum(v.word == 'faster' for v in verdicts)} faster (tolerance {tolerance:.0%}, {rounds} rounds)"
    )
    return 1 if slower else 0
