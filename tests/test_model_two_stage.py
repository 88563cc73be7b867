"""The two-stage KLDet (KLDET_SPEC.md section 9): coders, the RoI level rule, the samplers, the max-IoU
assigner, the backbone options, and a tiny model that overfits one image (also under bf16 autocast, with
no ground truth, and NaN on a diverged network)."""

import math
import warnings

import pytest
import torch
from torchvision.ops import box_iou, roi_align

from kldet.assign import HierarchicalKLDAssigner
from kldet.assign.anchors import BACKGROUND, IGNORED
from kldet.assign.max_iou import MaxIoUAnchorAssigner
from kldet.errors import KLDetConfigError
from kldet.model import ResNetFPN, TwoStageKLDet, two_stage_resnet_fpn
from kldet.model.backbone import FrozenStatsBatchNorm2d
from kldet.model.roi_head import MultiLevelRoIAlign, RoIHead, roi_levels
from kldet.model.rpn import RegionProposalNetwork, sample_labels

pytestmark = pytest.mark.usefixtures("quiet_single_thread")

IMAGE_SIZE = 128
GT_BOXES = torch.tensor([[10.0, 20.0, 40.0, 44.0], [60.0, 60.0, 100.0, 110.0], [80.0, 10.0, 90.0, 22.0]])
GT_LABELS = torch.tensor([0, 2, 1])


def tiny_model(**changes) -> TwoStageKLDet:
    """A small random two-stage model (ResNet-18, 32 channels, 128-d box head, fewer proposals)."""
    settings = {
        "backbone": "resnet18",
        "backbone_norm": "bn",
        "frozen_stages": -1,
        "channels": 32,
        "representation_size": 128,
        "rpn_pre_nms_topk": 300,
        "rpn_post_nms_topk": 300,
        "rcnn_batch_size": 128,
        **changes,
    }
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return two_stage_resnet_fpn(3, **settings)


def synthetic_image() -> torch.Tensor:
    """(1, 3, 128, 128): noise with a bright patch on each ground truth (its class in one channel)."""
    torch.manual_seed(1)
    image = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE) * 0.1
    for (x1, y1, x2, y2), label in zip(GT_BOXES.long().tolist(), GT_LABELS.tolist(), strict=True):
        image[0, label, y1:y2, x1:x2] += 1.0
    return image


def targets(boxes=GT_BOXES, labels=GT_LABELS):
    return [{"boxes": boxes, "labels": labels}]


# -- coders ------------------------------------------------------------------------------------------


def test_rpn_and_rcnn_coders_round_trip_and_match_hand_computed_deltas():
    rpn = RegionProposalNetwork(tiny_model().rpn.anchor_generator, MaxIoUAnchorAssigner())
    head = RoIHead(3)
    anchor, gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([[5.0, 5.0, 25.0, 15.0]])
    # Centres (5, 5) -> (15, 10), sizes 10 x 10 -> 20 x 10: (1, 0.5, log 2, 0) with stds 1.
    expected = torch.tensor([[1.0, 0.5, math.log(2.0), 0.0]])
    torch.testing.assert_close(rpn.coder.encode_single(gt, anchor), expected)
    # Stds (0.1, 0.1, 0.2, 0.2) divide them.
    torch.testing.assert_close(
        head.coder.encode_single(gt, anchor), expected / torch.tensor([0.1, 0.1, 0.2, 0.2])
    )
    torch.manual_seed(0)
    xy = torch.rand(50, 2) * 500
    anchors = torch.cat((xy, xy + 4 + torch.rand(50, 2) * 300), dim=1)
    xy = torch.rand(50, 2) * 500
    boxes = torch.cat((xy, xy + 2 + torch.rand(50, 2) * 300), dim=1)
    for coder in (rpn.coder, head.coder):
        decoded = coder.decode_single(coder.encode_single(boxes, anchors), anchors)
        torch.testing.assert_close(decoded, boxes, atol=1e-3, rtol=1e-5)


def test_decoding_clamps_log_size_deltas_at_log_1000_over_16():
    coder = tiny_model().rpn.coder
    decoded = coder.decode_single(
        torch.tensor([[0.0, 0.0, 100.0, 0.0]]), torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    )
    torch.testing.assert_close(decoded[0, 2] - decoded[0, 0], torch.tensor(10 * 1000 / 16))


