"""KLDet end to end on the CPU: losses on real assigner output, prior caching, predict, overfitting."""

import pytest
import torch
from torchvision.ops import box_iou

from helpers import tiny_detector
from kldet.assign import AliTSMAssigner, ATSSAssigner, FCOSAssigner, receptive_field_priors
from kldet.assign import assigners as assigners_module
from kldet.errors import KLDetConfigError, KLDetDataError
from kldet.model import KLDet, PostProcess, ResNetFPN
from kldet.model.head import FCOSHead

pytestmark = pytest.mark.filterwarnings("ignore:resnet.* backbone starts from random weights")

IMAGENET_MEAN = torch.tensor([123.675, 116.28, 103.53])[:, None, None]
IMAGENET_STD = torch.tensor([58.395, 57.12, 57.375])[:, None, None]


# The width these tests were tuned at (the overfitting test among them), wider than tiny_detector's default.
SMALL = {"channels": 64, "head_convs": 2}


def random_tiny_boxes(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """(count, 4) boxes of 2..16 px inside a size x size image."""
    wh = 2 + 14 * torch.rand(count, 2, generator=generator)
    xy = (size - wh) * torch.rand(count, 2, generator=generator)
    return torch.cat([xy, xy + wh], dim=1)


ASSIGNERS = [AliTSMAssigner(), FCOSAssigner(), ATSSAssigner()]


@pytest.mark.parametrize("assigner", ASSIGNERS, ids=lambda a: type(a).__name__)
@pytest.mark.parametrize("num_objects", [0, 1, 3000])
def test_loss_is_finite_for_0_1_and_3000_objects(assigner, num_objects):
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(num_objects)
    model = tiny_detector(**SMALL, assigner=assigner)
    images = torch.randn(2, 3, 192, 160)
    targets = [
        {
            "boxes": random_tiny_boxes(num_objects, 160, generator),
            "labels": torch.randint(0, 2, (num_objects,)),
        },
        {"boxes": torch.tensor([[40.0, 50.0, 48.0, 60.0]]), "labels": torch.tensor([1])},
    ]
    losses = model.loss(images, targets)
    assert set(losses) == {"loss_cls", "loss_box", "loss_ctr"}
    assert all(value.ndim == 0 and torch.isfinite(value) for value in losses.values())
    assert all(value > 0 for value in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(grad is not None and torch.isfinite(grad).all() for grad in grads)


def test_loss_for_a_batch_without_objects_has_only_classification():
    model = tiny_detector(**SMALL)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    losses = model.loss(torch.randn(1, 3, 64, 64), [empty])
    assert losses["loss_cls"] > 0
    assert losses["loss_box"] == 0 and losses["loss_ctr"] == 0


def test_loss_rejects_mismatched_targets():
    model = tiny_detector(**SMALL)
    with pytest.raises(KLDetDataError, match="2 images but 1 targets"):
        model.loss(torch.randn(2, 3, 64, 64), [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}])
    with pytest.raises(KLDetDataError, match=r"target 0 has boxes \(1, 4\) and labels \(2,\)"):
        model.loss(torch.randn(1, 3, 64, 64), [{"boxes": torch.ones(1, 4), "labels": torch.zeros(2)}])
    with pytest.raises(KLDetDataError, match=r"target 0 has boxes \(2, 5\)"):
        model.loss(torch.randn(1, 3, 64, 64), [{"boxes": torch.ones(2, 5), "labels": torch.zeros(2)}])


def test_priors_are_computed_once_per_image_shape_and_never_modified(monkeypatch):
    calls = []

    def counting_priors(*args, **kwargs):
        calls.append(args)
        return receptive_field_priors(*args, **kwargs)

    monkeypatch.setattr(assigners_module, "receptive_field_priors", counting_priors)
    assigners_module._priors.cache_clear()
    model = tiny_detector(**SMALL)
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 18.0, 17.0]]), "labels": torch.tensor([0])}] * 3
    for _ in range(2):
        model.loss(torch.randn(3, 3, 96, 128), targets)
    assert len(calls) == 1
    cached = assigners_module._priors((96, 128), model.strides, 0.5, torch.device("cpu"))
    _, fresh = receptive_field_priors((96, 128), model.strides, 0.5)
    assert torch.equal(cached, fresh)


def test_predict_respects_limits_sizes_and_scale_factors():
    torch.manual_seed(0)
    settings = PostProcess(score_thresh=0.0, pre_nms_topk=50, max_detections=7, nms_thresh=0.9)
    model = tiny_detector(**SMALL, postprocess=settings).eval()
    images = torch.randn(2, 3, 96, 96)
    sizes, scales = [(90, 70), (96, 96)], [(0.5, 0.25), (1.0, 1.0)]
    resized = model.predict(images, image_sizes=sizes)
    mapped = model.predict(images, image_sizes=sizes, scale_factors=scales)
    for result, back, (h, w), (sx, sy) in zip(resized, mapped, sizes, scales, strict=True):
        assert 0 < len(result["boxes"]) <= 7
        assert result["boxes"].dtype == torch.float32 and result["labels"].dtype == torch.long
        assert (result["scores"][:-1] >= result["scores"][1:]).all()
        boxes = result["boxes"]
        assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= w).all() and (boxes[:, [1, 3]] <= h).all()
        torch.testing.assert_close(back["boxes"], boxes / torch.tensor([sx, sy, sx, sy]))
        torch.testing.assert_close(back["scores"], result["scores"])
    strict = tiny_detector(**SMALL, postprocess=PostProcess(score_thresh=0.5)).eval()
    strict.load_state_dict(model.state_dict())
    assert all(len(result["boxes"]) == 0 for result in strict.predict(images))


