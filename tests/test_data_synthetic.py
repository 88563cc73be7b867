"""The synthetic data set: determinism, layout, AI-TOD-like sizes, dense clusters, tight boxes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kldet.data import AITOD_CLASSES, DIOR_CLASSES, find_aitod_split, read_aitod, read_dior
from kldet.data.convert import convert
from kldet.data.stats import box_sizes
from kldet.data.synthetic import _Scene, generate, synthesize_image
from kldet.errors import KLDetConfigError


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_files_other_seed_other_images(tmp_path):
    generate(tmp_path / "a", 3, seed=7, image_size=128)
    generate(tmp_path / "b", 3, seed=7, image_size=128)
    generate(tmp_path / "c", 3, seed=8, image_size=128)
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert a == b
    assert (
        sorted(a)
        == sorted(c)
        == [
            "annotations/train.json",
            "annotations/val.json",
            "train/00001.png",
            "train/00002.png",
            "val/00003.png",
        ]
    )
    assert all(a[name] != c[name] for name in a if name.endswith(".png"))


def test_written_set_reads_back_exactly(tmp_path):
    written = generate(tmp_path, 5, seed=2, image_size=160, val_fraction=0.4)
    assert written == {"train": tmp_path / "annotations/train.json", "val": tmp_path / "annotations/val.json"}
    categories = json.loads(written["train"].read_text())["categories"]
    assert categories == [{"id": i + 1, "name": name} for i, name in enumerate(AITOD_CLASSES)]
    train = read_aitod(*find_aitod_split(tmp_path, "train"))
    val = read_aitod(*find_aitod_split(tmp_path, "val"))
    assert [r.image_id for r in train.records] == [1, 2, 3] and [r.image_id for r in val.records] == [4, 5]
    for record in train.records + val.records:
        _, boxes, labels = synthesize_image(np.random.default_rng([2, record.image_id - 1]), 160)
        np.testing.assert_array_equal(record.boxes, boxes)
        np.testing.assert_array_equal(record.labels, labels)
        assert (record.width, record.height) == (160, 160)


def test_dior_layout_uses_dior_names_and_leaves_out_unshared_classes(tmp_path):
    written = generate(tmp_path, 4, seed=1, image_size=256, format="dior", val_fraction=0.25)
    assert written["val"].read_text() == "00004\n"
    assert sorted(p.name for p in (tmp_path / "JPEGImages").iterdir()) == [
        f"0000{i}.jpg" for i in range(1, 5)
    ]
    records = read_dior(tmp_path, "train").records + read_dior(tmp_path, "val").records
    names = {DIOR_CLASSES[label] for r in records for label in r.labels}
    assert names and names <= {"airplane", "bridge", "storagetank", "ship", "vehicle", "windmill"}
    for record in records:
        _, boxes, labels = synthesize_image(
            np.random.default_rng([1, record.image_id - 1]), 256, [0, 1, 2, 3, 5, 7]
        )
        np.testing.assert_array_equal(record.boxes, boxes)
        assert [DIOR_CLASSES[i] for i in record.labels] == [
            {"storage-tank": "storagetank", "wind-mill": "windmill"}.get(n, n)
            for n in np.take(AITOD_CLASSES, labels)
        ]


@pytest.mark.parametrize("geotiff", [False, True])
def test_dota_layout_converts_back_to_the_drawn_boxes_and_geotiffs_are_georeferenced(tmp_path, geotiff):
    if geotiff:
        rasterio = pytest.importorskip("rasterio")
    written = generate(tmp_path, 3, seed=4, image_size=200, format="dota", val_fraction=0.34, geotiff=geotiff)
    assert written == {"train": tmp_path / "train/labelTxt", "val": tmp_path / "val/labelTxt"}
    suffix = ".tif" if geotiff else ".png"
    assert sorted(p.name for p in (tmp_path / "train/images").iterdir()) == [
        f"P0001{suffix}",
        f"P0002{suffix}",
    ]
    conversion = convert("dota", tmp_path / "train/labelTxt", tmp_path / "train/images")
    by_name = {image["file_name"]: image for image in conversion.coco["images"]}
    dota_names = [{"airplane": "plane", "vehicle": "small-vehicle"}.get(n, n) for n in AITOD_CLASSES]
    for i in (0, 1):
        pixels, boxes, labels = synthesize_image(np.random.default_rng([4, i]), 200, [0, 1, 2, 3, 4, 5])
        image = by_name[f"P000{i + 1}{suffix}"]
        assert image["gsd"] == 0.5 and image["imagesource"] == "kldet-synthetic"
        annotations = [a for a in conversion.coco["annotations"] if a["image_id"] == image["id"]]
        xywh = np.array([a["bbox"] for a in annotations]).reshape(-1, 4)
        np.testing.assert_allclose(np.c_[xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], boxes)
        names = [conversion.classes[a["category_id"] - 1] for a in annotations]
        assert names == [dota_names[label] for label in labels]
        if geotiff:
            with rasterio.open(tmp_path / "train/images" / image["file_name"]) as raster:
                assert raster.crs.to_epsg() == 32633 and raster.res == (0.5, 0.5)
                assert raster.transform.c == 500_000 + i * 200 * 0.5  # scene i lies east of scene i - 1
                np.testing.assert_array_equal(raster.read().transpose(1, 2, 0), pixels)


def test_geotiff_is_only_for_the_dota_layout(tmp_path):
    with pytest.raises(KLDetConfigError, match="only format=dota"):
        generate(tmp_path, 2, seed=0, format="aitod", geotiff=True)


@pytest.fixture(scope="module")
def many_scenes():
    return [synthesize_image(np.random.default_rng([11, i]), 512) for i in range(60)]


def test_sizes_and_classes_look_like_aitod(many_scenes):
    boxes = np.concatenate([b for _, b, _ in many_scenes])
    labels = np.concatenate([y for _, _, y in many_scenes])
    sizes = box_sizes(boxes)
    assert 4 <= np.median(sizes) <= 16
    assert 10.5 <= sizes.mean() <= 13.5
    assert np.mean((sizes >= 4) & (sizes < 16)) > 0.7
    assert 32 < sizes.max() <= 64 * 1.5
    assert set(labels.tolist()) == set(range(8))
    assert np.bincount(labels).argmax() == AITOD_CLASSES.index("vehicle")
    assert any(len(b) == 0 for _, b, _ in many_scenes)
    assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2:] <= 512) and np.all(boxes[:, 2:] > boxes[:, :2])


def test_some_scenes_have_dense_clusters(many_scenes):
    def densest(boxes):
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        near = np.abs(centres[:, None] - centres[None]).max(-1) <= 40
        return near.sum(1).max() if len(boxes) else 0

    assert max(densest(b) for _, b, _ in many_scenes) >= 20


@pytest.mark.parametrize(
    ("draw", "on_water"),
    [
        (lambda s: s.vehicle(40, 40, 11, 30), False),
        (lambda s: s.person(40, 40), False),
        (lambda s: s.swimming_pool(40, 40, 12, 70), False),
        (lambda s: s.storage_tank(40, 40, 21), False),
        (lambda s: s.ship(40, 40, 25, 140), True),
        (lambda s: s.bridge(40, 40, 40, 6, 100), True),
        (lambda s: s.airplane(40, 40, 48, 15), False),
        (lambda s: s.wind_mill(40, 40, 26, 10), False),
    ],
)
def test_boxes_are_tight_around_the_drawn_pixels(draw, on_water):
    scene = _Scene(np.random.default_rng(0), 80, range(8))
    scene.image[:] = np.nan
    scene.water[:] = on_water
    draw(scene)
    ys, xs = np.nonzero(~np.isnan(scene.image).any(-1))
    assert scene.boxes == [(xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)]


def test_objects_never_touch():
    scene = _Scene(np.random.default_rng(0), 80, range(8))
    assert scene.place(5, [(np.array([[10, 10], [20, 10], [20, 14], [10, 14]], float), np.ones(3))])
    assert not scene.place(5, [(np.array([[21, 10], [30, 10], [30, 14], [21, 14]], float), np.ones(3))])
    assert scene.place(5, [(np.array([[22, 10], [30, 10], [30, 14], [22, 14]], float), np.ones(3))])
    assert not scene.place(5, [(np.array([[75, 10], [85, 10], [85, 14], [75, 14]], float), np.ones(3))])


def test_bad_arguments_are_config_errors(tmp_path):
    with pytest.raises(KLDetConfigError, match="written as aitod, dior, dota"):
        generate(tmp_path, 2, 0, format="coco")
    with pytest.raises(KLDetConfigError, match="num_images >= 1"):
        generate(tmp_path, 0, 0)
