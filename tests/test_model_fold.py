"""Batch norms folded into the convs before them (kldet.model.fold_batchnorm) and the Predictor's use of it."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from helpers import seeded_detector, tiny_spec
from kldet.inference.predictor import Predictor
from kldet.model import fold_batchnorm, kldet_resnet_fpn, two_stage_resnet_fpn
from kldet.model.backbone import FrozenStatsBatchNorm2d

NORMS = (FrozenBatchNorm2d, nn.BatchNorm2d)


def randomise_norms(model: nn.Module) -> None:
    """Non-trivial statistics and affine parameters in every batch norm (fresh ones are the identity)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, NORMS):
                n = module.running_mean.numel()
                module.weight.copy_(0.5 + torch.rand(n, generator=generator))
                module.bias.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=generator))


def count_norms(model: nn.Module) -> int:
    return sum(isinstance(module, NORMS) for module in model.modules())


def test_a_folded_conv_and_norm_is_the_hand_computed_conv():
    # y = 3 * (2x - 0.5) / sqrt(4) + 1 = 3x + 0.25
    layer = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.BatchNorm2d(1, eps=0.0)).eval()
    with torch.no_grad():
        layer[0].weight.fill_(2.0)
        layer[1].weight.fill_(3.0)
        layer[1].bias.fill_(1.0)
        layer[1].running_mean.fill_(0.5)
        layer[1].running_var.fill_(4.0)
    assert fold_batchnorm(layer) == 1
    assert isinstance(layer[1], nn.Identity)
    assert layer[0].weight.item() == pytest.approx(3.0)
    assert layer[0].bias.item() == pytest.approx(0.25)
    x = torch.tensor([[[[1.0, -2.0]]]])
    torch.testing.assert_close(layer(x), 3 * x + 0.25)


@pytest.mark.parametrize(
    ("backbone", "norm", "expected"),
    # stem + 2 norms per basic block x 8 + 3 shortcuts; stem + 3 per bottleneck x 16 + 4 shortcuts
    [("resnet18", "frozen_bn", 20), ("resnet18", "bn", 20), ("resnet50", "frozen_bn", 53)],
)
def test_folding_keeps_the_network_function(backbone, norm, expected):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random weights
        torch.manual_seed(0)
        model = kldet_resnet_fpn(2, backbone=backbone, backbone_norm=norm, channels=32, head_convs=1).eval()
    randomise_norms(model)
    images = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        expected_maps = model(images)
        assert fold_batchnorm(model) == expected
        assert count_norms(model) == 0
        folded_maps = model(images)
    for expected_level, folded_level in zip(expected_maps, folded_maps, strict=True):
        for a, b in zip(expected_level, folded_level, strict=True):
            torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


def test_folding_the_two_stage_backbone_keeps_its_features():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        torch.manual_seed(0)
        model = two_stage_resnet_fpn(2, backbone="resnet18", channels=32).eval()
    assert any(isinstance(m, FrozenStatsBatchNorm2d) for m in model.modules())
    randomise_norms(model)
    images = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        expected = model.backbone(images)
        assert fold_batchnorm(model) == 20
        got = model.backbone(images)
    for a, b in zip(expected, got, strict=True):  # the FPN levels
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


def test_folding_refuses_a_model_in_training_mode():
    layer = nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1))
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorm(layer)


def test_the_predictor_folds_a_copy_and_detects_what_the_unfolded_model_does():
    spec = tiny_spec(2, {"score_thresh": 0.0, "pre_nms_topk": 200, "max_detections": 100})
    model = seeded_detector(spec)
    randomise_norms(model)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    image = np.kron(
        np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8)
    )
    plain = Predictor(model, ["a", "b"], [1, 2], precision="fp32", fold_batchnorm=False)
    folded = Predictor(model, ["a", "b"], [1, 2], precision="fp32")
    assert count_norms(folded.model) == 0 and count_norms(model) == 20
    assert model.state_dict().keys() == state.keys()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key])
    expected, got = plain.predict_image(image), folded.predict_image(image)
    torch.testing.assert_close(got["scores"], expected["scores"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got["boxes"], expected["boxes"], atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(got["labels"], expected["labels"])
