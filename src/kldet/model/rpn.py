"""The region proposal network of the two-stage KLDet (KLDET_SPEC.md section 9): torchvision's
``RPNHead`` (3x3 conv + ReLU, 1x1 objectness and deltas, normal(0, 0.01) init), anchors of a
:class:`kldet.assign.anchors.RFAnchorGenerator`, a handed-in anchor assigner, torchvision's random
``BalancedPositiveNegativeSampler`` and ``BoxCoder``, BCE + L1 losses, and the proposals.

Unlike torchvision's ``RegionProposalNetwork`` the assigner is a part (max-IoU or the hierarchical KLD
one), the box loss is L1 (torchvision: smooth L1 with beta 1/9), and a proposal only needs a positive
width and height (torchvision: at least 1e-3).
"""

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, BoxCoder
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import batched_nms, clip_boxes_to_image

from kldet.assign.anchors import BACKGROUND, RFAnchorGenerator, anchor_levels

#: ``assigner(anchors (N, 4), gt_boxes (G, 4)) -> (N,)`` ground-truth index, BACKGROUND or IGNORED.
AnchorAssigner = Callable[[Tensor, Tensor], Tensor]
#: Deltas are clamped to log(1000 / 16) before exp (MMDetection's ``wh_ratio_clip=16/1000``, torchvision's).
DELTA_CLIP = math.log(1000.0 / 16)


def sample_labels(
    assigned: Sequence[Tensor], sampler: BalancedPositiveNegativeSampler
) -> tuple[Tensor, Tensor]:
    """Random positives and negatives of a batch of assignments (ignored boxes are never sampled).

    Args:
        assigned: per image (N_i,) ground-truth index, ``BACKGROUND`` or ``IGNORED``.
        sampler: at most ``batch_size_per_image`` per image, of which at most ``positive_fraction``
            positive; negatives fill the rest.

    Returns:
        ``positive`` and ``sampled`` (positive or negative) boolean masks over the boxes of all images
        concatenated.
    """
    # The sampler's codes: >= 1 positive, 0 negative, < 0 neither.
    codes = [torch.where(a >= 0, 1, torch.where(a == BACKGROUND, 0, -1)) for a in assigned]
    positive, negative = sampler(codes)
    positive, negative = torch.cat(positive).bool(), torch.cat(negative).bool()
    return positive, positive | negative


