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

from kldet.boxes import gaussian_kl


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


def concat_picks(picks: list[tuple[Tensor, Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
    """(ground truths, points, values) picks of several passes concatenated."""
    gts, points, values = zip(*picks, strict=True)
    return torch.cat(gts), torch.cat(points), torch.cat(values)


class StackedLevels(NamedTuple):
    """The levels of a grid of priors, with their per-level values stacked for vectorised use."""

    levels: list[GridLevel]
    starts: Tensor  # (L,) index of the first prior of each level
    heights: Tensor  # (L,)
    widths: Tensor  # (L,)
    xs: Tensor  # (L, max width) column centres, padded with +inf
    ys: Tensor  # (L, max height) row centres, padded with +inf
    prior_w: Tensor  # (L,) prior width (with the eps) of each level
    prior_h: Tensor  # (L,)


def stack_levels(levels: list[GridLevel], prior_w: Tensor, prior_h: Tensor) -> StackedLevels:
    """:class:`StackedLevels` of ``levels`` whose priors have the (L,) sizes ``prior_w`` x ``prior_h``."""
    device = levels[0].xs.device
    return StackedLevels(
        levels=levels,
        starts=torch.tensor([lv.start for lv in levels], device=device),
        heights=torch.tensor([lv.height for lv in levels], device=device),
        widths=torch.tensor([lv.width for lv in levels], device=device),
        xs=torch.nn.utils.rnn.pad_sequence(
            [lv.xs for lv in levels], batch_first=True, padding_value=math.inf
        ),
        ys=torch.nn.utils.rnn.pad_sequence(
            [lv.ys for lv in levels], batch_first=True, padding_value=math.inf
        ),
        prior_w=prior_w,
        prior_h=prior_h,
    )


def line_window(
    centres: Tensor, half_extent: Tensor, lines: Tensor, num_lines: Tensor, radius: int
) -> tuple[Tensor, Tensor]:
    """Runs of grid lines about (R,) centres on every level: first index and count, both (R, L).

    A run holds the lines within ``half_extent`` (R, L) of the centre and at least ``radius`` more
    beyond the two lines that bracket the centre, so all lines before it lie before the centre and all
    lines after it lie after it. ``lines`` (L, max lines) is padded with +inf, ``num_lines`` is (L,).
    """
    centres = centres.expand(len(lines), -1).contiguous()
    half_extent = half_extent.T
    nearest = torch.searchsorted(lines, centres)
    lo = torch.searchsorted(lines, (centres - half_extent).contiguous())
    hi = torch.searchsorted(lines, (centres + half_extent).contiguous(), right=True)
    first = torch.minimum(nearest - 1 - radius, lo).clamp(min=0)
    end = torch.minimum(torch.maximum(nearest + 1 + radius, hi), num_lines[:, None])
    return first.T, (end - first).T.clamp(min=0)


def outside_kl(
    grid: StackedLevels,
    gt_geometry: tuple[Tensor, Tensor, Tensor, Tensor],
    first_row: Tensor,
    num_rows: Tensor,
    first_column: Tensor,
    num_columns: Tensor,
) -> Tensor:
    """(R, L) lower bound on KL(prior || g) of the priors outside the windows of R ground truths.

    The nearest column (row) outside the window on each side, put level with the centre on the other
    axis, has a KL no larger than that of any prior beyond it (the KL is non-decreasing in |dx| and
    |dy|); +inf where the window covers the level. ``gt_geometry``: cx, cy, w, h, each (R,); the window
    runs (R, L) as :func:`line_window` gives them.
    """
    gt_cx, gt_cy, gt_w, gt_h = gt_geometry
    outside_column = torch.stack((first_column - 1, first_column + num_columns), dim=-1)
    outside_row = torch.stack((first_row - 1, first_row + num_rows), dim=-1)
    level = torch.arange(len(grid.levels), device=gt_cx.device)[:, None]
    column_x = grid.xs[level, torch.minimum(outside_column.clamp(min=0), grid.widths[:, None] - 1)]
    row_y = grid.ys[level, torch.minimum(outside_row.clamp(min=0), grid.heights[:, None] - 1)]
    centre_x = gt_cx[:, None, None].expand(-1, len(level), 2)
    centre_y = gt_cy[:, None, None].expand(-1, len(level), 2)
    kl = gaussian_kl(
        torch.cat((column_x, centre_x), dim=-1),
        torch.cat((centre_y, row_y), dim=-1),
        grid.prior_w[:, None],
        grid.prior_h[:, None],
        *(t[:, None, None] for t in (gt_cx, gt_cy, gt_w, gt_h)),
    )
    exists = torch.cat(
        (
            (outside_column >= 0) & (outside_column < grid.widths[:, None]),
            (outside_row >= 0) & (outside_row < grid.heights[:, None]),
        ),
        dim=-1,
    )
    return kl.masked_fill(~exists, math.inf).amin(dim=-1)


def centred_kl(grid: StackedLevels, gt_geometry: tuple[Tensor, Tensor, Tensor, Tensor]) -> Tensor:
    """(R, L) KL(prior || g) of each level's prior centred on each of R ground truths (cx, cy, w, h, each
    (R,)): the lowest KL a prior of that level can have."""
    gt_cx, gt_cy, gt_w, gt_h = (t[:, None] for t in gt_geometry)
    return gaussian_kl(gt_cx, gt_cy, grid.prior_w, grid.prior_h, gt_cx, gt_cy, gt_w, gt_h)


def offsets_within_kl(
    grid: StackedLevels, gt_geometry: tuple[Tensor, Tensor, Tensor, Tensor], needed_kl: Tensor
) -> tuple[Tensor, Tensor]:
    """Half-sizes (R, L) in x and y of windows outside which every prior has KL(prior || g) > ``needed_kl``
    (R, L), with a little slack.

    Outside such a window a prior is at least that far off the centre on one axis, so its KL is at least
    KL(centred prior) + 2 dx^2 / w^2 (or the same in y); solve that for dx. A box with x2 < x1 has a
    negative width and the Gaussian of its mirror image, so |w| counts.
    """
    root = torch.sqrt((needed_kl * 1.01 + 1e-3 - centred_kl(grid, gt_geometry)).clamp(min=0) / 2)
    return gt_geometry[2].abs()[:, None] * root, gt_geometry[3].abs()[:, None] * root  # abs: flipped boxes
