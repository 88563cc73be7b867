"""VOC mAP: a case worked by hand, a loop-by-loop devkit transcription on random data, kldet-eval on DIOR."""

import json

import numpy as np
import pytest
import torch

from helpers import write_dior
from kldet.cli.evaluate import main as kldet_eval
from kldet.errors import KLDetDataError
from kldet.evaluation import DetectionMetric, EvaluationSet, evaluate_results_file, evaluate_voc

CLASSES = ["car", "ship", "plane"]


def _image(boxes, labels, scores, gt_boxes, gt_labels, ignored=(), ignored_labels=(), image_id=None):
    pred = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.long),
        "scores": torch.tensor(scores, dtype=torch.float32),
    }
    gt_boxes, ignored = np.reshape(gt_boxes, (-1, 4)), np.reshape(ignored, (-1, 4))
    target = {
        "boxes": torch.tensor(np.concatenate([gt_boxes, ignored]), dtype=torch.float64),
        "labels": torch.tensor(np.concatenate([gt_labels, ignored_labels]), dtype=torch.long),
        "ignore": torch.arange(len(gt_boxes) + len(ignored)) >= len(gt_boxes),
    }
    if image_id is not None:
        target["image_id"] = image_id
    return pred, target


def hand_case():
    # Image 1: cars A [0,0,10,10] and B [20,20,30,30]. Image 2: car C [0,0,10,10], ship D [40,0,50,10],
    # an ignored car [50,50,60,60]. Image 3: nothing.
    image1 = _image(
        boxes=[[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]],
        labels=[0, 0, 0, 1],
        scores=[0.9, 0.8, 0.5, 0.95],  # d1 on A, d2 duplicate on A, d5 on B, d8 a ship on car A
        gt_boxes=[[0, 0, 10, 10], [20, 20, 30, 30]],
        gt_labels=[0, 0],
    )
    image2 = _image(
        boxes=[[50, 50, 60, 60], [100, 100, 110, 110], [200, 200, 210, 210], [40, 0, 50, 5], [40, 0, 50, 12]],
        labels=[0, 0, 0, 1, 1],
        scores=[0.7, 0.6, 0.55, 0.9, 0.3],  # d3 on the region, d4 / d4b on nothing, d6, d7 on D
        gt_boxes=[[0, 0, 10, 10], [40, 0, 50, 10]],
        gt_labels=[0, 1],
        ignored=[[50, 50, 60, 60]],
        ignored_labels=[0],
    )
    image3 = _image(boxes=[[300, 300, 310, 310]], labels=[2], scores=[0.4], gt_boxes=[], gt_labels=[])
    preds, targets = zip(image1, image2, image3, strict=True)
    return list(preds), list(targets)


def test_hand_computed_case():
    got = evaluate_voc(EvaluationSet.from_lists(*hand_case(), num_classes=3), CLASSES)
    # car, by score: d1 TP (A), d2 FP (A taken), d3 ignored (its best overlap is the ignored car: neither
    # TP nor FP), d4 FP, d4b FP, d5 TP (B). Positives: A, B, C = 3 (the ignored car does not count).
    #   recall    1/3, 1/3, 1/3, 1/3, 2/3       precision 1, 1/2, 1/3, 1/4, 2/5
    # Area: the monotone precision is 1 up to recall 1/3, then max(1/4, 2/5) = 2/5 up to 2/3, then 0:
    #   1/3 * 1 + 1/3 * 2/5 = 7/15.
    # 11-point: recall >= 0, .1, .2, .3 reaches precision 1 (4 points); >= .4, .5, .6 only the last
    #   detection, 2/5 (3 points); >= .7 .. 1 nothing: (4 + 3 * 2/5) / 11 = 5.2 / 11.
    assert got["AP_car"] == pytest.approx(7 / 15)
    assert got["AP07_car"] == pytest.approx(5.2 / 11)
    # ship, by score: d8 (0.95) lies on car A, another class: FP; d6 overlaps D by exactly 50/100, not
    # more than 0.5: FP; d7 overlaps D by 100/120: TP. Recall 0, 0, 1; precision 0, 0, 1/3.
    # Area: 1 * 1/3. 11-point: the best precision at any recall point is 1/3.
    assert got["AP_ship"] == pytest.approx(1 / 3)
    assert got["AP07_ship"] == pytest.approx(1 / 3)
    # plane has no objects: undefined, and left out of the means.
    assert got["AP_plane"] == got["AP07_plane"] == -1.0
    assert got["mAP"] == pytest.approx((7 / 15 + 1 / 3) / 2)
    assert got["mAP_07"] == pytest.approx((5.2 / 11 + 1 / 3) / 2)


