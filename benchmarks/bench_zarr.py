"""Scenario (z) of issue 17: deker beside zarr-python v3 (plain and sharded) and raw h5py.

One float32 ``side x side`` array in ``vgrid x vgrid`` tiles (full size: 8192 x 8192 in 64
tiles of 1024 x 1024), stored by four engines in the same run:

- ``deker``: a VArray of that grid;
- ``zarr``: a zarr v3 array whose chunks are the tiles (zstd: chunks of ``chunk x chunk``,
  the same compression unit as deker's HDF5 chunks);
- ``zarr_sharded``: a zarr v3 array with shards of one tile and inner chunks of
  ``chunk x chunk`` (256 x 256 at full size), uncompressed and zstd alike;
- ``h5py``: raw h5py, one file holding one dataset (contiguous; zstd: chunked like deker).

zstd is level 3 everywhere (hdf5plugin's filter for deker and h5py, zarr's ``ZstdCodec``).
The uncompressed full read also times the floor of deker's layout (``os_tiles``, the
``os.preadv`` read of 64 tile files of :mod:`benchmarks.scenarios`).

Steps: first write, full read, ``windows`` reads of ``window x window`` across tile borders
(the full read and the windows also through a read-only view of deker's storage, ``deker_ro``:
a real read-only bind mount as root, else ``Client(read_only=True)``; interleaved with the
same reads through the writable client, ``deker_rw``, of a VArray both read before),
zstd first write and full read, then the same read again on every CPU and with the whole
process on one CPU, in turn (what the second core brings); the zstd steps again with data
shaped like a measured field (:func:`field`), whose decoding costs more than copying its
bytes; a dask sum on a 2-process
``LocalCluster``, a dask ``store`` from chunks of ``1000 x 1000`` (scaled with ``side``,
never aligned on the tiles) with the threaded scheduler and with the cluster, and deker's
``Client(executor=dask_client)`` full write and read against its own thread pool
(``deker_executor`` against ``deker``) and against the bare transfer of the same bytes
between the client and the workers (``transport``).

Every repetition runs every engine in turn, and the engine that goes first changes from one
repetition to the next (:func:`in_turn`); every timed write starts with nothing dirty in the
page cache (:func:`timed_write`); every read is compared with what was written and every write
is read back: a wrong answer raises ``AssertionError`` ("verification failed") and the part of
the suite it belongs to (uncompressed, zstd, dask) is reported as an error while the others
still run.

zarr needs the ``bench`` extra (``pip install -e '.[bench]'``; zarr 3 needs Python >= 3.11).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from benchmarks import scenarios
from benchmarks.scenarios import Sizes, check, pattern, timed

SCENARIO = "z"
ENGINES = ("deker", "zarr", "zarr_sharded", "h5py")
ZSTD_LEVEL = 3
CLUSTER_WORKERS = 2
MIB = 1024 * 1024


def in_turn(engines: Mapping[str, Engine], rep: int) -> list[tuple[str, Engine]]:
    """Return the engines in the order of repetition ``rep``: each one goes first in its turn.

    With a fixed order one engine always runs first after a step of another kind, and each
    always right after the same other one; on a small machine what the previous engine left
    (dirty pages, freed memory) moved a step's median by more than the engines differ.
    """
    items = list(engines.items())
    first = rep % len(items) if items else 0
    return items[first:] + items[:first]


def timed_write(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Time a write that starts with nothing dirty in the page cache (``os.sync()`` first, untimed).

    Without it a write pays for the write-back of the 256 MiB the previous engine wrote: on the
    2-core VM, deker's store from dask took 0.37-0.46 s after a read and 0.77-1.07 s right
    after zarr's write, in the same process.
    """
    os.sync()
    return timed(fn)


@dataclass(frozen=True)
class ZStep:
    """One step of the suite: what it is and whether it is a rate (ops per second)."""

    what: str
    rate: bool = False


STEPS: dict[str, ZStep] = {
    "z_first_write": ZStep("first write (uncompressed)"),
    "z_full_read": ZStep("full read (uncompressed)"),
    "z_window_reads": ZStep("windows across tiles (uncompressed)", rate=True),
    "z_zstd_write": ZStep("zstd first write"),
    "z_zstd_read": ZStep("zstd full read"),
    "z_zstd_reread": ZStep("zstd full read again"),
    "z_zstd_read_1cpu": ZStep("zstd full read again, the process on one CPU"),
    "z_field_write": ZStep("zstd first write, a measured-like field"),
    "z_field_read": ZStep("zstd full read, the field"),
    "z_field_reread": ZStep("zstd full read again, the field"),
    "z_field_read_1cpu": ZStep("zstd full read again, the field, the process on one CPU"),
    "z_dask_sum": ZStep("dask sum, 2-process LocalCluster"),
    "z_store_threads": ZStep("dask store, unaligned chunks, threads"),
    "z_store_distributed": ZStep("dask store, unaligned chunks, LocalCluster"),
    "z_executor_write": ZStep("full write, Client(executor=dask_client)"),
    "z_executor_read": ZStep("full read, Client(executor=dask_client)"),
}


