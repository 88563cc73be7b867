"""Backbone, TlA, head, losses and post-processing of kldet.model, each against hand-made expectations."""

import math
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from kldet.errors import KLDetConfigError, KLDetDataError
from kldet.model import FCOSHead, KLDet, ResNetFPN, TaskLevelAttention, decode_boxes, fcos_losses
from kldet.model import losses as losses_module
from kldet.model.postprocess import postprocess_detections

pytestmark = pytest.mark.filterwarnings("ignore:resnet.* backbone starts from random weights")


def tiny_detector(**options) -> KLDet:
    """Cheapest KLDet: shapes do not depend on the channels or the number of head convs."""
    return KLDet(2, **{"backbone": "resnet18", "channels": 32, "head_convs": 1, **options})


# ---------------------------------------------------------------- backbone and pyramid shapes


@pytest.mark.parametrize(
    ("levels", "sides"),
    [((2, 3, 4, 5, 6), (200, 100, 50, 25, 13)), ((3, 4, 5, 6, 7), (100, 50, 25, 13, 7))],
)
def test_level_shapes_at_800(levels, sides):
    model = tiny_detector(fpn_levels=levels).eval()
    with torch.no_grad():
        outputs = model(torch.zeros(1, 3, 800, 800))
    for maps, channels in zip(outputs, (2, 4, 1), strict=True):
        assert [tuple(level.shape) for level in maps] == [(1, channels, side, side) for side in sides]
    assert model.strides == tuple(2**level for level in levels)
    if levels[0] == 2:
        assert sum(side * side for side in sides) == 53_294


def test_level_shapes_follow_ceil_for_any_size():
    model = tiny_detector(attention=False).eval()
    with torch.no_grad():
        cls_logits, _, _ = model(torch.zeros(1, 3, 100, 130))
    expected = [(math.ceil(100 / 2**k), math.ceil(130 / 2**k)) for k in (2, 3, 4, 5, 6)]
    assert [tuple(level.shape[-2:]) for level in cls_logits] == expected


