"""Checkpoint loading, the Predictor on a real (tiny, random) KLDet, and kldet-predict in-process."""

import json
import logging
import re
import warnings

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from torchvision.ops import box_iou

from helpers import seeded_detector, store_preprocess, tiny_spec
from kldet.assign import FCOSAssigner
from kldet.checkpoint import load_detector, save_detector
from kldet.cli.predict import main as predict_main
from kldet.data import IMAGENET_MEAN, IMAGENET_STD
from kldet.data.transforms import DetectionTransform
from kldet.errors import KLDetConfigError, KLDetError
from kldet.inference.predictor import Predictor
from kldet.inference.render import save_image
from kldet.inference.sources import ArraySource
from kldet.inference.tiling import make_tiles
from kldet.model import InputNormalization, KLDet

# Small enough for the CPU; score_thresh 0 and a small top-k so a random network yields a few boxes.
TINY = tiny_spec(2, {"score_thresh": 0.0, "pre_nms_topk": 20, "max_detections": 30})
CLASSES = ["vehicle", "ship"]
CATEGORY_IDS = [6, 4]
MEAN, STD = (120.0, 110.0, 100.0), (60.0, 50.0, 40.0)


def tiny_model(**changes) -> KLDet:
    return seeded_detector({**TINY, **changes})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    preprocess = {"mean": list(MEAN), "std": list(STD), "size_divisor": 32, "max_size": 800}
    return save_detector(path, tiny_model(), TINY, CLASSES, CATEGORY_IDS, preprocess)


def test_checkpoint_in_the_lightning_layout_round_trips(tmp_path):
    model = tiny_model()
    lightning_like = {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.6.0",
        "state_dict": {f"model.{key}": value for key, value in model.state_dict().items()},
        "hyper_parameters": {
            "model": {**TINY, "weights": "IMAGENET1K_V1"},  # must not be read: the checkpoint has the weights
            "classes": CLASSES,
            "category_ids": CATEGORY_IDS,
            "preprocess": {"mean": list(MEAN), "std": list(STD), "size_divisor": 32, "max_size": 800},
            "optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.01},
            "metric": "aitod",
        },
        "optimizer_states": [],
    }
    torch.save(lightning_like, tmp_path / "last.ckpt")
    loaded, meta = load_detector(tmp_path / "last.ckpt")
    assert not loaded.training
    assert (meta["classes"], meta["category_ids"], meta["preprocess"]["mean"]) == (
        CLASSES,
        CATEGORY_IDS,
        list(MEAN),
    )
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for ours, theirs in zip(loaded(images), model(images), strict=True):
            for a, b in zip(ours, theirs, strict=True):
                assert torch.equal(a, b)


def test_from_checkpoint_reads_the_file_once(tmp_path, monkeypatch):
    from kldet.lit import KLDetModule

    save_detector(tmp_path / "m.ckpt", tiny_model(), TINY, CLASSES)
    checkpoint = torch.load(tmp_path / "m.ckpt", weights_only=True)
    checkpoint["hyper_parameters"].update(metric="coco")
    torch.save(checkpoint, tmp_path / "m.ckpt")
    loads = []

    def counted_load(*args, **kwargs):
        loads.append(args[0])
        return load(*args, **kwargs)

    load = torch.load
    monkeypatch.setattr(torch, "load", counted_load)
    module = KLDetModule.from_checkpoint(tmp_path / "m.ckpt")
    assert len(loads) == 1 and module.hparams["metric"] == "coco"
    Predictor.from_checkpoint(tmp_path / "m.ckpt")
    assert len(loads) == 2


def test_checkpoint_overrides_and_default_category_ids(tmp_path):
    save_detector(tmp_path / "m.ckpt", tiny_model(), TINY, CLASSES)
    model, meta = load_detector(tmp_path / "m.ckpt", overrides={"postprocess": {"score_thresh": 0.3}})
    # No preprocess stored: the normalisation of the model's style (pytorch: RGB, ImageNet).
    assert meta["category_ids"] == [1, 2]
    assert meta["preprocess"] == {
        "channel_order": "RGB",
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
    }
    # One setting changed, the others kept (pre_nms_topk 20 is not the default).
    assert (model.postprocessor.score_thresh, model.postprocessor.pre_nms_topk) == (0.3, 20)
    predictor = Predictor.from_checkpoint(tmp_path / "m.ckpt", candidates="pairs")
    assert (predictor.model.postprocessor.candidates, predictor.model.postprocessor.score_thresh) == (
        "pairs",
        0.0,
    )


