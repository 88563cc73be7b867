"""Readable drawings (kldet.inference.render) through ``kldet-data show`` and ``kldet-eval ... plots=``: the
drawn colours at the right pixels of a tiny synthetic image, the legend, the upscale factor, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from kldet.cli.data import main as data_main
from kldet.cli.evaluate import main as eval_main
from kldet.inference.render import (
    OUTCOME_COLORS,
    PALETTE,
    add_legend,
    auto_scale,
    draw_boxes,
    object_crops,
    upscale,
)
from test_import_boundaries import loaded_by_cli

HEIGHT, WIDTH = 24, 40
# xywh: a 4 x 4 car and a 6 x 6 ship
CAR, SHIP = [4, 4, 4, 4], [16, 10, 6, 6]


@pytest.fixture
def tiny_set(tmp_path: Path) -> tuple[Path, Path]:
    """A COCO set of one black 24 x 40 image (id 7) with a car and a ship."""
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.zeros((HEIGHT, WIDTH, 3), np.uint8))
    ann = tmp_path / "ann.json"
    ann.write_text(
        json.dumps(
            {
                "images": [{"id": 7, "file_name": "a.png", "width": WIDTH, "height": HEIGHT}],
                "categories": [{"id": 1, "name": "car"}, {"id": 2, "name": "ship"}],
                "annotations": [
                    {"id": 1, "image_id": 7, "category_id": 1, "bbox": CAR, "area": 16, "iscrowd": 0},
                    {"id": 2, "image_id": 7, "category_id": 2, "bbox": SHIP, "area": 36, "iscrowd": 0},
                ],
            }
        )
    )
    return ann, images


def read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def outline_at(drawing: np.ndarray, xywh: list[float], scale: int, color, x_offset: int = 0) -> bool:
    """Whether the one-pixel outline just outside the box (in a drawing upscaled by ``scale``) has ``color``
    all round, and the box's own pixels do not."""
    x0, y0 = xywh[0] * scale - 1 + x_offset, xywh[1] * scale - 1
    x1, y1 = (xywh[0] + xywh[2]) * scale + x_offset, (xywh[1] + xywh[3]) * scale
    ring = np.concatenate(
        [
            drawing[y0, x0 : x1 + 1],
            drawing[y1, x0 : x1 + 1],
            drawing[y0 : y1 + 1, x0],
            drawing[y0 : y1 + 1, x1],
        ]
    )
    inside = drawing[y0 + 1 : y1, x0 + 1 : x1]
    return bool((ring == color).all() and (inside != color).any(axis=-1).all())


def test_upscale_and_boxes_follow_the_factor():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    big = upscale(image, 4)
    assert big.shape == (8, 12, 3) and (big[4:8, 8:12] == image[1, 2]).all()
    drawn = draw_boxes(
        np.zeros((HEIGHT, WIDTH, 3), np.uint8), np.array([[4.0, 4, 8, 8]]), np.array([PALETTE[0]]), scale=3
    )
    assert drawn.shape == (HEIGHT * 3, WIDTH * 3, 3)
    assert outline_at(drawn, CAR, 3, PALETTE[0])
    assert auto_scale(24, 40) == 8 and auto_scale(800, 800) == 1 and auto_scale(256, 256) == 3


def test_legend_is_a_strip_of_swatches_below_the_image():
    image = np.zeros((10, 200, 3), np.uint8)
    with_legend = add_legend(image, [("car", PALETTE[0]), ("ship", PALETTE[1])])
    assert with_legend.shape[1] == 200 and with_legend.shape[0] > 10
    assert np.array_equal(with_legend[:10], image)
    strip = with_legend[10:]
    for color in (PALETTE[0], PALETTE[1]):
        assert (strip == color).all(axis=-1).sum() == 100  # one 10 x 10 swatch each
    narrow = add_legend(np.zeros((10, 40, 3), np.uint8), [("car", PALETTE[0]), ("ship", PALETTE[1])])
    assert narrow.shape[0] - 10 == 2 * (with_legend.shape[0] - 10)  # wrapped onto a second line


