"""COCO-style box AP and AR, with the AI-TOD protocol and the standard COCO one.

AI-TOD (its authors' cocoapi fork) scores on box area with the ranges very tiny [0, 8²], tiny [8², 16²],
small [16², 32²] and medium [32², 1e5²], and lets each image keep up to 1500 detections per class.
The matching and accumulation run on arrays (:mod:`kldet.evaluation.cocoeval`, faster-coco-eval's numbers);
both COCO libraries hard-code the standard three ranges in ``summarize()``, so :func:`summarize` reads AP
and AR off the ``precision`` / ``recall`` arrays that ``accumulate()`` leaves, for any ranges.
The AI-TOD protocol adds the optimal LRP (:mod:`kldet.evaluation.lrp`) on the matching of AP50.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from kldet.data.records import gc_paused
from kldet.errors import KLDetDataError
from kldet.evaluation.cocoeval import CocoArrays, Matching, accumulate, match
from kldet.evaluation.lrp import LRP_KEYS, OptimalLRP, optimal_lrp

if TYPE_CHECKING:
    # Only for the annotation: scoring a results file (kldet-eval results=) runs on numpy, without torch.
    from kldet.evaluation.inputs import EvaluationSet

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
        olrp: also report the optimal LRP (:data:`kldet.evaluation.lrp.LRP_KEYS`), at IoU 0.5, the whole
            range and the last cap.
    """

    area_ranges: tuple[tuple[str, str, float, float], ...]
    max_dets: tuple[int, ...]
    olrp: bool = False

    @property
    def summary_keys(self) -> list[str]:
        """AP and AR keys of :func:`summarize`, in reporting order (the oLRP ones follow them)."""
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
    olrp=True,
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


def configure_params(params, protocol: CocoProtocol) -> None:
    """Sets a pycocotools or faster-coco-eval ``Params`` (same attributes in both) to ``protocol``."""
    params.iouThrs = IOU_THRESHOLDS.copy()
    params.areaRng = [[low, high] for _, _, low, high in protocol.area_ranges]
    params.areaRngLbl = [label for _, label, _, _ in protocol.area_ranges]
    params.maxDets = list(protocol.max_dets)


def summarize(
    precision: np.ndarray,
    recall: np.ndarray,
    protocol: CocoProtocol,
    class_names: list[str],
    lrp: list[OptimalLRP | None] | None = None,
) -> dict[str, float]:
    """AP and AR as COCO defines them: the mean over the entries that are not -1 (-1 if there are none).

    Args:
        precision: (T, R, K, A, M) interpolated precision, ``eval["precision"]`` after ``accumulate()``.
        recall: (T, K, A, M) ``eval["recall"]``.
        protocol: the ranges and caps the arrays were computed with (A and M follow its order).
        class_names: K names in category-id order; each adds ``"AP_<name>"`` (all areas, last cap).
        lrp: the K classes' :func:`kldet.evaluation.lrp.optimal_lrp` (None: no ground truth), as
            :func:`class_lrp` gives them. The summary ``oLRP``, ``oLRP_loc``, ``oLRP_FP``, ``oLRP_FN`` are then
            their means over the classes where they are defined, and each class adds ``oLRP_<name>``,
            ``oLRP_loc_<name>``, ``oLRP_FP_<name>``, ``oLRP_FN_<name>`` and ``oLRP_threshold_<name>``.

    Returns:
        ``protocol.summary_keys``, the oLRP summary keys, then the per-class keys; values in [0, 1], or -1
        where undefined (no ground truth in a range; for oLRP no ground truth of the class, and for its
        localisation, FP and threshold no true positive).
    """
    if lrp is not None and len(lrp) != len(class_names):
        raise ValueError(f"summarize: {len(class_names)} classes but {len(lrp)} oLRP results")
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
    # (K, P) per-class values, one column per key prefix; NaN (then -1) where undefined.
    prefixes = ["AP"]
    columns = [[_mean_valid(precision[:, :, k, 0, last]) for k in range(len(class_names))]]
    if lrp is not None:
        table = np.array([np.full(5, np.nan) if result is None else result for result in lrp]).reshape(-1, 5)
        metrics.update(
            {key: _mean_valid(_undefined_as_minus_one(table[:, i])) for i, key in enumerate(LRP_KEYS)}
        )
        prefixes += [*LRP_KEYS, "oLRP_threshold"]
        columns += [_undefined_as_minus_one(column).tolist() for column in table.T]
    for prefix, column in zip(prefixes, columns, strict=True):
        for name, value in zip(class_names, column, strict=True):
            key = f"{prefix}_{name}"
            if key in metrics:
                raise KLDetDataError(
                    f"class name {name!r} gives the metric key {key!r}, which a summary metric or another "
                    "class uses"
                )
            metrics[key] = float(value)
    return metrics


