"""Direct reads of contiguous, unfiltered HDF5 datasets with ``preadv``, and their layout cache.

A contiguous dataset without filters stores its cells as one C-ordered block of native bytes at
a fixed offset of the file.  Reading a region of it through HDF5 costs the library's selection
machinery, an intermediate buffer when the destination is not contiguous, and h5py's global
lock, which lets one thread of a process do HDF5 work at a time.  :func:`read_region_into`
instead asks HDF5 only where the block is, then reads the region's contiguous runs straight
into the caller's array with ``os.preadv`` (one system call for up to ``IOV_MAX`` runs, without
the GIL), so threads reading different files run in parallel.

Opening a file with h5py costs more than reading a small region of it.  :func:`remember` keeps
the layout of a file read through HDF5 (data offset, shape, dtype, or "no data"), keyed by the
file's identity and change stamps (device, inode, size, modification and change times in
nanoseconds); :func:`read_cached` then reads the next regions of that file with ``os.open``,
``fstat`` and ``preadv`` alone, and falls back (``None``) as soon as any stamp differs.  Every
change of an array file (an in-place write under the journal, a new version renamed over it)
changes its stamps.  Only files whose last change is older than :data:`SETTLED_NS` are
remembered, so that a later change, even within the same tick of the filesystem's clock, cannot
leave the stamps equal (the "racily clean" rule of git's index; this assumes file times at
least as fine as one second, as ext4, XFS, btrfs and NFS have).  Callers hold the file's read
lock, so no writer works on it meanwhile; a file with an undo journal (an interrupted write,
read through its old version) is never read from the cache.

Files written whole from a template (:mod:`deker.storage.templates`) are read without HDF5
even while they are new: :func:`read_templated` verifies the bytes around the data block
against the template, every time until the file has settled (then its layout is remembered).
Regions made of many short runs evenly spaced in the file (a tile's rows inside a bigger
output) are read in whole stretches into a per-thread scratch buffer and copied out by numpy,
which costs less than one ``preadv`` vector per run.

Anything this module does not handle (chunked or compressed datasets, byte-swapped or
non-numeric types, another HDF5 driver, a destination whose rows are not contiguous) makes the
caller read through HDF5 as before.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar

import h5py
import numpy as np

from deker.storage import lockprim, templates
from deker.storage.arrayfile import Bounds, selection_shape
from deker.storage.journal import journal_path
from deker.storage.layout import journal_file_name

__all__ = [
    "MIN_BYTES",
    "FileCache",
    "destination",
    "SETTLED_NS",
    "contiguous_offset",
    "file_stamp",
    "forget",
    "read_cached",
    "read_region_into",
    "read_templated",
    "remember",
    "settled",
]


try:
    _IOV_MAX = max(16, min(1024, int(os.sysconf("SC_IOV_MAX"))))
except (AttributeError, ValueError, OSError):  # pragma: no cover - not POSIX
    _IOV_MAX = 16
# Between two runs of a region, gaps up to this many bytes are read into a scratch buffer in the
# same system call rather than skipped with another call.
_MAX_GAP = 64 * 1024
_HAS_PREADV = hasattr(os, "preadv")
#: Smaller regions are read through HDF5 (unless the layout is cached): inspecting the layout
#: costs more than it saves.
MIN_BYTES = 64 * 1024
#: Files changed less than this long ago (nanoseconds) are not remembered.
SETTLED_NS = 1_000_000_000
_MAX_LAYOUTS = 16384
# Evenly spaced runs shorter than this are read in whole stretches into a per-thread scratch
# buffer of _SCRATCH_BYTES, then copied out (see _read_through_scratch).
_COPY_BELOW = 256 * 1024
_SCRATCH_BYTES = 1024 * 1024
_local = threading.local()


def contiguous_offset(dataset: h5py.Dataset) -> int | None:
    """Return the file offset of a dataset's cells when they are one native C-ordered block.

    Parameters
    ----------
    dataset : h5py.Dataset
        An open dataset.

    Returns
    -------
    int or None
        The offset, or ``None`` when the dataset is chunked, filtered, external, not allocated,
        or of a type whose stored bytes are not numpy's (non-numeric, other byte order).

    """
    dtype = dataset.dtype
    if dtype.kind not in "iufc" or not dtype.isnative or dataset.chunks is not None:
        return None
    dsid = dataset.id
    dcpl = dsid.get_create_plist()
    if dcpl.get_layout() != h5py.h5d.CONTIGUOUS or dcpl.get_nfilters() or dcpl.get_external_count():
        return None
    if dsid.get_type().get_size() != dtype.itemsize:
        return None
    offset = dsid.get_offset()
    if offset is None or dsid.get_storage_size() != dataset.size * dtype.itemsize:
        return None
    return int(offset)


class _Plan(NamedTuple):
    cells: np.ndarray[Any, Any]  # the cell index (in the file) of the start of every run, in file order
    dests: Callable[[], list[Any]]  # builds the run destinations (byte memoryviews into ``out``)
    run: int  # run length in cells
    grid: np.ndarray[Any, Any] | None  # ``out`` seen as (runs, run) when one stride walks the runs


def _runs(bounds: Bounds, shape: tuple[int, ...], out: np.ndarray[Any, Any]) -> _Plan | None:
    """Split a region into runs of cells that are consecutive both in the file and in ``out``.

    ``None`` if ``out`` does not match.
    """
    ndim = len(shape)
    lengths = [b.stop - b.start if isinstance(b, slice) else 1 for b in bounds]
    starts = [b.start if isinstance(b, slice) else b for b in bounds]
    axis_of: dict[int, int] = {}  # file dimension -> axis of ``out``
    for d, b in enumerate(bounds):
        if isinstance(b, slice):
            axis_of[d] = len(axis_of)
    if out.ndim != len(axis_of) or math.prod(lengths) != out.size:
        return None
    itemsize = out.dtype.itemsize
    # The run covers file dimensions k..ndim-1: every one after k read whole (consecutive in
    # the file), and all of them consecutive in ``out`` too.  Take the smallest such k.
    k = ndim - 1
    expect = itemsize
    if k in axis_of:
        if lengths[k] > 1 and out.strides[axis_of[k]] != itemsize:
            return None
        expect = itemsize * lengths[k]
    while k > 0 and lengths[k] == shape[k]:
        d = k - 1
        if d in axis_of and lengths[d] > 1 and out.strides[axis_of[d]] != expect:
            break
        expect *= lengths[d]
        k = d
    run = math.prod(lengths[k:])
    run_bytes = run * itemsize
    lead = [axis_of[d] for d in range(k) if d in axis_of and lengths[d] > 1]
    grid: np.ndarray[Any, Any] | None = None
    dests: Callable[[], list[Any]]
    if not lead:  # one run: ``out`` is contiguous (its other axes have length 1)
        if not out.flags.c_contiguous:
            return None
        dests = lambda: [out.data.cast("B")]  # noqa: E731
    elif len(lead) == 1 or all(
        out.strides[a] == out.strides[b] * out.shape[b] for a, b in itertools.pairwise(lead)
    ):
        # One stride walks the runs: slice one flat view of their whole extent (cheap).
        count = math.prod(lengths[:k])
        stride = out.strides[lead[-1]]
        if stride < run_bytes or stride % itemsize:
            return None
        span = (count - 1) * stride + run_bytes
        if out.shape == (count, run) and out.strides == (stride, itemsize):
            grid = out  # (the usual 2-D region: as_strided costs more than the read planning)
        else:
            grid = np.lib.stride_tricks.as_strided(
                out, shape=(count, run), strides=(stride, itemsize), writeable=True
            )

        def dests() -> list[Any]:
            flat = np.lib.stride_tricks.as_strided(
                out, shape=(span // itemsize,), strides=(itemsize,), writeable=True
            )
            whole = flat.data.cast("B")
            return [whole[o : o + run_bytes] for o in range(0, span, stride)]

    else:

        def dests() -> list[Any]:
            index: list[Any] = [slice(None)] * out.ndim
            views = []
            for combo in np.ndindex(*[out.shape[a] for a in lead]):
                for axis, value in zip(lead, combo, strict=True):
                    index[axis] = value
                key = (*index, Ellipsis)
                views.append(out[key].data.cast("B"))
            return views

    file_strides = [math.prod(shape[d + 1 :]) for d in range(ndim)]
    base = sum(s * st for s, st in zip(starts, file_strides, strict=True))
    if k == 0:
        return _Plan(np.asarray([base], dtype=np.int64), dests, run, grid)
    index_grid = np.indices(lengths[:k]).reshape(k, -1)  # C order: the last leading axis varies fastest
    return _Plan(base + np.asarray(file_strides[:k], dtype=np.int64) @ index_grid, dests, run, grid)


def _read_exact(fd: int, views: list[Any], offset: int, size: int) -> bool:
    # A short read (end of file) makes the caller read through HDF5, which reports the damage.
    return bool(os.preadv(fd, views, offset) == size)


def _read_runs(
    fd: int, offset: int, shape: tuple[int, ...], bounds: Bounds, out: np.ndarray[Any, Any]
) -> bool:
    """Read ``bounds`` of the block at ``offset`` (cells of ``shape``) from ``fd`` into ``out``."""
    if out.size == 0:
        return True  # an empty region: nothing to read
    plan = _runs(bounds, shape, out)
    if plan is None:
        return False
    itemsize = out.dtype.itemsize
    run_bytes = plan.run * itemsize
    positions = offset + plan.cells * itemsize
    n = len(positions)
    step = int(positions[1] - positions[0]) if n > 1 else run_bytes
    if n == 1 or (step >= run_bytes and bool((np.diff(positions) == step).all())):
        # Evenly spaced runs (the usual case): each call reads one stretch of the file, the
        # gaps between runs going to a scratch buffer when they are small.
        gap = step - run_bytes
        if plan.grid is not None and n > 1 and run_bytes < _COPY_BELOW and gap <= _MAX_GAP:
            return _read_through_scratch(fd, int(positions[0]), step, plan.grid)
        dests = plan.dests()
        if gap <= _MAX_GAP:
            filler = memoryview(bytearray(gap)) if gap else None
            per_call = _IOV_MAX // 2 if gap else _IOV_MAX
            for first in range(0, n, per_call):
                chunk = dests[first : first + per_call]
                if filler is not None:
                    views = [part for dest in chunk for part in (dest, filler)][:-1]
                else:
                    views = chunk
                size = (len(chunk) - 1) * step + run_bytes
                if not _read_exact(fd, views, int(positions[first]), size):
                    return False
            return True
    else:
        dests = plan.dests()
    for pos, dest in zip(positions.tolist(), dests, strict=True):  # one call per run
        if not _read_exact(fd, [dest], pos, run_bytes):
            return False
    return True


def _scratch() -> np.ndarray[Any, Any]:
    buffer: np.ndarray[Any, Any] | None = getattr(_local, "scratch", None)
    if buffer is None or buffer.size < _SCRATCH_BYTES:
        buffer = _local.scratch = np.empty(_SCRATCH_BYTES, dtype=np.uint8)
    return buffer


def _read_through_scratch(fd: int, position: int, step: int, grid: np.ndarray[Any, Any]) -> bool:
    """Read evenly spaced short runs: whole stretches of the file, then one numpy copy each.

    ``grid`` is the destination seen as (runs, run length); the runs start ``step`` bytes
    apart in the file from ``position``.  Scattering a stretch over many small buffers
    (``preadv`` with one vector per run) costs the kernel more than reading it contiguously
    into a per-thread scratch buffer that stays in the CPU cache and copying its rows out
    (numpy copies without the GIL).
    """
    scratch = _scratch()
    count, run = grid.shape
    run_bytes = run * grid.dtype.itemsize
    rows = max(1, _SCRATCH_BYTES // step)
    for first in range(0, count, rows):
        last = min(count, first + rows)
        size = (last - first - 1) * step + run_bytes
        if os.preadv(fd, [scratch.data[:size]], position + first * step) != size:
            return False  # a short read (end of file): the caller reads through HDF5
        grid[first:last] = np.ndarray(
            (last - first, run), grid.dtype, scratch, 0, (step, grid.dtype.itemsize)
        )
    return True


def read_region_into(
    handle: h5py.File, dataset: h5py.Dataset, bounds: Bounds, out: np.ndarray[Any, Any]
) -> bool:
    """Read ``dataset[bounds]`` into ``out`` with ``preadv`` when the layout allows it.

    Parameters
    ----------
    handle : h5py.File
        The open file of ``dataset`` (its descriptor is used).
    dataset : h5py.Dataset
        The dataset.
    bounds : tuple of int or slice
        Normalised bounds (one per dimension, slices with step 1, in range).
    out : numpy.ndarray
        The destination, of the selection's shape and the dataset's dtype; it may be a view
        into a bigger array (its rows must then be contiguous).

    Returns
    -------
    bool
        ``True`` when ``out`` holds the region; ``False`` when nothing was read and the caller
        must read through HDF5 (also for regions under :data:`MIN_BYTES`).

    """
    if not _HAS_PREADV or out.nbytes < MIN_BYTES or out.dtype != dataset.dtype or not out.flags.writeable:
        return False
    if len(bounds) != dataset.ndim or handle.driver != "sec2":
        return False
    offset = contiguous_offset(dataset)
    if offset is None:
        return False
    fd = handle.id.get_vfd_handle()
    if not isinstance(fd, int):
        return False
    return _read_runs(fd, offset, tuple(int(s) for s in dataset.shape), bounds, out)


# ------------------------------------------------------------------------------ layout cache


class _Layout(NamedTuple):
    stamp: tuple[int, int, int, int, int]  # device, inode, size, mtime_ns, ctime_ns
    offset: int | None  # None: the file has no data (every cell is the fill value)
    shape: tuple[int, ...]
    dtype: np.dtype  # type: ignore[type-arg]


V = TypeVar("V")


#: Every FileCache of the process, for the fork hook below (weakly: a cache may go away).
_caches: weakref.WeakSet[FileCache[Any]] = weakref.WeakSet()


def _renew_cache_locks() -> None:
    # a forked child has only the forking thread: a lock another thread held at the fork
    # would stay held for ever there
    for cache in list(_caches):
        cache.renew_lock()


os.register_at_fork(after_in_child=_renew_cache_locks)  # (one hook: they cannot be removed)


class FileCache(Generic[V]):
    """What a process learnt about files, by path, with the files' stamps when it was learnt.

    The least recently kept files go beyond ``size``.  The caller decides what may be kept
    (files that have :func:`settled`); :meth:`opened` gives a kept value back only while the
    file's :func:`file_stamp` is unchanged and it has no undo journal.  Thread-safe.

    Parameters
    ----------
    size : int
        How many files are remembered at most.

    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[str, tuple[tuple[int, int, int, int, int], V]] = OrderedDict()
        self._lock = threading.Lock()
        _caches.add(self)

    def renew_lock(self) -> None:
        """Give the cache a new lock: in a forked child, whose other threads are gone.

        A lock that another thread held at the fork would otherwise stay held for ever there.
        """
        self._lock = threading.Lock()

    def get(self, path: Path | str) -> V | None:
        """Return what is kept for ``path`` (not checked against the file), or None.

        Parameters
        ----------
        path : Path or str
            A file.

        Returns
        -------
        object or None
            The kept value.

        """
        kept = self._items.get(str(path))
        return None if kept is None else kept[1]

    def keep(self, path: Path | str, stamp: tuple[int, int, int, int, int], value: V) -> None:
        """Remember ``value`` for ``path`` (forgetting the least recently kept file if full).

        Parameters
        ----------
        path : Path or str
            A file.
        stamp : tuple of int
            The file's :func:`file_stamp` when ``value`` was learnt.
        value : object
            What was learnt about it.

        """
        key = str(path)
        with self._lock:
            self._items[key] = (stamp, value)
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def forget(self, path: Path | str | None = None) -> None:
        """Drop what is kept for ``path`` (for every file when ``None``).

        Parameters
        ----------
        path : Path or str, optional
            A file.

        """
        with self._lock:
            if path is None:
                self._items.clear()
            else:
                self._items.pop(str(path), None)

    @contextmanager
    def opened(self, path: Path | str) -> Iterator[tuple[int, V] | None]:
        """Open ``path`` if what is kept for it is still true of it.

        The descriptor is the held one when this process holds the file (no other
        descriptor of it is closed meanwhile, :mod:`deker.storage.lockprim`).

        Parameters
        ----------
        path : Path or str
            A file, read-locked by the caller.

        Yields
        ------
        tuple of (int, object) or None
            The open descriptor and the kept value; ``None`` when nothing is kept, the file
            cannot be opened (the h5py path reports why), changed, or has a journal (then it
            is forgotten).

        """
        name = str(path)  # (per tile: strings, not new Path objects, which parse every part)
        kept = self._items.get(name)
        if kept is None:
            yield None
            return
        stamp, value = kept
        try:
            fd, shared = lockprim.open_fd(name, False)
        except OSError:
            yield None
            return
        try:
            folder, base = os.path.split(name)
            if file_stamp(os.fstat(fd)) != stamp or os.path.lexists(
                os.path.join(folder, journal_file_name(base))
            ):
                self.forget(path)
                yield None
            else:
                yield fd, value
        finally:
            lockprim.close_fd(fd, shared)