@pytest.mark.parametrize("style", ["pytorch", "caffe"])
def test_frozen_parameters_are_exactly_stem_and_layer1(style):
    model = KLDet(8, backbone="resnet50", style=style)
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    # Independent expectation: the conv weights of a plain torchvision ResNet-50's stem and layer1.
    plain = torchvision.models.resnet50()
    expected = {
        f"backbone.body.{name}.weight"
        for name, module in plain.named_modules()
        if isinstance(module, nn.Conv2d) and name.startswith(("conv1", "layer1"))
    }
    assert frozen == expected
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    frozen_bn = sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert frozen_bn == sum(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert all(
        not name.startswith("backbone.body.") or name.split(".")[2] in {"layer2", "layer3", "layer4"}
        for name in trainable
    )


@pytest.mark.parametrize(
    ("frozen_stages", "frozen_prefixes"), [(-1, ()), (0, ("conv1",)), (2, ("conv1", "layer1", "layer2"))]
)
def test_frozen_stages_option(frozen_stages, frozen_prefixes):
    model = ResNetFPN("resnet18", levels=(3, 4, 5), frozen_stages=frozen_stages)
    frozen = {name.split(".")[1] for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == set(frozen_prefixes)


def test_frozen_batchnorm_statistics_do_not_move_in_train_mode():
    model = ResNetFPN("resnet18", levels=(3, 4, 5, 6)).train()
    before = {name: buffer.clone() for name, buffer in model.named_buffers()}
    model(torch.randn(2, 3, 64, 64))
    assert all(torch.equal(before[name], buffer) for name, buffer in model.named_buffers())


def test_extra_levels_are_convs_on_p5_output_then_relu():
    model = ResNetFPN("resnet18", levels=(3, 4, 5, 6, 7)).eval()
    images = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        p3, p4, p5, p6, p7 = model(images)
        p6_conv, p7_conv = model.fpn.extra_blocks.convs
        # P5 has negative values, so a ReLU before the P6 conv would change P6.
        assert (p5 < 0).any() and (p6 < 0).any()
        # Spec: P6 = 3x3 stride-2 conv (padding 1) of the P5 output itself, computed here by hand.
        by_hand = torch.nn.functional.conv2d(p5, p6_conv.weight, p6_conv.bias, stride=2, padding=1)
        assert p6_conv.kernel_size == (3, 3) and tuple(p6.shape[-2:]) == (2, 2)
        torch.testing.assert_close(p6, by_hand)
        torch.testing.assert_close(p7, p7_conv(torch.relu(p6)))


def test_fpn_convs_are_xavier_uniform():
    model = ResNetFPN("resnet50", levels=(2, 3, 4, 5, 6))
    lateral = model.fpn.inner_blocks[3][0].weight  # 1x1 conv 2048 -> 256
    bound = math.sqrt(6 / (2048 + 256))
    assert lateral.abs().max() <= bound
    assert lateral.abs().max() > 0.95 * bound
    assert all(m.bias.abs().sum() == 0 for m in model.fpn.modules() if isinstance(m, nn.Conv2d))


def test_random_backbone_says_so():
    with pytest.warns(UserWarning, match="resnet18 backbone starts from random weights"):
        ResNetFPN("resnet18")


def test_weight_name_reads_torchvision_cache_and_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    with pytest.raises(KLDetConfigError, match="never downloads") as error:
        ResNetFPN("resnet18", weights="IMAGENET1K_V1")
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    cached = tmp_path / "hub" / "checkpoints" / Path(urlparse(url).path).name
    assert str(cached) in str(error.value)

    torch.manual_seed(3)
    reference = torchvision.models.resnet18()
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)
    model = ResNetFPN("resnet18", weights="ResNet18_Weights.IMAGENET1K_V1")
    torch.testing.assert_close(model.body.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)


def test_weights_from_local_file_and_bad_files(tmp_path):
    torch.manual_seed(4)
    reference = torchvision.models.resnet34()
    headless = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    path = tmp_path / "r34.pth"
    torch.save(headless, path)
    model = ResNetFPN("resnet34", weights=str(path))
    torch.testing.assert_close(model.body.conv1.weight, reference.conv1.weight)
    with pytest.raises(
        KLDetConfigError, match=r"r34.pth do not fit resnet18: unexpected 80 \(layer1.2.conv1.weight, "
    ):
        ResNetFPN("resnet18", weights=str(path))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(KLDetConfigError, match="cannot read backbone weights"):
        ResNetFPN("resnet18", weights=str(garbage))
    with pytest.raises(KLDetConfigError, match="not a file, and not a weight name"):
        ResNetFPN("resnet18", weights="IMAGENET_V9")


@pytest.mark.parametrize(
    "options",
    [
        {"backbone": "vgg16"},
        {"fpn_levels": (2, 4, 5)},
        {"fpn_levels": (3, 4)},
        {"fpn_levels": (3, 4, 5, 6, 7, 8)},
        {"frozen_stages": 5},
        {"head_norm": "BN"},
        {"assigner": "atss"},
        {"assigner": "fcos", "regress_ranges": ((-1, 64), (64, math.inf))},
        {"fpn_levels": (3, 4, 5, 6), "assigner": "fcos"},  # four levels need their own regress_ranges
    ],
)
def test_bad_configuration_is_one_clear_error(options):
    with pytest.raises(KLDetConfigError):
        tiny_detector(**options)


# ---------------------------------------------------------------- TlA


def test_task_level_attention_on_hand_made_input():
    attention = TaskLevelAttention(channels=4, reduction=4)
    # z = relu(mean of channel 0) * 1 + bias = 3 + bias; choose the bias for the z values below.
    z = torch.tensor(
        [0, 3, -3, 1.5]  # c1 -> a1 = 2 * hard_sigmoid - 0.5 ... = [1, 2, 0, 1.5]
        + [0, -1.5, 6, 0]  # c2 -> b1 = [0, -0.25, 0.5, 0]
        + [0, 0, 3, -1.5]  # c3 -> a2 = [0, 0, 1, -0.5]
        + [0, 1.5, -6, 0.6]  # c4 -> b2 = [0, 0.25, -0.5, 0.1]
    )
    with torch.no_grad():
        attention.squeeze.weight.copy_(torch.tensor([1.0, 0, 0, 0]).view(1, 4, 1, 1))
        attention.squeeze.bias.zero_()
        attention.expand.weight.fill_(1.0)
        attention.expand.bias.copy_(z - 3)
    x = torch.tensor(
        [
            [[1.0, 2], [3, 6]],  # mean 3
            [[-1, 0], [0.5, 1]],
            [[-2, 0], [1, 4]],
            [[-1, 0.5], [0, 2]],
        ]
    )[None]
    expected = torch.tensor(
        [
            [[1.0, 2], [3, 6]],  # max(x, 0)
            [[0.25, 0.25], [0.75, 1.75]],  # max(2x - 0.25, 0.25)
            [[0.5, 0.5], [0.5, 3.5]],  # max(0.5, x - 0.5)
            [[0.6, 0.75], [0.1, 3.0]],  # max(1.5x, -0.5x + 0.1)
        ]
    )[None]
    torch.testing.assert_close(attention(x), expected)


def test_task_level_attention_is_relu_when_coefficients_vanish():
    attention = TaskLevelAttention(channels=8)
    nn.init.zeros_(attention.expand.weight)
    nn.init.zeros_(attention.expand.bias)
    x = torch.randn(2, 8, 5, 7)
    torch.testing.assert_close(attention(x), torch.relu(x))


def test_attention_module_is_shared_across_levels():
    model = tiny_detector()
    assert sum(isinstance(m, TaskLevelAttention) for m in model.modules()) == 1
    assert not any(isinstance(m, TaskLevelAttention) for m in tiny_detector(attention=False).modules())


# ---------------------------------------------------------------- head


@pytest.mark.parametrize("norm", [None, "GN"])
def test_head_structure_and_init(norm):
    torch.manual_seed(0)
    head = FCOSHead(num_classes=3, num_levels=5, norm=norm)
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4 + 4 + 3
    assert all(abs(conv.weight.std().item() - 0.01) < 0.001 for conv in convs)
    assert head.cls_logits.bias.tolist() == pytest.approx([-math.log(99)] * 3)
    assert sum(isinstance(m, nn.GroupNorm) for m in head.modules()) == (8 if norm else 0)
    assert all(
        (conv.bias is None) == (norm == "GN") for conv in head.reg_tower if isinstance(conv, nn.Conv2d)
    )
    assert len(head.scales) == 5


def test_head_regression_is_relu_of_scaled_output_and_centerness_uses_regression_tower():
    torch.manual_seed(0)
    head = FCOSHead(num_classes=2, num_levels=2, channels=32, num_convs=2)
    features = [torch.randn(1, 32, 6, 6), torch.randn(1, 32, 3, 3)]
    with torch.no_grad():
        head.scales[1].scale.fill_(-2.0)
        cls_logits, box_regression, centerness = head(features)
        raw = head.box_regression(head.reg_tower(features[1]))
        torch.testing.assert_close(box_regression[1], torch.relu(-2.0 * raw))
        torch.testing.assert_close(centerness[1], head.centerness(head.reg_tower(features[1])))
    assert [tuple(m.shape) for m in cls_logits] == [(1, 2, 6, 6), (1, 2, 3, 3)]


def test_decode_boxes_by_hand():
    points = torch.tensor([[2.0, 2.0], [12.0, 4.0]])
    strides = torch.tensor([4.0, 8.0])
    distances = torch.tensor([[1.0, 0.5, 0.25, 2.0], [-0.5, 1.0, 1.0, 0.0]])
    expected = torch.tensor([[-2.0, 0.0, 3.0, 10.0], [16.0, -4.0, 20.0, 4.0]])
    torch.testing.assert_close(decode_boxes(points, strides, distances), expected)


def test_fcos_regress_ranges_go_to_the_levels_in_order():
    model = tiny_detector(fpn_levels=(3, 4, 5, 6, 7), assigner="fcos")
    expected = {8: (-1, 64), 16: (64, 128), 32: (128, 256), 64: (256, 512), 128: (512, math.inf)}
    assert model.assign_options["regress_ranges"] == expected
    four = tiny_detector(
        fpn_levels=(3, 4, 5, 6),
        assigner="fcos",
        regress_ranges=((-1, 64), (64, 128), (128, 256), (256, "inf")),
    )
    assert four.assign_options["regress_ranges"][64] == (256, math.inf)
    tiny_detector(fpn_levels=(3, 4, 5, 6), assigner="alitsm")  # the ranges only matter to the FCOS assigner


# ---------------------------------------------------------------- losses


def loss_case():
    """One image, three points (strides 4), one class: point 0 background, points 1 and 2 positive."""
    points = torch.tensor([[2.0, 2.0], [10.0, 10.0], [30.0, 30.0]])
    strides = torch.tensor([4.0, 4.0, 4.0])
    cls_logits = torch.zeros(1, 3, 1)
    box_regression = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]])
    centerness = torch.tensor([[5.0, 0.0, 0.0]])
    labels = torch.tensor([[1, 0, 0]])
    # Point 1's gt lies to its right (the point is outside its tiny box: Ali-TSM allows that).
    matched = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [16.0, 8.0, 20.0, 12.0], [26.0, 26.0, 34.0, 34.0]]])
    centerness_targets = torch.tensor([[0.0, 0.3, 0.9]])
    return cls_logits, box_regression, centerness, labels, matched, centerness_targets, points, strides