# -- RoI levels and RoIAlign -------------------------------------------------------------------------


def test_roi_level_rule_on_hand_picked_sizes():
    sides = torch.tensor([55.0, 56.0, 112.0, 224.0, 448.0, 1000.0])
    boxes = torch.stack((torch.zeros(6), torch.zeros(6), sides, sides), dim=1)
    assert roi_levels(boxes, 4).tolist() == [0, 0, 1, 2, 3, 3]
    # floor(log2(sqrt(w h) / 56 + 1e-6)): a 2 x 6272 box (sqrt 112) is on level 1 as the 112 square.
    assert roi_levels(torch.tensor([[0.0, 0.0, 2.0, 6272.0]]), 4).tolist() == [1]


def test_roi_align_reads_each_box_on_its_level_with_aligned_true():
    torch.manual_seed(0)
    features = [torch.randn(2, 4, 64 // s, 64 // s) for s in (1, 2, 4, 8)]
    boxes = [
        torch.tensor([[1.0, 2.0, 30.0, 40.0], [0.0, 0.0, 60.0, 60.0]]),
        torch.tensor([[3.0, 3.0, 20.0, 9.0]]),
    ]
    pooled = MultiLevelRoIAlign((1, 2, 4, 8))(features, boxes)
    for row, (image, box) in enumerate([(0, boxes[0][0]), (0, boxes[0][1]), (1, boxes[1][0])]):
        level = int(roi_levels(box[None], 4))
        expected = roi_align(
            features[level], [torch.empty(0, 4)] * image + [box[None]], 7, 1.0 / 2**level, 0, aligned=True
        )
        torch.testing.assert_close(pooled[row : row + 1], expected)
    assert [int(roi_levels(b[None], 4)) for b in (boxes[0][0], boxes[0][1], boxes[1][0])] == [0, 0, 0]


# -- assigner and samplers ---------------------------------------------------------------------------


def test_max_iou_assigner_thresholds_low_quality_matches_and_no_ground_truth():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 110.0, 110.0]])
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 9.0],  # IoU 0.9 with gt 0: positive
            [0.0, 0.0, 10.0, 5.0],  # 0.5: between 0.3 and 0.7, ignored
            [0.0, 0.0, 10.0, 2.0],  # 0.2: negative
            [100.0, 100.0, 110.0, 104.0],  # 0.4 but gt 1's best: a low-quality match
            [500.0, 500.0, 510.0, 510.0],  # no overlap: negative
        ]
    )
    assert MaxIoUAnchorAssigner()(boxes, gt).tolist() == [0, IGNORED, BACKGROUND, 1, BACKGROUND]
    assert MaxIoUAnchorAssigner(0.7, 0.3, False)(boxes, gt).tolist() == [
        0,
        IGNORED,
        BACKGROUND,
        IGNORED,
        BACKGROUND,
    ]
    # The RoI head's rule: >= 0.5 positive, the rest negative.
    assert MaxIoUAnchorAssigner(0.5, 0.5, False)(boxes, gt).tolist() == [
        0,
        0,
        BACKGROUND,
        BACKGROUND,
        BACKGROUND,
    ]
    assert MaxIoUAnchorAssigner()(boxes, torch.zeros(0, 4)).tolist() == [BACKGROUND] * 5
    with pytest.raises(KLDetConfigError, match="bg_iou_thresh"):
        MaxIoUAnchorAssigner(0.3, 0.7)


def test_rpn_sampler_respects_counts_fraction_and_never_samples_ignored_anchors():
    torch.manual_seed(0)
    sampler = tiny_model().rpn.sampler  # 256 per image, half positive
    # Image 0: 300 positives, 1000 ignored, 400 negatives; image 1: 20 positives, 50 ignored, 1000 negatives.
    first = torch.cat(
        (torch.zeros(300, dtype=torch.long), torch.full((1000,), IGNORED), torch.full((400,), BACKGROUND))
    )
    second = torch.cat((torch.full((20,), 2), torch.full((50,), IGNORED), torch.full((1000,), BACKGROUND)))
    positive, sampled = sample_labels([first, second], sampler)
    first_positive, second_positive = positive.split([len(first), len(second)])
    first_sampled, second_sampled = sampled.split([len(first), len(second)])
    assert (int(first_positive.sum()), int(first_sampled.sum())) == (128, 256)
    # Few positives: the negatives fill the 256.
    assert (int(second_positive.sum()), int(second_sampled.sum())) == (20, 256)
    for assigned, mask, pos in (
        (first, first_sampled, first_positive),
        (second, second_sampled, second_positive),
    ):
        assert not mask[assigned == IGNORED].any()
        assert (assigned[pos] >= 0).all() and (assigned[mask & ~pos] == BACKGROUND).all()


