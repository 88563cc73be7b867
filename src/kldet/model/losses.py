"""FCOS losses over all points of a batch (KLDET_SPEC.md section 1)."""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import distance_box_iou_loss, sigmoid_focal_loss

from kldet.model.head import decode_boxes


def mean_across_processes(value: Tensor) -> Tensor:
    """The mean of a scalar over all DDP processes (the value itself when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
        value = value / dist.get_world_size()
    return value


def fcos_losses(
    cls_logits: Tensor,
    box_regression: Tensor,
    centerness: Tensor,
    labels: Tensor,
    matched_boxes: Tensor,
    centerness_targets: Tensor,
    points: Tensor,
    point_strides: Tensor,
) -> dict[str, Tensor]:
    """Focal, DIoU and centerness losses.

    Args:
        cls_logits: (B, N, C) classification logits.
        box_regression: (B, N, 4) predicted l, t, r, b in stride units.
        centerness: (B, N) centerness logits.
        labels: (B, N) long, class of each point's target, C for background.
        matched_boxes: (B, N, 4) xyxy ground truth of each point (read only at positives).
        centerness_targets: (B, N) centerness target (read only at positives).
        points: (N, 2) xy of every point; point_strides: (N,) its level stride.

    Returns:
        ``loss_cls``: sigmoid focal loss (alpha 0.25, gamma 2) summed over all points and classes / P;
        ``loss_box``: DIoU loss of decoded positive boxes weighted by their centerness target / sum of those
        targets; ``loss_ctr``: BCE-with-logits of positive centerness / P. P = number of positives, both
        normalisers averaged over DDP processes so every process scales its gradients alike. The gt box
        is used directly as the box target, so points outside their (tiny) box are fine.
    """
    num_classes = cls_logits.shape[-1]
    positive = labels < num_classes
    num_positives = mean_across_processes(positive.sum().to(torch.float32)).clamp(min=1.0)
    # Losses in float32 also under autocast.
    cls_targets = F.one_hot(labels, num_classes + 1)[..., :num_classes].to(torch.float32)
    loss_cls = sigmoid_focal_loss(cls_logits.float(), cls_targets, alpha=0.25, gamma=2.0, reduction="sum")

    image_index, point_index = positive.nonzero(as_tuple=True)
    pred_boxes = decode_boxes(
        points[point_index], point_strides[point_index], box_regression[image_index, point_index].float()
    )
    weights = centerness_targets[image_index, point_index]
    box_losses = distance_box_iou_loss(pred_boxes, matched_boxes[image_index, point_index], reduction="none")
    weight_sum = mean_across_processes(weights.sum()).clamp(min=1e-6)
    loss_ctr = F.binary_cross_entropy_with_logits(
        centerness[image_index, point_index].float(), weights, reduction="sum"
    )
    return {
        "loss_cls": loss_cls / num_positives,
        "loss_box": (box_losses * weights).sum() / weight_sum,
        "loss_ctr": loss_ctr / num_positives,
    }