def test_no_detections_score_zero():
    preds, targets = hand_case()
    empty = [
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "scores": torch.zeros(0)}
    ]
    got = evaluate_voc(EvaluationSet.from_lists(empty * 3, targets, num_classes=3), CLASSES)
    assert got["mAP"] == got["mAP_07"] == got["AP_car"] == got["AP07_ship"] == 0.0


def _iou(box, boxes):
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / (area(box) + area(boxes) - inter)


def devkit_ap(preds, targets, c, eleven_point):
    """The VOC devkit's voc_eval for class c, loop by loop, with ignored boxes as "difficult"."""
    gts = {}
    for i, t in enumerate(targets):
        of_class = t["labels"].numpy() == c
        boxes, difficult = t["boxes"].numpy()[of_class], t["ignore"].numpy()[of_class]
        gts[i] = {"boxes": boxes, "difficult": difficult, "det": np.zeros(len(boxes), bool)}
    npos = sum(int((~g["difficult"]).sum()) for g in gts.values())
    dets = [
        (i, float(s), b.astype(np.float64))
        for i, p in enumerate(preds)
        for b, s, label in zip(p["boxes"].numpy(), p["scores"].numpy(), p["labels"].numpy(), strict=True)
        if label == c
    ]
    dets.sort(key=lambda d: -d[1])
    tp, fp = np.zeros(len(dets)), np.zeros(len(dets))
    for d, (i, _, box) in enumerate(dets):
        g = gts[i]
        ovmax, jmax = -np.inf, -1
        if len(g["boxes"]):
            ious = _iou(box, g["boxes"])
            ovmax, jmax = ious.max(), ious.argmax()
        if ovmax > 0.5:
            if not g["difficult"][jmax]:
                if not g["det"][jmax]:
                    tp[d], g["det"][jmax] = 1, True
                else:
                    fp[d] = 1
        else:
            fp[d] = 1
    if npos == 0:
        return -1.0
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / npos
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if eleven_point:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap += p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def random_images(seed, num_images=30):
    rng = np.random.default_rng(seed)
    images = []
    for i in range(num_images):
        num = int(rng.integers(0, 12))
        xy = rng.uniform(0, 500, (num, 2))
        gt = np.concatenate([xy, xy + rng.uniform(3, 80, (num, 2))], 1)
        gt_labels = rng.integers(0, 3, num)
        source = rng.integers(0, max(num, 1), 2 * num)
        size = np.tile(gt[source, 2:] - gt[source, :2], 2) if num else np.zeros((0, 4))
        boxes = gt[source] + rng.normal(0, 0.15, size.shape) * size if num else np.zeros((0, 4))
        boxes = np.concatenate([boxes, np.tile(rng.uniform(0, 500, (3, 2)), 2) + [0, 0, 20, 20]])
        labels = np.concatenate([gt_labels[source] if num else [], rng.integers(0, 3, 3)])
        flip = rng.uniform(size=len(labels)) < 0.1
        labels[flip] = rng.integers(0, 3, int(flip.sum()))
        ignored = gt[:1] + 5 if (num and i % 3 == 0) else np.zeros((0, 4))
        scores = rng.uniform(size=len(boxes))
        images.append(
            _image(boxes, labels.astype(int), scores, gt, gt_labels, ignored, gt_labels[: len(ignored)], i)
        )
    preds, targets = zip(*images, strict=True)
    return list(preds), list(targets)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_devkit_on_random_detections(seed):
    preds, targets = random_images(seed)
    got = evaluate_voc(EvaluationSet.from_lists(preds, targets, num_classes=3), CLASSES)
    for c, name in enumerate(CLASSES):
        assert got[f"AP_{name}"] == pytest.approx(devkit_ap(preds, targets, c, eleven_point=False), abs=1e-12)
        assert got[f"AP07_{name}"] == pytest.approx(
            devkit_ap(preds, targets, c, eleven_point=True), abs=1e-12
        )
        assert 0 < got[f"AP_{name}"] < 1
    assert got["mAP"] == pytest.approx(np.mean([got[f"AP_{n}"] for n in CLASSES]), abs=1e-12)


def test_voc_metric_merged_halves_equal_direct_evaluation():
    preds, targets = random_images(3)
    expected = evaluate_voc(EvaluationSet.from_lists(preds, targets, num_classes=3), CLASSES)
    first, second = DetectionMetric("voc", CLASSES), DetectionMetric("voc", CLASSES)
    first.update(preds[:13], targets[:13])
    second.update(preds[13:], targets[13:])
    second.update(preds[:1], targets[:1])  # a padded repeat
    first.merge_state(second)
    assert first.compute() == pytest.approx(expected, abs=1e-12)


