"""The RoI head of the two-stage KLDet (KLDET_SPEC.md section 9): RoIAlign 7x7 on P2..P5, torchvision's
``TwoMLPHead`` (two 1024-d FCs) and ``FastRCNNPredictor`` (C + 1 class logits, per-class deltas), a
max-IoU assigner, the random sampler with the ground truths added as proposals, CE + L1 losses and the
test-time detections.

Where torchvision differs from the spec, this follows the spec: RoIAlign is ``aligned=True`` (torchvision's
``MultiScaleRoIAlign``: False) with MMDetection's level rule :func:`roi_levels`; the box loss is L1
(torchvision: smooth L1, beta 1/9); no box is dropped for its size at test time. Class 0 is the
background (torchvision's layout; the spec's MMDetection puts it last and has no background deltas):
label ``c`` of the data is class ``c + 1`` of the head.
"""

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, BoxCoder
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import batched_nms, clip_boxes_to_image, roi_align

from kldet.assign.max_iou import MaxIoUAnchorAssigner
from kldet.errors import KLDetConfigError
from kldet.model.rpn import DELTA_CLIP, AnchorAssigner, sample_labels

#: The box size of the finest RoI level: ``sqrt(w h) < 2 * FINEST_SCALE`` goes to the first level.
FINEST_SCALE = 56


def roi_levels(boxes: Tensor, num_levels: int, finest_scale: float = FINEST_SCALE) -> Tensor:
    """(R,) level index of (R, 4) xyxy boxes: ``floor(log2(sqrt(w h) / finest_scale + 1e-6))`` clamped to
    ``0 .. num_levels - 1`` (MMDetection's ``SingleRoIExtractor.map_roi_levels``)."""
    scale = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0).sqrt()
    levels = torch.floor(torch.log2(scale / finest_scale + 1e-6))
    return levels.clamp(0, num_levels - 1).long()


class MultiLevelRoIAlign(nn.Module):
    """RoIAlign (``aligned=True``, adaptive sampling) of each box on the level :func:`roi_levels` picks.

    Args:
        strides: the strides of the levels it reads (the first ``len(strides)`` maps it is given).
        output_size: side of the pooled maps.
        sampling_ratio: RoIAlign's samples per bin side (0: adaptive).
    """

    def __init__(self, strides: Sequence[int], output_size: int = 7, sampling_ratio: int = 0) -> None:
        super().__init__()
        self.strides = tuple(int(s) for s in strides)
        self.output_size, self.sampling_ratio = output_size, sampling_ratio

    def forward(self, features: Sequence[Tensor], boxes: Sequence[Tensor]) -> Tensor:
        """Pooled (R, channels, S, S) fp32 maps of the boxes of all images concatenated.

        Args:
            features: per level (B, channels, h, w) (extra coarser levels are not read).
            boxes: per image (R_i, 4) xyxy in input pixels.
        """
        rois = torch.cat(
            [torch.cat((b.new_full((len(b), 1), i), b), dim=1) for i, b in enumerate(boxes)]
        ).float()
        levels = roi_levels(rois[:, 1:], len(self.strides))
        channels = features[0].shape[1]
        pooled = rois.new_zeros((len(rois), channels, self.output_size, self.output_size))
        for level, (feature, stride) in enumerate(zip(features, self.strides, strict=False)):
            index = (levels == level).nonzero().squeeze(1)
            # fp32 boxes need an fp32 map; under autocast roi_align computes in fp32 anyway.
            pooled[index] = roi_align(
                feature.float(),
                rois[index],
                self.output_size,
                spatial_scale=1.0 / stride,
                sampling_ratio=self.sampling_ratio,
                aligned=True,
            ).to(pooled.dtype)
        return pooled


@dataclasses.dataclass(frozen=True)
class RCNNPostProcess:
    """Test settings of the two-stage detector: keep class probabilities above ``score_thresh``,
    class-wise NMS at ``nms_thresh``, at most ``max_detections`` per image."""

    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    max_detections: int = 3000


