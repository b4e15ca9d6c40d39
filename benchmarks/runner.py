"""The benchmark runner: scenarios (a)-(g) of issue 6, (z) of issue 17, ratios to the peers.

``python -m benchmarks`` runs every scenario of :mod:`benchmarks.scenarios` with this
checkout's deker and with raw h5py (interleaved, same process), then the Dask and storage-size
suites when their modules exist (scenario g), then deker beside zarr-python 3 and raw h5py
(scenario z, :mod:`benchmarks.bench_zarr`; skipped with its reason without the ``bench``
extra), prints one JSON line per measurement and the tables.

Options: ``--quick`` (small sizes, seconds), ``--legacy VENV`` (also run (a)-(f) with the deker
of another virtual environment, e.g. deker 1.1.7, in a subprocess started outside the
checkout), ``--out FILE`` (save the JSON lines), ``--write-docs`` (rewrite the results section
of docs/PERFORMANCE.md and the chart), ``--from-json FILE`` (rebuild table and docs from saved
JSON lines without running anything), ``--compare REV`` (this checkout's deker against the
deker of another git revision, ``--rounds`` runs each, alternating: :mod:`benchmarks.compare`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks import bench_zarr, compare, report, scenarios

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "PERFORMANCE.md"
LEGACY = "deker-1.1.7"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Step:
    """What a measurement is, how to show it, and its target (if issue 6 sets one)."""

    what: str
    kind: str  # "time" (one operation), "rate" (ops per second), "memory"
    target: str = ""
    limit: float | None = None  # the bound of the target
    against: str = "h5py"  # "h5py" (ratio of times) or "legacy" (ratio of rates) or "absolute"


STEPS: dict[str, Step] = {
    "array_first_write": Step("new Array: first write of every cell", "time", "<= 1.5x h5py time", 1.5),
    "array_rewrite": Step("Array: rewrite of every cell", "time"),
    "array_full_read": Step("Array: full read", "time"),
    "array_row_reads": Step("Array: random 1 x 256 row reads", "rate", ">= 0.6x h5py rate", 0.6),
    "varray_first_write": Step("new VArray: first write", "time", "<= 1.3x h5py time", 1.3),
    "varray_full_read": Step("VArray: full read", "time", "<= 1.3x h5py time", 1.3),
    "varray_window_reads": Step("VArray: windows across tile borders", "rate", ">= 0.6x h5py rate", 0.6),
    "varray_region_write": Step("VArray: region write across tiles", "time"),
    "zstd_varray_write": Step("zstd VArray: first write", "time"),
    "zstd_varray_read": Step("zstd VArray: full read", "time"),
    "zstd_varray_region_write": Step("zstd VArray: region write across tiles", "time"),
    "gzip_varray_write": Step("gzip VArray: first write", "time"),
    "gzip_varray_read": Step("gzip VArray: full read", "time"),
    "gzip_varray_region_write": Step("gzip VArray: region write across tiles", "time"),
    "array_create": Step(
        "create Arrays (two primary attributes)", "rate", ">= 5x 1.1.7 rate (or >= 2000/s)", 5.0, "legacy"
    ),
    "lookup_by_key": Step("look up by primary key", "rate", ">= 5x 1.1.7 rate (or >= 5000/s)", 5.0, "legacy"),
    "lookup_by_key_custom": Step("look up by key, then read its custom attributes", "rate"),
    "lookup_by_id": Step("look up by id", "rate"),
    "iterate": Step("iterate the collection", "rate"),
    "varray_read_peak_memory": Step(
        "full VArray read: peak RSS beyond baseline", "memory", "<= 1.1x output size", 1.1, "absolute"
    ),
    "two_process_write": Step("two processes write disjoint halves", "time"),
}
ABSOLUTE_RATES = {"array_create": 2000.0, "lookup_by_key": 5000.0}


# ------------------------------------------------------------------------------ running


def _emit_to(out: Any) -> Callable[[dict[str, Any]], None]:
    def emit(row: dict[str, Any]) -> None:
        line = json.dumps(row)
        print(line, flush=True)
        if out is not None:
            out.write(line + "\n")
            out.flush()

    return emit


def run_legacy(venv: Path, root: Path, sizes: scenarios.Sizes, only: str) -> list[dict[str, Any]]:
    """Run the scenarios with the deker of ``venv`` (its public API only) in a subprocess.

    The interpreter starts in ``root`` (outside the checkout) and runs this directory's
    ``scenarios.py`` as a script, so ``import deker`` finds the venv's installed deker.
    """
    python = venv / "bin" / "python"
    if not python.exists():
        raise FileNotFoundError(f"{python} does not exist: --legacy takes the path of a virtual environment")
    root.mkdir(parents=True, exist_ok=True)
    sizes_file = root / "sizes.json"
    sizes_file.write_text(json.dumps(asdict(sizes)))
    cmd = [
        str(python),
        str(Path(scenarios.__file__).resolve()),
        "run",
        "--root",
        str(root / "runs"),
        "--sizes-json",
        str(sizes_file),
        "--only",
        only,
        "--engines",
        "deker",
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=3600, env=env)
    rows: list[dict[str, Any]] = []
    meta: dict[str, Any] = {}
    for line in proc.stdout.splitlines():
        if not line.startswith("{"):
            continue
        row = json.loads(line)
        if row.get("kind") == "meta":
            meta = row
            continue
        row["engine"] = LEGACY
        row["engine_version"] = meta.get("deker", "?")
        rows.append(row)
    if proc.returncode != 0 and not rows:
        raise RuntimeError(f"the legacy run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    if meta.get("deker") and not str(meta["deker"]).startswith("1."):
        raise RuntimeError(f"--legacy {venv} imported deker {meta['deker']}, not deker 1.x")
    return rows


def run_extras(scale: float) -> list[dict[str, Any]]:
    """Scenario (g): the Dask suite and the storage-size suite, when their modules exist."""
    rows: list[dict[str, Any]] = []
    for module in ("bench_dask", "bench_storage_size"):
        if not (Path(__file__).parent / f"{module}.py").exists():
            continue
        start = time.perf_counter()
        try:
            mod = importlib.import_module(f"benchmarks.{module}")
            found = list(mod.run(size_scale=scale))
        except Exception as exc:  # reported; the rest of the run stands
            found = [{"name": module, "error": f"{type(exc).__name__}: {exc}"}]
        for row in found:
            rows.append({"scenario": "g", "suite": module, "kind": "extra", "size_scale": scale, **row})
        rows.append(
            {
                "scenario": "g",
                "suite": module,
                "kind": "extra_total",
                "seconds": round(time.perf_counter() - start, 2),
            }
        )
    return rows


#: glibc's malloc settings of a benchmark process (:func:`kept_memory_env`): blocks up to 4 GiB
#: come from the heap rather than from their own ``mmap``, and freed memory is never given back.
KEEP_FREED_MEMORY = {"MALLOC_MMAP_THRESHOLD_": str(4 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}


def kept_memory_env(environ: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """Return the environment a benchmark process should run in, or None if it runs in it already.

    On a virtual machine that gives freed guest memory back to its host (free page reporting,
    ballooning), a page first touched after it was given back costs the host's fault and the
    guest's zeroing again: seen here, the same 256 MiB full read took 70 ms or 370 ms at random,
    85 % of the slow one in the kernel's ``clear_page``.  glibc gives a large block back to the
    kernel as soon as it is freed (each gets its own ``mmap``), so every result array of every
    engine pays that lottery.  With :data:`KEEP_FREED_MEMORY` a process keeps what it freed
    and reuses it, and :func:`warm_memory` then really leaves warm pages behind.  The settings
    are glibc's (``mallopt(3)``) and are read when a process starts: ``python -m benchmarks``
    starts itself again in this environment (its subprocesses, the Dask workers and the
    ``--compare`` sides, inherit it).  Other C libraries ignore the variables.

    Parameters
    ----------
    environ : Mapping, optional
        The environment to start from (default ``os.environ``).

    Returns
    -------
    dict or None
        The environment with the settings, or None when ``environ`` has them already.
    """
    base = dict(os.environ if environ is None else environ)
    if all(base.get(k) == v for k, v in KEEP_FREED_MEMORY.items()):
        return None
    return {**base, **KEEP_FREED_MEMORY}


def warm_memory(gib: float) -> float:
    """Touch ``gib`` GiB of memory once and free it; return the seconds it took.

    On a virtual machine whose RAM the host backs lazily (Firecracker, ballooning) the first
    use of a page costs several times a reuse: whichever step of a run first grows the page
    cache would pay for it.  Touching the run's working set first makes every step reuse pages.
    """
    import numpy as np

    start = time.perf_counter()
    block = 256 * MIB
    held = []
    for _ in range(int(gib * 1024 * MIB) // block):
        held.append(np.ones(block // 8))
    del held
    return time.perf_counter() - start


# ------------------------------------------------------------------------------ summary


def _per_op(row: dict[str, Any]) -> float:
    return float(row["median"]) / float(row.get("ops", 1))


def _rate(row: dict[str, Any]) -> float:
    return float(row.get("ops", 1)) / float(row["median"])


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One summary per step: medians of every engine, ratios, target and whether it is met."""
    by: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for row in rows:
        if "name" in row and "median" in row and row.get("scenario") in scenarios.SCENARIOS:
            by.setdefault((row["scenario"], row["name"]), {})[row["engine"]] = row
    out = []
    for (scenario, name), engines in sorted(
        by.items(), key=lambda kv: (kv[0][0], list(STEPS).index(kv[0][1]))
    ):
        step = STEPS[name]
        ours, raw, old = engines.get("deker"), engines.get("h5py"), engines.get(LEGACY)
        item: dict[str, Any] = {"kind": "summary", "scenario": scenario, "name": name, "what": step.what}
        tiles, floor = engines.get("h5py_tiles"), engines.get("os_tiles")
        labelled = (
            ("deker", ours),
            ("h5py", raw),
            ("legacy", old),
            ("h5py_tiles", tiles),
            ("os_tiles", floor),
        )
        for label, row in labelled:
            if row is None:
                continue
            item[f"{label}_s"] = row["median"]
            item[f"{label}_ops"] = row.get("ops", 1)
            if step.kind == "rate":
                item[f"{label}_rate"] = round(_rate(row), 1)
            if row.get("bytes") and step.kind != "rate":
                item[f"{label}_mib_s"] = round(row["bytes"] / MIB / row["median"], 1)
            if "stored_bytes" in row:
                item[f"{label}_stored_mib"] = round(row["stored_bytes"] / MIB, 2)
            if "memory_ratio" in row:
                item[f"{label}_memory_ratio"] = row["memory_ratio"]
            item[f"{label}_verified"] = bool(row.get("verified"))
        if ours and raw:
            item["time_vs_h5py"] = round(_per_op(ours) / _per_op(raw), 3)
        if ours and tiles:
            item["time_vs_h5py_tiles"] = round(_per_op(ours) / _per_op(tiles), 3)
        if raw and tiles:
            item["h5py_tiles_time_vs_h5py"] = round(_per_op(tiles) / _per_op(raw), 3)
        if ours and floor:
            item["time_vs_os_tiles"] = round(_per_op(ours) / _per_op(floor), 3)
        if raw and floor:
            item["os_tiles_time_vs_h5py"] = round(_per_op(floor) / _per_op(raw), 3)
        if ours and old:
            item["speedup_vs_legacy"] = round(_per_op(old) / _per_op(ours), 2)
        if old and raw:
            item["legacy_time_vs_h5py"] = round(_per_op(old) / _per_op(raw), 3)
        if step.target and ours:
            item["target"] = step.target
            item["met"] = _met(name, step, item)
        out.append(item)
    return out