def test_losses_by_hand():
    losses = fcos_losses(*loss_case())
    focal_positive = 0.25 * 0.25 * math.log(2)  # alpha (1 - p)^2 (-log p) at p = 0.5
    focal_negative = 0.75 * 0.25 * math.log(2)
    assert losses["loss_cls"].item() == pytest.approx((2 * focal_positive + focal_negative) / 2)
    # Point 1: pred (6, 6, 14, 14) vs gt (16, 8, 20, 12): IoU 0, centre distance^2 64, enclosing diagonal^2 260.
    diou_1 = 1 + 64 / 260
    # Point 2: pred (26, 26, 34, 34) equals its gt: loss 0.
    assert losses["loss_box"].item() == pytest.approx((0.3 * diou_1 + 0.9 * 0) / (0.3 + 0.9), rel=1e-5)
    bce = [math.log(2) for _ in (0.3, 0.9)]  # logit 0 gives log 2 whatever the target
    assert losses["loss_ctr"].item() == pytest.approx(sum(bce) / 2)


def test_losses_without_positives_are_zero_but_keep_the_graph():
    case = list(loss_case())
    case[1].requires_grad_(True)
    case[3] = torch.tensor([[1, 1, 1]])
    losses = fcos_losses(*case)
    assert losses["loss_box"].item() == 0 and losses["loss_ctr"].item() == 0
    assert losses["loss_cls"].item() == pytest.approx(3 * 0.75 * 0.25 * math.log(2))
    sum(losses.values()).backward()
    assert torch.equal(case[1].grad, torch.zeros_like(case[1]))


