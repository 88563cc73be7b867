"""One evaluation protocol: the training metric, ``kldet-eval results=`` and pycocotools agree on a COCO file
whose ``area`` fields differ from w * h, with crowd boxes, ``ignore`` keys, sub-pixel boxes and empty images;
what training drops and evaluation keeps; annotation id 0; DIOR read as the authors read it."""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO as PyCOCO
from pycocotools.cocoeval import COCOeval as PyCOCOeval

from helpers import write_dior
from kldet.cli.evaluate import main as kldet_eval
from kldet.data import DetectionDataset, read_coco
from kldet.datamodule import KLDetDataModule
from kldet.evaluation import AITOD_PROTOCOL, DetectionMetric, configure_params, evaluate_coco, summarize
from kldet.evaluation.coco_json import read_coco_ground_truth, read_coco_results
from kldet.inference.results import detections_to_coco
from kldet.lit import KLDetModule

CLASSES = ["vehicle", "ship", "plane"]
CATEGORY_IDS = [2, 5, 9]  # not 1..C: results must carry the file's ids
SIZE = 96
TINY_MODEL = {
    "_target_": "kldet.model.kldet_resnet_fpn",
    "backbone": "resnet18",
    "channels": 16,
    "head_convs": 1,
}


def write_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        cv2.imwrite(str(folder / name), np.full((SIZE, SIZE, 3), 90, np.uint8))


def protocol_case(seed: int = 0) -> tuple[dict, dict[int, dict]]:
    """A COCO file and fixed detections (original pixels, per image id) that exercise the protocol.

    Boxes sit on a 1/4-pixel grid and scores are distinct multiples of 1/1000, so the 0.01 px / 5 decimal
    rounding of the results writer changes nothing. ``area`` is w * h times a factor in [0.25, 4], so many
    objects fall into another AI-TOD size range than their box; every third image has a crowd box (with
    detections of its class and of another class on it); some objects carry ``ignore: 1`` (evaluation
    counts them, as pycocotools does); image 5 has no annotations but detections, image 6 nothing at all;
    a zero-width box and a box outside its image are objects nothing can match.
    """
    rng = np.random.default_rng(seed)
    images, annotations, detections = [], [], {}
    for index in range(8):
        image_id = 40 + 3 * index
        images.append({"id": image_id, "file_name": f"im{index}.png", "width": SIZE, "height": SIZE})
        num = 0 if index in (5, 6) else int(rng.integers(3, 9))
        side = np.round(np.exp(rng.uniform(np.log(3), np.log(40), (num, 2))) * 4) / 4
        xy = np.round(rng.uniform(0, SIZE - 42, (num, 2)) * 4) / 4
        labels = rng.integers(0, len(CLASSES), num)
        for k in range(num):
            area = float(side[k, 0] * side[k, 1] * rng.choice([0.25, 0.5, 1.0, 2.0, 4.0]))
            annotation = {
                "image_id": image_id,
                "category_id": CATEGORY_IDS[labels[k]],
                "bbox": [*xy[k].tolist(), *side[k].tolist()],
                "area": area,
                "iscrowd": 0,
            }
            if rng.uniform() < 0.15:
                annotation["ignore"] = 1
            annotations.append(annotation)
        boxes, box_labels = [], []
        for k in range(num):
            for _ in range(int(rng.integers(0, 3))):
                jitter = np.round(rng.normal(0, 0.1, 4) * np.tile(side[k], 2) * 4) / 4
                x1, y1 = xy[k] + jitter[:2]
                x2, y2 = xy[k] + side[k] + jitter[2:]
                boxes.append([x1, y1, max(x2, x1 + 0.25), max(y2, y1 + 0.25)])
                box_labels.append(labels[k] if rng.uniform() > 0.1 else rng.integers(0, len(CLASSES)))
        if index % 3 == 0:  # a crowd box, found by two detections of its class and one of another
            crowd_label = int(rng.integers(0, len(CLASSES)))
            annotations.append(
                {
                    "image_id": image_id,
                    "category_id": CATEGORY_IDS[crowd_label],
                    "bbox": [50.0, 50.0, 40.0, 30.0],
                    "area": 1200.0,
                    "iscrowd": 1,
                }
            )
            boxes += [[52.0, 52.0, 60.0, 60.0], [70.0, 55.0, 85.0, 75.0], [52.0, 60.0, 62.0, 70.0]]
            box_labels += [crowd_label, crowd_label, (crowd_label + 1) % len(CLASSES)]
        if index != 6:  # background detections
            bxy = np.round(rng.uniform(0, SIZE - 20, (2, 2)) * 4) / 4
            boxes += np.concatenate([bxy, bxy + 6], 1).tolist()
            box_labels += rng.integers(0, len(CLASSES), 2).tolist()
        detections[image_id] = {
            "boxes": torch.tensor(np.reshape(boxes, (-1, 4)), dtype=torch.float32),
            "labels": torch.tensor(box_labels, dtype=torch.long),
        }
    # A zero-width box and one wholly outside its image: objects no detection can match, which the official
    # evaluation counts (training cannot use them).
    annotations.append(
        {
            "image_id": 40,
            "category_id": CATEGORY_IDS[0],
            "bbox": [10.0, 10.0, 0.0, 5.0],
            "area": 0.0,
            "iscrowd": 0,
        }
    )
    annotations.append(
        {
            "image_id": 43,
            "category_id": CATEGORY_IDS[1],
            "bbox": [120.0, 30.0, 8.0, 8.0],
            "area": 64.0,
            "iscrowd": 0,
        }
    )
    # Scores: distinct over the whole set, in a random order.
    total = sum(len(d["labels"]) for d in detections.values())
    scores = iter((rng.permutation(total) + 1) / 1000)
    for d in detections.values():
        d["scores"] = torch.tensor([next(scores) for _ in range(len(d["labels"]))], dtype=torch.float32)
    order = rng.permutation(len(annotations))  # not grouped by image: only the order within an image counts
    annotations = [{"id": i + 1, **annotations[k]} for i, k in enumerate(order)]
    categories = [{"id": i, "name": n} for i, n in zip(CATEGORY_IDS, CLASSES, strict=True)]
    return {"images": images, "annotations": annotations, "categories": categories}, detections


