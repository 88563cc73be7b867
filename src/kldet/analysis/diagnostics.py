"""Error analysis of a COCO-style evaluation: precision-recall curves, a confusion matrix with background, a
TIDE error breakdown by size bin, and the true positive / false positive / miss outcome of every box.

Everything reads the arrays of :func:`kldet.evaluation.coco.coco_evaluation` and re-runs its matching
(:func:`kldet.evaluation.cocoeval.match`), so the curves and the breakdown agree with the printed AP. Numpy
only: it runs in ``kldet-eval results=`` without torch.

The error types are TIDE's (Bolya et al., "TIDE: A General Toolbox for Identifying Object Detection Errors",
ECCV 2020), with its foreground IoU :data:`FOREGROUND_IOU` and background IoU :data:`BACKGROUND_IOU`. Each
false positive gets the first type whose test it passes, in TIDE's order (IoU_max of its image's ground truth,
crowd boxes left out):

- localisation: ``BACKGROUND_IOU <= IoU_max <= FOREGROUND_IOU`` with a box of its own class;
- classification: ``IoU_max >= FOREGROUND_IOU`` with a box of another class;
- duplicate: ``IoU_max >= FOREGROUND_IOU`` with a box of its class already matched by a better detection;
- background: ``IoU_max <= BACKGROUND_IOU`` with every box;
- both (classification and localisation): the rest;
- missed: a counted ground truth no detection matches and no localisation or classification error points at.

Fixing one type (and re-evaluating) gives its dAP, the AP gained: a localisation error gets its box, a
classification error its class, when its ground truth is unmatched and it is the best-scoring such error of
that ground truth; every other error of the type is removed (duplicates, background, both, the rest of the
localisation and classification errors); missed ground truths are removed from the ground truth. As TIDE,
negative gains are reported as 0. AP here is AP at IoU :data:`FOREGROUND_IOU` of one area range, the engine's
AP50 of that range (classes without counted ground truth left out, as the engine does).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

from kldet.evaluation.coco import ALL_AREAS, IOU_THRESHOLDS, CocoEvaluation
from kldet.evaluation.cocoeval import RECALL_THRESHOLDS, CocoArrays, accumulate, candidate_pairs, match

FOREGROUND_IOU = 0.5
BACKGROUND_IOU = 0.1
ERROR_TYPES = ("classification", "localisation", "both", "duplicate", "background", "missed")
# Outcome codes of match_outcomes.
FALSE_POSITIVE, TRUE_POSITIVE, NOT_COUNTED = 0, 1, 2
# Default score threshold of the confusion matrix and the drawn examples.
SCORE_THRESHOLD = 0.3


class PRCurves(NamedTuple):
    """Interpolated precision at the 101 COCO recall points, per class and area range.

    Attributes:
        recall: (R,) the recall points, :data:`~kldet.evaluation.cocoeval.RECALL_THRESHOLDS`.
        classes: the K class names, then ``"all"`` (the mean over the classes with ground truth in the range).
        areas: the A area range keys of the protocol (``"all"``, ``"vt"``, ...).
        ious: ``("0.5", "0.5:0.95")``.
        precision: (2, K + 1, A, R) float64; NaN where the class has no counted object in the range.
            Its mean over R is the engine's AP of that class, range and IoU (AP50, or AP over 0.5:0.95).
    """

    recall: np.ndarray
    classes: list[str]
    areas: list[str]
    ious: tuple[str, str]
    precision: np.ndarray

    def to_json(self) -> dict:
        """A JSON-ready dict: the fields, NaN as null, and ``ap`` (2, K + 1, A) the mean of each curve."""
        with np.errstate(invalid="ignore"):
            ap = self.precision.mean(axis=-1)
        return {
            "recall": self.recall.tolist(),
            "classes": self.classes,
            "areas": self.areas,
            "ious": list(self.ious),
            "precision": _nan_to_none(self.precision),
            "ap": _nan_to_none(ap),
        }


def pr_curves(evaluation: CocoEvaluation) -> PRCurves:
    """:class:`PRCurves` of ``evaluation``'s precision array at the last cap: IoU 0.5, and the mean over the
    ten thresholds 0.5:0.95."""
    precision = evaluation.precision[..., -1]  # (T, R, K, A)
    iou50 = int(np.flatnonzero(np.isclose(IOU_THRESHOLDS, FOREGROUND_IOU))[0])
    valid = np.where(precision > -1, precision, np.nan)
    per_class = np.stack(
        [valid[iou50], valid.mean(axis=0)]
    )  # (2, R, K, A); a class is valid at all T or none
    with warnings.catch_warnings():  # an all-NaN slice is a range without objects: NaN, said once here
        warnings.simplefilter("ignore", RuntimeWarning)
        overall = np.nanmean(per_class, axis=2, keepdims=True)  # (2, R, 1, A)
    curves = np.concatenate([per_class, overall], axis=2).transpose(0, 2, 3, 1)  # (2, K + 1, A, R)
    areas = [key for key, *_ in evaluation.protocol.area_ranges]
    return PRCurves(
        RECALL_THRESHOLDS.copy(), [*evaluation.class_names, "all"], areas, ("0.5", "0.5:0.95"), curves
    )


class Outcomes(NamedTuple):
    """What each box is at IoU :data:`FOREGROUND_IOU` over all areas, for detections scoring at least a
    threshold.

    Attributes:
        detection: (D,) int8 :data:`TRUE_POSITIVE`, :data:`FALSE_POSITIVE` or :data:`NOT_COUNTED` (under the
            threshold, beyond the cap, or matched to a crowd box).
        matched_object: (D,) int64 the object a true positive matches, else -1.
        found: (G,) bool objects a counted detection matches; missed: (G,) bool the counted (not crowd) objects
            that are not found.
    """

    detection: np.ndarray
    matched_object: np.ndarray
    found: np.ndarray
    missed: np.ndarray


def match_outcomes(
    objects: CocoArrays, detections: CocoArrays, max_det: int, score_thresh: float = SCORE_THRESHOLD
) -> Outcomes:
    """:class:`Outcomes` from the engine's greedy matching. The matching runs on all detections: a detection
    takes its object before any lower-scoring one, so the detections above the threshold match as they would
    alone."""
    matching = match(objects, detections, np.array([FOREGROUND_IOU]), np.array([ALL_AREAS]), max_det)
    status = matching.status[0, 0]
    shown = detections.scores >= score_thresh
    outcome = np.where(status == 1, TRUE_POSITIVE, np.where(status == 0, FALSE_POSITIVE, NOT_COUNTED))
    outcome = np.where(shown & (matching.rank < max_det), outcome, NOT_COUNTED).astype(np.int8)
    matched = np.where(outcome == TRUE_POSITIVE, matching.object_at, -1)
    found = np.zeros(len(objects.scores), dtype=bool)
    found[matching.object_at[shown & (matching.object_at >= 0)]] = True
    return Outcomes(outcome, matched, found, ~found & ~objects.crowd)


def confusion_matrix(evaluation: CocoEvaluation, score_thresh: float = SCORE_THRESHOLD) -> np.ndarray:
    """(K + 1, K + 1) int64 counts at IoU :data:`FOREGROUND_IOU`, all areas, detections scoring at least
    ``score_thresh``: rows the ground-truth classes then "background" (detections matching no object),
    columns the predicted classes then "missed" (objects no detection matches).

    The diagonal is the true positives of the metric's matching (:func:`match_outcomes`). The detections and
    objects it leaves are then matched once more with the same greedy rule, ignoring the class: such a pair is
    a confusion (row: the object's class, column: the detection's); what stays unmatched is background or
    missed. Detections matched to crowd boxes, and crowd boxes, are not counted.
    """
    objects, detections = evaluation.objects, evaluation.detections
    max_det = evaluation.protocol.max_dets[-1]
    num_classes = len(evaluation.category_ids)
    object_class = np.searchsorted(evaluation.category_ids, objects.category_ids)
    detection_class = np.searchsorted(evaluation.category_ids, detections.category_ids)
    outcomes = match_outcomes(objects, detections, max_det, score_thresh)
    counts = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    true = outcomes.detection == TRUE_POSITIVE
    np.add.at(counts, (detection_class[true], detection_class[true]), 1)
    # Second pass: the false positives against the objects left, whatever the class.
    left_detections = np.flatnonzero(outcomes.detection == FALSE_POSITIVE)
    left_objects = np.flatnonzero(outcomes.missed)
    agnostic_objects = _subset(objects, left_objects)._replace(
        category_ids=np.zeros(len(left_objects), np.int64)
    )
    agnostic_detections = _subset(detections, left_detections)._replace(
        category_ids=np.zeros(len(left_detections), np.int64)
    )
    # Each detection of an image competes with all others of it: the cap is the image's detection count.
    per_image = np.unique(agnostic_detections.image_ids, return_counts=True)[1]
    second = match(
        agnostic_objects,
        agnostic_detections,
        np.array([FOREGROUND_IOU]),
        np.array([ALL_AREAS]),
        int(per_image.max(initial=1)),
    )
    paired = second.object_at >= 0
    rows = object_class[left_objects[second.object_at[paired]]]
    np.add.at(counts, (rows, detection_class[left_detections[paired]]), 1)
    np.add.at(counts, (num_classes, detection_class[left_detections[~paired]]), 1)
    still_missed = np.ones(len(left_objects), dtype=bool)
    still_missed[second.object_at[paired]] = False
    np.add.at(counts, (object_class[left_objects[still_missed]], num_classes), 1)
    return counts


def row_normalised(counts: np.ndarray) -> np.ndarray:
    """``counts`` with each row divided by its sum (rows of zeros stay zero)."""
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)


class ErrorBreakdown(NamedTuple):
    """The TIDE breakdown of one area range.

    Attributes:
        area: the range key (``"all"``, ``"vt"``, ...).
        ap: the AP at IoU :data:`FOREGROUND_IOU` of the range (-1: no counted object).
        delta_ap: the AP gained by fixing each of :data:`ERROR_TYPES` alone (>= 0).
        counts: how many errors of each type.
    """

    area: str
    ap: float
    delta_ap: dict[str, float]
    counts: dict[str, int]


def error_breakdown(evaluation: CocoEvaluation) -> list[ErrorBreakdown]:
    """The TIDE error breakdown (module docstring) of every area range of ``evaluation``'s protocol."""
    return [
        _range_breakdown(evaluation, a, key) for a, (key, *_) in enumerate(evaluation.protocol.area_ranges)
    ]


