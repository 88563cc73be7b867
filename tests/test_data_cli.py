"""``kldet-data``: synth and check, run in-process; exit codes and what they print."""

from __future__ import annotations

import json

import pytest

from kldet.cli.data import main


def test_synth_writes_the_aitod_layout(tmp_path):
    assert (
        main(["synth", f"out={tmp_path}", "num_images=4", "seed=1", "image_size=160", "val_fraction=0.25"])
        == 0
    )
    assert (tmp_path / "annotations" / "train.json").is_file()
    assert len(list((tmp_path / "train").glob("*.png"))) == 3
    assert len(list((tmp_path / "val").glob("*.png"))) == 1


def test_check_a_good_set_prints_the_summary_and_exits_0(synthetic_root, capsys):
    assert main(["check", "format=aitod", f"root={synthetic_root}", "split=train"]) == 0
    out = capsys.readouterr().out
    data = json.loads((synthetic_root / "annotations" / "train.json").read_text())
    assert f"images: {len(data['images'])}" in out and f"objects: {len(data['annotations'])}" in out
    for word in ("vehicle", "wind-mill", "very tiny", "tiny", "small", "medium", "no problems found"):
        assert word in out


def test_check_lists_every_problem_and_exits_1(synthetic_root, tmp_path, capsys):
    data = json.loads((synthetic_root / "annotations" / "train.json").read_text())
    data["images"][0]["file_name"] = "missing.png"
    data["annotations"][-1]["bbox"][2] = -1
    data["annotations"][-2]["category_id"] = 99
    data["annotations"][-3]["bbox"][3] = 0  # not a problem: evaluation counts it, training cannot use it
    ann = tmp_path / "bad.json"
    ann.write_text(json.dumps(data))
    assert main(["check", "format=aitod", f"ann={ann}", f"images={synthetic_root / 'train'}"]) == 1
    out = capsys.readouterr().out
    assert "3 problem(s)" in out
    assert "[missing_image]" in out and "missing.png not found" in out
    assert "[invalid_box]" in out and "has negative width" in out
    assert "boxes of zero size or outside their image: 1 (no training targets" in out
    assert "[unknown_class]" in out and "category_id 99" in out
    assert f"images: {len(data['images']) - 1}" in out  # the good images are still described


def test_check_with_decode_finds_a_truncated_image_that_the_header_check_passes(
    synthetic_root, tmp_path, capsys
):
    images = tmp_path / "train"
    images.mkdir()
    for path in (synthetic_root / "train").glob("*.png"):
        (images / path.name).write_bytes(path.read_bytes())
    victim = sorted(images.glob("*.png"))[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    args = [
        "check",
        "format=aitod",
        f"ann={synthetic_root / 'annotations' / 'train.json'}",
        f"images={images}",
    ]
    assert main(args) == 0
    assert main([*args, "decode=true"]) == 1
    out = capsys.readouterr().out
    assert "1 problem(s)" in out and "[undecodable_image]" in out
    assert f"{victim.name} cannot be decoded: truncated: the PNG data ends before its IEND chunk" in out
    assert "undecodable_image: the pixel data cannot be decoded" in out
    assert "the image header cannot be read" not in out


def test_check_dior_and_coco(tmp_path, capsys):
    assert main(["synth", f"out={tmp_path}", "num_images=2", "seed=3", "image_size=128", "format=dior"]) == 0
    assert main(["check", "format=dior", f"root={tmp_path}", "split=train"]) == 0
    assert "Expressway-Service-area" in capsys.readouterr().out
    assert main(["synth", f"out={tmp_path / 'c'}", "num_images=2", "seed=3", "image_size=128"]) == 0
    ann, images = tmp_path / "c" / "annotations" / "train.json", tmp_path / "c" / "train"
    assert main(["check", "format=coco", f"ann={ann}", f"images={images}"]) == 0
    assert main(["check", "format=coco", f"root={tmp_path / 'c'}", "split=train"]) == 0


@pytest.mark.parametrize(
    ("argv", "status", "words"),
    [
        (["check", "format=aitod", "anns=x.json"], 1, "Key 'anns' not in 'CheckConfig'"),
        (["check", "format=yolo"], 1, "expected one of [aitod, dior, coco]"),
        (["check", "format=dior", "root=/x"], 1, "format=dior needs root=DIR split=NAME"),
        (["check", "format=coco", "root=/x"], 1, "format=coco needs ann=FILE images=DIR"),
        (["check", "format=aitod", "root=/nowhere", "split=test"], 1, "expected /nowhere/annotations/"),
        (["check", "format=coco", "root=/nowhere", "split=test"], 1, "COCO split 'test' not found under"),
        (["check", "format=dior", "root=/nowhere", "split=test"], 1, "DIOR split 'test' not found"),
        (
            ["check", "format=aitod", "ann=/nowhere.json", "images=/"],
            1,
            "/nowhere.json: annotation file not found",
        ),
        (["synth", "num_images=3"], 1, "missing required out="),
        (["synth", "out=/tmp/x", "num_images=many"], 1, "num_images: Value 'many'"),
        (["synth", "out"], 1, "expected key=value arguments"),
        (["merge"], 1, "unknown command 'merge'"),
        ([], 1, "kldet-data: error: no command: use synth, check, convert, show or tile"),
        (["--help"], 0, "kldet-data convert from=dota|yolo|visdrone|xview"),
        (["convert", "--help"], 0, "names            str | None     yolo: class names"),
        (["--help"], 0, "kldet-data check format=dior root=DIR split=NAME"),
        (["--help"], 0, "add decode=true to decode every image"),
        (["synth", "--help"], 0, "val_fraction"),
        (["check", "-h"], 0, "decode every image"),
        (["--help"], 0, "kldet-data tile format=aitod|dior|coco"),
        (["tile", "--help"], 0, "min_visibility   float"),
        (["tile", "out=/tmp/x", "size=big"], 1, "size: Value 'big'"),
    ],
)
def test_bad_arguments_give_a_message_not_a_traceback(argv, status, words, capsys):
    assert main(argv) == status
    captured = capsys.readouterr()
    # Help on stdout; an error (bad argument or bad data alike: exit 1) as one line on stderr.
    assert words in (captured.err if status else captured.out)
    assert "Traceback" not in captured.out + captured.err
    if status:
        first = captured.err.splitlines()[0]
        assert first.startswith("kldet-data") and ": error: " in first
