"""Pascal VOC mean average precision at one IoU threshold (DIOR's metric), 11-point and area variants.

Follows the VOC devkit (and MMDetection's ``eval_map``, which the KLDet authors' DIOR numbers come from):
detections of a class are taken in descending score; each is matched to the box of its class in its
image that it overlaps most, ignored boxes included; above the threshold it is a true positive if that
object is not yet taken, ignored (neither TP nor FP) if the box is an ignored one (VOC's "difficult",
DIOR's boxes under half a pixel), a false positive otherwise. Ignored boxes do not count as positives.
IoU is computed on continuous pixel coordinates (no "+1"), as everywhere else in the package.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

from kldet.evaluation.inputs import EvaluationSet

# The devkit's recall points; arange, not linspace, so 0.3 is 0.30000000000000004 there too.
ELEVEN_RECALLS = np.arange(0.0, 1.1, 0.1)


def voc_average_precision(recall: np.ndarray, precision: np.ndarray, eleven_point: bool) -> float:
    """Area under a precision-recall curve.

    Args:
        recall: (N,) non-decreasing recall after each detection, in descending score order.
        precision: (N,) precision after each detection.
        eleven_point: VOC2007's mean of the best precision at recall >= 0, 0.1, ..., 1 (else VOC2010+'s
            exact area under the curve made monotone).
    """
    if eleven_point:
        # Best precision from each position on, then the first position reaching each recall point.
        best_after = np.maximum.accumulate(precision[::-1])[::-1]
        first = np.searchsorted(recall, ELEVEN_RECALLS, side="left")
        reached = first < len(recall)
        return float(best_after[first[reached]].sum() / len(ELEVEN_RECALLS))
    recall = np.concatenate(([0.0], recall, [1.0]))
    precision = np.concatenate(([0.0], precision, [0.0]))
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(((recall[steps + 1] - recall[steps]) * precision[steps + 1]).sum())


def match_detections(data: EvaluationSet, iou_threshold: float = 0.5) -> tuple[Tensor, Tensor]:
    """The ground-truth box of its class each detection overlaps most, VOC style.

    Returns:
        matched (P,) int64: the index into ``data.gt_boxes`` of the object a detection overlaps most
            (same class) by more than ``iou_threshold``, -1 if none does or an ignored box wins;
        ignored (P,) bool: detections whose best overlap above the threshold is an ignored box.
        Which matched detection of an object is the true positive is for the caller (the best scored).
    """
    matched = torch.full((len(data.pred_scores),), -1, dtype=torch.long)
    ignored = torch.zeros(len(data.pred_scores), dtype=torch.bool)
    pred_starts, gt_starts = ((torch.cumsum(c, 0) - c).tolist() for c in (data.pred_counts, data.gt_counts))
    for i, (num_preds, num_gts) in enumerate(
        zip(data.pred_counts.tolist(), data.gt_counts.tolist(), strict=True)
    ):
        if num_preds == 0 or num_gts == 0:
            continue
        preds = slice(pred_starts[i], pred_starts[i] + num_preds)
        gts = slice(gt_starts[i], gt_starts[i] + num_gts)
        # float64: the threshold test is exact, as in the devkit's numpy
        ious = box_iou(data.pred_boxes[preds].double(), data.gt_boxes[gts].double())
        ious = torch.where(data.pred_labels[preds, None] == data.gt_labels[None, gts], ious, -1.0)
        best = ious.argmax(dim=1)  # the first of equal overlaps, as numpy's argmax in the devkit
        best_iou = ious.gather(1, best[:, None]).squeeze(1)
        hit = best_iou > iou_threshold
        on_ignored = data.gt_ignore[gts][best]
        matched[preds] = torch.where(hit & ~on_ignored, best + gt_starts[i], -1)
        ignored[preds] = hit & on_ignored
    return matched, ignored


def evaluate_voc(data: EvaluationSet, class_names: list[str], iou_threshold: float = 0.5) -> dict[str, float]:
    """VOC mAP of ``data``.

    Returns:
        ``"mAP"`` (area, VOC2010+), ``"mAP_07"`` (11-point, VOC2007), and per class ``"AP_<name>"``
        (area) and ``"AP07_<name>"``. Means are over classes with at least one object; a class without
        any gets -1.
    """
    num_classes = len(class_names)
    matched, ignored = match_detections(data, iou_threshold)
    # Class by class, best score first; stable, so equal scores keep input order.
    order = torch.sort(data.pred_scores, descending=True, stable=True).indices
    order = order[torch.sort(data.pred_labels[order], stable=True).indices]
    order = order[~ignored[order]]
    matched_sorted = matched[order].numpy()
    taken = np.flatnonzero(matched_sorted >= 0)
    # The first (best scored) detection on an object is the true positive; later ones are duplicates.
    _, first = np.unique(matched_sorted[taken], return_index=True)
    is_tp = np.zeros(len(order), dtype=bool)
    is_tp[taken[first]] = True
    labels = data.pred_labels[order]
    num_positives = torch.bincount(data.gt_labels[~data.gt_ignore], minlength=num_classes)
    bounds = torch.searchsorted(labels, torch.arange(num_classes + 1)).tolist()
    area, eleven = np.full(num_classes, -1.0), np.full(num_classes, -1.0)
    for c in range(num_classes):
        if num_positives[c] == 0:
            continue
        tp = is_tp[bounds[c] : bounds[c + 1]].astype(np.float64)
        tp_cum, fp_cum = np.cumsum(tp), np.cumsum(1.0 - tp)
        recall = tp_cum / float(num_positives[c])
        precision = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float64).eps)
        area[c] = voc_average_precision(recall, precision, eleven_point=False)
        eleven[c] = voc_average_precision(recall, precision, eleven_point=True)
    has_objects = (num_positives > 0).numpy()
    metrics = {
        "mAP": float(area[has_objects].mean()) if has_objects.any() else -1.0,
        "mAP_07": float(eleven[has_objects].mean()) if has_objects.any() else -1.0,
    }
    metrics.update({f"AP_{name}": float(area[c]) for c, name in enumerate(class_names)})
    metrics.update({f"AP07_{name}": float(eleven[c]) for c, name in enumerate(class_names)})
    return metrics