def synthetic_tiny_objects() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A dark 128x128 image with five bright 6..12 px squares, red = class 0, green = class 1."""
    boxes = torch.tensor(
        [[20.0, 24, 28, 32], [60, 30, 66, 36], [90, 80, 102, 92], [30, 90, 40, 99], [100, 20, 109, 30]]
    )
    labels = torch.tensor([0, 1, 0, 1, 0])
    colours = torch.tensor([[255.0, 60, 60], [60, 255, 60]])
    image = torch.full((3, 128, 128), 20.0)
    for (x1, y1, x2, y2), label in zip(boxes.long().tolist(), labels.tolist(), strict=True):
        image[:, y1:y2, x1:x2] = colours[label][:, None, None]
    return ((image - IMAGENET_MEAN) / IMAGENET_STD)[None], boxes, labels


@pytest.mark.parametrize("assigner", ASSIGNERS, ids=lambda a: type(a).__name__)
def test_tiny_model_overfits_one_image_with_tiny_objects(assigner):
    torch.manual_seed(0)
    image, boxes, labels = synthetic_tiny_objects()
    # GroupNorm keeps a random-weight head stable under Adam; without it some seeds kill the ReLU'd
    # regression (all distances 0) before the boxes are learnt.
    model = tiny_detector(**SMALL, assigner=assigner, frozen_stages=-1, head_norm="GN")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-4)
    targets = [{"boxes": boxes, "labels": labels}]
    history = []
    for _ in range(60):
        loss = sum(model.loss(image, targets).values())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 35.0)  # as in training (KLDET_SPEC.md section 6)
        optimizer.step()
        history.append(loss.item())
    assert sum(history[-5:]) < 0.5 * sum(history[:5])
    (result,) = model.predict(image)
    top = result["boxes"][:10], result["labels"][:10]
    hits = 0
    for box, label in zip(boxes, labels, strict=True):
        same_class = top[0][top[1] == label]
        hits += bool(len(same_class)) and box_iou(box[None], same_class).max().item() > 0.5
    assert hits >= 4


class SharedLevelCounter:
    """A minimal assigner of the Assigner protocol: every point inside a box is positive."""

    def __init__(self) -> None:
        self.calls = 0
        self.checked: tuple[int, ...] = ()

    def check_levels(self, strides):
        self.checked = tuple(strides)

    def __call__(self, grid, cls_logits, gt_boxes, gt_labels):
        self.calls += 1
        x, y = grid.points[:, None, 0], grid.points[:, None, 1]
        inside = (x > gt_boxes[:, 0]) & (x < gt_boxes[:, 2]) & (y > gt_boxes[:, 1]) & (y < gt_boxes[:, 3])
        assigned = inside.float().argmax(1)
        return torch.where(inside.any(1), assigned, -1) if len(gt_boxes) else assigned.new_full((len(x),), -1)


def test_the_detector_is_composed_of_parts_and_calls_any_assigner():
    backbone = ResNetFPN("resnet18", levels=(3, 4, 5), channels=16)
    assigner = SharedLevelCounter()
    model = KLDet(backbone, FCOSHead(3, 3, channels=16, num_convs=1), assigner)
    assert (model.strides, assigner.checked, model.num_classes, model.attention) == ((8, 16, 32),) * 2 + (
        3,
        None,
    )
    target = {"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([2])}
    losses = model.loss(torch.randn(2, 3, 64, 64), [target, target])
    assert assigner.calls == 2 and losses["loss_box"] > 0
    with pytest.raises(KLDetConfigError, match="the head has 5 levels but the backbone gives 3"):
        KLDet(backbone, FCOSHead(3, 5, channels=16), assigner)
    with pytest.raises(KLDetConfigError, match="FCOSAssigner: 2 regress_ranges for 3 levels"):
        KLDet(backbone, FCOSHead(3, 3, channels=16), FCOSAssigner(regress_ranges=[(0, 64), (64, 1e8)]))
    with pytest.raises(KLDetConfigError, match=r"no theoretical receptive field for strides \[256\]"):
        AliTSMAssigner().check_levels((8, 16, 32, 256))


def test_a_diverged_network_gives_nan_losses_instead_of_failing_in_the_assigner():
    model = tiny_detector(**SMALL)
    with torch.no_grad():
        model.head.cls_logits.bias.fill_(float("nan"))
    target = {
        "boxes": torch.tensor([[10.0, 10.0, 18.0, 17.0], [30.0, 30.0, 40.0, 38.0]]),
        "labels": torch.tensor([0, 1]),
    }
    losses = model.loss(torch.randn(1, 3, 64, 64), [target])
    assert all(torch.isnan(value) for value in losses.values())
