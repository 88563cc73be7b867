"""COCO-style box AP and AR on faster-coco-eval, with the AI-TOD protocol and the standard COCO one.

AI-TOD (its authors' cocoapi fork) scores on box area with the ranges very tiny [0, 8²], tiny [8², 16²],
small [16², 32²] and medium [32², 1e5²], and lets each image keep up to 1500 detections per class.
Both COCO libraries hard-code the standard three ranges in ``summarize()``, so :func:`summarize`
reads AP and AR off the ``precision`` / ``recall`` arrays that ``accumulate()`` leaves, for any ranges.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from faster_coco_eval import COCO, COCOeval_faster
from torchvision.ops import box_convert

from kldet.errors import KLDetDataError
from kldet.evaluation.inputs import EvaluationSet

logger = logging.getLogger(__name__)

# Same values as both libraries' defaults; linspace, as they note, because arange drifts.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
ALL_AREAS = (0.0, 1e5**2)


@dataclass(frozen=True)
class CocoProtocol:
    """Area ranges and detection caps of a COCO-style evaluation.

    Attributes:
        area_ranges: ``(key, label, low, high)`` on box area in pixels², both ends inclusive as in
            pycocotools; the first is the whole range, key ``"all"``. Keys name the metrics (``AP_<key>``),
            labels are the reference libraries' names (their ``summarize()`` looks ranges up by label).
        max_dets: detections kept per image and class, ascending; AP and the per-range numbers use the last.
    """

    area_ranges: tuple[tuple[str, str, float, float], ...]
    max_dets: tuple[int, ...]

    @property
    def summary_keys(self) -> list[str]:
        """Keys of :func:`summarize` before the per-class ones, in reporting order."""
        areas = [key for key, *_ in self.area_ranges[1:]]
        return (
            ["AP", "AP50", "AP75"]
            + [f"AP_{key}" for key in areas]
            + [f"AR@{n}" for n in self.max_dets]
            + [f"AR_{key}" for key in areas]
        )


AITOD_PROTOCOL = CocoProtocol(
    area_ranges=(
        ("all", "all", *ALL_AREAS),
        ("vt", "verytiny", 0, 8**2),
        ("t", "tiny", 8**2, 16**2),
        ("s", "small", 16**2, 32**2),
        ("m", "medium", 32**2, 1e5**2),
    ),
    max_dets=(100, 300, 1500),
)
COCO_PROTOCOL = CocoProtocol(
    area_ranges=(
        ("all", "all", *ALL_AREAS),
        ("s", "small", 0, 32**2),
        ("m", "medium", 32**2, 96**2),
        ("l", "large", 96**2, 1e5**2),
    ),
    max_dets=(1, 10, 100),
)
PROTOCOLS = {"aitod": AITOD_PROTOCOL, "coco": COCO_PROTOCOL}


class CocoDetections(NamedTuple):
    """Detections in COCO results form, as arrays.

    Attributes:
        image_ids: (N,) int64.
        category_ids: (N,) int64, the data set's own category ids.
        boxes: (N, 4) float64 ``xywh`` in pixels.
        scores: (N,) float64.
        file_names: N image file names, where every detection names its image (kldet-predict writes
            ``file_name``); else None.
    """

    image_ids: np.ndarray
    category_ids: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    file_names: list[str] | None = None


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pauses Python's cyclic garbage collector.

    Building millions of annotation dicts sets it off again and again, each pass scanning every dict
    made so far (quadratic); none of them can be in a reference cycle.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def configure_params(params, protocol: CocoProtocol) -> None:
    """Sets a pycocotools or faster-coco-eval ``Params`` (same attributes in both) to ``protocol``."""
    params.iouThrs = IOU_THRESHOLDS.copy()
    params.areaRng = [[low, high] for _, _, low, high in protocol.area_ranges]
    params.areaRngLbl = [label for _, label, _, _ in protocol.area_ranges]
    params.maxDets = list(protocol.max_dets)


def summarize(
    precision: np.ndarray, recall: np.ndarray, protocol: CocoProtocol, class_names: list[str]
) -> dict[str, float]:
    """AP and AR as COCO defines them: the mean over the entries that are not -1 (-1 if there are none).

    Args:
        precision: (T, R, K, A, M) interpolated precision, ``eval["precision"]`` after ``accumulate()``.
        recall: (T, K, A, M) ``eval["recall"]``.
        protocol: the ranges and caps the arrays were computed with (A and M follow its order).
        class_names: K names in category-id order; each adds ``"AP_<name>"`` (all areas, last cap).

    Returns:
        ``protocol.summary_keys`` then the per-class keys, values in [0, 1] or -1 where no ground truth
        falls in a range.
    """
    last = len(protocol.max_dets) - 1
    iou50, iou75 = (int(np.flatnonzero(np.isclose(IOU_THRESHOLDS, t))[0]) for t in (0.5, 0.75))
    metrics = {
        "AP": _mean_valid(precision[:, :, :, 0, last]),
        "AP50": _mean_valid(precision[iou50, :, :, 0, last]),
        "AP75": _mean_valid(precision[iou75, :, :, 0, last]),
    }
    areas = list(enumerate(key for key, *_ in protocol.area_ranges))[1:]
    metrics.update({f"AP_{key}": _mean_valid(precision[:, :, :, a, last]) for a, key in areas})
    metrics.update({f"AR@{n}": _mean_valid(recall[:, :, 0, m]) for m, n in enumerate(protocol.max_dets)})
    metrics.update({f"AR_{key}": _mean_valid(recall[:, :, a, last]) for a, key in areas})
    for k, name in enumerate(class_names):
        key = f"AP_{name}"
        if key in metrics:
            raise KLDetDataError(
                f"class name {name!r} gives the metric key {key!r}, which a summary metric or another class uses"
            )
        metrics[key] = _mean_valid(precision[:, :, k, 0, last])
    return metrics


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else -1.0


def evaluate_coco(
    ground_truth: dict, detections: CocoDetections, protocol: CocoProtocol, source: str = "detections"
) -> dict[str, float]:
    """COCO-style box evaluation of ``detections`` against ``ground_truth``.

    Args:
        ground_truth: a COCO data set dict: ``images`` (``id``), ``categories`` (``id``, ``name``) and
            ``annotations`` (``id`` from 1, ``image_id``, ``category_id``, ``bbox`` xywh, ``area``,
            ``iscrowd``: 1 marks a region where detections are ignored). faster-coco-eval adds an
            ``ignore`` key to each annotation dict, as pycocotools does.
        detections: the results; every image and category id must be in ``ground_truth``.
        protocol: :data:`AITOD_PROTOCOL`, :data:`COCO_PROTOCOL` or another.
        source: names the detections in error messages (a results file, say).

    Returns:
        :func:`summarize`'s dict; per-class keys use the category names in id order.
    """
    check_detection_ids(
        detections,
        [img["id"] for img in ground_truth["images"]],
        [cat["id"] for cat in ground_truth["categories"]],
        source,
    )
    names = [c["name"] for c in sorted(ground_truth["categories"], key=lambda c: c["id"])]
    with gc_paused():
        coco_gt = COCO(ground_truth, print_function=logger.debug)
        coco_dt = COCO(detections_dataset(ground_truth, detections), print_function=logger.debug)
        evaluator = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=logger.debug)
        configure_params(evaluator.params, protocol)
        evaluator.evaluate()
        evaluator.accumulate()
    return summarize(evaluator.eval["precision"], evaluator.eval["recall"], protocol, names)


def detections_dataset(ground_truth: dict, detections: CocoDetections) -> dict:
    """The COCO dict of ``detections`` that ``loadRes`` would build (``area`` = w * h), without the
    polygon per box it adds and without failing on an empty list."""
    boxes = detections.boxes
    annotations = _annotation_dicts(
        detections.image_ids,
        detections.category_ids,
        boxes,
        boxes[:, 2] * boxes[:, 3],
        np.zeros(len(boxes), int),
    )
    for annotation, score in zip(annotations, detections.scores.tolist(), strict=True):
        annotation["score"] = score
    return {
        "images": ground_truth["images"],
        "categories": ground_truth["categories"],
        "annotations": annotations,
    }


def check_detection_ids(detections: CocoDetections, image_ids, category_ids, source: str) -> None:
    """Raises :class:`KLDetDataError` naming the image or category ids of ``detections`` not known."""
    for what, known, used in (
        ("image", image_ids, detections.image_ids),
        ("category", category_ids, detections.category_ids),
    ):
        unknown = np.setdiff1d(np.unique(used), np.asarray(known, dtype=np.int64))
        if unknown.size:
            shown = ", ".join(str(i) for i in unknown[:10]) + (", ..." if unknown.size > 10 else "")
            raise KLDetDataError(f"{source}: {unknown.size} {what} id(s) not in the ground truth: {shown}")


def ground_truth_dataset(
    image_ids: Sequence[int],
    categories: Sequence[tuple[int, str]],
    annotation_image_ids: np.ndarray,
    category_ids: np.ndarray,
    boxes: np.ndarray,
    areas: np.ndarray,
    iscrowd: np.ndarray,
) -> dict:
    """The COCO ground-truth dict that every evaluation hands to the COCO library: the training metric
    builds it from the records, ``kldet-eval results=`` from the annotation file, so both score the same.

    Args:
        image_ids: the images, with or without annotations.
        categories: ``(id, name)`` of each category.
        annotation_image_ids, category_ids: (N,) int of each annotation.
        boxes: (N, 4) float64 ``xyxy``, as annotated.
        areas: (N,) float64 the areas that sort the boxes into size ranges.
        iscrowd: (N,) int, 1 for crowd boxes (ignored within their class, matched with the crowd IoU rule).

    Returns:
        ``{"images", "categories", "annotations"}``, annotation ids from 1 in the given order (both COCO
        libraries read id 0 as "unmatched").
    """
    return {
        "images": [{"id": int(i)} for i in image_ids],
        "categories": [{"id": int(i), "name": str(name)} for i, name in categories],
        "annotations": _annotation_dicts(
            np.asarray(annotation_image_ids),
            np.asarray(category_ids),
            box_convert(torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4), "xyxy", "xywh").numpy(),
            np.asarray(areas, dtype=np.float64),
            np.asarray(iscrowd),
        ),
    }


def coco_inputs(data: EvaluationSet, class_names: list[str]) -> tuple[dict, CocoDetections]:
    """The COCO ground-truth dict (:func:`ground_truth_dataset`) and detections of ``data``.

    Category ids are labels + 1; ``gt_areas`` are the annotation areas and ``gt_ignore`` marks crowd boxes.
    """
    ground_truth = ground_truth_dataset(
        data.image_ids.tolist(),
        list(enumerate(class_names, 1)),
        data.image_ids[data.image_index(data.gt_counts)].numpy(),
        data.gt_labels.numpy() + 1,
        data.gt_boxes.numpy(),
        data.gt_areas.numpy(),
        data.gt_ignore.numpy().astype(np.int64),
    )
    detections = CocoDetections(
        image_ids=data.image_ids[data.image_index(data.pred_counts)].numpy(),
        category_ids=data.pred_labels.numpy() + 1,
        boxes=_xywh(data.pred_boxes),
        scores=data.pred_scores.double().numpy(),
    )
    return ground_truth, detections


def _annotation_dicts(
    image_ids: np.ndarray, category_ids: np.ndarray, boxes: np.ndarray, areas: np.ndarray, iscrowd: np.ndarray
) -> list[dict]:
    """COCO annotation dicts, ids from 1, of the (N, 4) ``xywh`` boxes."""
    with gc_paused():
        return [
            {"id": i, "image_id": m, "category_id": c, "bbox": b, "area": a, "iscrowd": z}
            for i, m, c, b, a, z in zip(
                range(1, len(boxes) + 1),
                image_ids.tolist(),
                category_ids.tolist(),
                boxes.tolist(),
                areas.tolist(),
                iscrowd.tolist(),
                strict=True,
            )
        ]


def _xywh(boxes) -> np.ndarray:
    return box_convert(boxes.double(), "xyxy", "xywh").numpy()
