"""Subsets: a rectangular region of an Array (:class:`Subset`) or a VArray (:class:`VSubset`).

A subset reads, updates (upserts), clears, describes and converts its region.  An Array's
subset works on one file in the calling thread.  A VArray's subset fans out into one task per
tile on the client's executor: reads take each tile's read lock; updates and clears first take
the write lock of exactly the tiles they touch (in grid order, under one owner token that the
tile tasks carry), then run the tasks, then release.  Failed tiles are reported together in a
:class:`~deker.errors.DekerVSubsetError` holding the real exceptions.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from numbers import Number
from typing import TYPE_CHECKING, Any

import numpy as np

from deker.cf import array_layout, data_array, import_xarray
from deker.errors import (
    DekerArrayError,
    DekerArrayTypeError,
    DekerInstanceNotExistsError,
    DekerLockError,
    DekerShapeError,
    DekerSubsetError,
    DekerVSubsetError,
)
from deker.indexing import Selection, bounds_to_str
from deker.sizes import check_memory
from deker.storage import hdf5
from deker.storage.locks import VArrayWriteLock, array_read_lock, array_write_lock, new_token
from deker.tasks import (
    clear_piece,
    read_piece,
    read_piece_into,
    storage_errors,
    write_piece,
    write_piece_broadcast,
)
from deker.tiling import TilePiece, tile_pieces

if TYPE_CHECKING:
    from pathlib import Path

    import xarray

    from deker.arrays import Array, VArray

__all__ = ["Subset", "VSubset", "compact_for_transport", "prepare_update_data"]

logger = logging.getLogger(__name__)

# Attempts to lock the tiles of an update or clear while concurrent clears delete them.
_LOCK_ROUNDS = 100


def _is_scalar(data: Any) -> bool:
    return isinstance(data, (np.generic, Number)) and not isinstance(data, (str, bytes))


def prepare_update_data(data: Any, dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray | np.generic:
    """Validate update data and bring it to ``dtype`` and (broadcast) ``shape``.

    Rules (SPEC §7.3, with numpy broadcasting): ``None`` is refused; scalars, lists, tuples and
    ndarrays are accepted; scalars and Python lists are converted when no value changes;
    ndarrays must already have the array's dtype; smaller arrays broadcast like numpy.

    Parameters
    ----------
    data : Any
        What the user passed to ``update``.
    dtype : numpy.dtype
        The array's dtype.
    shape : tuple of int
        The subset's shape.

    Returns
    -------
    numpy.ndarray or numpy.generic
        A scalar of ``dtype`` or an array of ``dtype`` and ``shape`` (maybe a broadcast view).

    Raises
    ------
    DekerArrayError
        ``data`` is None.
    DekerArrayTypeError
        The type or dtype cannot be stored without changing values.
    DekerShapeError
        The shape does not broadcast to the subset's shape (an :class:`IndexError`).
    """
    if data is None:
        raise DekerArrayError("Updating data shall not be None")
    if isinstance(data, (bool, np.bool_)):
        raise DekerArrayTypeError(f"Invalid data type: {type(data)}; {dtype} expected")
    if _is_scalar(data):
        try:
            with np.errstate(all="ignore"):
                value = dtype.type(data)
            same = bool(np.asarray(value == data).all()) or (
                np.isnan(np.asarray(data, dtype=np.complex128)).any() and np.isnan(np.asarray(value)).any()
            )
        except (TypeError, ValueError, OverflowError) as exc:
            raise DekerArrayTypeError(f"Invalid data type: {type(data)}; {dtype} expected: {exc}") from exc
        if not same:
            raise DekerArrayTypeError(
                f"Invalid data value: {data!r} cannot be stored as {dtype} without loss"
            )
        if shape == ():
            scalar: np.generic = value
            return scalar
        return np.broadcast_to(np.asarray(value, dtype=dtype), shape)
    if isinstance(data, (list, tuple)):
        try:
            raw = np.asarray(data)
        except ValueError as exc:
            raise DekerArrayTypeError(f"Invalid data: {exc}") from exc
        if raw.dtype.kind not in "biufc" or raw.dtype.kind == "b":
            raise DekerArrayTypeError(f"Invalid data type: lists of {raw.dtype} values; {dtype} expected")
        with np.errstate(all="ignore"):
            try:
                arr = raw.astype(dtype)
            except (TypeError, ValueError, OverflowError) as exc:
                raise DekerArrayTypeError(f"Invalid data: {exc}") from exc
            back = arr.astype(raw.dtype) if raw.dtype.kind != "c" or dtype.kind == "c" else arr
            if not np.array_equal(back, raw, equal_nan=raw.dtype.kind in "fc"):
                raise DekerArrayTypeError(
                    f"Invalid data: some values of the {raw.dtype} list change when stored as {dtype}"
                )
    elif isinstance(data, np.ndarray):
        if data.dtype != dtype:
            raise DekerArrayTypeError(f"Invalid data dtype: {data.dtype}; {dtype} expected")
        arr = data
    else:
        raise DekerArrayTypeError(f"Invalid data type: {type(data)}; {dtype} expected")
    if arr.shape == shape:
        return arr
    try:
        return np.broadcast_to(arr, shape)
    except ValueError as exc:
        raise DekerShapeError(
            f"Invalid data shape: {arr.shape}; {shape} expected (or a shape that broadcasts)"
        ) from exc


def compact_for_transport(chunk: Any) -> Any:
    """Return the smallest form of an update's piece that broadcasts back to it.

    A scalar update (or data smaller than the region) is a broadcast view with zero strides:
    copying it would make a whole tile of equal values, to be pickled, scattered and sent to a
    worker.  Instead the task gets a numpy scalar (every cell equal) or the distinct values
    (length 1 on each broadcast axis), and :func:`deker.tasks.write_piece_broadcast` broadcasts
    them on arrival.  Other pieces are made contiguous.

    Parameters
    ----------
    chunk : numpy.ndarray or numpy scalar
        A piece of the prepared update data.

    Returns
    -------
    numpy.ndarray or numpy scalar
        What the task receives.
    """
    if not isinstance(chunk, np.ndarray):
        return chunk
    if chunk.size > 1 and 0 in chunk.strides:
        index = tuple(slice(0, 1) if step == 0 else slice(None) for step in chunk.strides)
        small = np.ascontiguousarray(chunk[index])
        if small.size == 1:
            return small.dtype.type(small.reshape(-1)[0])
        return small
    if not chunk.flags.c_contiguous:
        return np.ascontiguousarray(chunk)
    return chunk


class _SubsetBase:
    """What Subset and VSubset share: geometry, description, xarray."""

    _kind = "Subset"
    _array: Array | VArray

    def __init__(self, array: Array | VArray, selection: Selection) -> None:
        self._array = array
        self._selection = selection

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the data the subset reads (integer-indexed dimensions dropped)."""
        return self._selection.shape

    @property
    def bounds(self) -> tuple[int | slice, ...]:
        """The normalised bounds: one int or ``slice(start, stop)`` per dimension."""
        return self._selection.bounds

    @property
    def dtype(self) -> type[np.generic]:
        """Numpy scalar type of the data."""
        return self._array.dtype

    @property
    def fill_value(self) -> Any:
        """The value empty cells read as."""
        return self._array.fill_value

    def _np_dtype(self) -> np.dtype[Any]:
        return np.dtype(self._array.dtype)

    def describe(self) -> OrderedDict[str, list[Any]]:
        """Return the coordinates of the region, per dimension name.

        Integer-indexed dimensions are kept, as one-element lists.
        """
        dims = self._array.dimensions
        return OrderedDict((dim.name, dim.describe(b)) for dim, b in zip(dims, self.bounds, strict=True))

    def read(self) -> Any:
        """Read the region (implemented by :class:`Subset` and :class:`VSubset`)."""
        raise NotImplementedError

    def read_xarray(self, *, cf: bool = False) -> xarray.DataArray:
        """Read the region as a labelled :class:`xarray.DataArray`.

        Parameters
        ----------
        cf : bool, default False
            ``False``: deker 1.1.7's form (named ``"Deker Subset of Array(id=...) from
            collection `...`"``, with ``primary_attributes`` and ``custom_attributes`` dict
            attributes, which netCDF cannot store).  ``True``: the CF- and netCDF-safe form of
            :mod:`deker.cf` (named after the collection, one scalar attribute per primary and
            custom attribute, CF-encoded time coordinates), which ``to_netcdf`` and
            ``to_zarr`` write as is.

        Raises
        ------
        ImportError
            If xarray is not installed (``pip install 'deker[xarray]'``).
        DekerSubsetError
            If the subset is a single cell.
        """
        xarray = import_xarray()
        if self.shape == ():
            raise DekerSubsetError(f"Cannot convert a scalar deker.{self._kind} to xarray.DataArray")
        description = self.describe()
        full_shape = tuple(len(v) for v in description.values())
        check_memory(full_shape, self._np_dtype(), self._array._ctx.memory_limit)
        data = np.asarray(self.read()).reshape(full_shape)
        if cf:
            layout = array_layout(self._array, self.bounds)
            return data_array(xarray, data, layout)  # type: ignore[no-any-return]
        kind = "VArray" if self._kind == "VSubset" else "Array"
        return xarray.DataArray(  # type: ignore[no-any-return]
            data,
            coords={
                name: np.asarray(values)
                if not values or not hasattr(values[0], "tzinfo")
                else np.asarray([np.datetime64(v.replace(tzinfo=None), "ns") for v in values])
                for name, values in description.items()
            },
            dims=list(description.keys()),
            name=(
                f"Deker {self._kind} of {kind}(id={self._array.id}) "
                f"from collection `{self._array.collection}`"
            ),
            attrs={
                "primary_attributes": self._array.primary_attributes,
                "custom_attributes": self._array.custom_attributes,
            },
        )

    def __repr__(self) -> str:
        return (
            f"{self._kind}(bounds={bounds_to_str(self.bounds, self._array.shape)}, shape={self.shape}, "
            f"array={self._array.id})"
        )

    def __str__(self) -> str:
        return f"{self._array}{bounds_to_str(self.bounds, self._array.shape)}"


