"""Tests of ``python -m benchmarks --compare REV`` (benchmarks/compare.py).

The comparison itself is a measurement and lives in the benchmarks; these tests check that the
mode runs the two sides it says it runs and that its verdicts follow its stated rule.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from benchmarks import compare

ROOT = Path(__file__).resolve().parents[1]


def _git_head() -> str:
    proc = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"not a git checkout ({proc.stderr.strip()}): --compare reads revisions with git")
    return proc.stdout.strip()


def test_export_writes_the_packages_of_the_revision(tmp_path: Path) -> None:
    head = _git_head()
    assert compare.export("HEAD", tmp_path) == head
    assert (tmp_path / "deker" / "__init__.py").is_file()
    assert (tmp_path / "deker_dask" / "__init__.py").is_file()
    assert not (tmp_path / "benchmarks").exists()  # both sides run this checkout's benchmarks


def test_export_refuses_an_unknown_revision(tmp_path: Path) -> None:
    _git_head()
    with pytest.raises(ValueError, match="no such commit"):
        compare.export("no-such-branch-anywhere", tmp_path)
    assert not tmp_path.joinpath("deker").exists()


def test_measurements_are_seconds_per_operation_of_deker_only() -> None:
    rows = [
        {"scenario": "a", "name": "array_row_reads", "engine": "deker", "runs": [2.0, 4.0], "ops": 100},
        {"scenario": "a", "name": "array_row_reads", "engine": "h5py", "runs": [1.0], "ops": 100},
        {
            "scenario": "e",
            "name": "varray_read_peak_memory",
            "engine": "deker",
            "runs": [1.0],
            "memory_ratio": 1.0,
        },
        {"scenario": "b", "engine": "deker", "error": "boom"},
        {"kind": "extra", "name": "dask_varray_read", "executor": "dask", "path": "v[:]", "seconds": 0.5},
    ]
    assert compare.measurements(rows) == {
        ("a", "array_row_reads"): [0.02, 0.04],
        ("g", "dask_varray_read", "dask", "v[:]"): [0.5],
    }


@pytest.mark.parametrize(
    ("base", "head", "word"),
    [
        ((1.0, 1.0, 1.0), (1.2, 1.2, 1.3), "slower"),
        ((1.2, 1.2, 1.3), (1.0, 1.0, 1.0), "faster"),
        ((1.0, 1.0, 1.0), (1.02, 1.0, 1.04), "same"),  # within the tolerance
        ((1.0, 1.0, 1.0), (0.9, 1.3, 1.4), "same"),  # the head's fastest run is not slower
    ],
)
def test_verdicts_follow_the_documented_rule(
    base: tuple[float, ...], head: tuple[float, ...], word: str
) -> None:
    found = {"base": [{("a", "x"): list(base)}], "head": [{("a", "x"): list(head)}]}
    [verdict] = compare.compare(found, tolerance=0.05)
    assert verdict.word == word


def test_runs_of_a_side_are_pooled_and_steps_of_one_side_only_are_left_out() -> None:
    found = {
        "base": [{("a", "x"): [1.0], ("a", "only_base"): [1.0]}, {("a", "x"): [3.0]}],
        "head": [{("a", "x"): [2.0]}, {("a", "x"): [2.0]}],
    }
    [verdict] = compare.compare(found)
    assert verdict.base == (1.0, 3.0) and verdict.head == (2.0, 2.0)
    assert verdict.ratio == 1.0


def test_each_scenario_is_compared_on_its_own() -> None:
    common = ["--sizes", "tiny", "--reps", "2"]
    assert compare.one_scenario_each([*common, "--only", "adzd"]) == [
        [*common, "--only", "a"],
        [*common, "--only", "d"],
        [*common, "--only", "z"],
    ]
    assert compare.one_scenario_each(common) == [common]


@pytest.mark.timeout(300)
def test_a_tiny_comparison_runs_both_sides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    head = _git_head()
    rows: list[dict[str, object]] = []
    code = compare.run(
        "HEAD", 1, ["--sizes", "tiny", "--reps", "1", "--only", "a"], tmpdir=str(tmp_path), emit=rows.append
    )
    assert code in (0, 1)  # a verdict, not a failure: tiny timings may well differ
    steps = {tuple(r["step"]) for r in rows}  # type: ignore[arg-type]
    assert ("a", "array_first_write") in steps and ("a", "array_row_reads") in steps
    assert all(r["base"] == head and r["verdict"] in ("slower", "faster", "same") for r in rows)
    assert "head/base" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())  # the exported revision and the runs' files are gone