# The zstd steps of each data set: write, read, read again on every CPU, read on one CPU.
_PATTERN_ZSTD_STEPS = ("z_zstd_write", "z_zstd_read", "z_zstd_reread", "z_zstd_read_1cpu")
_FIELD_ZSTD_STEPS = ("z_field_write", "z_field_read", "z_field_reread", "z_field_read_1cpu")
# The one-CPU read of each zstd data set, and its read again on every CPU.
_AGAIN_ON_EVERY_CPU = {steps[3]: steps[2] for steps in (_PATTERN_ZSTD_STEPS, _FIELD_ZSTD_STEPS)}


def zarr_available() -> str | None:
    """Return None when zarr v3 can be imported, else why not (for a skip record)."""
    try:
        import zarr
    except ImportError as exc:
        return f"zarr is not installed ({exc}): pip install -e '.[bench]' (Python >= 3.11)"
    if int(zarr.__version__.split(".")[0]) < 3:
        return f"zarr {zarr.__version__} is installed; the suite needs zarr-python >= 3"
    return None


def versions() -> dict[str, str]:
    """The versions of the peers (zarr, numcodecs, dask, distributed), "-" when absent."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("zarr", "numcodecs", "dask", "distributed"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "-"
    return out


def store_chunk(sizes: Sizes) -> int:
    """The side of the dask chunks of the ``store`` steps (``sizes.store_chunk``), never tile-aligned."""
    tile = sizes.varray_side // sizes.vgrid
    side = max(2, min(sizes.store_chunk, sizes.varray_side - 1))
    while side > 2 and (tile % side == 0 or side % tile == 0):
        side -= 1
    return side


# ------------------------------------------------------------------------------ engines


class Engine:
    """How one storage creates, writes, reads, exposes to dask and stores one array."""

    name = ""

    def __init__(self, root: Path, sizes: Sizes) -> None:
        self.root = root / self.name
        self.root.mkdir(parents=True, exist_ok=True)
        self.sizes = sizes
        self.side = sizes.varray_side
        self.tile = sizes.varray_side // sizes.vgrid
        self.chunk = min(sizes.chunk, self.tile)
        self.made = 0

    def create(self, codec: str | None) -> Any:
        """Make a new empty array (untimed); ``codec`` is None or ``"zstd"``."""
        raise NotImplementedError

    def write(self, handle: Any, data: np.ndarray) -> None:
        raise NotImplementedError

    def read(self, handle: Any, sel: tuple[slice, ...] = ()) -> np.ndarray:
        raise NotImplementedError

    def lazy(self, handle: Any) -> Any:
        """A dask array over the stored array, one chunk per tile, computable on a cluster."""
        raise NotImplementedError

    def store(self, source: Any, handle: Any, scheduler: Any) -> bool:
        """Write the dask array ``source``; False when this engine cannot with ``scheduler``."""
        raise NotImplementedError

    def drop(self, handle: Any) -> None:
        """Delete the array (untimed), to keep the disk and the page cache small."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class DekerEngine(Engine):
    name = "deker"

    def __init__(self, root: Path, sizes: Sizes, executor: Any = None) -> None:
        super().__init__(root, sizes)
        import deker

        self.deker = deker
        self.client = deker.Client(self.root.resolve().as_uri(), executor=executor)
        self.collections: dict[str | None, Any] = {}

    def _collection(self, codec: str | None) -> Any:
        if codec not in self.collections:
            dk = self.deker
            schema = dk.VArraySchema(
                dtype=np.float32,
                dimensions=[
                    dk.DimensionSchema(name="y", size=self.side),
                    dk.DimensionSchema(name="x", size=self.side),
                ],
                vgrid=(self.sizes.vgrid, self.sizes.vgrid),
            )
            options = None
            if codec == "zstd":
                kwargs = scenarios._codecs()["zstd"]
                options = dk.HDF5Options(
                    chunks=[self.chunk, self.chunk],
                    compression_opts=dk.HDF5CompressionOpts(
                        compression=kwargs["compression"], compression_opts=kwargs["compression_opts"]
                    ),
                )
            name = f"z_{codec or 'raw'}_{len(self.collections)}"
            if options is None:
                self.collections[codec] = self.client.create_collection(name, schema)
            else:
                self.collections[codec] = self.client.create_collection(
                    name, schema, collection_options=options
                )
        return self.collections[codec]

    def create(self, codec: str | None) -> Any:
        return self._collection(codec).create()

    def write(self, handle: Any, data: np.ndarray) -> None:
        handle[:].update(data)

    def read(self, handle: Any, sel: tuple[slice, ...] = ()) -> np.ndarray:
        return np.asarray(handle[sel].read() if sel else handle[:].read())

    def lazy(self, handle: Any) -> Any:
        import deker_dask

        return deker_dask.to_dask(handle)

    def store(self, source: Any, handle: Any, scheduler: Any) -> bool:
        import deker_dask

        deker_dask.store(source, handle, scheduler=scheduler)
        return True

    def drop(self, handle: Any) -> None:
        handle.delete()

    def close(self) -> None:
        self.client.close()


