"""COCO box evaluation on arrays: the greedy matching and the accumulation of pycocotools' ``COCOeval``, with
the numbers of faster-coco-eval's C++ (``COCOevalEvaluateAccumulate``) to the last bit.

The libraries hold every annotation as a Python dict and sort all detections of a class again for each area
range and cap; on an AI-TOD-sized set (1.6 M detections, caps up to 1500) that is where the time goes. Here
detections stay arrays: the IoUs of all (detection, object) pairs of an image and class are computed at once,
pairs below the lowest threshold are dropped, and the greedy matching advances one score rank at a time for
every image, class, area range and threshold together (the detections of one rank are in different images or
classes, so they never compete). The accumulation sorts each class once.

The rules, as in pycocotools: per image and class the detections are ranked by score (ties in input order) and
cut at the largest cap; objects are ignored when crowd or outside the area range; each detection in rank order
takes, among the objects not yet taken (a crowd region can be taken again) with IoU >= the threshold, the one
with the largest IoU (ties: the later object), a counted object before an ignored one. A detection matched to an
ignored object, or unmatched and outside the area range, is ignored. Crowd IoU divides by the detection's area.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# pycocotools' recall points, np.linspace as the libraries make them.
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, 101)
# Pairs per block of the IoU computation (memory: about 100 bytes a pair).
_PAIRS_PER_BLOCK = 1 << 22


class CocoArrays(NamedTuple):
    """Objects or detections of a COCO evaluation as arrays (the objects in annotation order).

    Attributes:
        image_ids: (N,) int64.
        category_ids: (N,) int64.
        boxes: (N, 4) float64 ``xywh``.
        areas: (N,) float64, the areas that sort boxes into the area ranges.
        scores: (N,) float64 detection scores (objects: unused).
        crowd: (N,) bool crowd regions (detections: all False).
    """

    image_ids: np.ndarray
    category_ids: np.ndarray
    boxes: np.ndarray
    areas: np.ndarray
    scores: np.ndarray
    crowd: np.ndarray


class Matching(NamedTuple):
    """The greedy matching of every detection at every area range and IoU threshold.

    Attributes:
        rank: (D,) int64 rank of each detection by score within its image and class (0 = best).
        status: (A, T, D) int8: 0 unmatched, 1 matched to a counted object, 2 matched to an ignored object;
            detections ranked at or beyond the cap stay 0 and take no part.
        object_at: (D,) int64 the object each detection matches at the first area range and the threshold
            ``lrp_threshold`` of :func:`match`, or -1.
        iou_at: (D,) float64 the IoU of that match (0 where unmatched).
    """

    rank: np.ndarray
    status: np.ndarray
    object_at: np.ndarray
    iou_at: np.ndarray


def rank_within_groups(image_ids: np.ndarray, category_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(N,) rank of each detection by descending score within its (image, category), ties in input order
    (the libraries' stable sort)."""
    count = len(scores)
    ids = np.arange(count)
    order = np.lexsort((ids, -scores, category_ids, image_ids))
    group_image, group_category = image_ids[order], category_ids[order]
    new_group = np.r_[
        True, (group_image[1:] != group_image[:-1]) | (group_category[1:] != group_category[:-1])
    ]
    starts = np.flatnonzero(new_group) if count else ids
    rank = np.empty(count, dtype=np.int64)
    rank[order] = ids - np.repeat(starts, np.diff(np.r_[starts, count]))
    return rank


