"""Per-point targets shared by both assigners, against hand-computed values."""

import math

import torch

from kldet.assign import build_targets


def test_hand_computed_targets():
    points = torch.tensor([[10.0, 10.0], [6.0, 10.0], [50.0, 50.0]])
    strides = torch.tensor([4.0, 4.0, 8.0])
    gt_boxes = torch.tensor([[8.0, 8.0, 20.0, 14.0]])
    gt_labels = torch.tensor([2])
    assigned = torch.tensor([0, 0, -1])
    labels, box_targets, centerness = build_targets(
        points, strides, assigned, gt_boxes, gt_labels, num_classes=5
    )
    assert labels.tolist() == [2, 2, 5]
    # Inside: l, t, r, b = 2, 2, 10, 4 px -> / 4
    torch.testing.assert_close(box_targets[0], torch.tensor([0.5, 0.5, 2.5, 1.0]))
    assert math.isclose(centerness[0].item(), math.sqrt((2 / 10) * (2 / 4)), rel_tol=1e-6)
    # Outside on the left (allowed for Ali-TSM): l = -2 px, the clamped minimum gives a small target.
    torch.testing.assert_close(box_targets[1], torch.tensor([-0.5, 0.5, 3.5, 1.0]))
    assert math.isclose(centerness[1].item(), math.sqrt((0.01 / 3.5) * (0.5 / 1.0)), rel_tol=1e-6)
    # Background.
    assert box_targets[2].tolist() == [0, 0, 0, 0] and centerness[2].item() == 0


def test_no_ground_truths_is_all_background():
    points = torch.rand(7, 2) * 100
    labels, box_targets, centerness = build_targets(
        points,
        torch.full((7,), 8.0),
        torch.full((7,), -1),
        torch.zeros(0, 4),
        torch.zeros(0, dtype=torch.long),
        3,
    )
    assert labels.tolist() == [3] * 7
    assert not box_targets.any() and not centerness.any()


def test_box_targets_decode_back_to_the_box():
    generator = torch.Generator().manual_seed(0)
    points = torch.rand(50, 2, generator=generator) * 200
    strides = torch.tensor([4.0, 8.0, 16.0])[torch.randint(0, 3, (50,), generator=generator)]
    gt_boxes = torch.tensor([[10.0, 20.0, 40.0, 35.0], [100.0, 100.0, 103.0, 104.0]])
    assigned = torch.randint(-1, 2, (50,), generator=generator)
    _, box_targets, centerness = build_targets(points, strides, assigned, gt_boxes, torch.tensor([0, 1]), 2)
    positive = assigned >= 0
    ltrb = box_targets[positive] * strides[positive, None]
    p = points[positive]
    decoded = torch.stack(
        (p[:, 0] - ltrb[:, 0], p[:, 1] - ltrb[:, 1], p[:, 0] + ltrb[:, 2], p[:, 1] + ltrb[:, 3]), 1
    )
    torch.testing.assert_close(decoded, gt_boxes[assigned[positive]])
    assert ((centerness[positive] > 0) & (centerness[positive] <= 1)).all()
