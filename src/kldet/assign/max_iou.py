"""Max-IoU assignment of anchors or proposals to ground truths (the standard Faster R-CNN rule), on
torchvision's ``Matcher``.

The codes are those of :mod:`kldet.assign.anchors` (``Matcher``'s own): a box whose best IoU is below
``bg_iou_thresh`` is :data:`~kldet.assign.anchors.BACKGROUND`, one in ``[bg_iou_thresh, fg_iou_thresh)``
:data:`~kldet.assign.anchors.IGNORED`, one at ``fg_iou_thresh`` or above the index of its best ground
truth. With ``allow_low_quality_matches`` every ground truth also takes the boxes of its highest IoU
(all of them, ties included), whatever that IoU is.
"""

import dataclasses

import torch
from torch import Tensor
from torchvision.models.detection._utils import Matcher
from torchvision.ops import box_iou

from kldet.assign.anchors import BACKGROUND
from kldet.errors import KLDetConfigError


@dataclasses.dataclass(frozen=True)
class MaxIoUAnchorAssigner:
    """``assigner(boxes (N, 4), gt_boxes (G, 4)) -> (N,) long`` ground-truth index, BACKGROUND or IGNORED.

    The defaults are torchvision's RPN rule (0.7 / 0.3, low-quality matches allowed); the two-stage
    detector's RoI head uses ``MaxIoUAnchorAssigner(0.5, 0.5, False)`` (KLDET_SPEC.md section 9). The
    IoU matrix is dense (G x N floats), as in torchvision. With G = 0 every box is BACKGROUND.
    """

    fg_iou_thresh: float = 0.7
    bg_iou_thresh: float = 0.3
    allow_low_quality_matches: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.bg_iou_thresh <= self.fg_iou_thresh <= 1:
            raise KLDetConfigError(
                f"MaxIoUAnchorAssigner: need 0 <= bg_iou_thresh ({self.bg_iou_thresh}) <= fg_iou_thresh "
                f"({self.fg_iou_thresh}) <= 1"
            )

    def __call__(self, boxes: Tensor, gt_boxes: Tensor) -> Tensor:
        if len(gt_boxes) == 0:
            return torch.full((len(boxes),), BACKGROUND, dtype=torch.long, device=boxes.device)
        matcher = Matcher(self.fg_iou_thresh, self.bg_iou_thresh, self.allow_low_quality_matches)
        return matcher(box_iou(gt_boxes.float(), boxes.float()))
