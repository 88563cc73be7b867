"""kldet-export and kldet.inference.export: the exported forward matches the eager model."""

import json

import pytest
import torch

from helpers import seeded_detector, tiny_spec
from kldet.checkpoint import load_detector, save_detector
from kldet.cli.export import main as export_main
from kldet.errors import KLDetConfigError
from kldet.inference.export import export_model, output_names, split_outputs
from kldet.model import postprocess_detections

# candidates "pairs" is not the default: the sidecar must carry it.
TINY = tiny_spec(3, {"score_thresh": 0.0, "pre_nms_topk": 20, "candidates": "pairs"})
# The export size and another one: every format must follow batch size and H, W (multiples of 32, >= 96).
SHAPES = [(1, 3, 96, 128), (3, 3, 160, 96)]


@pytest.fixture(scope="module")
def model():
    return seeded_detector(TINY)


def eager_outputs(model, images):
    with torch.no_grad():
        cls_logits, box_regression, centerness = model(images)
    return [*cls_logits, *box_regression, *centerness]


def assert_matches_eager(model, run):
    for shape in SHAPES:
        images = torch.randn(*shape)
        exported = [torch.as_tensor(o) for o in run(images)]
        expected = eager_outputs(model, images)
        assert [o.shape for o in exported] == [o.shape for o in expected]
        for ours, theirs in zip(exported, expected, strict=True):
            torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_kldet_export_torchscript_round_trip_and_postprocess(model, tmp_path):
    checkpoint = save_detector(tmp_path / "m.ckpt", model, TINY, ["a", "b", "c"], [3, 5, 7])
    out = tmp_path / "model.ts"
    assert export_main([f"ckpt={checkpoint}", "format=torchscript", f"out={out}", "image_size=96"]) == 0
    loaded = torch.jit.load(str(out))
    assert_matches_eager(model, loaded)

    sidecar = json.loads((tmp_path / "model.ts.json").read_text())
    assert sidecar["outputs"] == output_names(model) and sidecar["strides"] == [4, 8, 16, 32, 64]
    assert sidecar["outputs"][::5] == ["cls_logits_0", "box_regression_0", "centerness_0"]
    assert sidecar["category_ids"] == [3, 5, 7] and sidecar["postprocess"]["score_thresh"] == 0.0
    assert sidecar["postprocess"]["candidates"] == "pairs"

    # The documented post-processing of exported outputs gives the eager detections.
    reference, _ = load_detector(checkpoint)
    images = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        detections = reference.postprocess(*split_outputs(loaded(images)), (96, 96), [(96, 90), (70, 96)])
        # ... and so does postprocess_detections with nothing but the sidecar.
        from_sidecar = postprocess_detections(
            *split_outputs(loaded(images)),
            sidecar["strides"],
            (96, 96),
            [(96, 90), (70, 96)],
            **sidecar["postprocess"],
        )
    eager = reference.predict(images, [(96, 90), (70, 96)])
    for ours, alone, theirs in zip(detections, from_sidecar, eager, strict=True):
        assert len(ours["boxes"]) > 0
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(ours[key], theirs[key])
            torch.testing.assert_close(alone[key], theirs[key])


def test_pt2_round_trip(model, tmp_path):
    path = export_model(model, tmp_path / "model.pt2", "pt2", (96, 128))
    assert_matches_eager(model, torch.export.load(str(path)).module())


def test_onnx_round_trip(model, tmp_path):
    pytest.importorskip("onnxscript")
    onnxruntime = pytest.importorskip("onnxruntime")
    path = export_model(model, tmp_path / "model.onnx", "onnx", (96, 128))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == output_names(model)
    assert_matches_eager(model, lambda images: session.run(None, {"images": images.numpy()}))


def test_export_rejects_bad_sizes_formats_and_keys(model, tmp_path, capsys):
    with pytest.raises(KLDetConfigError, match="multiples of 32 and at least 96"):
        export_model(model, tmp_path / "x.onnx", "onnx", (64, 96))
    with pytest.raises(KLDetConfigError, match="tflite"):
        export_model(model, tmp_path / "x.tflite", "tflite")
    assert export_main(["ckpt=x.ckpt", "format=tflite", "out=y"]) == 1
    assert "tflite" in capsys.readouterr().err
    assert export_main(["ckpt=x.ckpt", "format=onnx"]) == 1
    assert "missing required out=..." in capsys.readouterr().err
    assert export_main(["ckpt=missing.ckpt", "format=onnx", "out=y.onnx"]) == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["format=onnx", "image_size=100"], "image_size=100: must be a positive multiple of 32"),
        (["format=onnx", "image_size=0"], "image_size=0: must be a positive multiple of 32"),
        (["format=torchscript", "opset=17"], "opset=17: only format=onnx takes an opset"),
        (["format=onnx", "opset=99"], "opset=99: this torch exports ONNX opsets "),
        (["format=onnx", "out={tmp}"], "is a folder; give the file to write"),
        (["format=onnx", "out={tmp}/file.txt/model.onnx"], "exists and is not a folder"),
    ],
)
def test_kldet_export_checks_its_keys_before_loading(model, tmp_path, capsys, monkeypatch, args, message):
    (tmp_path / "file.txt").write_text("a file")
    monkeypatch.setattr("kldet.cli.export.load_detector", lambda *a: pytest.fail("checkpoint loaded"))
    argv = ["ckpt=x.ckpt", f"out={tmp_path / 'm.onnx'}", *(a.format(tmp=tmp_path) for a in args)]
    assert export_main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
