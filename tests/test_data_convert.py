"""``kldet.data.convert`` and ``kldet-data convert``: DOTA, YOLO, VisDrone and xView labels into COCO JSON,
checked against hand-computed boxes and read back with the COCO reader."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

from kldet.cli.data import main
from kldet.data import read_coco
from kldet.data.convert import (
    DOTA_CLASSES,
    VISDRONE_CLASSES,
    XVIEW_CLASSES,
    convert,
    convert_dota,
    convert_visdrone,
    convert_xview,
    convert_yolo,
)
from kldet.errors import KLDetDataError


def write_image(path, width, height):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.zeros((height, width, 3), np.uint8))


def write_text(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def bboxes(coco):
    return [(a["category_id"], a["bbox"], a["iscrowd"]) for a in coco["annotations"]]


def round_trip(tmp_path, conversion, images):
    """The records :func:`read_coco` makes of the converted file."""
    ann = tmp_path / "converted.json"
    ann.write_text(json.dumps(conversion.coco))
    return read_coco(ann, images)


# --- DOTA -----------------------------------------------------------------------------------------------


@pytest.fixture
def dota(tmp_path):
    write_image(tmp_path / "images" / "P0001.png", 100, 80)
    write_image(tmp_path / "images" / "P0002.png", 50, 50)  # no label file: an image without objects
    write_text(
        tmp_path / "labelTxt" / "P0001.txt",
        "imagesource:GoogleEarth\n"
        "gsd:0.5\n"
        "10 20 30 18 32 40 12 42 plane 0\n"  # a rotated quadrilateral
        "90 70 110 70 110 90 90 90 small-vehicle 1\n"  # difficult, reaches outside the 100x80 image
        "\n"
        "50 5 60 5 60 15 50 15 ship\n",  # no difficult field (the DOTA devkit reads it as 0)
    )
    return tmp_path / "labelTxt", tmp_path / "images"


def test_dota_boxes_are_the_corners_min_max_clipped_and_difficult_is_crowd(dota, tmp_path):
    labels, images = dota
    conversion = convert_dota(labels, images)
    plane, ship, small_vehicle = 1, 2, 11  # category ids: 1 + the v1.0 class index
    assert bboxes(conversion.coco) == [
        (plane, [10, 18, 22, 24], 0),
        (small_vehicle, [90, 70, 10, 10], 1),
        (ship, [50, 5, 10, 10], 0),
    ]
    first, second = conversion.coco["images"]
    assert (first["file_name"], first["width"], first["height"]) == ("P0001.png", 100, 80)
    assert (first["imagesource"], first["gsd"]) == ("GoogleEarth", 0.5)
    assert (second["file_name"], second["width"], second["height"]) == ("P0002.png", 50, 50)
    assert conversion.objects == {"plane": 1, "ship": 1}
    assert (conversion.ignored, conversion.clipped_boxes, conversion.images_without_labels) == (1, 1, 1)
    assert len(conversion.coco["categories"]) == 15

    records = round_trip(tmp_path, conversion, images).records
    np.testing.assert_allclose(records[0].boxes, [[10, 18, 32, 42], [50, 5, 60, 15]])  # crowd: no target
    np.testing.assert_array_equal(records[0].labels, [0, 1])
    np.testing.assert_allclose(records[0].gt_boxes, [[10, 18, 32, 42], [90, 70, 100, 80], [50, 5, 60, 15]])
    np.testing.assert_array_equal(records[0].gt_ignore, [False, True, False])
    np.testing.assert_array_equal(records[0].gt_labels, [0, 10, 1])
    assert len(records[1].gt_boxes) == 0


def test_dota_versions_and_difficult_as_object(dota):
    assert [len(DOTA_CLASSES[v]) for v in ("1.0", "1.5", "2.0")] == [15, 16, 18]
    assert DOTA_CLASSES["2.0"][-3:] == ("container-crane", "airport", "helipad")
    labels, images = dota
    with (labels / "P0001.txt").open("a") as f:
        f.write("1 1 5 1 5 5 1 5 container-crane 0\n")
    with pytest.raises(
        KLDetDataError, match=r"P0001.txt: line 7: class 'container-crane' is not a DOTA v1.0"
    ):
        convert_dota(labels, images)
    conversion = convert_dota(labels, images, version="1.5", difficult="object")
    assert bboxes(conversion.coco)[-1] == (16, [1, 1, 4, 4], 0)
    assert [a["iscrowd"] for a in conversion.coco["annotations"]] == [0, 0, 0, 0]


def test_dota_malformed_lines_stop_strict_and_are_counted_lenient(dota):
    labels, images = dota
    with (labels / "P0001.txt").open("a") as f:
        f.write("1 2 3 4 5 6 plane 0\n")  # line 7: 8 fields
        f.write("1 2 3 4 5 6 7 x plane 0\n")  # line 8: a coordinate that is no number
        f.write("1 1 5 1 5 5 1 5 car 0\n")  # line 9: not a DOTA class
        f.write("200 1 205 1 205 5 200 5 ship 0\n")  # line 10: outside the image
    with pytest.raises(
        KLDetDataError, match=r"P0001.txt: line 7: expected 10 fields .* got 8 \(lenient=true"
    ):
        convert_dota(labels, images)
    conversion = convert(source="dota", labels=labels, images=images, strict=False)
    assert [(p.kind, p.record) for p in conversion.problems] == [
        ("malformed_annotation", "line 7"),
        ("malformed_annotation", "line 8: '1 2 3 4 5 6 7 x plane 0'"),
        ("unknown_class", "line 9"),
        ("box_outside_image", "line 10"),
    ]
    assert len(conversion.coco["annotations"]) == 3  # the good lines are kept


def test_a_label_file_without_its_image_is_a_missing_image(dota):
    labels, images = dota
    write_text(labels / "P0003.txt", "1 1 5 1 5 5 1 5 plane 0\n")
    with pytest.raises(KLDetDataError, match=r"P0003.txt: label file: no image for it in"):
        convert_dota(labels, images)
    conversion = convert_dota(labels, images, strict=False)
    assert [p.kind for p in conversion.problems] == ["missing_image"]
    assert len(conversion.coco["images"]) == 2


def test_two_images_of_one_stem_and_an_empty_image_folder(dota, tmp_path):
    labels, images = dota
    write_image(images / "P0001.jpg", 100, 80)
    with pytest.raises(
        KLDetDataError, match=r"image P0001: P0001.jpg and P0001.png both match the label file"
    ):
        convert_dota(labels, images)
    (tmp_path / "empty").mkdir()
    with pytest.raises(KLDetDataError, match=r"labelTxt: no image could be converted"):
        convert_dota(labels, tmp_path / "empty", strict=False)


# --- YOLO -----------------------------------------------------------------------------------------------


@pytest.fixture
def yolo(tmp_path):
    write_image(tmp_path / "images" / "train" / "a.jpg", 200, 100)
    write_image(tmp_path / "images" / "train" / "b.png", 40, 30)
    write_text(
        tmp_path / "labels" / "train" / "a.txt",
        "0 0.5 0.5 0.2 0.4\n"  # 40x40 box centred at (100, 50)
        "1 0.95 0.1 0.2 0.2\n",  # 40x20 box centred at (190, 10): reaches past the right edge
    )
    write_text(tmp_path / "labels" / "train" / "b.txt", "1 0.25 0.5 0.5 1.0\n")
    write_text(tmp_path / "data.yaml", "path: .\ntrain: images/train\nnames:\n  0: car\n  1: person\n")
    write_text(tmp_path / "names.txt", "car\nperson\n\n")
    return tmp_path / "labels", tmp_path / "images"


def test_yolo_boxes_in_pixels_from_the_image_headers(yolo, tmp_path):
    labels, images = yolo
    conversion = convert_yolo(labels, images, tmp_path / "data.yaml")
    assert conversion.classes == ["car", "person"]
    assert [c["id"] for c in conversion.coco["categories"]] == [1, 2]
    assert [(e["file_name"], e["width"], e["height"]) for e in conversion.coco["images"]] == [
        ("train/a.jpg", 200, 100),
        ("train/b.png", 40, 30),
    ]
    expected = [(1, [80, 30, 40, 40], 0), (2, [170, 0, 30, 20], 0), (2, [0, 0, 20, 30], 0)]
    for (category, box, crowd), want in zip(bboxes(conversion.coco), expected, strict=True):
        assert (category, crowd) == (want[0], want[2])
        np.testing.assert_allclose(box, want[1], atol=1e-9)
    assert conversion.clipped_boxes == 1 and conversion.objects == {"car": 1, "person": 2}
    assert bboxes(convert_yolo(labels, images, tmp_path / "names.txt").coco) == bboxes(conversion.coco)

    records = round_trip(tmp_path, conversion, images).records
    np.testing.assert_allclose(records[0].boxes, [[80, 30, 120, 70], [170, 0, 200, 20]], atol=1e-5)
    np.testing.assert_array_equal(records[0].labels, [0, 1])
    assert records[0].image_path == images / "train" / "a.jpg"


def test_yolo_an_image_without_a_label_file_has_no_objects_and_a_yaml_list_of_names(yolo, tmp_path):
    labels, images = yolo
    write_image(images / "train" / "c.png", 10, 10)
    write_text(tmp_path / "list.yaml", "names: [car, person]\n")
    conversion = convert_yolo(labels, images, tmp_path / "list.yaml")
    assert conversion.images_without_labels == 1 and len(conversion.coco["images"]) == 3
    assert {a["image_id"] for a in conversion.coco["annotations"]} == {1, 2}


def test_yolo_malformed_lines(yolo, tmp_path):
    labels, images = yolo
    write_text(
        labels / "train" / "b.txt",
        "0 0.5 0.5 0.2\n"  # 4 fields
        "2 0.5 0.5 0.2 0.2\n"  # class 2 of 2 names
        "0 1.5 0.5 0.2 0.2\n"  # centred right of the image: no overlap
        "0 0.5 0.5 -0.2 0.2\n"  # negative width
        "0.5 0.5 0.5 0.2 0.2\n",  # a class that is no integer
    )
    with pytest.raises(KLDetDataError, match=r"b.txt: line 1: expected 5 fields `class cx cy w h`, got 4"):
        convert_yolo(labels, images, tmp_path / "names.txt")
    conversion = convert_yolo(labels, images, tmp_path / "names.txt", strict=False)
    assert [(p.kind, p.record) for p in conversion.problems] == [
        ("malformed_annotation", "line 1"),
        ("unknown_class", "line 2"),
        ("box_outside_image", "line 3"),
        ("invalid_box", "line 4"),
        ("malformed_annotation", "line 5"),
    ]
    write_text(tmp_path / "bad.txt", "car\n\nperson\n")
    with pytest.raises(KLDetDataError, match=r"bad.txt: line 2 is empty"):
        convert_yolo(labels, images, tmp_path / "bad.txt")


# --- VisDrone -------------------------------------------------------------------------------------------


@pytest.fixture
def visdrone(tmp_path):
    write_image(tmp_path / "images" / "0000001_00000_d_0000001.jpg", 120, 90)
    write_text(
        tmp_path / "annotations" / "0000001_00000_d_0000001.txt",
        "10,20,30,40,1,4,0,1,\n"  # a car (trailing comma, as some files write)
        "100,80,30,30,0,0,0,0\n"  # an ignored region reaching past the corner
        "5,5,10,10,0,1,0,0\n"  # a pedestrian of score 0: ignored
        "50,50,10,10,1,11,1,2\n",  # others: an ignored region
    )
    return tmp_path / "annotations", tmp_path / "images"


def test_visdrone_categories_ignored_regions_and_attributes(visdrone, tmp_path):
    labels, images = visdrone
    conversion = convert_visdrone(labels, images)
    annotations = conversion.coco["annotations"]
    assert len(annotations) == 1 + 10 + 1 + 10
    car, pedestrian = annotations[0], annotations[11]
    assert (car["category_id"], car["bbox"], car["iscrowd"]) == (4, [10, 20, 30, 40], 0)
    assert car["attributes"] == {"truncation": 0, "occlusion": 1}
    region = annotations[1:11]
    assert [a["category_id"] for a in region] == list(range(1, 11))
    assert {(tuple(a["bbox"]), a["iscrowd"]) for a in region} == {((100, 80, 20, 10), 1)}
    assert (pedestrian["category_id"], pedestrian["bbox"], pedestrian["iscrowd"]) == (1, [5, 5, 10, 10], 1)
    assert annotations[-1]["attributes"] == {"truncation": 1, "occlusion": 2}
    assert conversion.objects == {"car": 1}
    assert (conversion.ignored, conversion.ignored_annotations) == (3, 21)
    assert [c["name"] for c in conversion.coco["categories"]] == list(VISDRONE_CLASSES)

    (record,) = round_trip(tmp_path, conversion, images).records
    np.testing.assert_allclose(record.boxes, [[10, 20, 40, 60]])
    np.testing.assert_array_equal(record.labels, [3])
    assert record.gt_ignore.sum() == 21 and not record.gt_ignore[0]
    np.testing.assert_allclose(record.gt_boxes[1], [100, 80, 120, 90])


def test_visdrone_malformed_lines(visdrone):
    labels, images = visdrone
    with (labels / "0000001_00000_d_0000001.txt").open("a") as f:
        f.write("1,2,3,4,1,4,0\n")  # line 5: 7 fields
        f.write("1,2,3,4,1,12,0,0\n")  # line 6: category 12
    with pytest.raises(KLDetDataError, match=r"d_0000001.txt: line 5: expected 8 fields .* got 7"):
        convert_visdrone(labels, images)
    conversion = convert_visdrone(labels, images, strict=False)
    assert [(p.kind, p.record) for p in conversion.problems] == [
        ("malformed_annotation", "line 5"),
        ("unknown_class", "line 6"),
    ]


# --- xView ----------------------------------------------------------------------------------------------


def xview_feature(image_id, bounds, type_id):
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": []},
        "properties": {"image_id": image_id, "bounds_imcoords": bounds, "type_id": type_id},
    }


@pytest.fixture
def xview(tmp_path):
    write_image(tmp_path / "train_images" / "100.tif", 64, 48)
    write_image(tmp_path / "train_images" / "200.tif", 16, 16)  # no feature
    features = [
        xview_feature("100.tif", "5,6,25,30", 18),
        xview_feature("100.tif", "50,40,80,60", 73),  # clipped to the 64x48 image
        xview_feature("100.tif", "70,10,90,20", 73),  # right of the image: zero area after clipping
        xview_feature("100.tif", "10,10,10,20", 18),  # zero width
    ]
    geojson = tmp_path / "xView_train.geojson"
    geojson.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return geojson, tmp_path / "train_images"


def test_xview_boxes_clipped_zero_area_dropped_and_type_ids_kept(xview, tmp_path):
    assert len(XVIEW_CLASSES) == 60 and min(XVIEW_CLASSES) == 11 and max(XVIEW_CLASSES) == 94
    labels, images = xview
    conversion = convert_xview(labels, images)
    assert bboxes(conversion.coco) == [(18, [5, 6, 20, 24], 0), (73, [50, 40, 14, 8], 0)]
    assert conversion.objects == {"Small Car": 1, "Building": 1}
    assert (conversion.zero_area_boxes, conversion.clipped_boxes, conversion.images_without_labels) == (
        2,
        1,
        1,
    )
    assert [c["id"] for c in conversion.coco["categories"]] == list(XVIEW_CLASSES)

    dataset = round_trip(tmp_path, conversion, images)
    assert dataset.classes[dataset.records[0].labels[1]] == "Building"
    np.testing.assert_allclose(dataset.records[0].boxes, [[5, 6, 25, 30], [50, 40, 64, 48]])
    assert (dataset.records[1].width, dataset.records[1].height) == (16, 16)


def test_xview_unknown_type_and_missing_image(xview):
    labels, images = xview
    data = json.loads(labels.read_text())
    data["features"] += [
        xview_feature("100.tif", "1,1,5,5", 75),
        xview_feature("300.tif", "1,1,5,5", 18),
        xview_feature("300.tif", "2,2,5,5", 18),  # goes with its missing image, no second problem
        xview_feature("100.tif", "1,1,5", 18),
    ]
    labels.write_text(json.dumps(data))
    with pytest.raises(KLDetDataError, match=r"features\[4\] \(image 100.tif\): type_id 75 is not one of"):
        convert_xview(labels, images)
    conversion = convert_xview(labels, images, strict=False)
    assert [(p.kind, p.record) for p in conversion.problems] == [
        ("unknown_class", "features[4] (image 100.tif)"),
        ("missing_image", "features[5] (image 300.tif)"),
        ("malformed_annotation", "features[7]"),
    ]
    assert len(conversion.coco["annotations"]) == 2


# --- kldet-data convert ---------------------------------------------------------------------------------


def test_cli_writes_the_file_prints_the_report_and_check_reads_it(dota, tmp_path, capsys):
    labels, images = dota
    out = tmp_path / "out" / "dota.json"
    assert main(["convert", "from=dota", f"labels={labels}", f"images={images}", f"out={out}"]) == 0
    report = capsys.readouterr().out
    assert f"wrote {out}: 2 images (1 without labels), 3 annotations, 2 objects (plane 1, ship 1)" in report
    assert (
        "1 ignored boxes (iscrowd: 1; 1 annotations); 1 boxes clipped to their image; nothing skipped"
        in report
    )
    assert [p.name for p in out.parent.iterdir()] == ["dota.json"]  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # as a file written in place
    assert main(["check", "format=coco", f"ann={out}", f"images={images}"]) == 0
    assert "objects: 2   ignored boxes: 1" in capsys.readouterr().out


def test_cli_strict_stops_with_one_line_and_lenient_reports_what_it_skipped(dota, tmp_path, capsys):
    labels, images = dota
    with (labels / "P0001.txt").open("a") as f:
        f.write("1 1 5 1 5 5 1 5 car 0\n")
    out = tmp_path / "dota.json"
    args = ["convert", "source=dota", f"labels={labels}", f"images={images}", f"out={out}"]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert captured.err.startswith(f"kldet-data convert: error: {labels / 'P0001.txt'}: line 7: class 'car'")
    assert not out.exists()
    assert main([*args, "lenient=true"]) == 0
    report = capsys.readouterr().out
    assert "skipped 0 images and 1 annotations (1 unknown_class)." in report
    assert f"[unknown_class] {labels / 'P0001.txt'}: line 7: class 'car'" in report
    assert len(json.loads(out.read_text())["annotations"]) == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["from=yolo"], "from=yolo needs names=FILE"),
        (["from=dota", "version=3.0"], "DOTA version='3.0' is not one of 1.0, 1.5, 2.0"),
        (["from=dota", "labels=/nonexistent"], "labels=/nonexistent: not a folder of label files"),
        (["from=xview", "labels=/nonexistent.geojson"], "/nonexistent.geojson: GeoJSON file not found"),
        (["from=coco"], "source"),
        (["from=dota", "out=/dev/null/x.json"], "/dev/null/x.json: cannot write the COCO file"),
    ],
)
def test_cli_bad_input_is_one_line(dota, tmp_path, capsys, extra, message):
    labels, images = dota
    args = ["convert", f"labels={labels}", f"images={images}", f"out={tmp_path / 'x.json'}", *extra]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
