"""Builder functions of the detectors, as torchvision's ``fcos_resnet50_fpn``.

:func:`kldet_resnet_fpn` holds every default of a ResNet-FPN KLDet; the presets are it with other
defaults (``functools.partial``, so ``inspect.signature`` and the configs read their true defaults):

=================  ===========================================================================
``kldet_r50``      ResNet-50, pytorch style, torchvision's ImageNet weights
``kldet_r50_caffe``  the paper's: Caffe-style ResNet-50, MMDetection's Detectron weights
``kldet_r18``      ResNet-18 with torchvision's weights (fast CPU runs)
``fcos_r50``       the FCOS baseline: ``kldet_r50_caffe`` on P3..P7, no attention, FCOS assignment
=================  ===========================================================================

:func:`two_stage_resnet_fpn` holds every default of the two-stage KLDet (KLDET_SPEC.md section 9):

====================  ========================================================================
``faster_kldet_r50``  the paper's DIOR model: receptive-field anchors, torchvision's ImageNet R-50
``faster_rcnn_r50``   the Faster R-CNN baseline: standard anchors (sides 32..512), max-IoU RPN
``faster_kldet_r18``  CPU-sized: ResNet-18 from random weights with trained BatchNorm, 64 channels
====================  ========================================================================

``conf/model/<preset>.yaml`` names the preset as its ``_target_``; kldet-train's configs take their
keys and defaults from these signatures (:mod:`kldet.cli.signatures`), so each default lives here once.
"""

import functools
from collections.abc import Sequence

from kldet.assign.anchors import RFAnchorGenerator
from kldet.assign.assigners import AliTSMAssigner, Assigner, FCOSAssigner, HierarchicalKLDAssigner
from kldet.assign.max_iou import MaxIoUAnchorAssigner
from kldet.model.attention import TaskLevelAttention
from kldet.model.backbone import ResNetFPN
from kldet.model.detector import KLDet
from kldet.model.head import FCOSHead
from kldet.model.postprocess import PostProcess
from kldet.model.roi_head import RCNNPostProcess, RoIHead
from kldet.model.rpn import AnchorAssigner, RegionProposalNetwork
from kldet.model.two_stage import TwoStageKLDet

#: The pyramid of the two-stage detector (P2..P6) and the levels its RoI head pools (P2..P5).
TWO_STAGE_LEVELS = (2, 3, 4, 5, 6)
ROI_LEVELS = 4


def kldet_resnet_fpn(
    num_classes: int,
    assigner: Assigner = AliTSMAssigner(),
    *,
    backbone: str = "resnet50",
    weights: str | None = None,
    style: str = "pytorch",
    frozen_stages: int = 1,
    backbone_norm: str = "frozen_bn",
    fpn_levels: Sequence[int] = (2, 3, 4, 5, 6),
    attention: bool = True,
    channels: int = 256,
    head_convs: int = 4,
    head_norm: str | None = None,
    postprocess: PostProcess = PostProcess(),
) -> KLDet:
    """KLDet (KLDET_SPEC.md sections 1-4) on a ResNet-FPN: P2..P6, task-level attention, FCOS head
    without GroupNorm, Ali-TSM.

    Args:
        num_classes: C, object classes (labels 0..C-1).
        assigner: the label assigner (default Ali-TSM with the paper's settings).
        backbone, weights, style, frozen_stages: see :class:`kldet.model.ResNetFPN`; ``style`` "caffe" or
            "pytorch" also fixes the input normalisation (:func:`kldet.model.input_normalization`).
        backbone_norm: the backbone's normalisation ("frozen_bn", "bn" or "gn"; ResNetFPN's ``norm``).
        fpn_levels: pyramid levels, (2, 3, 4, 5, 6) for KLDet, (3, 4, 5, 6, 7) for standard FCOS.
        attention: apply one shared task-level attention (TlA) to every pyramid level.
        channels: pyramid and head channels; head_convs: convs per head tower; head_norm: None or "GN".
        postprocess: inference settings (:class:`kldet.model.PostProcess`).
    """
    # Built in this order (backbone, attention, head) so that a seed gives the same initial weights as
    # every earlier kldet.
    body = ResNetFPN(backbone, weights, tuple(fpn_levels), frozen_stages, channels, backbone_norm, style)
    level_attention = TaskLevelAttention(channels) if attention else None
    head = FCOSHead(num_classes, len(body.strides), channels, head_convs, head_norm)
    return KLDet(body, head, assigner, attention=level_attention, postprocess=postprocess)


kldet_r50 = functools.partial(kldet_resnet_fpn, weights="IMAGENET1K_V1")
kldet_r50.__doc__ = """KLDet with torchvision's ResNet-50 (pytorch style, RGB input with ImageNet
mean/std, weights IMAGENET1K_V1 from torchvision's cache)."""

kldet_r50_caffe = functools.partial(
    kldet_resnet_fpn, style="caffe", weights="open-mmlab://detectron/resnet50_caffe"
)
kldet_r50_caffe.__doc__ = """KLDet as the paper (KLDET_SPEC.md section 1): Caffe-style ResNet-50 (stride 2
on the first 1x1 conv), BGR input minus the Detectron mean, MMDetection's Detectron ImageNet weights."""

kldet_r18 = functools.partial(kldet_resnet_fpn, backbone="resnet18", weights="IMAGENET1K_V1")
kldet_r18.__doc__ = """KLDet with a ResNet-18 and torchvision's weights: fast enough for CPU runs."""

