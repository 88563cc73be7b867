"""Backbone, TlA, head, losses and post-processing of kldet.model, each against hand-made expectations."""

import math
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import box_iou
from torchvision.ops.misc import FrozenBatchNorm2d

from helpers import tiny_detector
from kldet.assign import AliTSMAssigner, FCOSAssigner
from kldet.errors import KLDetConfigError, KLDetDataError
from kldet.model import (
    FCOSHead,
    PostProcess,
    ResNetFPN,
    TaskLevelAttention,
    decode_boxes,
    fcos_losses,
    kldet_resnet_fpn,
)
from kldet.model import losses as losses_module
from kldet.model.postprocess import postprocess_detections

pytestmark = pytest.mark.filterwarnings("ignore:resnet.* backbone starts from random weights")


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
    model = kldet_resnet_fpn(8, style=style)
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
        {"assigner": FCOSAssigner(regress_ranges=((-1, 64), (64, math.inf)))},
        {"fpn_levels": (3, 4, 5, 6), "assigner": FCOSAssigner()},  # four levels need their own regress_ranges
        {"fpn_levels": (3, 4, 5, 6, 7, 8), "assigner": FCOSAssigner()},
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
    model = tiny_detector(FCOSAssigner(), fpn_levels=(3, 4, 5, 6, 7))
    expected = {8: (-1, 64), 16: (64, 128), 32: (128, 256), 64: (256, 512), 128: (512, math.inf)}
    assert model.assigner.ranges_by_stride(model.strides) == expected
    assigner = FCOSAssigner(
        regress_ranges=[[-1, 64], [64, 128], [128, 256], [256, "inf"]]
    )  # as a config gives them
    four = tiny_detector(assigner, fpn_levels=(3, 4, 5, 6))
    assert four.assigner.ranges_by_stride(four.strides)[64] == (256, math.inf)
    tiny_detector(AliTSMAssigner(), fpn_levels=(3, 4, 5, 6))  # the ranges only matter to the FCOS assigner


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


@pytest.mark.parametrize(("candidates", "kept"), [("points", 3), ("pairs", 2)])
def test_postprocess_by_hand(candidates, kept):
    (result,) = postprocess_detections(
        *hand_made_maps(),
        strides=(8, 16),
        image_shape=(64, 64),
        image_sizes=[(60, 50)],
        scale_factors=[(0.5, 2.0)],
        candidates=candidates,
    )
    # B is suppressed by A (same class, IoU 0.6); C is clipped to w=50, h=60. D (class probability 0.08,
    # score 0.08 * 0.5 = 0.04) passes the authors' threshold on the probability, not the one on the score.
    expected_scores = torch.tensor([0.45, 0.3, 0.04])[:kept]
    torch.testing.assert_close(result["scores"], expected_scores)
    torch.testing.assert_close(result["labels"], torch.tensor([1, 0, 0])[:kept])
    expected_resized = torch.tensor(
        [[20.0, 12.0, 36.0, 28.0], [40.0, 40.0, 50.0, 60.0], [4.0, 4.0, 12.0, 12.0]]
    )
    torch.testing.assert_close(result["boxes"], expected_resized[:kept] / torch.tensor([0.5, 2.0, 0.5, 2.0]))


@pytest.mark.parametrize("candidates", ["points", "pairs"])
def test_postprocess_nms_is_class_wise_and_limits_hold(candidates):
    cls_logits, box_regression, centerness = hand_made_maps()
    cls_logits[0][0, 0, 2, 4] = cls_logits[0][0, 1, 2, 4]  # B as class 0: survives NMS against A
    cls_logits[0][0, 1, 2, 4] = -30.0
    cls_logits[1][0, 0, 0, 0] = -30.0  # no D
    options = {"strides": (8, 16), "image_shape": (64, 64), "candidates": candidates}
    (result,) = postprocess_detections(cls_logits, box_regression, centerness, **options)
    torch.testing.assert_close(result["scores"], torch.tensor([0.45, 0.4, 0.3]))
    (result,) = postprocess_detections(cls_logits, box_regression, centerness, **options, max_detections=2)
    torch.testing.assert_close(result["scores"], torch.tensor([0.45, 0.4]))
    (result,) = postprocess_detections(cls_logits, box_regression, centerness, **options, pre_nms_topk=1)
    torch.testing.assert_close(result["scores"], torch.tensor([0.45, 0.3]))
    # Probabilities A 0.9, B 0.8, C 0.6; scores 0.45, 0.4, 0.3: the rules threshold different numbers.
    (result,) = postprocess_detections(cls_logits, box_regression, centerness, **options, score_thresh=0.7)
    expected = {"points": [0.45, 0.4], "pairs": []}[candidates]
    torch.testing.assert_close(result["scores"], torch.tensor(expected))


