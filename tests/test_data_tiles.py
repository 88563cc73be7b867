"""``kldet-data tile``: the tile grid, clipped and cut boxes, empty tiles, scene splits, pixels, streaming."""

from __future__ import annotations

import json
import weakref
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kldet.inference.sources as sources
from helpers import write_dior
from kldet.cli.data import main
from kldet.data import load_image
from kldet.data.records import Record
from kldet.data.tiles import tile_annotations
from kldet.errors import KLDetDataError
from kldet.inference.tiling import make_tiles

CATEGORIES = [{"id": 3, "name": "ship"}, {"id": 7, "name": "vehicle"}]  # ids kept, not 1..C


def noise(height: int, width: int, seed: int) -> np.ndarray:
    """(H, W, 3) uint8 random pixels: every window of a scene looks different."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_scenes(root: Path, scenes: dict[str, tuple[np.ndarray, list[dict]]]) -> tuple[Path, Path]:
    """PNG scenes under ``root/scenes`` and their COCO file; ``scenes``: file name -> (RGB pixels,
    annotations without ``id`` / ``image_id``). Returns (annotation file, image folder)."""
    images_dir = root / "scenes"
    images_dir.mkdir(parents=True)
    images, annotations = [], []
    for image_id, (name, (pixels, objects)) in enumerate(scenes.items(), start=1):
        cv2.imwrite(str(images_dir / name), cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
        images.append(
            {"id": image_id, "file_name": name, "width": pixels.shape[1], "height": pixels.shape[0]}
        )
        for annotation in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "iscrowd": 0, **annotation})
    ann = root / "scenes.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return ann, images_dir


def tile_cli(ann: Path, images: Path, out: Path, *options: str) -> int:
    return main(
        ["tile", "format=coco", f"ann={ann}", f"images={images}", f"out={out}", "progress=false", *options]
    )


def read_split(out: Path, split: str) -> tuple[dict, dict[tuple[str, int, int], list[tuple]]]:
    """The split's COCO dict, and per (scene, x0, y0) its annotations as sorted (category, xyxy, area, iscrowd)."""
    coco = json.loads((out / "annotations" / f"{split}.json").read_text())
    by_image = {image["id"]: [] for image in coco["images"]}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        by_image[a["image_id"]].append((a["category_id"], (x, y, x + w, y + h), a["area"], a["iscrowd"]))
    keyed = {(i["scene"], i["x0"], i["y0"]): sorted(by_image[i["id"]]) for i in coco["images"]}
    return coco, keyed


# The 300 x 200 scene at size=128 overlap=0.25: overlap 32 px, stride <= 96, so x starts 0, 86, 172 (the
# span 172 in two even gaps) and y starts 0, 72 (the span 72 in one gap); every tile is 128 x 128.
SCENE_BOXES = [
    {"category_id": 3, "bbox": [10, 10, 20, 20], "area": 300},  # A: only in tile (0, 0); area as written
    {"category_id": 7, "bbox": [100, 20, 20, 20], "area": 400},  # B: whole in (0, 0) and (86, 0)
    {"category_id": 3, "bbox": [120, 100, 20, 20], "area": 400},  # C: 8 of 20 px in x0=0, whole in x0=86
    {"category_id": 7, "bbox": [250, 150, 40, 40], "area": 1600, "iscrowd": 1},  # D: an ignored region
    {"category_id": 7, "bbox": [200, 60, 20, 20], "area": 400},  # E: 14/20 in x0=86, 8/20 in y0=72
]
# (x0, y0) -> sorted (category id, tile xyxy, area, iscrowd), computed by hand from the grid above.
EXPECTED_TILES = {
    (0, 0): [
        (3, (10, 10, 30, 30), 300, 0),
        (3, (120, 100, 128, 120), 160, 1),
        (7, (100, 20, 120, 40), 400, 0),
    ],
    (86, 0): [
        (3, (34, 100, 54, 120), 400, 0),
        (7, (14, 20, 34, 40), 400, 0),
        (7, (114, 60, 128, 80), 280, 0),
    ],
    (172, 0): [(7, (28, 60, 48, 80), 400, 0)],
    (0, 72): [(3, (120, 28, 128, 48), 160, 1)],  # no object: an empty tile
    (86, 72): [(3, (34, 28, 54, 48), 400, 0), (7, (114, 0, 128, 8), 400 * 0.7 * 0.4, 1)],
    (172, 72): [(7, (28, 0, 48, 8), 160, 1), (7, (78, 78, 118, 118), 1600, 1)],  # empty: ignored regions only
}


