"""The standard FCOS label assignment, the baseline for ablations against Ali-TSM."""

import math

import torch
from torch import Tensor

from kldet.assign.sparse import (
    GridLevel,
    best_per_point,
    grid_levels,
    line_span,
    rectangle_pairs,
    row_chunks,
)

# FCOS regress ranges of max(l, t, r, b) for the levels in increasing stride order.
FCOS_REGRESS_RANGES = ((-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, math.inf))
# Bounds the temporaries: about this many point-ground-truth pairs are tested at a time.
_PAIRS_PER_CHUNK = 1 << 21


def _point_regress_ranges(point_strides: Tensor, regress_ranges: dict | Tensor | None) -> Tensor:
    """(N, 2) lower and upper bound of max(l, t, r, b) for every point."""
    if isinstance(regress_ranges, Tensor):
        if regress_ranges.shape != (len(point_strides), 2):
            raise ValueError(
                f"regress_ranges tensor must be (N, 2) = ({len(point_strides)}, 2), got {tuple(regress_ranges.shape)}"
            )
        return regress_ranges.to(point_strides)
    strides = torch.unique(point_strides).tolist()
    if regress_ranges is None:
        if len(strides) > len(FCOS_REGRESS_RANGES):
            raise ValueError(
                f"{len(strides)} levels but only {len(FCOS_REGRESS_RANGES)} default regress ranges"
            )
        regress_ranges = dict(zip(strides, FCOS_REGRESS_RANGES, strict=False))
    table = {float(s): r for s, r in regress_ranges.items()}
    missing = [s for s in strides if s not in table]
    if missing:
        raise ValueError(f"regress_ranges has no entry for strides {missing}")
    ranges = point_strides.new_zeros((len(point_strides), 2))
    for stride in strides:
        ranges[point_strides == stride] = point_strides.new_tensor(table[stride])
    return ranges


