"""Smoke tests of the benchmark runner: every scenario runs at a tiny size and checks its data.

The speed targets themselves live in benchmarks/ (``python -m benchmarks``), never here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from benchmarks import report, runner, scenarios

ROOT = Path(__file__).resolve().parents[1]
SMOKE = replace(scenarios.TINY, reps=1)


@pytest.mark.timeout(120)
def test_every_scenario_runs_and_verifies(tmp_path: Path) -> None:
    rows = scenarios.run_scenarios(tmp_path, SMOKE)
    assert not [r for r in rows if "error" in r], rows
    names = {(r["scenario"], r["name"], r["engine"]) for r in rows}
    for name in runner.STEPS:
        scenario = next(r["scenario"] for r in rows if r["name"] == name)
        assert {(scenario, name, "deker"), (scenario, name, "h5py")} <= names, name
    assert all(r["verified"] and len(r["runs"]) == SMOKE.reps and r["median"] > 0 for r in rows)
    memory = [r for r in rows if r["name"] == "varray_read_peak_memory"]
    assert all(r["memory_ratio"] > 0 for r in memory)
    stored = [r for r in rows if r["name"] == "zstd_varray_write"]
    assert all(r["stored_bytes"] > 0 for r in stored)
    assert not list(tmp_path.iterdir())  # every scenario removes its files
    assert ("b", "varray_full_read", "os_tiles") in names  # the floor of the tiled layout


def test_a_failing_scenario_is_reported_and_the_others_run(tmp_path: Path) -> None:
    broken = replace(SMOKE, vgrid=3)  # 256 is not a multiple of 3: the VArray schema is refused
    rows = scenarios.run_scenarios(tmp_path, broken, only="ab")
    errors = [r for r in rows if "error" in r]
    assert [r["scenario"] for r in errors] == ["b"]
    assert {r["name"] for r in rows if r.get("scenario") == "a"} >= {"array_first_write", "array_row_reads"}


def test_verification_catches_wrong_data() -> None:
    first, second = scenarios.pattern((64, 64), np.float32, 0), scenarios.pattern((64, 64), np.float32, 1)
    assert not np.array_equal(first, second)  # every rewrite and region write changes the data
    with pytest.raises(AssertionError, match="verification failed"):
        scenarios.check(np.array_equal(first, second), "a read")


def test_windows_cross_tile_borders() -> None:
    sizes = scenarios.QUICK
    tile = sizes.varray_side // sizes.vgrid
    for y, x in scenarios._windows(sizes):
        for start in (y, x):
            assert start // tile != (start + sizes.window - 1) // tile  # two tiles on each axis
            assert 0 <= start <= sizes.varray_side - sizes.window


def test_summary_targets_and_docs(tmp_path: Path) -> None:
    def row(name: str, engine: str, median: float, **extra: object) -> dict[str, object]:
        return {
            "scenario": "b",
            "name": name,
            "engine": engine,
            "median": median,
            "ops": 1,
            "verified": True,
            **extra,
        }

    rows = [
        row("varray_first_write", "deker", 0.12, bytes=1 << 20),
        row("varray_first_write", "h5py", 0.10, bytes=1 << 20),
        row("varray_full_read", "deker", 0.30, bytes=1 << 20),
        row("varray_full_read", "h5py", 0.10, bytes=1 << 20),
        row("varray_full_read", "os_tiles", 0.12, bytes=1 << 20),
        row("varray_window_reads", "deker", 2.0, ops=200),
        row("varray_window_reads", "h5py", 1.0, ops=200),
        {**row("array_create", "deker", 1.0, ops=3000), "scenario": "d"},
        {**row("array_create", runner.LEGACY, 1.0, ops=500), "scenario": "d"},
    ]
    summary = {s["name"]: s for s in runner.summarize(rows)}
    assert summary["varray_first_write"]["met"] is True  # 1.2x <= 1.3x
    assert summary["varray_window_reads"]["met"] is False  # 0.5x rate < 0.6x
    assert summary["array_create"]["speedup_vs_legacy"] == 6.0 and summary["array_create"]["met"] is True
    table = report.text_table(list(summary.values()))
    assert "0.50x rate" in table and "1.20x time" in table and "6.0x faster" in table
    chart = report.write_chart(list(summary.values()), tmp_path)
    assert chart.exists() and chart.stat().st_size > 500
    page = tmp_path / "PERFORMANCE.md"
    page.write_text("# Performance\n\nmethod text\n")
    report.update_docs(page, rows, list(summary.values()), chart)
    report.update_docs(page, rows, list(summary.values()), chart)  # replaced, not appended twice
    text = page.read_text()
    assert text.count(report.END) == 1 and "method text" in text and "**NO**" in text
    assert summary["varray_full_read"]["time_vs_os_tiles"] == 2.5
    assert "| (b) VArray: full read | 0.12 s (8 MiB/s) | 1.20x time | 2.50x time |" in text


@pytest.mark.timeout(180)
def test_command_line_quick_subset(tmp_path: Path) -> None:
    out = tmp_path / "run.jsonl"
    code = runner.main(
        ["--sizes", "tiny", "--reps", "1", "--only", "a", "--out", str(out), "--tmpdir", str(tmp_path)]
    )
    assert code == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["kind"] == "machine" and lines[0]["cores"] == os.cpu_count()
    assert {r["name"] for r in lines if r.get("kind") == "summary"} == {
        "array_first_write",
        "array_rewrite",
        "array_full_read",
        "array_row_reads",
    }
    assert runner.main(["--from-json", str(out)]) == 0


def test_kept_memory_env() -> None:
    env = runner.kept_memory_env({"PATH": "/bin", "MALLOC_TRIM_THRESHOLD_": "1"})
    assert env == {"PATH": "/bin", **runner.KEEP_FREED_MEMORY}
    assert runner.kept_memory_env(env) is None


@pytest.mark.timeout(180)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings: Linux only")
def test_the_command_runs_with_freed_memory_kept(tmp_path: Path) -> None:
    # ``python -m benchmarks`` starts itself again with glibc keeping freed memory (it is read
    # at a process's start); the machine row of the run says whether it ran so.
    out = tmp_path / "run.jsonl"
    env = {k: v for k, v in os.environ.items() if k not in runner.KEEP_FREED_MEMORY}
    env["PYTHONPATH"] = str(ROOT)
    argv = ["--sizes", "tiny", "--reps", "1", "--only", "d", "--warm-gib", "0"]
    subprocess.run(
        [sys.executable, "-m", "benchmarks", *argv, "--out", str(out), "--tmpdir", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=150,
        check=True,
    )
    first = json.loads(out.read_text().splitlines()[0])
    assert first["kind"] == "machine" and first["freed_memory_kept"] is True


@pytest.mark.timeout(300)
def test_legacy_run_uses_deker_117(tmp_path: Path, legacy_python: Path) -> None:
    rows = runner.run_legacy(legacy_python.parents[1], tmp_path / "legacy", SMOKE, "a")
    assert rows and all(r["engine"] == runner.LEGACY and r["engine_version"] == "1.1.7" for r in rows)
    assert all(r["verified"] for r in rows)


def test_scenarios_module_runs_as_a_script(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "scenarios.py"),
            "run",
            "--root",
            str(tmp_path / "r"),
            "--sizes",
            "tiny",
            "--reps",
            "1",
            "--only",
            "d",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert rows[0]["kind"] == "meta" and {r["name"] for r in rows[1:]} >= {"array_create", "lookup_by_key"}


def test_atomic_write_costs_run(capsys: pytest.CaptureFixture[str]) -> None:
    """``benchmarks/bench_atomic.py`` (the cost table of docs/RELIABILITY.md) keeps working."""
    from benchmarks import bench_atomic

    rows = bench_atomic.main(1)
    names = [row["measurement"] for row in rows]
    assert "tile: create holding all its data" in names and "update the metadata of an Array" in names
    assert all(row["seconds"] > 0 and row["fsync_seconds"] > 0 for row in rows)
    assert "| operation | time | with `DEKER_FSYNC=1` |" in capsys.readouterr().out


def test_creation_floor_runs() -> None:
    """``benchmarks/bench_create_floor.py`` (cited in docs/PERFORMANCE.md) keeps working."""
    from benchmarks import bench_create_floor

    result = bench_create_floor.measure(20)
    assert result["count"] == 20 and result["rate"] > 0


# ------------------------------------------------------------------------------ (z) zarr


def _zarr() -> None:
    reason = "zarr-python 3 is in the 'bench' extra (Python >= 3.11)"
    zarr = pytest.importorskip("zarr", reason=reason)
    if int(zarr.__version__.split(".")[0]) < 3:  # (the test extra brings zarr 2 on Python 3.10)
        pytest.skip(f"{reason}; this is zarr {zarr.__version__}")


@pytest.mark.timeout(180)
def test_zarr_scenarios_run_and_verify(tmp_path: Path) -> None:
    """``--only z`` at a tiny size: every step for every engine, verified, with its ratios."""
    _zarr()
    from benchmarks import bench_zarr

    out = tmp_path / "run.jsonl"
    argv = ["--sizes", "tiny", "--reps", "1", "--only", "z", "--warm-gib", "0"]
    assert runner.main([*argv, "--out", str(out), "--tmpdir", str(tmp_path)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert not [r for r in rows if "error" in r or r.get("kind") == "skipped"], rows
    measured = {(r["name"], r["engine"]): r for r in rows if r.get("scenario") == "z" and "median" in r}
    assert all(r["verified"] and len(r["runs"]) == 1 and r["median"] > 0 for r in measured.values())
    every = set(bench_zarr.ENGINES)
    expected = {
        "z_first_write": every,
        # the layout's floor; a read-only reader and the writable one interleaved with it
        "z_full_read": every | {"os_tiles", "deker_ro", "deker_rw"},
        "z_window_reads": every | {"deker_ro", "deker_rw"},
        "z_zstd_write": every,
        "z_zstd_read": every,
        # read again on every CPU and on one, in turn (with one CPU: neither)
        "z_zstd_reread": every if len(os.sched_getaffinity(0)) > 1 else set(),
        "z_zstd_read_1cpu": every if len(os.sched_getaffinity(0)) > 1 else set(),
        "z_field_write": every,  # the zstd steps again with field-like data
        "z_field_read": every,
        "z_field_reread": every if len(os.sched_getaffinity(0)) > 1 else set(),
        "z_field_read_1cpu": every if len(os.sched_getaffinity(0)) > 1 else set(),
        "z_dask_sum": every,
        "z_store_threads": every,
        "z_store_distributed": every - {"h5py"},  # one HDF5 file has no writers on workers
        "z_executor_write": {"deker", "deker_executor", "transport"},
        "z_executor_read": {"deker", "deker_executor", "transport"},
    }
    assert {name: {e for n, e in measured if n == name} for name in expected} == expected
    meta = next(r for r in rows if r.get("kind") == "zarr_meta")
    assert int(meta["zarr"].split(".")[0]) >= 3
    assert meta["store_chunk"] == 100 and 64 % meta["store_chunk"] and meta["store_chunk"] % 64
    summary = {r["name"]: r for r in rows if r.get("kind") == "zarr_summary"}
    assert set(summary) == {name for name, engines in expected.items() if engines}
    if "z_zstd_read_1cpu" in summary:  # one CPU's time over both CPUs' time, both reads again
        one, every_cpu = summary["z_zstd_read_1cpu"], summary["z_zstd_reread"]
        assert one["deker_speedup"] == round(one["deker_s"] / every_cpu["deker_s"], 3)
        one, every_cpu = summary["z_field_read_1cpu"], summary["z_field_reread"]
        assert one["zarr_speedup"] == round(one["zarr_s"] / every_cpu["zarr_s"], 3)
    assert {"deker_vs_zarr", "deker_vs_zarr_sharded", "deker_vs_h5py", "deker_vs_os_tiles"} <= set(
        summary["z_full_read"]
    )
    assert summary["z_executor_read"]["executor_vs_threads"] > 0
    assert summary["z_executor_write"]["executor_vs_transport"] > 0
    how = "read-only bind mount" if os.geteuid() == 0 else "Client(read_only=True)"
    assert summary["z_window_reads"]["read_only_how"] == how  # (as root: a real mount, unmounted after)
    assert summary["z_full_read"]["read_only_vs_writable"] > 0
    assert summary["z_full_read"]["reread_vs_os_tiles"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.jsonl"]  # every array removed


class _Recording:
    """Mixed into the real engines: remember the order of the timed writes."""

    calls: ClassVar[list[str]] = []

    def write(self, handle: object, data: np.ndarray) -> None:
        self.calls.append(self.name)  # type: ignore[attr-defined]
        super().write(handle, data)  # type: ignore[misc]


def test_zarr_repetitions_are_interleaved(tmp_path: Path) -> None:
    _zarr()
    from benchmarks import bench_zarr

    calls: ClassVar[list[str]] = []
    factories = {
        name: type(f"Recording{cls.__name__}", (_Recording, cls), {"calls": calls})
        for name, cls in bench_zarr.FACTORIES.items()
    }
    sizes = replace(SMOKE, reps=2)
    rows = bench_zarr.run(tmp_path / "z", sizes, factories=factories, parts=["uncompressed"])
    assert not [r for r in rows if "error" in r], rows
    first, *rest = bench_zarr.ENGINES
    # every engine per repetition, and the one that goes first changes: deker, zarr, ..., h5py, then zarr, ...
    assert calls == [first, *rest, *rest, first]


def test_in_turn_gives_every_engine_the_first_place_once_per_round() -> None:
    from benchmarks import bench_zarr

    engines = dict.fromkeys("abc", None)
    orders = ["".join(name for name, _ in bench_zarr.in_turn(engines, rep)) for rep in range(4)]  # type: ignore[arg-type]
    assert orders == ["abc", "bca", "cab", "abc"]
    assert bench_zarr.in_turn({}, 3) == []


def test_zarr_verification_catches_a_wrong_zarr_answer(tmp_path: Path) -> None:
    """A zarr engine that stores one wrong cell is caught by the read-back, in each part it runs."""
    _zarr()
    from benchmarks import bench_zarr

    class WrongZarr(bench_zarr.ZarrEngine):
        def write(self, handle: object, data: np.ndarray) -> None:
            wrong = data.copy()
            wrong[-1, -1] += 1
            super().write(handle, wrong)

    rows = bench_zarr.run(
        tmp_path / "z", SMOKE, factories={"zarr": WrongZarr}, parts=["uncompressed", "zstd"]
    )
    errors = {r["part"]: r["error"] for r in rows if "error" in r}
    assert set(errors) == {"uncompressed", "zstd"}
    assert all("verification failed: zarr full read" in e for e in errors.values()), errors
    assert not [r for r in rows if r.get("engine") == "zarr" and r.get("verified")]
    assert not (tmp_path / "z").exists()


def test_zarr_summary_and_docs_leave_the_other_results(tmp_path: Path) -> None:
    from benchmarks import bench_zarr

    def row(name: str, engine: str, median: float, **extra: object) -> dict[str, object]:
        return {"scenario": "z", "name": name, "engine": engine, "median": median, "ops": 1, **extra}

    rows = [
        {"kind": "machine", "date": "2026-12-02 23:00 UTC", "cores": 2, "sizes": {"reps": 3}},
        {"kind": "zarr_meta", "scenario": "z", "zarr": "3.1.6", "store_chunk": 1000},
        row("z_full_read", "deker", 0.5, bytes=1 << 20, verified=True),
        row("z_full_read", "zarr", 0.4, bytes=1 << 20, verified=True),
        row("z_full_read", "zarr_sharded", 1.0, bytes=1 << 20, verified=True),
        row("z_full_read", "h5py", 0.25, bytes=1 << 20, verified=True),
        row("z_full_read", "os_tiles", 0.2, bytes=1 << 20, verified=True),
        row("z_window_reads", "deker", 2.0, ops=200, verified=True),
        row("z_window_reads", "zarr", 1.0, ops=200, verified=True),
        row("z_window_reads", "deker_ro", 2.2, ops=200, how="Client(read_only=True)", verified=True),
        row("z_full_read", "deker_rw", 0.3, bytes=1 << 20, verified=True),  # a VArray read before
        row("z_full_read", "deker_ro", 0.15, bytes=1 << 20, how="read-only bind mount", verified=True),
        row("z_executor_read", "deker", 0.5, verified=True),
        row("z_executor_read", "deker_executor", 1.5, verified=True),
        row("z_executor_read", "transport", 0.75, verified=True),
    ]
    summary = {s["name"]: s for s in bench_zarr.summarize(rows)}
    full = summary["z_full_read"]
    assert (full["deker_vs_zarr"], full["deker_vs_zarr_sharded"]) == (1.25, 0.5)
    assert (full["deker_vs_h5py"], full["deker_vs_os_tiles"]) == (2.0, 2.5)
    assert summary["z_window_reads"]["deker_vs_zarr"] == 2.0  # time per window
    assert summary["z_executor_read"]["executor_vs_threads"] == 3.0
    assert summary["z_executor_read"]["executor_vs_transport"] == 2.0
    assert summary["z_window_reads"]["read_only_vs_writable"] == 1.1  # no deker_rw: against deker
    # with deker_rw, the read-only reads compare with the writable reads interleaved with them
    assert (full["read_only_vs_writable"], full["reread_vs_os_tiles"]) == (0.5, 1.5)
    assert "writable / layout floor: 1.50x" in report.zarr_text_table(list(summary.values()))
    assert "through a Client(read_only=True)" in report.zarr_text_table(list(summary.values()))
    assert "executor" in report.zarr_text_table(list(summary.values()))
    page = tmp_path / "PERFORMANCE.md"
    page.write_text(f"# Performance\n\n{report.BEGIN}\nearlier results\n{report.END}\n\nmethod text\n")
    chart = report.write_zarr_chart(list(summary.values()), tmp_path)
    assert chart.name == "performance-zarr.png" and chart.stat().st_size > 500
    for _ in range(2):  # replaced, not appended twice
        report.update_zarr_docs(page, rows, list(summary.values()), chart)
    text = page.read_text()
    assert text.count(report.ZARR_END) == 1 and "earlier results" in text and "method text" in text
    assert "| full read (uncompressed) | 0.50 s (2 MiB/s) | 0.40 s (2 MiB/s) |" in text
    assert "| 1.25 | 0.50 | 2.00 | 2.50 |" in text and "| full read, Client(executor=" in text
    assert "zarr 3.1.6" in text and "performance-zarr.png" in text


def test_field_data_is_deterministic_and_less_compressible_than_the_pattern() -> None:
    """The field-like data of the zstd steps: the same for a seed, and zstd keeps far more of it."""
    pytest.importorskip("zarr", reason="zarr-python 3 is in the 'bench' extra (Python >= 3.11)")
    import numcodecs

    from benchmarks import bench_zarr
    from benchmarks.scenarios import pattern

    a = bench_zarr.field((256, 256))
    assert a.dtype == np.float32 and np.array_equal(a, bench_zarr.field((256, 256)))
    assert not np.array_equal(a, bench_zarr.field((256, 256), seed=1))
    zstd = numcodecs.Zstd(level=3)
    kept = len(zstd.encode(a)) / a.nbytes
    kept_pattern = len(zstd.encode(pattern((256, 256), np.float32, 0))) / a.nbytes
    assert kept > 0.2 and kept > 5 * kept_pattern, (kept, kept_pattern)