@pytest.fixture
def hand_scene(tmp_path) -> tuple[Path, Path, np.ndarray]:
    pixels = noise(200, 300, seed=0)
    ann, images = write_scenes(tmp_path, {"scene.png": (pixels, SCENE_BOXES)})
    return ann, images, pixels


def test_the_tiles_and_clipped_boxes_of_a_hand_made_scene(hand_scene, tmp_path, capsys):
    ann, images, pixels = hand_scene
    out = tmp_path / "out"
    assert tile_cli(ann, images, out, "size=128", "overlap=0.25", "empty_fraction=1.0", "split_by=none") == 0
    coco, keyed = read_split(out, "tiles")
    assert {(x0, y0) for _, x0, y0 in keyed} == set(EXPECTED_TILES)
    for (scene, x0, y0), found in keyed.items():
        assert scene == "scene.png"
        expected = EXPECTED_TILES[(x0, y0)]
        assert [(c, box, crowd) for c, box, _, crowd in found] == [(c, b, w) for c, b, _, w in expected]
        assert [area for *_, area, _ in found] == pytest.approx([area for *_, area, _ in expected])
    assert coco["categories"] == CATEGORIES
    for image in coco["images"]:
        assert (image["width"], image["height"]) == (128, 128)
        assert image["file_name"] == f"scene_{image['x0']}_{image['y0']}.png"
        assert image["scene_id"] == 1
        # The tile's pixels are the scene's window at its offset.
        tile = load_image(out / "images" / "tiles" / image["file_name"])
        assert np.array_equal(tile, pixels[image["y0"] : image["y0"] + 128, image["x0"] : image["x0"] + 128])
    summary = capsys.readouterr().out
    # objects: A, B twice, C twice, E twice (the 0.28 and 0.4 pieces are ignored); cut: C twice, E twice.
    assert "tiles: scenes 1, tiles written 6 (without objects: 2 kept, 0 dropped)" in summary
    assert "boxes: 7 objects, 1 ignored; cut below min_visibility: 4 ignored, 0 dropped" in summary


def test_cut_boxes_drop_and_min_visibility_one(hand_scene, tmp_path, capsys):
    ann, images, _ = hand_scene
    out = tmp_path / "drop"
    options = ("size=128", "overlap=0.25", "empty_fraction=1.0", "split_by=none", "cut_boxes=drop")
    assert tile_cli(ann, images, out, *options, "min_visibility=1.0") == 0
    _, keyed = read_split(out, "tiles")
    # Only whole objects are left, and D, the scene's ignored region; the tile (0, 72) holds nothing now.
    boxes = {(x0, y0): [(c, box, crowd) for c, box, _, crowd in a] for (_, x0, y0), a in keyed.items()}
    assert boxes == {
        (0, 0): [(3, (10, 10, 30, 30), 0), (7, (100, 20, 120, 40), 0)],
        (86, 0): [(3, (34, 100, 54, 120), 0), (7, (14, 20, 34, 40), 0)],
        (172, 0): [(7, (28, 60, 48, 80), 0)],
        (0, 72): [],
        (86, 72): [(3, (34, 28, 54, 48), 0)],
        (172, 72): [(7, (78, 78, 118, 118), 1)],
    }
    assert "cut below min_visibility: 0 ignored, 5 dropped" in capsys.readouterr().out


@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(1, 700),
    height=st.integers(1, 700),
    size=st.integers(96, 300),
    overlap=st.floats(0.05, 0.5),
    data=st.data(),
)
def test_every_object_smaller_than_the_overlap_is_whole_in_some_tile(width, height, size, overlap, data):
    # The overlap band is round(size * overlap) px: an object no larger lies wholly inside some window.
    band = min(round(size * overlap), size - 1)
    w = data.draw(st.floats(0.5, max(0.5, min(band, width))))
    h = data.draw(st.floats(0.5, max(0.5, min(band, height))))
    x = data.draw(st.floats(0, max(0.0, width - w)))
    y = data.draw(st.floats(0, max(0.0, height - h)))
    box = [x, y, min(x + w, width), min(y + h, height)]
    record = Record("scene.png", width, height, boxes=[box], labels=[0])
    found = []
    for tile in make_tiles(height, width, size, overlap):
        annotations = tile_annotations(record, tile, min_visibility=1.0)
        if len(annotations.boxes):
            # Mapping back: the tile box plus the offset is the scene box clipped to the window.
            shifted = annotations.boxes[0] + [tile.x0, tile.y0, tile.x0, tile.y0]
            clipped = np.clip(box, [tile.x0, tile.y0] * 2, [tile.x1, tile.y1] * 2)
            assert np.allclose(shifted, clipped)
            found.append(not annotations.ignore[0])
    assert any(found)