fcos_r50 = functools.partial(
    kldet_r50_caffe, assigner=FCOSAssigner(), fpn_levels=(3, 4, 5, 6, 7), attention=False
)
fcos_r50.__doc__ = """The FCOS baseline: ResNet-50 FPN P3..P7, no task-level attention, FCOS assignment
(centre sampling, regression ranges); head and backbone are KLDet's (Caffe style), so against
``kldet_r50_caffe`` only the paper's changes differ."""


def two_stage_resnet_fpn(
    num_classes: int,
    rpn_assigner: AnchorAssigner = HierarchicalKLDAssigner(),
    *,
    backbone: str = "resnet50",
    weights: str | None = None,
    style: str = "pytorch",
    frozen_stages: int = 1,
    backbone_norm: str = "frozen_stats_bn",
    channels: int = 256,
    anchor_sides: Sequence[float] | None = None,
    anchor_fraction: float = 0.5,
    anchor_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    rpn_batch_size: int = 256,
    rpn_positive_fraction: float = 0.5,
    rpn_pre_nms_topk: int = 3000,
    rpn_nms_thresh: float = 0.7,
    rpn_post_nms_topk: int = 3000,
    representation_size: int = 1024,
    rcnn_batch_size: int = 512,
    rcnn_positive_fraction: float = 0.25,
    postprocess: RCNNPostProcess = RCNNPostProcess(),
) -> TwoStageKLDet:
    """The two-stage KLDet (KLDET_SPEC.md section 9) on a ResNet-FPN P2..P6 (P6 = P5 max-pooled).

    Args:
        num_classes: C, object classes (labels 0..C-1).
        rpn_assigner: the RPN's anchor assigner, ``assigner(anchors (N, 4), gt_boxes (G, 4)) -> (N,)``
            (default the spec's hierarchical KLD assigner, :class:`kldet.assign.HierarchicalKLDAssigner`;
            :class:`kldet.assign.MaxIoUAnchorAssigner` is the standard IoU rule).
        backbone, weights, style, frozen_stages: see :class:`kldet.model.ResNetFPN`.
        backbone_norm: the backbone's normalisation ("frozen_stats_bn": BatchNorm statistics frozen,
            affine trained, as the spec; "frozen_bn", "bn", "gn").
        channels: pyramid channels.
        anchor_sides: the anchors' base side per level; None: half the theoretical receptive field
            (``anchor_fraction``), the receptive-field anchors; (32, 64, 128, 256, 512): torchvision's.
        anchor_ratios: anchor aspect ratios h / w.
        rpn_batch_size, rpn_positive_fraction: anchors sampled per image and their positive share.
        rpn_pre_nms_topk, rpn_nms_thresh, rpn_post_nms_topk: proposals per level before the per-level NMS,
            its IoU, and proposals kept per image (training and test).
        representation_size: width of the box head's two FCs.
        rcnn_batch_size, rcnn_positive_fraction: RoIs sampled per image and their positive share.
        postprocess: test settings (:class:`kldet.model.roi_head.RCNNPostProcess`).
    """
    body = ResNetFPN(
        backbone,
        weights,
        TWO_STAGE_LEVELS,
        frozen_stages,
        channels,
        backbone_norm,
        style,
        extra_levels="maxpool",
    )
    anchors = RFAnchorGenerator(
        body.strides,
        None if anchor_sides is None else tuple(anchor_sides),
        anchor_fraction,
        tuple(anchor_ratios),
    )
    rpn = RegionProposalNetwork(
        anchors,
        rpn_assigner,
        channels,
        rpn_batch_size,
        rpn_positive_fraction,
        rpn_pre_nms_topk,
        rpn_nms_thresh,
        rpn_post_nms_topk,
    )
    roi_head = RoIHead(
        num_classes,
        body.strides[:ROI_LEVELS],
        channels,
        representation_size,
        batch_size_per_image=rcnn_batch_size,
        positive_fraction=rcnn_positive_fraction,
    )
    return TwoStageKLDet(body, rpn, roi_head, postprocess)


faster_kldet_r50 = functools.partial(two_stage_resnet_fpn, weights="IMAGENET1K_V1")
faster_kldet_r50.__doc__ = """The paper's two-stage KLDet (KLDET_SPEC.md section 9): torchvision's ResNet-50
(ImageNet weights IMAGENET1K_V1 from torchvision's cache), receptive-field anchors, the hierarchical KLD
RPN assigner."""

faster_rcnn_r50 = functools.partial(
    two_stage_resnet_fpn,
    rpn_assigner=MaxIoUAnchorAssigner(),
    weights="IMAGENET1K_V1",
    anchor_sides=(32.0, 64.0, 128.0, 256.0, 512.0),
)
faster_rcnn_r50.__doc__ = """The Faster R-CNN baseline: ``faster_kldet_r50`` with torchvision's standard
anchors (sides 32..512 on P2..P6) and the max-IoU RPN assigner."""

faster_kldet_r18 = functools.partial(
    two_stage_resnet_fpn,
    backbone="resnet18",
    backbone_norm="bn",
    frozen_stages=-1,
    channels=64,
    representation_size=256,
)
faster_kldet_r18.__doc__ = """A CPU-sized two-stage KLDet for the synthetic set: ResNet-18 from random weights
(so trained BatchNorm, nothing frozen), 64 pyramid channels, 256-d box head; receptive-field anchors and
the hierarchical KLD RPN assigner as ``faster_kldet_r50``."""

#: The presets by name (``conf/model/<name>.yaml``).
PRESETS = {
    "kldet_r50": kldet_r50,
    "kldet_r50_caffe": kldet_r50_caffe,
    "kldet_r18": kldet_r18,
    "fcos_r50": fcos_r50,
    "faster_kldet_r50": faster_kldet_r50,
    "faster_rcnn_r50": faster_rcnn_r50,
    "faster_kldet_r18": faster_kldet_r18,
}
