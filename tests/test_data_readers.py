"""Readers: AI-TOD / COCO JSON and DIOR / VOC XML into records, with validation (strict and lenient)."""

from __future__ import annotations

import copy
import json
import logging
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from kldet.data import (
    AITOD_CLASSES,
    DIOR_CLASSES,
    find_aitod_split,
    find_coco_split,
    find_dior_split,
    read_aitod,
    read_coco,
    read_dataset,
    read_dior,
    read_image_folder,
)
from kldet.data.aitod import aitod_annotation_names
from kldet.data.records import ProblemLog, check_box
from kldet.errors import KLDetConfigError, KLDetDataError
from kldet.evaluation.coco_json import read_coco_ground_truth

W, H = 64, 48


def write_image(path: Path, width: int = W, height: int = H) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((height, width, 3), 90, np.uint8))
    return path


def coco_dict() -> dict:
    """Two images, three boxes; categories listed out of id order, with AI-TOD names."""
    return {
        "images": [
            {"id": 7, "file_name": "a.png", "width": W, "height": H},
            {"id": 9, "file_name": "b.png", "width": W, "height": H},
        ],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 6, "bbox": [10, 5, 4, 3], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [30.5, 20, 20, 10], "iscrowd": 0},
            {"id": 3, "image_id": 9, "category_id": 4, "bbox": [0, 0, 8, 8], "iscrowd": 1},
        ],
        "categories": [{"id": i + 1, "name": name} for i, name in reversed(list(enumerate(AITOD_CLASSES)))],
    }


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    write_image(tmp_path / "images" / "a.png")
    write_image(tmp_path / "images" / "b.png")
    return tmp_path


def write_json(root: Path, data: dict) -> Path:
    path = root / "ann.json"
    path.write_text(json.dumps(data))
    return path


def test_aitod_reader_converts_boxes_labels_and_crowds(coco_root):
    dataset = read_aitod(write_json(coco_root, coco_dict()), coco_root / "images")
    assert dataset.classes == list(AITOD_CLASSES)
    assert dataset.category_ids == [1, 2, 3, 4, 5, 6, 7, 8]
    a, b = dataset.records
    assert (a.image_id, a.width, a.height, a.image_path) == (7, W, H, coco_root / "images" / "a.png")
    np.testing.assert_array_equal(a.boxes, [[10, 5, 14, 8], [30.5, 20, 50.5, 30]])
    assert a.labels.tolist() == [AITOD_CLASSES.index("vehicle"), AITOD_CLASSES.index("airplane")]
    assert a.boxes.dtype == np.float32 and a.labels.dtype == np.int64
    assert b.boxes.shape == (0, 4) and b.labels.shape == (0,)
    # the crowd box is no training target, but evaluation's ground truth (ignored within its class)
    np.testing.assert_array_equal(b.gt_boxes, [[0, 0, 8, 8]])
    assert b.gt_labels.tolist() == [AITOD_CLASSES.index("ship")] and b.gt_ignore.tolist() == [True]
    np.testing.assert_array_equal(a.gt_boxes, a.boxes)
    assert a.gt_ignore.tolist() == [False, False] and a.gt_areas.tolist() == [12, 200]
    assert dataset.problems == [] and dataset.clipped_boxes == 0


def test_aitod_reader_matches_names_not_ids(coco_root):
    data = coco_dict()
    data["categories"] = [
        {"id": 11, "name": "Vehicle"},
        {"id": 12, "name": "airplane"},
        {"id": 13, "name": "Ship"},
    ]
    for annotation, category in zip(data["annotations"], (11, 12, 13), strict=True):
        annotation["category_id"] = category
    dataset = read_aitod(write_json(coco_root, data), coco_root / "images")
    assert dataset.records[0].labels.tolist() == [5, 0]
    assert dataset.category_ids == [12, 2, 3, 13, 5, 11, 7, 8]


def test_generic_coco_reader_takes_classes_from_categories_sorted_by_id(coco_root):
    data = coco_dict()
    data["categories"] = [{"id": 6, "name": "car"}, {"id": 1, "name": "plane"}, {"id": 4, "name": "boat"}]
    dataset = read_coco(write_json(coco_root, data), coco_root / "images")
    assert dataset.classes == ["plane", "boat", "car"]
    assert dataset.category_ids == [1, 4, 6]
    assert dataset.records[0].labels.tolist() == [2, 0]