def one_level_maps(probabilities: dict, centerness_probability: dict | None = None):
    """One stride-8 level on a 32x32 image (4x4 points), 2 classes, every box 4 px around its point.

    ``probabilities`` maps (row, col, class) to sigmoid(cls) (others ~0); ``centerness_probability``
    maps (row, col) to sigmoid(centerness) (others 0.5).
    """
    cls_logits = torch.full((1, 2, 4, 4), -30.0)
    for (row, col, label), p in probabilities.items():
        cls_logits[0, label, row, col] = math.log(p / (1 - p))
    centerness = torch.zeros(1, 1, 4, 4)
    for (row, col), p in (centerness_probability or {}).items():
        centerness[0, 0, row, col] = math.log(p / (1 - p))
    box_regression = torch.full((1, 4, 4, 4), 0.25)  # 2 px each side
    return [cls_logits], [box_regression], [centerness]


def point_box(row: int, col: int) -> list[float]:
    x, y = col * 8 + 4, row * 8 + 4
    return [x - 2.0, y - 2.0, x + 2.0, y + 2.0]


def test_points_threshold_the_class_probability_before_centerness():
    # (0, 0) class 0: probability 0.3, centerness 0.1, score 0.03; (3, 3) class 1: 0.2 x 0.5 = 0.1.
    maps = one_level_maps({(0, 0, 0): 0.3, (3, 3, 1): 0.2}, {(0, 0): 0.1})
    options = {"strides": (8,), "image_shape": (32, 32)}
    (points,) = postprocess_detections(*maps, **options, candidates="points")
    torch.testing.assert_close(points["scores"], torch.tensor([0.1, 0.03]))  # 0.03 < 0.05 is kept
    torch.testing.assert_close(points["labels"], torch.tensor([1, 0]))
    torch.testing.assert_close(points["boxes"], torch.tensor([point_box(3, 3), point_box(0, 0)]))
    (pairs,) = postprocess_detections(*maps, **options, candidates="pairs")
    torch.testing.assert_close(pairs["scores"], torch.tensor([0.1]))


def test_points_keep_the_top_points_by_their_best_class_with_all_their_classes():
    # Centerness 0.5 everywhere, so score = probability / 2:
    #   (0, 0): class 0 0.9                 -> best 0.45
    #   (1, 2): class 0 0.7, class 1 0.7    -> best 0.35 (the largest sum of the three)
    #   (3, 1): class 1 0.8, class 0 0.2    -> best 0.40; its class 0 scores 0.1
    maps = one_level_maps({(0, 0, 0): 0.9, (1, 2, 0): 0.7, (1, 2, 1): 0.7, (3, 1, 1): 0.8, (3, 1, 0): 0.2})
    options = {"strides": (8,), "image_shape": (32, 32), "pre_nms_topk": 2}  # 16 points > 2
    # points: the top 2 points by best class are (0, 0) and (3, 1); both classes of (3, 1) count.
    (points,) = postprocess_detections(*maps, **options, candidates="points")
    torch.testing.assert_close(points["scores"], torch.tensor([0.45, 0.4, 0.1]))
    torch.testing.assert_close(points["labels"], torch.tensor([0, 1, 0]))
    torch.testing.assert_close(
        points["boxes"], torch.tensor([point_box(0, 0), point_box(3, 1), point_box(3, 1)])
    )
    # pairs: the top 2 pairs, (0, 0) class 0 and (3, 1) class 1.
    (pairs,) = postprocess_detections(*maps, **options, candidates="pairs")
    torch.testing.assert_close(pairs["scores"], torch.tensor([0.45, 0.4]))
    torch.testing.assert_close(pairs["labels"], torch.tensor([0, 1]))
    # With room for every point, both rules see (1, 2) too: 0.35 twice (class 0 and 1, one box each).
    (everything,) = postprocess_detections(*maps, **{**options, "pre_nms_topk": 16})
    torch.testing.assert_close(everything["scores"], torch.tensor([0.45, 0.4, 0.35, 0.35, 0.1]))