def test_positive_count_is_averaged_across_processes(monkeypatch):
    """Simulated world of 2: the other process has 4 positives and centerness sum 2.8."""
    others = iter([torch.tensor(4.0), torch.tensor(2.8)])

    def all_reduce(tensor):
        tensor += next(others)

    monkeypatch.setattr(losses_module.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(losses_module.dist, "all_reduce", all_reduce)
    monkeypatch.setattr(losses_module.dist, "get_world_size", lambda: 2)
    distributed = fcos_losses(*loss_case())
    monkeypatch.setattr(losses_module.dist, "is_initialized", lambda: False)
    local = fcos_losses(*loss_case())
    assert distributed["loss_cls"].item() == pytest.approx(local["loss_cls"].item() * 2 / ((2 + 4) / 2))
    assert distributed["loss_box"].item() == pytest.approx(local["loss_box"].item() * 1.2 / ((1.2 + 2.8) / 2))


# ---------------------------------------------------------------- post-processing


def hand_made_maps():
    """Strides 8 and 16 on a 64x64 padded image, two classes; everything else scores ~0."""
    cls_logits = [torch.full((1, 2, 8, 8), -30.0), torch.full((1, 2, 4, 4), -30.0)]
    box_regression = [torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 4, 4)]
    centerness = [torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 4, 4)]
    # A: level 0 cell (2, 3) -> point (28, 20), class 1, score 0.45, box (20, 12, 36, 28).
    cls_logits[0][0, 1, 2, 3] = math.log(0.9 / 0.1)
    box_regression[0][0, :, 2, 3] = torch.tensor([1.0, 1.0, 1.0, 1.0])
    # B: level 0 cell (2, 4) -> point (36, 20), score 0.4, box (24, 12, 40, 28): IoU 0.6 with A.
    cls_logits[0][0, 1, 2, 4] = math.log(0.8 / 0.2)
    box_regression[0][0, :, 2, 4] = torch.tensor([1.5, 1.0, 0.5, 1.0])
    # C: level 1 cell (3, 3) -> point (56, 56), class 0, score 0.3, box (40, 40, 72, 72).
    cls_logits[1][0, 0, 3, 3] = math.log(0.6 / 0.4)
    box_regression[1][0, :, 3, 3] = torch.tensor([1.0, 1.0, 1.0, 1.0])
    # D: level 1 cell (0, 0) -> point (8, 8), class 0, score 0.04: below the threshold.
    cls_logits[1][0, 0, 0, 0] = math.log(0.08 / 0.92)
    box_regression[1][0, :, 0, 0] = torch.tensor([0.25, 0.25, 0.25, 0.25])
    return cls_logits, box_regression, centerness


