"""Reading COCO annotation and results files for evaluation, with errors that name the file and record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kldet.data.coco import read_coco
from kldet.data.records import DetectionSet, is_int, is_number, read_json
from kldet.errors import KLDetDataError
from kldet.evaluation.coco import CocoDetections, ground_truth_dataset


def read_coco_results(path: str | Path) -> CocoDetections:
    """A COCO results file: a list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``, each
    optionally with the ``file_name`` of its image."""
    records = read_json(path, "results")
    if not isinstance(records, list):
        raise KLDetDataError(
            f"results file {path} must hold a list of detections, not a {type(records).__name__}"
        )
    if not records:
        return CocoDetections(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0))
    try:
        detections = CocoDetections(
            image_ids=np.array([r["image_id"] for r in records]),
            category_ids=np.array([r["category_id"] for r in records]),
            boxes=np.array([r["bbox"] for r in records], dtype=np.float64).reshape(len(records), 4),
            scores=np.array([r["score"] for r in records], dtype=np.float64),
        )
    except (KeyError, TypeError, ValueError):
        detections = None
    if detections is None or not _valid_results(detections):
        index, problem = next(
            ((i, p) for i, r in enumerate(records) if (p := _result_problem(r))), (0, "unreadable detections")
        )
        raise KLDetDataError(f"results file {path}, detection {index}: {problem}: {_short(records[index])}")
    file_names = [r.get("file_name") for r in records]
    return detections._replace(
        image_ids=detections.image_ids.astype(np.int64),
        category_ids=detections.category_ids.astype(np.int64),
        file_names=file_names if all(isinstance(name, str) for name in file_names) else None,
    )


def read_coco_ground_truth(path: str | Path) -> dict:
    """A COCO annotation file, checked by :func:`kldet.data.read_coco` (the data reader's validation,
    without opening images) and reduced to what box evaluation reads.

    Returns:
        :func:`kldet.evaluation.coco.ground_truth_dataset` of the file: every annotation with its ``bbox``,
        ``area`` (the file's, else w * h) and ``iscrowd`` (the file's, else 0), renumbered from 1 (both COCO
        libraries take id 0 for "unmatched"; a file with an annotation id 0 gets a warning).
    """
    return dataset_ground_truth(read_coco(path, None))


def dataset_ground_truth(dataset: DetectionSet) -> dict:
    """:func:`kldet.evaluation.coco.ground_truth_dataset` of a data set's records (any reader): their boxes,
    areas and ignored boxes (as ``iscrowd``), annotations in record order."""
    records = dataset.records
    category_ids = np.asarray(dataset.category_ids, np.int64)
    labels = np.concatenate([np.zeros(0, np.int64), *(r.gt_labels for r in records)])
    return ground_truth_dataset(
        [r.image_id for r in records],
        list(zip(dataset.category_ids, dataset.classes, strict=True)),
        np.repeat(np.array([r.image_id for r in records], np.int64), [len(r.gt_labels) for r in records]),
        category_ids[labels],
        np.concatenate([np.zeros((0, 4)), *(r.gt_boxes for r in records)]),
        np.concatenate([np.zeros(0), *(r.gt_areas for r in records)]),
        np.concatenate([np.zeros(0, bool), *(r.gt_ignore for r in records)]).astype(np.int64),
    )


def _valid_results(d: CocoDetections) -> bool:
    return (
        d.image_ids.dtype.kind in "iu"
        and d.category_ids.dtype.kind in "iu"
        and bool(np.isfinite(d.boxes).all() and np.isfinite(d.scores).all())
        and bool((d.boxes[:, 2:] >= 0).all())
    )


def _result_problem(record) -> str | None:
    if not isinstance(record, dict):
        return "not an object"
    for key in ("image_id", "category_id", "bbox", "score"):
        if key not in record:
            return f"no {key!r}"
    for key in ("image_id", "category_id"):
        if not is_int(record[key]):
            return f"{key!r} must be an integer"
    if not is_number(record["score"]):
        return "'score' must be a finite number"
    return _bbox_problem(record["bbox"])


def _bbox_problem(bbox) -> str | None:
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(is_number(v) for v in bbox)):
        return "'bbox' must be four finite numbers [x, y, width, height]"
    if bbox[2] < 0 or bbox[3] < 0:
        return "'bbox' has a negative width or height"
    return None


def _short(record) -> str:
    text = json.dumps(record)
    return text if len(text) <= 200 else text[:200] + " ..."