def test_checkpoints_of_the_flat_keyword_layout_still_load(tmp_path):
    from kldet.checkpoint import model_spec

    # hyper_parameters["model"] as kldet wrote it before the composed detector (no candidates key yet).
    flat = {"num_classes": 2, "backbone": "resnet18", "channels": 16, "head_convs": 1, "assigner": "fcos",
            "center_radius": 2.0, "fpn_levels": [3, 4, 5, 6, 7], "score_thresh": 0.2, "weights": None}  # fmt: skip
    trained = seeded_detector(model_spec(flat))
    model, meta = load_detector(save_detector(tmp_path / "flat.ckpt", trained, flat, CLASSES))
    assert meta["model"]["_target_"] == "kldet.model.kldet_resnet_fpn"
    assert (model.postprocessor.score_thresh, model.postprocessor.candidates) == (0.2, "points")
    assert model.assigner == FCOSAssigner(center_radius=2.0) and model.strides == (8, 16, 32, 64, 128)
    for ours, theirs in zip(model.state_dict().values(), trained.state_dict().values(), strict=True):
        assert torch.equal(ours, theirs)


def test_save_detector_writes_every_preprocess_key_training_writes(tmp_path):
    saved = save_detector(tmp_path / "m.ckpt", tiny_model(), TINY, CLASSES, preprocess={"max_size": 512})
    # Hand-filled: pytorch style (RGB, ImageNet), padding to 32, and what max_size 512 means.
    assert torch.load(saved, weights_only=True)["hyper_parameters"]["preprocess"] == {
        "channel_order": "RGB",
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "size_divisor": 32,
        "max_size": 512,
        "resize": "longer_side",
    }
    given = {
        "channel_order": "BGR",
        "mean": [1, 2, 3],
        "std": [4, 5, 6],
        "size_divisor": 64,
        "max_size": None,
    }
    saved = save_detector(tmp_path / "n.ckpt", tiny_model(), TINY, CLASSES, preprocess=given)
    stored = torch.load(saved, weights_only=True)["hyper_parameters"]["preprocess"]
    assert stored == {**given, "mean": [1.0, 2.0, 3.0], "std": [4.0, 5.0, 6.0], "resize": "none"}
    for preprocess, words in [
        ({"mean": [1, 2, 3]}, "no 'max_size'"),
        ({"max_size": 800, "scale": 2}, "unknown keys ['scale']"),
        ({"max_size": 800, "channel_order": "RBG"}, "channel_order='RBG'"),
    ]:
        with pytest.raises(
            KLDetError, match=re.escape(f"save_detector {tmp_path / 'bad.ckpt'}: preprocess")
        ) as error:
            save_detector(tmp_path / "bad.ckpt", tiny_model(), TINY, CLASSES, preprocess=preprocess)
        assert words in str(error.value) and not (tmp_path / "bad.ckpt").exists()


