"""Per-point training targets from an assignment, shared by the Ali-TSM and FCOS assigners."""

import torch
from torch import Tensor

CENTERNESS_MIN_SIDE = 0.01


def build_targets(
    points: Tensor,
    point_strides: Tensor,
    assigned: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    num_classes: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Class, box and centerness targets of every point.

    Args:
        points: (N, 2) x, y.
        point_strides: (N,) stride of each point's level.
        assigned: (N,) long, index into the ground truths or -1 for background.
        gt_boxes: (G, 4) xyxy.
        gt_labels: (G,) long in 0..num_classes-1.
        num_classes: C; background points get label C.

    Returns:
        labels: (N,) long, the assigned ground truth's class or C.
        box_targets: (N, 4) distances (l, t, r, b) from the point to the ground truth's sides in units of
            the point's stride, 0 for background. They are negative when the point lies outside its
            box, which Ali-TSM allows (a KLD-chosen point can miss a tiny box).
        centerness: (N,) sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) with the minima clamped to
            >= 0.01 (so an outside point gets a small positive target), 0 for background.
    """
    positive = assigned >= 0
    index = assigned.clamp(min=0)
    labels = torch.full_like(assigned, num_classes)
    box_targets = points.new_zeros((len(points), 4))
    centerness = points.new_zeros(len(points))
    if len(gt_boxes) == 0:
        return labels, box_targets, centerness
    labels = torch.where(positive, gt_labels.to(assigned.dtype)[index], labels)
    boxes = gt_boxes[index]
    x, y = points[:, 0], points[:, 1]
    ltrb = torch.stack((x - boxes[:, 0], y - boxes[:, 1], boxes[:, 2] - x, boxes[:, 3] - y), dim=-1)
    ltrb = ltrb / point_strides[:, None]
    box_targets = torch.where(positive[:, None], ltrb, box_targets)
    left_right, top_bottom = ltrb[:, 0::2], ltrb[:, 1::2]
    # l + r is the box width (> 0), so the maximum is positive; the clamp guards zero-width boxes.
    ratio_x = left_right.min(-1).values.clamp(min=CENTERNESS_MIN_SIDE) / left_right.max(-1).values.clamp(
        min=CENTERNESS_MIN_SIDE
    )
    ratio_y = top_bottom.min(-1).values.clamp(min=CENTERNESS_MIN_SIDE) / top_bottom.max(-1).values.clamp(
        min=CENTERNESS_MIN_SIDE
    )
    centerness = torch.where(positive, torch.sqrt(ratio_x * ratio_y), centerness)
    return labels, box_targets, centerness
