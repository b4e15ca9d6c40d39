"""Chunk grids aligned on tiles (pure functions over normalised bounds)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from deker.storage.arrayfile import Bounds

__all__ = ["Grid", "chunks_of", "grid", "intervals", "regions"]

#: Per dimension: the slices of its chunks (file coordinates), or ``[i]`` for an integer index.
Grid = list[list[int | slice]]


def intervals(bound: int | slice, step: int) -> list[int | slice]:
    """Split one dimension's bound at the multiples of ``step`` (file coordinates).

    Parameters
    ----------
    bound : int or slice
        A normalised bound (an int, or a slice with int start < stop).
    step : int
        The chunk size along the dimension (a multiple of the tile size).

    Returns
    -------
    list
        ``[bound]`` for an int; else the slices between consecutive multiples of ``step``.
    """
    if not isinstance(bound, slice):
        return [bound]
    start, stop = int(bound.start), int(bound.stop)
    return [
        slice(max(start, k * step), min(stop, (k + 1) * step))
        for k in range(start // step, (stop - 1) // step + 1)
    ]


def grid(bounds: Bounds, steps: Sequence[int]) -> Grid:
    """Return the chunk intervals of every dimension of ``bounds``."""
    return [intervals(b, s) for b, s in zip(bounds, steps, strict=True)]


def _slice_dims(g: Grid) -> list[int]:
    return [d for d, parts in enumerate(g) if parts and isinstance(parts[0], slice)]


def chunks_of(g: Grid) -> tuple[tuple[int, ...], ...]:
    """Return the dask ``chunks`` of a grid (integer-indexed dimensions dropped)."""
    return tuple(tuple(p.stop - p.start for p in g[d] if isinstance(p, slice)) for d in _slice_dims(g))


def regions(g: Grid) -> list[tuple[tuple[int, ...], Bounds]]:
    """Return every chunk of a grid: its block index (slice dimensions only) and its bounds.

    Parameters
    ----------
    g : Grid
        From :func:`grid`.

    Returns
    -------
    list of (tuple of int, tuple)
        In C order of the block index.
    """
    dims = _slice_dims(g)
    out: list[tuple[tuple[int, ...], Bounds]] = []
    for index in itertools.product(*(range(len(g[d])) for d in dims)):
        chosen = dict(zip(dims, index, strict=True))
        bounds = tuple(g[d][chosen[d]] if d in chosen else g[d][0] for d in range(len(g)))
        out.append((tuple(index), bounds))
    return out