def test_bad_checkpoints_are_one_clear_error(tmp_path):
    with pytest.raises(KLDetError, match="does not exist"):
        load_detector(tmp_path / "missing.ckpt")
    (tmp_path / "garbage.ckpt").write_bytes(b"definitely not a zip or pickle")
    with pytest.raises(KLDetError, match="garbage.ckpt: not a torch checkpoint"):
        load_detector(tmp_path / "garbage.ckpt")
    torch.save(
        {"hyper_parameters": {"model": TINY, "classes": CLASSES, "root": tmp_path}}, tmp_path / "obj.ckpt"
    )
    with pytest.raises(KLDetError, match="obj.ckpt: it stores a pathlib.PosixPath object"):
        load_detector(tmp_path / "obj.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "bare.ckpt")
    with pytest.raises(KLDetError, match="not a kldet checkpoint"):
        load_detector(tmp_path / "bare.ckpt")
    save_detector(tmp_path / "wrong.ckpt", tiny_model(), {**TINY, "channels": 32}, CLASSES)
    with pytest.raises(KLDetError, match="wrong.ckpt: weights do not match"):
        load_detector(tmp_path / "wrong.ckpt")


def test_one_tile_image_matches_the_model_on_the_normalised_padded_image(checkpoint):
    predictor = Predictor.from_checkpoint(checkpoint, tile_size=128, precision="fp32")
    rgb = np.random.default_rng(0).integers(0, 256, (70, 100, 3), dtype=np.uint8)
    ours = predictor.predict_image(rgb)
    # Independent preprocessing: normalise in float64 numpy, zero-pad to 96 x 128.
    padded = np.zeros((3, 96, 128), np.float32)
    padded[:, :70, :100] = ((rgb - np.array(MEAN)) / np.array(STD)).transpose(2, 0, 1)
    (reference,) = predictor.model.predict(torch.from_numpy(padded)[None], image_sizes=[(70, 100)])
    assert len(reference["boxes"]) > 0
    torch.testing.assert_close(ours["boxes"], reference["boxes"], atol=1e-3, rtol=0)
    torch.testing.assert_close(ours["scores"], reference["scores"], atol=1e-5, rtol=0)
    assert torch.equal(ours["labels"], reference["labels"])


def test_multi_tile_image_end_to_end_selects_tile_boxes_without_duplicates(checkpoint):
    # batch_size 1: the reference below runs tiles one by one, and a random network's near-tied scores can
    # pick a different top-k under the tiny numerical differences of a batched convolution.
    predictor = Predictor.from_checkpoint(
        checkpoint, tile_size=96, overlap=0.25, batch_size=1, nms_thresh=0.5
    )
    rgb = np.random.default_rng(1).integers(0, 256, (150, 250, 3), dtype=np.uint8)
    merged = predictor.predict_image(rgb)
    boxes = merged["boxes"]
    assert len(boxes) > 0
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 250).all() and (boxes[:, 3] <= 150).all()
    for label in merged["labels"].unique():
        same = boxes[merged["labels"] == label]
        iou = box_iou(same, same).fill_diagonal_(0)
        assert (iou <= 0.5 + 1e-6).all()  # class-wise NMS held across tile borders
    # Merging only selects: every box is one the model predicted on some tile, shifted back.
    tile_boxes = []
    for tile in make_tiles(150, 250, 96, 0.25):
        (detections,) = predictor.detect_tiles([rgb[tile.y0 : tile.y1, tile.x0 : tile.x1]])
        tile_boxes.append(detections["boxes"] + torch.tensor([tile.x0, tile.y0, tile.x0, tile.y0]))
    tile_boxes = torch.cat(tile_boxes)
    assert (boxes[:, None] == tile_boxes[None]).all(dim=2).any(dim=1).all()


def write_images(folder):
    rng = np.random.default_rng(2)
    save_image(folder / "small.png", rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))
    save_image(folder / "sub" / "scene.jpg", rng.integers(0, 256, (150, 200, 3), dtype=np.uint8))


def test_kldet_predict_on_a_folder(checkpoint, tmp_path, capsys):
    write_images(tmp_path / "in")
    out = tmp_path / "out"
    args = [f"ckpt={checkpoint}", f"input={tmp_path / 'in'}", f"out={out}", "tile_size=96", "batch_size=2"]
    assert predict_main([*args, "progress=false"]) == 0
    images = json.loads((out / "images.json").read_text())["images"]
    assert [(i["file_name"], i["width"], i["height"]) for i in images] == [
        ("small.png", 80, 60),
        ("sub/scene.jpg", 200, 150),
    ]
    results = COCO(str(out / "images.json")).loadRes(str(out / "results.json"))
    records = json.loads((out / "results.json").read_text())
    assert len(results.getAnnIds()) == len(records) > 0
    assert {r["category_id"] for r in records} <= set(CATEGORY_IDS)
    assert all(r["category_name"] == CLASSES[CATEGORY_IDS.index(r["category_id"])] for r in records)
    assert (out / "rendered" / "small.png").is_file() and (out / "rendered" / "sub" / "scene.jpg").is_file()

    # Image ids from a ground-truth file, matched by file name.
    gt = tmp_path / "gt.json"
    gt.write_text(
        json.dumps({"images": [{"id": 40, "file_name": "small.png"}, {"id": 41, "file_name": "scene.jpg"}]})
    )
    assert predict_main([*args, f"coco_gt={gt}", "render=false", f"out={tmp_path / 'out2'}"]) == 0
    assert {r["image_id"] for r in json.loads((tmp_path / "out2" / "results.json").read_text())} <= {40, 41}


