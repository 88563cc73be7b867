"""The whole-scene workflow of the README and `make scenes`, on generated data, shrunk: DOTA-style GeoTIFF scenes
-> kldet-data convert -> (kldet-data tile, or) kldet-train on native-resolution crops -> kldet-predict on a
whole scene -> GeoJSON in lon/lat."""

import json

import numpy as np
import pytest
import torch

from kldet.cli.data import main as kldet_data
from kldet.cli.predict import main as kldet_predict
from kldet.cli.train import train
from kldet.data.synthetic import GEOTIFF_ORIGIN, GEOTIFF_PIXEL
from training import TINY, tiny_config

rasterio = pytest.importorskip("rasterio")
pytestmark = pytest.mark.usefixtures("quiet_single_thread")

SIZE, CROP = 320, 128


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Three 320 px GeoTIFF scenes (two train, one val) converted to COCO, as `make scenes` does."""
    data_dir = tmp_path_factory.mktemp("data")
    root = data_dir / "scenes"
    argv = ["synth", "format=dota", "geotiff=true", f"out={root}", "num_images=3", f"image_size={SIZE}"]
    assert kldet_data([*argv, "seed=1", "val_fraction=0.34"]) == 0
    for split in ("train", "val"):
        labels, images = root / split / "labelTxt", root / split / "images"
        assert (
            kldet_data(
                ["convert", "from=dota", f"labels={labels}", f"images={images}", f"out={root}/{split}.json"]
            )
            == 0
        )
    return data_dir


def test_the_converted_scenes_tile_into_a_coco_set_that_checks(scenes, tmp_path):
    root = scenes / "scenes"
    out = tmp_path / "tiles"
    argv = ["tile", "format=coco", f"ann={root}/train.json", f"images={root}/train/images", f"out={out}"]
    assert kldet_data([*argv, f"size={CROP}", "split_by=none", "progress=false"]) == 0
    assert kldet_data(["check", "format=coco", f"root={out}", "split=tiles"]) == 0
    tiles = json.loads((out / "annotations" / "tiles.json").read_text())
    assert {image["scene"] for image in tiles["images"]} == {"P0001.tif", "P0002.tif"}


def test_crop_training_then_prediction_on_a_whole_scene_gives_lon_lat_geojson(scenes, tmp_path):
    run = tmp_path / "run"
    overrides = [
        *(item for item in TINY if not item.startswith(("experiment=", "synthetic.", "data.max_size"))),
        "experiment=synthetic_scenes",
        f"data.crop_size={CROP}",
        "trainer.max_epochs=1",
        "trainer.check_val_every_n_epoch=1",
        "model.postprocess.score_thresh=0.0",
        "model.postprocess.max_detections=50",
    ]
    cfg = tiny_config(scenes, run, *overrides, base=[])
    assert cfg.data.max_size is None and cfg.synthetic is None
    metrics = train(cfg)
    assert "val/AP" in metrics
    checkpoint = run / "checkpoints" / "last.ckpt"
    preprocess = torch.load(checkpoint, weights_only=True)["hyper_parameters"]["preprocess"]
    assert preprocess["resize"] == "crop" and preprocess["crop_size"] == CROP

    out = tmp_path / "predictions"
    scene = scenes / "scenes" / "val" / "images" / "P0003.tif"
    assert kldet_predict([f"ckpt={checkpoint}", f"input={scene}", f"out={out}", "progress=false"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results, "a score threshold of 0 keeps detections"
    collection = json.loads((out / "geojson" / "P0003.geojson").read_text())
    assert "crs" not in collection and len(collection["features"]) == len(results)
    # Scene 3 (index 2) lies 2 * 320 * 0.5 m east of the origin, 500 km east in UTM 33N: its central
    # meridian, 15 degrees E; 4,600 km north is 41.5 degrees N. Every corner falls inside the scene.
    with rasterio.open(scene) as raster:
        assert raster.transform.c == GEOTIFF_ORIGIN[0] + 2 * SIZE * GEOTIFF_PIXEL
        west, south, east, north = rasterio.warp.transform_bounds(raster.crs, "EPSG:4326", *raster.bounds)
    corners = np.array([point for f in collection["features"] for point in f["geometry"]["coordinates"][0]])
    assert 14.9 < west < east < 15.1 and 41.4 < south < north < 41.7
    assert (corners[:, 0] >= west - 1e-9).all() and (corners[:, 0] <= east + 1e-9).all()
    assert (corners[:, 1] >= south - 1e-9).all() and (corners[:, 1] <= north + 1e-9).all()