class ZarrEngine(Engine):
    """zarr-python v3 on a local directory; chunks = tiles (zstd: chunks of ``chunk``)."""

    name = "zarr"
    sharded = False

    def _layout(self, codec: str | None) -> dict[str, Any]:
        if self.sharded:
            return {"chunks": (self.chunk, self.chunk), "shards": (self.tile, self.tile)}
        side = self.chunk if codec else self.tile
        return {"chunks": (side, side)}

    def write_chunks(self, codec: str | None) -> tuple[int, int]:
        """The blocks a writer must cover whole (concurrent partial writes would race)."""
        layout = self._layout(codec)
        return tuple(layout.get("shards") or layout["chunks"])  # type: ignore[return-value]

    def create(self, codec: str | None) -> Any:
        import zarr
        from zarr.codecs import ZstdCodec

        self.made += 1
        path = self.root / f"a{self.made}.zarr"
        return zarr.create_array(
            store=str(path),
            shape=(self.side, self.side),
            dtype="float32",
            compressors=ZstdCodec(level=ZSTD_LEVEL) if codec == "zstd" else None,
            fill_value=0.0,
            **self._layout(codec),
        )

    def write(self, handle: Any, data: np.ndarray) -> None:
        handle[...] = data

    def read(self, handle: Any, sel: tuple[slice, ...] = ()) -> np.ndarray:
        return np.asarray(handle[sel] if sel else handle[...])

    def lazy(self, handle: Any) -> Any:
        import dask.array as da

        return da.from_zarr(handle, chunks=(self.tile, self.tile))

    def store(self, source: Any, handle: Any, scheduler: Any) -> bool:
        import dask.array as da

        # zarr writes a chunk (a shard) whole: dask chunks that cut one would race and lose
        # data, so a zarr user rechunks to the write blocks first (dask's to_zarr asks the same)
        blocks = self.write_chunks(None)
        da.store(source.rechunk(blocks), handle, lock=False, scheduler=scheduler)
        return True

    def drop(self, handle: Any) -> None:
        shutil.rmtree(handle.store.root, ignore_errors=True)


class ShardedZarrEngine(ZarrEngine):
    """zarr-python v3 with shards of one tile holding inner chunks of ``chunk x chunk``."""

    name = "zarr_sharded"
    sharded = True


def _h5_block(path: str, block_info: Any = None) -> np.ndarray:
    """Read the block of one dask chunk from an HDF5 file (a picklable task for the workers)."""
    (y0, y1), (x0, x1) = block_info[None]["array-location"]
    with h5py.File(path, "r") as handle:
        return np.asarray(handle["data"][y0:y1, x0:x1])


class H5pyEngine(Engine):
    """Raw h5py: one file, one dataset (contiguous; zstd: chunked like deker's tiles)."""

    name = "h5py"

    def create(self, codec: str | None) -> Any:
        self.made += 1
        path = self.root / f"a{self.made}.h5"
        kwargs: dict[str, Any] = {}
        if codec == "zstd":
            kwargs = {"chunks": (self.chunk, self.chunk), **scenarios._codecs()["zstd"]}
        with h5py.File(path, "w") as handle:
            handle.create_dataset("data", shape=(self.side, self.side), dtype=np.float32, **kwargs)
        return path

    def write(self, handle: Any, data: np.ndarray) -> None:
        with h5py.File(handle, "r+") as f:
            f["data"][...] = data

    def read(self, handle: Any, sel: tuple[slice, ...] = ()) -> np.ndarray:
        with h5py.File(handle, "r") as f:
            return np.asarray(f["data"][sel])

    def lazy(self, handle: Any) -> Any:
        import dask.array as da

        chunks = ((self.tile,) * self.sizes.vgrid,) * 2
        return da.map_blocks(_h5_block, str(handle), chunks=chunks, dtype=np.float32)

    def store(self, source: Any, handle: Any, scheduler: Any) -> bool:
        import dask.array as da

        if scheduler != "threads":  # one HDF5 file has one writer: no worker processes
            return False
        with h5py.File(handle, "r+") as f:
            da.store(source, f["data"], lock=True, scheduler="threads")
        return True

    def drop(self, handle: Any) -> None:
        Path(handle).unlink(missing_ok=True)