_layouts: FileCache[_Layout] = FileCache(_MAX_LAYOUTS)


def file_stamp(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """Return the change stamps of a file: device, inode, size, mtime and ctime (ns).

    Parameters
    ----------
    st : os.stat_result
        The file's status.

    Returns
    -------
    tuple of int
        Equal for two statuses only if the file did not change in between, once it has
        :func:`settled`.

    """
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def forget(path: Path | str | None = None) -> None:
    """Drop the remembered layout of ``path`` (of every file when ``None``).

    Parameters
    ----------
    path : Path or str, optional
        A data file.

    """
    _layouts.forget(path)


def remember(path: Path, handle: h5py.File, dataset: h5py.Dataset | None) -> None:
    """Keep the layout of ``path``, just opened by h5py, when the file has settled.

    Nothing is kept for a file changed less than :data:`SETTLED_NS` ago, for a layout
    :func:`contiguous_offset` refuses, or for a file read through a journal's old version.

    Parameters
    ----------
    path : Path
        The data file.
    handle : h5py.File
        Its open handle (sec2 driver: its descriptor is used).
    dataset : h5py.Dataset or None
        Its ``data`` dataset, ``None`` when it has none.

    """
    if not _HAS_PREADV or handle.driver != "sec2":
        return
    fd = handle.id.get_vfd_handle()
    if not isinstance(fd, int):
        return
    st = os.fstat(fd)
    if not settled(st):
        return
    if dataset is None:
        layout = _Layout(file_stamp(st), None, (), np.dtype("u1"))
    else:
        offset = contiguous_offset(dataset)
        if offset is None:
            return
        layout = _Layout(file_stamp(st), offset, tuple(int(s) for s in dataset.shape), dataset.dtype)
    _keep(path, layout)


def settled(st: os.stat_result) -> bool:
    """Tell whether a file's last change is at least :data:`SETTLED_NS` old.

    Only then can a later change not leave its :func:`file_stamp` equal (the "racily clean"
    rule of the module docstring), so only then may a layout learnt from it be kept.

    Parameters
    ----------
    st : os.stat_result
        The file's status (its modification and change times count).

    Returns
    -------
    bool
        Whether layouts learnt from the file may be kept.

    """
    return time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) >= SETTLED_NS


