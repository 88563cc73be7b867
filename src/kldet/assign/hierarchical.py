"""The hierarchical KLD assigner of the two-stage KLDet's RPN (KLDET_SPEC.md section 9).

The result equals :func:`kldet.assign.reference.hierarchical_kld_assign_dense`, which evaluates the KLD
similarity of every (ground truth, anchor) pair: G x N floats per stage (0.3 GB at G = 500 and the
159,882 anchors of an 800 x 800 image). Here memory stays bounded at any G, on the anchors' device.

Why few pairs suffice. The anchors of one (level, ratio) form a grid: column j has centre x_j and
width w_j, row i centre y_i and height h_i (:class:`kldet.assign.anchors.RFAnchorGenerator` computes x1, x2 from
the column alone, so this holds bit for bit; the sizes vary by a few ulps between columns). With the
anchor shape fixed, KL(anchor || g) = 1/2 [shape terms + 4 dx^2 / w_g^2 + 4 dy^2 / h_g^2] is separable and
increasing in |dx| and |dy|, so:

- Top-k: an anchor of a grid whose column is not among the k nearest columns to g's centre has k
  anchors on its row with a strictly smaller KL (likewise for rows). The top-k of g over all anchors
  therefore lies in the union over grids of the k nearest columns x k nearest rows, which the window
  of k lines on either side of the centre holds. Float rounding (and the ulp size spread) can break
  exact monotonicity, so the window's k-th best similarity must also beat, by a relative margin, an
  upper bound on every anchor outside the windows (the nearest line outside, level with the centre:
  :func:`kldet.assign.sparse.outside_kl`). A ground truth that fails (near-flat KL: boxes far larger
  than the anchors) gets windows sized so that nothing outside can reach its k-th best, then, if that
  still fails, all anchors.
- Threshold: similarity >= t means KL <= 1/t - 1, and KL >= KL(the anchor centred on g) + 2 dx^2 / w_g^2,
  so |dx| (|dy|) is bounded per grid; the windows are widened to hold those lines (none where the
  anchor shape alone exceeds the KL), so every anchor that reaches the threshold for some ground
  truth is evaluated with it.

Anchors that are not such grids (another order, random boxes, NaN) are evaluated exhaustively, in
chunks of ground truths: same result, bounded memory, O(G N) time.
"""

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from kldet.assign.anchors import BACKGROUND, IGNORED
from kldet.assign.sparse import (
    StackedLevels,
    best_per_point,
    centred_kl,
    concat_picks,
    dense_topk,
    grid_levels,
    line_window,
    offsets_within_kl,
    outside_kl,
    rectangle_pairs,
    row_chunks,
    segmented_topk,
    stack_levels,
)
from kldet.boxes import box_centers_and_sizes, gaussian_kl, shrink_boxes

# Bounds the temporaries: about this many anchor-ground-truth pairs are evaluated at a time.
_PAIRS_PER_CHUNK = 1 << 19
# A window is certified only when its k-th best beats the bound on the rest by this relative margin,
# which absorbs rounding and the ulp spread of the anchor sizes within a grid.
_BOUND_MARGIN = 1e-4
# The sizes within one (level, ratio) grid may differ by this relative amount (a few ulps in practice).
_SIZE_SPREAD = 1e-5

Geometry = tuple[Tensor, Tensor, Tensor, Tensor]  # cx, cy, w, h, each (N,) or (G,)
Picks = tuple[Tensor, Tensor, Tensor]  # ground truths, anchors, values of the picked pairs


