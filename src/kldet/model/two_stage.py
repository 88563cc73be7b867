"""The two-stage KLDet (KLDET_SPEC.md section 9): a Faster R-CNN of handed-in parts (backbone, RPN, RoI
head), with the :class:`kldet.model.detector.Detector` interface of the single-stage :class:`KLDet`, so
that training, checkpoints, evaluation, the :class:`kldet.inference.Predictor` and export take it as
they are. :func:`kldet.model.builders.two_stage_resnet_fpn` and its presets build it.
"""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from kldet.errors import KLDetConfigError, KLDetDataError
from kldet.model.detector import Detector, check_batch, nan_losses, target_tensors
from kldet.model.roi_head import RCNNPostProcess, RoIHead
from kldet.model.rpn import RegionProposalNetwork

LOSS_NAMES = ("loss_rpn_cls", "loss_rpn_box", "loss_rcnn_cls", "loss_rcnn_box")


class TwoStageKLDet(Detector):
    """Faster R-CNN: pyramid -> RPN proposals -> RoIAlign -> box head.

    Args:
        backbone: images (B, 3, H, W) -> one (B, channels, ceil(H / s), ceil(W / s)) map per stride s of its
            ``strides`` (:class:`kldet.model.ResNetFPN`, P2..P6).
        rpn: proposals on every level (:class:`kldet.model.rpn.RegionProposalNetwork`); its anchors'
            strides must be the backbone's.
        roi_head: boxes and classes of the proposals (:class:`kldet.model.roi_head.RoIHead`), pooled on the
            first levels of the backbone (P2..P5 of P2..P6).
        postprocess: its test settings (:class:`kldet.model.roi_head.RCNNPostProcess`).
    """

    output_kinds = ("features", "objectness", "rpn_deltas")

    def __init__(
        self,
        backbone: nn.Module,
        rpn: RegionProposalNetwork,
        roi_head: RoIHead,
        postprocess: RCNNPostProcess = RCNNPostProcess(),
    ) -> None:
        super().__init__()
        self.strides = tuple(int(s) for s in backbone.strides)
        if rpn.anchor_generator.strides != self.strides:
            raise KLDetConfigError(
                f"the RPN's anchors have strides {list(rpn.anchor_generator.strides)} but the backbone gives "
                f"{list(self.strides)}"
            )
        pooled = roi_head.roi_align.strides
        if self.strides[: len(pooled)] != pooled:
            raise KLDetConfigError(
                f"the RoI head pools strides {list(pooled)}: they must be the first of the backbone's "
                f"{list(self.strides)}"
            )
        self.num_classes = roi_head.num_classes
        self.backbone = backbone
        self.rpn = rpn
        self.roi_head = roi_head
        self.postprocessor = postprocess

    def forward(self, images: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """The convolutional part for images (B, 3, H, W): per level ``features (B, channels, h, w)``,
        RPN ``objectness (B, A, h, w)`` logits and ``rpn_deltas (B, 4A, h, w)``."""
        features = self.backbone(images)
        objectness, deltas = self.rpn(features)
        return features, objectness, deltas

    def loss(self, images: Tensor, targets: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Training losses for images (B, 3, H, W) padded at the bottom/right.

        Args:
            targets: per image ``{"boxes": (G, 4) xyxy in the padded image's pixels, "labels": (G,)}``.

        Returns:
            ``{"loss_rpn_cls", "loss_rpn_box", "loss_rcnn_cls", "loss_rcnn_box"}`` scalars; the training loss
            is their sum (all NaN when the RPN's outputs are not finite). Proposals are clipped to the padded
            image (the targets carry no unpadded size).
        """
        check_batch(images, targets)
        features, objectness, deltas = self(images)
        if not all(torch.isfinite(level).all() for level in (*objectness, *deltas)):
            return nan_losses(objectness[0], LOSS_NAMES)
        gt = [target_tensors(target, index, images.device) for index, target in enumerate(targets)]
        gt_boxes, gt_labels = [boxes for boxes, _ in gt], [labels for _, labels in gt]
        image_shape = tuple(images.shape[-2:])
        anchors = self.rpn.anchor_generator(image_shape, images.device)
        proposals = self.rpn.proposals(objectness, deltas, anchors, [image_shape] * len(images))
        return {
            **self.rpn.loss(objectness, deltas, anchors, gt_boxes),
            **self.roi_head.loss(features, proposals, gt_boxes, gt_labels),
        }

    def postprocess(
        self,
        features: Sequence[Tensor],
        objectness: Sequence[Tensor],
        deltas: Sequence[Tensor],
        image_shape: tuple[int, int],
        image_sizes: Sequence[tuple[int, int]] | None = None,
        scale_factors: Sequence[tuple[float, float]] | None = None,
    ) -> list[dict[str, Tensor]]:
        """Detections from the raw outputs of :meth:`forward` (e.g. an exported graph's): proposals
        clipped to each image's (h, w), the RoI head, and its :attr:`postprocessor` settings (see
        :meth:`kldet.model.roi_head.RoIHead.detections`).

        Args:
            image_shape: (H, W) of the padded batch the outputs come from.
            image_sizes: per image (h, w) of the resized image before padding; default ``image_shape``.
            scale_factors: per image (sx, sy) = resized / original size; default (1, 1).

        Returns:
            per image ``{"boxes": (K, 4) xyxy in original pixels, "scores": (K,), "labels": (K,) long}``,
            sorted by decreasing score.
        """
        batch_size = features[0].shape[0]
        image_sizes = [tuple(image_shape)] * batch_size if image_sizes is None else list(image_sizes)
        scale_factors = [(1.0, 1.0)] * batch_size if scale_factors is None else list(scale_factors)
        if len(image_sizes) != batch_size or len(scale_factors) != batch_size:
            raise KLDetDataError(
                f"postprocess: {batch_size} images but {len(image_sizes)} image_sizes and "
                f"{len(scale_factors)} scale_factors"
            )
        anchors = self.rpn.anchor_generator(tuple(image_shape), features[0].device)
        expected = sum(len(level) for level in anchors)
        found = sum(level[0].numel() for level in objectness)
        if found != expected:
            raise KLDetDataError(
                f"postprocess: the maps have {found} anchors but a {tuple(image_shape)} image has {expected}: "
                "pass the shape of the padded batch the maps come from"
            )
        proposals = self.rpn.proposals(objectness, deltas, anchors, image_sizes)
        return self.roi_head.detections(features, proposals, image_sizes, scale_factors, self.postprocessor)
