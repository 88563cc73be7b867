"""Builder functions of the detectors, as torchvision's ``fcos_resnet50_fpn``.

:func:`kldet_resnet_fpn` holds every default of a ResNet-FPN KLDet; the presets are it with other
defaults (``functools.partial``, so ``inspect.signature`` and the configs read their true defaults):

=================  ===========================================================================
``kldet_r50``      ResNet-50, pytorch style, torchvision's ImageNet weights
``kldet_r50_caffe``  the paper's: Caffe-style ResNet-50, MMDetection's Detectron weights
``kldet_r18``      ResNet-18 with torchvision's weights (fast CPU runs)
``fcos_r50``       the FCOS baseline: ``kldet_r50_caffe`` on P3..P7, no attention, FCOS assignment
=================  ===========================================================================

``conf/model/<preset>.yaml`` names the preset as its ``_target_``; kldet-train's configs take their
keys and defaults from these signatures (:mod:`kldet.cli.signatures`), so each default lives here once.
"""

import functools
from collections.abc import Sequence

from kldet.assign.assigners import AliTSMAssigner, Assigner, FCOSAssigner
from kldet.model.attention import TaskLevelAttention
from kldet.model.backbone import ResNetFPN
from kldet.model.detector import KLDet
from kldet.model.head import FCOSHead
from kldet.model.postprocess import PostProcess


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

#: The presets by name (``conf/model/<name>.yaml``).
PRESETS = {
    "kldet_r50": kldet_r50,
    "kldet_r50_caffe": kldet_r50_caffe,
    "kldet_r18": kldet_r18,
    "fcos_r50": fcos_r50,
}