def test_rcnn_sampler_adds_the_ground_truths_and_keeps_a_quarter_positive():
    torch.manual_seed(0)
    head = RoIHead(3)  # 512 RoIs per image, 0.25 positive
    gt = torch.tensor([[0.0, 0.0, 50.0, 50.0], [100.0, 100.0, 180.0, 160.0]])
    # 400 proposals on gt 0 (IoU >= 0.5), 1000 far away.
    near = torch.tensor([[0.0, 0.0, 50.0, 50.0]]) + torch.rand(400, 4) * 4
    far = torch.tensor([[300.0, 300.0, 340.0, 340.0]]) + torch.rand(1000, 4) * 4
    rois, classes, box_targets = head.sample([torch.cat((near, far))], [gt], [torch.tensor([2, 0])])
    assert len(rois[0]) == 512 and int((classes > 0).sum()) == 128
    assert set(classes.tolist()) <= {0, 3, 1} and (box_targets[classes == 0] == 0).all()
    # With only the ground truths as positives, both are sampled (gt 1 has no proposal of its own).
    rois, classes, _ = head.sample([far], [gt], [torch.tensor([2, 0])])
    assert sorted(classes[classes > 0].tolist()) == [1, 3] and len(rois[0]) == 512
    assert (box_iou(rois[0][classes > 0], gt).amax(dim=0) == 1).all()


# -- backbone ----------------------------------------------------------------------------------------


def test_frozen_stats_batchnorm_uses_running_statistics_and_trains_its_affine():
    norm = FrozenStatsBatchNorm2d(3)
    norm.running_mean.fill_(1.0)
    norm.running_var.fill_(4.0)
    x = torch.randn(2, 3, 5, 5)
    out = norm.train()(x)
    torch.testing.assert_close(out, (x - 1.0) / math.sqrt(4.0 + norm.eps))
    assert norm.running_mean.eq(1.0).all() and norm.running_var.eq(4.0).all()
    out.sum().backward()
    assert norm.weight.grad is not None and norm.bias.grad is not None


def test_maxpool_p6_is_p5_subsampled_and_the_spec_backbone_freezes_stem_and_stage1():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        body = ResNetFPN("resnet18", None, (2, 3, 4, 5, 6), 1, 16, "frozen_stats_bn", extra_levels="maxpool")
    levels = body(torch.randn(1, 3, 160, 96))
    assert [tuple(level.shape[-2:]) for level in levels][-2:] == [(5, 3), (3, 2)]
    torch.testing.assert_close(levels[-1], levels[-2][..., ::2, ::2])
    resnet = body.body
    assert not any(p.requires_grad for p in (*resnet.conv1.parameters(), *resnet.layer1.parameters()))
    assert all(p.requires_grad for p in resnet.layer2.parameters())
    with pytest.raises(KLDetConfigError, match="maxpool makes only P6"):
        ResNetFPN("resnet18", None, (3, 4, 5, 6, 7), extra_levels="maxpool")


# -- the model ---------------------------------------------------------------------------------------


def test_forward_gives_the_pyramid_objectness_and_deltas_per_level():
    model = tiny_model().eval()
    features, objectness, deltas = model(torch.zeros(2, 3, 128, 96))
    assert model.output_kinds == ("features", "objectness", "rpn_deltas")
    assert [tuple(f.shape) for f in features][0] == (2, 32, 32, 24) and len(features) == 5
    assert [tuple(o.shape) for o in objectness][-1] == (2, 3, 2, 2)
    assert [tuple(d.shape) for d in deltas][-1] == (2, 12, 2, 2)
    assert model.strides == (4, 8, 16, 32, 64) and model.num_classes == 3


