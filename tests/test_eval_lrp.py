"""Optimal LRP of metric=aitod: a case worked by hand, and a naive second implementation on random problems."""

import math

import numpy as np
import pytest

from kldet.errors import KLDetDataError
from kldet.evaluation import AITOD_PROTOCOL, CocoDetections, CocoProtocol, evaluate_coco, format_table
from kldet.evaluation.lrp import optimal_lrp

PER_CLASS = ("oLRP", "oLRP_loc", "oLRP_FP", "oLRP_FN", "oLRP_threshold")


def annotation(ann_id, image_id, category_id, box, crowd=0):
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": list(box),
        "area": float(box[2] * box[3]),
        "iscrowd": crowd,
    }


def detections(rows) -> CocoDetections:
    """rows: (image id, category id, xywh box, score)."""
    return CocoDetections(
        image_ids=np.array([r[0] for r in rows], np.int64),
        category_ids=np.array([r[1] for r in rows], np.int64),
        boxes=np.array([r[2] for r in rows], np.float64).reshape(-1, 4),
        scores=np.array([r[3] for r in rows], np.float64),
    )


NAMES = ["plane", "ship", "car", "boat"]


def hand_case():
    names = NAMES
    ground_truth = {
        "images": [{"id": 1}],
        "categories": [{"id": k + 1, "name": name} for k, name in enumerate(names)],
        "annotations": [
            annotation(1, 1, 1, [0, 0, 10, 10]),  # plane G1
            annotation(2, 1, 1, [20, 0, 10, 10]),  # plane G2
            annotation(3, 1, 1, [40, 0, 10, 10]),  # plane G3, never found
            annotation(4, 1, 1, [60, 0, 20, 20], crowd=1),  # plane crowd region: ignored
            annotation(5, 1, 2, [0, 50, 10, 10]),  # ship
            annotation(6, 1, 4, [0, 90, 10, 10]),  # boat, never detected
        ],  # no car
    }
    found = detections(
        [
            (1, 1, [0, 0, 10, 8], 0.9),  # d1: G1, IoU 80/100 = 0.8 -> TP, 1 - IoU = 0.2
            (1, 1, [60, 0, 10, 10], 0.8),  # d2: inside the crowd region -> neither TP nor FP
            (1, 1, [100, 100, 10, 10], 0.7),  # d3: nothing -> FP
            (1, 1, [20, 0, 10, 7], 0.6),  # d4: G2, IoU 70/100 = 0.7 -> TP, 1 - IoU = 0.3
            (1, 1, [0, 0, 10, 10], 0.5),  # d5: G1 again, already taken -> FP
            (1, 2, [30, 50, 10, 10], 0.4),  # ship: misses its object -> FP
            (1, 3, [0, 80, 5, 5], 0.3),  # car: a class without ground truth
        ]
    )
    return evaluate_coco(ground_truth, found, AITOD_PROTOCOL)


def test_olrp_worked_by_hand():
    got = hand_case()
    # plane, N_gt = 3 (the crowd box is not counted), LRP = (Loc / 0.5 + FP + FN) / (TP + FP + FN):
    #   d1:  TP 1 FP 0 FN 2 Loc 0.2 -> (0.4 + 0 + 2) / 3 = 0.8
    #   d3:  TP 1 FP 1 FN 2 Loc 0.2 -> (0.4 + 1 + 2) / 4 = 0.85
    #   d4:  TP 2 FP 1 FN 1 Loc 0.5 -> (1.0 + 1 + 1) / 4 = 0.75   <- optimal, threshold 0.6
    #   d5:  TP 2 FP 2 FN 1 Loc 0.5 -> (1.0 + 2 + 1) / 5 = 0.8
    # oLRP 0.75, loc 0.5 / 2 = 0.25, FP 1 / 3, FN 1 / 3.
    plane = [got[f"{key}_plane"] for key in PER_CLASS]
    assert plane == pytest.approx([0.75, 0.25, 1 / 3, 1 / 3, 0.6])
    # ship: detections but no TP -> oLRP 1, FN 1, the rest undefined; boat: no detection, the same.
    for name in ("ship", "boat"):
        assert [got[f"{key}_{name}"] for key in PER_CLASS] == [1.0, -1.0, -1.0, 1.0, -1.0]
    # car: no ground truth, left out.
    assert [got[f"{key}_car"] for key in PER_CLASS] == [-1.0] * 5
    # Means over the classes where each is defined: oLRP and FN over plane, ship, boat; loc, FP over plane.
    assert got["oLRP"] == pytest.approx((0.75 + 1 + 1) / 3)
    assert got["oLRP_FN"] == pytest.approx((1 / 3 + 1 + 1) / 3)
    assert got["oLRP_loc"] == pytest.approx(0.25) and got["oLRP_FP"] == pytest.approx(1 / 3)