def test_labels_are_skipped_where_they_would_cover_another_box():
    image = np.zeros((60, 60, 3), np.uint8)
    boxes = np.array([[20.0, 30, 26, 36], [20, 20, 26, 26]])  # the second sits where the first's label goes
    colors = np.array([PALETTE[0], PALETTE[1]], np.uint8)
    drawn = draw_boxes(image, boxes, colors, texts=["a", "b"])
    plain = draw_boxes(image, boxes, colors)
    changed = (drawn != plain).any(axis=-1)
    assert not changed[19:37, 19:27].any()  # no label over either box
    assert changed[:19].any()  # "b" above the upper box; "a" (above the lower one) had no room


def test_show_draws_ground_truth_in_class_colours_with_a_legend(tiny_set, tmp_path):
    ann, images = tiny_set
    out = tmp_path / "out"
    assert (
        data_main(
            ["show", "format=coco", f"ann={ann}", f"images={images}", f"out={out}", "scale=4", "crops=2"]
        )
        == 0
    )
    drawing = read_rgb(out / "7.png")
    assert drawing.shape[1] == WIDTH * 4 and drawing.shape[0] > HEIGHT * 4  # the factor, plus the legend
    assert outline_at(drawing, CAR, 4, PALETTE[0]) and outline_at(drawing, SHIP, 4, PALETTE[1])
    legend = drawing[HEIGHT * 4 :]
    assert all((legend == color).all(axis=-1).any() for color in (PALETTE[0], PALETTE[1]))
    crops = read_rgb(out / "7_crops.png")
    assert crops.shape[0] == 24 * 6  # two zoomed views of the whole (24 px high) image, smallest object first
    assert (crops == PALETTE[0]).all(axis=-1).any() and (crops == PALETTE[1]).all(axis=-1).any()
    # classes= keeps only the ships
    only = tmp_path / "only"
    assert (
        data_main(
            [
                "show",
                "format=coco",
                f"ann={ann}",
                f"images={images}",
                f"out={only}",
                "scale=4",
                "classes=[ship]",
            ]
        )
        == 0
    )
    ships = read_rgb(only / "7.png")
    assert outline_at(ships, SHIP, 4, PALETTE[1]) and not (ships == PALETTE[0]).all(axis=-1).any()


def test_show_with_results_draws_true_positives_false_positives_and_misses(tiny_set, tmp_path):
    ann, images = tiny_set
    results = tmp_path / "results.json"
    found = [
        {"image_id": 7, "category_id": 1, "bbox": CAR, "score": 0.9},  # true positive
        {"image_id": 7, "category_id": 2, "bbox": [30, 14, 4, 4], "score": 0.8},  # false positive
        {
            "image_id": 7,
            "category_id": 2,
            "bbox": SHIP,
            "score": 0.1,
        },  # under the threshold: the ship is missed
    ]
    results.write_text(json.dumps(found))
    out = tmp_path / "out"
    args = [
        "show",
        "format=coco",
        f"ann={ann}",
        f"images={images}",
        f"out={out}",
        f"results={results}",
        "scale=4",
    ]
    assert loaded_by_cli("kldet.cli.data", args) == (0, set())  # drawn without torch, Lightning or Hydra
    drawing = read_rgb(out / "7.png")
    assert drawing.shape[1] == 2 * WIDTH * 4 + 4  # ground truth | gap | outcomes
    right = WIDTH * 4 + 4
    assert outline_at(drawing, CAR, 4, PALETTE[0])  # left panel: classes
    assert outline_at(drawing, CAR, 4, OUTCOME_COLORS["true positive"], right)
    assert outline_at(drawing, [30, 14, 4, 4], 4, OUTCOME_COLORS["false positive"], right)
    assert outline_at(drawing, SHIP, 4, OUTCOME_COLORS["missed"], right)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ids": "ids=[99]"}, "ids: image id(s) [99] not in"),
        ({"classes": "classes=[boat]"}, "classes: ['boat'] not among"),
        ({"missing": True}, "missing.png"),
        ({"scale": "scale=-1"}, "scale= and crops= must be >= 0"),
    ],
)
def test_show_bad_input_is_one_line_and_exit_1(tiny_set, tmp_path, capsys, change, message):
    ann, images = tiny_set
    if "missing" in change:
        data = json.loads(ann.read_text())
        data["images"][0]["file_name"] = "missing.png"
        ann.write_text(json.dumps(data))
    args = ["show", "format=coco", f"ann={ann}", f"images={images}", f"out={tmp_path / 'out'}"]
    args += [v for k, v in change.items() if k != "missing"]
    assert data_main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("kldet-data show: error:") and message in err


