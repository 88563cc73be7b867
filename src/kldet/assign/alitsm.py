"""Ali-TSM: adaptive online training sample mining (KLDET_SPEC.md section 5).

The result equals :func:`kldet.assign.reference.alitsm_assign_reference`, which evaluates both metrics
for every (ground truth, prior) pair and costs G x N (2.8 s for stage 1 alone at G = 500, N = 53,294 on
a 2-core CPU). When the priors form a grid per level (as :func:`kldet.assign.receptive_field_priors`
makes them) only candidates near each ground truth are evaluated, and a bound proves that no other
prior can enter its top-k:

- Stage 1: log A1 = alpha log S - beta log(1 + KL) falls quickly with the centre offset. Each ground
  truth evaluates a window of cells about its centre on every level; a prior outside the window is at
  least as far as the nearest column or row outside it, so its log A1 is at most
  alpha * max(log S of the class on the level) - beta * log(1 + KL at that distance). A ground truth
  whose k1-th best beats that bound is done. The few that are not (low S here, high S elsewhere,
  elongated or large boxes) get, per level, the window outside which that bound falls below the k1-th
  best found so far; what still fails (only rounding can) is evaluated on all priors.
- Stage 2: a prior whose shrunk box misses the ground truth scores (1 - alpha_m) S, so its best can be
  anywhere. The candidates are the priors whose shrunk box may overlap it (a rectangle of cells per
  level) plus the class's best priors by S over the whole image; when at least k2 of the latter lie
  outside the rectangle, no other prior can beat them.

Everything stays on the input's device, and memory is bounded by evaluating at most about
``_PAIRS_PER_CHUNK`` pairs at a time.
"""

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from kldet.assign.sparse import (
    StackedLevels,
    best_per_point,
    concat_picks,
    dense_topk,
    grid_levels,
    line_span,
    line_window,
    offsets_within_kl,
    outside_kl,
    rectangle_pairs,
    row_chunks,
    segmented_topk,
    stack_levels,
)
from kldet.boxes import box_centers_and_sizes, box_iou_aligned, gaussian_kl, shrink_boxes

# Bounds the temporaries: about this many prior-ground-truth pairs are evaluated at a time.
_PAIRS_PER_CHUNK = 1 << 19
# Stage-1 first windows: this many cells beyond the two rows (columns) that bracket a box centre.
_WINDOW_RADIUS = 1
# Stage-2 best-by-score priors per class, beyond k2, that are checked against a ground truth's rectangle.
_EXTRA_CLASS_CANDIDATES = 32
# A window is certified only when its k-th best beats the bound by this relative margin, which absorbs
# the last-bit differences of the vectorised log1p.
_BOUND_MARGIN = 1e-4


def log_stage1_metric(log_scores: Tensor, kl: Tensor, alpha: float, beta: float) -> Tensor:
    """log A1 = alpha * log S + beta * log K with K = 1 / (1 + KL), element-wise.

    Ranking by log A1 is ranking by A1 = S^alpha * K^beta, without the underflow of K^7 to 0 far from
    a box (which would make thousands of priors tie).
    """
    return alpha * log_scores - beta * torch.log1p(kl)


def stage2_metric(scores: Tensor, iou: Tensor, alpha_m: float) -> Tensor:
    """A2 = (1 - alpha_m) * S + alpha_m * U, element-wise."""
    return (1 - alpha_m) * scores + alpha_m * iou


class _Problem(NamedTuple):
    """Everything the two stages evaluate, computed once per call."""

    log_scores: Tensor  # (N, C)
    scores: Tensor  # (N, C)
    prior_geometry: tuple[Tensor, Tensor, Tensor, Tensor]  # cx, cy, w, h, each (N,)
    shrunk_priors: Tensor  # (N, 4)
    gt_geometry: tuple[Tensor, Tensor, Tensor, Tensor]  # cx, cy, w, h, each (G,)
    gt_boxes: Tensor  # (G, 4)
    gt_labels: Tensor  # (G,) long
    alpha: float
    beta: float
    alpha_m: float

    def stage1(self, gts: Tensor, priors: Tensor) -> Tensor:
        """log A1 of broadcastable index tensors of ground truths and priors."""
        kl = gaussian_kl(*(t[priors] for t in self.prior_geometry), *(t[gts] for t in self.gt_geometry))
        return log_stage1_metric(self.log_scores[priors, self.gt_labels[gts]], kl, self.alpha, self.beta)

    def stage2(self, gts: Tensor, priors: Tensor) -> Tensor:
        """A2 of broadcastable index tensors of ground truths and priors."""
        iou = box_iou_aligned(self.gt_boxes[gts], self.shrunk_priors[priors])
        return stage2_metric(self.scores[priors, self.gt_labels[gts]], iou, self.alpha_m)


