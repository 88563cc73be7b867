"""The KLDet network: backbone + FPN, task-level attention, FCOS head, losses and post-processing."""

from kldet.model.attention import TaskLevelAttention
from kldet.model.backbone import ResNetFPN
from kldet.model.detector import KLDet
from kldet.model.head import FCOSHead, decode_boxes
from kldet.model.losses import fcos_losses
from kldet.model.normalization import InputNormalization, input_normalization
from kldet.model.postprocess import postprocess_detections

__all__ = [
    "FCOSHead",
    "InputNormalization",
    "KLDet",
    "ResNetFPN",
    "TaskLevelAttention",
    "decode_boxes",
    "fcos_losses",
    "input_normalization",
    "postprocess_detections",
]