def test_box_partly_outside_is_clipped_and_counted(coco_root):
    data = coco_dict()
    data["annotations"][0]["bbox"] = [-3, 40, 10, 20]  # reaches past the left and the bottom edge
    dataset = read_aitod(write_json(coco_root, data), coco_root / "images")
    np.testing.assert_array_equal(dataset.records[0].boxes[0], [0, 40, 7, H])
    assert dataset.clipped_boxes == 1 and dataset.problems == []


def _missing(data, root):
    data["images"][1]["file_name"] = "gone.png"


def _corrupt(data, root):
    (root / "images" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)


def _mismatch(data, root):
    write_image(root / "images" / "b.png", 32, 32)


def _malformed_image(data, root):
    del data["images"][1]["file_name"]


def _duplicate_image(data, root):
    data["images"][1]["id"] = 7
    data["annotations"][2]["image_id"] = 7


def _unknown_category(data, root):
    data["annotations"][1]["category_id"] = 42


def _unmatched_category(data, root):
    data["categories"][0]["name"] = "tree"  # id 8: not one of AI-TOD's names
    data["annotations"][1]["category_id"] = 8


def _zero_width(data, root):
    data["annotations"][0]["bbox"] = [10, 5, 0, 3]


def _negative_height(data, root):
    data["annotations"][0]["bbox"] = [10, 5, 4, -3]


def _outside(data, root):
    data["annotations"][0]["bbox"] = [70, 5, 4, 3]


def _malformed_bbox(data, root):
    data["annotations"][0]["bbox"] = [10, 5, 4]


def _duplicate_annotation(data, root):
    data["annotations"][1]["id"] = 1


def _unknown_image(data, root):
    data["annotations"][0]["image_id"] = 99


def _nan_bbox(data, root):
    data["annotations"][0]["bbox"] = [10, 5, float("nan"), 3]  # json writes NaN, and reads it back


def _infinite_area(data, root):
    data["annotations"][0]["area"] = float("inf")


def _bool_area(data, root):
    data["annotations"][0]["area"] = True


def _crowd_two(data, root):
    data["annotations"][0]["iscrowd"] = 2


# (mutation, kind, words the strict message must contain, images and annotations left when lenient)
CASES = [
    (_missing, "missing_image", ["image id 9 (gone.png)", "gone.png not found"], 1, 2),
    (_corrupt, "corrupt_image", ["image id 9 (b.png)", "b.png"], 1, 2),
    (_mismatch, "size_mismatch", ["image id 9 (b.png)", "annotated size 64x48", "is 32x32"], 1, 2),
    (_malformed_image, "malformed_record", ["images[1]", "file_name"], 1, 2),
    (_duplicate_image, "duplicate_id", ["image id 7", "occurs 2 times"], 0, 0),
    (_unknown_category, "unknown_class", ["image id 7 (a.png), annotation id 2", "category_id 42"], 2, 1),
    (_unmatched_category, "unknown_class", ["annotation id 2", "category_id 8 ('tree')", "wind-mill"], 2, 1),
    (_negative_height, "invalid_box", ["annotation id 1", "has negative height"], 2, 1),
    (_malformed_bbox, "malformed_annotation", ["annotation id 1", "is not four finite numbers"], 2, 1),
    # A COCO number is finite and not a bool (one rule for the data reader and kldet-eval).
    (_nan_bbox, "malformed_annotation", ["annotation id 1", "[10, 5, nan, 3] is not four finite"], 2, 1),
    (_infinite_area, "malformed_annotation", ["annotation id 1", "area inf is not a finite number"], 2, 1),
    (_bool_area, "malformed_annotation", ["annotation id 1", "area True is not a finite number"], 2, 1),
    (_crowd_two, "malformed_annotation", ["annotation id 1", "iscrowd 2 is not 0 or 1"], 2, 1),
    (_duplicate_annotation, "duplicate_id", ["image id 7 (a.png), annotation id 1", "occurs twice"], 2, 1),
    (_unknown_image, "unknown_image", ["annotation id 1", "image id 99"], 2, 1),
]


