"""One exit-status rule across the six CLIs (kldet.cli.report): 0 done or help, 1 any error, with the
message as one ``PROG: error: ...`` line on stderr; a bad argument and bad data are tried on each."""

import cv2
import numpy as np
import pytest

from kldet.cli.analyze import main as analyze_main
from kldet.cli.data import main as data_main
from kldet.cli.evaluate import main as eval_main
from kldet.cli.export import main as export_main
from kldet.cli.predict import main as predict_main
from kldet.cli.report import EXIT_ERROR, EXIT_OK


def kldet_train(monkeypatch, *argv):
    from test_train import kldet_train as run

    try:
        run(monkeypatch, *argv)
    except SystemExit as exit_info:
        return exit_info.code
    return EXIT_OK


@pytest.fixture
def image_folder(tmp_path):
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), np.zeros((64, 64, 3), np.uint8))
    return tmp_path / "images"


CASES = {
    # prog: [(argv, what the message says)]: bad arguments first, then bad data; {tmp} and {images} are
    # filled in per test
    "kldet-analyze": [
        (["assign", "format=coco", "ann={tmp}/a.json", "images={images}", "bins=3"], "bins"),
        (["assign", "format=coco", "ann={tmp}/nowhere/ann.json", "images={images}"], "ann.json"),
    ],
    "kldet-data": [
        ([], "no command: use synth, check, convert, show or tile"),
        (["merge"], "unknown command 'merge'"),
        (["convert", "from=dota"], "missing required images=... labels=... out=..."),
        (["check", "format=aitod", "root={tmp}", "split=train", "colour=red"], "colour"),
        (["check", "format=dior"], "format=dior needs root=DIR split=NAME"),
        (["check", "format=coco", "ann={tmp}/nowhere/ann.json", "images={images}"], "ann.json"),
    ],
    "kldet-eval": [
        (["results=r.json", "ann=a.json", "metric=ap"], "metric"),
        (["results=r.json", "colour=red"], "colour"),
        (["results={tmp}/r.json", "ann={tmp}/nowhere/a.json"], "a.json: annotation file not found"),
        (["ckpt={tmp}/nowhere/best.ckpt", "experiment=synthetic"], "best.ckpt does not exist"),
    ],
    "kldet-export": [
        (["ckpt=x.ckpt", "format=tflite", "out={tmp}/m"], "tflite"),
        (["ckpt={tmp}/nowhere/x.ckpt", "format=onnx", "out={tmp}/m.onnx"], "x.ckpt does not exist"),
    ],
    "kldet-predict": [
        (["ckpt=x.ckpt", "input={images}", "out={tmp}/o", "tile_sise=3"], "tile_sise"),
        (["ckpt=x.ckpt", "input={images}", "out={tmp}/o", "output={tmp}/p"], "former name of out="),
        (["ckpt={tmp}/nowhere/x.ckpt", "input={images}", "out={tmp}/o"], "x.ckpt does not exist"),
    ],
}
MAINS = {
    "kldet-analyze": analyze_main,
    "kldet-data": data_main,
    "kldet-eval": eval_main,
    "kldet-export": export_main,
    "kldet-predict": predict_main,
}


@pytest.mark.parametrize(
    ("prog", "argv", "message"),
    [(prog, argv, message) for prog, cases in CASES.items() for argv, message in cases],
)
def test_every_error_exits_1_with_one_line(prog, argv, message, tmp_path, image_folder, capsys):
    argv = [arg.format(tmp=tmp_path, images=image_folder) for arg in argv]
    assert MAINS[prog](argv) == EXIT_ERROR == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{prog}") and ": error: " in err and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("prog", sorted(MAINS))
def test_help_exits_0(prog, capsys):
    assert MAINS[prog](["--help"]) == EXIT_OK == 0
    out = capsys.readouterr().out
    assert f"{prog} " in out and ("ckpt=" in out or prog in ("kldet-analyze", "kldet-data"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.batch_size=0"], "kldet-train: error: data.batch_size=0: must be >= 1"),
        (
            ["ckpt_path={tmp}/nowhere/last.ckpt"],
            "kldet-train: error: checkpoint {tmp}/nowhere/last.ckpt does not exist",
        ),
    ],
)
def test_kldet_train_errors_exit_1_with_one_line(overrides, message, monkeypatch, tmp_path, capsys):
    overrides = [arg.format(tmp=tmp_path) for arg in overrides]
    code = kldet_train(
        monkeypatch,
        "experiment=synthetic",
        f"hydra.run.dir={tmp_path / 'run'}",
        f"paths.data_dir={tmp_path}",
        *overrides,
    )
    assert code == EXIT_ERROR
    err = capsys.readouterr().err
    assert message.format(tmp=tmp_path) in err and err.count("\n") == 1 and "Traceback" not in err