def _keep(path: Path, layout: _Layout) -> None:
    _layouts.keep(path, layout.stamp, layout)


def destination(
    shape: tuple[int, ...],
    dtype: np.dtype,  # type: ignore[type-arg]
    out: np.ndarray | None,  # type: ignore[type-arg]
) -> np.ndarray | None:  # type: ignore[type-arg]
    """Return the array to read into: ``out`` if it fits (else ``None``), or a new one.

    Parameters
    ----------
    shape : tuple of int
        The selection's shape.
    dtype : numpy.dtype
        The dataset's dtype.
    out : numpy.ndarray, optional
        The caller's destination: it fits when it has that shape and dtype and is writeable.

    Returns
    -------
    numpy.ndarray or None
        Where to read.

    """
    if out is None:
        return np.empty(shape, dtype=dtype)
    if out.shape != shape or out.dtype != dtype or not out.flags.writeable:
        return None
    return out


def read_cached(
    path: Path,
    bounds: Bounds,
    dtype: np.dtype[Any],
    fill_value: Any,
    out: np.ndarray | None = None,  # type: ignore[type-arg]
) -> np.ndarray[Any, Any] | None:
    """Read a region with the remembered layout of ``path``, without HDF5.

    The caller holds the file's read lock.

    Parameters
    ----------
    path : Path
        The data file.
    bounds : tuple of int or slice
        Normalised bounds, in range, not empty.
    dtype : numpy.dtype
        The array dtype (the fill value's type when the file has no data).
    fill_value : Any
        The fill value.
    out : numpy.ndarray, optional
        The destination (shape of the selection); else a new array is returned.

    Returns
    -------
    numpy.ndarray or None
        The region (``out`` itself when given); ``None`` when the layout is unknown or stale,
        the file has a journal, or anything else is unusual: then read through HDF5.

    """
    with _layouts.opened(path) as found:
        if found is None:
            return None
        fd, layout = found
        shape = selection_shape(bounds)
        if layout.offset is None:
            if out is None:
                return np.full(shape, fill_value, dtype=dtype)
            out[...] = fill_value
            return out
        if len(bounds) != len(layout.shape) or np.dtype(dtype) != layout.dtype:
            return None
        target = destination(shape, layout.dtype, out)
        if target is None or not _read_runs(fd, layout.offset, layout.shape, bounds, target):
            return None
        return target


