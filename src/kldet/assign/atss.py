"""An ATSS-style IoU assigner on points (Zhang et al., "Bridging the Gap Between Anchor-based and
Anchor-free Detection", CVPR 2020), the IoU top-k reference of the assignment statistics.

Every point stands for a square anchor of side ``anchor_scale * stride`` centred on it. For each ground
truth, the ``topk`` points nearest its centre on every level are candidates; the IoU threshold is the
mean plus the standard deviation of the candidates' IoUs, and a candidate is positive when its IoU
reaches the threshold and the point lies strictly inside the box. A point claimed by several ground
truths goes to the one it overlaps most.
"""

import torch
from torch import Tensor

from kldet.assign.sparse import best_per_point, dense_topk
from kldet.boxes import box_iou_aligned

# Bounds the temporaries: about this many point-ground-truth distances are held at a time.
_PAIRS_PER_CHUNK = 1 << 22
# Slack on the IoU threshold, so that candidates with equal IoUs (std 0) all pass although the float32
# mean of equal values may round above them.
_THRESHOLD_SLACK = 1e-6


def atss_assign(
    points: Tensor,
    point_strides: Tensor,
    gt_boxes: Tensor,
    *,
    topk: int = 9,
    anchor_scale: float = 8.0,
) -> Tensor:
    """ATSS assignment of points to ground truths.

    The threshold uses the sample standard deviation (``Tensor.std``, as the ATSS reference code), 0 for
    a single candidate.

    Args:
        points: (N, 2) x, y, level by level (a level is a run of consecutive points of equal stride).
        point_strides: (N,) stride of each point's level.
        gt_boxes: (G, 4) xyxy.
        topk: candidates per ground truth and level, the nearest by centre distance (ties: the lower
            point index); a level with fewer points gives all of them.
        anchor_scale: anchor side in strides.

    Returns:
        (N,) long: index of the assigned ground truth, -1 for background. Among the ground truths that
        take a point, the highest IoU wins (ties: the lower index).
    """
    if points.dim() != 2 or points.shape[1] != 2 or point_strides.shape != (len(points),):
        raise ValueError(
            f"atss_assign: points {tuple(points.shape)} and point_strides {tuple(point_strides.shape)} "
            "must be (N, 2) and (N,)"
        )
    if gt_boxes.dim() != 2 or gt_boxes.shape[1] != 4:
        raise ValueError(f"atss_assign: gt_boxes {tuple(gt_boxes.shape)} must be (G, 4)")
    if topk < 1 or anchor_scale <= 0:
        raise ValueError(f"atss_assign: topk={topk} must be >= 1 and anchor_scale={anchor_scale} > 0")
    num_points, num_gts = len(points), len(gt_boxes)
    assigned = torch.full((num_points,), -1, dtype=torch.long, device=points.device)
    if num_gts == 0 or num_points == 0:
        return assigned
    points, point_strides, gt_boxes = points.float(), point_strides.float(), gt_boxes.float()

    candidates = _nearest_points(points, point_strides, gt_boxes, topk)  # (G, M)
    x, y = points[candidates].unbind(-1)
    half_side = point_strides[candidates] * (anchor_scale / 2)
    anchors = torch.stack((x - half_side, y - half_side, x + half_side, y + half_side), dim=-1)
    boxes = gt_boxes[:, None, :]
    iou = box_iou_aligned(anchors, boxes)
    spread = iou.std(dim=1, keepdim=True) if iou.shape[1] > 1 else torch.zeros_like(iou)
    threshold = iou.mean(dim=1, keepdim=True) + spread
    inside = torch.stack(
        (x - boxes[..., 0], y - boxes[..., 1], boxes[..., 2] - x, boxes[..., 3] - y), dim=-1
    ).amin(dim=-1)
    gts, columns = ((iou >= threshold - _THRESHOLD_SLACK) & (inside > 0)).nonzero(as_tuple=True)
    return best_per_point(assigned, gts, candidates[gts, columns], iou[gts, columns], num_gts)


def _nearest_points(points: Tensor, point_strides: Tensor, gt_boxes: Tensor, k: int) -> Tensor:
    """(G, M) indices of the ``k`` points nearest each box centre on every level, M = sum of min(k, level size)."""
    centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    _, level_sizes = torch.unique_consecutive(point_strides, return_counts=True)
    level_starts = (level_sizes.cumsum(0) - level_sizes).tolist()
    level_sizes = level_sizes.tolist()
    chunk = max(1, _PAIRS_PER_CHUNK // max(level_sizes))
    rows = []
    for first in range(0, len(centres), chunk):
        row = []
        for start, size in zip(level_starts, level_sizes, strict=True):
            # Not cdist's matrix-product shortcut, which rounds: equal distances must stay equal so that
            # the tie rule (the lower point index) decides among equidistant grid points.
            distance = torch.cdist(
                centres[first : first + chunk],
                points[start : start + size],
                compute_mode="donot_use_mm_for_euclid_dist",
            )
            level_indices = torch.arange(start, start + size, device=points.device)[None]
            picked = dense_topk(-distance, level_indices, k)[1]
            row.append(picked.view(len(distance), -1))
        rows.append(torch.cat(row, dim=1))
    return torch.cat(rows)