def test_postprocess_by_hand():
    detections = postprocess_detections(
        *hand_made_maps(),
        strides=(8, 16),
        image_shape=(64, 64),
        image_sizes=[(60, 50)],
        scale_factors=[(0.5, 2.0)],
    )
    (result,) = detections
    # B is suppressed by A (same class, IoU 0.6); C is clipped to w=50, h=60; D is below 0.05.
    torch.testing.assert_close(result["scores"], torch.tensor([0.45, 0.3]))
    torch.testing.assert_close(result["labels"], torch.tensor([1, 0]))
    expected_resized = torch.tensor([[20.0, 12.0, 36.0, 28.0], [40.0, 40.0, 50.0, 60.0]])
    torch.testing.assert_close(result["boxes"], expected_resized / torch.tensor([0.5, 2.0, 0.5, 2.0]))


def test_postprocess_nms_is_class_wise_and_limits_hold():
    cls_logits, box_regression, centerness = hand_made_maps()
    cls_logits[0][0, 0, 2, 4] = cls_logits[0][0, 1, 2, 4]  # B as class 0: survives NMS against A
    cls_logits[0][0, 1, 2, 4] = -30.0
    options = {"strides": (8, 16), "image_shape": (64, 64)}
    (result,) = postprocess_detections(cls_logits, box_regression, centerness, **options)
    torch.testing.assert_close(result["scores"], torch.tensor([0.45, 0.4, 0.3]))
    (result,) = postprocess_detections(cls_logits, box_regression, centerness, **options, max_detections=2)
    torch.testing.assert_close(result["scores"], torch.tensor([0.45, 0.4]))
    (result,) = postprocess_detections(cls_logits, box_regression, centerness, **options, pre_nms_topk=1)
    torch.testing.assert_close(result["scores"], torch.tensor([0.45, 0.3]))
    (result,) = postprocess_detections(cls_logits, box_regression, centerness, **options, score_thresh=0.35)
    torch.testing.assert_close(result["scores"], torch.tensor([0.45, 0.4]))


def test_postprocess_rejects_maps_of_another_image_shape():
    with pytest.raises(KLDetDataError, match="padded batch"):
        postprocess_detections(*hand_made_maps(), strides=(8, 16), image_shape=(96, 64))
