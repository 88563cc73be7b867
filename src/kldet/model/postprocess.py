"""Raw per-level head maps -> detections in original image pixels (KLDET_SPEC.md section 1)."""

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms, clip_boxes_to_image

from kldet.assign import points_and_strides
from kldet.errors import KLDetConfigError, KLDetDataError
from kldet.model.head import decode_boxes

# How each level's candidates are chosen before NMS; see postprocess_detections.
CANDIDATE_RULES = ("points", "pairs")


def check_candidates(candidates: str) -> None:
    """Raises :class:`KLDetConfigError` unless ``candidates`` is one of :data:`CANDIDATE_RULES`."""
    if candidates not in CANDIDATE_RULES:
        raise KLDetConfigError(f"candidates={candidates!r}: choose one of {', '.join(CANDIDATE_RULES)}")


@dataclasses.dataclass(frozen=True)
class PostProcess:
    """The post-processing settings of a detector (KLDET_SPEC.md section 1), applied by calling it with
    the arguments of :func:`postprocess_detections` before its keywords.

    ``candidates`` "points" is the authors' rule (threshold on the raw class probability), "pairs"
    torchvision's (threshold on the score); :func:`postprocess_detections` says what each field does.
    ``dataclasses.replace(settings, score_thresh=0.3)`` changes one of them.
    """

    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    pre_nms_topk: int = 3000
    max_detections: int = 3000
    candidates: str = "points"

    def __post_init__(self) -> None:
        check_candidates(self.candidates)

    def __call__(self, *args, **kwargs) -> list[dict[str, Tensor]]:
        return postprocess_detections(*args, **kwargs, **dataclasses.asdict(self))


#: The post-processing settings, the fields of :class:`PostProcess`.
POSTPROCESS_KEYS = tuple(field.name for field in dataclasses.fields(PostProcess))


def postprocess_detections(
    cls_logits: Sequence[Tensor],
    box_regression: Sequence[Tensor],
    centerness: Sequence[Tensor],
    strides: Sequence[int],
    image_shape: tuple[int, int],
    image_sizes: Sequence[tuple[int, int]] | None = None,
    scale_factors: Sequence[tuple[float, float]] | None = None,
    *,
    score_thresh: float = PostProcess.score_thresh,
    nms_thresh: float = PostProcess.nms_thresh,
    pre_nms_topk: int = PostProcess.pre_nms_topk,
    max_detections: int = PostProcess.max_detections,
    candidates: str = PostProcess.candidates,
) -> list[dict[str, Tensor]]:
    """Decode, filter, NMS and rescale the raw outputs of :class:`kldet.model.KLDet`.

    A (point, class) pair scores ``sigmoid(cls) * sigmoid(centerness)``. Per level, ``candidates`` picks
    the pairs that go to NMS:

    - ``"points"`` (the authors' mmdet 2.13 FCOS, KLDET_SPEC.md section 1): a level with more than
      ``pre_nms_topk`` points keeps its top ``pre_nms_topk`` *points* by their best pair score; every
      pair of those points whose raw class probability ``sigmoid(cls)`` exceeds ``score_thresh`` is a
      candidate (so kept scores can be below ``score_thresh``, e.g. 0.3 x 0.1);
    - ``"pairs"`` (torchvision, mmdet >= 2.18): the top ``pre_nms_topk`` *pairs* by score whose score
      exceeds ``score_thresh`` (one bound on the candidates whatever the number of classes).

    Candidate boxes are decoded, clipped to the image size and divided by the scale factor; boxes emptied
    by the clipping (points in the padding) are dropped; class-wise NMS at ``nms_thresh`` then keeps at
    most ``max_detections`` per image.

    Args:
        cls_logits: per level (B, C, h_l, w_l).
        box_regression: per level (B, 4, h_l, w_l), l, t, r, b in stride units.
        centerness: per level (B, 1, h_l, w_l) logits.
        strides: stride of each level.
        image_shape: (H, W) of the padded batch the maps were computed on.
        image_sizes: per image (h, w) of the resized image before padding; default ``image_shape``.
        scale_factors: per image (sx, sy) = resized / original size; default (1, 1).
        candidates: "points" or "pairs", as above.

    Returns:
        per image ``{"boxes": (K, 4) xyxy in original pixels, "scores": (K,), "labels": (K,) long}``,
        sorted by decreasing score.
    """
    check_candidates(candidates)
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

    select = _point_candidates if candidates == "points" else _pair_candidates
    # Per image: lists over levels of candidate scores, point indices and labels.
    per_image: list[list[tuple[Tensor, Tensor, Tensor]]] = [[] for _ in range(batch_size)]
    first_point = 0
    for level_logits, level_centerness in zip(cls_logits, centerness, strict=True):
        # (B, h*w, C), point-major like the flattened points.
        probabilities = level_logits.float().sigmoid().flatten(2).transpose(1, 2)
        scores = probabilities * level_centerness.float().sigmoid().flatten(2).transpose(1, 2)
        for image in range(batch_size):
            kept_scores, point_index, labels = select(
                probabilities[image], scores[image], score_thresh, pre_nms_topk
            )
            per_image[image].append((kept_scores, first_point + point_index, labels))
        first_point += level_logits.shape[-2] * level_logits.shape[-1]

    distances = torch.cat([level.float().flatten(2) for level in box_regression], dim=2).transpose(1, 2)
    detections = []
    for image, (image_candidates, size, (sx, sy)) in enumerate(
        zip(per_image, image_sizes, scale_factors, strict=True)
    ):
        scores, point_index, labels = (torch.cat(parts) for parts in zip(*image_candidates, strict=True))
        boxes = decode_boxes(points[point_index], point_strides[point_index], distances[image, point_index])
        boxes = clip_boxes_to_image(boxes, (int(size[0]), int(size[1])))
        # Points in the padding decode to boxes outside the image, empty once clipped.
        nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        scale = torch.tensor([sx, sy, sx, sy], dtype=boxes.dtype, device=device)
        boxes, scores, labels = boxes[nonempty] / scale, scores[nonempty], labels[nonempty]
        keep = batched_nms(boxes, scores, labels, nms_thresh)[:max_detections]
        detections.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
    return detections


def _point_candidates(
    probabilities: Tensor, scores: Tensor, score_thresh: float, pre_nms_topk: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The ``"points"`` rule on one level of one image.

    Args:
        probabilities: (P, C) sigmoid(cls); scores: (P, C) sigmoid(cls) * sigmoid(centerness).

    Returns:
        candidate scores (K,), their point indices (K,) into the P points and labels (K,).
    """
    if scores.shape[0] > pre_nms_topk:
        points = scores.amax(dim=1).topk(pre_nms_topk).indices
        probabilities, scores = probabilities[points], scores[points]
    else:
        points = torch.arange(scores.shape[0], device=scores.device)
    point, label = (probabilities > score_thresh).nonzero(as_tuple=True)
    return scores[point, label], points[point], label


def _pair_candidates(
    probabilities: Tensor, scores: Tensor, score_thresh: float, pre_nms_topk: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The ``"pairs"`` rule on one level of one image; arguments and result as :func:`_point_candidates`."""
    num_classes = scores.shape[1]
    top_scores, top_index = scores.flatten().topk(min(pre_nms_topk, scores.numel()))
    keep = top_scores > score_thresh
    top_index = top_index[keep]
    return top_scores[keep], top_index // num_classes, top_index % num_classes