@pytest.mark.parametrize(
    "rpn_assigner", [HierarchicalKLDAssigner(), MaxIoUAnchorAssigner()], ids=["hkld", "max_iou"]
)
def test_tiny_model_overfits_one_image(rpn_assigner):
    model = tiny_model(rpn_assigner=rpn_assigner)
    image = synthetic_image()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    history = []
    for _ in range(50):
        losses = model.loss(image, targets())
        loss = sum(losses.values())
        history.append(float(loss.detach()))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box", "loss_rcnn_cls", "loss_rcnn_box"}
    assert min(history[-5:]) < 0.35 * history[0], history
    detections = model.eval().predict(image)[0]
    # Every ground truth is found with its label among the confident detections.
    confident = detections["scores"] > 0.3
    iou = box_iou(GT_BOXES, detections["boxes"][confident])
    same_label = GT_LABELS[:, None] == detections["labels"][confident][None]
    assert ((iou > 0.5) & same_label).any(dim=1).all(), (detections, iou)


def test_losses_and_predictions_under_bf16_autocast():
    model = tiny_model()
    with torch.autocast("cpu", torch.bfloat16):
        features, _, _ = model(synthetic_image())
        assert features[0].dtype == torch.bfloat16
        losses = model.loss(synthetic_image(), targets())
        sum(losses.values()).backward()
        detections = model.eval().predict(synthetic_image())[0]
    assert all(torch.isfinite(value) and value.dtype == torch.float32 for value in losses.values())
    assert detections["boxes"].dtype == torch.float32 and detections["scores"].dtype == torch.float32


def test_images_without_ground_truth_train():
    model = tiny_model()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    losses = model.loss(synthetic_image().repeat(2, 1, 1, 1), [empty, targets()[0]])
    assert all(torch.isfinite(value) for value in losses.values())
    sum(losses.values()).backward()
    losses = model.loss(synthetic_image(), [empty])
    assert float(losses["loss_rpn_box"]) == 0 and float(losses["loss_rcnn_box"]) == 0
    assert float(losses["loss_rpn_cls"]) > 0 and float(losses["loss_rcnn_cls"]) > 0


def test_losses_are_nan_when_the_rpn_outputs_are_not_finite():
    model = tiny_model()
    with torch.no_grad():
        model.rpn.head.cls_logits.bias.fill_(float("nan"))
    losses = model.loss(synthetic_image(), targets())
    assert len(losses) == 4 and all(torch.isnan(value) for value in losses.values())


def test_postprocess_rescales_to_original_pixels_and_checks_its_inputs():
    model = tiny_model().eval()
    image = synthetic_image()
    with torch.no_grad():
        outputs = model(image)
        plain = model.postprocess(*outputs, (128, 128))[0]
        scaled = model.postprocess(*outputs, (128, 128), [(128, 128)], [(2.0, 0.5)])[0]
    torch.testing.assert_close(scaled["boxes"], plain["boxes"] / torch.tensor([2.0, 0.5, 2.0, 0.5]))
    assert len(plain["boxes"]) <= model.postprocessor.max_detections
    assert (plain["scores"] > model.postprocessor.score_thresh).all()
    with pytest.raises(Exception, match="anchors"):
        model.postprocess(*outputs, (256, 256))


def test_presets_use_the_spec_parts():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        kldet = two_stage_resnet_fpn(20, channels=32)
        baseline = two_stage_resnet_fpn(20, channels=32, anchor_sides=(32, 64, 128, 256, 512))
    assert kldet.rpn.anchor_generator.level_sides == (17.5, 45.5, 133.5, 213.5, 277.5)
    assert baseline.rpn.anchor_generator.level_sides == (32, 64, 128, 256, 512)
    assert kldet.rpn.anchor_generator.num_anchors((800, 800)) == 159_882
    assert kldet.roi_head.roi_align.strides == (4, 8, 16, 32)
    assert kldet.roi_head.box_predictor.cls_score.out_features == 21
    assert (kldet.rpn.pre_nms_topk, kldet.rpn.nms_thresh, kldet.rpn.post_nms_topk) == (3000, 0.7, 3000)
    assert isinstance(kldet.backbone.body.layer2[0].bn1, FrozenStatsBatchNorm2d)


def test_the_per_part_cost_analysis_says_it_is_for_the_single_stage_model():
    from kldet.analysis.model import model_costs

    with pytest.raises(KLDetConfigError, match="single-stage KLDet; a TwoStageKLDet"):
        model_costs(tiny_model(), 128, repeats=0)