def quiet_args(checkpoint, folder) -> list[str]:
    """kldet-predict on ``folder`` with small tiles, no rendering and no progress bar (``out=`` to add)."""
    return [f"ckpt={checkpoint}", f"input={folder}", "tile_size=96", "render=false", "progress=false"]


def test_kldet_predict_takes_the_former_output_key_with_a_deprecation_note(checkpoint, tmp_path, capsys):
    write_images(tmp_path / "in")
    args = quiet_args(checkpoint, tmp_path / "in")
    assert predict_main([*args, f"out={tmp_path / 'new'}"]) == 0
    capsys.readouterr()
    assert predict_main([*args, f"output={tmp_path / 'old'}"]) == 0
    err = capsys.readouterr().err
    assert "kldet-predict: output= is deprecated, use out= (output= goes in the next release)\n" in err
    assert err.count("deprecated") == 1
    assert (tmp_path / "old" / "results.json").read_text() == (tmp_path / "new" / "results.json").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["input=x", "out=y"], "missing required ckpt=..."),
        (["ckpt=a", "input=x", "out=y", "tile_sise=3"], "tile_sise"),
        (["ckpt=a", "input=x", "out=y", "batch_size=many"], "many"),
        (["ckpt=a", "input=x", "out=y", "render"], "expected key=value"),
        (["ckpt=a", "input=x", "out=y", "overlap=1.5"], "overlap is a fraction"),
        (["ckpt=a", "input=x", "out=y", "device=tpu"], "device=tpu"),
        (["ckpt=a", "input=missing_folder", "out=y"], "no image files"),
    ],
)
def test_kldet_predict_bad_arguments_are_one_line_errors(args, message, capsys):
    assert predict_main(args) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.startswith("kldet-predict: ") and err.count("kldet-predict:") == 1


def test_kldet_predict_candidates_is_passed_on_and_checked(checkpoint, tmp_path, capsys):
    write_images(tmp_path / "in")
    args = quiet_args(checkpoint, tmp_path / "in")
    outputs = {}
    for rule in ("points", "pairs"):
        assert predict_main([*args, f"out={tmp_path / rule}", f"candidates={rule}"]) == 0
        outputs[rule] = json.loads((tmp_path / rule / "results.json").read_text())
    # score_thresh 0: every pair passes either threshold, so the rules differ by their top-k only
    # (pre_nms_topk 20 pairs per level against 20 points with both classes each).
    assert len(outputs["points"]) > len(outputs["pairs"]) > 0
    capsys.readouterr()
    assert predict_main([*args, f"out={tmp_path / 'bad'}", "candidates=best"]) == 1
    err = capsys.readouterr().err
    assert "candidates='best'" in err and "Traceback" not in err and err.count("kldet-predict:") == 1


def test_kldet_predict_help(capsys):
    assert predict_main(["--help"]) == 0
    assert "tile_size" in capsys.readouterr().out


