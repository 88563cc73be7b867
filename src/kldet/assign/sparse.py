"""Sparse (ground truth, point) pairs on per-level grids, shared by the assigners.

The assigners avoid dense G x N matrices by evaluating only pairs that can matter. Points (or priors)
come level by level, row-major within a level; :func:`grid_levels` recovers that layout from the
tensors, :func:`line_span` and :func:`rectangle_pairs` enumerate the cells of a rectangle per ground
truth and level, and :func:`segmented_topk` / :func:`best_per_point` pick winners with deterministic
tie rules.
"""

import math
from typing import NamedTuple

import torch
from torch import Tensor


class GridLevel(NamedTuple):
    """One level of points: indices start .. start + height * width - 1, row-major."""

    start: int
    height: int
    width: int
    xs: Tensor  # (width,) x of every column, increasing
    ys: Tensor  # (height,) y of every row, increasing


def grid_levels(x: Tensor, y: Tensor, level_key: Tensor) -> list[GridLevel] | None:
    """The levels of N points, or None when they are not a row-major grid per level.

    Args:
        x, y: (N,) point coordinates.
        level_key: (N, K); a level is a maximal run of consecutive points with equal keys (the stride,
            or the prior size).
    """
    changes = (level_key[1:] != level_key[:-1]).any(dim=1).nonzero().flatten() + 1
    bounds = [0, *changes.tolist(), len(x)]
    levels = []
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        level_x, level_y = x[start:end], y[start:end]
        width = int((level_y == level_y[0]).sum())
        if width == 0 or (end - start) % width:  # width 0: NaN coordinates
            return None
        height = (end - start) // width
        grid_x, grid_y = level_x.view(height, width), level_y.view(height, width)
        xs, ys = grid_x[0], grid_y[:, 0]
        is_grid = (
            (grid_x == xs).all()
            & (grid_y == ys[:, None]).all()
            & (xs[1:] > xs[:-1]).all()
            & (ys[1:] > ys[:-1]).all()
        )
        if not is_grid:
            return None
        levels.append(GridLevel(start, height, width, xs.contiguous(), ys.contiguous()))
    return levels