def _is_candidate(
    x: Tensor, y: Tensor, stride: Tensor, ranges: Tensor, boxes: Tensor, center_sampling: bool, radius: float
) -> Tensor:
    """FCOS candidate test of broadcastable points (x, y, stride, ranges (..., 2)) and boxes (..., 4)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    ltrb = torch.stack((x - x1, y - y1, x2 - x, y2 - y), dim=-1)
    if center_sampling:
        cx, cy, reach = (x1 + x2) / 2, (y1 + y2) / 2, stride * radius
        inner = torch.stack(
            (
                x - torch.maximum(cx - reach, x1),
                y - torch.maximum(cy - reach, y1),
                torch.minimum(cx + reach, x2) - x,
                torch.minimum(cy + reach, y2) - y,
            ),
            dim=-1,
        )
        inside = inner.min(-1).values > 0
    else:
        inside = ltrb.min(-1).values > 0
    max_distance = ltrb.max(-1).values
    return inside & (max_distance >= ranges[..., 0]) & (max_distance <= ranges[..., 1])


def fcos_assign(
    points: Tensor,
    point_strides: Tensor,
    gt_boxes: Tensor,
    *,
    regress_ranges: dict | Tensor | None = None,
    center_sampling: bool = True,
    radius: float = 1.5,
) -> Tensor:
    """FCOS assignment: a point is a candidate of a ground truth when it lies strictly inside the box
    (or, with center sampling, inside the square of half-side ``radius * stride`` about the box centre,
    clipped to the box) and max(l, t, r, b) is within its level's regress range; among candidates the
    ground truth of smallest area wins (ties: the lower index).

    Points on a row-major grid per level (as :func:`kldet.assign.points_and_strides` makes them) are
    matched through the cells each box can reach; any other layout is checked against every box, in
    chunks.

    Args:
        points: (N, 2) x, y.
        point_strides: (N,) stride of each point's level.
        gt_boxes: (G, 4) xyxy.
        regress_ranges: {stride: (lo, hi)}, an (N, 2) tensor, or None for ``FCOS_REGRESS_RANGES`` given
            to the levels in increasing stride order.
        center_sampling: restrict positives to the centre region.
        radius: centre-region half-side in strides.

    Returns:
        (N,) long: index of the assigned ground truth, -1 for background.
    """
    num_points, num_gts = len(points), len(gt_boxes)
    assigned = torch.full((num_points,), -1, dtype=torch.long, device=points.device)
    if num_gts == 0 or num_points == 0:
        return assigned
    points, point_strides, gt_boxes = points.float(), point_strides.float(), gt_boxes.float()
    ranges = _point_regress_ranges(point_strides, regress_ranges)
    x, y = points.unbind(1)
    levels = grid_levels(x, y, point_strides[:, None])
    options = (ranges, gt_boxes, center_sampling, radius)
    if levels is None:
        gts, candidates = _all_candidates(x, y, point_strides, *options)
    else:
        gts, candidates = _grid_candidates(levels, x, y, point_strides, *options)
    areas = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])
    return best_per_point(assigned, gts, candidates, -areas[gts], num_gts)


def _all_candidates(x, y, point_strides, ranges, gt_boxes, center_sampling, radius) -> tuple[Tensor, Tensor]:
    """(ground truth, point) index pairs of all candidates, testing every pair in chunks."""
    chunk = max(1, _PAIRS_PER_CHUNK // len(x))
    gts, candidates = [], []
    for start in range(0, len(gt_boxes), chunk):
        boxes = gt_boxes[start : start + chunk, None, :]
        g, n = _is_candidate(x, y, point_strides, ranges, boxes, center_sampling, radius).nonzero(
            as_tuple=True
        )
        gts.append(g + start)
        candidates.append(n)
    return torch.cat(gts), torch.cat(candidates)


def _grid_candidates(
    levels: list[GridLevel], x, y, point_strides, ranges, gt_boxes, center_sampling, radius
) -> tuple[Tensor, Tensor]:
    """(ground truth, point) index pairs of all candidates, testing only the cells a box can reach."""
    x1, y1, x2, y2 = gt_boxes.unbind(1)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    spans = []
    for level in levels:
        level_points = slice(level.start, level.start + level.height * level.width)
        reach = point_strides[level.start] * radius
        farthest = ranges[level_points, 1].max()
        # Inside the (centre-sampled) box and no farther than the regress range from either side.
        lo_x = torch.maximum(torch.maximum(cx - reach, x1) if center_sampling else x1, x2 - farthest)
        hi_x = torch.minimum(torch.minimum(cx + reach, x2) if center_sampling else x2, x1 + farthest)
        lo_y = torch.maximum(torch.maximum(cy - reach, y1) if center_sampling else y1, y2 - farthest)
        hi_y = torch.minimum(torch.minimum(cy + reach, y2) if center_sampling else y2, y1 + farthest)
        spans.append((*_widened_span(level.ys, lo_y, hi_y), *_widened_span(level.xs, lo_x, hi_x)))
    first_row, num_rows, first_column, num_columns = (torch.stack(t, dim=1) for t in zip(*spans, strict=True))
    gts, candidates = [], []
    for part in row_chunks((num_rows * num_columns).sum(dim=1), _PAIRS_PER_CHUNK):
        g, n = rectangle_pairs(levels, first_row[part], num_rows[part], first_column[part], num_columns[part])
        g = g + part.start
        keep = _is_candidate(x[n], y[n], point_strides[n], ranges[n], gt_boxes[g], center_sampling, radius)
        gts.append(g[keep])
        candidates.append(n[keep])
    return torch.cat(gts), torch.cat(candidates)


def _widened_span(lines: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """First index and count of the grid lines strictly inside (lo, hi), one more on each side so that
    rounding in lo and hi cannot drop a line the exact test accepts."""
    first, count = line_span(lines, lines, lo, hi)
    last = (first + count).clamp(max=len(lines) - 1)
    first = (first - 1).clamp(min=0)
    return first, (last - first + 1).clamp(min=0)