def test_kldet_predict_geotiff_writes_geojson(checkpoint, tmp_path):
    rasterio = pytest.importorskip("rasterio")
    transform = rasterio.Affine(2.0, 0.0, 300_000.0, 0.0, -2.0, 5_000_000.0)
    pixels = np.random.default_rng(3).integers(0, 256, (3, 100, 140), dtype=np.uint8)
    with rasterio.open(
        tmp_path / "scene.tif", "w", driver="GTiff", width=140, height=100, count=3, dtype="uint8",
        crs="EPSG:32632", transform=transform,
    ) as dataset:  # fmt: skip
        dataset.write(pixels)
    out = tmp_path / "out"
    args = [
        f"ckpt={checkpoint}",
        f"input={tmp_path / 'scene.tif'}",
        f"out={out}",
        "tile_size=96",
        "progress=false",
    ]
    assert predict_main(args) == 0
    assert [p.name for p in (out / "rendered").iterdir()] == ["scene.tif.png"]  # a PNG, not a plain TIFF
    collection = json.loads((out / "geojson" / "scene.geojson").read_text())
    records = json.loads((out / "results.json").read_text())
    assert "crs" not in collection  # RFC 7946: EPSG:4326 lon/lat
    assert len(collection["features"]) == len(records) > 0
    x, y, w, h = records[0]["bbox"]
    ring = np.array(collection["features"][0]["geometry"]["coordinates"][0])
    lon, lat = pytest.importorskip("rasterio.warp").transform(
        "EPSG:32632",
        "EPSG:4326",
        [300_000 + 2 * x, 300_000 + 2 * (x + w)],
        [5_000_000 - 2 * (y + h), 5_000_000 - 2 * y],
    )
    # bbox is rounded to 0.01 px (2 cm here): about 3e-7 degrees.
    assert ring.min(0) == pytest.approx([lon[0], lat[0]], abs=1e-6)
    assert ring.max(0) == pytest.approx([lon[1], lat[1]], abs=1e-6)

    assert predict_main([*args, f"out={tmp_path / 'projected'}", "vector_crs=image", "render=false"]) == 0
    collection = json.loads((tmp_path / "projected" / "geojson" / "scene.geojson").read_text())
    assert collection["crs"]["properties"]["name"] == "EPSG:32632"
    ring = np.array(collection["features"][0]["geometry"]["coordinates"][0])
    assert ring.min(0) == pytest.approx([300_000 + 2 * x, 5_000_000 - 2 * (y + h)], abs=0.05)
    assert ring.max(0) == pytest.approx([300_000 + 2 * (x + w), 5_000_000 - 2 * y], abs=0.05)


def predict_args(checkpoint, tmp_path, *extra):
    return [f"ckpt={checkpoint}", f"input={tmp_path / 'in'}", f"out={tmp_path / 'out'}", "tile_size=96",
            "progress=false", *extra]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["tile_size=16"], "tile_size=16: this network takes tiles of at least 96 px"),
        (["score_thresh=1.5"], "score_thresh=1.5: must be in [0, 1]"),
        (["score_thresh=-1"], "score_thresh=-1.0: must be in [0, 1]"),
        (["nms_thresh=2"], "nms_thresh=2.0: must be in [0, 1]"),
        (["max_detections=0"], "max_detections=0: must be at least 1"),
        (["resize=big"], "resize=big: use none, train or a longer side in pixels"),
        (["resize=0"], "resize=0: use none, train"),
    ],
)
def test_kldet_predict_rejects_values_out_of_range_before_inference(
    checkpoint, tmp_path, capsys, monkeypatch, extra, message
):
    write_images(tmp_path / "in")
    monkeypatch.setattr(Predictor, "predict_sources", lambda *a, **k: pytest.fail("inference ran"))
    assert predict_main(predict_args(checkpoint, tmp_path, *extra)) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_kldet_predict_checks_the_output_folder_before_inference(checkpoint, tmp_path, capsys, monkeypatch):
    write_images(tmp_path / "in")
    monkeypatch.setattr(Predictor, "predict_sources", lambda *a, **k: pytest.fail("inference ran"))
    (tmp_path / "taken").write_text("a file")
    for output, message in [
        (tmp_path / "taken", "exists and is not a folder"),
        (tmp_path / "taken" / "sub", "cannot write there"),
    ]:
        assert predict_main([*predict_args(checkpoint, tmp_path), f"out={output}"]) == 1
        err = capsys.readouterr().err
        assert f"kldet-predict: error: out={output}: {message}" in err and err.count("\n") == 1


def test_kldet_predict_summary_counts_images_boxes_and_images_without_boxes(checkpoint, tmp_path, capsys):
    write_images(tmp_path / "in")
    assert predict_main(predict_args(checkpoint, tmp_path)) == 0
    records = json.loads((tmp_path / "out" / "results.json").read_text())
    images = json.loads((tmp_path / "out" / "images.json").read_text())["images"]
    empty = sum(not any(r["image_id"] == image["id"] for r in records) for image in images)
    assert f"2 image(s), {len(records)} box(es), {empty} image(s) without boxes" in capsys.readouterr().err
    # No score reaches 1 (classification x centerness), so every image comes back empty.
    assert predict_main(predict_args(checkpoint, tmp_path, "score_thresh=1.0")) == 0
    assert "2 image(s), 0 box(es), 2 image(s) without boxes" in capsys.readouterr().err


