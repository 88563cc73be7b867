"""COCO / AI-TOD evaluation: pycocotools as the reference, hand-worked cases, the Metric, DDP, kldet-eval."""

import contextlib
import copy
import io
import json
import os
import re
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pycocotools.coco import COCO as PyCOCO
from pycocotools.cocoeval import COCOeval as PyCOCOeval

from kldet.cli.evaluate import main as kldet_eval
from kldet.errors import KLDetDataError
from kldet.evaluation import (
    AITOD_PROTOCOL,
    COCO_PROTOCOL,
    CocoDetections,
    DetectionMetric,
    configure_params,
    evaluate_coco,
    summarize,
)

CLASSES = ["plane", "ship", "vehicle"]
PROTOCOL_OF = {"aitod": AITOD_PROTOCOL, "coco": COCO_PROTOCOL}


def random_images(seed: int, num_images: int = 24, crowded_image: bool = True) -> list[dict]:
    """Images with objects of every AI-TOD and COCO size bin, noisy detections, crowd boxes.

    Coordinates sit on a 1/8 pixel grid so that float32 xyxy and float64 xywh describe the same boxes.
    Image 0 holds 150 objects and 450 detections of one class, beyond the 100 / 300 caps.
    """
    rng = np.random.default_rng(seed)
    images = []
    for i in range(num_images):
        crowded = crowded_image and i == 0
        num = 150 if crowded else (int(rng.integers(1, 25)) if i % 6 else 0)  # every 6th: no objects
        side = np.exp(rng.uniform(np.log(2), np.log(2 if crowded else 150), (num, 2))) + (6 if crowded else 0)
        xy = rng.uniform(0, 700, (num, 2))
        gt_boxes = np.concatenate([xy, xy + side], 1)
        gt_labels = np.zeros(num, np.int64) if crowded else rng.integers(0, len(CLASSES), num)
        copies = rng.integers(0, 4, num) if not crowded else np.full(num, 3)
        source = np.repeat(np.arange(num), copies)
        size = np.repeat(side, 2, axis=1)[source]
        jittered = gt_boxes[source] + rng.normal(0, 0.12, (len(source), 4)) * size
        jittered[:, 2:] = np.maximum(jittered[:, 2:], jittered[:, :2] + 0.5)
        labels = gt_labels[source].copy()
        relabel = rng.uniform(size=len(source)) < 0.1
        labels[relabel] = rng.integers(0, len(CLASSES), int(relabel.sum()))
        num_background = int(rng.integers(0, 8))
        bxy = rng.uniform(0, 700, (num_background, 2))
        background = np.concatenate([bxy, bxy + rng.uniform(2, 60, (num_background, 2))], 1)
        num_ignored = int(rng.uniform() < 0.3)
        ixy = rng.uniform(0, 700, (num_ignored, 2))
        ignored = np.concatenate([ixy, ixy + rng.uniform(10, 80, (num_ignored, 2))], 1)
        boxes = np.concatenate([jittered, background])
        images.append(
            {
                "image_id": 100 + i,
                "gt_boxes": _snap(gt_boxes),
                "gt_labels": gt_labels,
                "ignored": _snap(ignored),
                "ignored_labels": rng.integers(0, len(CLASSES), num_ignored),
                "boxes": _snap(boxes),
                "labels": np.concatenate([labels, rng.integers(0, len(CLASSES), num_background)]),
                "scores": rng.uniform(0.01, 1, len(boxes)).astype(np.float32),
            }
        )
    return images


def without_lrp(metrics: dict) -> dict:
    """The AP and AR keys, which pycocotools also computes (oLRP is tested in test_eval_lrp.py)."""
    return {key: value for key, value in metrics.items() if not key.startswith("oLRP")}


def _snap(boxes: np.ndarray) -> np.ndarray:
    return (np.round(boxes.reshape(-1, 4) * 8) / 8).astype(np.float32)


def coco_ground_truth(images: list[dict]) -> dict:
    """COCO dict: category id = label + 1, area = w * h, each ignored box a crowd box of its class."""
    annotations = []
    for image in images:
        rows = [(box, label + 1, 0) for box, label in zip(image["gt_boxes"], image["gt_labels"], strict=True)]
        rows += [
            (box, label + 1, 1) for box, label in zip(image["ignored"], image["ignored_labels"], strict=True)
        ]
        for box, category_id, crowd in rows:
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image["image_id"],
                    "category_id": int(category_id),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": crowd,
                }
            )
    return {
        "images": [{"id": image["image_id"], "width": 800, "height": 800} for image in images],
        "annotations": annotations,
        "categories": [{"id": c + 1, "name": name} for c, name in enumerate(CLASSES)],
    }