def alitsm_assign(
    cls_logits: Tensor,
    priors: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    *,
    topk: tuple[int, int] = (3, 1),
    alpha: float = 1.0,
    beta: float = 7.0,
    alpha_m: float = 0.75,
    ratio: float = 0.9,
) -> Tensor:
    """Two-stage Ali-TSM assignment of priors to ground truths.

    Stage 1: every ground truth g takes its top-k1 priors by A1 = S^alpha * K^beta, where S is the
    sigmoid of the prior's logit for g's class and K = 1 / (1 + KL(prior || g)). A prior picked by
    several ground truths goes to the highest A1.
    Stage 2: every g takes its top-k2 priors over all priors by A2 = (1 - alpha_m) S + alpha_m U, where U
    is the IoU of g with the prior shrunk about its centre by ``ratio``. A prior already positive keeps
    its stage-1 ground truth (that pick of g is dropped); among the rest the highest A2 wins.
    Ties: within a ground truth's top-k the lower prior index wins; between ground truths with equal
    metric on one prior the lower ground-truth index wins. A1 is compared as log A1 (same order).

    Args:
        cls_logits: (N, C) classification logits (used detached).
        priors: (N, 4) xyxy, e.g. from :func:`kldet.assign.receptive_field_priors`; not modified.
            Priors on a row-major grid per level are fast; any other set is handled exhaustively.
        gt_boxes: (G, 4) xyxy.
        gt_labels: (G,) long in 0..C-1.
        topk: (k1, k2).
        alpha, beta: exponents of S and K in A1 (>= 0).
        alpha_m: weight of U in A2.
        ratio: prior shrink factor for U.

    Returns:
        (N,) long: index of the assigned ground truth, -1 for background.
    """
    num_priors, num_gts = len(priors), len(gt_boxes)
    if (
        cls_logits.dim() != 2
        or cls_logits.shape[0] != num_priors
        or priors.shape[-1] != 4
        or gt_boxes.shape[-1] != 4
    ):
        raise ValueError(
            f"alitsm_assign: cls_logits {tuple(cls_logits.shape)}, priors {tuple(priors.shape)} and "
            f"gt_boxes {tuple(gt_boxes.shape)} must be (N, C), (N, 4) and (G, 4)"
        )
    if gt_labels.shape != (num_gts,):
        raise ValueError(f"alitsm_assign: gt_labels {tuple(gt_labels.shape)} must be (G,) = ({num_gts},)")
    if num_gts and (int(gt_labels.min()) < 0 or int(gt_labels.max()) >= cls_logits.shape[1]):
        raise ValueError(
            f"alitsm_assign: gt_labels must be in 0..{cls_logits.shape[1] - 1} (C = {cls_logits.shape[1]})"
        )
    if alpha < 0 or beta < 0 or min(topk) < 0:
        raise ValueError(f"alitsm_assign: alpha={alpha}, beta={beta} and topk={topk} must be >= 0")
    assigned = torch.full((num_priors,), -1, dtype=torch.long, device=priors.device)
    if num_gts == 0 or num_priors == 0:
        return assigned
    logits = cls_logits.detach().float()
    priors, gt_boxes = priors.detach().float(), gt_boxes.detach().float()
    problem = _Problem(
        log_scores=F.logsigmoid(logits),
        scores=torch.sigmoid(logits),
        prior_geometry=box_centers_and_sizes(priors),
        shrunk_priors=shrink_boxes(priors, ratio),
        gt_geometry=box_centers_and_sizes(gt_boxes),
        gt_boxes=gt_boxes,
        gt_labels=gt_labels.long(),
        alpha=alpha,
        beta=beta,
        alpha_m=alpha_m,
    )
    cx, cy, w, h = problem.prior_geometry
    levels = grid_levels(cx, cy, torch.stack((w, h), dim=1))
    grid = None
    if levels is not None:
        starts = torch.tensor([lv.start for lv in levels], device=priors.device)
        grid = stack_levels(levels, w[starts], h[starts])
    k1, k2 = (min(k, num_priors) for k in topk)
    if k1 > 0:
        gts, picked, values = _stage1_topk(problem, grid, k1)
        assigned = best_per_point(assigned, gts, picked, values, num_gts)
    if k2 > 0:
        gts, picked, values = _stage2_topk(problem, grid, k2)
        free = assigned[picked] < 0
        assigned = best_per_point(assigned, gts[free], picked[free], values[free], num_gts)
    return assigned


