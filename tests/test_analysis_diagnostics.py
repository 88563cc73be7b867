"""Error analysis (kldet.analysis.diagnostics): PR curves that integrate to the engine's AP, the confusion
matrix and the TIDE breakdown on hand-made cases whose answer is known."""

import numpy as np
import pytest

from kldet.analysis.diagnostics import (
    ERROR_TYPES,
    FALSE_POSITIVE,
    NOT_COUNTED,
    TRUE_POSITIVE,
    confusion_matrix,
    error_breakdown,
    match_outcomes,
    pr_curves,
    row_normalised,
)
from kldet.evaluation.coco import AITOD_PROTOCOL, CocoDetections, coco_evaluation, summarize_evaluation

CATEGORIES = [{"id": 1, "name": "car"}, {"id": 2, "name": "ship"}]


def ground_truth(objects: list[tuple[int, int, list[float]]], num_images: int = 1) -> dict:
    """COCO ground truth of ``(image_id, category_id, [x, y, w, h])`` objects."""
    return {
        "images": [{"id": i} for i in range(1, num_images + 1)],
        "categories": CATEGORIES,
        "annotations": [
            {"id": n, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            for n, (i, c, b) in enumerate(objects, 1)
        ],
    }


def detections(found: list[tuple[int, int, list[float], float]]) -> CocoDetections:
    """``(image_id, category_id, [x, y, w, h], score)`` detections."""
    return CocoDetections(
        image_ids=np.array([f[0] for f in found], np.int64),
        category_ids=np.array([f[1] for f in found], np.int64),
        boxes=np.array([f[2] for f in found], np.float64).reshape(-1, 4),
        scores=np.array([f[3] for f in found], np.float64),
    )


A, B, C = [10.0, 10, 10, 10], [50.0, 50, 10, 10], [70.0, 10, 10, 10]  # 10 x 10: the AI-TOD "tiny" bin
SHIFTED_A = [14.0, 10, 10, 10]  # IoU 60 / 140 = 0.43 with A: under 0.5, over 0.1
NEAR_A = [11.0, 10, 10, 10]  # IoU 90 / 110 = 0.82
FAR = [80.0, 80, 10, 10]  # overlaps nothing

# error type -> (objects, detections with that one error, the AP50 before fixing it)
CASES = {
    "localisation": ([(1, 1, A)], [(1, 1, SHIFTED_A, 0.9)], 0.0),
    "classification": ([(1, 1, A)], [(1, 2, A, 0.9)], 0.0),
    # A duplicate hurts only when it outranks a true positive: TP, FP, TP -> (51 * 1 + 50 * 2/3) / 101.
    "duplicate": (
        [(1, 1, A), (1, 1, B)],
        [(1, 1, A, 0.9), (1, 1, NEAR_A, 0.8), (1, 1, B, 0.7)],
        (51 + 50 * 2 / 3) / 101,
    ),
    "background": ([(1, 1, A)], [(1, 1, FAR, 0.9), (1, 1, A, 0.7)], 0.5),
    # Ship: the wrong-class, mislocalised detection first, then the true ship (AP 0.5); car found (AP 1).
    "both": ([(1, 1, A), (1, 2, C)], [(1, 2, SHIFTED_A, 0.9), (1, 1, A, 0.8), (1, 2, C, 0.5)], 0.75),
    "missed": ([(1, 1, A), (1, 1, B)], [(1, 1, A, 0.9)], 51 / 101),
}


@pytest.mark.parametrize("error", ERROR_TYPES)
def test_each_hand_made_error_is_found_and_fixing_it_gives_ap_100(error):
    objects, found, base_ap = CASES[error]
    evaluation = coco_evaluation(ground_truth(objects), detections(found), AITOD_PROTOCOL)
    by_area = {b.area: b for b in error_breakdown(evaluation)}
    for area in ("all", "t"):  # every box is tiny: the "t" bin is the whole set
        breakdown = by_area[area]
        assert breakdown.ap == pytest.approx(base_ap)
        assert breakdown.counts == {e: int(e == error) for e in ERROR_TYPES}
        assert breakdown.delta_ap == pytest.approx(
            {e: (1 - base_ap) if e == error else 0.0 for e in ERROR_TYPES}
        )
    for area in ("vt", "s", "m"):  # no object there
        assert by_area[area].ap == -1 and set(by_area[area].delta_ap.values()) == {0.0}
    # The breakdown's AP is the engine's AP50 of the range.
    assert by_area["all"].ap == pytest.approx(max(summarize_evaluation(evaluation)["AP50"], 0))


def test_a_localisation_error_on_a_found_object_is_removed_not_moved():
    # The shifted box's object is already found: fixing localisation removes it (TIDE), the AP rises to 1.
    evaluation = coco_evaluation(
        ground_truth([(1, 1, A)]), detections([(1, 1, SHIFTED_A, 0.9), (1, 1, A, 0.8)]), AITOD_PROTOCOL
    )
    breakdown = error_breakdown(evaluation)[0]
    assert breakdown.counts["localisation"] == 1 and breakdown.ap == pytest.approx(0.5)
    assert breakdown.delta_ap["localisation"] == pytest.approx(0.5)


def test_two_localisation_errors_on_one_object_give_it_to_the_better_score():
    evaluation = coco_evaluation(
        ground_truth([(1, 1, A)]),
        detections([(1, 1, SHIFTED_A, 0.6), (1, 1, [10.0, 14, 10, 10], 0.9)]),
        AITOD_PROTOCOL,
    )
    breakdown = error_breakdown(evaluation)[0]
    assert breakdown.counts["localisation"] == 2 and breakdown.counts["missed"] == 0
    assert breakdown.delta_ap["localisation"] == pytest.approx(1.0)  # one fixed, the other removed


def random_problem(seed: int, num_images: int = 6):
    rng = np.random.default_rng(seed)
    objects, found = [], []
    for image in range(1, num_images + 1):
        for _ in range(rng.integers(0, 12)):
            size = rng.uniform(3, 40, 2)
            box = [*rng.uniform(0, 200, 2), *size]
            category = int(rng.integers(1, 3))
            objects.append((image, category, box))
            if rng.random() < 0.8:
                jitter = rng.normal(0, 0.15, 4) * np.r_[size, size]
                category = category if rng.random() < 0.85 else 3 - category
                found.append((image, category, list(np.array(box) + jitter), float(rng.random())))
        for _ in range(rng.integers(0, 5)):
            found.append(
                (image, int(rng.integers(1, 3)), [*rng.uniform(0, 200, 2), 8, 8], float(rng.random()))
            )
    return ground_truth(objects, num_images), detections(found)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_area_under_each_pr_curve_is_the_engines_ap(seed):
    evaluation = coco_evaluation(*random_problem(seed), AITOD_PROTOCOL)
    metrics = summarize_evaluation(evaluation)
    curves = pr_curves(evaluation)
    assert curves.precision.shape == (2, 3, 5, 101)
    area_under = curves.precision.mean(axis=-1)  # the 101-point mean: COCO's AP (NaN: no objects)
    all_classes = curves.classes.index("all")
    for k, name in enumerate(curves.classes[:-1]):
        assert area_under[1, k, 0] == pytest.approx(metrics[f"AP_{name}"])
    assert area_under[0, all_classes, 0] == pytest.approx(metrics["AP50"])
    assert area_under[1, all_classes, 0] == pytest.approx(metrics["AP"])
    for a, key in enumerate(curves.areas[1:], 1):
        expected = metrics[f"AP_{key}"]
        got = area_under[1, all_classes, a]
        assert (np.isnan(got) and expected == -1) or got == pytest.approx(expected)
    # Precision is monotone along recall, as the engine interpolates it.
    valid = curves.precision[~np.isnan(curves.precision[..., 0])]
    assert (np.diff(valid, axis=-1) <= 1e-12).all()
    # The breakdown's AP of each range is the engine's AP50 of that range.
    iou50 = 0
    for breakdown, a in zip(error_breakdown(evaluation), range(5), strict=True):
        expected = area_under[iou50, all_classes, a]
        assert breakdown.ap == pytest.approx(-1 if np.isnan(expected) else expected)


def test_fixing_every_error_type_of_a_random_problem_never_lowers_the_ap_and_counts_add_up():
    evaluation = coco_evaluation(*random_problem(3, num_images=10), AITOD_PROTOCOL)
    breakdown = error_breakdown(evaluation)[0]
    outcomes = match_outcomes(evaluation.objects, evaluation.detections, 1500, score_thresh=0.0)
    false_positives = int((outcomes.detection == FALSE_POSITIVE).sum())
    assert sum(breakdown.counts[e] for e in ERROR_TYPES[:-1]) == false_positives
    assert breakdown.counts["missed"] <= int(outcomes.missed.sum())
    assert all(0 <= gain <= 1 - breakdown.ap + 1e-12 for gain in breakdown.delta_ap.values())


def test_confusion_matrix_counts_hand_made_confusions_background_and_misses():
    d = [20.0, 60, 10, 10]
    objects = [(1, 1, A), (1, 1, B), (1, 2, C), (1, 1, d)]
    found = [
        (1, 1, A, 0.9),  # true positive car
        (1, 2, B, 0.8),  # a car detected as a ship
        (1, 1, FAR, 0.7),  # background detected as a car
        (1, 1, d, 0.1),  # under the threshold 0.3: d is missed, C (ship) has no detection
    ]
    evaluation = coco_evaluation(ground_truth(objects), detections(found), AITOD_PROTOCOL)
    counts = confusion_matrix(evaluation, score_thresh=0.3)
    # rows: car, ship, background; columns: car, ship, missed
    assert counts.tolist() == [[1, 1, 1], [0, 0, 1], [1, 0, 0]]
    assert row_normalised(counts)[0].tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3])
    assert row_normalised(np.zeros((2, 2), np.int64)).tolist() == [[0, 0], [0, 0]]
    outcomes = match_outcomes(evaluation.objects, evaluation.detections, 1500, score_thresh=0.3)
    assert outcomes.detection.tolist() == [TRUE_POSITIVE, FALSE_POSITIVE, FALSE_POSITIVE, NOT_COUNTED]
    assert outcomes.missed.tolist() == [False, True, True, True]


def test_confusion_matrix_diagonal_is_the_true_positives_of_the_metric():
    evaluation = coco_evaluation(*random_problem(4, num_images=8), AITOD_PROTOCOL)
    counts = confusion_matrix(evaluation, score_thresh=0.0)
    outcomes = match_outcomes(evaluation.objects, evaluation.detections, 1500, score_thresh=0.0)
    assert np.trace(counts[:2, :2]) == int((outcomes.detection == TRUE_POSITIVE).sum())
    # Every counted detection is in one column, every counted object in one row.
    assert counts[:, :2].sum() == int((outcomes.detection != NOT_COUNTED).sum())
    assert counts[:2].sum() == len(evaluation.objects.scores)
