"""Checkpoint loading, the Predictor on a real (tiny, random) KLDet, and kldet-predict in-process."""

import json
import warnings

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from torchvision.ops import box_iou

from kldet.checkpoint import load_detector, save_detector
from kldet.cli.predict import main as predict_main
from kldet.errors import KLDetError
from kldet.inference.predictor import Predictor
from kldet.inference.render import save_image
from kldet.inference.tiling import make_tiles
from kldet.model import KLDet

# Small enough for the CPU; score_thresh 0 and a small top-k so a random network yields a few boxes.
TINY = {
    "num_classes": 2,
    "backbone": "resnet18",
    "channels": 16,
    "head_convs": 1,
    "score_thresh": 0.0,
    "pre_nms_topk": 20,
    "max_detections": 30,
}
CLASSES = ["vehicle", "ship"]
CATEGORY_IDS = [6, 4]
MEAN, STD = (120.0, 110.0, 100.0), (60.0, 50.0, 40.0)


def tiny_model(**changes) -> KLDet:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "random weights"
        return KLDet(**{**TINY, **changes}).eval()


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
            "optim": {"lr": 0.01},
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


def test_checkpoint_overrides_and_default_category_ids(tmp_path):
    save_detector(tmp_path / "m.ckpt", tiny_model(), TINY, CLASSES)
    model, meta = load_detector(tmp_path / "m.ckpt", overrides={"score_thresh": 0.3})
    assert meta["category_ids"] == [1, 2] and meta["preprocess"] == {}
    assert model.postprocess_options["score_thresh"] == 0.3
    # TINY predates the candidates key: such checkpoints load with the authors' rule.
    assert "candidates" not in TINY and model.postprocess_options["candidates"] == "points"
    predictor = Predictor.from_checkpoint(tmp_path / "m.ckpt", candidates="pairs")
    assert predictor.model.postprocess_options["candidates"] == "pairs"


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
    predictor = Predictor.from_checkpoint(checkpoint, tile_size=128)
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
    args = [f"ckpt={checkpoint}", f"input={tmp_path / 'in'}", f"output={out}", "tile_size=96", "batch_size=2"]
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
    assert predict_main([*args, f"coco_gt={gt}", "render=false", f"output={tmp_path / 'out2'}"]) == 0
    assert {r["image_id"] for r in json.loads((tmp_path / "out2" / "results.json").read_text())} <= {40, 41}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["input=x", "output=y"], "missing required ckpt=..."),
        (["ckpt=a", "input=x", "output=y", "tile_sise=3"], "tile_sise"),
        (["ckpt=a", "input=x", "output=y", "batch_size=many"], "many"),
        (["ckpt=a", "input=x", "output=y", "render"], "expected key=value"),
        (["ckpt=a", "input=x", "output=y", "overlap=1.5"], "overlap is a fraction"),
        (["ckpt=a", "input=x", "output=y", "device=tpu"], "device=tpu"),
        (["ckpt=a", "input=missing_folder", "output=y"], "no image files"),
    ],
)
def test_kldet_predict_bad_arguments_are_one_line_errors(args, message, capsys):
    assert predict_main(args) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.startswith("kldet-predict: ") and err.count("kldet-predict:") == 1


def test_kldet_predict_candidates_is_passed_on_and_checked(checkpoint, tmp_path, capsys):
    write_images(tmp_path / "in")
    args = [
        f"ckpt={checkpoint}",
        f"input={tmp_path / 'in'}",
        "tile_size=96",
        "render=false",
        "progress=false",
    ]
    outputs = {}
    for rule in ("points", "pairs"):
        assert predict_main([*args, f"output={tmp_path / rule}", f"candidates={rule}"]) == 0
        outputs[rule] = json.loads((tmp_path / rule / "results.json").read_text())
    # score_thresh 0: every pair passes either threshold, so the rules differ by their top-k only
    # (pre_nms_topk 20 pairs per level against 20 points with both classes each).
    assert len(outputs["points"]) > len(outputs["pairs"]) > 0
    capsys.readouterr()
    assert predict_main([*args, f"output={tmp_path / 'bad'}", "candidates=best"]) == 1
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
        f"output={out}",
        "tile_size=96",
        "progress=false",
    ]
    assert predict_main(args) == 0
    collection = json.loads((out / "geojson" / "scene.geojson").read_text())
    records = json.loads((out / "results.json").read_text())
    assert collection["crs"]["properties"]["name"] == "EPSG:32632"
    assert len(collection["features"]) == len(records) > 0
    x, y, w, h = records[0]["bbox"]
    ring = collection["features"][0]["geometry"]["coordinates"][0]
    assert ring[0] == pytest.approx([300_000 + 2 * x, 5_000_000 - 2 * y], abs=0.05)
    assert ring[2] == pytest.approx([300_000 + 2 * (x + w), 5_000_000 - 2 * (y + h)], abs=0.05)