FACTORIES: dict[str, Callable[[Path, Sizes], Engine]] = {
    "deker": DekerEngine,
    "zarr": ZarrEngine,
    "zarr_sharded": ShardedZarrEngine,
    "h5py": H5pyEngine,
}


# ------------------------------------------------------------------------------ recording


class Recorder(scenarios.Recorder):
    def add(self, name: str, engine: str, seconds: float, **info: Any) -> None:
        super().add(name, engine, seconds, **info)
        self.rows[(name, engine)]["suite"] = "zarr"


def _lazy_pattern(side: int, chunk: int, seed: int) -> Any:
    """``scenarios.pattern((side, side), float32, seed)`` as a dask array of ``chunk`` blocks."""
    import dask.array as da

    y = da.arange(side, dtype=np.int64, chunks=chunk)[:, None]
    x = da.arange(side, dtype=np.int64, chunks=chunk)[None, :]
    return ((y * 31 + x * 17 + seed * 7919) % 1009).astype(np.float32)


def _writes_and_reads(
    rec: Recorder,
    engines: Mapping[str, Engine],
    codec: str | None,
    data: np.ndarray,
    sizes: Sizes,
    names: tuple[str, str],
    floor: Path | None = None,
) -> dict[str, list[Any]]:
    write_name, read_name = names
    made: dict[str, list[Any]] = {e: [] for e in engines}
    for rep in range(sizes.reps):
        for name, engine in in_turn(engines, rep):
            handle = engine.create(codec)
            made[name].append(handle)
            seconds, _ = timed_write(lambda e=engine, h=handle: e.write(h, data))
            rec.add(write_name, name, seconds, bytes=data.nbytes, ops=1, codec=codec or "none")
    offsets = scenarios._tile_offsets(floor, sizes) if floor is not None else None
    os.sync()  # untimed: the reads do not compete with the write-back of what was just written
    for rep in range(sizes.reps):
        for name, engine in in_turn(engines, rep):
            seconds, got = timed(lambda e=engine, h=made[name][rep]: e.read(h))
            check(np.array_equal(got, data), f"{name} full read ({codec or 'uncompressed'}; and its write)")
            del got
            rec.add(read_name, name, seconds, bytes=data.nbytes, ops=1, codec=codec or "none")
            rec.verified(write_name, name)
            rec.verified(read_name, name)
        if floor is not None and offsets is not None:
            seconds, got = timed(lambda: scenarios._os_tiles_read(floor, sizes, offsets))
            check(np.array_equal(got, data), "os.preadv read of the tile files")
            del got
            rec.add(read_name, "os_tiles", seconds, bytes=data.nbytes, ops=1, verified=True)
    return made


def _part_uncompressed(
    rec: Recorder, engines: Mapping[str, Engine], sizes: Sizes, root: Path
) -> dict[str, Any]:
    data = pattern((sizes.varray_side,) * 2, np.float32, 0)
    floor = root / "os_tiles"
    scenarios._h5_tiles_create(floor, data, sizes)  # the floor's 64 tile files (untimed)
    try:
        made = _writes_and_reads(rec, engines, None, data, sizes, ("z_first_write", "z_full_read"), floor)
    finally:
        shutil.rmtree(floor, ignore_errors=True)
    for rep in range(sizes.reps):
        for name, engine in in_turn(engines, rep):
            handle = made[name][-1]
            _window_reads(rec, name, lambda sel, e=engine, h=handle: e.read(h, sel), data, sizes)
    for name, engine in engines.items():  # keep the last array of each engine for the dask sum
        for handle in made[name][:-1]:
            engine.drop(handle)
    return {name: made[name][-1] for name in engines}


def _window_reads(
    rec: Recorder,
    name: str,
    read: Callable[[tuple[slice, ...]], np.ndarray],
    data: np.ndarray,
    sizes: Sizes,
    **info: Any,
) -> None:
    """Time one pass of the windows across tiles with ``read``, check every window, record it."""
    corners = scenarios._windows(sizes)
    win = sizes.window

    def reads() -> list[np.ndarray]:
        return [read((slice(y, y + win), slice(x, x + win))) for y, x in corners]

    seconds, got = timed(reads)
    for (y, x), piece in zip(corners, got, strict=True):
        check(np.array_equal(piece, data[y : y + win, x : x + win]), f"{name} window {y},{x}")
    rec.add("z_window_reads", name, seconds, ops=len(corners), bytes=len(corners) * win * win * 4, **info)
    rec.verified("z_window_reads", name)