def _range_breakdown(evaluation: CocoEvaluation, a: int, key: str) -> ErrorBreakdown:
    objects, detections = evaluation.objects, evaluation.detections
    area_range = evaluation.area_ranges[a : a + 1]
    max_det = evaluation.protocol.max_dets[-1]
    thresholds = np.array([FOREGROUND_IOU])
    matching = match(objects, detections, thresholds, area_range, max_det)
    status = matching.status[0, 0]
    inside = (detections.areas >= area_range[0, 0]) & (detections.areas <= area_range[0, 1])
    false_positive = (matching.rank < max_det) & (status == 0) & inside
    used = np.zeros(len(objects.scores), dtype=bool)
    used[matching.object_at[matching.object_at >= 0]] = True
    kind, target = _error_types(objects, detections, false_positive, used)

    # Localisation and classification errors on an unmatched object: the best-scoring one claims it.
    claims = np.flatnonzero(((kind == 0) | (kind == 1)) & (target >= 0))
    claims = claims[~used[target[claims]]]
    claims = claims[np.lexsort((claims, -detections.scores[claims]))]
    _, first = np.unique(target[claims], return_index=True)
    claimer = claims[first]
    counted = ~objects.crowd & (objects.areas >= area_range[0, 0]) & (objects.areas <= area_range[0, 1])
    claimed = np.zeros(len(objects.scores), dtype=bool)
    claimed[target[claimer]] = True
    missed = counted & ~used & ~claimed

    # One variant per error type (index into ERROR_TYPES): that type fixed, the rest as they are.
    variants = []
    for type_index in range(len(ERROR_TYPES) - 1):  # the detection errors; "missed" (the last) below
        keep = kind != type_index
        fixed = detections
        if type_index in (0, 1):
            mine = claimer[kind[claimer] == type_index]
            keep[mine] = True
            if type_index == 0:  # classification: the object's class
                category_ids = detections.category_ids.copy()
                category_ids[mine] = objects.category_ids[target[mine]]
                fixed = detections._replace(category_ids=category_ids)
            else:  # localisation: the object's box
                boxes, areas = detections.boxes.copy(), detections.areas.copy()
                boxes[mine] = objects.boxes[target[mine]]
                areas[mine] = boxes[mine, 2] * boxes[mine, 3]
                fixed = detections._replace(boxes=boxes, areas=areas)
        variants.append((objects, _subset(fixed, np.flatnonzero(keep))))
    variants.append((_subset(objects, np.flatnonzero(~missed)), detections))
    precision, _ = accumulate(objects, detections, matching, evaluation.category_ids, area_range, [max_det])
    base = _mean_valid(precision[0, :, :, 0, 0])
    fixed_ap = _ap_per_variant(variants, evaluation.category_ids, area_range, max_det)
    counts = np.bincount(kind[kind >= 0], minlength=len(ERROR_TYPES) - 1).tolist() + [int(missed.sum())]
    gains = [max(ap - base, 0.0) if base > -1 and ap > -1 else 0.0 for ap in fixed_ap]
    return ErrorBreakdown(
        key, base, dict(zip(ERROR_TYPES, gains, strict=True)), dict(zip(ERROR_TYPES, counts, strict=True))
    )