def _exhaustive_topk(metric, gts: Tensor, num_priors: int, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k priors of the ground truths ``gts`` (R,) by evaluating ``metric`` on all priors, in chunks.

    Returns (ground truths, priors, values) of the picks.
    """
    all_priors = torch.arange(num_priors, device=gts.device)[None]
    chunk = max(1, _PAIRS_PER_CHUNK // num_priors)
    picks = [(gts[:0], gts[:0], torch.zeros(0, device=gts.device))]
    for start in range(0, len(gts), chunk):
        rows = gts[start : start + chunk]
        r, p, v = dense_topk(metric(rows[:, None], all_priors), all_priors, k)
        picks.append((rows[r], p, v))
    return concat_picks(picks)


class _Windows(NamedTuple):
    """Stage-1 windows of R ground truths: per level a rectangle of cells, and a bound for the rest."""

    first_row: Tensor  # (R, L)
    num_rows: Tensor  # (R, L)
    first_column: Tensor  # (R, L)
    num_columns: Tensor  # (R, L)
    bound: Tensor  # (R,) upper bound on log A1 of every prior outside the rectangles


def _stage1_windows(
    problem: _Problem,
    grid: StackedLevels,
    best_log_scores: Tensor,
    gts: Tensor,
    half_w: Tensor,
    half_h: Tensor,
) -> _Windows:
    """Windows of ``gts`` (R,) holding the cells within (half_w, half_h) (R, L) of the box centre on
    each level and at least ``_WINDOW_RADIUS`` cells around it; ``best_log_scores`` (L, C) is the
    highest log S of each class on each level."""
    gt_geometry = tuple(t[gts] for t in problem.gt_geometry)
    first_row, num_rows = line_window(gt_geometry[1], half_h, grid.ys, grid.heights, _WINDOW_RADIUS)
    first_column, num_columns = line_window(gt_geometry[0], half_w, grid.xs, grid.widths, _WINDOW_RADIUS)
    nearest = outside_kl(grid, gt_geometry, first_row, num_rows, first_column, num_columns)
    labels = problem.gt_labels[gts]
    level_bound = log_stage1_metric(best_log_scores.T[labels], nearest, problem.alpha, problem.beta)
    return _Windows(first_row, num_rows, first_column, num_columns, level_bound.amax(dim=1))


def _offsets_to_beat(
    problem: _Problem, grid: StackedLevels, best_log_scores: Tensor, gts: Tensor, target: Tensor
) -> tuple[Tensor, Tensor]:
    """Half-sizes (R, L) in x and y of windows outside which every prior scores below ``target`` (R,).

    Outside such a window a prior's log A1 is at most alpha * best log S - beta * log(1 + KL), and its KL
    exceeds the KL that makes this ``target`` (:func:`kldet.assign.sparse.offsets_within_kl`).
    """
    level_best = problem.alpha * best_log_scores.T[problem.gt_labels[gts]]
    needed_kl = torch.expm1((level_best - target[:, None]) / problem.beta)
    return offsets_within_kl(grid, tuple(t[gts] for t in problem.gt_geometry), needed_kl)


def _stage1_topk(problem: _Problem, grid: StackedLevels | None, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k priors by log A1 of every ground truth: (ground truths, priors, values) of the picks.

    A small window about each centre settles most ground truths. The others get a window sized so that
    no prior outside it can beat the k-th best found so far, then, if that still fails (only by
    rounding), all priors.
    """
    num_priors, device = len(problem.log_scores), problem.gt_labels.device
    pending = torch.arange(len(problem.gt_boxes), device=device)
    picks = []
    if grid is not None:
        best_log_scores = torch.stack(
            [problem.log_scores[lv.start : lv.start + lv.height * lv.width].amax(dim=0) for lv in grid.levels]
        )
        no_extent = problem.gt_geometry[2].new_zeros(len(pending), len(grid.levels))
        windows = _stage1_windows(problem, grid, best_log_scores, pending, no_extent, no_extent)
        window_picks, certified, kth = _window_topk(problem, grid, pending, windows, k)
        picks.append(window_picks)
        pending, kth = pending[~certified], kth[~certified]
        if problem.beta > 0 and len(pending):
            half_w, half_h = _offsets_to_beat(problem, grid, best_log_scores, pending, kth)
            windows = _stage1_windows(problem, grid, best_log_scores, pending, half_w, half_h)
            window_picks, certified, _ = _window_topk(problem, grid, pending, windows, k)
            picks.append(window_picks)
            pending = pending[~certified]
    picks.append(_exhaustive_topk(problem.stage1, pending, num_priors, k))
    return concat_picks(picks)


def _window_topk(
    problem: _Problem, grid: StackedLevels, gts: Tensor, windows: _Windows, k: int
) -> tuple[tuple[Tensor, Tensor, Tensor], Tensor, Tensor]:
    """Top-k of ``gts`` (R,) within their windows: the picks of the ground truths whose k-th best beats
    the bound, which of them do (R,) bool, and the k-th best (R,) (-inf with fewer than k candidates)."""
    threshold = torch.where(
        windows.bound.isinf(), windows.bound, windows.bound + _BOUND_MARGIN * (1 + windows.bound.abs())
    )
    certified = torch.zeros_like(gts, dtype=torch.bool)
    kth = torch.full_like(threshold, -math.inf)
    picks = [(gts[:0], gts[:0], threshold[:0])]
    for part in row_chunks((windows.num_rows * windows.num_columns).sum(dim=1), _PAIRS_PER_CHUNK):
        local, priors = rectangle_pairs(
            grid.levels,
            windows.first_row[part],
            windows.num_rows[part],
            windows.first_column[part],
            windows.num_columns[part],
        )
        values = problem.stage1(gts[part][local], priors)
        picked = segmented_topk(values, local, priors, part.stop - part.start, k)
        local, priors, values = local[picked], priors[picked], values[picked]
        count = torch.bincount(local, minlength=part.stop - part.start)
        part_kth = values.new_full(count.shape, math.inf).scatter_reduce(0, local, values, "amin")
        kth[part] = torch.where(count == k, part_kth, -math.inf)
        done = (count == k) & (part_kth > threshold[part])
        certified[part] = done
        keep = done[local]
        picks.append((gts[part][local[keep]], priors[keep], values[keep]))
    return concat_picks(picks), certified, kth


def _stage2_topk(problem: _Problem, grid: StackedLevels | None, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k priors by A2 of every ground truth: (ground truths, priors, values) of the picks."""
    num_priors, num_gts = len(problem.scores), len(problem.gt_boxes)
    device = problem.gt_labels.device
    all_gts = torch.arange(num_gts, device=device)
    if grid is None:
        return _exhaustive_topk(problem.stage2, all_gts, num_priors, k)
    levels = grid.levels

    # Per level, the rows and columns of priors whose shrunk box may overlap each ground truth: (G, L).
    row_starts, row_ends, column_starts, column_ends = [], [], [], []
    for level in levels:
        shrunk = problem.shrunk_priors[level.start : level.start + level.height * level.width]
        shrunk = shrunk.view(level.height, level.width, 4)
        row_starts.append(shrunk[..., 1].amin(1))
        row_ends.append(shrunk[..., 3].amax(1))
        column_starts.append(shrunk[..., 0].amin(0))
        column_ends.append(shrunk[..., 2].amax(0))
    row_starts, row_ends, column_starts, column_ends = (
        torch.nn.utils.rnn.pad_sequence(t, batch_first=True, padding_value=math.inf)
        for t in (row_starts, row_ends, column_starts, column_ends)
    )
    x1, y1, x2, y2 = (t.expand(len(levels), -1) for t in problem.gt_boxes.T[:, None])
    first_row, num_rows = (t.T for t in line_span(row_starts, row_ends, y1, y2))
    first_column, num_columns = (t.T for t in line_span(column_starts, column_ends, x1, x2))

    # The class's best priors by the score of a prior that misses the box (U = 0). Those outside the
    # rectangles are candidates too; with k of them no prior outside the candidates can win.
    no_overlap = stage2_metric(problem.scores, problem.scores.new_zeros(()), problem.alpha_m)
    prefix = min(num_priors, k + _EXTRA_CLASS_CANDIDATES)
    all_priors = torch.arange(num_priors, device=device)[None]
    class_best = dense_topk(no_overlap.T, all_priors, prefix)[1].view(-1, prefix)[problem.gt_labels]
    level_of_prior = torch.repeat_interleave(
        torch.arange(len(levels), device=device), grid.heights * grid.widths
    )
    level = level_of_prior[class_best]
    local = class_best - grid.starts[level]
    row, column = local // grid.widths[level], local % grid.widths[level]
    gt_rows = all_gts[:, None]
    row_offset = row - first_row[gt_rows, level]
    column_offset = column - first_column[gt_rows, level]
    outside = (
        (row_offset < 0)
        | (row_offset >= num_rows[gt_rows, level])
        | (column_offset < 0)
        | (column_offset >= num_columns[gt_rows, level])
    )
    certified = (outside.sum(dim=1) >= k) | (prefix == num_priors)

    picks = [_exhaustive_topk(problem.stage2, all_gts[~certified], num_priors, k)]
    for part in row_chunks((num_rows * num_columns).sum(dim=1), _PAIRS_PER_CHUNK):
        rectangle_gts, rectangle_priors = rectangle_pairs(
            levels, first_row[part], num_rows[part], first_column[part], num_columns[part]
        )
        outside_gts, outside_column = outside[part].nonzero(as_tuple=True)
        local_gts = torch.cat((rectangle_gts, outside_gts))
        gts = local_gts + part.start
        priors = torch.cat((rectangle_priors, class_best[part][outside_gts, outside_column]))
        values = problem.stage2(gts, priors)
        picked = segmented_topk(values, local_gts, priors, part.stop - part.start, k) & certified[gts]
        picks.append((gts[picked], priors[picked], values[picked]))
    return concat_picks(picks)