def hierarchical_kld_assign(
    anchors: Tensor,
    gt_boxes: Tensor,
    *,
    topk: tuple[int, int] = (3, 1),
    ratio: float = 0.9,
    threshold: float = 0.8,
) -> Tensor:
    """Hierarchical KLD assignment of anchors to ground truths (the RPN's, KLDET_SPEC.md section 9).

    Stage s (K1: KLD similarity 1 / (1 + KL(anchor || g)); K2: the same for the anchors shrunk about
    their centres by ``ratio``): an anchor whose best K over the ground truths is below ``threshold`` is
    :data:`BACKGROUND`, otherwise :data:`IGNORED`; then every ground truth's top-k_s anchors by K are its
    positives. Final: the stage-1 positive where there is one, otherwise the stage-2 result.
    Ties: within a ground truth's top-k the lower anchor index wins; an anchor picked by several ground
    truths in one stage goes to the highest K, then the lower ground-truth index (as Ali-TSM).

    Args:
        anchors: (N, 4) xyxy, all levels concatenated (e.g. :class:`kldet.assign.anchors.RFAnchorGenerator`'s);
            not modified. The generator's layout is fast; any other set is evaluated exhaustively.
        gt_boxes: (G, 4) xyxy.
        topk: (k1, k2) positives per ground truth in stage 1 and stage 2.
        ratio: the anchors' shrink factor for stage 2.
        threshold: the similarity from which an unpicked anchor is ignored rather than background.

    Returns:
        (N,) long on the anchors' device: the ground-truth index, :data:`BACKGROUND` or :data:`IGNORED`.
        With G = 0 every anchor is background.
    """
    if anchors.dim() != 2 or anchors.shape[-1] != 4 or gt_boxes.dim() != 2 or gt_boxes.shape[-1] != 4:
        raise ValueError(
            f"hierarchical_kld_assign: anchors {tuple(anchors.shape)} and gt_boxes {tuple(gt_boxes.shape)} "
            "must be (N, 4) and (G, 4)"
        )
    if len(topk) != 2 or min(topk) < 0 or ratio <= 0:
        raise ValueError(f"hierarchical_kld_assign: topk={topk} must be two ints >= 0 and ratio={ratio} > 0")
    num_anchors, num_gts = len(anchors), len(gt_boxes)
    if num_gts == 0 or num_anchors == 0:
        return torch.full((num_anchors,), BACKGROUND, dtype=torch.long, device=anchors.device)
    anchors, gt_boxes = anchors.detach().float(), gt_boxes.detach().to(anchors.device, torch.float32)
    gt_geometry = box_centers_and_sizes(gt_boxes)
    stage1, stage2 = (
        _stage(box_centers_and_sizes(boxes), gt_geometry, min(int(k), num_anchors), threshold)
        for boxes, k in ((anchors, topk[0]), (shrink_boxes(anchors, ratio), topk[1]))
    )
    return torch.where(stage1 >= 0, stage1, stage2)


def _stage(anchor_geometry: Geometry, gt_geometry: Geometry, k: int, threshold: float) -> Tensor:
    """(N,) one stage's result on anchors and ground truths of the given centres and sizes."""

    def similarity(gts: Tensor, anchors: Tensor) -> Tensor:
        kl = gaussian_kl(*(t[anchors] for t in anchor_geometry), *(t[gts] for t in gt_geometry))
        return 1 / (1 + kl)

    num_anchors, num_gts = len(anchor_geometry[0]), len(gt_geometry[0])
    all_gts = torch.arange(num_gts, device=gt_geometry[0].device)
    reaches = torch.zeros(num_anchors, dtype=torch.bool, device=all_gts.device)
    grid = _anchor_grids(anchor_geometry)
    if grid is None:
        picks = _exhaustive_pass(similarity, all_gts, num_anchors, k, (threshold, reaches))
    else:
        picks = _windowed_topk(similarity, grid, gt_geometry, k, threshold, reaches)
    assigned = torch.where(reaches, IGNORED, BACKGROUND)
    return best_per_point(assigned, *picks, num_gts) if k > 0 else assigned


class _AnchorGrids(NamedTuple):
    """The (level, ratio) grids of the anchors, in a virtual order that makes each grid row-major.

    Virtual index v = slot * M + m stands for anchor m * A + slot (A anchors per location, M locations):
    ratio slot by ratio slot, then the locations in the anchors' order.
    """

    stacked: StackedLevels  # one level per (ratio slot, level), on the virtual indices
    per_location: int  # A
    locations: int  # M

    def anchor_index(self, virtual: Tensor) -> Tensor:
        return (virtual % self.locations) * self.per_location + virtual // self.locations