def _undefined_as_minus_one(values: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(values), -1.0, values)


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else -1.0


class CocoEvaluation(NamedTuple):
    """Everything a COCO-style evaluation computed, for the summary and for the error analysis
    (:mod:`kldet.analysis.diagnostics`) that reads the same matching.

    Attributes:
        objects, detections: :class:`~kldet.evaluation.cocoeval.CocoArrays` (G objects, D detections).
        category_ids: (K,) int64 in id order; class_names: their K names.
        protocol: the ranges and caps; area_ranges: (A, 2) its ``[low, high]``.
        matching: :func:`~kldet.evaluation.cocoeval.match` at :data:`IOU_THRESHOLDS`, every range and the last cap.
        precision: (T, R, K, A, M) and recall: (T, K, A, M), as :func:`~kldet.evaluation.cocoeval.accumulate`.
    """

    objects: CocoArrays
    detections: CocoArrays
    category_ids: np.ndarray
    class_names: list[str]
    protocol: CocoProtocol
    area_ranges: np.ndarray
    matching: Matching
    precision: np.ndarray
    recall: np.ndarray


def coco_evaluation(
    ground_truth: dict, detections: CocoDetections, protocol: CocoProtocol, source: str = "detections"
) -> CocoEvaluation:
    """The matching and accumulation of :func:`evaluate_coco` (same arguments), before the summary."""
    image_ids = [img["id"] for img in ground_truth["images"]]
    categories = sorted(ground_truth["categories"], key=lambda c: c["id"])
    category_ids = np.array([c["id"] for c in categories], dtype=np.int64)
    check_detection_ids(detections, image_ids, category_ids, source)
    objects = object_arrays(ground_truth["annotations"], image_ids, category_ids)
    found = detection_arrays(detections)
    area_ranges = np.array([[low, high] for _, _, low, high in protocol.area_ranges], dtype=np.float64)
    iou50 = int(np.flatnonzero(np.isclose(IOU_THRESHOLDS, 0.5))[0])
    matching = match(objects, found, IOU_THRESHOLDS, area_ranges, protocol.max_dets[-1], lrp_threshold=iou50)
    precision, recall = accumulate(
        objects, found, matching, category_ids, area_ranges, list(protocol.max_dets)
    )
    names = [c["name"] for c in categories]
    return CocoEvaluation(
        objects, found, category_ids, names, protocol, area_ranges, matching, precision, recall
    )


def evaluate_coco(
    ground_truth: dict, detections: CocoDetections, protocol: CocoProtocol, source: str = "detections"
) -> dict[str, float]:
    """COCO-style box evaluation of ``detections`` against ``ground_truth``, with the numbers of faster-coco-eval
    (and, to rounding, pycocotools) computed on arrays (:mod:`kldet.evaluation.cocoeval`).

    Args:
        ground_truth: a COCO data set dict: ``images`` (``id``), ``categories`` (``id``, ``name``) and
            ``annotations`` (``image_id``, ``category_id``, ``bbox`` xywh, ``area``, ``iscrowd``: 1 marks a
            region where detections are ignored); annotations of other images or categories are left out.
        detections: the results; every image and category id must be in ``ground_truth``.
        protocol: :data:`AITOD_PROTOCOL`, :data:`COCO_PROTOCOL` or another.
        source: names the detections in error messages (a results file, say).

    Returns:
        :func:`summarize`'s dict; per-class keys use the category names in id order.
    """
    return summarize_evaluation(coco_evaluation(ground_truth, detections, protocol, source))


