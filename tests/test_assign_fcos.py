"""The FCOS baseline assigner: its documented rule, a per-point reference and its known tiny-object failure."""

import math

import pytest
import torch

import kldet.assign.fcos as fcos_module
from kldet.assign import FCOS_REGRESS_RANGES, fcos_assign, points_and_strides

FCOS_STRIDES = (8, 16, 32, 64, 128)


def naive_fcos_assign(points, point_strides, gt_boxes, ranges, center_sampling, radius):
    """The FCOS rule one point and one ground truth at a time."""
    assigned = []
    for (x, y), stride, (lo, hi) in zip(points.tolist(), point_strides.tolist(), ranges, strict=True):
        best, best_area = -1, math.inf
        for g, (x1, y1, x2, y2) in enumerate(gt_boxes.tolist()):
            ltrb = (x - x1, y - y1, x2 - x, y2 - y)
            if center_sampling:
                cx, cy, reach = (x1 + x2) / 2, (y1 + y2) / 2, stride * radius
                inner = (
                    x - max(cx - reach, x1),
                    y - max(cy - reach, y1),
                    min(cx + reach, x2) - x,
                    min(cy + reach, y2) - y,
                )
                inside = min(inner) > 0
            else:
                inside = min(ltrb) > 0
            area = (x2 - x1) * (y2 - y1)
            if inside and lo <= max(ltrb) <= hi and area < best_area:
                best, best_area = g, area
        assigned.append(best)
    return torch.tensor(assigned)


def test_a_4px_object_between_p3_points_gets_no_positive():
    # P3 points sit at 4, 12, 20, ...; the object spans 6..10 px and contains none of them.
    tiny = torch.tensor([[6.0, 6.0, 10.0, 10.0]])
    points, strides = points_and_strides((64, 64), (8,))
    assert (fcos_assign(points, strides, tiny, center_sampling=False) == -1).all()
    # Standard FCOS (P3-P7): the object is invisible to training, with or without center sampling.
    points, strides = points_and_strides((64, 64), FCOS_STRIDES)
    assert (fcos_assign(points, strides, tiny, center_sampling=False) == -1).all()
    assert (fcos_assign(points, strides, tiny) == -1).all()
    # A P2 point (stride 4, at 2, 6, 10, ...) does land in a box shifted by half a pixel.
    points, strides = points_and_strides((64, 64), (4, 8))
    assert (fcos_assign(points, strides, tiny + 0.5, center_sampling=False) == 0).sum() == 1


def test_smallest_area_wins_and_ties_go_to_the_lower_index():
    points = torch.tensor([[20.0, 20.0]])
    strides = torch.tensor([8.0])
    boxes = torch.tensor([[0.0, 0.0, 40.0, 40.0], [10.0, 10.0, 30.0, 30.0], [10.0, 10.0, 30.0, 30.0]])
    assert fcos_assign(points, strides, boxes, center_sampling=False).tolist() == [1]


def test_regress_ranges_and_center_sampling():
    points = torch.tensor([[50.0, 50.0], [50.0, 50.0], [40.0, 50.0]])
    strides = torch.tensor([8.0, 16.0, 8.0])
    box = torch.tensor([[10.0, 10.0, 100.0, 90.0]])  # centre (55, 50); max(l, t, r, b) is 50 and 60
    ranges = {8: (-1.0, 64.0), 16: (64.0, 128.0)}
    # The stride-16 point is outside its range; the point near the left edge is outside the centre
    # region (1.5 * 8 = 12 px about the centre, x in 43..67) but inside the box.
    assert fcos_assign(points, strides, box, regress_ranges=ranges).tolist() == [0, -1, -1]
    assert fcos_assign(points, strides, box, regress_ranges=ranges, center_sampling=False).tolist() == [
        0,
        -1,
        0,
    ]
    as_tensor = torch.tensor([[-1.0, 64.0], [64.0, 128.0], [-1.0, 64.0]])
    assert fcos_assign(points, strides, box, regress_ranges=as_tensor).tolist() == [0, -1, -1]
    with pytest.raises(ValueError, match="stride"):
        fcos_assign(points, strides, box, regress_ranges={8: (0.0, 1.0)})


@pytest.mark.parametrize("center_sampling", [True, False])
@pytest.mark.parametrize("layout", ["grid", "shuffled", "per-point ranges"])
def test_equals_per_point_reference(center_sampling, layout, monkeypatch):
    # Small chunks so that ties across chunk boundaries are exercised too.
    monkeypatch.setattr(fcos_module, "_PAIRS_PER_CHUNK", 3000)
    generator = torch.Generator().manual_seed(1)
    strides_used = (4, 8, 16, 32, 64)
    points, strides = points_and_strides((96, 96), strides_used)
    centres = torch.rand(40, 2, generator=generator) * 96
    sides = torch.rand(40, 2, generator=generator) * 80 + 2
    boxes = torch.cat((centres - sides / 2, centres + sides / 2), dim=1)
    boxes = torch.cat((boxes, boxes[:5]))  # exact duplicates: equal areas
    level_ranges = dict(zip(strides_used, FCOS_REGRESS_RANGES, strict=True))
    ranges = torch.tensor([level_ranges[int(s)] for s in strides])
    regress_ranges = None
    if layout == "shuffled":  # not a grid: every pair is tested
        order = torch.randperm(len(points), generator=generator)
        points, strides, ranges = points[order], strides[order], ranges[order]
    if layout == "per-point ranges":
        ranges = ranges * (0.5 + torch.rand(len(points), 1, generator=generator))
        regress_ranges = ranges
    expected = naive_fcos_assign(points, strides, boxes, ranges.tolist(), center_sampling, 1.5)
    assert (expected >= 0).sum() > 50
    assigned = fcos_assign(
        points, strides, boxes, regress_ranges=regress_ranges, center_sampling=center_sampling
    )
    assert torch.equal(assigned, expected)


def test_no_ground_truths():
    points, strides = points_and_strides((32, 32), (8,))
    assert (fcos_assign(points, strides, torch.zeros(0, 4)) == -1).all()