def read_templated(
    path: Path,
    bounds: Bounds,
    file_shape: tuple[int, ...],
    dtype: np.dtype,  # type: ignore[type-arg]
    fill_value: Any,
    out: np.ndarray | None = None,  # type: ignore[type-arg]
) -> np.ndarray[Any, Any] | None:
    """Read a region of a file written whole from a template, without HDF5.

    Files that deker wrote holding a whole array (:func:`deker.storage.templates.data_array_parts`)
    have a known layout, verified byte for byte by
    :func:`~deker.storage.templates.template_data_offset` (everything but the data block and two
    values), so they are read at once, even before they count as settled for the layout cache.
    The caller holds the file's read lock.

    Parameters
    ----------
    path, bounds, dtype, fill_value, out
        As for :func:`read_cached`.
    file_shape : tuple of int
        The shape of the array stored in the file.

    Returns
    -------
    numpy.ndarray or None
        The region (``out`` itself when given); ``None`` when the file is not such a file, has
        a journal, or anything else is unusual: then read through HDF5.

    """
    dtype = np.dtype(dtype)
    if not _HAS_PREADV or len(bounds) != len(file_shape):
        return None
    target = destination(selection_shape(bounds), dtype, out)
    if target is None:
        return None
    try:
        fd, shared = lockprim.open_fd(path, False)  # a held file: its own descriptor
    except OSError:  # missing or unreadable: the HDF5 path reports it
        return None
    try:
        if os.path.lexists(journal_path(path)):
            return None
        st = os.fstat(fd)
        offset = templates.template_data_offset(fd, st.st_size, file_shape, dtype, fill_value)
        if offset is None or not _read_runs(fd, offset, file_shape, bounds, target):
            return None
        if settled(st):  # the next reads need not look at the head again
            _keep(path, _Layout(file_stamp(st), offset, tuple(file_shape), dtype))
        return target
    finally:
        lockprim.close_fd(fd, shared)