@pytest.mark.parametrize(("mutate", "kind", "words", "images_left", "boxes_left"), CASES)
def test_bad_coco_input(coco_root, caplog, mutate, kind, words, images_left, boxes_left):
    data = copy.deepcopy(coco_dict())
    mutate(data, coco_root)
    ann_file = write_json(coco_root, data)

    with pytest.raises(KLDetDataError) as raised:
        read_aitod(ann_file, coco_root / "images")
    message = str(raised.value)
    assert message.startswith(f"{ann_file}: ")
    for word in words:
        assert word in message

    with caplog.at_level(logging.WARNING, logger="kldet.data.records"):
        dataset = read_aitod(ann_file, coco_root / "images", strict=False)
    assert [p.kind for p in dataset.problems] == [kind]
    assert len(dataset.records) == images_left
    assert sum(len(r.boxes) for r in dataset.records) == boxes_left
    assert f"1 {kind}" in caplog.text and str(ann_file) in caplog.text


@pytest.mark.parametrize(
    "mutate",
    [
        _duplicate_image,
        _unknown_category,
        _negative_height,
        _malformed_bbox,
        _duplicate_annotation,
        _unknown_image,
        _nan_bbox,
        _infinite_area,
        _crowd_two,
    ],
)
def test_evaluation_ground_truth_gets_the_readers_message(coco_root, mutate):
    """``kldet-eval results=`` reads its ground truth with the data reader's validation: one message."""
    data = copy.deepcopy(coco_dict())
    mutate(data, coco_root)
    ann_file = write_json(coco_root, data)
    with pytest.raises(KLDetDataError) as reader:
        read_coco(ann_file, coco_root / "images")
    with pytest.raises(KLDetDataError) as evaluation:
        read_coco_ground_truth(ann_file)
    assert str(evaluation.value) == str(reader.value)


def test_evaluation_ground_truth_needs_no_images_nor_file_names(tmp_path):
    data = coco_dict()
    for image in data["images"]:
        del image["file_name"]
    ground_truth = read_coco_ground_truth(write_json(tmp_path, data))
    assert ground_truth["images"] == [{"id": 7}, {"id": 9}]
    assert [c["id"] for c in ground_truth["categories"]] == list(range(1, 9))
    rows = [
        (a["image_id"], a["category_id"], a["bbox"], a["area"], a["iscrowd"])
        for a in ground_truth["annotations"]
    ]
    assert rows == [
        (7, 6, [10, 5, 4, 3], 12, 0),
        (7, 1, [30.5, 20, 20, 10], 200, 0),
        (9, 4, [0, 0, 8, 8], 64, 1),
    ]


@pytest.mark.parametrize("mutate", [_zero_width, _outside])
def test_zero_size_and_outside_boxes_are_evaluation_ground_truth_only(coco_root, mutate):
    # As the official evaluation: an object nothing can match still counts (spec section 7); training
    # cannot use it. Not a problem: strict loading reads the file.
    data = copy.deepcopy(coco_dict())
    mutate(data, coco_root)
    x, y, w, h = data["annotations"][0]["bbox"]
    dataset = read_coco(write_json(coco_root, data), coco_root / "images")
    assert not dataset.problems and dataset.evaluation_only_boxes == 1
    record = next(r for r in dataset.records if r.image_id == data["annotations"][0]["image_id"])
    assert [x, y, x + w, y + h] in record.gt_boxes.tolist()
    assert [x, y, x + w, y + h] not in record.boxes.tolist()
    assert len(record.gt_boxes) == len(record.boxes) + 1


def test_strict_error_names_the_first_problem_and_counts_the_rest(coco_root):
    data = coco_dict()
    _negative_height(data, coco_root)
    _unknown_category(data, coco_root)
    _missing(data, coco_root)
    with pytest.raises(KLDetDataError, match=r"gone.png not found\n\(2 more problems"):
        read_aitod(write_json(coco_root, data), coco_root / "images")
    dataset = read_aitod(write_json(coco_root, data), coco_root / "images", strict=False)
    assert sorted(p.kind for p in dataset.problems) == ["invalid_box", "missing_image", "unknown_class"]


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ('{"images": [', "not valid JSON"),
        ("[1, 2]", 'needs an object with an "images" list'),
        ('{"images": [], "categories": [{"id": 1}]}', "categories[0] needs an integer id and a name"),
        (None, "annotation file not found"),
    ],
)
def test_unreadable_json_raises_even_when_lenient(tmp_path, content, words):
    path = tmp_path / "ann.json"
    if content is not None:
        path.write_text(content)
    for strict in (True, False):
        with pytest.raises(KLDetDataError, match=re.escape(words)) as raised:
            read_aitod(path, tmp_path, strict=strict)
        assert str(path) in str(raised.value)