def coco_results(images: list[dict]) -> list[dict]:
    return [
        {
            "image_id": image["image_id"],
            "category_id": int(label) + 1,
            "bbox": [float(x1), float(y1), float(x2) - float(x1), float(y2) - float(y1)],
            "score": float(score),
        }
        for image in images
        for (x1, y1, x2, y2), label, score in zip(
            image["boxes"], image["labels"], image["scores"], strict=True
        )
    ]


def as_detections(results: list[dict]) -> CocoDetections:
    return CocoDetections(
        image_ids=np.array([r["image_id"] for r in results], np.int64),
        category_ids=np.array([r["category_id"] for r in results], np.int64),
        boxes=np.array([r["bbox"] for r in results], np.float64).reshape(-1, 4),
        scores=np.array([r["score"] for r in results], np.float64),
    )


def pycocotools_eval(ground_truth: dict, results: list[dict], protocol) -> PyCOCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = PyCOCO()
        coco_gt.dataset = copy.deepcopy(ground_truth)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        evaluator = PyCOCOeval(coco_gt, coco_dt, "bbox")
        configure_params(evaluator.params, protocol)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def metric_inputs(images: list[dict]) -> tuple[list[dict], list[dict]]:
    preds = [
        {
            "boxes": torch.from_numpy(im["boxes"]),
            "scores": torch.from_numpy(im["scores"]),
            "labels": torch.from_numpy(im["labels"]),
        }
        for im in images
    ]
    targets = [
        {
            "boxes": torch.from_numpy(np.concatenate([im["gt_boxes"], im["ignored"]])),
            "labels": torch.from_numpy(np.concatenate([im["gt_labels"], im["ignored_labels"]])),
            "ignore": torch.arange(len(im["gt_boxes"]) + len(im["ignored"])) >= len(im["gt_boxes"]),
            "image_id": im["image_id"],
        }
        for im in images
    ]
    return preds, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", ["aitod", "coco"])
def test_equals_pycocotools_on_random_detections(seed, kind):
    protocol = PROTOCOL_OF[kind]
    images = random_images(seed)
    ground_truth, results = coco_ground_truth(images), coco_results(images)
    reference = pycocotools_eval(ground_truth, results, protocol)
    expected = summarize(reference.eval["precision"], reference.eval["recall"], protocol, CLASSES)
    got = evaluate_coco(copy.deepcopy(ground_truth), as_detections(results), protocol)
    assert list(without_lrp(got)) == protocol.summary_keys + [f"AP_{name}" for name in CLASSES]
    np.testing.assert_allclose(list(without_lrp(got).values()), list(expected.values()), rtol=0, atol=1e-6)
    # The data must exercise what is compared: every size bin scored, the caps biting.
    assert all(got[key] > 0 for key in protocol.summary_keys)
    assert got[f"AR@{protocol.max_dets[0]}"] < got[f"AR@{protocol.max_dets[-1]}"]
    if kind == "coco":  # pycocotools' own summary knows these ranges: the reading of the arrays agrees
        np.testing.assert_allclose(list(expected.values())[:12], reference.stats, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["aitod", "coco"])
def test_perfect_detections_score_one(kind):
    protocol = PROTOCOL_OF[kind]
    images = random_images(3, crowded_image=False)
    for image in images:
        image["boxes"], image["labels"] = image["gt_boxes"], image["gt_labels"]
        image["scores"] = np.ones(len(image["gt_boxes"]), np.float32)
    ground_truth = coco_ground_truth(images)
    got = evaluate_coco(ground_truth, as_detections(coco_results(images)), protocol)
    areas = np.array([a["area"] for a in ground_truth["annotations"] if not a["iscrowd"]])
    for key, _, low, high in protocol.area_ranges[1:]:
        has_objects = ((areas >= low) & (areas <= high)).any()
        assert got[f"AP_{key}"] == got[f"AR_{key}"] == (1.0 if has_objects else -1.0)
    assert got["AP"] == got["AP50"] == got["AP75"] == got[f"AR@{protocol.max_dets[-1]}"] == 1.0
    assert all(got[f"AP_{name}"] == 1.0 for name in CLASSES)


