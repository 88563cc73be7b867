"""Inference number formats and memory layouts (kldet.inference.precision, Predictor): bf16 detections
close to fp32, channels_last equal to contiguous, the loss path in fp32 under autocast."""

import numpy as np
import pytest
import torch

from helpers import seeded_detector, tiny_spec
from kldet.cli.predict import main as predict_main
from kldet.errors import KLDetConfigError
from kldet.inference import precision as precision_module
from kldet.inference.precision import resolve_precision
from kldet.inference.predictor import Predictor

SPEC = tiny_spec(2, {"score_thresh": 0.0, "pre_nms_topk": 200, "max_detections": 100})


def predictor(precision: str, channels_last: bool) -> Predictor:
    return Predictor(
        seeded_detector(SPEC), ["a", "b"], [1, 2], precision=precision, channels_last=channels_last
    )


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    # Smooth structure (not white noise), so that the network's responses are not all alike.
    small = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    return np.kron(small, np.ones((8, 8, 1), dtype=np.uint8))  # 96 x 128


def test_channels_last_gives_the_contiguous_detections(image):
    plain = predictor("fp32", channels_last=False).predict_image(image)
    nhwc = predictor("fp32", channels_last=True)
    assert nhwc.model.head.cls_logits.weight.is_contiguous(memory_format=torch.channels_last)
    fast = nhwc.predict_image(image)
    torch.testing.assert_close(fast["scores"], plain["scores"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fast["boxes"], plain["boxes"], atol=1e-3, rtol=1e-4)


def test_bf16_maps_are_close_to_fp32_and_detections_are_decoded_in_fp32(image):
    # A random network's scores are all alike, so its detections' order is noise: compare the raw maps
    # (the detections of a trained model: benchmarks/precision_accuracy.py, docs/benchmarks.md).
    reference, bf16 = predictor("fp32", channels_last=False), predictor("bf16", channels_last=True)
    batch, _ = reference.preprocess([image])
    with torch.no_grad():
        expected = reference.model(batch)
        with precision_module.autocast("bf16", "cpu"):
            got = bf16.model(batch.contiguous(memory_format=torch.channels_last))
    (cls_a, box_a, ctr_a), (cls_b, box_b, ctr_b) = expected, got
    strides = reference.model.strides
    assert all(level.dtype == torch.bfloat16 for level in cls_b)
    assert (
        max(float((a - b.float()).abs().max()) for a, b in zip(cls_a, cls_b, strict=True)) < 0.05
    )  # logits ~ -4.6
    box_px = max(
        float((a - b.float()).abs().max()) * s for a, b, s in zip(box_a, box_b, strides, strict=True)
    )
    assert box_px < 0.5  # distances in pixels
    assert max(float((a - b.float()).abs().max()) for a, b in zip(ctr_a, ctr_b, strict=True)) < 0.01
    detections = bf16.predict_image(image)
    assert detections["boxes"].dtype == torch.float32 and detections["scores"].dtype == torch.float32


def test_precision_names_and_auto(monkeypatch):
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    monkeypatch.setattr(precision_module, "native_bf16", lambda device: True)
    assert resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(precision_module, "native_bf16", lambda device: False)
    assert resolve_precision("auto", "cpu") == "fp32"
    with pytest.raises(KLDetConfigError, match="precision='fp8': choose one of auto, fp32, bf16, fp16"):
        resolve_precision("fp8", "cpu")


def test_kldet_predict_rejects_an_unknown_precision_in_one_line(tmp_path, capsys):
    code = predict_main(
        [f"ckpt={tmp_path / 'm.ckpt'}", f"input={tmp_path}", f"out={tmp_path / 'o'}", "precision=half"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err == [
        "kldet-predict: error: precision='half': choose one of auto, fp32, bf16, fp16"
    ]


class RecordingAssigner:
    """An assigner that records how it is called (all points background)."""

    def check_levels(self, strides):
        pass

    def __call__(self, grid, cls_logits, gt_boxes, gt_labels):
        self.seen = (cls_logits.dtype, torch.is_autocast_enabled("cpu"))
        return torch.full((len(grid.points),), -1, dtype=torch.long)


def test_assignment_and_losses_run_in_fp32_under_bf16_autocast():
    model = seeded_detector(SPEC).train()
    model.assigner = RecordingAssigner()
    target = {"boxes": torch.tensor([[10.0, 10.0, 18.0, 16.0]]), "labels": torch.tensor([1])}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(torch.zeros(1, 3, 64, 64))[0][0].dtype == torch.bfloat16  # the network does run in bf16
        losses = model.loss(torch.zeros(1, 3, 64, 64), [target])
    assert model.assigner.seen == (torch.float32, False)
    assert all(value.dtype == torch.float32 for value in losses.values())
