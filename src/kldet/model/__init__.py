"""The KLDet network: backbone + FPN, task-level attention, FCOS head, losses, post-processing and the
builder functions of the presets."""

from kldet.model.attention import TaskLevelAttention
from kldet.model.backbone import ResNetFPN, fold_batchnorm
from kldet.model.builders import (
    PRESETS,
    faster_kldet_r18,
    faster_kldet_r50,
    faster_rcnn_r50,
    fcos_r50,
    kldet_r18,
    kldet_r50,
    kldet_r50_caffe,
    kldet_resnet_fpn,
    two_stage_resnet_fpn,
)
from kldet.model.detector import Detector, KLDet
from kldet.model.head import FCOSHead, decode_boxes
from kldet.model.losses import fcos_losses
from kldet.model.normalization import InputNormalization, input_normalization
from kldet.model.postprocess import PostProcess, postprocess_detections
from kldet.model.roi_head import RCNNPostProcess
from kldet.model.two_stage import TwoStageKLDet

__all__ = [
    "PRESETS",
    "Detector",
    "FCOSHead",
    "InputNormalization",
    "KLDet",
    "PostProcess",
    "RCNNPostProcess",
    "ResNetFPN",
    "TaskLevelAttention",
    "TwoStageKLDet",
    "decode_boxes",
    "faster_kldet_r18",
    "fold_batchnorm",
    "faster_kldet_r50",
    "faster_rcnn_r50",
    "fcos_losses",
    "fcos_r50",
    "input_normalization",
    "kldet_r18",
    "kldet_r50",
    "kldet_r50_caffe",
    "kldet_resnet_fpn",
    "postprocess_detections",
    "two_stage_resnet_fpn",
]