def test_no_detections_score_zero():
    images = random_images(4)
    got = evaluate_coco(coco_ground_truth(images), as_detections([]), AITOD_PROTOCOL)
    assert set(without_lrp(got).values()) == {0.0}
    # Every object missed: oLRP 1 (all false negatives); localisation, FP and the threshold undefined.
    assert got["oLRP"] == got["oLRP_FN"] == 1.0 and got["oLRP_loc"] == got["oLRP_FP"] == -1.0


def test_images_without_ground_truth():
    # Image 1: one plane, found exactly. Image 2: no objects, one plane detection.
    ground_truth = {
        "images": [{"id": 1}, {"id": 2}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 6, 6], "area": 36, "iscrowd": 0}
        ],
        "categories": [{"id": 1, "name": "plane"}],
    }

    def detections(false_score):
        return CocoDetections(
            np.array([1, 2]),
            np.array([1, 1]),
            np.array([[10.0, 10, 6, 6], [50, 50, 6, 6]]),
            np.array([0.9, false_score]),
        )

    # The false detection ranked first: precision 0 at recall 0, then 1/2 at recall 1, at every IoU
    # threshold; interpolated precision is 1/2 at all 101 recall points.
    first = evaluate_coco(ground_truth, detections(0.95), AITOD_PROTOCOL)
    assert first["AP"] == pytest.approx(0.5) and first["AP_vt"] == pytest.approx(0.5)
    assert first["AR@100"] == 1.0
    # Ranked last it costs nothing: precision 1 up to recall 1.
    last = evaluate_coco(ground_truth, detections(0.5), AITOD_PROTOCOL)
    assert last["AP"] == 1.0
    # The empty tiny / small / medium ranges stay undefined.
    assert last["AP_t"] == last["AP_s"] == last["AP_m"] == -1.0


def test_aitod_size_bins():
    # Squares of side 6 (very tiny), 8 (area 64: the very-tiny / tiny border, in both, as in the AI-TOD
    # cocoapi), 12 (tiny), 24 (small), 40 (medium). Only the side-12 one is detected.
    sides = [6, 8, 12, 24, 40]
    ground_truth = {
        "images": [{"id": 1}],
        "annotations": [
            {
                "id": k + 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [60 * k, 0, s, s],
                "area": s * s,
                "iscrowd": 0,
            }
            for k, s in enumerate(sides)
        ],
        "categories": [{"id": 1, "name": "plane"}],
    }
    found = CocoDetections(np.array([1]), np.array([1]), np.array([[120.0, 0, 12, 12]]), np.array([1.0]))
    got = evaluate_coco(ground_truth, found, AITOD_PROTOCOL)
    assert list(got) == [
        *("AP", "AP50", "AP75", "AP_vt", "AP_t", "AP_s", "AP_m"),
        *("AR@100", "AR@300", "AR@1500", "AR_vt", "AR_t", "AR_s", "AR_m"),
        *("oLRP", "oLRP_loc", "oLRP_FP", "oLRP_FN", "AP_plane"),
        *("oLRP_plane", "oLRP_loc_plane", "oLRP_FP_plane", "oLRP_FN_plane", "oLRP_threshold_plane"),
    ]
    assert got["AP_vt"] == got["AP_s"] == got["AP_m"] == got["AR_vt"] == 0.0
    # tiny holds the sides 8 and 12: recall 1/2, so precision 1 at the 51 recall points 0, .01, ..., .5.
    assert got["AP_t"] == pytest.approx(51 / 101) and got["AR_t"] == 0.5
    assert got["AP"] == pytest.approx(21 / 101) and got["AR@100"] == pytest.approx(0.2)


def test_detections_on_unknown_images_are_named():
    images = random_images(5, num_images=6)
    results = coco_results(images)
    results[3]["image_id"] = 999
    with pytest.raises(KLDetDataError, match="1 image id.*999"):
        evaluate_coco(coco_ground_truth(images), as_detections(results), AITOD_PROTOCOL)
    results[3]["image_id"], results[4]["category_id"] = images[0]["image_id"], 0
    with pytest.raises(KLDetDataError, match="category id.*: 0"):
        evaluate_coco(coco_ground_truth(images), as_detections(results), AITOD_PROTOCOL)


