"""deker_dask/geometry.py: chunk grids aligned on tiles, against a brute-force numpy oracle.

For random normalised bounds (ints and slices) and chunk steps: every cell of the selection lies
in exactly one region, no region crosses a multiple of its step, ``chunks_of`` gives the regions'
lengths in dask's form and ``regions`` comes in C order of the block index.
"""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from deker.storage.arrayfile import Bounds, selection_shape
from deker_dask.geometry import chunks_of, grid, intervals, regions


@st.composite
def bounds_and_steps(draw: st.DrawFn) -> tuple[tuple[int, ...], Bounds, tuple[int, ...]]:
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.integers(1, 12)) for _ in range(ndim))
    bounds: list[int | slice] = []
    for n in shape:
        if draw(st.booleans()) and ndim > 1:
            bounds.append(draw(st.integers(0, n - 1)))
        else:
            start = draw(st.integers(0, n - 1))
            bounds.append(slice(start, draw(st.integers(start + 1, n))))
    steps = tuple(draw(st.integers(1, 6)) for _ in range(ndim))
    return shape, tuple(bounds), steps


def test_intervals_of_an_int_and_of_a_slice() -> None:
    assert intervals(5, 4) == [5]
    assert intervals(slice(3, 11), 4) == [slice(3, 4), slice(4, 8), slice(8, 11)]
    assert intervals(slice(4, 8), 4) == [slice(4, 8)]


@given(bounds_and_steps())
def test_regions_cover_the_selection_once_and_stay_inside_a_step(
    case: tuple[tuple[int, ...], Bounds, tuple[int, ...]],
) -> None:
    shape, bounds, steps = case
    g = grid(bounds, steps)
    seen = np.zeros(shape, dtype=np.int64)
    found = regions(g)
    for _block, region in found:
        seen[region] += 1
        for bound, step in zip(region, steps, strict=True):
            if isinstance(bound, slice):
                assert bound.start < bound.stop
                assert bound.start // step == (bound.stop - 1) // step  # one step-aligned chunk
    expected = np.zeros(shape, dtype=np.int64)
    expected[bounds] = 1
    np.testing.assert_array_equal(seen, expected)
    # dask's chunks: per slice dimension, the lengths of its intervals, summing to the selection
    chunks = chunks_of(g)
    assert tuple(sum(c) for c in chunks) == selection_shape(bounds)
    blocks = [block for block, _ in found]
    assert blocks == list(itertools.product(*(range(len(c)) for c in chunks)))
    for block, region in found:
        assert selection_shape(region) == tuple(chunks[d][i] for d, i in enumerate(block))