def _met(name: str, step: Step, item: dict[str, Any]) -> bool | None:
    assert step.limit is not None
    if step.against == "absolute":
        ratio = item.get("deker_memory_ratio")
        return None if ratio is None else bool(ratio <= step.limit)
    if step.against == "legacy":
        if "speedup_vs_legacy" in item:
            return bool(item["speedup_vs_legacy"] >= step.limit)
        return bool(item["deker_rate"] >= ABSOLUTE_RATES[name])
    if "time_vs_h5py" not in item:
        return None
    if step.kind == "rate":
        return bool(1.0 / item["time_vs_h5py"] >= step.limit)
    return bool(item["time_vs_h5py"] <= step.limit)


# ------------------------------------------------------------------------------ machine


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine(tmp: Path) -> dict[str, Any]:
    """Describe the machine, the software and the filesystem of the temporary folder."""
    import h5py
    import numpy

    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in _read("/proc/cpuinfo").splitlines() if "model name" in ln), ""
    )
    mem = next(
        (ln.split()[1] for ln in _read("/proc/meminfo").splitlines() if ln.startswith("MemTotal")), "0"
    )
    os_name = next(
        (
            ln.split("=", 1)[1].strip('"')
            for ln in _read("/etc/os-release").splitlines()
            if ln.startswith("PRETTY_NAME")
        ),
        platform.system(),
    )
    fs, device = "", ""
    best = ""
    for line in _read("/proc/mounts").splitlines():
        parts = line.split()
        if len(parts) >= 3 and str(tmp.resolve()).startswith(parts[1]) and len(parts[1]) >= len(best):
            best, device, fs = parts[1], parts[0], parts[2]
    rotational = _read(f"/sys/block/{Path(device).name}/queue/rotational").strip()
    disk = f"{device} ({fs}, mounted on {best}"
    disk += ", rotational)" if rotational == "1" else ", non-rotational)" if rotational == "0" else ")"
    try:
        hdf5plugin = importlib.import_module("hdf5plugin").version
    except Exception:
        hdf5plugin = "?"
    hypervisor = "hypervisor" in _read("/proc/cpuinfo")
    return {
        "kind": "machine",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu + (" (virtual machine)" if hypervisor else ""),
        "cores": os.cpu_count(),
        "ram_gib": round(int(mem) / 1024 / 1024, 1),
        "disk": disk,
        "os": f"{os_name}, Linux {platform.release()}",
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "h5py": h5py.version.version,
        "hdf5": h5py.version.hdf5_version,
        "hdf5plugin": hdf5plugin,
        "deker": scenarios.deker_version(),
        "deker_path": str(Path(importlib.import_module("deker").__file__ or "").parent),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "freed_memory_kept": kept_memory_env() is None,
        "tmp": str(tmp),
    }


