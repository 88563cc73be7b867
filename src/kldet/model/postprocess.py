"""Raw per-level head maps -> detections in original image pixels (KLDET_SPEC.md section 1)."""

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms, clip_boxes_to_image

from kldet.assign import points_and_strides
from kldet.errors import KLDetDataError
from kldet.model.head import decode_boxes


def postprocess_detections(
    cls_logits: Sequence[Tensor],
    box_regression: Sequence[Tensor],
    centerness: Sequence[Tensor],
    strides: Sequence[int],
    image_shape: tuple[int, int],
    image_sizes: Sequence[tuple[int, int]] | None = None,
    scale_factors: Sequence[tuple[float, float]] | None = None,
    *,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    pre_nms_topk: int = 3000,
    max_detections: int = 3000,
) -> list[dict[str, Tensor]]:
    """Decode, filter, NMS and rescale the raw outputs of :class:`kldet.model.KLDet`.

    Per level, the top ``pre_nms_topk`` (point, class) pairs by ``sigmoid(cls) * sigmoid(centerness)``
    with a score above ``score_thresh`` are candidates (pairs rather than points, as torchvision and
    mmdet >= 2.18 do: one bound on the candidates whatever the number of classes). Boxes are decoded,
    clipped to the image size, emptied ones dropped, class-wise NMS at ``nms_thresh`` keeps at most
    ``max_detections`` per image, and boxes are divided by the scale factor.

    Args:
        cls_logits: per level (B, C, h_l, w_l).
        box_regression: per level (B, 4, h_l, w_l), l, t, r, b in stride units.
        centerness: per level (B, 1, h_l, w_l) logits.
        strides: stride of each level.
        image_shape: (H, W) of the padded batch the maps were computed on.
        image_sizes: per image (h, w) of the resized image before padding; default ``image_shape``.
        scale_factors: per image (sx, sy) = resized / original size; default (1, 1).

    Returns:
        per image ``{"boxes": (K, 4) xyxy in original pixels, "scores": (K,), "labels": (K,) long}``,
        sorted by decreasing score.
    """
    batch_size = cls_logits[0].shape[0]
    device = cls_logits[0].device
    image_sizes = [tuple(image_shape)] * batch_size if image_sizes is None else list(image_sizes)
    scale_factors = [(1.0, 1.0)] * batch_size if scale_factors is None else list(scale_factors)
    if len(image_sizes) != batch_size or len(scale_factors) != batch_size:
        raise KLDetDataError(
            f"postprocess: {batch_size} images but {len(image_sizes)} image_sizes and "
            f"{len(scale_factors)} scale_factors"
        )
    points, point_strides = points_and_strides(tuple(image_shape), tuple(strides), device)
    num_points = sum(level.shape[-2] * level.shape[-1] for level in cls_logits)
    if num_points != points.shape[0]:
        raise KLDetDataError(
            f"postprocess: the maps have {num_points} points but a {tuple(image_shape)} image with strides "
            f"{tuple(strides)} has {points.shape[0]}: pass the shape of the padded batch the maps come from"
        )

    # Per image: lists over levels of candidate scores, point indices and labels.
    candidates: list[list[tuple[Tensor, Tensor, Tensor]]] = [[] for _ in range(batch_size)]
    first_point = 0
    for level_logits, level_centerness in zip(cls_logits, centerness, strict=True):
        num_classes = level_logits.shape[1]
        # (B, h*w*C), point-major like the flattened points.
        scores = level_logits.float().sigmoid().flatten(2) * level_centerness.float().sigmoid().flatten(2)
        scores = scores.transpose(1, 2).reshape(batch_size, -1)
        top_scores, top_index = scores.topk(min(pre_nms_topk, scores.shape[1]), dim=1)
        for image, (image_scores, image_index) in enumerate(zip(top_scores, top_index, strict=True)):
            keep = image_scores > score_thresh
            image_index = image_index[keep]
            candidates[image].append(
                (image_scores[keep], first_point + image_index // num_classes, image_index % num_classes)
            )
        first_point += level_logits.shape[-2] * level_logits.shape[-1]

    distances = torch.cat([level.float().flatten(2) for level in box_regression], dim=2).transpose(1, 2)
    detections = []
    for image, (image_candidates, size, (sx, sy)) in enumerate(
        zip(candidates, image_sizes, scale_factors, strict=True)
    ):
        scores, point_index, labels = (torch.cat(parts) for parts in zip(*image_candidates, strict=True))
        boxes = decode_boxes(points[point_index], point_strides[point_index], distances[image, point_index])
        boxes = clip_boxes_to_image(boxes, (int(size[0]), int(size[1])))
        # Points in the padding decode to boxes outside the image, empty once clipped.
        nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores, labels = boxes[nonempty], scores[nonempty], labels[nonempty]
        keep = batched_nms(boxes, scores, labels, nms_thresh)[:max_detections]
        scale = torch.tensor([sx, sy, sx, sy], dtype=boxes.dtype, device=device)
        detections.append({"boxes": boxes[keep] / scale, "scores": scores[keep], "labels": labels[keep]})
    return detections
