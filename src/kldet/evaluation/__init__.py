"""Detection metrics: AI-TOD / COCO AP on faster-coco-eval (AI-TOD with oLRP), VOC mAP, and a DDP-safe
torchmetrics Metric."""

from kldet.lazy import lazy_exports

# name -> its module, imported when the name is first read: importing one submodule does not import
# the others (see kldet.lazy).
_EXPORTS = {
    "AITOD_PROTOCOL": "kldet.evaluation.coco",
    "COCO_PROTOCOL": "kldet.evaluation.coco",
    "LRP_KEYS": "kldet.evaluation.lrp",
    "METRIC_KINDS": "kldet.evaluation.evaluate",
    "PROTOCOLS": "kldet.evaluation.coco",
    "CocoDetections": "kldet.evaluation.coco",
    "CocoProtocol": "kldet.evaluation.coco",
    "DetectionMetric": "kldet.evaluation.metric",
    "sample_ground_truth": "kldet.evaluation.metric",
    "EvaluationSet": "kldet.evaluation.inputs",
    "OptimalLRP": "kldet.evaluation.lrp",
    "configure_params": "kldet.evaluation.coco",
    "detections_dataset": "kldet.evaluation.coco",
    "evaluate_coco": "kldet.evaluation.coco",
    "evaluate_detections": "kldet.evaluation.evaluate",
    "evaluate_results_file": "kldet.evaluation.evaluate",
    "evaluate_voc": "kldet.evaluation.voc",
    "format_table": "kldet.evaluation.table",
    "optimal_lrp": "kldet.evaluation.lrp",
    "read_coco_ground_truth": "kldet.evaluation.coco_json",
    "read_coco_results": "kldet.evaluation.coco_json",
    "summarize": "kldet.evaluation.coco",
    "voc_average_precision": "kldet.evaluation.voc",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