# ------------------------------------------------------------------------------ main


@contextlib.contextmanager
def _workdir(parent: str | None) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="deker-bench-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (a run takes well under a minute)")
    parser.add_argument("--sizes", choices=sorted(scenarios.SIZES), help="full (default), quick or tiny")
    parser.add_argument("--reps", type=int, help="repetitions of every timed step (default 3)")
    parser.add_argument(
        "--only", default=scenarios.SCENARIOS + "gz", help="scenarios to run, e.g. 'abe' ('z': zarr)"
    )
    parser.add_argument("--legacy", type=Path, help="a venv with deker 1.1.7: run (a)-(f) with it too")
    parser.add_argument("--extras-scale", type=float, help="size_scale of the (g) suites (default 0.25)")
    parser.add_argument("--warm-gib", type=float, help="GiB of memory to touch before the run (default 3)")
    parser.add_argument("--out", type=Path, help="also write the JSON lines to this file")
    parser.add_argument("--tmpdir", help="where to make the temporary storage (default: the system's)")
    parser.add_argument(
        "--write-docs", action="store_true", help="rewrite the results of docs/PERFORMANCE.md"
    )
    parser.add_argument("--from-json", type=Path, help="do not run: summarise saved JSON lines")
    parser.add_argument(
        "--compare", metavar="REV", help="compare this deker with the deker of git revision REV"
    )
    parser.add_argument("--rounds", type=int, default=3, help="with --compare: runs of each side (default 3)")
    parser.add_argument(
        "--tolerance", type=float, default=0.05, help="with --compare: how much slower is still the same"
    )
    return parser.parse_args(argv)