def _anchor_grids(geometry: Geometry) -> _AnchorGrids | None:
    """The grids of anchors laid out as :class:`kldet.assign.anchors.RFAnchorGenerator` lays them out (level by
    level, location-major, then A ratios), or None for any other set.

    A is the number of leading anchors centred on the first one; within a ratio slot a level ends where
    the centres stop increasing row-major. Everything the windows rely on is then checked: every
    (slot, level) is a row-major grid (:func:`kldet.assign.sparse.grid_levels`) with sizes equal up to
    ``_SIZE_SPREAD``.
    """
    cx, cy, w, h = geometry
    num_anchors = len(cx)
    head = min(num_anchors, 64)
    tolerance = 1e-4 * (1 + cx[0].abs() + cy[0].abs())
    off_first = ((cx[:head] - cx[0]).abs() + (cy[:head] - cy[0]).abs() > tolerance).nonzero()
    per_location = int(off_first[0]) if len(off_first) else head
    if num_anchors % per_location:
        return None
    locations = num_anchors // per_location
    levels = []
    for slot in range(per_location):
        x, y = cx[slot::per_location], cy[slot::per_location]
        increasing = (y[1:] > y[:-1]) | ((y[1:] == y[:-1]) & (x[1:] > x[:-1]))
        level_key = torch.cat((increasing.new_zeros(1, dtype=torch.long), (~increasing).long().cumsum(0)))
        slot_levels = grid_levels(x, y, level_key[:, None])
        if slot_levels is None:
            return None
        for sizes in (w[slot::per_location], h[slot::per_location]):
            largest = sizes.new_full((len(slot_levels),), -math.inf).scatter_reduce(
                0, level_key, sizes, "amax"
            )
            smallest = sizes.new_full((len(slot_levels),), math.inf).scatter_reduce(
                0, level_key, sizes, "amin"
            )
            if not bool((largest - smallest <= _SIZE_SPREAD * largest).all()):
                return None
        levels += [level._replace(start=slot * locations + level.start) for level in slot_levels]
    starts = torch.tensor([level.start for level in levels], device=cx.device)
    grids = _AnchorGrids(None, per_location, locations)
    first_anchors = grids.anchor_index(starts)
    return grids._replace(stacked=stack_levels(levels, w[first_anchors], h[first_anchors]))


class _Windows(NamedTuple):
    """A rectangle of cells per ground truth and grid: first row, rows, first column, columns, each (R, L)."""

    first_row: Tensor
    num_rows: Tensor
    first_column: Tensor
    num_columns: Tensor


def _windows(
    stacked: StackedLevels, geometry: Geometry, half_w: Tensor, half_h: Tensor, radius: Tensor | int
) -> _Windows:
    """The windows of R ground truths (``geometry``: cx, cy, w, h, each (R,)): per grid the lines within
    (half_w, half_h) (R, L) of the centre and ``radius`` (an int, or (R, L) of 0 or -1 ... k - 1) more
    beyond the two lines that bracket it (-1: none)."""
    if isinstance(radius, int):
        return _Windows(
            *line_window(geometry[1], half_h, stacked.ys, stacked.heights, radius),
            *line_window(geometry[0], half_w, stacked.xs, stacked.widths, radius),
        )
    windows = [_windows(stacked, geometry, half_w, half_h, int(r)) for r in radius.unique().tolist()]
    picked = windows[0]
    for r, window in zip(radius.unique().tolist()[1:], windows[1:], strict=True):
        picked = _Windows(
            *(torch.where(radius == r, new, old) for new, old in zip(window, picked, strict=True))
        )
    return picked


def _windowed_topk(
    similarity: Callable[[Tensor, Tensor], Tensor],
    grids: _AnchorGrids,
    gt_geometry: Geometry,
    k: int,
    threshold: float,
    reaches: Tensor,
) -> Picks:
    """Top-k anchors of every ground truth by ``similarity``, and ``reaches`` (N,) set where an anchor's
    similarity to some ground truth is >= ``threshold``; see the module docstring.

    Passes, each for the ground truths the previous ones did not settle: (1) the two lines about the
    centre on every grid, widened to the threshold's offsets (this pass marks ``reaches`` for all
    ground truths); (2) k lines on either side on the grids whose centred anchor can beat the k-th best
    of pass 1, none elsewhere; (3) windows outside which nothing can beat the k-th best so far; (4) all
    anchors.
    """
    num_anchors, num_gts = len(reaches), len(gt_geometry[0])
    stacked = grids.stacked
    pending = torch.arange(num_gts, device=reaches.device)
    no_extent = gt_geometry[2].new_zeros(num_gts, len(stacked.levels))
    if threshold <= 0:
        reaches.fill_(True)
    if 0 < threshold <= 1:
        half_w, half_h = offsets_within_kl(stacked, gt_geometry, no_extent + (1 / threshold - 1))
    else:
        half_w = half_h = no_extent
    windows = _windows(stacked, gt_geometry, half_w, half_h, min(k, 1) - 1)
    picks, certified, kth = _window_pass(
        similarity, grids, gt_geometry, pending, windows, k, (threshold, reaches)
    )
    all_picks = [picks]
    if k == 0:
        return picks
    pending, kth = pending[~certified], kth[~certified]
    geometry = tuple(t[pending] for t in gt_geometry)
    no_extent = no_extent[: len(pending)]
    if k > 1 and len(pending):
        can_beat = 1 / (1 + centred_kl(stacked, geometry)) >= kth[:, None] * (1 - _BOUND_MARGIN)
        radius = torch.where(can_beat, k - 1, -1)
        windows = _windows(stacked, geometry, no_extent, no_extent, radius)
        picks, certified, kth = _window_pass(similarity, grids, gt_geometry, pending, windows, k)
        all_picks.append(picks)
        pending, kth = pending[~certified], kth[~certified]
        geometry = tuple(t[pending] for t in gt_geometry)
    if len(pending):
        needed_kl = torch.where(kth > 0, 1 / kth - 1, math.inf)[:, None].expand(-1, len(stacked.levels))
        half_w, half_h = offsets_within_kl(stacked, geometry, needed_kl)
        windows = _windows(stacked, geometry, half_w, half_h, k - 1)
        picks, certified, _ = _window_pass(similarity, grids, gt_geometry, pending, windows, k)
        all_picks.append(picks)
        pending = pending[~certified]
    all_picks.append(_exhaustive_pass(similarity, pending, num_anchors, k))
    return concat_picks(all_picks)


