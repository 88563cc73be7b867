"""kldet-analyze: the assignment check on a data set (assign) and the per-part cost of a model (model)."""

import json
import warnings

import cv2
import numpy as np
import pytest
import torch

from helpers import tiny_detector
from kldet.analysis.assignment import compare_assigners, positives_per_gt, record_scenes
from kldet.analysis.model import model_costs
from kldet.cli.analyze import main
from kldet.data.records import Record
from kldet.data.transforms import DetectionTransform

# The model timings run on one thread (two spin against each other on a busy CPU, 40 times slower).
pytestmark = pytest.mark.usefixtures("quiet_single_thread")
NAMES = ["FCOS P3-P7", "FCOS P2-P6", "ATSS P2-P6", "Ali-TSM P2-P6", "Hierarchical KLD P2-P6"]


@pytest.fixture
def coco_files(tmp_path):
    """Two images trained at max_size=128: a 64 px image whose 2 px box (class "speck") doubles to the
    4 px box (6, 6, 10, 10), which lies between the P3 points (4, 12, ...) and has the P2 points (6, 10)
    on its edges; a 128 px image (not scaled) with a 100 px box (class "field")."""
    images = tmp_path / "images"
    images.mkdir()
    for name, side in (("small.png", 64), ("large.png", 128)):
        cv2.imwrite(str(images / name), np.zeros((side, side, 3), np.uint8))
    coco = {
        "images": [
            {"id": 1, "file_name": "small.png", "width": 64, "height": 64},
            {"id": 2, "file_name": "large.png", "width": 128, "height": 128},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [3, 3, 2, 2], "area": 4, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [14, 14, 100, 100], "area": 1e4, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "speck"}, {"id": 2, "name": "field"}],
    }
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(coco))
    return ann, images


def expected_positives(image_size, box, label):
    """Positives of one ground truth straight from the assigners (the CLI reads, scales and tallies)."""
    boxes = torch.tensor([box], dtype=torch.float32)
    runs = compare_assigners(image_size, boxes, torch.tensor([label]), num_classes=2)
    return {name: int(positives_per_gt(a.assigned, 1)[0]) for name, a in runs.items()}


def cells(table: str, row: str) -> list[str]:
    """The cells after the name of every table row named ``row``."""
    return [line.split(" | ")[1:] for line in table.splitlines() if line.startswith(f"| {row} |")]