def authors_postprocess(cls_logits, box_regression, centerness, strides, image_size, scale, options):
    """The authors' rule for one image, written out point by point: top points by best class per level,
    decode, clip, rescale, probability threshold, score = probability * centerness, greedy class-wise NMS.
    Boxes that clipping empties (points in the padding) are dropped, as kldet does (the authors' 800x800
    AI-TOD images have no padding)."""
    height, width = image_size
    candidates = []  # (score, label, box)
    for logits, distances, ctr, stride in zip(cls_logits, box_regression, centerness, strides, strict=True):
        probabilities = logits[0].sigmoid()  # (C, h, w)
        ctr_probability = ctr[0, 0].sigmoid()
        cells = [(i, j) for i in range(logits.shape[2]) for j in range(logits.shape[3])]
        best = {
            cell: float((probabilities[:, cell[0], cell[1]] * ctr_probability[cell]).max()) for cell in cells
        }
        cells = sorted(cells, key=lambda cell: -best[cell])[: options["pre_nms_topk"]]
        for i, j in cells:
            x, y = j * stride + stride // 2, i * stride + stride // 2
            left, top, right, bottom = (float(d) * stride for d in distances[0, :, i, j])
            box = [
                min(max(x - left, 0), width) / scale[0],
                min(max(y - top, 0), height) / scale[1],
                min(max(x + right, 0), width) / scale[0],
                min(max(y + bottom, 0), height) / scale[1],
            ]
            if box[2] <= box[0] or box[3] <= box[1]:
                continue
            for label in range(logits.shape[1]):
                if probabilities[label, i, j] > options["score_thresh"]:
                    candidates.append((float(probabilities[label, i, j] * ctr_probability[i, j]), label, box))
    candidates.sort(key=lambda c: -c[0])
    kept = []
    for score, label, box in candidates:
        same_class = [k for k in kept if k[1] == label]
        if all(
            box_iou(torch.tensor([box]), torch.tensor([k[2]])).item() <= options["nms_thresh"]
            for k in same_class
        ):
            kept.append((score, label, box))
    return kept[: options["max_detections"]]


def test_points_rule_matches_a_point_by_point_reference_on_random_maps():
    generator = torch.Generator().manual_seed(0)
    strides, image_shape = (8, 16), (64, 96)
    options = {"score_thresh": 0.05, "nms_thresh": 0.5, "pre_nms_topk": 40, "max_detections": 25}
    for trial in range(3):
        sides = [(image_shape[0] // s, image_shape[1] // s) for s in strides]  # 96 and 24 points
        cls_logits = [torch.randn(1, 3, h, w, generator=generator) * 2 - 2.5 for h, w in sides]
        box_regression = [torch.rand(1, 4, h, w, generator=generator) * 2 for h, w in sides]
        centerness = [torch.randn(1, 1, h, w, generator=generator) for h, w in sides]
        size, scale = (60, 90 - 10 * trial), (0.5 + 0.25 * trial, 0.75)
        (ours,) = postprocess_detections(
            cls_logits, box_regression, centerness, strides, image_shape, [size], [scale], **options
        )
        expected = authors_postprocess(cls_logits, box_regression, centerness, strides, size, scale, options)
        assert len(expected) == options["max_detections"]  # the cap and the top-k both bite
        torch.testing.assert_close(ours["scores"], torch.tensor([e[0] for e in expected]))
        torch.testing.assert_close(ours["labels"], torch.tensor([e[1] for e in expected]))
        torch.testing.assert_close(ours["boxes"], torch.tensor([e[2] for e in expected]))


def test_unknown_candidate_rule_is_a_config_error():
    with pytest.raises(KLDetConfigError, match="candidates='top'"):
        postprocess_detections(*hand_made_maps(), strides=(8, 16), image_shape=(64, 64), candidates="top")
    with pytest.raises(KLDetConfigError, match="candidates='top'"):
        PostProcess(candidates="top")


def test_postprocess_rejects_maps_of_another_image_shape():
    with pytest.raises(KLDetDataError, match="padded batch"):
        postprocess_detections(*hand_made_maps(), strides=(8, 16), image_shape=(96, 64))