def test_summarize_averages_defined_entries_only():
    # T=10 IoUs, R=2 recall points, K=2 classes, A=5 ranges, M=3 caps.
    precision = np.full((10, 2, 2, 5, 3), -1.0)
    recall = np.full((10, 2, 5, 3), -1.0)
    precision[:, :, 0, 0, 2] = 0.2  # class 0, all areas, 1500 caps
    precision[5, :, 0, 0, 2] = 0.8  # at IoU 0.75
    precision[:, :, 1, 0, 2] = 0.6
    recall[:, 0, 0, 0] = 0.25
    recall[:, 1, 0, 0] = 0.75
    got = summarize(precision, recall, AITOD_PROTOCOL, ["a", "b"])
    assert got["AP"] == pytest.approx((0.2 * 9 + 0.8 + 0.6 * 10) / 20)
    assert got["AP50"] == pytest.approx(0.4) and got["AP75"] == pytest.approx(0.7)
    assert got["AP_a"] == pytest.approx((0.2 * 9 + 0.8) / 10) and got["AP_b"] == pytest.approx(0.6)
    assert got["AR@100"] == pytest.approx(0.5)
    assert got["AR@300"] == got["AP_vt"] == got["AR_m"] == -1.0


@pytest.mark.parametrize("kind", ["aitod", "coco"])
def test_metric_equals_direct_evaluation(kind):
    images = random_images(6)
    preds, targets = metric_inputs(images)
    metric = DetectionMetric(kind, CLASSES)
    for start in range(0, len(images), 5):
        metric.update(preds[start : start + 5], targets[start : start + 5])
    expected = evaluate_coco(
        coco_ground_truth(images), as_detections(coco_results(images)), PROTOCOL_OF[kind]
    )
    got = metric.compute()
    assert list(got) == list(expected)
    np.testing.assert_allclose(list(got.values()), list(expected.values()), rtol=0, atol=1e-12)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_metric_without_images_is_undefined_not_an_error():
    got = DetectionMetric("coco", CLASSES).compute()
    assert list(got) == COCO_PROTOCOL.summary_keys + [f"AP_{name}" for name in CLASSES]
    assert set(got.values()) == {-1.0}


def test_metric_ignores_detections_on_crowd_boxes_of_their_class():
    images = random_images(7, crowded_image=False)
    preds, targets = metric_inputs(images)
    with_region = [i for i, im in enumerate(images) if len(im["ignored"])][0]
    metric = DetectionMetric("aitod", CLASSES)
    metric.update(preds, targets)
    before = metric.compute()
    region = torch.from_numpy(images[with_region]["ignored"])
    label = int(images[with_region]["ignored_labels"][0])
    pred = preds[with_region]

    def with_detections_on_region(labels):
        changed = list(preds)
        changed[with_region] = {
            "boxes": torch.cat([pred["boxes"], region.repeat(len(labels), 1)]),
            "scores": torch.cat([pred["scores"], torch.ones(len(labels))]),
            "labels": torch.cat([pred["labels"], torch.tensor(labels)]),
        }
        metric.reset()
        metric.update(changed, targets)
        return metric.compute()

    # A crowd box absorbs any number of detections of its class ...
    assert with_detections_on_region([label] * 3) == before
    # ... and none of another class: those are false positives at the top of the ranking.
    other = (label + 1) % len(CLASSES)
    assert with_detections_on_region([other])[f"AP_{CLASSES[other]}"] < before[f"AP_{CLASSES[other]}"]


def test_metric_merged_halves_equal_one_metric():
    images = random_images(8)
    preds, targets = metric_inputs(images)
    whole = DetectionMetric("aitod", CLASSES)
    whole.update(preds, targets)
    first, second = DetectionMetric("aitod", CLASSES), DetectionMetric("aitod", CLASSES)
    first.update(preds[:10], targets[:10])
    second.update(preds[10:], targets[10:])
    # A DistributedSampler pads the last process's share with images from the start.
    second.update(preds[:2], targets[:2])
    first.merge_state(second)
    assert first.compute() == whole.compute()


