"""VArray grid math: which tiles a selection touches, and which part of each (SPEC §4.1).

A VArray of shape ``S`` is cut by its ``vgrid`` ``G`` into tiles of shape ``T = S // G``.  A
normalised selection (:func:`deker.indexing.normalize_key`) becomes one :class:`TilePiece` per
tile it touches: the tile's grid position, the bounds inside the tile, and the slice of the result
the piece fills.  Bounds are in range, so only tiles inside the grid are produced (deker 1.1.7
produced "phantom" tiles beyond the grid for out-of-range slices, SPEC §8 item 3).

Everything here is pure: no I/O, no state.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "TilePiece",
    "all_positions",
    "grid_shape",
    "n_tiles",
    "piece_shape",
    "tile_origin",
    "tile_pieces",
    "tile_shape",
]


def _positive_ints(values: Sequence[int], what: str) -> tuple[int, ...]:
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"{what} must hold positive integers, not {tuple(values)!r}")
        out.append(int(value))
    return tuple(out)


def tile_shape(shape: Sequence[int], vgrid: Sequence[int]) -> tuple[int, ...]:
    """Return the shape of one tile of a VArray of ``shape`` cut by ``vgrid``.

    Parameters
    ----------
    shape : sequence of int
        The VArray shape.
    vgrid : sequence of int
        The number of tiles along each dimension.

    Returns
    -------
    tuple of int
        ``shape[d] // vgrid[d]`` per dimension.

    Raises
    ------
    ValueError
        If the lengths differ, a value is not a positive integer, or a dimension size is not a
        multiple of its grid count.

    """
    dims = _positive_ints(shape, "shape")
    grid = _positive_ints(vgrid, "vgrid")
    if len(dims) != len(grid):
        raise ValueError(f"vgrid {grid} must have one entry per dimension of shape {dims}")
    bad = [d for d, (s, g) in enumerate(zip(dims, grid, strict=True)) if s % g]
    if bad:
        raise ValueError(
            f"shape {dims} cannot be split by vgrid {grid}: the size of dimension(s) {bad} is not a "
            "multiple of the grid count"
        )
    return tuple(s // g for s, g in zip(dims, grid, strict=True))


def grid_shape(shape: Sequence[int], tile_shape: Sequence[int]) -> tuple[int, ...]:
    """Return the number of tiles along each dimension (the vgrid).

    Parameters
    ----------
    shape : sequence of int
        The VArray shape.
    tile_shape : sequence of int
        The shape of one tile.

    Returns
    -------
    tuple of int
        ``shape[d] // tile_shape[d]`` per dimension.

    Raises
    ------
    ValueError
        If the lengths differ, a value is not positive, or a size is not a multiple of the tile.

    """
    dims = _positive_ints(shape, "shape")
    tiles = _positive_ints(tile_shape, "tile_shape")
    if len(dims) != len(tiles) or any(s % t for s, t in zip(dims, tiles, strict=True)):
        raise ValueError(f"shape {dims} is not a whole number of tiles of shape {tiles}")
    return tuple(s // t for s, t in zip(dims, tiles, strict=True))


def tile_origin(position: Sequence[int], tile_shape: Sequence[int]) -> tuple[int, ...]:
    """Return the VArray coordinates of the first cell of the tile at ``position``.

    Parameters
    ----------
    position : sequence of int
        The grid position of the tile.
    tile_shape : sequence of int
        The shape of one tile.

    Returns
    -------
    tuple of int
        ``position[d] * tile_shape[d]`` per dimension.

    """
    return tuple(int(p) * int(t) for p, t in zip(position, tile_shape, strict=True))


def all_positions(vgrid: Sequence[int]) -> Iterator[tuple[int, ...]]:
    """Iterate over every grid position of ``vgrid`` in C order (last dimension fastest).

    Parameters
    ----------
    vgrid : sequence of int
        The number of tiles along each dimension.

    Yields
    ------
    tuple of int
        Each grid position.

    """
    return itertools.product(*(range(int(g)) for g in vgrid))


@dataclass(frozen=True)
class TilePiece:
    """The part of one tile that a selection covers.

    Parameters
    ----------
    position : tuple of int
        The grid position of the tile.
    local : tuple of int or slice
        The bounds inside the tile, one per dimension: an int where the selection indexes the
        dimension by an integer, else ``slice(start, stop)`` with explicit ints.
    out : tuple of slice
        Where the piece goes in the result: one slice per dimension that is not int-indexed
        (``()`` for a scalar selection).
    full : bool
        True when the piece covers every cell of the tile (an int-indexed dimension counts as
        covered only when the tile is one cell wide along it).

    """

    position: tuple[int, ...]
    local: tuple[int | slice, ...]
    out: tuple[slice, ...]
    full: bool


def piece_shape(piece: TilePiece) -> tuple[int, ...]:
    """Return the shape of the data of ``piece`` (int-indexed dimensions dropped).

    Parameters
    ----------
    piece : TilePiece
        A piece from :func:`tile_pieces`.

    Returns
    -------
    tuple of int
        The length of each local slice.

    """
    return tuple(b.stop - b.start for b in piece.local if isinstance(b, slice))


# One dimension's part of a piece: grid index, local bound, output slice (None for an int), full.
_DimPart = tuple[int, "int | slice", "slice | None", bool]


def _dim_parts(bound: int | slice, tile: int, dim: int) -> list[_DimPart]:
    if isinstance(bound, slice):
        start, stop = bound.start, bound.stop
        if not isinstance(start, int) or not isinstance(stop, int) or bound.step not in (None, 1):
            raise ValueError(
                f"dimension {dim}: a normalised slice with int start and stop is needed, not {bound}"
            )
        if not 0 <= start < stop:
            raise ValueError(f"dimension {dim}: empty or negative slice {bound}")
        parts: list[_DimPart] = []
        for k in range(start // tile, (stop - 1) // tile + 1):
            lo = max(start, k * tile) - k * tile
            hi = min(stop, (k + 1) * tile) - k * tile
            offset = k * tile + lo - start
            parts.append((k, slice(lo, hi), slice(offset, offset + hi - lo), lo == 0 and hi == tile))
        return parts
    if isinstance(bound, bool) or not isinstance(bound, int) or bound < 0:
        raise ValueError(
            f"dimension {dim}: a normalised bound is a non-negative int or a slice, not {bound!r}"
        )
    return [(bound // tile, bound % tile, None, tile == 1)]


def tile_pieces(
    bounds: Sequence[int | slice],
    tile_shape: Sequence[int],
    *,
    shape: Sequence[int] | None = None,
) -> list[TilePiece]:
    """Split a normalised selection into the pieces of the tiles it touches.

    Parameters
    ----------
    bounds : sequence of int or slice
        Normalised bounds, one per dimension (see :class:`deker.indexing.Selection`).
    tile_shape : sequence of int
        The shape of one tile.
    shape : sequence of int, optional
        The VArray shape; when given, bounds beyond it raise :class:`ValueError`.

    Returns
    -------
    list of TilePiece
        One piece per touched tile, sorted by grid position (C order).

    Raises
    ------
    ValueError
        If the bounds are not normalised, their number differs from the number of dimensions,
        or (with ``shape``) they leave the array.

    """
    tiles = _positive_ints(tile_shape, "tile_shape")
    if len(bounds) != len(tiles):
        raise ValueError(f"{len(bounds)} bounds given for {len(tiles)} dimensions: {tuple(bounds)}")
    if shape is not None:
        dims = tuple(int(s) for s in shape)
        for d, (bound, size) in enumerate(zip(bounds, dims, strict=True)):
            end = bound.stop if isinstance(bound, slice) else bound + 1
            if not isinstance(end, int) or end > size:
                raise ValueError(f"dimension {d}: bound {bound!r} leaves the axis of size {size}")
    per_dim = [_dim_parts(bound, tile, d) for d, (bound, tile) in enumerate(zip(bounds, tiles, strict=True))]
    pieces = []
    for combo in itertools.product(*per_dim):
        pieces.append(
            TilePiece(
                position=tuple(part[0] for part in combo),
                local=tuple(part[1] for part in combo),
                out=tuple(part[2] for part in combo if part[2] is not None),
                full=all(part[3] for part in combo),
            )
        )
    return pieces


def n_tiles(vgrid: Sequence[int]) -> int:
    """Return the number of tiles of ``vgrid``.

    Parameters
    ----------
    vgrid : sequence of int
        The number of tiles along each dimension.

    Returns
    -------
    int
        The product of the grid counts.

    """
    return math.prod(int(g) for g in vgrid)
