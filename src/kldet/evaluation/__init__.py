"""Detection metrics: AI-TOD / COCO AP on faster-coco-eval (AI-TOD with oLRP), VOC mAP, and a DDP-safe
torchmetrics Metric."""

from kldet.evaluation.coco import (
    AITOD_PROTOCOL,
    COCO_PROTOCOL,
    PROTOCOLS,
    CocoDetections,
    CocoProtocol,
    configure_params,
    detections_dataset,
    evaluate_coco,
    summarize,
)
from kldet.evaluation.coco_json import read_coco_ground_truth, read_coco_results
from kldet.evaluation.evaluate import METRIC_KINDS, evaluate_detections, evaluate_results_file
from kldet.evaluation.inputs import EvaluationSet
from kldet.evaluation.lrp import LRP_KEYS, OptimalLRP, optimal_lrp
from kldet.evaluation.metric import DetectionMetric, sample_ground_truth
from kldet.evaluation.table import format_table
from kldet.evaluation.voc import evaluate_voc, voc_average_precision

__all__ = [
    "AITOD_PROTOCOL",
    "COCO_PROTOCOL",
    "LRP_KEYS",
    "METRIC_KINDS",
    "PROTOCOLS",
    "CocoDetections",
    "CocoProtocol",
    "DetectionMetric",
    "sample_ground_truth",
    "EvaluationSet",
    "OptimalLRP",
    "configure_params",
    "detections_dataset",
    "evaluate_coco",
    "evaluate_detections",
    "evaluate_results_file",
    "evaluate_voc",
    "format_table",
    "optimal_lrp",
    "read_coco_ground_truth",
    "read_coco_results",
    "summarize",
    "voc_average_precision",
]