def test_cli_voc_on_a_dior_split(tmp_path, capsys):
    root = tmp_path / "DIOR"
    # vehicle (category 19): two objects in 00001, one difficult in 00002; ship (14): one in 00002.
    # The XML is 1-based: the boxes are read less 1, so (2, 2, 12, 12) is [1, 1, 10, 10] in xywh.
    write_dior(
        root,
        {
            "00001": [("vehicle", (2, 2, 12, 12), 0), ("vehicle", (30, 30, 40, 40), 0)],
            "00002": [("vehicle", (2, 2, 12, 12), 1), ("ship", (20, 20, 50, 40), 0)],
        },
        splits=("test",),
    )
    results = [
        {"image_id": 1, "category_id": 19, "bbox": [1, 1, 10, 10], "score": 0.9},  # TP
        {"image_id": 2, "category_id": 19, "bbox": [1, 1, 10, 10], "score": 0.8},  # on the difficult one
        {"image_id": 2, "category_id": 19, "bbox": [40, 50, 10, 10], "score": 0.7},  # FP
        {"image_id": 1, "category_id": 19, "bbox": [29, 29, 10, 10], "score": 0.6},  # TP
        {"image_id": 2, "category_id": 14, "bbox": [19, 19, 30, 20], "score": 0.5},  # TP
        {"image_id": 2, "category_id": 14, "bbox": [1, 1, 10, 10], "score": 0.55},  # ship on the vehicle: FP
    ]
    (tmp_path / "res.json").write_text(json.dumps(results))
    out = tmp_path / "m.json"
    argv = [f"results={tmp_path / 'res.json'}", "metric=voc", f"root={root}", "split=test", f"out={out}"]
    assert kldet_eval(argv) == 0
    metrics = json.loads(out.read_text())
    # The authors' reading (difficult not read): vehicle TP, TP, FP, TP of 3 positives: recall 1/3, 2/3,
    # 2/3, 1; precision 1, 1, 2/3, 3/4. Area: 2/3 * 1 + 1/3 * 3/4 = 11/12. 11-point: 7 points (recall
    # >= 0 .. .6) at 1, 4 at 3/4.
    assert metrics["AP_vehicle"] == pytest.approx(11 / 12)
    assert metrics["AP07_vehicle"] == pytest.approx((7 + 4 * 3 / 4) / 11)
    # ship: FP (on the vehicle), TP: recall 0, 1; precision 0, 1/2.
    assert metrics["AP_ship"] == 0.5 and metrics["AP_airplane"] == -1.0
    assert metrics["mAP"] == pytest.approx((11 / 12 + 1 / 2) / 2)
    assert "| vehicle" in capsys.readouterr().out
    # difficult=ignore (the VOC devkit's): the detection on the difficult vehicle is neither TP nor FP:
    # vehicle TP, FP, TP of 2 positives: recall 1/2, 1/2, 1; precision 1, 1/2, 2/3. Area: 1/2 + 1/2 * 2/3
    # = 5/6. 11-point: 6 points at 1, 5 at 2/3. The difficult vehicle is ignored only for vehicles: the
    # ship detection on it stays a false positive.
    assert kldet_eval([*argv, "difficult=ignore"]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["AP_vehicle"] == pytest.approx(5 / 6)
    assert metrics["AP07_vehicle"] == pytest.approx((6 + 5 * 2 / 3) / 11)
    assert metrics["AP_ship"] == 0.5


def test_cli_voc_matches_results_by_file_name(tmp_path):
    """kldet-predict numbers the images it was given (1, 2, ...) and writes each one's file_name; the
    VOC evaluation must match by file name, not by those ids."""
    root = tmp_path / "DIOR"
    write_dior(
        root,
        {
            "11726": [("vehicle", (2, 2, 12, 12), 0)],
            "11727": [("ship", (20, 20, 50, 40), 0)],
        },
        splits=("test",),
    )
    results = [
        # Right boxes for the image each file name names: AP 1 for both classes, whatever the ids say.
        {"image_id": 1, "file_name": "11727.jpg", "category_id": 14, "bbox": [19, 19, 30, 20], "score": 0.9},
        {
            "image_id": 2,
            "file_name": "sub/11726.jpg",
            "category_id": 19,
            "bbox": [1, 1, 10, 10],
            "score": 0.8,
        },
    ]
    (tmp_path / "res.json").write_text(json.dumps(results))
    out = tmp_path / "m.json"
    argv = [f"results={tmp_path / 'res.json'}", "metric=voc", f"root={root}", "split=test", f"out={out}"]
    assert kldet_eval(argv) == 0
    metrics = json.loads(out.read_text())
    assert metrics["AP_vehicle"] == 1.0 and metrics["AP_ship"] == 1.0

    results[1]["file_name"] = "00001.jpg"
    (tmp_path / "res.json").write_text(json.dumps(results))
    with pytest.raises(
        KLDetDataError, match=r"detection 1 is on image '00001.jpg', which is not in the split"
    ):
        evaluate_results_file(tmp_path / "res.json", metric="voc", root=root, split="test")