def test_header_check_does_not_decode_but_decode_option_does(coco_root):
    path = coco_root / "images" / "b.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # intact header, truncated pixel data
    ann_file = write_json(coco_root, coco_dict())
    assert len(read_aitod(ann_file, coco_root / "images").records) == 2
    dataset = read_aitod(ann_file, coco_root / "images", strict=False, decode=True)
    assert [p.kind for p in dataset.problems] == ["undecodable_image"]
    assert "b.png cannot be decoded: truncated" in str(dataset.problems[0])


def test_check_box_policy():
    log = ProblemLog(Path("f.json"))
    np.testing.assert_array_equal(check_box(log, log.source, "r", (1, 2, 3, 4), 10, 10), [1, 2, 3, 4])
    np.testing.assert_array_equal(check_box(log, log.source, "r", (-2, 8, 5, 12), 10, 10), [0, 8, 5, 10])
    assert log.clipped_boxes == 1
    for box in [(3, 1, 3, 4), (3, 1, 2, 4), (1, 5, 3, 5), (0, np.nan, 1, 1), (10, 0, 12, 4), (-5, -5, 0, 3)]:
        assert check_box(log, log.source, "r", box, 10, 10) is None
    assert [p.kind for p in log.problems] == ["invalid_box"] * 4 + ["box_outside_image"] * 2
    assert log.clipped_boxes == 1


# --- AI-TOD layouts -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ann_name", "image_dir", "split"),
    [
        ("aitod_trainval_v1.json", "trainval", "trainval"),
        ("aitod_training_v1.json", "trainval", "trainval"),
        ("aitod_test_v1.json", "test", "test"),
        ("aitod_validation_v1.json", "test", "test"),
        ("aitodv2_train.json", "train", "train"),
        ("val.json", "val", "val"),
    ],
)
def test_find_aitod_split_knows_the_release_names(tmp_path, ann_name, image_dir, split):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / ann_name).write_text("{}")
    (tmp_path / image_dir).mkdir()
    assert find_aitod_split(tmp_path, split) == (tmp_path / "annotations" / ann_name, tmp_path / image_dir)


AITOD_NAMES = {
    "trainval": [
        "aitod_trainval_v1_1.0.json",  # the KLDet configs
        "aitod_training_v1.0.json",  # their unused base config
        "aitod_trainval_v1.json",  # the v1 release
        "aitod_training_v1.json",  # RFLA's name
        "aitodv2_trainval.json",  # AI-TOD v2
        "trainval.json",
    ],
    "test": [
        "aitod_test_v1_1.0.json",
        "aitod_validation_v1.0.json",
        "aitod_test_v1.json",
        "aitod_validation_v1.json",
        "aitodv2_test.json",
        "test.json",
    ],
}


@pytest.mark.parametrize("split", ["trainval", "test"])
def test_find_aitod_split_takes_the_names_in_order(tmp_path, split):
    names = AITOD_NAMES[split]
    assert aitod_annotation_names(split) == names
    (tmp_path / split).mkdir()
    (tmp_path / "annotations").mkdir()
    for name in names:
        (tmp_path / "annotations" / name).write_text("{}")
    for name in names:  # each name wins over every later one
        assert find_aitod_split(tmp_path, split)[0] == tmp_path / "annotations" / name
        (tmp_path / "annotations" / name).unlink()
    with pytest.raises(KLDetConfigError) as raised:
        find_aitod_split(tmp_path, split)
    assert "no annotation file" in str(raised.value) and ", ".join(names) in str(raised.value)


