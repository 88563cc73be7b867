"""Optimal LRP (Oksuz et al., "One Metric to Measure them All", TPAMI 2022) of one class, as the AI-TOD
cocoapi fork reports it (KLDET_SPEC.md section 7).

The detections of a class over all images are ranked by score. For the prefix of the top i, with TP_i true
positives (IoUs IoU_j), FP_i false positives and FN_i = N_gt - TP_i missed objects::

    Loc_i = sum_j (1 - IoU_j)
    LRP_i = (Loc_i / (1 - tau) + FP_i + FN_i) / (TP_i + FP_i + FN_i)

oLRP is the smallest LRP_i (the first prefix reaching it), reported with its three components and the score
of its last detection, the class's LRP-optimal threshold.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# Summary keys in the order of OptimalLRP's first four fields.
LRP_KEYS = ("oLRP", "oLRP_loc", "oLRP_FP", "oLRP_FN")


class OptimalLRP(NamedTuple):
    """oLRP of one class; NaN where undefined.

    Attributes:
        lrp: LRP at the optimal prefix, in [0, 1]; 1 when no detection is a true positive.
        localisation: mean 1 - IoU of its true positives (not divided by 1 - tau); NaN without any.
        false_positive: FP / (TP + FP) there; NaN without true positives.
        false_negative: FN / N_gt there.
        threshold: score of the prefix's last detection; NaN without true positives.
    """

    lrp: float
    localisation: float
    false_positive: float
    false_negative: float
    threshold: float


def optimal_lrp(
    scores: np.ndarray,
    true_positive: np.ndarray,
    ious: np.ndarray,
    num_ground_truth: int,
    iou_threshold: float = 0.5,
) -> OptimalLRP | None:
    """oLRP of one class from its matched detections.

    Args:
        scores: (D,) scores of the class's detections that count (those matched to an ignored ground truth
            left out); equal scores keep their given order.
        true_positive: (D,) bool, matched to a ground truth at IoU >= ``iou_threshold``.
        ious: (D,) IoU with the matched ground truth where ``true_positive`` (other entries are not read).
        num_ground_truth: N_gt, the class's ground truths that are not ignored.
        iou_threshold: tau, the IoU of the matching.

    Returns:
        the :class:`OptimalLRP`, or None when the class has no ground truth (oLRP is undefined).
    """
    if num_ground_truth == 0:
        return None
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    true_positive = np.asarray(true_positive, dtype=bool)[order]
    if not true_positive.any():
        return OptimalLRP(1.0, np.nan, np.nan, 1.0, np.nan)
    tp = np.cumsum(true_positive)
    fp = np.cumsum(~true_positive)
    fn = num_ground_truth - tp
    localisation = np.cumsum(np.where(true_positive, 1.0 - np.asarray(ious, dtype=np.float64)[order], 0.0))
    lrp = (localisation / (1.0 - iou_threshold) + fp + fn) / (tp + fp + fn)
    best = int(np.argmin(lrp))  # the first minimum
    with np.errstate(invalid="ignore", divide="ignore"):  # no TP at ``best`` only if every LRP_i is 1
        return OptimalLRP(
            lrp=float(lrp[best]),
            localisation=float(localisation[best] / tp[best]),
            false_positive=float(fp[best] / (tp[best] + fp[best])),
            false_negative=float(fn[best] / num_ground_truth),
            threshold=float(np.asarray(scores, dtype=np.float64)[order][best]),
        )
