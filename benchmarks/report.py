"""Tables, the chart and the results section of docs/PERFORMANCE.md, from the runner's records.

The chart is a PNG drawn and encoded by :mod:`benchmarks.png` (standard library and numpy only;
matplotlib is not a dependency of this project).
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import png

BEGIN = "<!-- results:begin (written by `python -m benchmarks --write-docs`; do not edit by hand) -->"
END = "<!-- results:end -->"
_BLOCK = re.compile(r"<!-- results:begin.*?-->.*?<!-- results:end -->", re.S)


# ------------------------------------------------------------------------------ cells


def _seconds(value: float) -> str:
    if value >= 10:
        return f"{value:.1f} s"
    if value >= 0.1:
        return f"{value:.2f} s"
    if value >= 0.001:
        return f"{value * 1000:.1f} ms"
    return f"{value * 1e6:.0f} µs"


def _cell(item: dict[str, Any], label: str, markdown: bool) -> str:
    if f"{label}_s" not in item:
        return "-"
    if f"{label}_memory_ratio" in item:
        return f"{item[f'{label}_memory_ratio']:.2f}x output"
    if f"{label}_rate" in item:
        return f"{item[f'{label}_rate']:,.0f}/s"
    text = _seconds(item[f"{label}_s"])
    if markdown and f"{label}_mib_s" in item:
        text += f" ({item[f'{label}_mib_s']:,.0f} MiB/s)"
    if f"{label}_stored_mib" in item and item["name"].endswith("write"):
        text += f", {item[f'{label}_stored_mib']:.1f} MiB stored"
    return text


def _vs_h5py(item: dict[str, Any]) -> str:
    ratio = item.get("time_vs_h5py")
    if ratio is None:
        return "-"
    if "deker_memory_ratio" in item:
        return "-"
    if "deker_rate" in item:
        return f"{1 / ratio:.2f}x rate"
    return f"{ratio:.2f}x time"


def _vs_legacy(item: dict[str, Any]) -> str:
    speedup = item.get("speedup_vs_legacy")
    if speedup is None:
        return "-"
    if "deker_memory_ratio" in item:
        return "-"
    return f"{speedup:.1f}x faster" if speedup >= 1 else f"{1 / speedup:.1f}x slower"


def _met(item: dict[str, Any]) -> str:
    if "met" not in item or item["met"] is None:
        return ""
    return "yes" if item["met"] else "**NO**"


def _columns(item: dict[str, Any], markdown: bool) -> list[str]:
    return [
        item["scenario"],
        item["what"],
        _cell(item, "deker", markdown),
        _cell(item, "h5py", markdown),
        _vs_h5py(item),
        _cell(item, "legacy", markdown),
        _vs_legacy(item),
        item.get("target", ""),
        _met(item).replace("**", "") if not markdown else _met(item),
    ]


HEADER = ["", "step", "deker", "raw h5py", "deker vs h5py", "deker 1.1.7", "deker vs 1.1.7", "target", "met"]


def text_table(summary: Sequence[dict[str, Any]]) -> str:
    """A fixed-width table of every step (for the terminal)."""
    rows = [HEADER] + [_columns(item, markdown=False) for item in summary]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(summary: Sequence[dict[str, Any]]) -> str:
    """The same table in Markdown."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for item in summary:
        lines.append("| " + " | ".join(_columns(item, markdown=True)) + " |")
    return "\n".join(lines)


