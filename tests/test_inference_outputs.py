"""What kldet-predict writes: COCO results, rendered images, GeoJSON; and image sources."""

import json

import cv2
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from kldet.errors import KLDetConfigError, KLDetDataError
from kldet.inference import sources
from kldet.inference.render import PALETTE, draw_detections, save_image
from kldet.inference.results import detections_to_coco, image_ids_from_coco, write_results
from kldet.inference.sources import ImageFile, find_images

CLASSES = ["vehicle", "ship"]
CATEGORY_IDS = [6, 4]  # the data set's own ids, deliberately not 1..C


def detections(boxes, scores, labels):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.long),
    }


def test_coco_records_use_xywh_category_ids_and_names():
    (record,) = detections_to_coco(
        detections([[10, 20, 16, 29]], [0.75], [1]), 7, "a/b.png", CLASSES, CATEGORY_IDS
    )
    assert record == {
        "image_id": 7,
        "file_name": "a/b.png",
        "category_id": 4,
        "category_name": "ship",
        "bbox": [10.0, 20.0, 6.0, 9.0],
        "score": 0.75,
    }


def test_results_load_with_pycocotools_and_score_perfectly_against_their_own_boxes(tmp_path):
    per_image = {
        1: detections([[10, 10, 20, 18], [40, 40, 52, 47]], [0.9, 0.8], [0, 1]),
        2: detections([[5, 5, 11, 9]], [0.7], [0]),
    }
    images = [{"id": i, "file_name": f"img{i}.png", "width": 64, "height": 64} for i in per_image]
    records = [
        r
        for i, d in per_image.items()
        for r in detections_to_coco(d, i, f"img{i}.png", CLASSES, CATEGORY_IDS)
    ]
    results_path, images_path = write_results(tmp_path, images, records, CLASSES, CATEGORY_IDS)

    loaded = COCO(str(images_path)).loadRes(str(results_path))
    assert len(loaded.getAnnIds()) == 3
    assert sorted(loaded.getCatIds()) == [4, 6]

    # A ground truth with the same boxes, ids and categories: AP must be exactly 1.
    gt = json.loads(images_path.read_text())
    gt["annotations"] = [
        {"id": k + 1, "image_id": r["image_id"], "category_id": r["category_id"], "bbox": r["bbox"],
         "area": r["bbox"][2] * r["bbox"][3], "iscrowd": 0}
        for k, r in enumerate(records)
    ]  # fmt: skip
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    coco_gt = COCO(str(gt_path))
    evaluator = COCOeval(coco_gt, coco_gt.loadRes(str(results_path)), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)


def test_image_ids_from_coco_and_a_bad_file(tmp_path):
    good = tmp_path / "gt.json"
    good.write_text(json.dumps({"images": [{"id": 12, "file_name": "x.png"}], "annotations": []}))
    assert image_ids_from_coco(good) == {"x.png": 12}
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(KLDetDataError, match="bad.json"):
        image_ids_from_coco(bad)


def test_render_draws_thin_outlines_in_the_class_colour_just_outside_the_box():
    image = np.zeros((40, 50, 3), np.uint8)
    drawn = draw_detections(image, detections([[10, 12, 20, 30]], [0.9], [1]), CLASSES, show_labels=False)
    outline = np.zeros((40, 50), bool)  # the box covers pixels 10..19 x 12..29; its outline is around them
    outline[11:31, [9, 20]] = True
    outline[[11, 30], 9:21] = True
    assert (drawn[outline] == PALETTE[1]).all()
    assert (drawn[~outline] == 0).all()
    assert (image == 0).all()  # the input is not drawn on


def test_render_labels_and_empty_detections():
    image = np.full((70, 80, 3), 255, np.uint8)  # room for a label below the box, none above
    labelled = draw_detections(image, detections([[5, 5, 70, 50]], [0.5], [0]), CLASSES)
    plain = draw_detections(image, detections([[5, 5, 70, 50]], [0.5], [0]), CLASSES, show_labels=False)
    assert (labelled != plain).any()  # the label text and its background were drawn
    assert np.array_equal(labelled[6:50, 6:70], image[6:50, 6:70])  # ... outside the box, not over the object
    low = draw_detections(image, detections([[5, 3, 20, 9]], [0.5], [0]), CLASSES)
    assert (low[10:22] != 255).any() and (low[:2] == 255).all()  # no room above: the label goes below
    assert np.array_equal(draw_detections(image, detections([], [], []), CLASSES), image)