def _error_types(
    objects: CocoArrays, detections: CocoArrays, false_positive: np.ndarray, used: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(D,) index into :data:`ERROR_TYPES` of each false positive (-1 for the other detections) and (D,) the
    object a localisation or classification error points at (else -1)."""
    num_detections = len(detections.scores)
    not_crowd = np.flatnonzero(~objects.crowd)
    agnostic = _subset(objects, not_crowd)._replace(category_ids=np.zeros(len(not_crowd), np.int64))
    pair_detection, pair_object, pair_iou = candidate_pairs(
        agnostic,
        detections._replace(category_ids=np.zeros(num_detections, np.int64)),
        false_positive,
        BACKGROUND_IOU,
    )
    pair_object = not_crowd[pair_object]
    same = objects.category_ids[pair_object] == detections.category_ids[pair_detection]
    # Per detection, the largest IoU (and its object) among same-class, other-class and same-class used pairs.
    same_iou, same_object = _best_per_detection(
        pair_detection, pair_object, np.where(same, pair_iou, -1.0), num_detections
    )
    other_iou, other_object = _best_per_detection(
        pair_detection, pair_object, np.where(same, -1.0, pair_iou), num_detections
    )
    used_iou, _ = _best_per_detection(
        pair_detection, pair_object, np.where(same & used[pair_object], pair_iou, -1.0), num_detections
    )
    best_iou = np.maximum(same_iou, other_iou)
    localisation = (same_iou >= BACKGROUND_IOU) & (same_iou <= FOREGROUND_IOU)
    classification = ~localisation & (other_iou >= FOREGROUND_IOU)
    duplicate = ~localisation & ~classification & (used_iou >= FOREGROUND_IOU)
    background = ~localisation & ~classification & ~duplicate & (best_iou <= BACKGROUND_IOU)
    kind = np.select([classification, localisation, duplicate, background], [0, 1, 3, 4], default=2)
    kind = np.where(false_positive, kind, -1)
    target = np.where(kind == 0, other_object, np.where(kind == 1, same_object, -1))
    return kind, target


def _best_per_detection(
    pair_detection: np.ndarray, pair_object: np.ndarray, iou: np.ndarray, num_detections: int
) -> tuple[np.ndarray, np.ndarray]:
    """(D,) the largest ``iou`` of each detection's pairs (-1 without one) and (D,) its object (-1), ties to
    the first pair."""
    best = np.full(num_detections, -1.0)
    np.maximum.at(best, pair_detection, iou)
    at_best = (iou == best[pair_detection]) & (iou > -1)
    chosen = np.full(num_detections, -1, dtype=np.int64)
    rows = np.flatnonzero(at_best)[::-1]  # the first pair of each detection is written last
    chosen[pair_detection[rows]] = pair_object[rows]
    return best, chosen


def _ap_per_variant(
    variants: list[tuple[CocoArrays, CocoArrays]],
    category_ids: np.ndarray,
    area_range: np.ndarray,
    max_det: int,
) -> list[float]:
    """The AP at IoU :data:`FOREGROUND_IOU` in ``area_range`` of each ``(objects, detections)`` variant, in one
    matching and accumulation: variant v's category c becomes c + v * span, so variants never meet."""
    span = int(category_ids.max(initial=0)) + 1
    shifted = [
        (
            o._replace(category_ids=o.category_ids + v * span),
            d._replace(category_ids=d.category_ids + v * span),
        )
        for v, (o, d) in enumerate(variants)
    ]
    objects = CocoArrays(*(np.concatenate(parts) for parts in zip(*(o for o, _ in shifted), strict=True)))
    detections = CocoArrays(*(np.concatenate(parts) for parts in zip(*(d for _, d in shifted), strict=True)))
    all_categories = np.concatenate([category_ids + v * span for v in range(len(variants))])
    matching = match(objects, detections, np.array([FOREGROUND_IOU]), area_range, max_det)
    precision, _ = accumulate(objects, detections, matching, all_categories, area_range, [max_det])
    per_variant = precision[0, :, :, 0, 0].reshape(len(RECALL_THRESHOLDS), len(variants), len(category_ids))
    return [_mean_valid(per_variant[:, v]) for v in range(len(variants))]


def _mean_valid(precision: np.ndarray) -> float:
    """The AP of a (R, K) precision slice: the mean of its entries that are not -1 (-1 without any)."""
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else -1.0


def _subset(arrays: CocoArrays, rows: np.ndarray) -> CocoArrays:
    return CocoArrays(*(field[rows] for field in arrays))


def _nan_to_none(values: np.ndarray) -> list:
    return np.where(np.isnan(values), None, np.round(values, 6)).tolist()