def test_split_by_scene_puts_each_scene_in_one_split_and_the_output_passes_check(tmp_path, capsys):
    # Five scenes with four objects each, every object painted in its own colour: a tile box must cover
    # exactly pixels of that colour.
    scenes, colours = {}, {}
    for i in range(5):
        pixels, objects = noise(150 + 20 * i, 260, seed=i), []
        for k in range(4):
            x, y = 15 + 60 * k + 3 * i, 30 + 25 * k
            pixels[y : y + 8, x : x + 10] = colours[(f"s{i}.png", x, y)] = (255, 40 * k, 50 * i)
            objects.append({"category_id": 3, "bbox": [x, y, 10, 8]})
        scenes[f"s{i}.png"] = (pixels, objects)
    ann, images = write_scenes(tmp_path, scenes)
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        out = tmp_path / name
        assert tile_cli(ann, images, out, "size=128", "val_fraction=0.4", f"seed={seed}") == 0
        train, val = (set(s for s, _, _ in read_split(out, split)[1]) for split in ("train", "val"))
        assert not train & val and train | val == set(scenes) and len(val) == 2
        runs[name] = val
    assert runs["a"] == runs["b"] != runs["c"]  # deterministic per seed
    painted = 0
    for split in ("train", "val"):
        assert main(["check", "format=coco", f"root={tmp_path / 'a'}", f"split={split}"]) == 0
        coco, keyed = read_split(tmp_path / "a", split)
        for image in coco["images"]:
            tile = load_image(tmp_path / "a" / "images" / split / image["file_name"])
            for _, (x0, y0, x1, y1), _, crowd in keyed[(image["scene"], image["x0"], image["y0"])]:
                inside = tile[round(y0) : round(y1), round(x0) : round(x1)]
                if not crowd and (x1 - x0, y1 - y0) == (10, 8):  # a whole object: its scene corner is the key
                    colour = colours[(image["scene"], x0 + image["x0"], y0 + image["y0"])]
                    assert (inside == colour).all()
                    painted += 1
                elif not crowd:  # a visible part of a cut object: its colour, whatever the object
                    assert (inside[..., 0] == 255).all() and inside.size
    assert painted >= 20  # every object whole at least once
    assert "no problems found" in capsys.readouterr().out


def test_empty_fraction_keeps_that_share_of_the_tiles_without_objects(tmp_path):
    # 500 x 500 at size=100 overlap=0: 5 x 5 tiles, one of them (0, 0) with an object.
    ann, images = write_scenes(
        tmp_path, {"a.png": (noise(500, 500, 1), [{"category_id": 7, "bbox": [3, 3, 9, 9]}])}
    )
    kept = {}
    for fraction, seed in ((0.0, 0), (0.25, 0), (0.25, 0), (0.25, 5), (1.0, 0)):
        out = tmp_path / f"{fraction}_{seed}_{len(kept)}"
        assert (
            tile_cli(
                ann,
                images,
                out,
                "size=100",
                "overlap=0",
                f"empty_fraction={fraction}",
                f"seed={seed}",
                "split_by=none",
            )
            == 0
        )
        offsets = set((x0, y0) for _, x0, y0 in read_split(out, "tiles")[1])
        assert (0, 0) in offsets
        assert len(offsets) - 1 == round(fraction * 24)
        kept[(fraction, seed, len(kept))] = offsets
    assert kept[(0.25, 0, 1)] == kept[(0.25, 0, 2)]
    assert kept[(0.25, 0, 1)] != kept[(0.25, 5, 3)]