def _window_pass(
    similarity: Callable[[Tensor, Tensor], Tensor],
    grids: _AnchorGrids,
    gt_geometry: Geometry,
    gts: Tensor,
    windows: _Windows,
    k: int,
    marking: tuple[float, Tensor] | None = None,
) -> tuple[Picks, Tensor, Tensor]:
    """Top-k of ``gts`` (R,) within their ``windows``, each a run of lines about the centre on either
    axis (possibly empty); with ``marking`` = (threshold, reaches), sets ``reaches`` (N,) where an
    evaluated pair's similarity is >= threshold.

    Returns the picks of the ground truths whose k-th best beats the bound on every anchor outside the
    windows, which ground truths do (R,) bool, and the k-th best (R,) (0 with fewer than k candidates).
    """
    stacked = grids.stacked
    nearest = outside_kl(stacked, tuple(t[gts] for t in gt_geometry), *windows)
    bound = (1 / (1 + nearest)).amax(dim=1) * (1 + _BOUND_MARGIN)
    certified = torch.zeros_like(gts, dtype=torch.bool)
    kth = torch.zeros_like(bound)
    picks = [(gts[:0], gts[:0], bound[:0])]
    for part in row_chunks((windows.num_rows * windows.num_columns).sum(dim=1), _PAIRS_PER_CHUNK):
        local, virtual = rectangle_pairs(stacked.levels, *(t[part] for t in windows))
        anchors = grids.anchor_index(virtual)
        values = similarity(gts[part][local], anchors)
        if marking is not None:
            marking[1][anchors[values >= marking[0]]] = True
        if k == 0:
            continue
        picked = segmented_topk(values, local, anchors, part.stop - part.start, k)
        local, anchors, values = local[picked], anchors[picked], values[picked]
        count = torch.bincount(local, minlength=part.stop - part.start)
        part_kth = values.new_full(count.shape, math.inf).scatter_reduce(0, local, values, "amin")
        kth[part] = torch.where(count == k, part_kth, 0)
        done = (count == k) & (part_kth > bound[part])
        certified[part] = done
        keep = done[local]
        picks.append((gts[part][local[keep]], anchors[keep], values[keep]))
    return concat_picks(picks), certified, kth


def _exhaustive_pass(
    similarity: Callable[[Tensor, Tensor], Tensor],
    gts: Tensor,
    num_anchors: int,
    k: int,
    marking: tuple[float, Tensor] | None = None,
) -> Picks:
    """Top-k anchors of ``gts`` (R,) by ``similarity`` over all anchors, in chunks of ground truths;
    ``marking`` as for :func:`_window_pass`."""
    all_anchors = torch.arange(num_anchors, device=gts.device)[None]
    chunk = max(1, _PAIRS_PER_CHUNK // num_anchors)
    picks = [(gts[:0], gts[:0], torch.zeros(0, device=gts.device))]
    for start in range(0, len(gts), chunk):
        rows = gts[start : start + chunk]
        values = similarity(rows[:, None], all_anchors)
        if marking is not None:
            marking[1].logical_or_((values >= marking[0]).any(dim=0))
        if k > 0:
            r, p, v = dense_topk(values, all_anchors, k)
            picks.append((rows[r], p, v))
    return concat_picks(picks)