def line_span(starts: Tensor, ends: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """First index and count of the grid lines whose interval [starts, ends] may overlap (lo, hi) with
    positive length; ``starts`` = ``ends`` = the line coordinates gives the lines strictly inside (lo, hi).

    ``starts`` and ``ends`` are (W,) with ``lo`` and ``hi`` (R,), or batched over levels: (L, W) padded
    with +inf with (L, R); the results have the shape of ``lo``. They are made monotone (suffix
    minimum, running maximum) so that the span found by binary search is a superset of the exact one.
    """
    ends = ends.cummax(-1).values
    starts = starts.flip(-1).cummin(-1).values.flip(-1)
    first = torch.searchsorted(ends, lo.contiguous(), right=True)
    count = (torch.searchsorted(starts, hi.contiguous()) - first).clamp(min=0)
    return first, count


def rectangle_pairs(
    levels: list[GridLevel], first_row: Tensor, num_rows: Tensor, first_column: Tensor, num_columns: Tensor
) -> tuple[Tensor, Tensor]:
    """All (row of the (R, L) inputs, point index) pairs of the rectangles of cells
    [first_row, first_row + num_rows) x [first_column, first_column + num_columns) on every level."""
    device = first_row.device
    num_levels = len(levels)
    starts = torch.tensor([lv.start for lv in levels], device=device)
    widths = torch.tensor([lv.width for lv in levels], device=device)
    # One run of consecutive point indices per rectangle row.
    num_rows = torch.where(num_columns > 0, num_rows, 0).flatten()
    rectangle = torch.repeat_interleave(torch.arange(len(num_rows), device=device), num_rows)
    row = first_row.flatten()[rectangle] + _position_in_run(rectangle, num_rows)
    level = rectangle % num_levels
    run_start = starts[level] + row * widths[level] + first_column.flatten()[rectangle]
    run_length = num_columns.flatten()[rectangle]
    run = torch.repeat_interleave(torch.arange(len(run_start), device=device), run_length)
    points = run_start[run] + _position_in_run(run, run_length)
    return (rectangle // num_levels)[run], points


def _position_in_run(run: Tensor, run_length: Tensor) -> Tensor:
    """0, 1, ... within each run of ``run`` = repeat_interleave(arange(len(run_length)), run_length)."""
    run_first = run_length.cumsum(0) - run_length
    return torch.arange(len(run), device=run.device) - run_first[run]


def row_chunks(pairs_per_row: Tensor, budget: int) -> list[slice]:
    """Consecutive rows of (R,) pair counts grouped into slices of about ``budget`` pairs each."""
    chunk_of = (pairs_per_row.cumsum(0) - pairs_per_row) // max(budget, 1)
    bounds = [0, *((chunk_of[1:] != chunk_of[:-1]).nonzero().flatten() + 1).tolist(), len(pairs_per_row)]
    return [slice(start, end) for start, end in zip(bounds[:-1], bounds[1:], strict=True)]


def segmented_topk(values: Tensor, segments: Tensor, points: Tensor, num_segments: int, k: int) -> Tensor:
    """Mask (M,) of the k best pairs of every segment: highest value first, ties to the lower point index.

    ``values``, ``segments`` and ``points`` are (M,); the (segment, point) pairs must be distinct.
    """
    selected = torch.zeros_like(values, dtype=torch.bool)
    no_point = torch.iinfo(torch.long).max
    for _ in range(k):
        remaining = values.masked_fill(selected, -math.inf)
        best = values.new_full((num_segments,), -math.inf).scatter_reduce(0, segments, remaining, "amax")
        hit = (remaining == best[segments]) & ~selected
        first = torch.full((num_segments,), no_point, device=values.device).scatter_reduce(
            0, segments[hit], points[hit], "amin"
        )
        selected |= hit & (points == first[segments])
    return selected


def best_per_point(assigned: Tensor, gts: Tensor, points: Tensor, values: Tensor, num_gts: int) -> Tensor:
    """``assigned`` (N,) with every point in ``points`` given to the ground truth of its highest value
    among the pairs (ties: the lower ground-truth index); other points keep their entry."""
    best = values.new_full(assigned.shape, -math.inf).scatter_reduce(0, points, values, "amax")
    is_best = values == best[points]
    winner = torch.full_like(assigned, num_gts).scatter_reduce(0, points[is_best], gts[is_best], "amin")
    return torch.where(winner < num_gts, winner, assigned)


def dense_topk(values: Tensor, priors: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Row-wise top-k of (R, M) values, ties to the lower prior.

    ``priors`` (R or 1, M) holds the prior index of every column and must increase along each row, so
    that the earlier column is the lower prior. Returns the picks as (rows, priors, values), each
    (R * min(k, M),), grouped by row.
    """
    kth = values.topk(min(k, values.shape[1]), dim=1).values[:, -1:]
    # Everything >= the k-th value is a handful per row; only those are ordered exactly. nonzero()
    # lists them row by row with increasing columns; stable sorts by value, then by row, keep that
    # order among equal values.
    rows, columns = (values >= kth).nonzero(as_tuple=True)
    picked_values = values[rows, columns]
    order = torch.sort(picked_values, descending=True, stable=True).indices
    order = order[torch.sort(rows[order], stable=True).indices]
    rows, columns, picked_values = rows[order], columns[order], picked_values[order]
    per_row = torch.bincount(rows, minlength=len(kth))
    keep = torch.arange(len(rows), device=rows.device) - (per_row.cumsum(0) - per_row)[rows] < k
    return rows[keep], priors.expand_as(values)[rows[keep], columns[keep]], picked_values[keep]
