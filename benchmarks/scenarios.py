"""The benchmark scenarios (a)-(f) of issue 6, for deker and for raw h5py.

This module is self-contained: it imports only the standard library, numpy, h5py, hdf5plugin
and deker's *public* API, so the same file runs under this project's deker and, in another
virtual environment, under deker 1.1.7 (``--legacy``: the runner starts
``<venv>/bin/python benchmarks/scenarios.py run ...`` from a directory outside the checkout).

Every scenario

- times each step ``reps`` times, the engines interleaved repetition by repetition (deker,
  then raw h5py, then deker again...), so that a drift of the machine hits both alike;
- verifies every byte it reads (and reads back what it wrote), so a wrong answer cannot look
  fast: a mismatch raises ``AssertionError``;
- runs raw h5py on the same data in the same process: one HDF5 file holding the whole array as
  one contiguous dataset (the physical limit of the I/O), opened and closed around each
  operation (per read for the row and window reads).

A measurement is a dict ``{"scenario", "name", "engine", "runs": [seconds...], "ops", "bytes",
"verified", ...}``; :mod:`benchmarks.runner` turns them into medians, ratios and targets.

Command line (used by the runner for fresh processes)::

    python scenarios.py run --root DIR --sizes full|quick|tiny [--only abcdef]
    python scenarios.py child-mem --engine deker|h5py --uri URI --id VID | --path FILE
    python scenarios.py child-half --engine deker|h5py ...
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin
import numpy as np

ENGINES = ("deker", "h5py")
SCENARIOS = "abcdef"


# ------------------------------------------------------------------------------ sizes


@dataclass(frozen=True)
class Sizes:
    """Problem sizes; :data:`FULL` is what issue 6 asks for."""

    array_side: int = 4096  # (a) Array side x side float64
    rows: int = 1000  # (a) random row reads
    row_len: int = 256  # (a) cells per row read
    varray_side: int = 8192  # (b, c, e, f) VArray side x side float32
    vgrid: int = 8  # (b, c, e, f) tiles per axis
    windows: int = 200  # (b) random windows across tile borders
    window: int = 512  # (b) window side
    region: int = 3000  # (b) region write side
    chunk: int = 256  # (c) chunk side of the compressed VArrays
    arrays: int = 2000  # (d) arrays created and looked up
    reps: int = 3  # repetitions of every timed step
    store_chunk: int = 1000  # (z) side of the dask chunks stored into the arrays (not tile-aligned)


FULL = Sizes()
QUICK = Sizes(
    array_side=1024,
    rows=300,
    row_len=256,
    varray_side=2048,
    vgrid=8,
    windows=100,
    window=128,
    region=750,
    chunk=128,
    arrays=300,
    store_chunk=250,
)
TINY = Sizes(
    array_side=128,
    rows=20,
    row_len=16,
    varray_side=256,
    vgrid=4,
    windows=10,
    window=32,
    region=100,
    chunk=32,
    arrays=20,
    store_chunk=100,
)
SIZES = {"full": FULL, "quick": QUICK, "tiny": TINY}


# ------------------------------------------------------------------------------ helpers


def pattern(shape: tuple[int, int], dtype: Any, seed: int = 0) -> np.ndarray:
    """Return deterministic 2-d test data (integers below 1009, distinct per ``seed``)."""
    y = np.arange(shape[0], dtype=np.int64)[:, None]
    x = np.arange(shape[1], dtype=np.int64)[None, :]
    return np.asarray((y * 31 + x * 17 + seed * 7919) % 1009, dtype=dtype)


def check(ok: bool, what: str) -> None:
    """Fail loudly when a read does not return what was written."""
    if not ok:
        raise AssertionError(f"verification failed: {what}")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def deker_version() -> str:
    try:
        from importlib.metadata import version

        return version("deker")
    except Exception:
        return "unknown"


def _uri(path: Path) -> str:
    return path.resolve().as_uri()


def _dir_bytes(path: Path, suffix: str = ".hdf5") -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            if name.endswith(suffix):
                full = os.path.join(dirpath, name)
                if not os.path.islink(full):
                    total += os.path.getsize(full)
    return total


class Recorder:
    """Collects the timings of one scenario, per step and engine."""

    def __init__(self, scenario: str, sizes: Sizes) -> None:
        self.scenario = scenario
        self.sizes = sizes
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}

    def add(self, name: str, engine: str, seconds: float, **info: Any) -> None:
        row = self.rows.setdefault(
            (name, engine),
            {"scenario": self.scenario, "name": name, "engine": engine, "runs": [], "verified": False},
        )
        row["runs"].append(round(seconds, 6))
        row.update(info)

    def verified(self, name: str, engine: str) -> None:
        self.rows[(name, engine)]["verified"] = True

    def results(self) -> list[dict[str, Any]]:
        out = []
        for row in self.rows.values():
            row["median"] = round(statistics.median(row["runs"]), 6)
            out.append(row)
        return out


def _deker() -> Any:
    import deker

    return deker


def _client(root: Path) -> Any:
    return _deker().Client(_uri(root))


def _collection(client: Any, name: str, schema: Any, options: Any = None) -> Any:
    if options is None:
        return client.create_collection(name, schema)
    return client.create_collection(name, schema, collection_options=options)


def _array_schema(side: int, dtype: Any) -> Any:
    dk = _deker()
    return dk.ArraySchema(
        dtype=dtype,
        dimensions=[dk.DimensionSchema(name="y", size=side), dk.DimensionSchema(name="x", size=side)],
    )


def _varray_schema(side: int, vgrid: int) -> Any:
    dk = _deker()
    return dk.VArraySchema(
        dtype=np.float32,
        dimensions=[dk.DimensionSchema(name="y", size=side), dk.DimensionSchema(name="x", size=side)],
        vgrid=(vgrid, vgrid),
    )


def _h5_create(path: Path, data: np.ndarray, **kwargs: Any) -> None:
    with h5py.File(path, "w") as handle:
        handle.create_dataset("data", shape=data.shape, dtype=data.dtype, **kwargs)[...] = data


def _h5_read(path: Path, sel: Any = ()) -> np.ndarray:
    with h5py.File(path, "r") as handle:
        return np.asarray(handle["data"][sel])


def _h5_write(path: Path, sel: Any, data: np.ndarray) -> None:
    with h5py.File(path, "r+") as handle:
        handle["data"][sel] = data


# ------------------------------------------------------------------------------ (a) Array


def scenario_a(root: Path, sizes: Sizes, engines: Sequence[str]) -> list[dict[str, Any]]:
    """Array side x side float64: first write, rewrite, full read, random 1 x row_len reads."""
    rec = Recorder("a", sizes)
    side, length = sizes.array_side, sizes.row_len
    shape = (side, side)
    datas = [pattern(shape, np.float64, 0), pattern(shape, np.float64, 1)]
    nbytes = datas[0].nbytes
    rng = np.random.default_rng(6)
    rows = rng.integers(0, side, sizes.rows).tolist()
    cols = rng.integers(0, side - length + 1, sizes.rows).tolist()
    coll = client = None
    if "deker" in engines:
        client = _client(root / "deker_a")
        coll = _collection(client, "bench_a", _array_schema(side, np.float64))
    h5dir = root / "h5py_a"
    h5dir.mkdir(parents=True, exist_ok=True)
    made: dict[str, list[Any]] = {"deker": [], "h5py": []}
    try:
        for rep in range(sizes.reps):
            for engine in engines:
                if engine == "deker":
                    arr = coll.create()
                    made[engine].append(arr)
                    seconds, _ = timed(lambda arr=arr: arr[:].update(datas[0]))
                else:
                    path = h5dir / f"first{rep}.h5"
                    made[engine].append(path)
                    seconds, _ = timed(lambda path=path: _h5_create(path, datas[0]))
                rec.add("array_first_write", engine, seconds, bytes=nbytes, ops=1)
        for engine in engines:  # every first write stored every byte
            for obj in made[engine]:
                got = obj[:].read() if engine == "deker" else _h5_read(obj)
                check(np.array_equal(got, datas[0]), f"{engine} first write")
            rec.verified("array_first_write", engine)
        expected = datas[0]
        for rep in range(sizes.reps):
            expected = datas[(rep + 1) % 2]
            for engine in engines:
                target = made[engine][-1]
                if engine == "deker":
                    seconds, _ = timed(lambda t=target, d=expected: t[:].update(d))
                else:
                    seconds, _ = timed(lambda t=target, d=expected: _h5_write(t, (), d))
                rec.add("array_rewrite", engine, seconds, bytes=nbytes, ops=1)
        for _rep in range(sizes.reps):
            for engine in engines:
                target = made[engine][-1]
                if engine == "deker":
                    seconds, got = timed(lambda t=target: t[:].read())
                else:
                    seconds, got = timed(lambda t=target: _h5_read(t))
                check(np.array_equal(got, expected), f"{engine} full read (and the rewrites before it)")
                del got
                rec.add("array_full_read", engine, seconds, bytes=nbytes, ops=1)
                rec.verified("array_rewrite", engine)
                rec.verified("array_full_read", engine)
        for _rep in range(sizes.reps):
            for engine in engines:
                target = made[engine][-1]
                if engine == "deker":

                    def reads(t: Any = target) -> list[Any]:
                        return [t[r, c : c + length].read() for r, c in zip(rows, cols, strict=True)]

                else:

                    def reads(t: Any = target) -> list[Any]:
                        return [
                            _h5_read(t, (r, slice(c, c + length))) for r, c in zip(rows, cols, strict=True)
                        ]

                seconds, got = timed(reads)
                for (r, c), piece in zip(zip(rows, cols, strict=True), got, strict=True):
                    check(np.array_equal(piece, expected[r, c : c + length]), f"{engine} row read {r},{c}")
                rec.add(
                    "array_row_reads",
                    engine,
                    seconds,
                    ops=len(rows),
                    bytes=len(rows) * length * 8,
                    verified=True,
                )
    finally:
        if client is not None:
            client.close()
    return rec.results()


# ------------------------------------------------------------------------------ (b) VArray


def _windows(sizes: Sizes, seed: int = 7) -> list[tuple[int, int]]:
    """Random window corners such that every window crosses a tile border on both axes."""
    rng = np.random.default_rng(seed)
    side, win = sizes.varray_side, sizes.window
    tile = side // sizes.vgrid
    out = []
    for _ in range(sizes.windows):
        corner = []
        for _axis in range(2):
            border = tile * int(rng.integers(1, sizes.vgrid))
            start = border - int(rng.integers(1, win))
            corner.append(min(max(0, start), side - win))
        out.append((corner[0], corner[1]))
    return out


def _region_corner(sizes: Sizes) -> tuple[int, int, int]:
    side = sizes.varray_side
    oy, ox = int(side * 0.12), int(side * 0.18)
    return oy, ox, min(sizes.region, side - max(oy, ox))


def _tiles(sizes: Sizes) -> list[tuple[tuple[int, int], tuple[slice, slice]]]:
    tile = sizes.varray_side // sizes.vgrid
    return [
        ((i, j), (slice(i * tile, (i + 1) * tile), slice(j * tile, (j + 1) * tile)))
        for i in range(sizes.vgrid)
        for j in range(sizes.vgrid)
    ]


def _h5_tiles_create(folder: Path, data: np.ndarray, sizes: Sizes) -> None:
    folder.mkdir(parents=True)
    for (i, j), sel in _tiles(sizes):
        _h5_create(folder / f"{i}-{j}.h5", data[sel])


def _h5_tiles_read(folder: Path, sizes: Sizes) -> np.ndarray:
    out = np.empty((sizes.varray_side, sizes.varray_side), dtype=np.float32)
    for (i, j), sel in _tiles(sizes):
        with h5py.File(folder / f"{i}-{j}.h5", "r") as handle:
            out[sel] = handle["data"][()]
    return out


def _tile_offsets(folder: Path, sizes: Sizes) -> dict[tuple[int, int], int]:
    """The file offset of every tile file's (contiguous) data, found with h5py before timing."""
    offsets = {}
    for (i, j), _sel in _tiles(sizes):
        with h5py.File(folder / f"{i}-{j}.h5", "r") as handle:
            offset = handle["data"].id.get_offset()
            if offset is None:
                raise RuntimeError(f"tile {i}-{j}: the data of a new contiguous dataset has no offset")
            offsets[(i, j)] = int(offset)
    return offsets