class RegionProposalNetwork(nn.Module):
    """RPN on the pyramid levels of a backbone.

    Args:
        anchor_generator: anchors per level; its ``strides`` are the levels'.
        assigner: which anchors are positive for which ground truth (:data:`AnchorAssigner`).
        channels: channels of the pyramid levels.
        batch_size_per_image, positive_fraction: the sampler's anchors per image and positive share.
        pre_nms_topk: proposals per level (top objectness) that are decoded.
        nms_thresh: IoU of the NMS within each level.
        post_nms_topk: proposals kept per image (top objectness over all levels).

    ``forward(features)`` gives per level ``objectness (B, A, h, w)`` logits and ``deltas (B, 4A, h, w)``
    (dx, dy, dw, dh per anchor, stds 1).
    """

    def __init__(
        self,
        anchor_generator: RFAnchorGenerator,
        assigner: AnchorAssigner,
        channels: int = 256,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        pre_nms_topk: int = 3000,
        nms_thresh: float = 0.7,
        post_nms_topk: int = 3000,
    ) -> None:
        super().__init__()
        self.anchor_generator = anchor_generator
        self.assigner = assigner
        self.head = RPNHead(channels, anchor_generator.num_anchors_per_location)
        self.coder = BoxCoder((1.0, 1.0, 1.0, 1.0), bbox_xform_clip=DELTA_CLIP)
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.pre_nms_topk, self.nms_thresh, self.post_nms_topk = pre_nms_topk, nms_thresh, post_nms_topk

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        objectness, deltas = self.head(list(features))
        return objectness, deltas

    @staticmethod
    def flatten(objectness: Sequence[Tensor], deltas: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Per-level maps -> ``(B, N)`` objectness and ``(B, N, 4)`` deltas, fp32, in the anchors' order
        (level, location, anchor)."""
        scores = torch.cat([level.permute(0, 2, 3, 1).flatten(1) for level in objectness], dim=1)
        boxes = [
            level.view(level.shape[0], -1, 4, *level.shape[-2:]).permute(0, 3, 4, 1, 2).flatten(1, 3)
            for level in deltas
        ]
        return scores.float(), torch.cat(boxes, dim=1).float()

    def proposals(
        self,
        objectness: Sequence[Tensor],
        deltas: Sequence[Tensor],
        anchors: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[Tensor]:
        """Per image (P, 4) fp32 xyxy proposals (P <= ``post_nms_topk``), by decreasing objectness.

        Per level the top ``pre_nms_topk`` anchors by objectness are decoded and clipped to the image's
        (h, w); boxes without positive width and height are dropped; NMS at ``nms_thresh`` runs per level.
        No gradient flows through them.
        """
        with torch.no_grad(), torch.autocast(objectness[0].device.type, enabled=False):
            scores, box_deltas = self.flatten([o.detach() for o in objectness], [d.detach() for d in deltas])
            levels = anchor_levels(anchors)
            # Top per level, as indices into the concatenated anchors.
            candidates, first = [], 0
            for level in anchors:
                count = min(self.pre_nms_topk, len(level))
                candidates.append(scores[:, first : first + len(level)].topk(count, dim=1).indices + first)
                first += len(level)
            top = torch.cat(candidates, dim=1)
            all_anchors = torch.cat(list(anchors))
            proposals = []
            for image, size in enumerate(image_sizes):
                index = top[image]
                boxes = self.coder.decode_single(box_deltas[image, index], all_anchors[index])
                boxes = clip_boxes_to_image(boxes, (int(size[0]), int(size[1])))
                valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
                index, boxes = index[valid], boxes[valid]
                keep = batched_nms(boxes, scores[image, index], levels[index], self.nms_thresh)
                proposals.append(boxes[keep[: self.post_nms_topk]])
        return proposals

    def loss(
        self,
        objectness: Sequence[Tensor],
        deltas: Sequence[Tensor],
        anchors: Sequence[Tensor],
        gt_boxes: Sequence[Tensor],
    ) -> dict[str, Tensor]:
        """``{"loss_rpn_cls": BCE, "loss_rpn_box": L1}``, both summed over the sampled anchors of the batch
        and divided by their number (assignment, sampling and targets in fp32, without gradient)."""
        scores, box_deltas = self.flatten(objectness, deltas)
        all_anchors = torch.cat(list(anchors))
        with torch.no_grad(), torch.autocast(scores.device.type, enabled=False):
            assigned = [self.assigner(all_anchors, boxes) for boxes in gt_boxes]
            positive, sampled = sample_labels(assigned, self.sampler)
            # Targets of the sampled positives only (a few hundred of B x N anchors): the positive at flat
            # index i is anchor i % N of image i // N, matched to that image's ground truth assigned[i].
            index = positive.nonzero().squeeze(1)
            image, anchor = index // len(all_anchors), index % len(all_anchors)
            counts = torch.tensor([len(boxes) for boxes in gt_boxes], device=index.device)
            first_gt = counts.cumsum(0) - counts
            matched = torch.cat(list(gt_boxes))[first_gt[image] + torch.cat(assigned)[index]]
            targets = self.coder.encode_single(matched, all_anchors[anchor])
        num_sampled = max(int(sampled.sum()), 1)
        loss_cls = F.binary_cross_entropy_with_logits(
            scores.flatten()[sampled], positive[sampled].float(), reduction="sum"
        )
        loss_box = F.l1_loss(box_deltas.flatten(0, 1)[index], targets, reduction="sum")
        return {"loss_rpn_cls": loss_cls / num_sampled, "loss_rpn_box": loss_box / num_sampled}