def test_object_crops_without_boxes_is_none():
    assert object_crops(np.zeros((8, 8, 3), np.uint8), np.zeros((0, 4)), np.zeros((0, 3)), count=3) is None


def test_eval_plots_writes_the_analysis_and_agrees_with_the_printed_metrics(tiny_set, tmp_path):
    ann, images = tiny_set
    results = tmp_path / "results.json"
    found = [
        {"image_id": 7, "category_id": 1, "bbox": CAR, "score": 0.9},
        {"image_id": 7, "category_id": 1, "bbox": [16.5, 10, 6, 6], "score": 0.8},  # the ship as a car
    ]
    results.write_text(json.dumps(found))
    plots, metrics = tmp_path / "plots", tmp_path / "metrics.json"
    args = [f"results={results}", f"ann={ann}", f"out={metrics}", f"plots={plots}", f"images={images}"]
    status, loaded = loaded_by_cli("kldet.cli.evaluate", args)
    assert status == 0 and not loaded  # no torch, Lightning or Hydra for the analysis either
    names = {p.name for p in plots.iterdir()}
    for name in ("pr_curves.json", "pr_curves_iou50.png", "pr_curves_iou50-95.png", "confusion_matrix.csv"):
        assert name in names
    assert {
        "confusion_matrix_normalised.csv",
        "confusion_matrix.png",
        "errors.json",
        "errors.csv",
        "errors.png",
    } <= names
    assert (plots / "examples" / "7.png").is_file()
    printed = json.loads(metrics.read_text())
    curves = json.loads((plots / "pr_curves.json").read_text())
    all_areas, iou_range = curves["areas"].index("all"), curves["ious"].index("0.5:0.95")
    assert curves["ap"][iou_range][curves["classes"].index("car")][all_areas] == pytest.approx(
        printed["AP_car"], abs=1e-6
    )
    errors = json.loads((plots / "errors.json").read_text())["areas"]["all"]
    assert errors["counts"]["classification"] == 1 and errors["AP50"] == pytest.approx(
        printed["AP50"], abs=1e-6
    )
    assert (plots / "confusion_matrix.csv").read_text().splitlines()[1:] == [
        "car,1,0,0",
        "ship,1,0,0",
        "background,0,0,0",
    ]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["images=x"], "images= belongs to the error analysis"),
        (["metric=voc", "root=r", "split=s"], "metric=aitod or metric=coco"),
    ],
)
def test_eval_analysis_keys_need_plots_and_a_coco_metric(tiny_set, tmp_path, capsys, extra, message):
    ann, _ = tiny_set
    results = tmp_path / "results.json"
    results.write_text("[]")
    plots = [f"plots={tmp_path / 'p'}"] if "metric=voc" in extra else []
    assert eval_main([f"results={results}", f"ann={ann}", *plots, *extra]) == 1
    assert message in capsys.readouterr().err


def test_predict_render_is_enlarged_with_a_class_legend():
    from kldet.inference.render import draw_detections

    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    found = {"boxes": np.array([[4.0, 4, 8, 8]]), "scores": np.array([0.9]), "labels": np.array([1])}
    drawn = draw_detections(image, found, ["car", "ship"], scale=4, legend=True, show_labels=False)
    assert drawn.shape[1] == WIDTH * 4 and drawn.shape[0] > HEIGHT * 4
    assert outline_at(drawn, CAR, 4, PALETTE[1])
    assert (drawn[HEIGHT * 4 :] == PALETTE[1]).all(axis=-1).sum() == 100  # the ship swatch; no car entry