def summarize_evaluation(evaluation: CocoEvaluation) -> dict[str, float]:
    """:func:`summarize` of a :func:`coco_evaluation`, with the oLRP where its protocol reports it."""
    e = evaluation
    lrp = (
        class_lrp(e.objects, e.detections, e.matching, e.category_ids, e.protocol)
        if e.protocol.olrp
        else None
    )
    return summarize(e.precision, e.recall, e.protocol, e.class_names, lrp)


def detection_arrays(detections: CocoDetections) -> CocoArrays:
    """``detections`` as :class:`~kldet.evaluation.cocoeval.CocoArrays` (area w * h, never crowd)."""
    boxes = np.asarray(detections.boxes, dtype=np.float64).reshape(-1, 4)
    return CocoArrays(
        image_ids=np.asarray(detections.image_ids, dtype=np.int64),
        category_ids=np.asarray(detections.category_ids, dtype=np.int64),
        boxes=boxes,
        areas=boxes[:, 2] * boxes[:, 3],
        scores=np.asarray(detections.scores, dtype=np.float64),
        crowd=np.zeros(len(boxes), dtype=bool),
    )


def object_arrays(annotations: list[dict], image_ids, category_ids) -> CocoArrays:
    """The annotations of the given images and categories as :class:`~kldet.evaluation.cocoeval.CocoArrays`,
    in their order (as the COCO libraries select them)."""
    count = len(annotations)
    arrays = CocoArrays(
        image_ids=np.fromiter((a["image_id"] for a in annotations), dtype=np.int64, count=count),
        category_ids=np.fromiter((a["category_id"] for a in annotations), dtype=np.int64, count=count),
        boxes=np.array([a["bbox"] for a in annotations], dtype=np.float64).reshape(count, 4),
        areas=np.fromiter((a["area"] for a in annotations), dtype=np.float64, count=count),
        scores=np.zeros(count),
        crowd=np.fromiter((bool(a.get("iscrowd", 0)) for a in annotations), dtype=bool, count=count),
    )
    known = np.isin(arrays.image_ids, np.asarray(image_ids, dtype=np.int64)) & np.isin(
        arrays.category_ids, category_ids
    )
    return arrays if known.all() else CocoArrays(*(field[known] for field in arrays))


def class_lrp(
    objects: CocoArrays,
    detections: CocoArrays,
    matching: Matching,
    category_ids: np.ndarray,
    protocol: CocoProtocol,
) -> list[OptimalLRP | None]:
    """The optimal LRP of each category (``category_ids`` order) on the matching of AP at IoU 0.5, the first
    (whole) area range and the last cap (:attr:`~kldet.evaluation.cocoeval.Matching.object_at`).

    As in the AI-TOD fork, each image keeps its top ``max_dets[-1]`` detections per class, a detection
    matched to a crowd (ignored) box counts as neither TP nor FP, and N_gt counts the boxes that are not.
    """
    _, _, low, high = protocol.area_ranges[0]
    gt_ignored = objects.crowd | ~_within(objects.areas, low, high)
    matched_gt = matching.object_at
    is_matched = matched_gt >= 0
    ignored = ~_within(
        detections.areas, low, high
    )  # unmatched detections outside the range; matched ones by their box
    ignored[is_matched] = gt_ignored[matched_gt[is_matched]]
    counted = (matching.rank < protocol.max_dets[-1]) & ~ignored
    # Across images, ties rank by image id, then id (the fork's stable sort of image-ordered lists).
    ranked = np.lexsort((np.arange(len(detections.scores)), detections.image_ids))
    results = []
    for category in category_ids:
        rows = ranked[counted[ranked] & (detections.category_ids[ranked] == category)]
        num_gt = int(((objects.category_ids == category) & ~gt_ignored).sum())
        results.append(optimal_lrp(detections.scores[rows], is_matched[rows], matching.iou_at[rows], num_gt))
    return results


def _within(areas: np.ndarray, low: float, high: float) -> np.ndarray:
    return (areas >= low) & (areas <= high)


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
            _xywh(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)),
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
        boxes=_xywh(data.pred_boxes.double().numpy()),
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


def _xywh(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) ``xyxy`` -> ``xywh``, the same float64 differences as ``torchvision.ops.box_convert``."""
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