def test_find_aitod_split_explains_the_layout(tmp_path):
    with pytest.raises(KLDetConfigError) as raised:
        find_aitod_split(tmp_path / "AI-TOD", "trainval")
    message = str(raised.value)
    assert "no root" in message
    assert f"{tmp_path / 'AI-TOD'}/annotations/" in message
    assert (
        "aitod_trainval_v1.json" in message and "aitod_training_v1.json" in message and "trainval/" in message
    )
    (tmp_path / "AI-TOD" / "annotations").mkdir(parents=True)
    (tmp_path / "AI-TOD" / "annotations" / "aitod_trainval_v1.json").write_text("{}")
    with pytest.raises(KLDetConfigError, match="no image folder"):
        find_aitod_split(tmp_path / "AI-TOD", "trainval")


# --- DIOR / VOC -----------------------------------------------------------------------------------------

DIOR_XML = """<annotation>
  <filename>{stem}.jpg</filename>
  <source><database>DIOR</database></source>
  <size><width>64</width><height>48</height><depth>3</depth></size>
  <segmented>0</segmented>
  <object>
    <name>Expressway-Service-area</name>
    <pose>Unspecified</pose>
    <truncated>0</truncated>
    <difficult>0</difficult>
    <bndbox><xmin>3</xmin><ymin>4</ymin><xmax>20</xmax><ymax>30</ymax></bndbox>
  </object>
  <object>
    <name>expressway-toll-station</name>
    <pose>Left</pose>
    <truncated>1</truncated>
    <difficult>1</difficult>
    <bndbox><xmin>30</xmin><ymin>10</ymin><xmax>40</xmax><ymax>20</ymax></bndbox>
  </object>
  <object>
    <name>VEHICLE</name>
    <bndbox><xmin>50</xmin><ymin>40</ymin><xmax>70.5</xmax><ymax>46</ymax></bndbox>
  </object>
  <object>
    <name>windmill</name>
    <pose>Unspecified</pose>
    <truncated>0</truncated>
    <difficult>0</difficult>
    <bndbox><xmin>10</xmin><ymin>10</ymin><xmax>10.3</xmax><ymax>25</ymax></bndbox>
  </object>
</annotation>
"""


@pytest.fixture
def dior_root(tmp_path: Path) -> Path:
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    for stem in ("00012", "00013"):
        write_image(tmp_path / "JPEGImages" / f"{stem}.jpg")
        (tmp_path / "Annotations" / f"{stem}.xml").write_text(DIOR_XML.format(stem=stem))
    (tmp_path / "ImageSets" / "Main" / "trainval.txt").write_text("00012\n00013\n")
    return tmp_path


def test_dior_reader_on_a_real_style_xml(dior_root):
    dataset = read_dior(dior_root, "trainval")
    assert dataset.classes == list(DIOR_CLASSES) and dataset.category_ids == list(range(1, 21))
    record = dataset.records[0]
    assert (record.image_id, record.width, record.height) == (12, W, H)
    assert record.image_path == dior_root / "JPEGImages" / "00012.jpg"
    # As the authors read DIOR: every coordinate less 1; the difficult toll station is an object; the
    # vehicle reaches past the right edge: its training target is clipped, its ground truth is not.
    np.testing.assert_array_equal(record.boxes, [[2, 3, 19, 29], [29, 9, 39, 19], [49, 39, 64, 45]])
    esa, ets, vehicle, windmill = (
        DIOR_CLASSES.index(name)
        for name in ("Expressway-Service-area", "Expressway-toll-station", "vehicle", "windmill")
    )
    assert record.labels.tolist() == [esa, ets, vehicle]
    # the windmill, narrower than half a pixel: an ignored box, in evaluation only
    np.testing.assert_allclose(
        record.gt_boxes, [[2, 3, 19, 29], [29, 9, 39, 19], [49, 39, 69.5, 45], [9, 9, 9.3, 24]], rtol=1e-12
    )
    assert record.gt_labels.tolist() == [esa, ets, vehicle, windmill]
    assert record.gt_ignore.tolist() == [False, False, False, True]
    assert dataset.clipped_boxes == 2 and dataset.problems == []


def test_dior_reader_can_ignore_difficult_objects(dior_root):
    record = read_dior(dior_root, "trainval", difficult="ignore").records[0]
    np.testing.assert_array_equal(record.boxes, [[2, 3, 19, 29], [49, 39, 64, 45]])
    assert record.gt_ignore.tolist() == [False, True, False, True]
    with pytest.raises(KLDetConfigError, match="difficult='hard': choose one of object, ignore"):
        read_dior(dior_root, "trainval", difficult="hard")