class Subset(_SubsetBase):
    """A region of an :class:`~deker.arrays.Array`, returned by ``array[...]``."""

    _kind = "Subset"
    _array: Array

    def _main(self) -> tuple[Any, Any]:
        arr = self._array
        arr._ctx.check_open()
        return arr._main_dir, arr._main_file

    def read(self) -> Any:
        """Read the region: an ndarray of :attr:`shape`, or a numpy scalar for a single cell.

        Empty cells read as :attr:`fill_value`.
        """
        main_dir, main_file = self._main()
        dtype = self._np_dtype()
        try:
            with storage_errors(main_file), array_read_lock(main_dir, self._array.id, self._array._ctx.locks):
                arr = self._array
                data = hdf5.read_region(
                    main_file,
                    self.bounds,
                    dtype,
                    self.fill_value,
                    file_shape=None if arr._dataset_kwargs else tuple(arr.shape),  # see read_region
                )
        except FileNotFoundError as exc:
            raise DekerInstanceNotExistsError(f"{self._array!r} was deleted") from exc
        return data[()] if self.shape == () else data

    def update(self, data: Any) -> None:
        """Write ``data`` into the region (upsert).

        Parameters
        ----------
        data : scalar, list, tuple or numpy.ndarray
            Values of the array's dtype; scalars and smaller arrays broadcast like numpy.
        """
        self._array._ctx.check_open()
        self._array._ctx.check_writable(f"update {self}")
        prepared = prepare_update_data(data, self._np_dtype(), self.shape)
        main_dir, main_file = self._main()
        try:
            with (
                storage_errors(main_file),
                array_write_lock(main_dir, self._array.id, self._array._ctx.locks),
            ):
                hdf5.write_region(
                    main_file,
                    self.bounds,
                    prepared,
                    self._array.shape,
                    self.fill_value,
                    self._array._dataset_kwargs,
                )
        except FileNotFoundError as exc:
            raise DekerInstanceNotExistsError(f"{self._array!r} was deleted") from exc

    def clear(self) -> None:
        """Reset the region to the fill value."""
        self._array._ctx.check_open()
        self._array._ctx.check_writable(f"clear {self}")
        main_dir, main_file = self._main()
        try:
            with (
                storage_errors(main_file),
                array_write_lock(main_dir, self._array.id, self._array._ctx.locks),
            ):
                hdf5.clear_region(main_file, self.bounds, self._array.shape, self.fill_value)
        except FileNotFoundError as exc:
            raise DekerInstanceNotExistsError(f"{self._array!r} was deleted") from exc