@pytest.fixture(scope="module")
def small_scale_checkpoint(tmp_path_factory):
    """Trained (so to speak) with images resized to a longer side of 64 px."""
    path = tmp_path_factory.mktemp("ckpt64") / "m.ckpt"
    preprocess = {"mean": list(MEAN), "std": list(STD), "size_divisor": 32, "max_size": 64}
    return save_detector(path, tiny_model(), TINY, CLASSES, CATEGORY_IDS, preprocess)


@pytest.mark.parametrize(("resize", "longer_side"), [("train", 64), (50, 50), (200, 200)])
def test_resize_predicts_as_the_evaluation_pipeline_does(small_scale_checkpoint, resize, longer_side):
    predictor = Predictor.from_checkpoint(
        small_scale_checkpoint, tile_size=256, resize=resize, precision="fp32"
    )
    rgb = np.random.default_rng(4).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    ours = predictor.predict_image(rgb)
    # The second implementation: evaluation's transform, and the model mapping boxes back by its scale.
    tensor, _, _, scale = DetectionTransform(
        longer_side, normalization=InputNormalization(mean=MEAN, std=STD)
    )(rgb, np.zeros((0, 4)), [])
    height, width = tensor.shape[1:]
    assert max(height, width) == longer_side
    padded = torch.zeros(1, 3, -(-height // 32) * 32, -(-width // 32) * 32)
    padded[0, :, :height, :width] = tensor
    (reference,) = predictor.model.predict(padded, image_sizes=[(height, width)], scale_factors=[scale])
    assert len(reference["boxes"]) > 0
    torch.testing.assert_close(ours["boxes"], reference["boxes"], atol=1e-3, rtol=0)
    torch.testing.assert_close(ours["scores"], reference["scores"], atol=1e-5, rtol=0)
    assert (ours["boxes"][:, 2] <= 150 + 1e-3).all() and (ours["boxes"][:, 3] <= 100 + 1e-3).all()


def test_native_scale_larger_than_training_warns_once_with_the_numbers(small_scale_checkpoint, caplog):
    predictor = Predictor.from_checkpoint(small_scale_checkpoint, tile_size=96)
    # The warning concerns the images, not the network: a stub detector keeps this fast.
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
    predictor.detect_tiles = lambda tiles: [empty] * len(tiles)
    large = [np.zeros((100, 150, 3), np.uint8), np.zeros((90, 90, 3), np.uint8)]
    small = np.zeros((40, 64, 3), np.uint8)
    for resize, images, warnings_expected in [
        (None, large, 1),
        (None, [small], 0),
        ("none", large, 0),
        ("train", large, 0),
    ]:
        predictor.resize = resize
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="kldet.inference.predictor"):
            list(predictor.predict_sources([ArraySource(image) for image in images]))
        assert len(caplog.records) == warnings_expected, resize
    predictor.resize = None
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kldet.inference.predictor"):
        list(predictor.predict_sources([ArraySource(large[0])]))
    (message,) = [r.getMessage() for r in caplog.records]
    assert "150x100 px, predicted at native scale" in message
    assert "longer side was 64 px" in message and "scaled by 0.427" in message
    assert "resize=train" in message and "resize=none" in message


def test_training_scale_is_recorded_and_resize_train_needs_it(tmp_path):
    from kldet.lit import KLDetModule

    model = {k: v for k, v in TINY.items() if k != "num_classes"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for max_size, policy in [(800, {"resize": "longer_side", "max_size": 800}),
                                 (None, {"resize": "none", "max_size": None})]:  # fmt: skip
            module = KLDetModule(model, CLASSES, preprocess={"mean": list(MEAN), "max_size": max_size})
            assert module.hparams["preprocess"] == {"mean": list(MEAN), **policy}
    # A checkpoint from before "resize" existed: its max_size meant the same resize.
    old = store_preprocess(
        save_detector(tmp_path / "old.ckpt", tiny_model(), TINY, CLASSES), {"max_size": 512}
    )
    assert Predictor.from_checkpoint(old).train_resize == {"resize": "longer_side", "max_size": 512}
    bare = save_detector(tmp_path / "bare.ckpt", tiny_model(), TINY, CLASSES)
    with pytest.raises(KLDetConfigError, match="resize=train: the checkpoint does not record"):
        Predictor.from_checkpoint(bare, resize="train")
    assert Predictor.from_checkpoint(bare, resize=96).input_size(100, 200) == (48, 96)


def test_kldet_predict_says_once_that_exif_orientation_is_ignored(checkpoint, tmp_path, caplog):
    from PIL import Image

    (tmp_path / "in").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    for name in ("a.jpg", "b.jpg"):
        Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(tmp_path / "in" / name, exif=exif)
    with caplog.at_level(logging.WARNING, logger="kldet.cli.predict"):
        assert predict_main(predict_args(checkpoint, tmp_path, "render=false")) == 0
    (message,) = [r.getMessage() for r in caplog.records]
    assert "2 input image(s) carry an EXIF orientation tag (first: a.jpg, orientation 6)" in message
    images = json.loads((tmp_path / "out" / "images.json").read_text())["images"]
    assert [(i["width"], i["height"]) for i in images] == [(60, 40), (60, 40)]  # the stored pixels


def test_kldet_predict_names_a_truncated_image_in_one_line(checkpoint, tmp_path, capsys):
    write_images(tmp_path / "in")
    scene = tmp_path / "in" / "sub" / "scene.jpg"
    scene.write_bytes(scene.read_bytes()[:-200])
    assert predict_main(predict_args(checkpoint, tmp_path)) == 1
    err = capsys.readouterr().err
    assert f"kldet-predict: error: image file {scene} cannot be decoded: truncated" in err
    assert "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("content", "words"),
    [(None, "annotation file not found"), ("{", "not valid JSON"), ("[]", "images list")],
)
def test_kldet_predict_bad_coco_gt_is_one_line_naming_the_file(checkpoint, tmp_path, capsys, content, words):
    write_images(tmp_path / "in")
    gt = tmp_path / "gt.json"
    if content is not None:
        gt.write_text(content)
    assert (
        predict_main([*quiet_args(checkpoint, tmp_path / "in"), f"coco_gt={gt}", f"out={tmp_path / 'o'}"])
        == 1
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(gt) in err and words in err and "Traceback" not in err


def read_summary(path):
    import csv

    with path.open() as file:
        return list(csv.DictReader(file))


def test_a_resumed_folder_run_writes_what_an_uninterrupted_one_does(checkpoint, tmp_path, capsys):
    write_images(tmp_path / "in")
    save_image(
        tmp_path / "in" / "z.png", np.random.default_rng(8).integers(0, 256, (90, 100, 3), dtype=np.uint8)
    )
    args = [f"ckpt={checkpoint}", f"input={tmp_path / 'in'}", "tile_size=96", "progress=false"]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert predict_main([*args, f"out={whole}"]) == 0
    assert predict_main([*args, f"out={resumed}"]) == 0
    # "Interrupt" the second run after its first image: the later ones have left no outputs.
    for name in ("sub/scene.jpg", "z.png"):
        (resumed / "scenes" / f"{name}.json").unlink()
    (resumed / "rendered" / "z.png").unlink()  # scene.jpg keeps its rendering: still predicted again
    (resumed / "results.json").unlink()
    kept = (resumed / "scenes" / "small.png.json").stat().st_mtime_ns
    capsys.readouterr()
    assert predict_main([*args, f"out={resumed}", "skip_existing=true"]) == 0
    assert "3 image(s) (1 skipped: their outputs existed)" in capsys.readouterr().err
    assert (resumed / "scenes" / "small.png.json").stat().st_mtime_ns == kept
    for name in ("results.json", "images.json"):
        assert (resumed / name).read_text() == (whole / name).read_text()
    rows, again = read_summary(whole / "summary.csv"), read_summary(resumed / "summary.csv")
    assert [{**r, "seconds": None} for r in rows] == [{**r, "seconds": None} for r in again]

    # summary.csv against results.json and the tiling, computed here.
    records = json.loads((whole / "results.json").read_text())
    assert [r["file_name"] for r in rows] == ["small.png", "sub/scene.jpg", "z.png"]
    for row in rows:
        height, width = int(row["height"]), int(row["width"])
        mine = [r for r in records if r["file_name"] == row["file_name"]]
        assert int(row["boxes"]) == len(mine)
        assert [int(row[name]) for name in CLASSES] == [
            sum(r["category_name"] == c for r in mine) for c in CLASSES
        ]
        assert int(row["tiles"]) == len(make_tiles(height, width, 96, 0.2)) and float(row["seconds"]) >= 0
    assert [(int(r["width"]), int(r["height"])) for r in rows] == [(80, 60), (200, 150), (100, 90)]


def write_geotiff(path, pixels, nodata=None):
    rasterio = pytest.importorskip("rasterio")
    count, height, width = pixels.shape
    with rasterio.open(
        path, "w", driver="GTiff", width=width, height=height, count=count, dtype=pixels.dtype.name,
        crs="EPSG:32633", transform=rasterio.Affine(0.5, 0.0, 500_000.0, 0.0, -0.5, 4_000_000.0), nodata=nodata,
    ) as dataset:  # fmt: skip
        dataset.write(pixels)


def test_a_16_bit_four_band_scene_predicts_as_its_stretched_8_bit_rgb(checkpoint, tmp_path):
    pixels = np.random.default_rng(6).normal(2000, 500, (4, 100, 140)).clip(1, 65535).astype(np.uint16)
    pixels[:, :10, :10] = 0  # nodata
    write_geotiff((tmp_path / "bgrn").mkdir() or tmp_path / "bgrn" / "scene.tif", pixels, nodata=0)
    rgb = []
    for band in (3, 2, 1):  # the stretch computed here: 2 and 98 % of the valid pixels to 0 and 255
        values = pixels[band - 1].astype(np.float64)
        low, high = np.percentile(values[pixels[band - 1] != 0], [2, 98])
        stretched = np.clip(np.rint((values - low) / (high - low) * 255), 0, 255)
        rgb.append(np.where(pixels[band - 1] == 0, 0, stretched).astype(np.uint8))
    write_geotiff((tmp_path / "rgb").mkdir() or tmp_path / "rgb" / "scene.tif", np.stack(rgb))
    args = quiet_args(checkpoint, tmp_path / "bgrn")
    assert predict_main([*args, f"out={tmp_path / 'a'}", "bands=[3,2,1]", "stretch=[2,98]"]) == 0
    assert predict_main([*quiet_args(checkpoint, tmp_path / "rgb"), f"out={tmp_path / 'b'}"]) == 0
    records = json.loads((tmp_path / "a" / "results.json").read_text())
    assert records == json.loads((tmp_path / "b" / "results.json").read_text()) and records
    assert (tmp_path / "a" / "geojson" / "scene.geojson").read_text() == (
        tmp_path / "b" / "geojson" / "scene.geojson"
    ).read_text()


def test_kldet_predict_writes_a_geopackage_and_checks_the_new_keys(checkpoint, tmp_path, capsys):
    raw = pytest.importorskip("pyogrio.raw")
    (tmp_path / "in").mkdir()
    write_geotiff(
        tmp_path / "in" / "scene.tif",
        np.random.default_rng(3).integers(0, 256, (3, 100, 140), dtype=np.uint8),
    )
    args = quiet_args(checkpoint, tmp_path / "in")
    assert (
        predict_main([*args, f"out={tmp_path / 'out'}", "vector_format=gpkg", "merge=nmm", "match=ios"]) == 0
    )
    meta, _, geometries, _ = raw.read(tmp_path / "out" / "gpkg" / "scene.gpkg", layer="detections")
    records = json.loads((tmp_path / "out" / "results.json").read_text())
    assert meta["crs"] == "EPSG:4326" and len(geometries) == len(records) > 0
    capsys.readouterr()
    for bad, words in [
        ("match=ios", "match=ios: only merge=nmm"),
        ("merge=wbf", "merge=wbf: use nms or nmm"),
        ("vector_format=shp", "vector_format=shp: use geojson or gpkg"),
        ("vector_crs=EPSG:3857", "vector_crs=EPSG:3857: use lonlat or image"),
        ("merge_thresh=1.5", "merge_thresh=1.5: must be in [0, 1]"),
        ("stretch=[98,2]", "stretch=[98, 2]: give none or [low,high]"),
        ("bands=[1,2]", "bands=[1, 2]: give three"),
    ]:
        assert predict_main([*args, f"out={tmp_path / 'bad'}", bad]) == 1
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err and err.count("kldet-predict:") == 1
