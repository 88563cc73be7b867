"""Training on crops at native resolution end to end: the AP validation logs is the AP of kldet-predict's
results on the same images (scored by kldet-eval results=), kldet-eval ckpt= agrees, and the checkpoint says
how kldet-predict tiles. (Crop plus resize is a config error: tests/test_train_robust.py.)"""

import json
import logging

import cv2
import numpy as np
import pytest
import torch

from helpers import seeded_detector, tiny_spec
from kldet.checkpoint import load_detector, save_detector
from kldet.cli.evaluate import main as kldet_eval
from kldet.cli.predict import main as kldet_predict
from kldet.cli.train import train
from kldet.data.transforms import resize_policy
from kldet.datamodule import KLDetDataModule
from kldet.inference.predictor import Predictor
from kldet.inference.results import detections_to_coco
from kldet.lit import KLDetModule
from training import TINY, tiny_config

pytestmark = pytest.mark.usefixtures("quiet_single_thread")

CROP = 128
# Three scenes larger than the crop on both sides (so every tile is a full 128 px tile).
SIZES = [(200, 300), (180, 260), (140, 200)]
# The tiny model of TINY on data=coco at native resolution, trained on 128 px crops; score threshold 0 so
# that a barely trained network gives detections to score.
CROP_TINY = [
    *(item for item in TINY if not item.startswith(("synthetic.", "data.max_size"))),
    "synthetic=null",
    "data=coco",
    "data.max_size=null",
    f"data.crop_size={CROP}",
    "model.postprocess.score_thresh=0.0",
    "model.postprocess.max_detections=100",
    "trainer.max_epochs=1",
    "trainer.check_val_every_n_epoch=1",
    "trainer.limit_train_batches=1",
    "test=false",
]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """A COCO set of three noisy scenes with 10-20 px bright squares (one class), train = val."""
    root = tmp_path_factory.mktemp("scenes")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for index, (height, width) in enumerate(SIZES, start=1):
        pixels = rng.integers(40, 90, (height, width, 3), dtype=np.uint8)
        for _ in range(12):
            side = int(rng.integers(10, 21))
            x, y = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
            pixels[y : y + side, x : x + side] = 230
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index,
                    "category_id": 1,
                    "bbox": [x, y, side, side],
                    "area": side * side,
                    "iscrowd": 0,
                }
            )
        name = f"scene{index}.png"
        cv2.imwrite(str(root / "images" / name), pixels)
        images.append({"id": index, "file_name": name, "width": width, "height": height})
    ann = root / "ann.json"
    ann.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "car"}]})
    )
    return ann, root / "images"


def data_keys(scenes) -> list[str]:
    ann, images = scenes
    return [
        f"data.{split}_{kind}={path}"
        for split in ("train", "val")
        for kind, path in (("ann", ann), ("images", images))
    ]


@pytest.fixture(scope="module")
def crop_run(tmp_path_factory, scenes, data_dir):
    run = tmp_path_factory.mktemp("crop_run")
    torch.set_num_threads(1)
    train(tiny_config(data_dir, run, *data_keys(scenes), base=CROP_TINY))
    return run


def test_the_checkpoint_records_the_crop_and_kldet_predict_tiles_by_it(crop_run, caplog):
    ckpt = crop_run / "checkpoints" / "last.ckpt"
    _, meta = load_detector(ckpt)
    preprocess = meta["preprocess"]
    assert (preprocess["resize"], preprocess["crop_size"], preprocess["overlap"]) == ("crop", CROP, 0.2)
    assert preprocess["max_size"] is None
    predictor = Predictor.from_checkpoint(ckpt)
    assert (predictor.tile_size, predictor.overlap) == (CROP, 0.2)
    given = Predictor.from_checkpoint(ckpt, tile_size=96, overlap=0.5)
    assert (given.tile_size, given.overlap) == (96, 0.5)
    with caplog.at_level(logging.WARNING):
        predictor.predict_image(np.zeros((300, 400, 3), np.uint8))  # larger than the crop: native, no warning
    assert "resize" not in caplog.text


def test_validation_logs_what_kldet_eval_ckpt_gives_whatever_data_max_size_says(
    crop_run, scenes, tmp_path, capsys
):
    ann, images = scenes
    logged = json.loads((crop_run / "metrics.json").read_text())
    evaluated = evaluate_checkpoint(
        crop_run / "checkpoints" / "last.ckpt", ann, images, tmp_path / "m.json", capsys
    )
    assert evaluated.keys() <= {key.removeprefix("val/") for key in logged}
    assert all(logged[f"val/{key}"] == value for key, value in evaluated.items())