def _os_tiles_read(folder: Path, sizes: Sizes, offsets: dict[tuple[int, int], int]) -> np.ndarray:
    """The floor of deker's layout: every tile's bytes copied into the output, nothing else.

    The I/O deker does on a full read, without HDF5, locks or metadata: each tile file's data
    (offset known in advance) read in 1 MiB stretches with ``os.preadv`` into a per-thread
    buffer, each stretch copied into its place in the output by numpy; one thread per core.
    """
    side = sizes.varray_side
    tile = side // sizes.vgrid
    out = np.empty((side, side), dtype=np.float32)
    rows = max(1, (1 << 20) // (tile * 4))
    local = threading.local()

    def read_tile(item: tuple[tuple[int, int], tuple[slice, slice]]) -> None:
        (i, j), (ys, xs) = item
        buffer = getattr(local, "buffer", None)
        if buffer is None:
            buffer = local.buffer = np.empty((rows, tile), dtype=np.float32)
        fd = os.open(folder / f"{i}-{j}.h5", os.O_RDONLY)
        try:
            for first in range(0, tile, rows):
                count = min(rows, tile - first)
                os.preadv(fd, [buffer[:count].data], offsets[(i, j)] + first * tile * 4)
                out[ys.start + first : ys.start + first + count, xs] = buffer[:count]
        finally:
            os.close(fd)

    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        list(pool.map(read_tile, _tiles(sizes)))
    return out


def _h5_tiles_window(folder: Path, sizes: Sizes, y: int, x: int) -> np.ndarray:
    tile, win = sizes.varray_side // sizes.vgrid, sizes.window
    out = np.empty((win, win), dtype=np.float32)
    for i in range(y // tile, (y + win - 1) // tile + 1):
        for j in range(x // tile, (x + win - 1) // tile + 1):
            y0, y1 = max(y, i * tile), min(y + win, (i + 1) * tile)
            x0, x1 = max(x, j * tile), min(x + win, (j + 1) * tile)
            with h5py.File(folder / f"{i}-{j}.h5", "r") as handle:
                out[y0 - y : y1 - y, x0 - x : x1 - x] = handle["data"][
                    y0 - i * tile : y1 - i * tile, x0 - j * tile : x1 - j * tile
                ]
    return out


def scenario_b(root: Path, sizes: Sizes, engines: Sequence[str]) -> list[dict[str, Any]]:
    """VArray of vgrid x vgrid tiles: first write, full read, windows across borders, region write."""
    rec = Recorder("b", sizes)
    side = sizes.varray_side
    shape = (side, side)
    data = pattern(shape, np.float32, 0)
    nbytes = data.nbytes
    coll = client = None
    if "deker" in engines:
        client = _client(root / "deker_b")
        coll = _collection(client, "bench_b", _varray_schema(side, sizes.vgrid))
    h5dir = root / "h5py_b"
    h5dir.mkdir(parents=True, exist_ok=True)
    if "h5py" in engines:  # also raw h5py on the same 64 tile files as deker (a reference)
        engines = (*engines, "h5py_tiles")
    made: dict[str, list[Any]] = {"deker": [], "h5py": [], "h5py_tiles": []}
    try:
        for rep in range(sizes.reps):
            for engine in engines:
                if engine == "deker":
                    v = coll.create()
                    made[engine].append(v)
                    seconds, _ = timed(lambda v=v: v[:].update(data))
                elif engine == "h5py":
                    path = h5dir / f"first{rep}.h5"
                    made[engine].append(path)
                    seconds, _ = timed(lambda path=path: _h5_create(path, data))
                else:
                    folder = h5dir / f"tiles{rep}"
                    made[engine].append(folder)
                    seconds, _ = timed(lambda f=folder: _h5_tiles_create(f, data, sizes))
                rec.add("varray_first_write", engine, seconds, bytes=nbytes, ops=1, tiles=sizes.vgrid**2)
        floors = {
            rep: _tile_offsets(made["h5py_tiles"][rep], sizes) for rep in range(len(made["h5py_tiles"]))
        }
        for rep in range(sizes.reps):
            for engine in (*engines, "os_tiles") if floors else engines:
                if engine == "os_tiles":  # the floor: the same tile files, no HDF5 and no locks
                    folder = made["h5py_tiles"][rep]
                    seconds, got = timed(lambda f=folder, o=floors[rep]: _os_tiles_read(f, sizes, o))
                    check(np.array_equal(got, data), "os.preadv read of the tile files")
                    del got
                    rec.add("varray_full_read", engine, seconds, bytes=nbytes, ops=1, verified=True)
                    continue
                target = made[engine][rep]
                if engine == "deker":
                    seconds, got = timed(lambda t=target: t[:].read())
                elif engine == "h5py":
                    seconds, got = timed(lambda t=target: _h5_read(t))
                else:
                    seconds, got = timed(lambda t=target: _h5_tiles_read(t, sizes))
                check(np.array_equal(got, data), f"{engine} VArray full read (and its first write)")
                del got
                rec.add("varray_full_read", engine, seconds, bytes=nbytes, ops=1, tiles=sizes.vgrid**2)
                rec.verified("varray_first_write", engine)
                rec.verified("varray_full_read", engine)
        corners = _windows(sizes)
        win = sizes.window
        for _rep in range(sizes.reps):
            for engine in engines:
                target = made[engine][-1]
                if engine == "deker":

                    def reads(t: Any = target) -> list[Any]:
                        return [t[y : y + win, x : x + win].read() for y, x in corners]

                elif engine == "h5py":

                    def reads(t: Any = target) -> list[Any]:
                        return [_h5_read(t, (slice(y, y + win), slice(x, x + win))) for y, x in corners]

                else:

                    def reads(t: Any = target) -> list[Any]:
                        return [_h5_tiles_window(t, sizes, y, x) for y, x in corners]

                seconds, got = timed(reads)
                for (y, x), piece in zip(corners, got, strict=True):
                    check(np.array_equal(piece, data[y : y + win, x : x + win]), f"{engine} window {y},{x}")
                rec.add(
                    "varray_window_reads",
                    engine,
                    seconds,
                    ops=len(corners),
                    bytes=len(corners) * win * win * 4,
                    verified=True,
                )
        engines = tuple(e for e in engines if e != "h5py_tiles")
        _region_writes(rec, "varray_region_write", engines, lambda e, _rep: made[e][-1], data, sizes)
    finally:
        if client is not None:
            client.close()
    return rec.results()


# ------------------------------------------------------------------------------ (c) compression


def _codecs() -> dict[str, dict[str, Any]]:
    return {"zstd": dict(hdf5plugin.Zstd()), "gzip": {"compression": "gzip", "compression_opts": 4}}


def scenario_c(root: Path, sizes: Sizes, engines: Sequence[str]) -> list[dict[str, Any]]:
    """The VArray of (b) with zstd and with gzip chunks: write, read and region write time, stored size."""
    rec = Recorder("c", sizes)
    side = sizes.varray_side
    data = pattern((side, side), np.float32, 0)
    chunk = min(sizes.chunk, side // sizes.vgrid)
    client = _client(root / "deker_c") if "deker" in engines else None
    h5dir = root / "h5py_c"
    h5dir.mkdir(parents=True, exist_ok=True)
    try:
        for codec, kwargs in _codecs().items():
            coll = None
            if client is not None:
                dk = _deker()
                options = dk.HDF5Options(
                    chunks=[chunk, chunk],
                    compression_opts=dk.HDF5CompressionOpts(
                        compression=kwargs["compression"], compression_opts=kwargs["compression_opts"]
                    ),
                )
                coll = _collection(client, f"bench_c_{codec}", _varray_schema(side, sizes.vgrid), options)
            made: dict[str, list[Any]] = {"deker": [], "h5py": []}
            for rep in range(sizes.reps):
                for engine in engines:
                    if engine == "deker":
                        v = coll.create()
                        made[engine].append(v)
                        seconds, _ = timed(lambda v=v: v[:].update(data))
                    else:
                        path = h5dir / f"{codec}{rep}.h5"
                        made[engine].append(path)
                        seconds, _ = timed(
                            lambda p=path, kw=kwargs: _h5_create(p, data, chunks=(chunk, chunk), **kw)
                        )
                    rec.add(f"{codec}_varray_write", engine, seconds, bytes=data.nbytes, ops=1, codec=codec)
            for rep in range(sizes.reps):
                for engine in engines:
                    target = made[engine][rep]
                    if engine == "deker":
                        seconds, got = timed(lambda t=target: t[:].read())
                    else:
                        seconds, got = timed(lambda t=target: _h5_read(t))
                    check(np.array_equal(got, data), f"{engine} {codec} read (and its write)")
                    del got
                    rec.add(f"{codec}_varray_read", engine, seconds, bytes=data.nbytes, ops=1, codec=codec)
                    rec.verified(f"{codec}_varray_write", engine)
                    rec.verified(f"{codec}_varray_read", engine)
            for engine in engines:  # (the stored size is of the first writes)
                if engine == "deker":
                    stored = _dir_bytes(Path(coll.path)) // sizes.reps
                else:
                    stored = os.path.getsize(made[engine][0])
                for name in (f"{codec}_varray_write", f"{codec}_varray_read"):
                    rec.rows[(name, engine)]["stored_bytes"] = stored
            _region_writes(
                rec,
                f"{codec}_varray_region_write",
                engines,
                lambda e, rep, m=made: m[e][rep],
                data,
                sizes,
                codec=codec,
            )
    finally:
        if client is not None:
            client.close()
    return rec.results()


def _region_writes(
    rec: Recorder,
    name: str,
    engines: Sequence[str],
    target_of: Callable[[str, int], Any],
    data: np.ndarray,
    sizes: Sizes,
    **info: Any,
) -> None:
    """Time the region write across tiles, a new region each repetition, into ``target_of(engine, rep)``.

    The targets hold ``data`` before; after the last repetition every target is read back
    whole and must hold ``data`` with the last region written into it.  In (b) one VArray
    takes every repetition; in (c) each repetition writes its own compressed VArray, whose
    region cuts chunks and tiles: the chunks it covers in part are decoded, patched and
    encoded again.
    """
    oy, ox, size = _region_corner(sizes)
    sel = (slice(oy, oy + size), slice(ox, ox + size))
    last: dict[tuple[str, int], tuple[Any, np.ndarray]] = {}  # (engine, target) -> its last region
    for rep in range(sizes.reps):
        region = pattern((size, size), np.float32, 10 + rep)
        for engine in engines:
            target = target_of(engine, rep)
            if engine == "deker":
                seconds, _ = timed(lambda t=target, r=region: t[sel].update(r))
            else:
                seconds, _ = timed(lambda t=target, r=region: _h5_write(t, sel, r))
            rec.add(name, engine, seconds, bytes=region.nbytes, ops=1, **info)
            last[(engine, id(target))] = (target, region)
    for (engine, _), (target, region) in last.items():
        expected = data.copy()
        expected[sel] = region
        got = target[:].read() if engine == "deker" else _h5_read(target)
        check(np.array_equal(got, expected), f"{engine} {name} (whole VArray read back)")
        del got, expected
        rec.verified(name, engine)


# ------------------------------------------------------------------------------ (d) metadata


def _meta_schema() -> Any:
    dk = _deker()
    return dk.ArraySchema(
        dtype=np.float32,
        dimensions=[dk.DimensionSchema(name="y", size=4), dk.DimensionSchema(name="x", size=4)],
        attributes=[
            dk.AttributeSchema(name="station", dtype=int, primary=True),
            dk.AttributeSchema(name="day", dtype=datetime, primary=True),
            dk.AttributeSchema(name="note", dtype=str, primary=False),
        ],
    )


def _keys(count: int) -> list[dict[str, Any]]:
    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    return [{"station": i // 10, "day": start + timedelta(days=i % 10)} for i in range(count)]


def _h5_meta_file(path: Path, payload: bytes) -> None:
    with h5py.File(path, "w") as handle:
        handle.create_dataset("meta", data=np.array(payload, dtype=f"S{len(payload)}"))
        handle.create_dataset("empty_cells", data=np.int64(16))


def _h5_meta(path: Path) -> dict[str, Any]:
    """Read an h5py-made metadata file: its id and custom attributes, flat."""
    with h5py.File(path, "r") as handle:
        meta = json.loads(bytes(handle["meta"][()]))
    return {"id": meta["id"], **meta["custom_attributes"]}


def scenario_d(root: Path, sizes: Sizes, engines: Sequence[str]) -> list[dict[str, Any]]:
    """Create arrays with two primary attributes, look each up by key and by id, iterate."""
    rec = Recorder("d", sizes)
    count = sizes.arrays
    keys = _keys(count)
    order = np.random.default_rng(8).permutation(count).tolist()
    client = _client(root / "deker_d") if "deker" in engines else None
    h5dir = root / "h5py_d"
    made: dict[str, Any] = {}
    try:
        for rep in range(sizes.reps):
            for engine in engines:
                if engine == "deker":
                    coll = _collection(client, f"bench_d{rep}", _meta_schema())

                    def create(c: Any = coll) -> list[str]:
                        return [c.create(k, {"note": f"n{i}"}).id for i, k in enumerate(keys)]

                    seconds, ids = timed(create)
                    made.setdefault(engine, (coll, ids))
                else:
                    folder = h5dir / str(rep)
                    folder.mkdir(parents=True)

                    def create(f: Path = folder) -> list[str]:
                        names = []
                        for i, key in enumerate(keys):
                            name = f"{i:08x}"
                            payload = {
                                "id": name,
                                "primary_attributes": {**key, "day": key["day"].isoformat()},
                                "custom_attributes": {"note": f"n{i}"},
                            }
                            _h5_meta_file(f / f"{name}.hdf5", json.dumps(payload).encode())
                            names.append(name)
                        return names

                    seconds, ids = timed(create)
                    made.setdefault(engine, (folder, ids))
                rec.add("array_create", engine, seconds, ops=count)
        for _rep in range(sizes.reps):
            for engine in engines:
                where, ids = made[engine]
                if engine == "deker":

                    def by_key(c: Any = where) -> list[Any]:
                        return [c.filter(keys[i]).last() for i in order]

                    def by_id(c: Any = where, ids: list[str] = ids) -> list[Any]:
                        return [c.filter({"id": ids[i]}).last() for i in order]

                    def every(c: Any = where) -> list[str]:
                        return [a.id for a in c]

                else:

                    def by_key(f: Path = where, ids: list[str] = ids) -> list[Any]:
                        return [_h5_meta(f / f"{ids[i]}.hdf5") for i in order]

                    by_id = by_key

                    def every(f: Path = where) -> list[str]:
                        return [_h5_meta(Path(e.path))["id"] for e in os.scandir(f)]

                seconds, found = timed(by_key)
                for i, obj in zip(order, found, strict=True):
                    got_id = obj.id if engine == "deker" else obj["id"]
                    check(got_id == ids[i], f"{engine} lookup by primary key {keys[i]}")
                    if engine == "deker":
                        check(dict(obj.primary_attributes) == keys[i], f"{engine} attributes of {ids[i]}")
                rec.add("lookup_by_key", engine, seconds, ops=count, verified=True)
                if engine == "deker":  # the lookup, then the custom attributes (read from the file)

                    def by_key_custom(c: Any = where) -> list[Any]:
                        return [c.filter(keys[i]).last().custom_attributes for i in order]

                    seconds, found = timed(by_key_custom)
                    found = [{"id": ids[i], **custom} for i, custom in zip(order, found, strict=True)]
                else:
                    seconds, found = timed(by_key)
                for i, obj in zip(order, found, strict=True):
                    check(
                        obj["id"] == ids[i] and obj.get("note") == f"n{i}", f"{engine} custom attributes {i}"
                    )
                rec.add("lookup_by_key_custom", engine, seconds, ops=count, verified=True)
                seconds, found = timed(by_id)
                for i, obj in zip(order, found, strict=True):
                    got_id = obj.id if engine == "deker" else obj["id"]
                    check(got_id == ids[i], f"{engine} lookup by id {ids[i]}")
                rec.add("lookup_by_id", engine, seconds, ops=count, verified=True)
                seconds, listed = timed(every)
                check(sorted(listed) == sorted(ids), f"{engine} iteration lists every array once")
                rec.add("iterate", engine, seconds, ops=count, verified=True)
        for engine in engines:
            rec.verified("array_create", engine)  # every created array was found again above
    finally:
        if client is not None:
            client.close()
    return rec.results()


# ------------------------------------------------------------------------------ (e) peak memory


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    """Reset the kernel's peak RSS of this process to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    """The peak RSS (VmHWM) of this process since its start or the last :func:`_reset_peak`."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child_mem(args: argparse.Namespace) -> dict[str, Any]:
    """In a fresh process: read a whole VArray (or h5py file) and report the memory it took."""
    if args.engine == "deker":
        client = _deker().Client(args.uri)
        coll = client.get_collection(args.collection)
        v = coll.filter({"id": args.id}).last()
        v[0:1, 0:1].read()  # start the thread pool: its threads are baseline, not the read
        subset = v[:]
        read: Callable[[], np.ndarray] = subset.read
    else:
        client = None

        def read() -> np.ndarray:
            return _h5_read(Path(args.path))

    import gc

    gc.collect()
    reset = _reset_peak()
    base = _rss()
    base_peak = _peak_rss()
    start = time.perf_counter()
    out = read()
    seconds = time.perf_counter() - start
    peak = _peak_rss()
    crc = zlib.crc32(memoryview(np.ascontiguousarray(out)).cast("B"))
    if client is not None:
        client.close()
    return {
        "baseline_rss": base,
        "baseline_peak": base_peak,
        "peak_rss": peak,
        "peak_reset": reset,
        "output_bytes": int(out.nbytes),
        "seconds": seconds,
        "crc32": crc,
    }


def _run_child(python: str, argv: list[str], cwd: Path, stdin: str | None = None) -> dict[str, Any]:
    proc = subprocess.run(
        [python, str(Path(__file__).resolve()), *argv],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {argv[0]} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def scenario_e(root: Path, sizes: Sizes, engines: Sequence[str]) -> list[dict[str, Any]]:
    """Peak memory of a full VArray read, in a fresh process, relative to the output size."""
    rec = Recorder("e", sizes)
    side = sizes.varray_side
    data = pattern((side, side), np.float32, 3)
    want = zlib.crc32(memoryview(data).cast("B"))
    argv: dict[str, list[str]] = {}
    if "deker" in engines:
        storage = root / "deker_e"
        with _client(storage) as client:
            v = _collection(client, "bench_e", _varray_schema(side, sizes.vgrid)).create()
            v[:].update(data)
            argv["deker"] = ["--uri", _uri(storage), "--collection", "bench_e", "--id", v.id]
    if "h5py" in engines:
        path = root / "h5py_e.h5"
        _h5_create(path, data)
        argv["h5py"] = ["--path", str(path)]
    for _rep in range(sizes.reps):
        for engine in engines:
            got = _run_child(sys.executable, ["child-mem", "--engine", engine, *argv[engine]], root)
            check(got["crc32"] == want, f"{engine} full read in a fresh process (checksum)")
            extra = got["peak_rss"] - got["baseline_rss"]
            rec.add(
                "varray_read_peak_memory",
                engine,
                got["seconds"],
                bytes=got["output_bytes"],
                ops=1,
                verified=True,
            )
            row = rec.rows[("varray_read_peak_memory", engine)]
            row.setdefault("extra_rss", []).append(extra)
            row.setdefault("baseline_peak_above_rss", []).append(got["baseline_peak"] - got["baseline_rss"])
    out = rec.results()
    for row in out:
        row["memory_ratio"] = round(statistics.median(row["extra_rss"]) / row["bytes"], 4)
    return out


# ------------------------------------------------------------------------------ (f) two writers


def child_half(args: argparse.Namespace) -> dict[str, Any]:
    """In its own process: prepare one half, say ready, wait for "go", write it, report times."""
    side, half = args.side, args.half
    rows = slice(half * side // 2, (half + 1) * side // 2)
    data = pattern((side, side), np.float32, 5)[rows]
    if args.engine == "deker":
        client = _deker().Client(args.uri)
        v = client.get_collection(args.collection).filter({"id": args.id}).last()
        v[0:1, 0:1].read()  # warm up the thread pool and the imports
        subset = v[rows, :]

        def write() -> None:
            subset.update(data)

    else:
        client = None

        def write() -> None:
            _h5_create(Path(args.path), data)

    print("ready", flush=True)
    sys.stdin.readline()  # the parent's "go", sent to both writers at once
    start = time.monotonic()
    write()
    end = time.monotonic()
    if client is not None:
        client.close()
    return {"start": start, "end": end}


def scenario_f(root: Path, sizes: Sizes, engines: Sequence[str]) -> list[dict[str, Any]]:
    """Two processes write the two halves (rows) of one VArray at the same time."""
    rec = Recorder("f", sizes)
    side = sizes.varray_side
    data = pattern((side, side), np.float32, 5)
    storage = root / "deker_f"
    client = _client(storage) if "deker" in engines else None
    coll = _collection(client, "bench_f", _varray_schema(side, sizes.vgrid)) if client is not None else None
    try:
        return _two_writers(root, sizes, engines, rec, coll, storage, data)
    finally:
        if client is not None:
            client.close()


def _two_writers(
    root: Path,
    sizes: Sizes,
    engines: Sequence[str],
    rec: Recorder,
    coll: Any,
    storage: Path,
    data: np.ndarray,
) -> list[dict[str, Any]]:
    side = sizes.varray_side
    for rep in range(sizes.reps):
        for engine in engines:
            if engine == "deker":
                vid = coll.create().id
                extra = ["--uri", _uri(storage), "--collection", "bench_f", "--id", vid]
                argvs = [["--half", str(h), *extra] for h in (0, 1)]
            else:
                argvs = [["--half", str(h), "--path", str(root / f"h5py_f{rep}_{h}.h5")] for h in (0, 1)]
            procs = [
                subprocess.Popen(
                    [
                        sys.executable,
                        str(Path(__file__).resolve()),
                        "child-half",
                        "--engine",
                        engine,
                        "--side",
                        str(side),
                        *argv,
                    ],
                    cwd=root,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for argv in argvs
            ]
            try:
                for proc in procs:
                    line = proc.stdout.readline() if proc.stdout else ""
                    if line.strip() != "ready":
                        raise RuntimeError(f"writer did not start: {line!r} {proc.communicate()[1][-4000:]}")
                for proc in procs:  # release both writers as close together as possible
                    assert proc.stdin is not None
                    proc.stdin.write("go\n")
                    proc.stdin.flush()
                outs = []
                for proc in procs:
                    stdout, stderr = proc.communicate(timeout=600)
                    if proc.returncode != 0:
                        raise RuntimeError(f"writer failed ({proc.returncode}):\n{stderr[-4000:]}")
                    outs.append(json.loads(stdout.strip().splitlines()[-1]))
            finally:
                for proc in procs:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
            seconds = max(o["end"] for o in outs) - min(o["start"] for o in outs)
            if engine == "deker":
                v = coll.filter({"id": vid}).last()
                got = v[:].read()
                check(np.array_equal(got, data), "two writers: the whole VArray read back")
            else:
                halves = [_h5_read(root / f"h5py_f{rep}_{h}.h5") for h in (0, 1)]
                check(np.array_equal(np.concatenate(halves), data), "two h5py writers: both files read back")
            rec.add("two_process_write", engine, seconds, bytes=data.nbytes, ops=1, verified=True)
    return rec.results()


# ------------------------------------------------------------------------------ driver

RUNNERS: dict[str, Callable[[Path, Sizes, Sequence[str]], list[dict[str, Any]]]] = {
    "a": scenario_a,
    "b": scenario_b,
    "c": scenario_c,
    "d": scenario_d,
    "e": scenario_e,
    "f": scenario_f,
}


def run_scenarios(
    root: Path,
    sizes: Sizes,
    engines: Sequence[str] = ENGINES,
    only: Iterable[str] = SCENARIOS,
    emit: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run the chosen scenarios in ``root`` (one sub-folder each, removed afterwards).

    A scenario that fails yields one record ``{"scenario", "engine", "error"}`` and the others
    still run.
    """
    out: list[dict[str, Any]] = []
    for key in only:
        folder = root / f"scenario_{key}"
        folder.mkdir(parents=True, exist_ok=True)
        try:
            rows = RUNNERS[key](folder, sizes, tuple(engines))
        except Exception as exc:  # reported, the other scenarios go on
            rows = [{"scenario": key, "engine": ",".join(engines), "error": f"{type(exc).__name__}: {exc}"}]
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        for row in rows:
            if emit is not None:
                emit(row)
            out.append(row)
    return out


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run scenarios with this interpreter's deker (JSON lines)")
    run.add_argument("--root", required=True, type=Path)
    run.add_argument("--sizes", default="full", choices=sorted(SIZES))
    run.add_argument("--sizes-json", type=Path, help="a JSON object of Sizes fields (overrides --sizes)")
    run.add_argument("--reps", type=int, default=None)
    run.add_argument("--only", default=SCENARIOS)
    run.add_argument("--engines", default="deker")
    mem = sub.add_parser("child-mem")
    half = sub.add_parser("child-half")
    for p in (mem, half):
        p.add_argument("--engine", required=True, choices=ENGINES)
        p.add_argument("--uri")
        p.add_argument("--collection")
        p.add_argument("--id")
        p.add_argument("--path")
    half.add_argument("--side", type=int, required=True)
    half.add_argument("--half", type=int, required=True, choices=(0, 1))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    if args.command == "child-mem":
        print(json.dumps(child_mem(args)))
        return 0
    if args.command == "child-half":
        print(json.dumps(child_half(args)))
        return 0
    sizes = SIZES[args.sizes]
    if args.sizes_json:
        sizes = Sizes(**json.loads(args.sizes_json.read_text()))
    if args.reps:
        sizes = replace(sizes, reps=args.reps)
    meta = {"kind": "meta", "deker": deker_version(), "numpy": np.__version__, "sizes": asdict(sizes)}
    print(json.dumps(meta), flush=True)
    args.root.mkdir(parents=True, exist_ok=True)
    rows = run_scenarios(
        args.root,
        sizes,
        engines=args.engines.split(","),
        only=args.only,
        emit=lambda row: print(json.dumps(row), flush=True),
    )
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
