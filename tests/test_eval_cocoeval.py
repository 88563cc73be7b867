"""The array COCO evaluation (kldet.evaluation.cocoeval) against faster-coco-eval, bit for bit, on random
problems built to make the rules bite: near-duplicate detections, tied scores, crowd regions, objects on the
area-range edges, per-image caps smaller than the detections."""

import copy

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kldet.evaluation import AITOD_PROTOCOL, COCO_PROTOCOL, CocoDetections, CocoProtocol, configure_params
from kldet.evaluation.coco import IOU_THRESHOLDS, detections_dataset, evaluate_coco, object_arrays
from kldet.evaluation.cocoeval import CocoArrays, accumulate, box_iou_coco, match

# Small caps, so that the per-image cut and the caps between matter.
TIGHT_PROTOCOL = CocoProtocol(
    area_ranges=(("all", "all", 0.0, 1e10), ("s", "small", 0, 10**2), ("m", "medium", 10**2, 1e10)),
    max_dets=(1, 3, 6),
    olrp=True,
)


def random_problem(seed: int) -> tuple[dict, CocoDetections]:
    rng = np.random.default_rng(seed)
    num_images, num_classes = int(rng.integers(1, 5)), int(rng.integers(1, 4))
    annotations, parts = [], []
    for image_id in range(1, num_images + 1):
        num_objects = int(rng.integers(0, 7))
        # Sides around 10 px, some exactly 10 (an area-range edge).
        sides = np.where(rng.uniform(size=(num_objects, 2)) < 0.2, 10.0, rng.uniform(3, 20, (num_objects, 2)))
        corners = rng.uniform(0, 30, (num_objects, 2))  # crowded: objects overlap each other
        twins = rng.uniform(size=num_objects) < 0.25  # a copy of the previous object: IoU ties
        twins[:1] = False
        corners[twins], sides[twins] = corners[np.flatnonzero(twins) - 1], sides[np.flatnonzero(twins) - 1]
        labels = rng.integers(1, num_classes + 1, num_objects)
        labels[twins] = labels[np.flatnonzero(twins) - 1]
        for corner, side, label in zip(corners, sides, labels, strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": [*corner.tolist(), *side.tolist()],
                    "area": float(side[0] * side[1]) if rng.uniform() < 0.8 else float(rng.uniform(50, 150)),
                    "iscrowd": int(rng.uniform() < 0.15),
                }
            )
        num_detections = int(rng.integers(0, 12))
        source = rng.integers(0, max(num_objects, 1), num_detections)
        if num_objects:
            boxes = np.concatenate([corners[source], sides[source]], 1) + rng.normal(
                0, 1.5, (num_detections, 4)
            )
        else:
            boxes = rng.uniform(1, 30, (num_detections, 4))
        boxes[:, 2:] = np.abs(boxes[:, 2:]) + 0.5
        duplicate = rng.uniform(size=num_detections) < 0.2  # an exact copy of its object
        if num_objects:
            boxes[duplicate] = np.concatenate([corners[source], sides[source]], 1)[duplicate]
        labels = np.where(rng.uniform(size=num_detections) < 0.8, labels[source] if num_objects else 1, 1)
        scores = np.round(rng.uniform(size=num_detections), 1)  # ties
        parts.append((np.full(num_detections, image_id), labels, boxes, scores))
    ground_truth = {
        "images": [{"id": i} for i in range(1, num_images + 1)],
        "annotations": annotations,
        "categories": [{"id": k, "name": f"c{k}"} for k in range(1, num_classes + 1)],
    }
    image_ids, labels, boxes, scores = (np.concatenate(p) for p in zip(*parts, strict=True))
    return ground_truth, CocoDetections(
        image_ids.astype(np.int64), labels.astype(np.int64), boxes.reshape(-1, 4), scores.astype(np.float64)
    )


def faster_coco_eval(
    ground_truth: dict, detections: CocoDetections, protocol: CocoProtocol
) -> COCOeval_faster:
    evaluator = COCOeval_faster(
        COCO(copy.deepcopy(ground_truth)), COCO(detections_dataset(ground_truth, detections)), "bbox"
    )
    configure_params(evaluator.params, protocol)
    evaluator.evaluate()
    evaluator.accumulate()
    return evaluator


