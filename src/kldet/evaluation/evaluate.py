"""One entry per input form: in-memory detections, or a COCO results file with its ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kldet.errors import KLDetConfigError, KLDetDataError
from kldet.evaluation.coco import (
    PROTOCOLS,
    CocoDetections,
    CocoEvaluation,
    check_detection_ids,
    coco_evaluation,
    coco_inputs,
    evaluate_coco,
    summarize_evaluation,
)
from kldet.evaluation.coco_json import read_coco_ground_truth, read_coco_results

# The VOC metric (torch, torchvision) is imported where it is used: scoring a COCO results file
# (kldet-eval results= ann=) then runs on numpy and faster-coco-eval alone and starts in a fraction of the time.
if TYPE_CHECKING:
    from kldet.data.records import Record
    from kldet.evaluation.inputs import EvaluationSet

METRIC_KINDS = ("aitod", "coco", "voc")


def evaluate_detections(data: EvaluationSet, kind: str, class_names: list[str]) -> dict[str, float]:
    """Metrics of ``kind`` ("aitod", "coco" or "voc") for ``data`` (labels index ``class_names``)."""
    _check_kind(kind)
    if kind == "voc":
        from kldet.evaluation.voc import evaluate_voc

        return evaluate_voc(data, class_names)
    ground_truth, detections = coco_inputs(data, class_names)
    return evaluate_coco(ground_truth, detections, PROTOCOLS[kind])


def evaluate_results_file(
    results: str | Path,
    ann: str | Path | None = None,
    metric: str = "aitod",
    root: str | Path | None = None,
    split: str | None = None,
    difficult: str = "object",
) -> tuple[dict[str, float], list[str]]:
    """Evaluates a COCO results file.

    Args:
        results: COCO results JSON (``image_id``, ``category_id``, ``bbox`` xywh, ``score``).
        ann: COCO annotation JSON, for ``metric`` "aitod" or "coco".
        metric: "aitod", "coco" or "voc".
        root, split: a DIOR (Pascal VOC layout) data set and split, for ``metric="voc"``; results use its
            category ids as :func:`kldet.data.read_dior` gives them, and name their image by
            ``file_name`` (as kldet-predict writes it; matched by base name) or else by its image id.
        difficult: how the VOC ground truth counts difficult objects, as :func:`kldet.data.read_dior` (and
            ``data.difficult`` in training) reads them: "object" or "ignore".

    Returns:
        The metrics (keys as :func:`evaluate_detections`) and the class names in label order.
    """
    _check_kind(metric)
    if metric == "voc":
        if root is None or split is None:
            raise KLDetConfigError("metric=voc needs root= (a DIOR / Pascal VOC data set) and split=")
        from kldet.evaluation.voc import evaluate_voc

        detections = read_coco_results(results)
        data, class_names = _voc_inputs(detections, root, split, difficult, f"results file {results}")
        return evaluate_voc(data, class_names), class_names
    evaluation = results_file_evaluation(results, ann, metric)
    return summarize_evaluation(evaluation), evaluation.class_names


def results_file_evaluation(
    results: str | Path, ann: str | Path | None, metric: str = "aitod"
) -> CocoEvaluation:
    """The matching and accumulation (:func:`~kldet.evaluation.coco.coco_evaluation`) of a COCO results file
    against a COCO annotation file, for ``metric`` "aitod" or "coco": what :func:`evaluate_results_file`
    summarises and the error analysis (:mod:`kldet.analysis.report`) reads."""
    _check_kind(metric)
    if metric == "voc":
        raise KLDetConfigError("the COCO matching needs metric=aitod or metric=coco, not voc")
    if ann is None:
        raise KLDetConfigError(f"metric={metric} needs ann= (a COCO annotation file)")
    ground_truth = read_coco_ground_truth(ann)
    detections = read_coco_results(results)
    return coco_evaluation(ground_truth, detections, PROTOCOLS[metric], f"results file {results}")


def _voc_inputs(
    detections: CocoDetections, root: str | Path, split: str, difficult: str, source: str
) -> tuple[EvaluationSet, list[str]]:
    import torch
    from torchvision.ops import box_convert

    from kldet.data import read_dataset
    from kldet.evaluation.inputs import EvaluationSet

    dataset = read_dataset("dior", root, split, difficult=difficult)
    records = dataset.records
    record_ids = [r.image_id for r in records]
    if detections.file_names is not None:
        detections = _ids_from_file_names(detections, records, f"{source}, split {split} of {root}")
    check_detection_ids(detections, record_ids, dataset.category_ids, source)
    label_of = {category_id: label for label, category_id in enumerate(dataset.category_ids)}
    position_of = {image_id: i for i, image_id in enumerate(record_ids)}
    positions = torch.tensor([position_of[i] for i in detections.image_ids.tolist()], dtype=torch.long)
    labels = torch.tensor([label_of[c] for c in detections.category_ids.tolist()], dtype=torch.long)
    boxes = box_convert(torch.from_numpy(detections.boxes), "xywh", "xyxy").float()
    scores = torch.from_numpy(detections.scores).float()
    order = torch.sort(positions, stable=True).indices
    counts = torch.bincount(positions, minlength=len(records)).tolist()
    preds = [
        {"boxes": boxes[rows], "scores": scores[rows], "labels": labels[rows]}
        for rows in torch.split(order, counts)
    ]
    targets = [record_ground_truth(r) for r in records]
    return EvaluationSet.from_lists(preds, targets, len(dataset.classes)), list(dataset.classes)


def record_ground_truth(record: Record) -> dict:
    """The ground truth of ``record`` as :class:`~kldet.evaluation.DetectionMetric` and
    :meth:`EvaluationSet.from_lists` take it (``boxes``, ``labels``, ``areas``, ``ignore``, ``image_id``)."""
    return {
        "boxes": record.gt_boxes,
        "labels": record.gt_labels,
        "areas": record.gt_areas,
        "ignore": record.gt_ignore,
        "image_id": record.image_id,
    }


def _ids_from_file_names(detections: CocoDetections, records: list[Record], source: str) -> CocoDetections:
    """``detections`` with the image id of the record whose image has each detection's file (base) name."""
    id_of = {Path(r.image_path).name: r.image_id for r in records}
    # One lookup per distinct file, not per detection (a results file holds ~1000 detections per image).
    id_of_file = {name: id_of.get(Path(name).name) for name in set(detections.file_names)}
    image_ids = [id_of_file[name] for name in detections.file_names]
    if None in id_of_file.values():
        index = image_ids.index(None)
        name = detections.file_names[index]
        raise KLDetDataError(f"{source}: detection {index} is on image {name!r}, which is not in the split")
    return detections._replace(image_ids=np.array(image_ids, dtype=np.int64).reshape(-1))


def _check_kind(kind: str) -> None:
    if kind not in METRIC_KINDS:
        raise KLDetConfigError(f"unknown metric {kind!r}; choose one of {', '.join(METRIC_KINDS)}")