def test_a_dior_set_of_scenes_smaller_than_the_tile_and_a_difficult_object_ignored(tmp_path):
    write_dior(tmp_path / "dior", {"00001": [("ship", (11, 21, 30, 40), 0), ("vehicle", (41, 5, 50, 14), 1)]})
    out = tmp_path / "out"
    argv = [
        "tile",
        "format=dior",
        f"root={tmp_path / 'dior'}",
        "split=trainval",
        f"out={out}",
        "split_by=none",
    ]
    assert main([*argv, "difficult=ignore", "image_format=jpg", "progress=false"]) == 0
    coco, keyed = read_split(out, "tiles")
    # One tile of the scene's own 64 x 64; every VOC coordinate minus 1 (as read_dior reads them); DIOR's
    # category ids; the difficult vehicle an ignored region.
    assert [(i["width"], i["height"], i["scene"], i["file_name"]) for i in coco["images"]] == [
        (64, 64, "00001.jpg", "00001_0_0.jpg")
    ]
    ship, vehicle = 14, 19
    expected = [(ship, (10, 20, 29, 39), 361, 0), (vehicle, (40, 4, 49, 13), 81, 1)]
    assert keyed[("00001.jpg", 0, 0)] == expected


def test_lenient_tiles_the_good_scenes_and_counts_the_skipped(tmp_path, capsys):
    box = [{"category_id": 3, "bbox": [10, 10, 8, 8]}]
    ann, images = write_scenes(
        tmp_path, {"a.png": (noise(100, 100, 0), box), "b.png": (noise(100, 100, 1), box)}
    )
    (images / "b.png").unlink()
    assert tile_cli(ann, images, tmp_path / "strict", "split_by=none") == 1
    assert "b.png not found" in capsys.readouterr().err
    assert tile_cli(ann, images, tmp_path / "lenient", "split_by=none", "lenient=true") == 0
    assert {scene for scene, _, _ in read_split(tmp_path / "lenient", "tiles")[1]} == {"a.png"}
    assert "1 problem(s) skipped" in capsys.readouterr().out


def test_a_geotiff_scene_is_read_tile_by_tile(tmp_path, monkeypatch):
    rasterio = pytest.importorskip("rasterio")
    from kldet.inference.geo import RasterFile

    pixels = noise(260, 300, seed=4)
    images = tmp_path / "scenes"
    images.mkdir()
    profile = {
        "driver": "GTiff",
        "width": 300,
        "height": 260,
        "count": 3,
        "dtype": "uint8",
        "crs": "EPSG:32633",
    }
    profile["transform"] = rasterio.Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 4600000.0)  # 0.5 m pixels
    with rasterio.open(images / "scene.tif", "w", **profile) as raster:
        raster.write(pixels.transpose(2, 0, 1))
    coco = {
        "images": [{"id": 1, "file_name": "scene.tif", "width": 300, "height": 260}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [140, 130, 10, 10], "iscrowd": 0}],
        "categories": CATEGORIES,
    }
    ann = tmp_path / "scene.json"
    ann.write_text(json.dumps(coco))
    windows = []
    read = RasterFile.read

    def spy(self, x0, y0, x1, y1):
        windows.append((x1 - x0, y1 - y0))
        return read(self, x0, y0, x1, y1)

    monkeypatch.setattr(RasterFile, "read", spy)
    out = tmp_path / "out"
    assert tile_cli(ann, images, out, "size=128", "empty_fraction=1.0", "split_by=none") == 0
    coco, _ = read_split(out, "tiles")
    assert windows == [(128, 128)] * len(coco["images"]) and len(windows) == 9  # 3 x 3 tiles, no whole read
    for image in coco["images"]:
        tile = load_image(out / "images" / "tiles" / image["file_name"])
        assert np.array_equal(tile, pixels[image["y0"] : image["y0"] + 128, image["x0"] : image["x0"] + 128])