def training_metric(ann_file: Path, image_dir: Path, detections: dict[int, dict]) -> dict[str, float]:
    """What training reports: the data module's loader, the module's test step (its detector replaced by
    the fixed detections), its metric."""
    datamodule = KLDetDataModule(
        "coco", val_ann=str(ann_file), val_images=str(image_dir), test_ann=str(ann_file),
        test_images=str(image_dir), train_split=None, val_split=None, test_split=None, num_workers=0,
        eval_batch_size=3, max_size=64,
    )  # fmt: skip
    datamodule.setup("test")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random weights
        module = KLDetModule(TINY_MODEL, datamodule.classes, datamodule.category_ids, metric="aitod")
    module._predict = lambda images, targets: [detections[int(t["image_id"])] for t in targets]
    for batch_index, batch in enumerate(datamodule.test_dataloader()):
        module.test_step(batch, batch_index)
    return module.test_metric.compute()


def write_results(path: Path, ground_truth: dict, detections: dict[int, dict]) -> Path:
    """The detections as kldet-predict writes them."""
    file_names = {image["id"]: image["file_name"] for image in ground_truth["images"]}
    records = [
        record
        for image_id, d in detections.items()
        for record in detections_to_coco(d, image_id, file_names[image_id], CLASSES, CATEGORY_IDS)
    ]
    path.write_text(json.dumps(records))
    return path


