"""The hierarchical KLD assigner against its dense reference, hand-built cases and the settings object.

``hierarchical_kld_assign_dense`` (kldet/assign/reference.py) is the spec's definition on dense G x N
matrices; the hand-built cases below check both implementations against similarities worked out by hand.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kldet.assign.hierarchical as hierarchical_module
from kldet.assign import HierarchicalKLDAssigner, hierarchical_kld_assign
from kldet.assign.anchors import BACKGROUND, IGNORED, RFAnchorGenerator
from kldet.assign.reference import hierarchical_kld_assign_dense
from kldet.errors import KLDetConfigError

BOX_KINDS = ("objects", "crowd", "duplicates", "tiny", "huge", "outside", "flipped")


def random_boxes(generator: torch.Generator, kind: str, num: int, height: int, width: int) -> torch.Tensor:
    """(num, 4) xyxy boxes of one kind on an image of height x width."""
    size = torch.tensor([width, height], dtype=torch.float32)

    def uniform(low, high, shape):
        return low + (high - low) * torch.rand(shape, generator=generator)

    centres = uniform(0, 1, (num, 2)) * size
    sides = torch.exp(uniform(0, math.log(64), (num, 2)))  # 1 .. 64 px
    if kind == "crowd":  # all in one 20-px patch
        centres = size / 2 + uniform(-10, 10, (num, 2))
        sides = uniform(2, 12, (num, 2))
    elif kind == "duplicates":  # a few boxes, each repeated
        boxes = random_boxes(generator, "objects", max(1, num // 3), height, width)
        return boxes.repeat(3, 1)[:num] if num else boxes[:0]
    elif kind == "tiny":
        sides = uniform(1.5, 2.5, (num, 2))
    elif kind == "huge":
        sides = uniform(0.5, 2.5, (num, 2)) * size
    elif kind == "outside":  # centres up to 100 px beyond the image
        centres = uniform(-100, 100, (num, 2)) + centres * (1 + 200 / size)
    elif kind == "flipped":  # x2 < x1 or y2 < y1: the Gaussian of the mirrored box
        sides = sides * torch.where(torch.rand((num, 2), generator=generator) < 0.5, -1.0, 1.0)
    return torch.cat((centres - sides / 2, centres + sides / 2), dim=1)


def assert_equals_dense(anchors, boxes, **options):
    expected = hierarchical_kld_assign_dense(anchors, boxes, **options)
    torch.testing.assert_close(hierarchical_kld_assign(anchors, boxes, **options), expected, rtol=0, atol=0)
    return expected


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    height=st.integers(96, 256),
    width=st.integers(96, 256),
    kinds=st.lists(st.sampled_from(BOX_KINDS), min_size=1, max_size=3),
    num_gts=st.integers(0, 40),
    k1=st.integers(0, 4),
    k2=st.integers(0, 2),
    ratio=st.sampled_from([0.5, 0.9, 1.0]),
    threshold=st.sampled_from([0.0, 0.3, 0.8, 1.0]),
    sides=st.sampled_from([None, (32.0, 64.0, 128.0, 256.0, 512.0)]),
    ratios=st.sampled_from([(0.5, 1.0, 2.0), (1.0,)]),
)
def test_equals_dense_reference(seed, height, width, kinds, num_gts, k1, k2, ratio, threshold, sides, ratios):
    generator = torch.Generator().manual_seed(seed)
    anchors = torch.cat(RFAnchorGenerator(sides=sides, ratios=ratios)((height, width)))
    boxes = torch.cat([random_boxes(generator, kind, num_gts, height, width) for kind in kinds])
    assert_equals_dense(anchors, boxes, topk=(k1, k2), ratio=ratio, threshold=threshold)


def test_equals_dense_reference_on_a_mixed_crowded_image():
    generator = torch.Generator().manual_seed(5)
    anchors = torch.cat(RFAnchorGenerator()((320, 288)))
    boxes = torch.cat([random_boxes(generator, kind, 60, 320, 288) for kind in BOX_KINDS])
    assigned = assert_equals_dense(anchors, boxes)
    assert {BACKGROUND, IGNORED} <= set(assigned.tolist())


def test_equals_dense_reference_when_nothing_certifies(monkeypatch):
    # With an impossible margin no window certifies: the sized windows and the exhaustive pass decide.
    monkeypatch.setattr(hierarchical_module, "_BOUND_MARGIN", 10.0)
    monkeypatch.setattr(hierarchical_module, "_PAIRS_PER_CHUNK", 3000)  # many chunks
    generator = torch.Generator().manual_seed(2)
    anchors = torch.cat(RFAnchorGenerator()((160, 128)))
    boxes = torch.cat([random_boxes(generator, kind, 8, 160, 128) for kind in BOX_KINDS])
    assert_equals_dense(anchors, boxes, topk=(3, 2))


def test_windows_settle_almost_every_ground_truth(monkeypatch):
    # The generator's anchors take the fast path: only a few ground truths may need all anchors.
    exhaustive = []
    original = hierarchical_module._exhaustive_pass

    def counting(similarity, gts, num_anchors, k, marking=None):
        exhaustive.append(len(gts))
        return original(similarity, gts, num_anchors, k, marking)

    monkeypatch.setattr(hierarchical_module, "_exhaustive_pass", counting)
    generator = torch.Generator().manual_seed(0)
    anchors = torch.cat(RFAnchorGenerator()((400, 400)))
    boxes = random_boxes(generator, "objects", 300, 400, 400)
    hierarchical_kld_assign(anchors, boxes)
    assert len(exhaustive) == 2  # the (empty) fallback of each stage: the anchors were recognised as grids
    assert sum(exhaustive) <= 0.05 * 2 * len(boxes)


def test_equals_dense_reference_for_anchors_that_are_not_the_generators_grid():
    generator = torch.Generator().manual_seed(3)
    boxes = random_boxes(generator, "objects", 15, 100, 100)
    random_anchors = random_boxes(generator, "objects", 400, 100, 100)
    grid = torch.cat(RFAnchorGenerator()((96, 96)))
    shuffled = grid[torch.randperm(len(grid), generator=generator)]
    jittered = grid + torch.rand(grid.shape, generator=generator) * 1e-2  # sizes vary: not one shape per grid
    for anchors in (random_anchors, shuffled, jittered, grid[:-1]):
        assert hierarchical_module._anchor_grids(hierarchical_module.box_centers_and_sizes(anchors)) is None
        assert_equals_dense(anchors, boxes)


def square_boxes(centres, side: float) -> torch.Tensor:
    centres = torch.tensor(centres, dtype=torch.float32)
    return torch.cat((centres - side / 2, centres + side / 2), dim=1)


def test_one_ground_truth_worked_out_by_hand():
    # A 4 x 4 ground truth centred on (10, 10) and 4 x 4 anchors: KL = (dx^2 + dy^2) / 8 (up to the size
    # eps), K1 = 1 / (1 + KL). Shrunk by 0.9 an anchor is 3.6 px: each axis adds
    # (0.81 - ln 0.81 - 1) / 2 = 0.0104 to the KL, so K2 = 1 / (1.0207 + d^2 / 8).
    #   anchor  centre        d^2     K1      K2
    #   0       (10, 10)      0       1       0.980
    #   1       (11, 10)      1       0.889   0.873
    #   2       (10, 12)      4       0.667   0.658
    #   3       (9, 10)       1       0.889   0.873
    #   4       (11, 10.8)    1.64    0.830   0.816
    #   5       (9, 9.05)     1.9025  0.808   0.795
    #   6       (40, 40)      1800    0.004   0.004
    # Stage 1 (top 3): 0, 1, 3 positive; 4 and 5 reach 0.8 unpicked: ignored; 2 and 6 background.
    # Stage 2 (top 1): 0; 1, 3, 4 ignored; 5 falls below 0.8: background. Final: stage 1's positives, else
    # stage 2: anchor 4 stays ignored, anchor 5 becomes background.
    anchors = square_boxes([[10, 10], [11, 10], [10, 12], [9, 10], [11, 10.8], [9, 9.05], [40, 40]], 4)
    gt = square_boxes([[10, 10]], 4)
    bg, ign = BACKGROUND, IGNORED
    assert assert_equals_dense(anchors, gt).tolist() == [0, 0, bg, 0, ign, bg, bg]
    # Top 2: anchors 1 and 3 tie; the lower index, 1, is taken, 3 is ignored (K1 and K2 >= 0.8).
    assert assert_equals_dense(anchors, gt, topk=(2, 1)).tolist() == [0, 0, bg, ign, ign, bg, bg]
    # No stage-1 positives: stage 2 alone decides.
    assert assert_equals_dense(anchors, gt, topk=(0, 1)).tolist() == [0, ign, bg, ign, ign, bg, bg]
    # The threshold moves the ignore band: at 0.85 anchor 4 (K1 0.830, K2 0.816) is background.
    assert assert_equals_dense(anchors, gt, threshold=0.85).tolist() == [0, 0, bg, 0, bg, bg, bg]


def test_stage1_positives_are_kept_and_conflicts_go_to_the_higher_similarity():
    # Anchor 0 is 4/0.9 px, anchor 1 is 4 px, both centred on (0, 0); g0 equals anchor 0, g1 is 4 px there.
    # K1: anchor 0 -> g0 1, g1 1/(1 + 0.0239); anchor 1 -> g0 1/(1 + 0.0775)... (0.81 - ln 0.81 - 1 = 0.0207,
    # 1/0.81 - ln(1/0.81) - 1 = 0.0239 per axis, halved and summed over two axes).
    # K2 (anchors shrunk to 4 px and 3.6 px): anchor 0 -> g1 1 beats g0 1/(1 + 0.0207); anchor 1 -> g1
    # 1/(1 + 0.0207) beats g0 (3.6 vs 4.44 px).
    # Stage 1, top 1: g0 takes anchor 0, g1 anchor 1. Stage 2, top 1: both want anchor 0 and g1 wins it on
    # the higher K2, but anchor 0 is g0's stage-1 positive and stays g0's.
    anchors = torch.cat((square_boxes([[0, 0]], 4 / 0.9), square_boxes([[0, 0]], 4)))
    boxes = torch.cat((square_boxes([[0, 0]], 4 / 0.9), square_boxes([[0, 0]], 4)))
    assert assert_equals_dense(anchors, boxes, topk=(1, 1)).tolist() == [0, 1]
    assert assert_equals_dense(anchors, boxes, topk=(0, 1)).tolist() == [1, IGNORED]
    assert assert_equals_dense(anchors, boxes, topk=(1, 0)).tolist() == [0, 1]
    # Equal similarities between ground truths: the lower index wins.
    assert assert_equals_dense(anchors[1:], boxes[[1, 1]], topk=(1, 1)).tolist() == [0]


def test_no_ground_truth_makes_every_anchor_background():
    anchors = torch.cat(RFAnchorGenerator()((96, 96)))
    for assign in (hierarchical_kld_assign, hierarchical_kld_assign_dense):
        assigned = assign(anchors, torch.zeros(0, 4))
        assert assigned.dtype == torch.long and assigned.shape == (len(anchors),)
        assert (assigned == BACKGROUND).all()


def test_inputs_are_not_modified_and_float64_gives_the_float32_result_on_the_cpu():
    generator = torch.Generator().manual_seed(1)
    anchors = torch.cat(RFAnchorGenerator()((128, 128)))
    boxes = random_boxes(generator, "objects", 20, 128, 128)
    anchors_before, boxes_before = anchors.clone(), boxes.clone()
    assigned = hierarchical_kld_assign(anchors, boxes)
    assert torch.equal(anchors, anchors_before) and torch.equal(boxes, boxes_before)  # the shrink is a copy
    assert assigned.dtype == torch.long and assigned.device == anchors.device
    assert torch.equal(hierarchical_kld_assign(anchors.double(), boxes.double()), assigned)
    hierarchical_kld_assign_dense(anchors, boxes)
    assert torch.equal(anchors, anchors_before)


def test_bad_shapes_and_settings_are_one_clear_error():
    anchors = torch.zeros(5, 4)
    with pytest.raises(ValueError, match=r"anchors \(5, 3\)"):
        hierarchical_kld_assign(anchors[:, :3], torch.zeros(1, 4))
    with pytest.raises(ValueError, match="topk"):
        hierarchical_kld_assign(anchors, torch.zeros(1, 4), topk=(-1, 1))
    with pytest.raises(KLDetConfigError, match="topk"):
        HierarchicalKLDAssigner(topk=(3,))
    with pytest.raises(KLDetConfigError, match="ratio"):
        HierarchicalKLDAssigner(ratio=0)


def test_assigner_object_has_the_functions_defaults_and_result():
    assigner = HierarchicalKLDAssigner()
    assert (assigner.topk, assigner.ratio, assigner.threshold) == ((3, 1), 0.9, 0.8)  # the paper's
    assert HierarchicalKLDAssigner(topk=[2, 2]).topk == (2, 2)
    generator = torch.Generator().manual_seed(4)
    anchors = torch.cat(RFAnchorGenerator()((96, 128)))
    boxes = random_boxes(generator, "objects", 10, 96, 128)
    options = dict(topk=(2, 1), ratio=0.8, threshold=0.7)
    assert torch.equal(
        HierarchicalKLDAssigner(**options)(anchors, boxes), hierarchical_kld_assign(anchors, boxes, **options)
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_result_stays_on_the_device_and_matches_the_dense_reference():
    generator = torch.Generator().manual_seed(6)
    anchors = torch.cat(RFAnchorGenerator()((256, 256), torch.device("cuda")))
    boxes = torch.cat([random_boxes(generator, kind, 30, 256, 256) for kind in BOX_KINDS]).cuda()
    assigned = hierarchical_kld_assign(anchors, boxes)
    assert assigned.device.type == "cuda"
    assert torch.equal(assigned, hierarchical_kld_assign_dense(anchors, boxes))