def test_dior_reader_accepts_the_download_folder_names(dior_root):
    (dior_root / "JPEGImages").rename(dior_root / "JPEGImages-trainval")
    (dior_root / "Annotations").rename(dior_root / "Horizontal Bounding Boxes")
    (dior_root / "Annotations").mkdir()
    (dior_root / "Horizontal Bounding Boxes").rename(dior_root / "Annotations" / "Horizontal Bounding Boxes")
    dataset = read_dior(dior_root, "trainval")
    assert dataset.records[1].image_path == dior_root / "JPEGImages-trainval" / "00013.jpg"
    assert len(dataset.records[1].boxes) == 3


def _dior_unknown_class(root):
    xml = root / "Annotations" / "00013.xml"
    xml.write_text(xml.read_text().replace("VEHICLE", "spaceship"))


def _dior_bad_xml(root):
    (root / "Annotations" / "00013.xml").write_text("<annotation><object>")


def _dior_missing_xml(root):
    (root / "Annotations" / "00013.xml").unlink()


def _dior_missing_image(root):
    (root / "JPEGImages" / "00013.jpg").unlink()


def _dior_duplicate(root):
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("00012\n00013\n00013\n")


def _dior_negative(root):
    xml = root / "Annotations" / "00013.xml"
    xml.write_text(xml.read_text().replace("<xmax>20</xmax>", "<xmax>2</xmax>"))


def _dior_outside(root):
    xml = root / "Annotations" / "00013.xml"
    xml.write_text(
        xml.read_text().replace(
            "<ymin>4</ymin><xmax>20</xmax><ymax>30</ymax>", "<ymin>50</ymin><xmax>20</xmax><ymax>60</ymax>"
        )
    )


def _dior_malformed(root):
    xml = root / "Annotations" / "00013.xml"
    xml.write_text(xml.read_text().replace("<xmin>3</xmin>", "<xmin>three</xmin>"))


def _dior_size_mismatch(root):
    xml = root / "Annotations" / "00013.xml"
    xml.write_text(xml.read_text().replace("<width>64</width>", "<width>800</width>"))


DIOR_CASES = [
    (
        _dior_unknown_class,
        "unknown_class",
        ["00013.xml", "image 00013 (line 2), object 2", "'spaceship'"],
        2,
        5,
    ),
    (_dior_bad_xml, "unreadable_annotation", ["00013.xml", "image 00013 (line 2)", "not readable XML"], 1, 3),
    (_dior_missing_xml, "missing_annotation", ["trainval.txt", "image 00013", "00013.xml not found"], 1, 3),
    (_dior_missing_image, "missing_image", ["00013.xml", "image 00013", "00013.jpg not found"], 1, 3),
    (_dior_duplicate, "duplicate_id", ["trainval.txt", "image 00013 (line 3)", "listed twice"], 2, 6),
    (
        _dior_negative,
        "invalid_box",
        ["image 00013 (line 2), object 0", "bndbox [3, 4, 2, 30] has negative width"],
        2,
        5,
    ),
    (_dior_outside, "box_outside_image", ["object 0", "lies outside the 64x48 image"], 2, 5),
    (_dior_malformed, "malformed_annotation", ["object 0", "numeric xmin"], 2, 5),
    (_dior_size_mismatch, "size_mismatch", ["annotated size 800x48"], 1, 3),
]


@pytest.mark.parametrize(("mutate", "kind", "words", "images_left", "boxes_left"), DIOR_CASES)
def test_bad_dior_input(dior_root, mutate, kind, words, images_left, boxes_left):
    mutate(dior_root)
    with pytest.raises(KLDetDataError) as raised:
        read_dior(dior_root, "trainval")
    for word in words:
        assert word in str(raised.value)
    dataset = read_dior(dior_root, "trainval", strict=False)
    assert [p.kind for p in dataset.problems] == [kind]
    assert len(dataset.records) == images_left
    assert sum(len(r.boxes) for r in dataset.records) == boxes_left


def test_dior_missing_split_lists_the_splits_there(dior_root):
    with pytest.raises(KLDetDataError, match=r"test.txt: split file not found \(splits there: trainval\)"):
        read_dior(dior_root, "test", strict=False)