def _raise_group(message: str, failures: Sequence[tuple[tuple[int, ...], BaseException]]) -> None:
    if failures:
        excs = [e for _, e in failures]
        if all(isinstance(e, Exception) for e in excs):
            raise DekerVSubsetError(message, excs, [p for p, _ in failures])
        raise next(e for e in excs if not isinstance(e, Exception))


class VSubset(_SubsetBase):
    """A region of a :class:`~deker.arrays.VArray`, returned by ``varray[...]``.

    Every operation fans out into one task per touched tile on the client's executor.
    """

    _kind = "VSubset"
    _array: VArray

    def _pieces(self) -> list[TilePiece]:
        return tile_pieces(self.bounds, self._array.arrays_shape)

    def _lock_tiles(
        self,
        lock: VArrayWriteLock,
        pieces: list[TilePiece],
        values: dict[str, Any] | None,
        payloads: dict[tuple[int, ...], Any] | None = None,
    ) -> tuple[dict[tuple[int, ...], str], set[tuple[int, ...]]]:
        """Lock the tiles of ``pieces``, creating the missing ones when ``values`` is given.

        Two-phase locking, so that an update is isolated: the existing tiles are locked in
        grid order (no deadlock), then the missing ones are created, each held by ``lock``
        from before anyone can find it (:meth:`VArrayWriteLock.claiming`); every tile stays
        held until the operation ends.  A missing tile with an entry in ``payloads`` (its
        every cell) is created holding it: it is written already and not returned for writing.

        A tile created by someone else after the listing is locked without waiting; if it is
        busy, everything is released and the tiles are listed again (tiles this round created
        holding their data are then written again by the tasks).  So is a tile deleted by a
        concurrent clear before its lock.

        Returns
        -------
        tuple of (dict, set)
            The ids of the locked tiles by position, and the positions created with their data.
        """
        varray = self._array
        for _ in range(_LOCK_ROUNDS + len(pieces)):
            tiles = varray._tile_ids(p.position for p in pieces)
            existing = [self._tile_key(tiles[p.position]) for p in pieces if p.position in tiles]
            if lock.acquire(existing):  # some vanished: a concurrent clear
                lock.release()
                continue
            missing = [p.position for p in pieces if p.position not in tiles]
            if values is None or not missing:
                return tiles, set()
            args = [(pos, values, (payloads or {}).get(pos), lock.claiming) for pos in missing]
            runner = varray._ctx.runner
            if len(missing) > 1 and runner.in_process:  # each creation waits on its own files
                made: list[Any] = runner.run_all(varray._create_tile, args)
            else:
                made = [varray._create_tile(*arg) for arg in args]
            written: set[tuple[int, ...]] = set()
            others: list[tuple[Path, str]] = []
            for position, result in zip(missing, made, strict=True):
                if isinstance(result, BaseException):
                    raise result
                tid, filled = result
                tiles[position] = tid
                key = self._tile_key(tid)
                if not lock.holds(*key):
                    others.append(key)  # created by someone else meanwhile
                elif filled:
                    written.add(position)
            try:
                if others and lock.acquire(others, wait=False):
                    lock.release()  # deleted again by a concurrent clear
                    continue
            except DekerLockError:  # busy: everything was released; start over
                continue
            for position in written:
                del tiles[position]
            return tiles, written
        raise DekerLockError(
            f"{self}: concurrent writers and clears kept changing its tiles while it tried to lock them"
        )

    def _tile_key(self, tile_id: str) -> tuple[Path, str]:
        return self._array._tile_spec(tile_id).main_dir, tile_id

    def read(self) -> Any:
        """Read the region; absent tiles read as fill without being created.

        The output is allocated once; with a thread pool the tiles are read straight into it.
        """
        varray = self._array
        ctx = varray._ctx
        ctx.check_open()
        varray._check_exists()
        dtype = self._np_dtype()
        out = np.empty(self.shape, dtype=dtype)
        pieces = self._pieces()
        tiles = varray._tile_ids(p.position for p in pieces)
        todo: list[tuple[TilePiece, str]] = []
        for piece in pieces:
            tid = tiles.get(piece.position)
            if tid is None:
                out[piece.out] = self.fill_value
            else:
                todo.append((piece, tid))
        runner = ctx.runner
        if runner.in_process:
            calls = [(varray._tile_spec(tid), p.local, out, p.out) for p, tid in todo]
            done = runner.run_all(read_piece_into, calls, batch_size=varray._batch_size(len(calls)))
            results: list[Any] = list(done)
        else:
            calls2 = [(varray._tile_spec(tid), p.local) for p, tid in todo]
            results = list(runner.run_all(read_piece, calls2, batch_size=varray._batch_size(len(calls2))))
        failures = []
        for (piece, _), res in zip(todo, results, strict=True):
            if isinstance(res, BaseException):
                failures.append((piece.position, res))
            elif not runner.in_process:
                out[piece.out] = res
        _raise_group(f"Reading {self} failed in {len(failures)} tile(s)", failures)
        return out[()] if self.shape == () else out

    def update(self, data: Any) -> None:
        """Write ``data`` into the region (upsert), creating missing tiles.

        Parameters
        ----------
        data : scalar, list, tuple or numpy.ndarray
            Values of the VArray's dtype; scalars and smaller arrays broadcast like numpy.

        Raises
        ------
        DekerVSubsetError
            Some tiles failed: it holds their exceptions; the other tiles were written.
        DekerLockError
            Another writer kept a touched tile locked longer than ``write_lock_timeout``.
        """
        varray = self._array
        ctx = varray._ctx
        ctx.check_open()
        ctx.check_writable(f"update {self}")
        prepared = prepare_update_data(data, self._np_dtype(), self.shape)
        values = varray._check_exists()
        pieces = self._pieces()
        token = new_token()
        in_process = ctx.runner.in_process
        ctx.ensure_storage_id()  # the tasks prove they see this storage (a 1.1.7 one gets an id now)

        def chunk_of(piece: TilePiece) -> Any:
            return prepared if isinstance(prepared, np.generic) else prepared[piece.out]

        # With threads, a missing tile covered entirely is created holding its data (one file
        # written once); elsewhere the data is written by the tile tasks, on the workers.
        payloads = {p.position: chunk_of(p) for p in pieces if p.full} if in_process else None
        with storage_errors(varray._main_file), VArrayWriteLock(ctx.locks, token) as lock:
            tiles, written = self._lock_tiles(lock, pieces, values, payloads)
            todo = [p for p in pieces if p.position not in written]
            calls = []
            task: Any = write_piece
            for p in todo:
                chunk = piece = chunk_of(p)
                if not in_process:  # (threads copy their own piece, in parallel)
                    chunk = compact_for_transport(piece)
                    if isinstance(chunk, np.ndarray) and chunk.shape != np.shape(piece):
                        task = write_piece_broadcast  # distinct values only: broadcast on arrival
                calls.append((varray._tile_spec(tiles[p.position]), p.local, chunk, token))
            results = ctx.runner.run_all(task, calls, batch_size=varray._batch_size(len(calls)))
        failures = [
            (p.position, r) for p, r in zip(todo, results, strict=True) if isinstance(r, BaseException)
        ]
        _raise_group(
            f"Updating {self} failed in {len(failures)} tile(s); the other tiles were written", failures
        )

    def clear(self) -> None:
        """Reset the region to the fill value; tiles covered entirely are deleted."""
        varray = self._array
        ctx = varray._ctx
        ctx.check_open()
        ctx.check_writable(f"clear {self}")
        varray._check_exists()
        every = self._pieces()
        if not varray._tile_ids(p.position for p in every):
            return
        token = new_token()
        ctx.ensure_storage_id()
        with storage_errors(varray._main_file), VArrayWriteLock(ctx.locks, token) as lock:
            tiles, _written = self._lock_tiles(lock, every, None)
            pieces = [p for p in every if p.position in tiles]
            calls = [
                (varray._tile_spec(tiles[p.position], p.position), p.local, p.full, token) for p in pieces
            ]
            results = ctx.runner.run_all(clear_piece, calls, batch_size=varray._batch_size(len(calls)))
        for p, r in zip(pieces, results, strict=True):
            if r is True:
                varray._forget_tile(tiles[p.position], p.position)
        failures = [
            (p.position, r) for p, r in zip(pieces, results, strict=True) if isinstance(r, BaseException)
        ]
        _raise_group(f"Clearing {self} failed in {len(failures)} tile(s)", failures)
