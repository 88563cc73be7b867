"""The KLDet network: backbone + FPN, task-level attention, FCOS head, losses, post-processing and the
builder functions of the presets."""

from kldet.model.attention import TaskLevelAttention
from kldet.model.backbone import ResNetFPN
from kldet.model.builders import PRESETS, fcos_r50, kldet_r18, kldet_r50, kldet_r50_caffe, kldet_resnet_fpn
from kldet.model.detector import KLDet
from kldet.model.head import FCOSHead, decode_boxes
from kldet.model.losses import fcos_losses
from kldet.model.normalization import InputNormalization, input_normalization
from kldet.model.postprocess import PostProcess, postprocess_detections

__all__ = [
    "PRESETS",
    "FCOSHead",
    "InputNormalization",
    "KLDet",
    "PostProcess",
    "ResNetFPN",
    "TaskLevelAttention",
    "decode_boxes",
    "fcos_losses",
    "fcos_r50",
    "input_normalization",
    "kldet_r18",
    "kldet_r50",
    "kldet_r50_caffe",
    "kldet_resnet_fpn",
    "postprocess_detections",
]
