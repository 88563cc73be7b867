"""Box formats, Bbox2Gaussian, KLD and element-wise IoU against hand-computed values and invariants."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import box_iou

from kldet.boxes import (
    bbox_to_gaussian,
    box_centers_and_sizes,
    box_cxcywh_to_xyxy,
    box_iou_aligned,
    box_xywh_to_xyxy,
    box_xyxy_to_cxcywh,
    box_xyxy_to_xywh,
    gaussian_kl,
    kld,
    kld_similarity,
    shrink_boxes,
)


def box(cx: float, cy: float, w: float, h: float) -> list[float]:
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def boxes_strategy(min_side: float = 0.5, max_side: float = 200.0):
    coordinate = st.floats(-500, 500, allow_nan=False, width=32)
    side = st.floats(min_side, max_side, allow_nan=False, width=32)
    return st.tuples(coordinate, coordinate, side, side).map(lambda b: box(*b))


def test_format_conversions_round_trip_and_values():
    xyxy = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    torch.testing.assert_close(box_xyxy_to_cxcywh(xyxy), torch.tensor([[20.0, 40.0, 20.0, 40.0]]))
    torch.testing.assert_close(box_xyxy_to_xywh(xyxy), torch.tensor([[10.0, 20.0, 20.0, 40.0]]))
    torch.testing.assert_close(box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(xyxy)), xyxy)
    torch.testing.assert_close(box_xywh_to_xyxy(box_xyxy_to_xywh(xyxy)), xyxy)


def test_bbox_to_gaussian():
    mu, sigma = bbox_to_gaussian(torch.tensor([box(5.0, 7.0, 4.0, 6.0)]))
    torch.testing.assert_close(mu, torch.tensor([[5.0, 7.0]]))
    # diag(w^2 / 4, h^2 / 4) = diag(4, 9)
    torch.testing.assert_close(sigma, torch.tensor([[[4.0, 0.0], [0.0, 9.0]]]))


def test_kld_hand_computed():
    prior = torch.tensor([box(0.0, 0.0, 2.0, 2.0)])
    gt = torch.tensor([box(1.0, 0.0, 4.0, 4.0)])
    # 1/2 [4/16 + 4/16 + 4*1/16 + 0 + ln(16/4) + ln(16/4) - 2]
    expected = 0.5 * (0.25 + 0.25 + 0.25 + 2 * math.log(4) - 2)
    assert kld(prior, gt).item() == pytest.approx(expected, rel=1e-5)
    assert kld_similarity(prior, gt).item() == pytest.approx(1 / (1 + expected), rel=1e-5)
    # Not symmetric: KL(gt || prior) = 1/2 [16/4 + 16/4 + 4/4 + ln(4/16) * 2 - 2]
    reverse = 0.5 * (4 + 4 + 1 + 2 * math.log(0.25) - 2)
    assert kld(gt, prior).item() == pytest.approx(reverse, rel=1e-5)


def test_kld_shapes_and_element_wise_values_equal_the_pairwise_diagonal():
    generator = torch.Generator().manual_seed(0)
    centres = torch.rand(7, 2, generator=generator) * 100
    sides = torch.rand(7, 2, generator=generator) * 30 + 1
    a = torch.cat((centres - sides / 2, centres + sides / 2), dim=1)
    b = a.flip(0) + 3
    assert kld(a, b[:3]).shape == (3, 7)
    # What the sparse Ali-TSM engine computes for chosen pairs: bit for bit the pairwise values.
    assert torch.equal(
        gaussian_kl(*box_centers_and_sizes(a), *box_centers_and_sizes(b)), kld(a, b).diagonal()
    )
    assert torch.equal(box_iou_aligned(b[:, None], a[None]), box_iou(b, a))


@settings(max_examples=100, deadline=None)
@given(p=boxes_strategy(), g=boxes_strategy())
def test_kld_is_nonnegative_and_zero_only_for_identical_boxes(p, g):
    p, g = torch.tensor([p]), torch.tensor([g])
    assert kld(p, g).item() >= 0
    assert kld(p, p).item() == 0
    assert kld_similarity(p, p).item() == 1
    differs = (p - g).abs().max().item() > 1e-2 * (1 + p.abs().max().item())
    if differs:
        assert kld(p, g).item() > 0
        assert kld_similarity(p, g).item() < 1


@settings(max_examples=100, deadline=None)
@given(
    p=boxes_strategy(min_side=2.0, max_side=100.0),
    g=boxes_strategy(min_side=2.0, max_side=100.0),
    shift=st.tuples(st.integers(-300, 300), st.integers(-300, 300)),
    scale=st.sampled_from([0.25, 0.5, 2.0, 3.0, 10.0]),
)
def test_kld_invariant_to_joint_translation_and_scaling(p, g, shift, scale):
    p, g = torch.tensor([p], dtype=torch.float64), torch.tensor([g], dtype=torch.float64)
    reference = kld(p, g)
    offset = torch.tensor([*shift, *shift], dtype=torch.float64)
    torch.testing.assert_close(kld(p + offset, g + offset), reference, rtol=1e-6, atol=1e-9)
    # The 1e-6 added to sizes is the only scale-dependent part, hence the tolerance.
    torch.testing.assert_close(kld(p * scale, g * scale), reference, rtol=1e-4, atol=1e-6)


def test_kld_scale_invariance_is_what_iou_lacks():
    # A 2-px offset on a 6-px object counts as much as a 20-px offset on a 60-px object.
    small = kld(torch.tensor([box(2.0, 0.0, 6.0, 6.0)]), torch.tensor([box(0.0, 0.0, 6.0, 6.0)]))
    large = kld(torch.tensor([box(20.0, 0.0, 60.0, 60.0)]), torch.tensor([box(0.0, 0.0, 60.0, 60.0)]))
    torch.testing.assert_close(small, large)


def test_kld_finite_for_disjoint_subpixel_and_degenerate_boxes():
    priors = torch.tensor([box(0.0, 0.0, 0.1, 0.1), box(700.0, 700.0, 0.01, 0.01), [5.0, 5.0, 5.0, 5.0]])
    gts = torch.tensor([box(800.0, 0.0, 0.05, 0.2), box(0.0, 0.0, 500.0, 500.0), [9.0, 9.0, 9.0, 9.0]])
    values = kld(priors, gts)
    assert torch.isfinite(values).all()
    assert (values > 0).all()
    similarity = kld_similarity(priors, gts)
    assert ((similarity > 0) & (similarity < 1)).all()


def test_shrink_boxes_is_about_centres_and_does_not_mutate():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 20.0], [4.0, 6.0, 8.0, 8.0]])
    original = boxes.clone()
    shrunk = shrink_boxes(boxes, 0.9)
    assert torch.equal(boxes, original)
    torch.testing.assert_close(shrunk, torch.tensor([[0.5, 1.0, 9.5, 19.0], [4.2, 6.1, 7.8, 7.9]]))
    torch.testing.assert_close(box_xyxy_to_cxcywh(shrunk)[:, :2], box_xyxy_to_cxcywh(boxes)[:, :2])