@contextmanager
def read_only_view(root: Path) -> Iterator[tuple[Path, str]]:
    """Yield a read-only view of ``root`` and how it is read-only.

    As root on Linux, a real read-only bind mount of ``root`` (unmounted afterwards): a deker
    client opened there finds it cannot write and reads as a read-only reader by itself.
    Elsewhere ``root`` itself, to be opened with ``Client(read_only=True)`` (the same reader).
    """
    mnt = root.parent / f"{root.name}-read-only"
    mnt.mkdir()
    mounted = False
    try:
        if os.geteuid() == 0 and shutil.which("mount"):
            mounted = _run(["mount", "--bind", str(root), str(mnt)])
            if mounted and not _run(["mount", "-o", "remount,ro,bind", str(mnt)]):
                _run(["umount", str(mnt)])
                mounted = False
        if mounted:
            yield mnt, "read-only bind mount"
        else:
            yield root, "Client(read_only=True)"
    finally:
        if mounted:
            _run(["umount", str(mnt)]) or _run(["umount", "-l", str(mnt)])
        mnt.rmdir()


def _run(cmd: list[str]) -> bool:
    return subprocess.run(cmd, capture_output=True, check=False).returncode == 0


def _part_read_only(
    rec: Recorder, engines: Mapping[str, Engine], sizes: Sizes, kept: Mapping[str, Any]
) -> None:
    """deker's full read and window reads of the kept VArray, read-only and writable in turn.

    The VArray the writable client read last in the uncompressed part, read through a
    read-only view of its storage (``deker_ro``) and, interleaved with it in every
    repetition, through the writable client again (``deker_rw``).  Both read a VArray they
    read before, so both find its files' layouts remembered; the uncompressed part's
    ``deker`` full read is each VArray's first (the layouts learnt then), which a repeated
    read does not pay.  Target of issue 17: ``deker_ro`` within 1.1x of ``deker_rw``.
    """
    engine = engines.get("deker")
    if not isinstance(engine, DekerEngine) or "deker" not in kept:
        return
    handle = kept["deker"]
    data = pattern((sizes.varray_side,) * 2, np.float32, 0)
    with read_only_view(engine.root) as (where, how):
        client = engine.deker.Client(where.resolve().as_uri(), read_only=how != "read-only bind mount")
        try:
            check(client.read_only, f"the client on the {how} is not read-only")
            varray = client.get_collection(handle.collection).filter({"id": handle.id}).last()
            readers = {"deker_rw": (handle, {}), "deker_ro": (varray, {"how": how})}
            for _rep in range(sizes.reps):
                for name, (which, info) in readers.items():
                    seconds, got = timed(lambda w=which: engine.read(w))
                    check(np.array_equal(got, data), f"{name} full read ({how})")
                    del got
                    rec.add("z_full_read", name, seconds, bytes=data.nbytes, ops=1, verified=True, **info)
                for name, (which, info) in readers.items():
                    _window_reads(rec, name, lambda sel, w=which: engine.read(w, sel), data, sizes, **info)
        finally:
            client.close()


@contextmanager
def one_cpu() -> Iterator[bool]:
    """Pin every thread of this process to one of its CPUs for the block (``False``: it has one).

    ``os.sched_setaffinity(0, ...)`` moves the calling thread only: the threads already running
    (the client's pool, the codec pool) are moved one by one, by their ids in ``/proc/self/task``.
    """
    try:
        cpus = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        yield False
        return
    if len(cpus) < 2:
        yield False
        return

    def pin(to: set[int]) -> None:
        for tid in os.listdir("/proc/self/task"):
            try:
                os.sched_setaffinity(int(tid), to)
            except OSError:  # a thread that ended meanwhile
                pass

    pin({min(cpus)})
    try:
        yield True
    finally:
        pin(set(cpus))


