"""KLDet: a backbone with a feature pyramid, optional task-level attention, an FCOS head, a label
assigner and post-processing, handed in as parts (as torchvision's ``FCOS(backbone, ...)`` and DETR's
``SetCriterion(matcher=...)``); :mod:`kldet.model.builders` has the presets (``kldet_r50_caffe``, ...).

:class:`Detector` is what every kldet detector offers the code downstream (training, checkpoints,
:class:`kldet.inference.Predictor`, export): :class:`KLDet` and the two-stage
:class:`kldet.model.two_stage.TwoStageKLDet`."""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from kldet.assign import build_targets
from kldet.assign.assigners import Assigner, point_grid
from kldet.errors import KLDetConfigError, KLDetDataError
from kldet.model.head import FCOSHead
from kldet.model.losses import fcos_losses
from kldet.model.postprocess import PostProcess


class Detector(nn.Module):
    """The interface of a kldet detector.

    Attributes:
        strides: the pyramid levels' strides; num_classes: C (labels 0..C-1); backbone: the feature
            extractor (its ``style`` fixes the input normalisation); postprocessor: a frozen dataclass of
            the inference settings (with ``score_thresh``, ``nms_thresh``, ``max_detections``).
        output_kinds: the names of the three per-level lists ``forward`` returns (what an exported
            graph's outputs are called).

    ``forward(images (B, 3, H, W))`` gives the raw outputs, three per-level lists; ``postprocess(*outputs,
    image_shape, image_sizes, scale_factors)`` turns them into detections; ``loss(images, targets)``
    gives a dict of scalar losses whose sum is the training loss (NaN when the network diverged).
    """

    output_kinds: tuple[str, str, str]
    strides: tuple[int, ...]
    num_classes: int

    def loss(self, images: Tensor, targets: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        raise NotImplementedError

    def postprocess(
        self,
        first: Sequence[Tensor],
        second: Sequence[Tensor],
        third: Sequence[Tensor],
        image_shape: tuple[int, int],
        image_sizes: Sequence[tuple[int, int]] | None = None,
        scale_factors: Sequence[tuple[float, float]] | None = None,
    ) -> list[dict[str, Tensor]]:
        raise NotImplementedError

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


def target_tensors(target: dict[str, Tensor], index: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(boxes (G, 4) float32, labels (G,) long)`` of one image's training target on ``device``.

    Raises:
        KLDetDataError: the shapes are not (G, 4) and (G,).
    """
    gt_boxes = target["boxes"].to(device, torch.float32)
    gt_labels = target["labels"].to(device, torch.long)
    if gt_boxes.numel() == 0:
        gt_boxes = gt_boxes.reshape(0, 4)
    if gt_boxes.ndim != 2 or gt_boxes.shape[1] != 4 or gt_labels.shape != gt_boxes.shape[:1]:
        raise KLDetDataError(
            f"loss: target {index} has boxes {tuple(gt_boxes.shape)} and labels "
            f"{tuple(gt_labels.shape)}; expected (G, 4) and (G,)"
        )
    return gt_boxes, gt_labels


def check_batch(images: Tensor, targets: Sequence[dict[str, Tensor]]) -> None:
    """Raises :class:`KLDetDataError` unless there is one target per image."""
    if len(targets) != images.shape[0]:
        raise KLDetDataError(f"loss: {images.shape[0]} images but {len(targets)} targets")


def nan_losses(reference: Tensor, names: Sequence[str]) -> dict[str, Tensor]:
    """NaN for every loss of ``names`` (connected to ``reference``'s graph): what a diverged network gives.
    No assignment can rank NaN scores; NaN losses let the caller's finiteness check name the step
    (kldet.lit.NonFiniteLossError)."""
    nan = reference.sum() * float("nan")
    return dict.fromkeys(names, nan)


class KLDet(Detector):
    """Single-stage tiny-object detector of KLDET_SPEC.md, usable without Lightning.

    Args:
        backbone: images (B, 3, H, W) -> a list of (B, channels, ceil(H / s), ceil(W / s)) maps, one per
            stride s of its ``strides`` attribute (e.g. :class:`kldet.model.ResNetFPN`).
        head: maps -> per-level classification, box and centerness maps (:class:`kldet.model.FCOSHead`,
            one ``Scale`` per level); ``num_classes`` is the head's.
        assigner: which points are positive for which ground truth in training
            (:class:`kldet.assign.AliTSMAssigner`, ``FCOSAssigner``, ``ATSSAssigner``).
        attention: a module applied to every pyramid level before the head (the paper's shared
            :class:`kldet.model.TaskLevelAttention`), or None.
        postprocess: candidates, thresholds and NMS of inference (:class:`kldet.model.PostProcess`).
    """

    output_kinds = ("cls_logits", "box_regression", "centerness")

    def __init__(
        self,
        backbone: nn.Module,
        head: FCOSHead,
        assigner: Assigner,
        attention: nn.Module | None = None,
        postprocess: PostProcess = PostProcess(),
    ) -> None:
        super().__init__()
        self.strides = tuple(int(s) for s in backbone.strides)
        if head.num_levels != len(self.strides):
            raise KLDetConfigError(
                f"the head has {head.num_levels} levels but the backbone gives {len(self.strides)} "
                f"(strides {list(self.strides)})"
            )
        if head.num_classes < 1:
            raise KLDetConfigError(f"num_classes={head.num_classes}: need at least one class")
        assigner.check_levels(self.strides)
        self.num_classes = head.num_classes
        self.backbone = backbone
        self.attention = attention
        self.head = head
        self.assigner = assigner
        self.postprocessor = postprocess

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
            ``{"loss_cls", "loss_box", "loss_ctr"}`` scalars; the training loss is their sum (all NaN when the
            network's classification logits are not finite).
        """
        check_batch(images, targets)
        cls_maps, box_maps, centerness_maps = self(images)
        cls_logits = torch.cat([level.flatten(2) for level in cls_maps], dim=2).transpose(1, 2)
        box_regression = torch.cat([level.flatten(2) for level in box_maps], dim=2).transpose(1, 2)
        centerness = torch.cat([level.flatten(1) for level in centerness_maps], dim=1)
        if not torch.isfinite(cls_logits).all():
            return nan_losses(cls_logits, ("loss_cls", "loss_box", "loss_ctr"))
        grid = point_grid(tuple(images.shape[-2:]), self.strides, images.device)
        labels, matched_boxes, centerness_targets = [], [], []
        # Assignment and targets in fp32 whatever the autocast (bf16 would reorder near-equal KL scores).
        with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
            for index, (image_logits, target) in enumerate(zip(cls_logits, targets, strict=True)):
                gt_boxes, gt_labels = target_tensors(target, index, images.device)
                assigned = self.assigner(grid, image_logits.detach().float(), gt_boxes, gt_labels)
                image_labels, _, image_centerness = build_targets(
                    grid.points, grid.point_strides, assigned, gt_boxes, gt_labels, self.num_classes
                )
                labels.append(image_labels)
                centerness_targets.append(image_centerness)
                # The gt box itself is the DIoU target (zeros for background: never read).
                matched_boxes.append(
                    gt_boxes[assigned.clamp(min=0)]
                    if len(gt_boxes)
                    else gt_boxes.new_zeros((len(grid.points), 4))
                )
        return fcos_losses(
            cls_logits,
            box_regression,
            centerness,
            torch.stack(labels),
            torch.stack(matched_boxes),
            torch.stack(centerness_targets),
            grid.points,
            grid.point_strides,
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
        :attr:`postprocessor` settings; see :func:`kldet.model.postprocess.postprocess_detections`."""
        return self.postprocessor(
            cls_logits, box_regression, centerness, self.strides, image_shape, image_sizes, scale_factors
        )
