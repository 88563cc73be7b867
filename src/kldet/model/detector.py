"""KLDet: ResNet-FPN, task-level attention and an FCOS head, with Ali-TSM or FCOS label assignment."""

import functools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from kldet.assign import (
    FCOS_REGRESS_RANGES,
    alitsm_assign,
    build_targets,
    fcos_assign,
    points_and_strides,
    receptive_field_priors,
)
from kldet.errors import KLDetConfigError, KLDetDataError
from kldet.model.attention import TaskLevelAttention
from kldet.model.backbone import ResNetFPN
from kldet.model.head import FCOSHead
from kldet.model.losses import fcos_losses
from kldet.model.postprocess import check_candidates, postprocess_detections

ASSIGNERS = ("alitsm", "fcos")


@functools.lru_cache(maxsize=16)
def _points_and_priors(
    image_shape: tuple[int, int], strides: tuple[int, ...], prior_fraction: float, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """Points (N, 2), their strides (N,) and receptive-field priors (N, 4) of a padded image shape.

    Cached per shape and device so that a batch (and every batch of the same shape) computes them
    once; callers must not modify the returned tensors.
    """
    points, point_strides = points_and_strides(image_shape, strides, device)
    _, priors = receptive_field_priors(image_shape, strides, prior_fraction, device)
    return points, point_strides, priors


class KLDet(nn.Module):
    """Single-stage tiny-object detector of KLDET_SPEC.md, usable without Lightning.

    Args:
        num_classes: C, object classes (labels 0..C-1).
        backbone, weights, frozen_stages, backbone_norm, style: see :class:`kldet.model.backbone.ResNetFPN`
            (``backbone_norm`` is its ``norm``); ``style`` "caffe" or "pytorch" also fixes the input
            normalisation (:func:`kldet.model.input_normalization`).
        fpn_levels: (2, 3, 4, 5, 6) for KLDet, (3, 4, 5, 6, 7) for standard FCOS.
        attention: apply the shared task-level attention (TlA) to every pyramid level.
        assigner: "alitsm" (receptive-field priors, :func:`kldet.assign.alitsm_assign`) or "fcos".
        head_norm: None or "GN" for the head towers.
        channels: pyramid and head channels; head_convs: convs per head tower.
        prior_fraction: receptive-field prior side as a fraction of the theoretical receptive field.
        topk, alpha, beta, alpha_m, ratio: Ali-TSM settings.
        center_sampling, center_radius, regress_ranges: FCOS-assigner settings; ``regress_ranges`` is one
            (low, high) range of max(l, t, r, b) per level, by default FCOS's five ranges given to the
            five levels in order (also with P2: objects under 64 px then all go to the first level).
        score_thresh, nms_thresh, pre_nms_topk, max_detections, candidates: post-processing, see
            :func:`kldet.model.postprocess.postprocess_detections`; ``candidates`` "points" is the authors'
            rule (threshold on the raw class probability), "pairs" torchvision's (threshold on the score).
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        weights: str | None = None,
        fpn_levels: Sequence[int] = (2, 3, 4, 5, 6),
        attention: bool = True,
        assigner: str = "alitsm",
        frozen_stages: int = 1,
        backbone_norm: str = "frozen_bn",
        style: str = "pytorch",
        head_norm: str | None = None,
        channels: int = 256,
        head_convs: int = 4,
        prior_fraction: float = 0.5,
        topk: Sequence[int] = (3, 1),
        alpha: float = 1.0,
        beta: float = 7.0,
        alpha_m: float = 0.75,
        ratio: float = 0.9,
        center_sampling: bool = True,
        center_radius: float = 1.5,
        regress_ranges: Sequence[Sequence[float]] | None = None,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        pre_nms_topk: int = 3000,
        max_detections: int = 3000,
        candidates: str = "points",
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise KLDetConfigError(f"num_classes={num_classes}: need at least one class")
        if assigner not in ASSIGNERS:
            raise KLDetConfigError(f"assigner={assigner!r}: choose one of {', '.join(ASSIGNERS)}")
        check_candidates(candidates)
        self.num_classes = num_classes
        self.backbone = ResNetFPN(
            backbone, weights, tuple(fpn_levels), frozen_stages, channels, backbone_norm, style
        )
        self.strides = tuple(2**level for level in self.backbone.levels)
        self.attention = TaskLevelAttention(channels) if attention else None
        self.head = FCOSHead(num_classes, len(self.strides), channels, head_convs, head_norm)
        self.assigner = assigner
        self.prior_fraction = prior_fraction
        if assigner == "alitsm":
            self.assign_options = {
                "topk": tuple(topk),
                "alpha": alpha,
                "beta": beta,
                "alpha_m": alpha_m,
                "ratio": ratio,
            }
        else:
            ranges = FCOS_REGRESS_RANGES if regress_ranges is None else regress_ranges
            if len(ranges) != len(self.strides):
                raise KLDetConfigError(
                    f"{len(ranges)} regress_ranges for {len(self.strides)} levels: give one (low, high) per level"
                )
            self.assign_options = {
                "regress_ranges": {
                    s: (float(lo), float(hi)) for s, (lo, hi) in zip(self.strides, ranges, strict=True)
                },
                "center_sampling": center_sampling,
                "radius": center_radius,
            }
        self.postprocess_options = {
            "score_thresh": score_thresh,
            "nms_thresh": nms_thresh,
            "pre_nms_topk": pre_nms_topk,
            "max_detections": max_detections,
            "candidates": candidates,
        }

    def forward(self, images: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Raw maps per level for images (B, 3, H, W): ``cls_logits (B, C, h, w)``, ``box_regression
        (B, 4, h, w)`` (l, t, r, b >= 0 in stride units), ``centerness (B, 1, h, w)`` logits."""
        features = self.backbone(images)
        if self.attention is not None:
            features = [self.attention(feature) for feature in features]
        return self.head(features)

    def loss(self, images: Tensor, targets: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Training losses for images (B, 3, H, W) padded at the bottom/right.

        Args:
            targets: per image ``{"boxes": (G, 4) xyxy in the padded image's pixels, "labels": (G,)}``.

        Returns:
            ``{"loss_cls", "loss_box", "loss_ctr"}`` scalars; the training loss is their sum.
        """
        if len(targets) != images.shape[0]:
            raise KLDetDataError(f"loss: {images.shape[0]} images but {len(targets)} targets")
        cls_maps, box_maps, centerness_maps = self(images)
        cls_logits = torch.cat([level.flatten(2) for level in cls_maps], dim=2).transpose(1, 2)
        box_regression = torch.cat([level.flatten(2) for level in box_maps], dim=2).transpose(1, 2)
        centerness = torch.cat([level.flatten(1) for level in centerness_maps], dim=1)
        points, point_strides, priors = _points_and_priors(
            tuple(images.shape[-2:]), self.strides, self.prior_fraction, images.device
        )
        labels, matched_boxes, centerness_targets = [], [], []
        with torch.no_grad():
            for index, (image_logits, target) in enumerate(zip(cls_logits, targets, strict=True)):
                gt_boxes = target["boxes"].to(images.device, torch.float32)
                gt_labels = target["labels"].to(images.device, torch.long)
                if gt_boxes.numel() == 0:
                    gt_boxes = gt_boxes.reshape(0, 4)
                if gt_boxes.ndim != 2 or gt_boxes.shape[1] != 4 or gt_labels.shape != gt_boxes.shape[:1]:
                    raise KLDetDataError(
                        f"loss: target {index} has boxes {tuple(gt_boxes.shape)} and labels "
                        f"{tuple(gt_labels.shape)}; expected (G, 4) and (G,)"
                    )
                if self.assigner == "alitsm":
                    assigned = alitsm_assign(
                        image_logits.float(), priors, gt_boxes, gt_labels, **self.assign_options
                    )
                else:
                    assigned = fcos_assign(points, point_strides, gt_boxes, **self.assign_options)
                image_labels, _, image_centerness = build_targets(
                    points, point_strides, assigned, gt_boxes, gt_labels, self.num_classes
                )
                labels.append(image_labels)
                centerness_targets.append(image_centerness)
                # The gt box itself is the DIoU target (zeros for background: never read).
                matched_boxes.append(
                    gt_boxes[assigned.clamp(min=0)] if len(gt_boxes) else gt_boxes.new_zeros((len(points), 4))
                )
        return fcos_losses(
            cls_logits,
            box_regression,
            centerness,
            torch.stack(labels),
            torch.stack(matched_boxes),
            torch.stack(centerness_targets),
            points,
            point_strides,
        )

    def postprocess(
        self,
        cls_logits: Sequence[Tensor],
        box_regression: Sequence[Tensor],
        centerness: Sequence[Tensor],
        image_shape: tuple[int, int],
        image_sizes: Sequence[tuple[int, int]] | None = None,
        scale_factors: Sequence[tuple[float, float]] | None = None,
    ) -> list[dict[str, Tensor]]:
        """Detections from raw maps (e.g. an exported model's outputs) with this model's strides and
        settings; see :func:`kldet.model.postprocess.postprocess_detections`."""
        return postprocess_detections(
            cls_logits,
            box_regression,
            centerness,
            self.strides,
            image_shape,
            image_sizes,
            scale_factors,
            **self.postprocess_options,
        )

    @torch.no_grad()
    def predict(
        self,
        images: Tensor,
        image_sizes: Sequence[tuple[int, int]] | None = None,
        scale_factors: Sequence[tuple[float, float]] | None = None,
    ) -> list[dict[str, Tensor]]:
        """Detections for images (B, 3, H, W): per image ``{"boxes" (K, 4), "scores" (K,), "labels" (K,)}``,
        boxes clipped to ``image_sizes`` (h, w before padding) and divided by ``scale_factors`` (sx, sy)."""
        return self.postprocess(*self(images), tuple(images.shape[-2:]), image_sizes, scale_factors)