def field(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Return deterministic float32 data shaped like a measured field (a temperature in K).

    Each row is a random walk (steps of 0.05 K) around 280 K, kept to two decimals: it
    compresses about as a gridded variable does (zstd level 3 keeps about 30 % of its bytes),
    whereas zstd keeps under 1 % of :func:`~benchmarks.scenarios.pattern`, which then
    decodes at the speed of memory, so there a second core has little decoding to share.
    """
    rng = np.random.default_rng(seed)
    walk = np.cumsum(rng.standard_normal(shape, dtype=np.float32) * np.float32(0.05), axis=1)
    rounded: np.ndarray = np.round(walk + np.float32(280.0), 2).astype(np.float32)
    return rounded


def _part_zstd(
    rec: Recorder,
    engines: Mapping[str, Engine],
    sizes: Sizes,
    data: np.ndarray,
    steps: tuple[str, str, str, str],
) -> None:
    write, read, reread, one = steps
    made = _writes_and_reads(rec, engines, "zstd", data, sizes, (write, read))
    # What the second core brings: each VArray read again on every CPU and on one, in turn
    # (both reads of a VArray read before: a first read also learns its files' chunk indexes).
    with one_cpu() as pinned:
        pass  # (one CPU only: neither read)
    for rep in range(sizes.reps if pinned else 0):
        for name, engine in in_turn(engines, rep):
            for step in (reread, one):
                with one_cpu() if step == one else contextlib.nullcontext(True):
                    seconds, got = timed(lambda e=engine, h=made[name][rep]: e.read(h))
                check(np.array_equal(got, data), f"{name} full read again (zstd, {step})")
                del got
                rec.add(step, name, seconds, bytes=data.nbytes, ops=1, codec="zstd")
                rec.verified(step, name)
    for name, engine in engines.items():
        for handle in made[name]:
            engine.drop(handle)


def _cluster(tmp: Path) -> Any:
    import dask
    from distributed import LocalCluster

    with dask.config.set(
        {"distributed.worker.memory.target": False, "distributed.worker.memory.spill": False}
    ):
        return LocalCluster(
            n_workers=CLUSTER_WORKERS,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            local_directory=str(tmp / "workers"),
        )


def _part_dask(
    rec: Recorder, engines: Mapping[str, Engine], sizes: Sizes, root: Path, kept: Mapping[str, Any]
) -> None:
    from distributed import Client as DaskClient

    side = sizes.varray_side
    data = pattern((side, side), np.float32, 0)
    want_sum = float(data.sum(dtype=np.float64))  # exact: integers below 1009, far below 2**53
    step = store_chunk(sizes)
    with _cluster(root) as cluster, DaskClient(cluster, set_as_default=False) as dask_client:
        dask_client.run(lambda: None)  # the workers are up
        for name, engine in engines.items():  # warm up: imports and file handles on the workers
            if name in kept:
                engine.lazy(kept[name]).sum(dtype=np.float64).compute(scheduler=dask_client)
        for rep in range(sizes.reps):
            for name, engine in in_turn(engines, rep):
                if name not in kept:
                    continue
                seconds, total = timed(
                    lambda e=engine, h=kept[name]: (
                        e.lazy(h).sum(dtype=np.float64).compute(scheduler=dask_client)
                    )
                )
                check(float(total) == want_sum, f"{name} dask sum {float(total)} != {want_sum}")
                rec.add("z_dask_sum", name, seconds, bytes=data.nbytes, ops=1, verified=True)
        for name, engine in engines.items():
            if name in kept:
                engine.drop(kept[name])
        for label, scheduler in (("z_store_threads", "threads"), ("z_store_distributed", dask_client)):
            stored: list[tuple[Engine, Any]] = []  # dropped once the step is measured (see below)
            for rep in range(sizes.reps):
                seed = 20 + rep
                want = pattern((side, side), np.float32, seed)
                for name, engine in in_turn(engines, rep):
                    handle = engine.create(None)
                    stored.append((engine, handle))
                    source = _lazy_pattern(side, step, seed)
                    seconds, done = timed_write(
                        lambda e=engine, h=handle, s=source, c=scheduler: e.store(s, h, c)
                    )
                    if done:
                        check(np.array_equal(engine.read(handle), want), f"{name} {label} (read back)")
                        rec.add(label, name, seconds, bytes=data.nbytes, ops=1, chunk=step, verified=True)
            # Not after each store: the page cache of deleted files goes back to the host of the
            # VM, and whichever engine wrote next paid for getting fresh pages (the first store
            # of each repetition took 0.61-0.67 s, the second 0.34-0.42 s, either engine).
            for engine, handle in stored:
                engine.drop(handle)
        if "deker" in engines:
            _executor(rec, sizes, root, dask_client, data)


def _tile_of(shape: tuple[int, ...], k: int) -> np.ndarray:
    """Tile ``k`` of the transport floor, made on a worker (module-level: it pickles by name)."""
    return np.full(shape, k, dtype=np.float32)


def _tile_sum(tile: np.ndarray) -> float:
    return float(tile.sum(dtype=np.float64))


def _transport(dask_client: Any, data: np.ndarray, tile: int) -> tuple[float, float]:
    """Time moving the array's bytes, tile by tile, to the workers and back (the executor's floor).

    The write floor scatters the tiles (client to workers); the read floor gathers tiles the
    workers made beforehand (untimed), so both time the transfer alone.  What arrived is
    checked, after the timing, tile by tile.
    """
    tiles = [
        data[y : y + tile, x : x + tile]
        for y in range(0, data.shape[0], tile)
        for x in range(0, data.shape[1], tile)
    ]
    seconds_out, futures = timed(lambda: dask_client.scatter(tiles))
    sums = dask_client.gather([dask_client.submit(_tile_sum, f, pure=False) for f in futures])
    check(sums == [_tile_sum(t) for t in tiles], "transport floor: scattered tiles differ")
    del futures
    made = [dask_client.submit(_tile_of, (tile, tile), k, pure=False) for k in range(len(tiles))]
    dask_client.gather([dask_client.submit(_tile_sum, f, pure=False) for f in made])  # made, on the workers
    seconds_in, got = timed(lambda: dask_client.gather(made))
    check(
        all(np.array_equal(g, _tile_of((tile, tile), k)) for k, g in enumerate(got)),
        "transport floor: gathered tiles differ",
    )
    return seconds_out, seconds_in


def _executor(rec: Recorder, sizes: Sizes, root: Path, dask_client: Any, data: np.ndarray) -> None:
    """deker's full write and read with ``Client(executor=dask_client)`` against its thread pool.

    Beside them, ``transport``: the same bytes moved tile by tile between this process and the
    workers and nothing else (:func:`_transport`), the floor of any coordinator-side write and
    read through the cluster.
    """
    pair = {
        "deker_executor": DekerEngine(root / "executor", sizes, executor=dask_client),
        "deker": DekerEngine(root / "threads", sizes),
    }
    try:
        warm = pair["deker_executor"].create(None)
        tile = sizes.varray_side // sizes.vgrid
        warm[:tile, : 2 * tile].update(data[:tile, : 2 * tile])  # warm up the workers
        pair["deker_executor"].drop(warm)
        written: list[tuple[Engine, Any]] = []  # dropped at the end, as in the store steps
        for rep in range(sizes.reps):
            for name, engine in in_turn(pair, rep):
                handle = engine.create(None)
                written.append((engine, handle))
                seconds, _ = timed_write(lambda e=engine, h=handle: e.write(h, data))
                rec.add("z_executor_write", name, seconds, bytes=data.nbytes, ops=1)
                seconds, got = timed(lambda e=engine, h=handle: e.read(h))
                check(np.array_equal(got, data), f"{name} full read (and its write)")
                del got
                rec.add("z_executor_read", name, seconds, bytes=data.nbytes, ops=1)
                rec.verified("z_executor_write", name)
                rec.verified("z_executor_read", name)
            seconds_out, seconds_in = _transport(dask_client, data, tile)
            rec.add("z_executor_write", "transport", seconds_out, bytes=data.nbytes, ops=1, verified=True)
            rec.add("z_executor_read", "transport", seconds_in, bytes=data.nbytes, ops=1, verified=True)
        for engine, handle in written:
            engine.drop(handle)
    finally:
        for engine in pair.values():
            engine.close()


def run(
    root: Path,
    sizes: Sizes,
    engines: Sequence[str] = ENGINES,
    emit: Callable[[dict[str, Any]], None] | None = None,
    factories: Mapping[str, Callable[[Path, Sizes], Engine]] | None = None,
    parts: Iterable[str] = ("uncompressed", "read_only", "zstd", "dask"),
) -> list[dict[str, Any]]:
    """Run the suite in ``root`` (removed afterwards); return its measurement records.

    Parameters
    ----------
    root : pathlib.Path
        A new or empty folder for the arrays of every engine.
    sizes : benchmarks.scenarios.Sizes
        The problem sizes (``varray_side``, ``vgrid``, ``chunk``, ``windows``, ``window``, ``reps``).
    engines : sequence of str
        Which of :data:`ENGINES` to run, in the order of each repetition.
    emit : callable, optional
        Called with every record as soon as it is made.
    factories : mapping, optional
        Engine constructors by name (default :data:`FACTORIES`); tests pass a faulty one.
    parts : iterable of str
        Which parts to run: ``"uncompressed"``, ``"read_only"`` (after it), ``"zstd"``,
        ``"dask"``.

    Returns
    -------
    list of dict
        One record per step and engine (scenario ``"z"``), or ``{"scenario": "z", "part",
        "error"}`` for a part that failed (the other parts still run), or one ``skipped``
        record when zarr is not installed.
    """
    out: list[dict[str, Any]] = []

    def put(row: dict[str, Any]) -> None:
        if emit is not None:
            emit(row)
        out.append(row)

    reason = zarr_available()
    if reason is not None:
        put({"scenario": SCENARIO, "kind": "skipped", "skipped": reason})
        return out
    put({"scenario": SCENARIO, "kind": "zarr_meta", "store_chunk": store_chunk(sizes), **versions()})
    makers = {**FACTORIES, **(factories or {})}
    rec = Recorder(SCENARIO, sizes)
    root.mkdir(parents=True, exist_ok=True)
    made = {name: makers[name](root, sizes) for name in engines}
    parts = tuple(parts)
    try:
        kept: dict[str, Any] = {}
        for part in parts:
            try:
                if part == "uncompressed":
                    kept = _part_uncompressed(rec, made, sizes, root)
                elif part == "read_only":
                    _part_read_only(rec, made, sizes, kept)
                elif part == "zstd":
                    side = (sizes.varray_side,) * 2
                    _part_zstd(rec, made, sizes, pattern(side, np.float32, 0), _PATTERN_ZSTD_STEPS)
                    _part_zstd(rec, made, sizes, field(side), _FIELD_ZSTD_STEPS)
                elif part == "dask":
                    _part_dask(rec, made, sizes, root, kept)
                else:
                    raise ValueError(f"unknown part {part!r}")
            except Exception as exc:  # reported; the other parts still run
                put({"scenario": SCENARIO, "part": part, "error": f"{type(exc).__name__}: {exc}"})
    finally:
        for engine in made.values():
            engine.close()
        shutil.rmtree(root, ignore_errors=True)
    for row in rec.results():
        put(row)
    return out


# ------------------------------------------------------------------------------ summary


def _per_op(row: Mapping[str, Any]) -> float:
    return float(row["median"]) / float(row.get("ops", 1))


def summarize(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One summary per step: the median of every engine and deker's ratios to the others."""
    by: dict[str, dict[str, Mapping[str, Any]]] = {}
    for row in rows:
        if row.get("scenario") == SCENARIO and row.get("name") in STEPS and "median" in row:
            by.setdefault(row["name"], {})[row["engine"]] = row
    out = []
    for name in STEPS:
        if name not in by:
            continue
        engines = by[name]
        step = STEPS[name]
        item: dict[str, Any] = {"kind": "zarr_summary", "scenario": SCENARIO, "name": name, "what": step.what}
        for engine, row in engines.items():
            item[f"{engine}_s"] = row["median"]
            item[f"{engine}_ops"] = row.get("ops", 1)
            if step.rate:
                item[f"{engine}_rate"] = round(float(row.get("ops", 1)) / float(row["median"]), 1)
            elif row.get("bytes"):
                item[f"{engine}_mib_s"] = round(row["bytes"] / MIB / row["median"], 1)
            item[f"{engine}_verified"] = bool(row.get("verified"))
        ours = engines.get("deker")
        if ours is not None:
            for other in ("zarr", "zarr_sharded", "h5py", "os_tiles"):
                if other in engines:
                    item[f"deker_vs_{other}"] = round(_per_op(ours) / _per_op(engines[other]), 3)
            again = engines.get("deker_rw", ours)  # the writable reads interleaved with deker_ro
            if "deker_ro" in engines:
                item["read_only_vs_writable"] = round(_per_op(engines["deker_ro"]) / _per_op(again), 3)
                item["read_only_how"] = engines["deker_ro"].get("how", "")
            if "deker_rw" in engines and "os_tiles" in engines:  # a read again against the floor
                item["reread_vs_os_tiles"] = round(_per_op(again) / _per_op(engines["os_tiles"]), 3)
            if "deker_executor" in engines:
                item["executor_vs_threads"] = round(_per_op(engines["deker_executor"]) / _per_op(ours), 3)
                if "transport" in engines:
                    item["executor_vs_transport"] = round(
                        _per_op(engines["deker_executor"]) / _per_op(engines["transport"]), 3
                    )
        rereads = _AGAIN_ON_EVERY_CPU.get(name)
        if rereads is not None:  # one CPU's time over all CPUs' time (reads again), per engine
            for engine, row in engines.items():
                if engine in by.get(rereads, {}):
                    item[f"{engine}_speedup"] = round(_per_op(row) / _per_op(by[rereads][engine]), 3)
        out.append(item)
    return out


if __name__ == "__main__":  # python -m benchmarks.bench_zarr [full|quick|tiny]
    import json
    import sys
    import tempfile

    chosen = scenarios.SIZES[sys.argv[1] if len(sys.argv) > 1 else "quick"]
    with tempfile.TemporaryDirectory(prefix="deker-bench-zarr-") as tmp:
        rows = run(Path(tmp) / "z", chosen, emit=lambda r: print(json.dumps(r), flush=True))
    for item in summarize(rows):
        print(json.dumps(item))
    sys.exit(1 if any("error" in r for r in rows) else 0)