def pycocotools_aitod(ann_file: Path, results_file: Path, class_names=CLASSES) -> dict[str, float]:
    """pycocotools (the code the AI-TOD cocoapi forks) on the raw files, set to the AI-TOD protocol."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = PyCOCO(str(ann_file))
        evaluator = PyCOCOeval(coco_gt, coco_gt.loadRes(str(results_file)), "bbox")
        configure_params(evaluator.params, AITOD_PROTOCOL)
        evaluator.evaluate()
        evaluator.accumulate()
    return summarize(evaluator.eval["precision"], evaluator.eval["recall"], AITOD_PROTOCOL, class_names)


@pytest.mark.parametrize("seed", [0, 1])
def test_training_metric_equals_results_mode_and_pycocotools(tmp_path, seed):
    ground_truth, detections = protocol_case(seed)
    ann_file = tmp_path / "val.json"
    ann_file.write_text(json.dumps(ground_truth))
    write_images(tmp_path / "images", [image["file_name"] for image in ground_truth["images"]])

    read = read_coco(ann_file, tmp_path / "images")  # strict: the two unmatchable boxes are no problem
    assert read.evaluation_only_boxes == 2 and not read.problems
    assert sum(len(r.gt_boxes) for r in read.records) == len(ground_truth["annotations"])
    trained = training_metric(ann_file, tmp_path / "images", detections)
    results_file = write_results(tmp_path / "results.json", ground_truth, detections)
    out = tmp_path / "metrics.json"
    assert kldet_eval([f"results={results_file}", f"ann={ann_file}", "metric=aitod", f"out={out}"]) == 0
    official = json.loads(out.read_text())
    # Every key, oLRP's included, is equal between the training metric and results mode.
    assert list(trained) == list(official)
    assert {*AITOD_PROTOCOL.summary_keys, *(f"AP_{n}" for n in CLASSES), "oLRP"} <= set(official)
    for key in official:
        assert trained[key] == pytest.approx(official[key], abs=1e-9), key
    reference = pycocotools_aitod(ann_file, results_file)  # the AP / AR keys
    assert set(reference) == {*AITOD_PROTOCOL.summary_keys, *(f"AP_{n}" for n in CLASSES)}
    for key in reference:
        assert official[key] == pytest.approx(reference[key], abs=1e-9), key

    # The case must tell the protocols apart: with w * h for the area, or without the crowd boxes, or
    # with the "ignore" objects left out, the numbers change.
    def variant(change) -> dict[str, float]:
        changed = json.loads(json.dumps(ground_truth))
        changed["annotations"] = [a for a in map(change, changed["annotations"]) if a is not None]
        return evaluate_coco(changed, read_coco_results(results_file), AITOD_PROTOCOL)

    by_box_area = variant(lambda a: {**a, "area": a["bbox"][2] * a["bbox"][3]})
    no_crowd = variant(lambda a: None if a["iscrowd"] else a)
    no_ignore_key = variant(lambda a: None if a.get("ignore") else a)
    for other in (by_box_area, no_crowd, no_ignore_key):
        assert max(abs(other[key] - official[key]) for key in official) > 1e-3
    assert 0 < official["AP"] < 1 and all(official[key] >= 0 for key in ("AP_vt", "AP_t", "AP_s", "AP_m"))


def test_training_drops_sub_pixel_boxes_that_evaluation_keeps(tmp_path):
    # a 0.5 px wide object, one with area 0, one marked "ignore", a crowd box, a normal one
    bboxes = [[10, 10, 0.5, 6], [20, 20, 6, 6], [30, 30, 6, 6], [40, 40, 12, 12], [60, 60, 8, 8]]
    extra = [{}, {"area": 0.0}, {"ignore": 1}, {"iscrowd": 1}, {}]
    ground_truth = {
        "images": [{"id": 1, "file_name": "a.png", "width": SIZE, "height": SIZE}],
        "annotations": [
            {"id": i + 1, "image_id": 1, "category_id": 2, "bbox": b, "area": b[2] * b[3], "iscrowd": 0, **e}
            for i, (b, e) in enumerate(zip(bboxes, extra, strict=True))
        ],
        "categories": [{"id": 2, "name": "vehicle"}],
    }
    ann_file = tmp_path / "a.json"
    ann_file.write_text(json.dumps(ground_truth))
    write_images(tmp_path, ["a.png"])
    (record,) = read_coco(ann_file, tmp_path).records
    # training: only the normal object
    np.testing.assert_array_equal(record.boxes, [[60, 60, 68, 68]])
    _, target = DetectionDataset([record])[0]
    assert target["boxes"].shape == (1, 4)
    # evaluation: all five, the crowd box as an ignored one, areas from the file
    np.testing.assert_array_equal(record.gt_boxes[0], [10, 10, 10.5, 16])
    assert record.gt_ignore.tolist() == [False, False, False, True, False]
    assert record.gt_areas.tolist() == [3.0, 0.0, 36.0, 144.0, 64.0]
    # Detecting the 0.5 px object exactly (and the other three) scores 1; missing it costs recall.
    metric = DetectionMetric("aitod", ["vehicle"])
    found = torch.tensor([[10, 10, 10.5, 16], [20, 20, 26, 26], [30, 30, 36, 36], [60, 60, 68, 68]])
    for kept in (4, 3):
        metric.reset()
        preds = {
            "boxes": found[4 - kept :],
            "scores": torch.linspace(1, 0.5, kept),
            "labels": torch.zeros(kept),
        }
        truth = {"boxes": target["gt_boxes"], "labels": target["gt_labels"], "areas": target["gt_areas"]}
        metric.update([preds], [{**truth, "ignore": target["gt_ignore"], "image_id": 1}])
        assert metric.compute()["AR@1500"] == kept / 4


def test_annotation_id_zero_warns_and_is_counted(tmp_path):
    # The AI-TOD generation script numbers annotations from 0: pycocotools can never match that object.
    ground_truth = {
        "images": [{"id": 1, "file_name": "a.png", "width": SIZE, "height": SIZE}],
        "annotations": [
            {"id": 0, "image_id": 1, "category_id": 1, "bbox": [10, 10, 8, 8], "area": 64, "iscrowd": 0},
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [40, 40, 8, 8], "area": 64, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "vehicle"}],
    }
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(ground_truth))
    write_images(tmp_path, ["a.png"])
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 8, 8], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [40, 40, 8, 8], "score": 0.8},
    ]
    results_file = tmp_path / "res.json"
    results_file.write_text(json.dumps(results))
    with pytest.warns(UserWarning, match=rf"{ann_file}: has an annotation with id 0") as caught:
        read_coco(ann_file, tmp_path)
    assert len(caught) == 1
    with pytest.warns(UserWarning, match="annotation with id 0"):
        kldet = evaluate_coco(
            read_coco_ground_truth(ann_file), read_coco_results(results_file), AITOD_PROTOCOL
        )
    assert kldet["AP"] == 1.0 and kldet["AR@1500"] == 1.0
    # pycocotools: the id-0 object stays unmatched and its detection, ranked first, is a false positive:
    # precision 0 then 1/2, recall 1/2 -> AP 1/2 * 51/101 summed over the recall points reached.
    reference = pycocotools_aitod(ann_file, results_file, ["vehicle"])
    assert reference["AR@1500"] == 0.5
    assert reference["AP"] == pytest.approx(51 / 101 * 0.5)


# --- DIOR ------------------------------------------------------------------------------------------------


def test_dior_data_module_reads_as_the_authors_and_filters_empty_training_images(tmp_path):
    write_dior(
        tmp_path,
        {
            "00001": [("vehicle", (2, 2, 12, 12), 0), ("ship", (20, 20, 40, 30), 1)],
            "00002": [],  # nothing: not a training image when filter_empty_gt
            "00003": [("vehicle", (5, 5, 5.3, 9), 0)],  # only a box under 0.5 px: ignored, yet kept
        },
    )

    def module(**options):
        dm = KLDetDataModule("dior", root=str(tmp_path), num_workers=0, batch_size=1, **options)
        return dm, [int(target["image_id"]) for _, (target,) in dm.train_dataloader()]

    dm, trained_on = module(filter_empty_gt=True)
    assert sorted(trained_on) == [1, 3]
    first = dm.ground_truth("train").records[0]
    np.testing.assert_array_equal(first.boxes, [[1, 1, 11, 11], [19, 19, 39, 29]])  # less 1; difficult counts
    assert dm.ground_truth("train").records[2].gt_ignore.tolist() == [True]
    dm, trained_on = module(filter_empty_gt=False, difficult="ignore")
    assert sorted(trained_on) == [1, 2, 3]
    first = dm.ground_truth("test").records[0]
    np.testing.assert_array_equal(first.boxes, [[1, 1, 11, 11]])
    assert first.gt_ignore.tolist() == [False, True]


def test_dior_training_metric_equals_results_mode(tmp_path):
    """The VOC metric of training and of ``kldet-eval results= metric=voc`` read DIOR the same way."""
    write_dior(
        tmp_path / "DIOR",
        {
            "00001": [("vehicle", (2, 2, 12, 12), 0), ("vehicle", (30, 30, 40, 40), 1)],
            "00002": [("ship", (20, 20, 50, 40), 0), ("vehicle", (5, 5, 5.3, 9), 0)],
        },
    )
    # (box, label, score); labels 18 vehicle, 13 ship
    found = {
        1: [([1, 1, 11, 11], 18, 0.9), ([29, 29, 39, 39], 18, 0.6), ([29, 30, 39, 39], 13, 0.8)],
        2: [([19, 19, 49, 39], 13, 0.5), ([4, 4, 4.25, 8], 18, 0.4), ([40, 40, 50, 50], 18, 0.7)],
    }
    detections = {
        i: {
            "boxes": torch.tensor([b for b, _, _ in rows], dtype=torch.float32),
            "labels": torch.tensor([c for _, c, _ in rows]),
            "scores": torch.tensor([s for _, _, s in rows]),
        }
        for i, rows in found.items()
    }
    for difficult in ("object", "ignore"):
        datamodule = KLDetDataModule(
            "dior",
            root=str(tmp_path / "DIOR"),
            train_split=None,
            val_split=None,
            num_workers=0,
            difficult=difficult,
        )
        datamodule.setup("test")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            module = KLDetModule(TINY_MODEL, datamodule.classes, datamodule.category_ids, metric="voc")
        module._predict = lambda images, targets: [detections[int(t["image_id"])] for t in targets]
        for batch_index, batch in enumerate(datamodule.test_dataloader()):
            module.test_step(batch, batch_index)
        trained = module.test_metric.compute()
        names = {r.image_id: r.image_path.name for r in datamodule.ground_truth("test").records}
        records = [
            r
            for i, d in detections.items()
            for r in detections_to_coco(d, i, names[i], datamodule.classes, datamodule.category_ids)
        ]
        (tmp_path / "res.json").write_text(json.dumps(records))
        out = tmp_path / "m.json"
        argv = [f"results={tmp_path / 'res.json'}", "metric=voc", f"root={tmp_path / 'DIOR'}", "split=test"]
        assert kldet_eval([*argv, f"difficult={difficult}", f"out={out}"]) == 0
        official = json.loads(out.read_text())
        assert trained == pytest.approx(official, abs=1e-12)
        # vehicle, by score: 0.9 TP, 0.7 FP, 0.6 on the difficult one, 0.4 on the box under half a pixel
        # (ignored). With difficult objects as objects: TP, FP, TP of 2: 1/2 * 1 + 1/2 * 2/3 = 5/6. With
        # them ignored: TP, FP of 1: 1. ship: 0.8 on the vehicle (another class: FP), 0.5 TP: 1/2.
        assert official["AP_vehicle"] == pytest.approx(5 / 6 if difficult == "object" else 1.0)
        assert official["AP_ship"] == pytest.approx(0.5)
