"""The ATSS-style assigner: hand-computed cases and a one-box-at-a-time reference."""

import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import box_iou

from kldet.assign import points_and_strides
from kldet.assign.atss import atss_assign

# A 24 x 24 image at stride 8 has the 3 x 3 points (4|12|20, 4|12|20), indices row-major:
#   0 (4, 4)   1 (12, 4)   2 (20, 4)
#   3 (4, 12)  4 (12, 12)  5 (20, 12)
#   6 (4, 20)  7 (12, 20)  8 (20, 20)
POINTS, STRIDES = points_and_strides((24, 24), (8,))


def test_threshold_is_mean_plus_std_of_the_candidate_ious():
    # Anchors of side 1 stride = 8 px. The box (2, 2, 14, 13), area 132, overlaps
    #   the anchors of points 0 and 1 by 6 x 6 = 36: IoU 36 / (64 + 132 - 36) = 0.2250,
    #   the anchors of points 3 and 4 by 6 x 5 = 30: IoU 30 / (64 + 132 - 30) = 0.1807,
    #   the others not at all. Mean 0.0902, sample std 0.1081, threshold 0.1982.
    # Points 3 and 4 (y = 12 < 13) lie inside the box and beat the mean, but not the threshold.
    box = torch.tensor([[2.0, 2.0, 14.0, 13.0]])
    assert atss_assign(POINTS, STRIDES, box, anchor_scale=1.0).tolist() == [0, 0, -1, -1, -1, -1, -1, -1, -1]


def test_a_candidate_outside_the_box_is_negative():
    # The box (0, 0, 16, 16) holds the anchors of points 0, 1, 3 and 4 of side 64 entirely: each has IoU
    # 256 / 4096; so do the anchors of all nine points, std 0, every IoU meets the threshold. Only the
    # points strictly inside the box are positive.
    box = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    assert atss_assign(POINTS, STRIDES, box).tolist() == [0, 0, -1, 0, 0, -1, -1, -1, -1]


def test_topk_nearest_per_level_with_ties_to_the_lower_index():
    # Stride 4 on 32 x 32: points at 2, 6, ..., 30. The centre (16, 16) of the box (0, 0, 32, 32) is
    # equidistant from the four points (14|18, 14|18) = indices 27, 28, 35, 36. With k = 3 the first
    # three in index order are the candidates; their anchors of side 32 have the same IoU (std 0) and all
    # pass. Point 36, the fourth, is inside the box but not a candidate.
    points, strides = points_and_strides((32, 32), (4,))
    assigned = atss_assign(points, strides, torch.tensor([[0.0, 0.0, 32.0, 32.0]]), topk=3)
    assert (assigned == 0).nonzero().flatten().tolist() == [27, 28, 35]
    assert (assigned[[i for i in range(64) if i not in (27, 28, 35)]] == -1).all()


@pytest.mark.parametrize("order", [[0, 1], [1, 0]])
def test_a_shared_point_goes_to_the_higher_iou(order):
    # (0, 0, 16, 16) takes points 0, 1, 3 and 4 (IoU 64 / 256 = 0.25 each with 8 px anchors; mean 1/9,
    # sample std 0.1318, threshold 0.2429). (8, 8, 16, 16) is exactly point 4's anchor: IoU 1, all other
    # IoUs 0, threshold 1/9 + 1/3. Point 4 goes to the exact match whatever the order of the boxes.
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0], [8.0, 8.0, 16.0, 16.0]])[order]
    big, exact = order.index(0), order.index(1)
    expected = [big, big, -1, big, exact, -1, -1, -1, -1]
    assert atss_assign(POINTS, STRIDES, boxes, anchor_scale=1.0).tolist() == expected


def test_no_boxes_and_bad_shapes():
    assert (atss_assign(POINTS, STRIDES, torch.zeros((0, 4))) == -1).all()
    with pytest.raises(ValueError, match="gt_boxes"):
        atss_assign(POINTS, STRIDES, torch.zeros((2, 5)))
    with pytest.raises(ValueError, match="topk"):
        atss_assign(POINTS, STRIDES, torch.ones((1, 4)), topk=0)


def reference_atss(points, point_strides, gt_boxes, topk, anchor_scale):
    """ATSS one ground truth at a time, in Python; IoUs from torchvision."""
    xy, strides = points.tolist(), point_strides.tolist()
    half = torch.tensor([s * anchor_scale / 2 for s in strides])[:, None]
    ious = box_iou(gt_boxes, torch.cat((points - half, points + half), dim=1)).tolist()
    levels = sorted(set(strides))
    claims = {}
    for g, (x1, y1, x2, y2) in enumerate(gt_boxes.tolist()):
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        candidates = []
        for stride in levels:
            level = [n for n in range(len(xy)) if strides[n] == stride]
            level.sort(key=lambda n: ((xy[n][0] - cx) ** 2 + (xy[n][1] - cy) ** 2, n))
            candidates += level[:topk]
        values = [ious[g][n] for n in candidates]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        threshold = statistics.fmean(values) + spread
        for n in candidates:
            x, y = xy[n]
            if ious[g][n] >= threshold - 1e-6 and min(x - x1, y - y1, x2 - x, y2 - y) > 0:
                claims.setdefault(n, []).append((-ious[g][n], g))
    assigned = [-1] * len(xy)
    for n, owners in claims.items():
        assigned[n] = min(owners)[1]
    return assigned


@settings(max_examples=150, deadline=None)
@given(
    size=st.integers(16, 72),
    strides=st.sampled_from([(4,), (8,), (4, 8), (4, 8, 16), (8, 16, 32)]),
    corners=st.lists(
        st.tuples(*[st.integers(0, 140)] * 2, *[st.integers(2, 60)] * 2), min_size=1, max_size=6
    ),
    topk=st.integers(1, 9),
    anchor_scale=st.sampled_from([1.0, 2.5, 8.0]),
)
def test_matches_the_reference(size, strides, corners, topk, anchor_scale):
    # Half-pixel coordinates make boxes whose centres are equidistant from grid points.
    boxes = torch.tensor([[x / 2, y / 2, x / 2 + w / 2, y / 2 + h / 2] for x, y, w, h in corners])
    points, point_strides = points_and_strides((size, size), strides)
    expected = reference_atss(points, point_strides, boxes, topk, anchor_scale)
    assert (
        atss_assign(points, point_strides, boxes, topk=topk, anchor_scale=anchor_scale).tolist() == expected
    )