def _compare_args(args: argparse.Namespace) -> list[str]:
    """The options every run of a ``--compare`` passes on (the rest belong to the parent)."""
    out = ["--only", args.only]
    if args.quick:
        out.append("--quick")
    if args.sizes:
        out += ["--sizes", args.sizes]
    if args.reps:
        out += ["--reps", str(args.reps)]
    if args.extras_scale is not None:
        out += ["--extras-scale", str(args.extras_scale)]
    if args.tmpdir:
        out += ["--tmpdir", args.tmpdir]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    if args.from_json:
        rows = [json.loads(line) for line in args.from_json.read_text().splitlines() if line.startswith("{")]
        return _finish(rows, args)
    if args.compare:
        sizes = scenarios.SIZES[args.sizes or ("quick" if args.quick else "full")]
        warm_memory(
            args.warm_gib if args.warm_gib is not None else (3.0 if sizes is not scenarios.TINY else 0)
        )
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(args.out.open("w")) if args.out else None
            return compare.run(
                args.compare, args.rounds, _compare_args(args), args.tolerance, args.tmpdir, _emit_to(out)
            )
    sizes = scenarios.SIZES[args.sizes or ("quick" if args.quick else "full")]
    if args.reps:
        sizes = replace(sizes, reps=max(1, args.reps))
    extras_scale = args.extras_scale if args.extras_scale is not None else (0.02 if args.quick else 0.25)
    only = "".join(c for c in args.only if c in scenarios.SCENARIOS)
    started = time.perf_counter()
    out = args.out.open("w") if args.out else None
    emit = _emit_to(out)
    rows: list[dict[str, Any]] = []
    try:
        with _workdir(args.tmpdir) as tmp:
            warm = warm_memory(
                args.warm_gib if args.warm_gib is not None else (3.0 if sizes is not scenarios.TINY else 0)
            )
            info = machine(tmp)
            info["warm_memory_s"] = round(warm, 2)
            info["sizes"] = asdict(sizes)
            info["command"] = " ".join(["python -m benchmarks", *(sys.argv[1:] if argv is None else argv)])
            emit(info)
            rows.append(info)
            rows += scenarios.run_scenarios(tmp / "current", sizes, scenarios.ENGINES, only, emit)
            if args.legacy and only:
                try:
                    legacy_rows = run_legacy(args.legacy.resolve(), tmp / "legacy", sizes, only)
                except Exception as exc:
                    legacy_rows = [{"scenario": "legacy", "engine": LEGACY, "error": f"{exc}"}]
                for row in legacy_rows:
                    emit(row)
                rows += legacy_rows
            if "g" in args.only:
                for row in run_extras(extras_scale):
                    emit(row)
                    rows.append(row)
            if "z" in args.only:
                rows += bench_zarr.run(tmp / "zarr", sizes, emit=emit)
        total = {"kind": "total", "seconds": round(time.perf_counter() - started, 1)}
        emit(total)
        rows.append(total)
        for item in summarize(rows) + bench_zarr.summarize(rows):
            emit(item)
            rows.append(item)
    finally:
        if out is not None:
            out.close()
    return _finish(rows, args)