def test_table_shows_olrp_for_aitod():
    table = format_table(hand_case(), "aitod", NAMES)
    assert "| oLRP | oLRP_loc | oLRP_FP | oLRP_FN |" in table
    assert "| 91.7 | 25.0     | 33.3    | 77.8    |" in table  # percentages, as AP
    assert "| plane | 37.0 | 75.0  | 25.0     | 33.3    | 33.3    | 0.600          |" in table
    assert "| car   | -    | -     | -        | -       | -       | -              |" in table


def test_optimal_lrp_takes_the_first_minimum_and_leaves_out_classes_without_ground_truth():
    # N_gt 2; ranked: TP IoU 1 (LRP (0 + 0 + 1) / 2 = 0.5), FP (0 + 1 + 1) / 3, TP IoU 0.5
    # ((1 / 0.5 + 1 + 0) / 3 = 1), so the first prefix; input order is not the ranking.
    result = optimal_lrp(np.array([0.2, 0.9, 0.5]), np.array([True, True, False]), np.array([0.5, 1.0, 0]), 2)
    assert result == pytest.approx((0.5, 0.0, 0.0, 0.5, 0.9))
    assert optimal_lrp(np.array([0.3]), np.array([False]), np.zeros(1), 0) is None


def test_detections_without_any_ground_truth_leave_olrp_undefined():
    ground_truth = {"images": [{"id": 1}], "categories": [{"id": 1, "name": "x"}], "annotations": []}
    got = evaluate_coco(ground_truth, detections([(1, 1, [0, 0, 5, 5], 0.5)]), AITOD_PROTOCOL)
    assert [got[key] for key in ("oLRP", "oLRP_loc", "oLRP_FP", "oLRP_FN", "oLRP_x")] == [-1.0] * 5


def test_class_names_that_collide_through_olrp_keys_are_an_error():
    # "x" gives oLRP_loc_x, and so does "loc_x" (as its oLRP key).
    ground_truth = {
        "images": [{"id": 1}],
        "categories": [{"id": 1, "name": "x"}, {"id": 2, "name": "loc_x"}],
        "annotations": [annotation(1, 1, 1, [0, 0, 5, 5])],
    }
    with pytest.raises(KLDetDataError, match="'oLRP_loc_x'"):
        evaluate_coco(ground_truth, detections([]), AITOD_PROTOCOL)


# ---------------------------------------------------------------- a naive second implementation


def naive_iou(detection, box, crowd):
    """IoU of xywh boxes; against a crowd box, intersection over the detection's area (as COCO)."""
    (x, y, w, h), (gx, gy, gw, gh) = detection, box
    iw = max(0.0, min(x + w, gx + gw) - max(x, gx))
    ih = max(0.0, min(y + h, gy + gh) - max(y, gy))
    inter = iw * ih
    union = w * h if crowd else w * h + gw * gh - inter
    return inter / union