def _ddp_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)  # a forked child must not reuse the parent's OpenMP pool
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        preds, targets = metric_inputs(random_images(9))
        share = list(range(rank, len(preds), world_size)) + [0] * rank  # uneven shares plus padding
        metric = DetectionMetric("aitod", CLASSES)
        metric.update([preds[i] for i in share], [targets[i] for i in share])
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(metric.compute(), f)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or sys.platform != "linux", reason="needs gloo and fork")
@pytest.mark.timeout(120)
def test_metric_gathers_across_processes(tmp_path):
    # fork: the workers start from this process, imports done, in a fraction of a second
    mp.start_processes(
        _ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True, start_method="fork"
    )
    preds, targets = metric_inputs(random_images(9))
    single = DetectionMetric("aitod", CLASSES)
    single.update(preds, targets)
    expected = single.compute()
    for rank in range(2):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == pytest.approx(expected, abs=1e-12)


def _write_case(tmp_path, seed=10):
    images = random_images(seed, num_images=12)
    ground_truth, results = coco_ground_truth(images), coco_results(images)
    ground_truth["annotations"][0]["segmentation"] = [[0, 0, 1, 0, 1, 1]]  # extra keys are fine
    (tmp_path / "ann.json").write_text(json.dumps(ground_truth))
    (tmp_path / "res.json").write_text(json.dumps(results))
    return ground_truth, results


@pytest.mark.parametrize("kind", ["aitod", "coco"])
def test_cli_writes_metrics_and_prints_table(tmp_path, capsys, kind):
    ground_truth, results = _write_case(tmp_path)
    out = tmp_path / "sub" / "metrics.json"
    argv = [
        f"results={tmp_path / 'res.json'}",
        f"ann={tmp_path / 'ann.json'}",
        f"metric={kind}",
        f"out={out}",
    ]
    assert kldet_eval(argv) == 0
    expected = evaluate_coco(ground_truth, as_detections(results), PROTOCOL_OF[kind])
    assert json.loads(out.read_text()) == pytest.approx(expected, abs=1e-12)
    printed = capsys.readouterr().out
    assert f"| {100 * expected['AP']:.1f}" in printed and "AP_plane" not in printed
    assert f"| {'AP_vt' if kind == 'aitod' else 'AP_l'}" in printed


def test_cli_empty_results_score_zero(tmp_path):
    _write_case(tmp_path)
    (tmp_path / "res.json").write_text("[]")
    argv = [f"results={tmp_path / 'res.json'}", f"ann={tmp_path / 'ann.json'}", f"out={tmp_path / 'm.json'}"]
    assert kldet_eval(argv) == 0
    assert set(without_lrp(json.loads((tmp_path / "m.json").read_text())).values()) == {0.0}


@pytest.mark.parametrize(
    ("change", "args", "message"),
    [
        (None, ["results=missing.json"], "missing.json: results file not found"),
        ("res_broken", [], "not valid JSON"),
        ("res_unknown_image", [], "image id.*424242"),
        ("res_bad_box", [], "detection 2: 'bbox' must be four finite numbers"),
        ("ann_bad_image", [], "annotation id 2: refers to image id 31337, which the file does not list"),
        (None, ["colour=red"], "Key 'colour' not in 'EvaluateConfig'"),
        (None, ["metric"], "expected key=value arguments"),
        (None, ["metric=map"], "unknown metric 'map'"),
        (None, ["metric=voc"], "metric=voc needs root="),
    ],
)
def test_cli_errors_are_one_message(tmp_path, capsys, monkeypatch, change, args, message):
    ground_truth, results = _write_case(tmp_path)
    if change == "res_broken":
        (tmp_path / "res.json").write_text('[{"image_id": 1,')
    elif change == "res_unknown_image":
        results[0]["image_id"] = 424242
    elif change == "res_bad_box":
        results[2]["bbox"] = [1, 2, 3]
    elif change == "ann_bad_image":
        ground_truth["annotations"][1]["image_id"] = 31337
    if change in ("res_unknown_image", "res_bad_box"):
        (tmp_path / "res.json").write_text(json.dumps(results))
    if change == "ann_bad_image":
        (tmp_path / "ann.json").write_text(json.dumps(ground_truth))
    monkeypatch.chdir(tmp_path)
    assert kldet_eval(["results=res.json", "ann=ann.json", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("kldet-eval: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert re.search(message, err)