def as_arrays(ground_truth: dict, detections: CocoDetections):
    category_ids = np.array(sorted(c["id"] for c in ground_truth["categories"]))
    objects = object_arrays(
        ground_truth["annotations"], [i["id"] for i in ground_truth["images"]], category_ids
    )
    found = CocoArrays(
        detections.image_ids,
        detections.category_ids,
        detections.boxes,
        detections.boxes[:, 2] * detections.boxes[:, 3],
        detections.scores,
        np.zeros(len(detections.scores), bool),
    )
    return objects, found, category_ids


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1), protocol=st.sampled_from([TIGHT_PROTOCOL, AITOD_PROTOCOL, COCO_PROTOCOL])
)
def test_precision_and_recall_equal_faster_coco_eval_bit_for_bit(seed, protocol):
    ground_truth, detections = random_problem(seed)
    objects, found, category_ids = as_arrays(ground_truth, detections)
    area_ranges = np.array([[low, high] for *_, low, high in protocol.area_ranges])
    matching = match(objects, found, IOU_THRESHOLDS, area_ranges, protocol.max_dets[-1])
    precision, recall = accumulate(
        objects, found, matching, category_ids, area_ranges, list(protocol.max_dets)
    )
    reference = faster_coco_eval(ground_truth, detections, protocol)
    np.testing.assert_array_equal(precision, reference.eval["precision"])
    np.testing.assert_array_equal(recall, reference.eval["recall"])


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_the_olrp_matching_is_faster_coco_eval_s_at_iou_half_all_areas_last_cap(seed):
    ground_truth, detections = random_problem(seed)
    objects, found, _ = as_arrays(ground_truth, detections)
    _, _, low, high = TIGHT_PROTOCOL.area_ranges[0]
    iou50 = int(np.flatnonzero(np.isclose(IOU_THRESHOLDS, 0.5))[0])
    matching = match(objects, found, IOU_THRESHOLDS, np.array([[low, high]]), 6, lrp_threshold=iou50)
    single = CocoProtocol(area_ranges=(("all", "all", low, high),), max_dets=(6,))
    evaluator = COCOeval_faster(
        COCO(copy.deepcopy(ground_truth)), COCO(detections_dataset(ground_truth, detections)), "bbox"
    )
    configure_params(evaluator.params, single)
    evaluator.params.iouThrs = np.array([0.5])
    evaluator.evaluate()
    expected = evaluator.eval["matched"]  # "detection id_object id" -> IoU, ids from 1
    matched = np.flatnonzero(matching.object_at >= 0)
    got = {f"{d + 1}_{matching.object_at[d] + 1}": matching.iou_at[d] for d in matched}
    assert got == expected


def test_crowd_iou_divides_by_the_detection_area():
    detections = np.array([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 2.0, 2.0], [5.0, 5.0, 1.0, 1.0]])
    objects = np.array([[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 4.0, 4.0]])
    # Inside a 4x4 region: 4 / 16 as a box, 4 / 4 as a crowd; disjoint: 0.
    np.testing.assert_array_equal(
        box_iou_coco(detections, objects, np.array([False, True, True])), [4 / 16, 1.0, 0.0]
    )


def test_evaluate_coco_with_no_detections_and_a_class_without_objects():
    ground_truth = {
        "images": [{"id": 1}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100.0}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
    empty = CocoDetections(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0))
    metrics = evaluate_coco(ground_truth, empty, AITOD_PROTOCOL)
    # Class a has an object and nothing found (AP 0); class b has no object (undefined, -1).
    assert (metrics["AP_a"], metrics["AP_b"], metrics["AP"], metrics["AR@1500"]) == (0.0, -1.0, 0.0, 0.0)
    assert (metrics["oLRP_a"], metrics["oLRP_FN_a"], metrics["oLRP_b"]) == (1.0, 1.0, -1.0)


def test_an_iou_equal_to_the_threshold_matches():
    ground_truth = {
        "images": [{"id": 1}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "area": 16.0}],
        "categories": [{"id": 1, "name": "a"}],
    }
    # Intersection 8, union 16: IoU exactly 0.5.
    half = CocoDetections(np.array([1]), np.array([1]), np.array([[0.0, 0.0, 4.0, 2.0]]), np.array([0.9]))
    metrics = evaluate_coco(ground_truth, half, AITOD_PROTOCOL)
    assert (metrics["AP50"], metrics["AP75"], metrics["oLRP_loc_a"]) == (1.0, 0.0, 0.5)
