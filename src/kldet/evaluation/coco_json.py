"""Reading COCO annotation and results files for evaluation, with errors that name the file and record."""

from __future__ import annotations

import json
import math
from numbers import Real
from pathlib import Path

import numpy as np

from kldet.data.records import read_json, warn_annotation_id_zero
from kldet.errors import KLDetDataError
from kldet.evaluation.coco import CocoDetections, gc_paused, ground_truth_dataset


def load_json(path: str | Path, what: str):
    """:func:`kldet.data.records.read_json` with garbage collection paused (results files hold millions
    of small dicts)."""
    with gc_paused():
        return read_json(path, what)


def read_coco_results(path: str | Path) -> CocoDetections:
    """A COCO results file: a list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``, each
    optionally with the ``file_name`` of its image."""
    records = load_json(path, "results")
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
    """A COCO annotation file, checked and reduced to what box evaluation reads.

    Returns:
        :func:`kldet.evaluation.coco.ground_truth_dataset` of the file: every annotation with its ``bbox``,
        ``area`` (the file's, else w * h) and ``iscrowd`` (the file's, else 0), renumbered from 1 (both COCO
        libraries take id 0 for "unmatched"; a file with an annotation id 0 gets a warning).
    """
    data = load_json(path, "annotation")
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise KLDetDataError(
            f"annotation file {path} must be a COCO object with lists 'images', 'annotations' and 'categories'"
        )
    images = [_checked_id(img, path, "image", i) for i, img in enumerate(data["images"])]
    categories = [_checked_id(cat, path, "category", i) for i, cat in enumerate(data["categories"])]
    for what, ids in (("image", images), ("category", categories)):
        values, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise KLDetDataError(
                f"annotation file {path}: {what} id {values[counts > 1][0]} appears more than once"
            )
    image_set, category_set = set(images), set(categories)
    rows = []
    with gc_paused():
        for i, ann in enumerate(data["annotations"]):
            problem = _annotation_problem(ann, image_set, category_set)
            if problem:
                raise KLDetDataError(f"annotation file {path}, annotation {i}: {problem}: {_short(ann)}")
            x, y, w, h = (float(v) for v in ann["bbox"])
            area = float(ann.get("area", w * h))
            rows.append(
                (ann["image_id"], ann["category_id"], x, y, x + w, y + h, area, int(ann.get("iscrowd", 0)))
            )
    if any(isinstance(ann, dict) and ann.get("id") == 0 for ann in data["annotations"]):
        warn_annotation_id_zero(Path(path))
    columns = list(zip(*rows, strict=True)) if rows else [()] * 8
    return ground_truth_dataset(
        images,
        [(c["id"], c.get("name", c["id"])) for c in data["categories"]],
        np.array(columns[0], np.int64),
        np.array(columns[1], np.int64),
        np.array(columns[2:6], np.float64).T.reshape(-1, 4),
        np.array(columns[6], np.float64),
        np.array(columns[7], np.int64),
    )


def _checked_id(record, path, what: str, index: int) -> int:
    if not isinstance(record, dict) or not _is_int(record.get("id")):
        raise KLDetDataError(
            f"annotation file {path}, {what} {index}: needs an integer 'id': {_short(record)}"
        )
    return record["id"]


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
        if not _is_int(record[key]):
            return f"{key!r} must be an integer"
    if not _is_number(record["score"]):
        return "'score' must be a finite number"
    return _bbox_problem(record["bbox"])


def _annotation_problem(ann, images: set[int], categories: set[int]) -> str | None:
    if not isinstance(ann, dict):
        return "not an object"
    for key in ("image_id", "category_id", "bbox"):
        if key not in ann:
            return f"no {key!r}"
    if ann["image_id"] not in images:
        return f"image id {ann['image_id']!r} is not in 'images'"
    if ann["category_id"] not in categories:
        return f"category id {ann['category_id']!r} is not in 'categories'"
    if "area" in ann and not _is_number(ann["area"]):
        return "'area' must be a finite number"
    if ann.get("iscrowd", 0) not in (0, 1):
        return "'iscrowd' must be 0 or 1"
    return _bbox_problem(ann["bbox"])


def _bbox_problem(bbox) -> str | None:
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        return "'bbox' must be four finite numbers [x, y, width, height]"
    if bbox[2] < 0 or bbox[3] < 0:
        return "'bbox' has a negative width or height"
    return None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _short(record) -> str:
    text = json.dumps(record)
    return text if len(text) <= 200 else text[:200] + " ..."