def evaluate_checkpoint(ckpt, ann, images, out, capsys) -> dict[str, float]:
    """kldet-eval ckpt= on the val split, given data.max_size=800 (the checkpoint's crop policy wins)."""
    argv = [f"ckpt={ckpt}", "data=coco", f"data.val_ann={ann}", f"data.val_images={images}", "split=val"]
    code = kldet_eval([*argv, "data.max_size=800", "data.num_workers=0", "precision=32-true", f"out={out}"])
    assert code == 0, capsys.readouterr().err
    return {key.removeprefix("val/"): value for key, value in json.loads(out.read_text()).items()}


@pytest.fixture(scope="module")
def random_crop_checkpoint(tmp_path_factory):
    """A KLDet with random weights "trained" on 128 px crops, its head set to give boxes of one or two
    strides and scores spread over (0, 1), so that results files (0.01 px, 5 decimals) rank as memory does."""
    model = seeded_detector(tiny_spec(1, {"score_thresh": 0.05, "max_detections": 100}), seed=1)
    with torch.no_grad():
        model.head.box_regression.bias.fill_(1.0)
        model.head.cls_logits.bias.fill_(-1.0)
        torch.nn.init.normal_(model.head.cls_logits.weight, std=0.3)
        torch.nn.init.normal_(model.head.box_regression.weight, std=0.05)
    preprocess = {"max_size": None, **resize_policy(None, CROP, 0.2)}
    path = tmp_path_factory.mktemp("random") / "crop.ckpt"
    return save_detector(
        path, model, tiny_spec(1, {"score_thresh": 0.05, "max_detections": 100}), ["car"], [1], preprocess
    )


def derived_ground_truth(ann, results, path):
    """``ann``'s images with ground truth made from every fourth of ``results`` (7 % larger: IoU 0.87) and
    a box per image that nothing predicts: random weights find none of the real objects, and equal zeros
    would prove nothing, so the comparison scores against boxes its detections partly match."""
    content = json.loads(ann.read_text())
    ranked = sorted(results, key=lambda r: -r["score"])
    boxes = [
        (r["image_id"], [x - 0.035 * w, y - 0.035 * h, 1.07 * w, 1.07 * h])
        for r in ranked[::4][:80]
        for x, y, w, h in [r["bbox"]]
    ]
    boxes += [(image["id"], [2, 2, 6, 6]) for image in content["images"]]
    content["annotations"] = [
        {
            "id": i,
            "image_id": image_id,
            "category_id": 1,
            "bbox": bbox,
            "area": bbox[2] * bbox[3],
            "iscrowd": 0,
        }
        for i, (image_id, bbox) in enumerate(boxes, start=1)
    ]
    path.write_text(json.dumps(content))
    return path


def test_sliced_evaluation_ap_is_the_ap_of_kldet_predict_scored_by_kldet_eval(
    random_crop_checkpoint, scenes, tmp_path, capsys
):
    ann, images = scenes
    out = tmp_path / "predicted"
    argv = [f"ckpt={random_crop_checkpoint}", f"input={images}", f"out={out}", f"coco_gt={ann}"]
    options = ["precision=fp32", "channels_last=false", "render=false", "progress=false"]
    assert kldet_predict([*argv, *options]) == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert len(results) > 100
    gt = derived_ground_truth(ann, results, tmp_path / "derived.json")
    scored = tmp_path / "scored.json"
    assert kldet_eval([f"results={out / 'results.json'}", f"ann={gt}", f"out={scored}"]) == 0
    from_predict = json.loads(scored.read_text())
    from_module = evaluate_checkpoint(random_crop_checkpoint, gt, images, tmp_path / "evaluated.json", capsys)
    assert 0.05 < from_predict["AP"] < 0.95 and 0.05 < from_predict["AP50"] < 0.95
    assert from_predict.keys() <= from_module.keys()
    # Equal to the printed digits (kldet-eval prints 4 decimals): the results file keeps boxes to 0.01 px
    # and scores to 5 decimals, which moves AP in the 6th decimal here; the detections are the same.
    for key, value in from_predict.items():
        assert from_module[key] == pytest.approx(value, abs=5e-5), key
    assert records_of_validation(random_crop_checkpoint, ann, images) == results


def records_of_validation(ckpt, ann, images) -> list[dict]:
    """The detections validation of ``ckpt`` computes on the val split (the module's prediction step on
    the data module's val batches), as results-file records."""
    module = KLDetModule.from_checkpoint(ckpt)
    datamodule = KLDetDataModule(
        "coco",
        val_ann=str(ann),
        val_images=str(images),
        train_split=None,
        test_split=None,
        max_size=None,
        crop_size=CROP,
        num_workers=0,
        normalization=module.normalization.as_preprocess(),
    )
    datamodule.setup("validate")
    records = []
    for batch, targets in datamodule.val_dataloader():
        assert batch.shape[0] == 1  # one native image per batch, tiled by the module
        for target, detections in zip(targets, module._predict(batch, targets), strict=True):
            records += detections_to_coco(detections, target["image_id"], target["file_name"], ["car"], [1])
    return records