def test_saved_image_round_trips(tmp_path):
    image = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    save_image(tmp_path / "sub" / "x.png", image)
    assert np.array_equal(cv2.cvtColor(cv2.imread(str(tmp_path / "sub" / "x.png")), cv2.COLOR_BGR2RGB), image)


def test_image_file_reads_windows_and_reports_unreadable_files(tmp_path):
    image = np.random.default_rng(1).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    save_image(tmp_path / "a.png", image)
    source = ImageFile(tmp_path / "a.png")
    assert (source.height, source.width) == (50, 70)
    assert np.array_equal(source.read(10, 5, 40, 45), image[5:45, 10:40])
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(KLDetDataError, match="broken.jpg"):
        ImageFile(tmp_path / "broken.jpg")


def test_find_images_in_a_file_a_folder_and_a_glob(tmp_path):
    for name in ("a/1.png", "a/2.jpg", "b/3.png", "b/notes.txt", "out/rendered/1.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    files, root = find_images(tmp_path, exclude=tmp_path / "out")
    assert [p.relative_to(root).as_posix() for p in files] == ["a/1.png", "a/2.jpg", "b/3.png"]
    files, root = find_images(str(tmp_path / "*" / "*.png"), exclude=tmp_path / "out")
    assert (root, [p.relative_to(root).as_posix() for p in files]) == (tmp_path, ["a/1.png", "b/3.png"])
    files, root = find_images(tmp_path / "a" / "2.jpg")
    assert (files, root) == ([tmp_path / "a" / "2.jpg"], tmp_path / "a")
    with pytest.raises(KLDetConfigError, match="no image files"):
        find_images(tmp_path / "b" / "*.tif")


def test_geotiff_windows_and_geojson_in_the_image_crs(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    from kldet.inference.geo import RasterFile, detections_to_geojson

    pixels = np.random.default_rng(2).integers(0, 255, (3, 64, 96), dtype=np.uint8)
    path = tmp_path / "scene.tif"
    transform = rasterio.Affine(0.5, 0.0, 500_000.0, 0.0, -0.25, 4_000_000.0)  # 0.5 m columns, 0.25 m rows
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=96,
        height=64,
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        transform=transform,
    ) as dataset:
        dataset.write(pixels)
    source = RasterFile(path)
    assert (source.height, source.width, source.georeferenced) == (64, 96, True)
    assert np.array_equal(source.read(10, 20, 50, 30), pixels[:, 20:30, 10:50].transpose(1, 2, 0))
    source.close()

    collection = detections_to_geojson(
        detections([[10, 20, 30, 40]], [0.5], [0]),
        source.transform,
        source.crs,
        CLASSES,
        CATEGORY_IDS,
        "scene.tif",
        vector_crs="image",
    )
    (feature,) = collection["features"]
    assert collection["crs"]["properties"]["name"] == "EPSG:32633"
    # Counter-clockwise in map coordinates (north up): bottom-left, bottom-right, top-right, top-left.
    assert feature["geometry"]["coordinates"] == [
        [[500_005.0, 3_999_990.0], [500_015.0, 3_999_990.0], [500_015.0, 3_999_995.0], [500_005.0, 3_999_995.0],
         [500_005.0, 3_999_990.0]]
    ]  # fmt: skip
    assert feature["properties"]["category_id"] == 6 and feature["properties"]["bbox"] == [10, 20, 20, 20]


def test_geotiff_that_is_not_8_bit_without_a_stretch_is_a_clear_error(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    from kldet.inference.geo import RasterFile

    path = tmp_path / "dem.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint16", crs="EPSG:4326",
        transform=rasterio.Affine(0.1, 0.0, 10.0, 0.0, -0.1, 50.0),
    ) as dataset:  # fmt: skip
        dataset.write(np.zeros((1, 8, 8), np.uint16))
    with pytest.raises(KLDetDataError, match=r"dem.tif: uint16 pixels.*stretch=\[2,98\]"):
        RasterFile(path)


def test_tiff_without_rasterio_is_read_whole_with_a_warning(tmp_path, monkeypatch):
    image = np.random.default_rng(4).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    save_image(tmp_path / "plain.tif", image)
    monkeypatch.setattr(sources.importlib.util, "find_spec", lambda name: None)
    with pytest.warns(UserWarning, match="rasterio is not installed"):
        source = sources.open_image(tmp_path / "plain.tif")
    assert isinstance(source, ImageFile)
    assert np.array_equal(source.read(0, 0, 30, 20), image)