def test_find_dior_split_names_the_layout_and_the_splits_there(dior_root):
    assert find_dior_split(dior_root, "trainval") == (
        dior_root / "ImageSets" / "Main" / "trainval.txt",
        dior_root,
    )
    with pytest.raises(KLDetConfigError) as raised:
        find_dior_split(dior_root, "test")
    message = str(raised.value)
    assert f"DIOR split 'test' not found: expected {dior_root}/ImageSets/Main/test.txt" in message
    assert "(splits there: trainval)" in message and f"{dior_root}/Annotations/*.xml" in message


@pytest.mark.parametrize(
    ("ann_name", "image_dir"),
    [("val.json", "val"), ("instances_val.json", "val"), ("val.json", "images/val")],
)
def test_find_coco_split_knows_both_layouts(tmp_path, ann_name, image_dir):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / ann_name).write_text("{}")
    (tmp_path / image_dir).mkdir(parents=True)
    assert find_coco_split(tmp_path, "val") == (tmp_path / "annotations" / ann_name, tmp_path / image_dir)
    with pytest.raises(KLDetConfigError, match=r"COCO split 'train' not found under .*instances_train.json"):
        find_coco_split(tmp_path, "train")


def test_read_dataset_dispatches_to_the_format_reader(coco_root, dior_root):
    """One entry for the data module, kldet-data check and kldet-eval: the reader of each format."""
    data = coco_dict()
    data["categories"].append({"id": 9, "name": "tree"})  # a COCO class, not an AI-TOD one
    ann_file = write_json(coco_root, data)
    images = coco_root / "images"
    for format, direct in (("aitod", read_aitod(ann_file, images)), ("coco", read_coco(ann_file, images))):
        dataset = read_dataset(format, ann=ann_file, images=images)
        assert dataset.classes == direct.classes and dataset.category_ids == direct.category_ids
        assert [r.gt_boxes.tolist() for r in dataset.records] == [r.gt_boxes.tolist() for r in direct.records]
    assert read_dataset("aitod", ann=ann_file, images=images).classes == list(AITOD_CLASSES)
    assert read_dataset("coco", ann=ann_file, images=images).classes == [*AITOD_CLASSES, "tree"]
    ignored = read_dataset("dior", dior_root, "trainval", difficult="ignore")
    assert [r.gt_ignore.tolist() for r in ignored.records] == [
        r.gt_ignore.tolist() for r in read_dior(dior_root, "trainval", difficult="ignore").records
    ]
    with pytest.raises(KLDetConfigError, match="format=coco needs ann=FILE images=DIR"):
        read_dataset("coco", root=coco_root)
    with pytest.raises(KLDetConfigError, match="format=dior needs root=DIR split=NAME"):
        read_dataset("dior", ann=ann_file, images=images)
    with pytest.raises(KLDetConfigError, match="format='yolo' is not one of aitod, dior, coco"):
        read_dataset("yolo", coco_root, "train")


def test_dior_non_numeric_stems_get_line_numbers(dior_root):
    for stem in ("00012", "00013"):
        (dior_root / "Annotations" / f"{stem}.xml").rename(dior_root / "Annotations" / f"img_{stem}.xml")
        (dior_root / "JPEGImages" / f"{stem}.jpg").rename(dior_root / "JPEGImages" / f"img_{stem}.jpg")
    (dior_root / "ImageSets" / "Main" / "trainval.txt").write_text("img_00012\nimg_00013\n")
    assert [r.image_id for r in read_dior(dior_root, "trainval").records] == [1, 2]


def test_image_folder_reader(tmp_path):
    write_image(tmp_path / "b.png")
    write_image(tmp_path / "a.jpg", 20, 10)
    (tmp_path / "notes.txt").write_text("not an image")
    dataset = read_image_folder(tmp_path)
    assert [(r.image_path.name, r.image_id, r.width, r.height) for r in dataset.records] == [
        ("a.jpg", 1, 20, 10),
        ("b.png", 2, W, H),
    ]
    with pytest.raises(KLDetDataError, match="no images"):
        read_image_folder(tmp_path / "empty" if (tmp_path / "empty").mkdir() is None else tmp_path)