def box_iou_coco(detections: np.ndarray, objects: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """Element-wise IoU of (P, 4) ``xywh`` detection and object boxes, the COCO mask API's ``bbIou`` operation
    for operation (a crowd object's union is the detection's area)."""
    dx, dy, dw, dh = detections.T
    gx, gy, gw, gh = objects.T
    width = np.fmin(dw + dx, gw + gx) - np.fmax(dx, gx)
    height = np.fmin(dh + dy, gh + gy) - np.fmax(dy, gy)
    overlap = (width > 0) & (height > 0)
    intersection = width * height
    detection_area = dw * dh
    union = np.where(crowd, detection_area, detection_area + gw * gh - intersection)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(overlap, intersection / union, 0.0)


def candidate_pairs(
    objects: CocoArrays, detections: CocoArrays, kept: np.ndarray, lowest_threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(P,) detection index, (P,) object index and (P,) IoU of every pair of a ``kept`` ((D,) bool) detection
    and an object of its image and class with IoU >= ``lowest_threshold``, in blocks of bounded memory."""
    object_keys = _group_keys(objects, detections)
    object_order = np.argsort(object_keys, kind="stable")
    sorted_keys = object_keys[object_order]
    kept_rows = np.flatnonzero(kept)
    keys = _group_keys(detections, objects)[kept_rows]
    # The objects of each detection's image and class are object_order[first : first + counts].
    first = np.searchsorted(sorted_keys, keys, side="left")
    counts = np.searchsorted(sorted_keys, keys, side="right") - first
    parts = ([], [], [])
    cumulative = np.cumsum(counts)
    start = 0
    while start < len(kept_rows):
        # The detections whose pairs fit in one block (at least one detection).
        stop = max(
            start + 1, int(np.searchsorted(cumulative, cumulative[start] - counts[start] + _PAIRS_PER_BLOCK))
        )
        block_counts = counts[start:stop]
        pair_detection = np.repeat(kept_rows[start:stop], block_counts)
        offsets = np.arange(int(block_counts.sum())) - np.repeat(
            np.cumsum(block_counts) - block_counts, block_counts
        )
        pair_object = object_order[np.repeat(first[start:stop], block_counts) + offsets]
        iou = box_iou_coco(
            detections.boxes[pair_detection], objects.boxes[pair_object], objects.crowd[pair_object]
        )
        keep = iou >= lowest_threshold
        for part, values in zip(parts, (pair_detection[keep], pair_object[keep], iou[keep]), strict=True):
            part.append(values)
        start = stop
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    return tuple(np.concatenate([*part, e]) for part, e in zip(parts, empty, strict=True))


def _group_keys(boxes: CocoArrays, other: CocoArrays) -> np.ndarray:
    """(N,) int64 key of the (image, category) of each of ``boxes``, comparable with ``other``'s keys."""
    images = np.unique(np.concatenate([boxes.image_ids, other.image_ids]))
    categories = np.unique(np.concatenate([boxes.category_ids, other.category_ids]))
    image_index = np.searchsorted(images, boxes.image_ids)
    return image_index * len(categories) + np.searchsorted(categories, boxes.category_ids)


def _outside(areas: np.ndarray, area_ranges: np.ndarray) -> np.ndarray:
    """(A, N) whether each area lies outside each ``[low, high]`` range (ends inclusive)."""
    return (areas[None, :] < area_ranges[:, :1]) | (areas[None, :] > area_ranges[:, 1:])


def match(
    objects: CocoArrays,
    detections: CocoArrays,
    iou_thresholds: np.ndarray,
    area_ranges: np.ndarray,
    max_det: int,
    lrp_threshold: int = 0,
) -> Matching:
    """The greedy COCO matching (module docstring) at every area range and threshold.

    Args:
        objects, detections: :class:`CocoArrays`; objects in annotation order (ties prefer the later one).
        iou_thresholds: (T,) thresholds.
        area_ranges: (A, 2) ``[low, high]``.
        max_det: detections kept per image and class (the largest cap).
        lrp_threshold: index of the threshold whose matching at the first area range
            :attr:`Matching.object_at` reports.
    """
    thresholds = np.minimum(np.asarray(iou_thresholds, dtype=np.float64), 1 - 1e-10)  # as the libraries
    num_areas, num_thresholds, num_detections = len(area_ranges), len(thresholds), len(detections.scores)
    rank = rank_within_groups(detections.image_ids, detections.category_ids, detections.scores)
    pair_detection, pair_object, pair_iou = candidate_pairs(
        objects, detections, rank < max_det, float(thresholds.min())
    )
    # Pairs by detection rank, then detection, then preference: IoU descending, ties to the later object.
    order = np.lexsort((-pair_object, -pair_iou, pair_detection, rank[pair_detection]))
    pair_detection, pair_object, pair_iou = pair_detection[order], pair_object[order], pair_iou[order]
    pair_rank = rank[pair_detection]

    object_ignored = _outside(objects.areas, area_ranges) | objects.crowd[None, :]  # (A, G)
    taken = np.zeros((num_areas, num_thresholds, len(objects.scores)), dtype=bool)
    status = np.zeros((num_areas, num_thresholds, num_detections), dtype=np.int8)
    object_at = np.full(num_detections, -1, dtype=np.int64)
    iou_at = np.zeros(num_detections)
    bounds = np.searchsorted(pair_rank, np.arange(int(pair_rank.max(initial=-1)) + 2))
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        if start == stop:
            continue
        # One rank: each detection here is alone in its image and class.
        objects_here, iou_here = pair_object[start:stop], pair_iou[start:stop]
        detection_here = pair_detection[start:stop]
        segment_starts = np.flatnonzero(np.r_[True, detection_here[1:] != detection_here[:-1]])
        ignored = object_ignored[:, objects_here][:, None, :]  # (A, 1, S)
        valid = (iou_here[None, None, :] >= thresholds[None, :, None]) & (
            ~taken[:, :, objects_here] | objects.crowd[objects_here][None, None, :]
        )  # (A, T, S)
        position = np.arange(stop - start)
        none = stop - start
        first_counted = np.minimum.reduceat(
            np.where(valid & ~ignored, position, none), segment_starts, axis=2
        )
        first_ignored = np.minimum.reduceat(np.where(valid & ignored, position, none), segment_starts, axis=2)
        choice = np.where(first_counted < none, first_counted, first_ignored)  # (A, T, n) pair or none
        hit = choice < none
        a, t, segment = np.nonzero(hit)
        chosen = choice[a, t, segment]
        taken[a, t, objects_here[chosen]] = True
        status[a, t, detection_here[segment_starts[segment]]] = np.where(
            object_ignored[a, objects_here[chosen]], 2, 1
        )
        at = (a == 0) & (t == lrp_threshold)
        object_at[detection_here[segment_starts[segment[at]]]] = objects_here[chosen[at]]
        iou_at[detection_here[segment_starts[segment[at]]]] = iou_here[chosen[at]]
    return Matching(rank, status, object_at, iou_at)


def accumulate(
    objects: CocoArrays,
    detections: CocoArrays,
    matching: Matching,
    category_ids: np.ndarray,
    area_ranges: np.ndarray,
    max_dets: list[int],
) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall as ``COCOeval.accumulate()`` leaves them.

    Per class, area range and cap, the detections ranked below the cap in each image are taken in descending
    score (ties by image id, then rank); ignored ones count as neither TP nor FP. Precision is made monotone
    (the best at this recall or a higher one) and sampled at :data:`RECALL_THRESHOLDS`; -1 where the class has
    no counted object in the range.

    Only true positives are visited after one pass over the detections: precision falls at a false positive
    and stays at an ignored one, so its best value from any position on is reached at a true positive, the
    j-th of which has precision j / (j + false positives before it); the first position reaching a recall
    point is a true positive too (the first position, for recall 0).

    Returns:
        precision (T, R, K, A, M) and recall (T, K, A, M), ``eval["precision"]`` and ``eval["recall"]``.
    """
    num_thresholds = matching.status.shape[1]
    num_categories, num_areas, num_caps = len(category_ids), len(area_ranges), len(max_dets)
    precision = np.full((num_thresholds, len(RECALL_THRESHOLDS), num_categories, num_areas, num_caps), -1.0)
    recall = np.full((num_thresholds, num_categories, num_areas, num_caps), -1.0)
    counted_objects = ~(_outside(objects.areas, area_ranges) | objects.crowd[None, :])  # (A, G)
    kept = np.flatnonzero(matching.rank < max_dets[-1])
    order = kept[
        np.lexsort(
            (kept, detections.image_ids[kept], -detections.scores[kept], detections.category_ids[kept])
        )
    ]
    # (A, T, n) in that order: 1 true positive, 0 false positive, 2 ignored (unmatched outside the range too).
    status = matching.status[:, :, order]
    status[(status == 0) & _outside(detections.areas[order], area_ranges)[:, None, :]] = 2
    rank = matching.rank[order]
    bounds = np.searchsorted(detections.category_ids[order], np.r_[category_ids, np.iinfo(np.int64).max])
    for k, category in enumerate(category_ids):
        of_category = objects.category_ids == category
        rows = slice(bounds[k], bounds[k + 1])
        for m, cap in enumerate(max_dets):
            below_cap = None if cap >= max_dets[-1] else rank[rows] < cap
            for a in range(num_areas):
                num_positives = int((counted_objects[a] & of_category).sum())
                if num_positives == 0:
                    continue
                codes = status[a, :, rows] if below_cap is None else status[a, :, rows][:, below_cap]
                false_before = np.cumsum(codes == 0, axis=1, dtype=np.int32)
                threshold_index, position = np.nonzero(codes == 1)
                split = np.searchsorted(threshold_index, np.arange(1, num_thresholds))
                for t, false_at in enumerate(np.split(false_before[threshold_index, position], split)):
                    true_count = np.arange(1, len(false_at) + 1)
                    recalls = true_count / num_positives
                    precisions = true_count / (true_count + false_at)
                    best_from = np.maximum.accumulate(precisions[::-1])[::-1]
                    first = np.searchsorted(recalls, RECALL_THRESHOLDS, side="left")
                    reached = first < len(recalls)
                    precision[t, :, k, a, m] = (
                        np.where(reached, best_from[np.minimum(first, len(recalls) - 1)], 0.0)
                        if len(recalls)
                        else 0.0
                    )
                    recall[t, k, a, m] = len(recalls) / num_positives
    return precision, recall
