"""Ali-TSM against its dense reference, hand-built cases and the spec's invariants.

``alitsm_assign_reference`` (kldet/assign/reference.py) is the spec's definition on dense G x N matrices;
it shares nothing with ``alitsm_assign`` but the metric formulas (tested against hand values in
test_boxes.py and below), and is itself checked on a case worked out by hand.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kldet.assign.alitsm as alitsm_module
from kldet.assign import alitsm_assign, log_stage1_metric, receptive_field_priors, stage2_metric
from kldet.assign.reference import alitsm_assign_reference


def random_boxes(
    generator: torch.Generator, num: int, image_size: int, max_side: float = 40.0
) -> torch.Tensor:
    """(num, 4) boxes with centres anywhere in the image and log-uniform sides in [1, max_side] px."""
    centres = torch.rand(num, 2, generator=generator) * image_size
    sides = torch.exp(torch.rand(num, 2, generator=generator) * math.log(max_side))
    return torch.cat((centres - sides / 2, centres + sides / 2), dim=1)


def random_case(seed: int, num_gts: int, image_size: int = 128, num_classes: int = 3, max_side: float = 40.0):
    generator = torch.Generator().manual_seed(seed)
    _, priors = receptive_field_priors((image_size, image_size))
    logits = torch.randn(len(priors), num_classes, generator=generator) * 2
    boxes = random_boxes(generator, num_gts, image_size, max_side)
    labels = torch.randint(0, num_classes, (num_gts,), generator=generator)
    return logits, priors, boxes, labels


def test_reference_on_a_case_worked_out_by_hand():
    # Seven 4 x 4 priors and two 4 x 4 ground truths: g0 centred (10, 10) of class 0, g1 centred (22, 10) of
    # class 1. Equal sizes make KL = (dx^2 + dy^2) / 8 (up to the 1e-6 size epsilon). All logits are 0
    # (S = 0.5) except S = sigmoid(1) for class 1 at prior 1 and S = sigmoid(4) for class 0 at prior 6.
    #   prior centre    KL to g0  KL to g1
    #   0     (10, 10)  0         18
    #   1     (16, 10)  4.5       4.5
    #   2     (10, 14)  2         20
    #   3     (22, 10)  18        0
    #   4     (22, 14)  20        2
    #   5     (10, 16)  4.5       22.5
    #   6     (40, 40)  225       153
    # Stage 1 (top 3 by log A1 = log S - 7 log(1 + KL)): g0 takes 0, 2 and, of the tie 1 / 5, the lower
    # index 1; g1 takes 3, 4, 1. Prior 1 is wanted by both at equal KL and goes to the higher S: g1. g0 does
    # not get prior 5 instead.
    centres = torch.tensor([[10, 10], [16, 10], [10, 14], [22, 10], [22, 14], [10, 16], [40, 40]])
    priors = torch.cat((centres - 2, centres + 2), dim=1).float()
    boxes = torch.tensor([[8.0, 8.0, 12.0, 12.0], [20.0, 8.0, 24.0, 12.0]])
    labels = torch.tensor([0, 1])
    logits = torch.zeros(7, 2)
    logits[1, 1], logits[6, 0] = 1.0, 4.0
    stage1 = [0, 1, 0, 1, 1, -1, -1]
    # Stage 2 (top 1 by A2 = 0.25 S + 0.75 U): a prior's box shrunk by 0.9 (3.6 px) overlaps only the ground
    # truth it is centred on, with U = 3.6^2 / 4^2 = 0.81, so A2 = 0.125 + 0.6075 = 0.7325 for g0 at prior 0
    # and g1 at prior 3; the best elsewhere is 0.25 * sigmoid(4) = 0.245 (prior 6). Both bests are taken
    # in stage 1, so stage 2 adds nothing.
    assert alitsm_assign_reference(logits, priors, boxes, labels).tolist() == stage1
    # alpha_m = 0.1: A2 = 0.9 S + 0.1 U. g0: prior 0 scores 0.45 + 0.081 = 0.531, prior 6 scores
    # 0.9 * sigmoid(4) = 0.884 and is added. g1: prior 1 scores 0.9 * sigmoid(1) = 0.658 > 0.531 (prior 3),
    # but it is taken: nothing is added.
    with_far_prior = stage1[:6] + [0]
    assert alitsm_assign_reference(logits, priors, boxes, labels, alpha_m=0.1).tolist() == with_far_prior
    # With equal scores the conflict on prior 1 is a tie between ground truths: the lower index, g0, wins.
    logits[1, 1] = 0.0
    assert alitsm_assign_reference(logits, priors, boxes, labels).tolist() == [0, 0, 0, 1, 1, -1, -1]
    assert alitsm_assign(logits, priors, boxes, labels).tolist() == [0, 0, 0, 1, 1, -1, -1]


@pytest.mark.parametrize("num_gts", [0, 1, 2, 5, 17, 60])
@pytest.mark.parametrize("seed", range(4))
def test_equals_reference_on_random_images(seed, num_gts):
    logits, priors, boxes, labels = random_case(seed, num_gts)
    expected = alitsm_assign_reference(logits, priors, boxes, labels)
    torch.testing.assert_close(alitsm_assign(logits, priors, boxes, labels), expected, rtol=0, atol=0)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    num_gts=st.integers(0, 30),
    k1=st.integers(0, 6),
    k2=st.integers(0, 3),
    alpha=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    beta=st.sampled_from([0.0, 1.0, 7.0, 20.0]),
    alpha_m=st.sampled_from([0.0, 0.75, 1.0]),
    ratio=st.sampled_from([0.5, 0.9, 1.0]),
    logit_scale=st.sampled_from([0.0, 1.0, 8.0]),
)
def test_equals_reference_for_any_settings(seed, num_gts, k1, k2, alpha, beta, alpha_m, ratio, logit_scale):
    logits, priors, boxes, labels = random_case(seed, num_gts, image_size=96)
    # logit_scale 0 makes all scores equal: every tie is then decided by the geometry and the index rules.
    logits = logits * logit_scale
    options = dict(topk=(k1, k2), alpha=alpha, beta=beta, alpha_m=alpha_m, ratio=ratio)
    expected = alitsm_assign_reference(logits, priors, boxes, labels, **options)
    torch.testing.assert_close(
        alitsm_assign(logits, priors, boxes, labels, **options), expected, rtol=0, atol=0
    )


def test_equals_reference_with_exact_ties():
    # Boxes on the P2 grid, duplicated, all scores equal: many priors and ground truths tie exactly.
    _, priors = receptive_field_priors((64, 64))
    logits = torch.zeros(len(priors), 2)
    boxes = torch.tensor(
        [
            [4, 4, 12, 12],
            [4, 4, 12, 12],
            [20, 20, 28, 28],
            [22, 20, 26, 28],
            [0, 0, 64, 64],
            [30, 30, 34, 34],
        ],
        dtype=torch.float32,
    )
    labels = torch.tensor([0, 0, 1, 0, 1, 1])
    for topk in [(3, 1), (1, 1), (4, 2)]:
        expected = alitsm_assign_reference(logits, priors, boxes, labels, topk=topk)
        torch.testing.assert_close(
            alitsm_assign(logits, priors, boxes, labels, topk=topk), expected, rtol=0, atol=0
        )


def test_equals_reference_on_a_medium_image_with_crowds_large_and_elongated_objects():
    generator = torch.Generator().manual_seed(7)
    _, priors = receptive_field_priors((320, 320))
    logits = torch.randn(len(priors), 4, generator=generator) * 3
    tiny = random_boxes(generator, 150, 320, max_side=16)
    crowd = random_boxes(generator, 40, 40, max_side=8) + 100  # many objects in one 40-px patch
    large = random_boxes(generator, 10, 320, max_side=300)
    # Thin, long boxes: K barely changes along them, so the first windows cannot settle them.
    centres = torch.rand(10, 2, generator=generator) * 320
    half = torch.tensor([[2.0, 80.0], [80.0, 2.0]]).repeat(5, 1)
    elongated = torch.cat((centres - half, centres + half), dim=1)
    boxes = torch.cat((tiny, crowd, large, elongated))
    labels = torch.randint(0, 4, (len(boxes),), generator=generator)
    expected = alitsm_assign_reference(logits, priors, boxes, labels)
    torch.testing.assert_close(alitsm_assign(logits, priors, boxes, labels), expected, rtol=0, atol=0)


def test_equals_reference_for_priors_that_are_not_a_grid():
    generator = torch.Generator().manual_seed(3)
    priors = random_boxes(generator, 500, 100, max_side=60)
    logits = torch.randn(500, 2, generator=generator)
    boxes = random_boxes(generator, 12, 100)
    labels = torch.randint(0, 2, (12,), generator=generator)
    expected = alitsm_assign_reference(logits, priors, boxes, labels)
    torch.testing.assert_close(alitsm_assign(logits, priors, boxes, labels), expected, rtol=0, atol=0)
    # A shuffled grid is not a grid either.
    _, grid = receptive_field_priors((96, 96))
    order = torch.randperm(len(grid), generator=generator)
    logits = torch.randn(len(grid), 2, generator=generator)
    expected = alitsm_assign_reference(logits, grid[order], boxes, labels)
    torch.testing.assert_close(alitsm_assign(logits, grid[order], boxes, labels), expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("radius", "sized_windows", "extra"),
    [(0, False, 0), (0, True, 0), (1, True, 1), (3, False, 32)],
)
def test_equals_reference_when_windows_rarely_certify(radius, sized_windows, extra, monkeypatch):
    # Tiny first windows, no second windows (they are then as small as the first ones) and no spare
    # class candidates force the bounds, the retries and the exhaustive fallback to do the work; the
    # answer must not change.
    monkeypatch.setattr(alitsm_module, "_WINDOW_RADIUS", radius)
    monkeypatch.setattr(alitsm_module, "_EXTRA_CLASS_CANDIDATES", extra)
    monkeypatch.setattr(alitsm_module, "_PAIRS_PER_CHUNK", 2000)  # many chunks
    if not sized_windows:
        monkeypatch.setattr(
            alitsm_module,
            "_offsets_to_beat",
            lambda problem, grid, best, gts, target: (target[:, None] * 0,) * 2,
        )
    for seed in range(3):
        logits, priors, boxes, labels = random_case(seed, 40, image_size=160)
        expected = alitsm_assign_reference(logits, priors, boxes, labels, topk=(3, 2))
        assigned = alitsm_assign(logits, priors, boxes, labels, topk=(3, 2))
        torch.testing.assert_close(assigned, expected, rtol=0, atol=0)


def test_windows_certify_most_ground_truths(monkeypatch):
    # The speed comes from not scoring all priors: only a few ground truths may need that.
    exhaustive = []
    original = alitsm_module._exhaustive_topk

    def counting(metric, gts, num_priors, k):
        exhaustive.append(len(gts))
        return original(metric, gts, num_priors, k)

    monkeypatch.setattr(alitsm_module, "_exhaustive_topk", counting)
    logits, priors, boxes, labels = random_case(0, 300, image_size=400, num_classes=8, max_side=24)
    alitsm_assign(logits, priors, boxes, labels)
    assert sum(exhaustive) <= 0.05 * 2 * len(boxes)


def test_conflicts_go_to_the_higher_metric_and_a_taken_stage2_pick_adds_nothing():
    # Two ground truths on exactly the P2 prior at (14, 14) (index 3 * 8 + 3 = 27 on the 8 x 8 P2 grid).
    # Their stage-1 top 3 are the same priors: 27 (KL = 0), then the nearest P2 neighbours, which tie
    # (KL = 2 * 4^2 / 17.5^2) and are taken by lower index: 19 (above) and 26 (left).
    _, priors = receptive_field_priors((32, 32), (4, 8))
    boxes = torch.tensor([[5.25, 5.25, 22.75, 22.75]] * 2)
    labels = torch.tensor([0, 1])
    logits = torch.zeros(len(priors), 2)
    logits[:, 1] = 1.0  # class 1 scores higher everywhere, so ground truth 1 wins every conflict
    expected = torch.full((len(priors),), -1)
    expected[[19, 26, 27]] = 1
    assigned = alitsm_assign(logits, priors, boxes, labels)
    assert torch.equal(assigned, expected)
    assert torch.equal(alitsm_assign_reference(logits, priors, boxes, labels), expected)
    # Equal scores: the tie goes to the lower ground-truth index.
    logits[:, 1] = 0.0
    expected[[19, 26, 27]] = 0
    assert torch.equal(alitsm_assign(logits, priors, boxes, labels), expected)


def test_stage2_adds_a_far_prior_when_its_score_dominates():
    # With alpha_m = 0.1, A2 of a far prior with S ~ 1 (0.9 * S) beats that of the overlapping prior
    # 27 (0.9 * 0.5 + 0.1 * 0.81): stage 2 adds the far prior 63 to stage 1's prior 27.
    _, priors = receptive_field_priors((32, 32), (4, 8))
    boxes = torch.tensor([[5.25, 5.25, 22.75, 22.75]])
    logits = torch.zeros(len(priors), 1)
    logits[63] = 12.0
    assigned = alitsm_assign(logits, priors, boxes, torch.tensor([0]), topk=(1, 1), alpha_m=0.1)
    assert (assigned == 0).nonzero().flatten().tolist() == [27, 63]
    # With the default alpha_m the overlapping prior is stage 2's best; it is taken, nothing is added.
    assigned = alitsm_assign(logits, priors, boxes, torch.tensor([0]), topk=(1, 1))
    assert (assigned == 0).nonzero().flatten().tolist() == [27]


def test_stage2_never_overrides_stage1():
    for seed in range(3):
        logits, priors, boxes, labels = random_case(seed, 80, image_size=160)
        stage1 = alitsm_assign(logits, priors, boxes, labels, topk=(3, 0))
        both = alitsm_assign(logits, priors, boxes, labels, topk=(3, 2))
        positive = stage1 >= 0
        assert torch.equal(both[positive], stage1[positive])
        added = (both >= 0) & ~positive
        assert 0 < added.sum() <= 2 * len(boxes)


def test_every_ground_truth_gets_a_positive_when_priors_are_near():
    # One small object per 64-px cell of an 800-px image: no two compete for a prior.
    generator = torch.Generator().manual_seed(5)
    _, priors = receptive_field_priors((800, 800))
    cells = torch.stack(torch.meshgrid(torch.arange(12), torch.arange(12), indexing="ij"), dim=-1).reshape(
        -1, 2
    )
    centres = cells * 64 + 16 + torch.rand(len(cells), 2, generator=generator) * 32
    sides = 2 + torch.rand(len(cells), 2, generator=generator) * 14
    boxes = torch.cat((centres - sides / 2, centres + sides / 2), dim=1)
    labels = torch.randint(0, 8, (len(boxes),), generator=generator)
    logits = torch.randn(len(priors), 8, generator=generator) * 3 - 4
    assigned = alitsm_assign(logits, priors, boxes, labels)
    counts = torch.bincount(assigned[assigned >= 0], minlength=len(boxes))
    assert (counts >= 3).all()


def test_no_ground_truths_and_inputs_not_mutated():
    logits, priors, boxes, labels = random_case(0, 25)
    copies = [t.clone() for t in (logits, priors, boxes, labels)]
    alitsm_assign(logits, priors, boxes, labels)
    for original, copy in zip((logits, priors, boxes, labels), copies, strict=True):
        assert torch.equal(original, copy)
    empty = alitsm_assign(logits, priors, boxes[:0], labels[:0])
    assert empty.dtype == torch.long and empty.shape == (len(priors),) and (empty == -1).all()


def test_logits_with_gradient_are_used_detached():
    logits, priors, boxes, labels = random_case(1, 10)
    logits.requires_grad_(True)
    assigned = alitsm_assign(logits, priors, boxes, labels)
    assert not assigned.requires_grad
    assert torch.equal(assigned, alitsm_assign(logits.detach(), priors, boxes, labels))


def test_metrics_match_the_spec_formulas():
    # S = 0.5, KL = 1: A1 = 0.5 * (1/2)^7 = 2^-8.
    value = log_stage1_metric(torch.tensor(math.log(0.5)), torch.tensor(1.0), alpha=1.0, beta=7.0)
    assert math.isclose(math.exp(value.item()), 2**-8, rel_tol=1e-6)
    assert math.isclose(
        stage2_metric(torch.tensor(0.4), torch.tensor(0.8), 0.75).item(),
        0.25 * 0.4 + 0.75 * 0.8,
        rel_tol=1e-6,
    )


def test_bad_shapes_are_clear_errors():
    logits, priors, boxes, labels = random_case(0, 3)
    with pytest.raises(ValueError, match="cls_logits"):
        alitsm_assign(logits[:-1], priors, boxes, labels)
    with pytest.raises(ValueError, match="gt_labels"):
        alitsm_assign(logits, priors, boxes, labels[:2])
    with pytest.raises(ValueError, match="gt_labels must be in 0..2"):
        alitsm_assign(logits, priors, boxes, labels + 3)
    with pytest.raises(ValueError, match="beta"):
        alitsm_assign(logits, priors, boxes, labels, beta=-1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    logits, priors, boxes, labels = random_case(2, 200, image_size=320, num_classes=4)
    expected = alitsm_assign(logits, priors, boxes, labels)
    assigned = alitsm_assign(logits.cuda(), priors.cuda(), boxes.cuda(), labels.cuda())
    assert assigned.device.type == "cuda"
    assert torch.equal(assigned.cpu(), expected)
