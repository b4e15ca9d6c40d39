"""deker.tiling: selections split into tile pieces, reassembled and compared with numpy."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from deker.indexing import normalize_key
from deker.tiling import (
    TilePiece,
    all_positions,
    grid_shape,
    n_tiles,
    piece_shape,
    tile_origin,
    tile_pieces,
    tile_shape,
)


@st.composite
def layouts(draw: Any) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int | slice, ...]]:
    """A VArray shape, its vgrid, and normalised in-range bounds."""
    ndim = draw(st.integers(1, 4))
    grid = tuple(draw(st.integers(1, 4)) for _ in range(ndim))
    tiles = tuple(draw(st.integers(1, 4)) for _ in range(ndim))
    shape = tuple(g * t for g, t in zip(grid, tiles, strict=True))
    bounds: list[int | slice] = []
    for size in shape:
        if draw(st.booleans()):
            bounds.append(draw(st.integers(0, size - 1)))
        else:
            start = draw(st.integers(0, size - 1))
            bounds.append(slice(start, draw(st.integers(start + 1, size))))
    return shape, grid, tuple(bounds)


def _tiles_of(
    full: np.ndarray, tshape: tuple[int, ...], vgrid: tuple[int, ...]
) -> dict[tuple[int, ...], Any]:
    out = {}
    for pos in all_positions(vgrid):
        origin = tile_origin(pos, tshape)
        out[pos] = full[tuple(slice(o, o + t) for o, t in zip(origin, tshape, strict=True))]
    return out


@given(layouts())
def test_reassembles_numpy(layout: tuple[tuple[int, ...], tuple[int, ...], tuple[int | slice, ...]]) -> None:
    shape, vgrid, bounds = layout
    tshape = tile_shape(shape, vgrid)
    full = np.arange(math.prod(shape)).reshape(shape)
    tiles = _tiles_of(full, tshape, vgrid)
    expected = full[bounds]
    pieces = tile_pieces(bounds, tshape, shape=shape)

    positions = [p.position for p in pieces]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    assert all(0 <= p < g for pos in positions for p, g in zip(pos, vgrid, strict=True))
    touched = math.prod(
        1 if isinstance(b, int) else (b.stop - 1) // t - b.start // t + 1
        for b, t in zip(bounds, tshape, strict=True)
    )
    assert len(pieces) == touched

    out = np.full(np.shape(expected), -1)
    filled = 0
    for piece in pieces:
        part = tiles[piece.position][piece.local]
        assert np.shape(part) == piece_shape(piece)
        assert len(piece.out) == len(np.shape(expected))
        assert out[piece.out].shape == np.shape(part)
        out[piece.out] = part
        filled += int(np.size(part))
        assert piece.full == (np.size(part) == math.prod(tshape))
    assert filled == np.size(expected)
    assert np.array_equal(out, expected)


@given(layouts())
def test_whole_array_is_every_tile_full(layout: tuple[tuple[int, ...], tuple[int, ...], Any]) -> None:
    shape, vgrid, _ = layout
    tshape = tile_shape(shape, vgrid)
    pieces = tile_pieces(normalize_key((), shape).bounds, tshape)
    assert [p.position for p in pieces] == list(all_positions(vgrid))
    assert len(pieces) == n_tiles(vgrid)
    assert all(p.full for p in pieces)


def test_spec_examples() -> None:
    # SPEC §4.1: shape (10, 10), tiles (5, 2); full tiles are explicit slices here.
    pieces = tile_pieces(normalize_key((slice(3, 6), slice(0, 5)), (10, 10)).bounds, (5, 2))
    assert pieces == [
        TilePiece((0, 0), (slice(3, 5), slice(0, 2)), (slice(0, 2), slice(0, 2)), False),
        TilePiece((0, 1), (slice(3, 5), slice(0, 2)), (slice(0, 2), slice(2, 4)), False),
        TilePiece((0, 2), (slice(3, 5), slice(0, 1)), (slice(0, 2), slice(4, 5)), False),
        TilePiece((1, 0), (slice(0, 1), slice(0, 2)), (slice(2, 3), slice(0, 2)), False),
        TilePiece((1, 1), (slice(0, 1), slice(0, 2)), (slice(2, 3), slice(2, 4)), False),
        TilePiece((1, 2), (slice(0, 1), slice(0, 1)), (slice(2, 3), slice(4, 5)), False),
    ]
    pieces = tile_pieces(normalize_key((0, slice(1, 5)), (10, 10)).bounds, (5, 2))
    assert [(p.position, p.local, p.out) for p in pieces] == [
        ((0, 0), (0, slice(1, 2)), (slice(0, 1),)),
        ((0, 1), (0, slice(0, 2)), (slice(1, 3),)),
        ((0, 2), (0, slice(0, 1)), (slice(3, 4),)),
    ]


def test_out_of_range_request_has_no_phantom_tiles() -> None:
    # deker 1.1.7 produced tiles 2 and 3 for v[0:8] on a size-4 axis of tile 2 (SPEC §4.1.5).
    pieces = tile_pieces(normalize_key(slice(0, 8), (4,)).bounds, (2,))
    assert [p.position for p in pieces] == [(0,), (1,)]
    assert all(p.full for p in pieces)


def test_scalar_and_one_wide_tiles() -> None:
    [piece] = tile_pieces((5, 3), (2, 4))
    assert piece == TilePiece((2, 0), (1, 3), (), False)
    assert piece_shape(piece) == ()
    [piece] = tile_pieces((5, slice(0, 4)), (1, 4))
    assert piece.full and piece.out == (slice(0, 4),)


def test_helpers() -> None:
    assert tile_shape((10, 12), (2, 3)) == (5, 4)
    assert tile_shape((np.int64(4),), (np.int32(2),)) == (2,)
    assert grid_shape((10, 12), (5, 4)) == (2, 3)
    assert tile_origin((1, 2), (5, 4)) == (5, 8)
    assert list(all_positions((2, 2))) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert n_tiles((2, 3, 4)) == 24


@pytest.mark.parametrize(
    ("shape", "vgrid", "match"),
    [
        ((10, 12), (3, 3), "dimension\\(s\\) \\[0\\]"),
        ((10,), (2, 1), "one entry per dimension"),
        ((10,), (0,), "positive integers"),
        ((10,), (-2,), "positive integers"),
        ((10,), (2.0,), "positive integers"),
        ((10,), (True,), "positive integers"),
    ],
)
def test_tile_shape_errors(shape: Any, vgrid: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tile_shape(shape, vgrid)


def test_grid_shape_errors() -> None:
    with pytest.raises(ValueError):
        grid_shape((10,), (3,))
    with pytest.raises(ValueError):
        grid_shape((10, 2), (5,))


@pytest.mark.parametrize(
    "bounds",
    [
        (slice(None, 2),),
        (slice(0, None),),
        (slice(2, 2),),
        (slice(0, 2, 2),),
        (-1,),
        (True,),
        (1.0,),
        (0, 0),
    ],
)
def test_bad_bounds(bounds: tuple[Any, ...]) -> None:
    with pytest.raises(ValueError):
        tile_pieces(bounds, (2,))


def test_bounds_beyond_shape() -> None:
    with pytest.raises(ValueError, match="leaves the axis"):
        tile_pieces((slice(0, 5),), (2,), shape=(4,))
    with pytest.raises(ValueError, match="leaves the axis"):
        tile_pieces((4,), (2,), shape=(4,))