def test_assign_table_counts_the_known_outcome(coco_files, tmp_path, capsys):
    ann, images = coco_files
    out = tmp_path / "out"
    argv = ["assign", "format=coco", f"ann={ann}", f"images={images}", "max_size=128", f"out={out}"]
    assert main([*argv, "progress=false"]) == 0
    printed = capsys.readouterr()
    tiny = expected_positives((128, 128), [6, 6, 10, 10], 0)
    large = expected_positives((128, 128), [14, 14, 114, 114], 1)
    # The geometry of the docstring: only Ali-TSM and the RPN's KLD assigner give the 4 px box positives;
    # the 100 px box gets some from every assigner.
    assert [tiny[name] for name in NAMES[:3]] == [0, 0, 0] and 3 <= tiny["Ali-TSM P2-P6"] <= 4
    assert 3 <= tiny["Hierarchical KLD P2-P6"] <= 4
    assert all(large[name] > 0 for name in NAMES)
    table = (out / "assignment.md").read_text()
    assert table in printed.out
    assert "| assigner | very tiny (n=1) | tiny (n=0) | small (n=0) | medium (n=1) |" in table
    zero, mean = zip(*(cells(table, name) for name in NAMES), strict=True)
    assert [row[0] for row in zero] == ["100.0", "100.0", "100.0", "0.0", "0.0"]
    assert all(row[3] == "0.0 |" for row in zero)
    assert [row[0] for row in mean] == [f"{tiny[name]:.2f}" for name in NAMES]
    assert [row[3] for row in mean] == [f"{large[name]:.2f} |" for name in NAMES]
    saved = json.loads((out / "assignment.json").read_text())["tables"]["all classes"]
    assert saved["Ali-TSM P2-P6"][0] == {
        "size_bin": "very tiny",
        "num_gts": 1,
        "zero_fraction": 0.0,
        "mean_positives": float(tiny["Ali-TSM P2-P6"]),
    }
    assert saved["FCOS P3-P7"][1]["zero_fraction"] is None  # an empty bin: "-" in the table
    assert (out / "assignment.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "counted 2 ground truths" in printed.err


def test_assign_per_class_tables_split_the_ground_truths(coco_files, capsys):
    ann, images = coco_files
    argv = ["assign", "format=coco", f"ann={ann}", f"images={images}", "max_size=128"]
    assert main([*argv, "per_class=true", "progress=false"]) == 0
    printed = capsys.readouterr().out
    sections = printed.split("### ")
    assert [s.split("\n")[0] for s in sections[1:]] == ["all classes", "speck", "field"]
    speck, field = sections[2], sections[3]
    assert "| assigner | very tiny (n=1) | tiny (n=0) | small (n=0) | medium (n=0) |" in speck
    assert "| assigner | very tiny (n=0) | tiny (n=0) | small (n=0) | medium (n=1) |" in field
    assert cells(speck, "FCOS P3-P7")[0][:2] == ["100.0", "-"]
    assert cells(field, "FCOS P3-P7")[0][0] == "-"


def test_assign_at_native_size_keeps_the_2px_box(coco_files, capsys):
    ann, images = coco_files
    argv = ["assign", "format=coco", f"ann={ann}", f"images={images}", "max_size=null", "progress=false"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    # Unscaled, the 64 px image's box is 2 px: still very tiny; the 100 px box still medium.
    assert "| assigner | very tiny (n=1) | tiny (n=0) | small (n=0) | medium (n=1) |" in printed
    assert "native size" in printed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["assign", "format=coco", "ann=MISSING.json", "images=."], "MISSING.json"),
        (["assign", "format=coco"], "format=coco needs ann=FILE images=DIR"),
        (["assign", "format=coco", "ann=a", "images=b", "max_size=0"], "max_size=0"),
        (["assign", "bins=3"], "bins"),
        (["model", "size=100"], "size=100"),
        (["model", "model=yolo"], "model"),
        (["model", "threads=0", "size=64"], "threads=0"),
        (["model", "backbone=vgg", "size=64", "repeats=0"], "backbone 'vgg'"),
        (["count"], "unknown command 'count'"),
        ([], "no command"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(argv, message, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kldet-analyze") and message in err
    assert "Traceback" not in err


def test_model_costs_add_up_and_p2_dominates_the_head():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = tiny_detector()  # ResNet-18, 32 channels, one conv per head tower, 2 classes, P2-P6
    rows = {r.part: r for r in model_costs(model, 64, repeats=1)}
    levels = [f"head P{k}" for k in range(2, 7)]
    assert list(rows) == ["backbone body", "FPN", "TlA", *levels, "head (shared)", "total"]
    parts = ["backbone body", "FPN", "TlA", *levels]
    assert sum(rows[p].flops for p in parts) == rows["total"].flops > 0
    assert rows["head (shared)"].flops == sum(rows[p].flops for p in levels)
    assert rows["total"].parameters == sum(p.numel() for p in model.parameters())
    assert (
        sum(rows[p].parameters for p in ["backbone body", "FPN", "TlA", "head (shared)"])
        == rows["total"].parameters
    )
    # Hand count of the head on P2 (16 x 16 cells): 3x3 convs, 2 FLOPs per multiply-add, each tower one
    # 32 -> 32 conv, then 32 -> 2 (classes), 32 -> 4 (box) and 32 -> 1 (centerness).
    assert rows["head P2"].flops == 2 * 9 * 16 * 16 * 32 * (2 * 32 + 2 + 4 + 1)
    assert max(levels, key=lambda p: rows[p].flops) == "head P2"
    assert all(r.seconds > 0 for r in rows.values())
    assert all(r.seconds is None for r in model_costs(model, 64, repeats=0))


def test_model_command_writes_table_and_json(tmp_path, capsys):
    out = tmp_path / "costs"
    argv = ["model", "model=kldet_r18", "size=64", "channels=16", "repeats=1", "threads=1", f"out={out}"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| head P2 |" in printed and "| total |" in printed
    assert (out / "model.md").read_text() in printed
    saved = json.loads((out / "model.json").read_text())
    parts = {p["part"]: p for p in saved["parts"]}
    assert saved["model"] == "kldet_r18" and saved["size"] == 64
    head_levels = [p for p in parts if p.startswith("head P")]
    assert head_levels == ["head P2", "head P3", "head P4", "head P5", "head P6"]
    summed = sum(parts[p]["flops"] for p in ["backbone body", "FPN", "TlA", *head_levels])
    assert summed == parts["total"]["flops"]
    assert parts["total"]["seconds"] > 0 and saved["threads"] == 1


def test_record_scenes_scale_boxes_as_training_and_pad_to_32():
    record = Record("a.png", 100, 50, np.array([[10, 5, 20, 45]], np.float32), np.array([3]))
    (scene,) = record_scenes([record], max_size=200)
    # Longer side 100 -> 200: (h, w) = (100, 200), padded to multiples of 32: (128, 224).
    assert scene.image_size == (128, 224)
    np.testing.assert_array_equal(scene.boxes, [[20, 10, 40, 90]])
    assert scene.labels.tolist() == [3]
    # The training transform agrees (a second implementation: albumentations' resize).
    image, boxes, _, _ = DetectionTransform(max_size=200)(np.zeros((50, 100, 3), np.uint8), record.boxes, [3])
    assert image.shape[1:] == (100, 200)
    np.testing.assert_allclose(boxes.numpy(), scene.boxes, atol=1e-4)
    (native,) = record_scenes([record], max_size=None)
    assert native.image_size == (64, 128)
    np.testing.assert_array_equal(native.boxes, record.boxes)