def _extras_table(rows: Sequence[dict[str, Any]]) -> str:
    extras = [r for r in rows if r.get("kind") == "extra"]
    if not extras:
        return "_The Dask and storage-size suites did not run (`--only` without `g`, or modules absent)._"
    lines = ["| suite | measurement | how | result |", "|---|---|---|---|"]
    for r in extras:
        if "error" in r:
            lines.append(f"| {r['suite']} | {r.get('name', '')} | | ERROR: {html.escape(str(r['error']))} |")
            continue
        how = r.get("path", "")
        where = r.get("executor") or r.get("scheduler")
        if where:
            how = f"{how} on {where}" if how else where
        if "mib_per_s" in r:
            result = f"{r['mib']:.0f} MiB in {_seconds(r['seconds'])} ({r['mib_per_s']:,.0f} MiB/s)"
        elif "ms_per_tile" in r:
            result = f"{r['ms_per_tile']:.2f} ms per tile ({r['tiles']} tiles)"
            if "dask_ms_per_trivial_task" in r:
                result += f"; dask alone {r['dask_ms_per_trivial_task']:.2f} ms per trivial task"
        elif "files_per_second" in r:
            result = f"{r['files']:,} arrays in {_seconds(r['seconds'])} ({r['files_per_second']:,} arrays/s)"
        else:
            result = ", ".join(
                f"{k}={v}" for k, v in r.items() if k not in ("scenario", "suite", "kind", "name")
            )
        lines.append(f"| {r['suite']} | {r.get('name', '')} | {how.replace('|', '/')} | {result} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ chart


def _chart_rows(
    summary: Sequence[dict[str, Any]],
) -> list[tuple[str, float | None, float | None, float | None]]:
    """(label, deker time ratio, 1.1.7 time ratio, target as a time ratio) of every timed step."""
    out = []
    for item in summary:
        if "time_vs_h5py" not in item or "deker_memory_ratio" in item:
            continue
        target = None
        if item.get("target") and "h5py" in item["target"]:
            limit = float(re.findall(r"[\d.]+", item["target"])[0])
            target = 1 / limit if "deker_rate" in item else limit
        out.append(
            (
                f"({item['scenario']}) {item['what']}",
                item["time_vs_h5py"],
                item.get("legacy_time_vs_h5py"),
                target,
            )
        )
    return out


def write_chart(summary: Sequence[dict[str, Any]], folder: Path) -> Path:
    """Draw the time of every step relative to raw h5py as ``folder / "performance.png"``.

    The PNG is drawn and encoded by :mod:`benchmarks.png` (no plotting library); a chart of an
    earlier version (``performance.svg``) in ``folder`` is removed.

    Parameters
    ----------
    summary : sequence of dict
        The step summaries of the runner (``runner.summarize``).
    folder : pathlib.Path
        Where to write the chart.

    Returns
    -------
    pathlib.Path
        The file written.
    """
    path = _draw_chart(_chart_rows(summary)).save(folder / "performance.png")
    (folder / "performance.svg").unlink(missing_ok=True)
    return path


_BLUE = png.hex_color("#2b6cb0")
_GREY = png.hex_color("#aaaaaa")
_RED = png.hex_color("#c53030")
_GRID = png.hex_color("#dddddd")
_BLACK = (0, 0, 0)
_TEXT = png.hex_color("#222222")
_TITLE = "Time relative to raw h5py (log scale; 1 = raw h5py; lower is better)"
_TICKS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


_LEGEND = ("deker (this checkout)", "deker 1.1.7", "target of issue 6")


def _draw_chart(
    rows: list[tuple[str, float | None, float | None, float | None]],
    title: str = _TITLE,
    legend: tuple[str, str, str] = _LEGEND,
) -> png.Canvas:
    label_w, plot_w, right, top, row_h, bar_h = 330, 520, 90, 50, 34, 11
    label_w = max(label_w, max((png.text_size(r[0])[0] + 20 for r in rows), default=0))
    width = label_w + plot_w + right
    width = max(width, png.text_size(title, 2)[0] + 40)
    bottom = top + row_h * len(rows)
    height = bottom + 70
    values = [v for r in rows for v in (r[1], r[2], r[3]) if v]
    lo = min([0.5, *values])
    hi = max([2.0, *values])
    lo_exp, hi_exp = math.floor(math.log10(lo) * 3) / 3, math.ceil(math.log10(hi) * 3) / 3

    def x(value: float) -> int:
        value = max(value, 10**lo_exp)
        return round(label_w + plot_w * (math.log10(value) - lo_exp) / (hi_exp - lo_exp))

    canvas = png.Canvas(width, height)
    canvas.text_center(width // 2, 12, title, _TEXT, scale=2)
    ticks = [t for t in _TICKS if lo_exp <= math.log10(t) <= hi_exp]
    for t in ticks:
        if t != 1:
            canvas.vline(x(t), top - 6, bottom, _GRID)
        canvas.text_center(x(t), bottom + 8, f"{t:g}x", _TEXT)
    canvas.hline(bottom, label_w, label_w + plot_w, _GRID)
    for i, (label, ours, old, target) in enumerate(rows):
        y = top + i * row_h
        canvas.text_right(label_w - 10, y + row_h // 2 - 4, label, _TEXT)
        # vertical marks drawn over this row: a value printed across one moves past it
        marks = sorted([x(1)] + ([x(target)] if target else []))
        for value, dy, color in ((ours, 5, _BLUE), (old, 18, _GREY)):
            if not value:
                continue
            x0 = x(10**lo_exp)
            x1 = max(x0 + 1, x(value))
            canvas.fill_rect(x0, y + dy, x1, y + dy + bar_h, color)
            text = f"{value:.2f}x"
            left = x1 + 4
            for mark in marks:
                if left - 3 <= mark + 1 and mark - 1 <= left + png.text_size(text)[0] + 1:
                    left = mark + 5
            canvas.text(left, y + dy + 2, text, _TEXT)
    if 1 in ticks:
        canvas.vline(x(1), top - 6, bottom, _BLACK)
    for i, (_label, _ours, _old, target) in enumerate(rows):
        if target:
            y = top + i * row_h
            canvas.vline(x(target) - 1, y + 2, y + row_h - 3, _RED, width=3)
    _legend(canvas, label_w, bottom + 36, any(r[2] for r in rows), any(r[3] for r in rows), legend)
    return canvas


def _legend(
    canvas: png.Canvas, left: int, y: int, legacy: bool, targets: bool, legend: tuple[str, str, str] = _LEGEND
) -> None:
    entries = [(_BLUE, legend[0])]
    if legacy:
        entries.append((_GREY, legend[1]))
    for color, text in entries:
        canvas.fill_rect(left, y, left + 12, y + 11, color)
        left = canvas.text(left + 18, y + 2, text, _TEXT)[2] + 30
    if targets:
        canvas.vline(left + 4, y - 1, y + 12, _RED, width=3)
        canvas.text(left + 14, y + 2, legend[2], _TEXT)


# ------------------------------------------------------------------------------ docs


def results_section(rows: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]], chart: Path) -> str:
    """The generated part of docs/PERFORMANCE.md."""
    info = next((r for r in rows if r.get("kind") == "machine"), {})
    total = next((r for r in rows if r.get("kind") == "total"), {})
    legacy = any("legacy_s" in s for s in summary)
    sizes = info.get("sizes", {})
    lines = [
        BEGIN,
        "",
        f"Run of {info.get('date', '?')}: `{info.get('command', 'python -m benchmarks')}`, "
        f"{sizes.get('reps', '?')} repetitions per step (medians shown), "
        f"whole run {total.get('seconds', '?')} s, "
        "warm cache.",
        "",
        "| machine | |",
        "|---|---|",
    ]
    for key, label in (
        ("cpu", "CPU"),
        ("cores", "cores"),
        ("ram_gib", "RAM (GiB)"),
        ("disk", "disk of the temporary storage"),
        ("os", "OS"),
        ("python", "Python"),
        ("numpy", "numpy"),
        ("h5py", "h5py"),
        ("hdf5", "HDF5"),
        ("hdf5plugin", "hdf5plugin"),
        ("deker", "deker (this checkout)"),
    ):
        lines.append(f"| {label} | {info.get(key, '?')} |")
    if legacy:
        lines.append("| deker 1.1.7 | numpy 1.26 in its own virtual environment, same h5py and HDF5 |")
    lines += ["", markdown_table(summary), ""]
    missed = [s for s in summary if s.get("met") is False]
    met = [s for s in summary if s.get("met") is True]
    lines.append(f"Targets met: {len(met)} of {len(met) + len(missed)}.")
    if missed:
        lines.append(
            "Missed: " + "; ".join(f"({s['scenario']}) {s['what']} ({s['target']})" for s in missed) + "."
        )
    if not legacy:
        lines.append(
            "deker 1.1.7 was not run (`--legacy`): creation and lookup targets use the absolute rates."
        )
    errors = [r for r in rows if "error" in r]
    for r in errors:
        lines.append(f"ERROR in scenario {r.get('scenario')}: {html.escape(str(r['error']))}")
    tiled = [s for s in summary if "h5py_tiles_s" in s]
    if tiled:
        lines += [
            "",
            "Reference: raw h5py doing the I/O of deker's layout (one file per tile, the 64 tile files "
            "opened one after the other, windows opening every tile they touch):",
            "",
            "| step | raw h5py, 64 tile files | vs raw h5py, one file | deker vs the tile files |",
            "|---|---|---|---|",
        ]
        for s in tiled:
            lines.append(
                f"| ({s['scenario']}) {s['what']} | {_cell(s, 'h5py_tiles', True)} | "
                f"{s.get('h5py_tiles_time_vs_h5py', 0):.2f}x time | "
                f"{s.get('time_vs_h5py_tiles', 0):.2f}x time |"
            )
    floored = [s for s in summary if "os_tiles_s" in s]
    if floored:
        lines += [
            "",
            "Floor of deker's layout: the I/O of deker's full read alone, on the same 64 tile files "
            "(data offsets known in advance; 1 MiB `os.preadv` stretches into a per-thread buffer, "
            "copied into the output by numpy; one thread per core; no HDF5, no locks, no metadata):",
            "",
            "| step | os.preadv, 64 tile files | vs raw h5py, one file | deker vs this floor |",
            "|---|---|---|---|",
        ]
        for s in floored:
            lines.append(
                f"| ({s['scenario']}) {s['what']} | {_cell(s, 'os_tiles', True)} | "
                f"{s.get('os_tiles_time_vs_h5py', 0):.2f}x time | "
                f"{s.get('time_vs_os_tiles', 0):.2f}x time |"
            )
    lines += ["", f"![time relative to raw h5py per step]({chart.name})", "", "Scenario (g), the Dask and"]
    lines[-1] += f" storage-size suites (size_scale {_extras_scale(rows)}):"
    lines += ["", _extras_table(rows), "", END]
    return "\n".join(lines)


def _extras_scale(rows: Sequence[dict[str, Any]]) -> str:
    scales = {r.get("size_scale") for r in rows if r.get("kind") == "extra"}
    return ", ".join(str(s) for s in sorted(s for s in scales if s is not None)) or "-"


def update_docs(
    path: Path, rows: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]], chart: Path
) -> None:
    """Replace the results section of ``path`` (appended when the page has none)."""
    section = results_section(rows, summary, chart)
    text = path.read_text() if path.exists() else "# Performance\n"
    if _BLOCK.search(text):
        text = _BLOCK.sub(lambda _m: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n## Latest results\n\n" + section + "\n"
    path.write_text(text)


# ------------------------------------------------------------------------------ (z) zarr

ZARR_BEGIN = (
    "<!-- zarr:begin (written by `python -m benchmarks --only z --write-docs`; do not edit by hand) -->"
)
ZARR_END = "<!-- zarr:end -->"
_ZARR_BLOCK = re.compile(r"<!-- zarr:begin.*?-->.*?<!-- zarr:end -->", re.S)
_ZARR_ENGINES = ("deker", "zarr", "zarr_sharded", "h5py", "os_tiles")
ZARR_HEADER = [
    "step",
    "deker",
    "zarr",
    "zarr sharded",
    "raw h5py",
    "layout floor",
    "deker/zarr",
    "deker/zarr sharded",
    "deker/h5py",
    "deker/floor",
]
_ZARR_TITLE = "deker time relative to zarr-python 3 (log scale; 1 = zarr; lower is better)"
_ZARR_LEGEND = ("deker / zarr (chunks = tiles)", "deker / zarr sharded", "target of issue 17 (zarr's time)")


def _ratio(item: dict[str, Any], key: str) -> str:
    value = item.get(key)
    return "-" if value is None else f"{value:.2f}"


def _zarr_columns(item: dict[str, Any], markdown: bool) -> list[str]:
    return [
        item["what"],
        *(_cell(item, engine, markdown) for engine in _ZARR_ENGINES),
        *(_ratio(item, f"deker_vs_{other}") for other in ("zarr", "zarr_sharded", "h5py", "os_tiles")),
    ]


def _executor_rows(summary: Sequence[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            item["what"],
            _cell(item, "deker_executor", True),
            _cell(item, "deker", True),
            _ratio(item, "executor_vs_threads"),
            _cell(item, "transport", True),
            _ratio(item, "executor_vs_transport"),
        ]
        for item in summary
        if "executor_vs_threads" in item
    ]


def _read_only_rows(summary: Sequence[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            item["what"],
            item.get("read_only_how", ""),
            _cell(item, "deker_ro", True),
            _cell(item, "deker_rw" if "deker_rw_s" in item else "deker", True),
            _ratio(item, "read_only_vs_writable"),
            _ratio(item, "reread_vs_os_tiles"),
        ]
        for item in summary
        if "read_only_vs_writable" in item
    ]


def zarr_text_table(summary: Sequence[dict[str, Any]]) -> str:
    """Scenario (z) as a fixed-width table: every engine and deker's time ratios (the terminal)."""
    rows = [ZARR_HEADER] + [
        _zarr_columns(i, markdown=False) for i in summary if "executor_vs_threads" not in i
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(ZARR_HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for what, executor, threads, ratio, transport, floor in _executor_rows(summary):
        lines.append(
            f"deker {what}: {executor}; thread pool {threads}: {ratio}x the thread pool's time; "
            f"moving the bytes alone {transport}: {floor}x that"
        )
    for what, how, read_only, writable, ratio, floor in _read_only_rows(summary):
        lines.append(
            f"deker {what} through a {how}: {read_only}; writable {writable}: {ratio}x"
            + ("" if floor == "-" else f"; writable / layout floor: {floor}x")
        )
    return "\n".join(lines)


def zarr_markdown_table(summary: Sequence[dict[str, Any]]) -> str:
    """Scenario (z) in Markdown: times (ratios are of times per operation; < 1: deker faster)."""
    lines = ["| " + " | ".join(ZARR_HEADER) + " |", "|" + "---|" * len(ZARR_HEADER)]
    for item in summary:
        if "executor_vs_threads" not in item:
            lines.append("| " + " | ".join(_zarr_columns(item, markdown=True)) + " |")
    executor = _executor_rows(summary)
    if executor:
        lines += [
            "",
            "| deker step | `Client(executor=dask_client)` | `Client()` (thread pool) "
            "| executor / thread pool | the bytes moved alone | executor / bytes moved |",
            "|---|---|---|---|---|---|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in executor]
    read_only = _read_only_rows(summary)
    if read_only:
        lines += [
            "",
            "| deker step (a VArray read before) | read-only through | read-only | writable "
            "| read-only / writable | writable / layout floor |",
            "|---|---|---|---|---|---|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in read_only]
    return "\n".join(lines)


def write_zarr_chart(summary: Sequence[dict[str, Any]], folder: Path) -> Path:
    """Draw deker's time relative to zarr's, per step, as ``folder / "performance-zarr.png"``.

    Parameters
    ----------
    summary : sequence of dict
        The step summaries of scenario (z) (``bench_zarr.summarize``).
    folder : pathlib.Path
        Where to write the chart.

    Returns
    -------
    pathlib.Path
        The file written.
    """
    rows: list[tuple[str, float | None, float | None, float | None]] = [
        (item["what"], item.get("deker_vs_zarr"), item.get("deker_vs_zarr_sharded"), 1.0)
        for item in summary
        if "deker_vs_zarr" in item or "deker_vs_zarr_sharded" in item
    ]
    return _draw_chart(rows, _ZARR_TITLE, _ZARR_LEGEND).save(folder / "performance-zarr.png")


def zarr_results_section(
    rows: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]], chart: Path
) -> str:
    """The generated part of docs/PERFORMANCE.md for scenario (z)."""
    info = next((r for r in rows if r.get("kind") == "machine"), {})
    meta = next((r for r in rows if r.get("kind") == "zarr_meta"), {})
    sizes = info.get("sizes", {})
    side, grid = sizes.get("varray_side", "?"), sizes.get("vgrid", "?")
    load = info.get("load_average")
    lines = [
        ZARR_BEGIN,
        "",
        f"Run of {info.get('date', '?')}: `{info.get('command', 'python -m benchmarks --only z')}`, "
        f"{sizes.get('reps', '?')} repetitions per step (medians shown), float32 {side} x {side} in "
        f"{grid} x {grid} tiles, zstd chunks of {sizes.get('chunk', '?')}, {sizes.get('windows', '?')} "
        f"windows of {sizes.get('window', '?')}, store chunks of {meta.get('store_chunk', '?')}; "
        f"{info.get('cores', '?')} cores ({info.get('cpu', '?')})"
        + (f", load average {' / '.join(str(x) for x in load)} at the start" if load else "")
        + "; "
        + ", ".join(f"{k} {meta.get(k, '?')}" for k in ("zarr", "numcodecs", "dask", "distributed"))
        + f", h5py {info.get('h5py', '?')}, HDF5 {info.get('hdf5', '?')}.",
        "",
        zarr_markdown_table(summary),
        "",
    ]
    spreads = sorted(
        (
            (max(r["runs"]) / min(r["runs"]), r["name"], r["engine"])
            for r in rows
            if r.get("scenario") == "z" and len(r.get("runs", [])) > 1 and min(r["runs"]) > 0
        ),
        reverse=True,
    )
    if spreads:
        worst = "; ".join(f"{n} {e} {x:.2f}x" for x, n, e in spreads[:3])
        middle = spreads[len(spreads) // 2][0]
        lines += [
            f"Spread of the repetitions (slowest / fastest): median {middle:.2f}x over the "
            f"{len(spreads)} measurements; largest {worst}.",
        ]
    errors = [r for r in rows if r.get("scenario") == "z" and "error" in r]
    for r in errors:
        lines.append(f"ERROR in scenario z ({r.get('part', '')}): {html.escape(str(r['error']))}")
    for r in rows:
        if r.get("scenario") == "z" and r.get("kind") == "skipped":
            lines.append(f"Scenario (z) skipped: {html.escape(str(r['skipped']))}")
    lines += ["", f"![deker time relative to zarr per step]({chart.name})", "", ZARR_END]
    return "\n".join(lines)


def update_zarr_docs(
    path: Path, rows: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]], chart: Path
) -> None:
    """Replace the scenario (z) section of ``path`` (appended when the page has none)."""
    section = zarr_results_section(rows, summary, chart)
    text = path.read_text() if path.exists() else "# Performance\n"
    if _ZARR_BLOCK.search(text):
        text = _ZARR_BLOCK.sub(lambda _m: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n## deker vs zarr\n\n" + section + "\n"
    path.write_text(text)