class RoIHead(nn.Module):
    """Box head on pooled proposals.

    Args:
        num_classes: C object classes (the head predicts C + 1, background first).
        strides: strides of the levels RoIAlign reads (P2..P5: 4, 8, 16, 32).
        channels: channels of those levels.
        representation_size: width of the two FCs.
        assigner: proposals -> ground truths (default max-IoU 0.5, no low-quality matches).
        batch_size_per_image, positive_fraction: the sampler's RoIs per image and positive share.
    """

    def __init__(
        self,
        num_classes: int,
        strides: Sequence[int] = (4, 8, 16, 32),
        channels: int = 256,
        representation_size: int = 1024,
        assigner: AnchorAssigner = MaxIoUAnchorAssigner(0.5, 0.5, False),
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise KLDetConfigError(f"num_classes={num_classes}: need at least one class")
        self.num_classes = num_classes
        self.roi_align = MultiLevelRoIAlign(strides)
        size = self.roi_align.output_size
        self.box_head = TwoMLPHead(channels * size * size, representation_size)
        self.box_predictor = FastRCNNPredictor(representation_size, num_classes + 1)
        # MMDetection's Shared2FCBBoxHead init: Xavier FCs, normal(0, 0.01) logits, normal(0, 0.001) deltas.
        for fc in (self.box_head.fc6, self.box_head.fc7):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        for layer, std in ((self.box_predictor.cls_score, 0.01), (self.box_predictor.bbox_pred, 0.001)):
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)
        self.assigner = assigner
        self.coder = BoxCoder((10.0, 10.0, 5.0, 5.0), bbox_xform_clip=DELTA_CLIP)
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)

    def forward(self, features: Sequence[Tensor], boxes: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """``class_logits (R, C + 1)`` and ``box_deltas (R, 4 (C + 1))`` of the boxes of all images."""
        pooled = self.roi_align(features, boxes)
        return self.box_predictor(self.box_head(pooled))

    def sample(
        self, proposals: Sequence[Tensor], gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor]
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        """Training RoIs: the ground truths added to the proposals, assigned and sampled.

        Returns:
            per image the sampled (R_i, 4) boxes, their classes (R,) (0 background, label + 1) and
            their regression targets (R, 4) (zeros for the background), over all images.
        """
        rois, classes, targets = [], [], []
        for image_proposals, boxes, labels in zip(proposals, gt_boxes, gt_labels, strict=True):
            candidates = torch.cat((image_proposals, boxes))
            assigned = self.assigner(candidates, boxes)
            _, sampled = sample_labels([assigned], self.sampler)
            candidates, assigned = candidates[sampled], assigned[sampled]
            matched = assigned.clamp(min=0)
            foreground = assigned >= 0
            rois.append(candidates)
            classes.append(
                torch.where(foreground, labels[matched] + 1, 0) if len(boxes) else torch.zeros_like(assigned)
            )
            targets.append(
                self.coder.encode_single(boxes[matched], candidates) * foreground[:, None]
                if len(boxes)
                else torch.zeros_like(candidates)
            )
        return rois, torch.cat(classes), torch.cat(targets)

    def loss(
        self,
        features: Sequence[Tensor],
        proposals: Sequence[Tensor],
        gt_boxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
    ) -> dict[str, Tensor]:
        """``{"loss_rcnn_cls": CE mean over the sampled RoIs, "loss_rcnn_box": L1 of the positives' own
        class deltas, summed, / number of sampled RoIs}`` (sampling and targets in fp32, no gradient)."""
        with torch.no_grad(), torch.autocast(features[0].device.type, enabled=False):
            rois, classes, targets = self.sample(proposals, gt_boxes, gt_labels)
        class_logits, box_deltas = self(features, rois)
        class_logits, box_deltas = class_logits.float(), box_deltas.float()
        positive = (classes > 0).nonzero().squeeze(1)
        own_deltas = box_deltas.view(len(box_deltas), -1, 4)[positive, classes[positive]]
        # Sums over the sampled RoIs / their number: the mean, and 0 (not NaN) without any RoI.
        num_sampled = max(len(classes), 1)
        loss_cls = F.cross_entropy(class_logits, classes, reduction="sum") / num_sampled
        loss_box = F.l1_loss(own_deltas, targets[positive], reduction="sum") / num_sampled
        return {"loss_rcnn_cls": loss_cls, "loss_rcnn_box": loss_box}

    def detections(
        self,
        features: Sequence[Tensor],
        proposals: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
        scale_factors: Sequence[tuple[float, float]],
        settings: RCNNPostProcess,
    ) -> list[dict[str, Tensor]]:
        """Per image ``{"boxes" (K, 4) in original pixels, "scores" (K,), "labels" (K,)}``: softmax,
        per-class decode, clip to the image's (h, w), division by its (sx, sy) scale, probability
        > ``score_thresh``, class-wise NMS, the top ``max_detections`` by score."""
        class_logits, box_deltas = self(features, proposals)
        with torch.autocast(class_logits.device.type, enabled=False):
            probabilities = class_logits.float().softmax(dim=1)[:, 1:]
            # (R, C, 4): every class's box of every proposal (the background's dropped).
            boxes = self.coder.decode(box_deltas.float(), list(proposals))[:, 1:]
            detections = []
            for image_probabilities, image_boxes, size, (sx, sy) in zip(
                probabilities.split([len(p) for p in proposals]),
                boxes.split([len(p) for p in proposals]),
                image_sizes,
                scale_factors,
                strict=True,
            ):
                image_boxes = clip_boxes_to_image(image_boxes.reshape(-1, 4), (int(size[0]), int(size[1])))
                image_boxes = image_boxes.view(len(image_probabilities), -1, 4)
                image_boxes = image_boxes / image_boxes.new_tensor([sx, sy, sx, sy])
                roi, label = (image_probabilities > settings.score_thresh).nonzero(as_tuple=True)
                kept_boxes, scores = image_boxes[roi, label], image_probabilities[roi, label]
                keep = batched_nms(kept_boxes, scores, label, settings.nms_thresh)[: settings.max_detections]
                detections.append({"boxes": kept_boxes[keep], "scores": scores[keep], "labels": label[keep]})
        return detections