def _finish(rows: list[dict[str, Any]], args: argparse.Namespace) -> int:
    summary = [r for r in rows if r.get("kind") == "summary"] or summarize(rows)
    zarr_summary = [r for r in rows if r.get("kind") == "zarr_summary"] or bench_zarr.summarize(rows)
    if summary:
        print()
        print(report.text_table(summary))
    if zarr_summary:
        print()
        print(report.zarr_text_table(zarr_summary))
    for row in rows:
        if row.get("kind") == "skipped":
            print(f"\nscenario {row.get('scenario')} skipped: {row['skipped']}")
    errors = [r for r in rows if "error" in r]
    for row in errors:
        print(
            f"ERROR in scenario {row.get('scenario')} "
            f"({row.get('engine', row.get('suite', row.get('part', '')))}): {row['error']}"
        )
    if args.write_docs:
        # each section is rewritten only by a run that has it: `--only z --write-docs` leaves
        # the results of (a)-(g) and their chart as they are, and the other way round
        if summary or any(r.get("kind") == "extra" for r in rows):
            chart = report.write_chart(summary, DOCS.parent)
            report.update_docs(DOCS, rows, summary, chart)
            print(f"\nwrote {DOCS.relative_to(ROOT)} and {chart.relative_to(ROOT)}")
        if zarr_summary:
            chart = report.write_zarr_chart(zarr_summary, DOCS.parent)
            report.update_zarr_docs(DOCS, rows, zarr_summary, chart)
            print(f"\nwrote the zarr section of {DOCS.relative_to(ROOT)} and {chart.relative_to(ROOT)}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