def test_a_16_bit_four_band_geotiff_is_tiled_to_8_bit_rgb_with_the_chosen_bands_and_stretch(tmp_path, capsys):
    rasterio = pytest.importorskip("rasterio")
    bands = np.random.default_rng(5).integers(100, 4000, (4, 200, 230)).astype(np.uint16)  # B, G, R, NIR
    images = tmp_path / "scenes"
    images.mkdir()
    profile = {"driver": "GTiff", "width": 230, "height": 200, "count": 4, "dtype": "uint16"}
    profile.update(crs="EPSG:32633", transform=rasterio.Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 4600000.0))
    with rasterio.open(images / "scene.tif", "w", **profile) as raster:
        raster.write(bands)
    coco = {
        "images": [{"id": 1, "file_name": "scene.tif", "width": 230, "height": 200}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [40, 50, 10, 10], "iscrowd": 0}],
        "categories": CATEGORIES,
    }
    ann = tmp_path / "scene.json"
    ann.write_text(json.dumps(coco))
    # The scene reads (its size from rasterio: PIL cannot identify it); training refuses its pixels.
    assert main(["check", "format=coco", f"ann={ann}", f"images={images}"]) == 0
    with pytest.raises(KLDetDataError, match=r"scene\.tif: not an 8-bit.*kldet-data tile bands="):
        load_image(images / "scene.tif")
    out = tmp_path / "out"
    options = ("size=128", "empty_fraction=1.0", "split_by=none", "bands=[3,2,1]", "stretch=[2,98]")
    assert tile_cli(ann, images, out, *options) == 0
    # Independently: R, G, B = bands 3, 2, 1, each mapped so its 2nd / 98th percentile is 0 / 255.
    expected = np.empty((200, 230, 3), np.uint8)
    for channel, band in enumerate((3, 2, 1)):
        values = bands[band - 1].astype(np.float64)
        low, high = np.percentile(values, [2, 98])
        expected[..., channel] = np.clip(np.rint((values - low) * 255 / (high - low)), 0, 255)
    coco, _ = read_split(out, "tiles")
    assert len(coco["images"]) == 4
    for image in coco["images"]:
        tile = load_image(out / "images" / "tiles" / image["file_name"])
        x0, y0 = image["x0"], image["y0"]
        difference = np.abs(tile.astype(int) - expected[y0 : y0 + 128, x0 : x0 + 128])
        assert difference.max() <= 1 and (difference > 0).mean() < 0.001  # rounding at .5 only


def test_one_decoded_scene_in_memory_at_a_time(tmp_path, monkeypatch):
    # A spy on the decoder: when a scene is decoded, no earlier scene's pixels may be alive (weak references
    # die with the last view of them, so a tile or record holding on to a scene would show here too).
    decoded = []
    load_image = sources.load_image

    def spy(path):
        assert all(scene() is None for scene in decoded), f"{path} decoded while another scene is alive"
        pixels = load_image(path)
        decoded.append(weakref.ref(pixels))
        return pixels

    monkeypatch.setattr(sources, "load_image", spy)
    scenes = {
        f"{i}.png": (noise(300, 300, i), [{"category_id": 3, "bbox": [50, 50, 10, 10]}]) for i in range(8)
    }
    ann, images = write_scenes(tmp_path, scenes)
    assert tile_cli(ann, images, tmp_path / "out", "size=128", "empty_fraction=1.0") == 0
    assert len(decoded) == 8 and all(scene() is None for scene in decoded)  # each decoded once, all released


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (["size=50"], "size=50: tiles must be at least 96 px"),
        (["overlap=1.0"], "overlap=1.0: a fraction of the tile size in [0, 1)"),
        (["min_visibility=0"], "min_visibility=0.0"),
        (["empty_fraction=2"], "empty_fraction=2.0"),
        (["cut_boxes=keep"], "cut_boxes"),
    ],
)
def test_bad_settings_are_one_line_before_any_data_is_read(tmp_path, options, words, capsys):
    # The data set does not exist: the settings are checked first.
    assert tile_cli(tmp_path / "none.json", tmp_path, tmp_path / "out", *options) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("kldet-data tile: error: ") and words in err


def test_bad_input_is_one_line_naming_it(hand_scene, tmp_path, capsys):
    ann, images, _ = hand_scene
    assert tile_cli(ann, tmp_path / "missing", tmp_path / "a") == 1
    assert f"images={tmp_path / 'missing'}: no such folder" in capsys.readouterr().err
    assert tile_cli(ann, images, tmp_path / "b", "size=128") == 1  # one scene cannot be split by scene
    assert "split_by=scene needs at least 2 scenes" in capsys.readouterr().err
    assert tile_cli(ann, images, tmp_path / "c", "split_by=none") == 0
    assert tile_cli(ann, images, tmp_path / "c", "split_by=none") == 1
    assert "already holds images and annotations/" in capsys.readouterr().err
    (images / "scene.png").write_bytes(b"not a png")
    assert tile_cli(ann, images, tmp_path / "d", "split_by=none") == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "scene.png" in err