def naive_olrp(ground_truth, rows, category_id, max_det, tau=0.5):
    """oLRP of one class: greedy COCO matching per image, then every score prefix in a loop."""
    gts = [a for a in ground_truth["annotations"] if a["category_id"] == category_id]
    num_gt = sum(1 for a in gts if not a["iscrowd"])
    if num_gt == 0:
        return None
    ranked = []  # (score, is TP, IoU) over images, image by image
    for image in sorted(i["id"] for i in ground_truth["images"]):
        image_gts = sorted((a for a in gts if a["image_id"] == image), key=lambda a: a["iscrowd"])
        taken = [False] * len(image_gts)
        image_rows = [r for r in rows if r[0] == image and r[1] == category_id]
        image_rows = sorted(image_rows, key=lambda r: -r[3])[:max_det]
        for _, _, box, score in image_rows:
            best, match = tau, None
            for g, gt in enumerate(image_gts):
                if taken[g] and not gt["iscrowd"]:
                    continue
                if match is not None and not image_gts[match]["iscrowd"] and gt["iscrowd"]:
                    break
                iou = naive_iou(box, gt["bbox"], gt["iscrowd"])
                if iou >= best:
                    best, match = iou, g
            if match is None:
                ranked.append((score, False, 0.0))
            elif not image_gts[match]["iscrowd"]:
                taken[match] = True
                ranked.append((score, True, best))
    ranked.sort(key=lambda r: -r[0])
    best_lrp, best_values = math.inf, None
    for i in range(1, len(ranked) + 1):
        tp = sum(1 for r in ranked[:i] if r[1])
        fp = i - tp
        fn = num_gt - tp
        loc = sum(1 - r[2] for r in ranked[:i] if r[1])
        lrp = (loc / (1 - tau) + fp + fn) / (tp + fp + fn)
        if lrp < best_lrp and tp > 0:
            best_lrp, best_values = lrp, [lrp, loc / tp, fp / (tp + fp), fn / num_gt, ranked[i - 1][0]]
    return [1.0, -1.0, -1.0, 1.0, -1.0] if best_values is None else best_values


def random_problem(seed):
    """4 images, 3 classes: a few objects (class 2 sometimes absent), jittered and spurious detections,
    crowd regions of class 0 with detections on them."""
    rng = np.random.default_rng(seed)
    annotations, rows = [], []
    for image in range(1, 5):
        num = int(rng.integers(0, 7))
        xy = rng.uniform(0, 200, (num, 2))
        wh = rng.uniform(4, 30, (num, 2))
        labels = rng.integers(0, 2 if seed % 2 else 3, num)
        for (x, y), (w, h), label in zip(xy, wh, labels, strict=True):
            annotations.append(annotation(len(annotations) + 1, image, int(label) + 1, [x, y, w, h]))
            for _ in range(int(rng.integers(0, 3))):
                jitter = rng.normal(0, 0.15, 4) * [w, h, w, h]
                rows.append(
                    (image, int(label) + 1, [x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3]])
                )
        crowd = [*rng.uniform(0, 150, 2), 40.0, 40.0]
        annotations.append(annotation(len(annotations) + 1, image, 1, crowd, crowd=1))
        rows.append((image, 1, [crowd[0] + 5, crowd[1] + 5, 10.0, 10.0]))
        for _ in range(int(rng.integers(1, 6))):
            rows.append((image, int(rng.integers(1, 4)), [*rng.uniform(0, 200, 2), *rng.uniform(4, 30, 2)]))
    ground_truth = {
        "images": [{"id": i} for i in range(1, 5)],
        "categories": [{"id": k, "name": f"c{k}"} for k in (1, 2, 3)],
        "annotations": annotations,
    }
    scores = rng.uniform(0.01, 1, len(rows))
    return ground_truth, [(*row, float(s)) for row, s in zip(rows, scores, strict=True)]


@pytest.mark.parametrize("seed", range(8))
def test_olrp_equals_a_naive_implementation(seed):
    # A per-image cap of 3 per class, so that the cut to the top detections counts too.
    protocol = CocoProtocol(AITOD_PROTOCOL.area_ranges, (1, 2, 3), olrp=True)
    ground_truth, rows = random_problem(seed)
    got = evaluate_coco(ground_truth, detections(rows), protocol)
    expected = {k: naive_olrp(ground_truth, rows, k, max_det=3) for k in (1, 2, 3)}
    for k, values in expected.items():
        if values is None:
            values = [-1.0] * 5
        assert [got[f"{key}_c{k}"] for key in PER_CLASS] == pytest.approx(values, abs=1e-9)
    defined = [v for v in expected.values() if v is not None]
    assert got["oLRP"] == pytest.approx(np.mean([v[0] for v in defined]), abs=1e-9)
    assert 0 < got["oLRP"] < 1
