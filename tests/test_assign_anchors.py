"""RFAnchorGenerator: count, sides, ratios and centres (KLDET_SPEC.md section 9), checked by hand."""

import math

import pytest
import torch

from kldet.assign.anchors import RFAnchorGenerator, anchor_levels
from kldet.errors import KLDetConfigError


def test_800x800_has_159882_anchors_with_the_spec_sides():
    generator = RFAnchorGenerator()
    anchors = generator((800, 800))
    assert [len(level) for level in anchors] == [
        200 * 200 * 3,
        100 * 100 * 3,
        50 * 50 * 3,
        25 * 25 * 3,
        13 * 13 * 3,
    ]
    assert sum(len(level) for level in anchors) == 159_882 == generator.num_anchors((800, 800))
    assert generator.level_sides == (17.5, 45.5, 133.5, 213.5, 277.5)
    for level, side in zip(anchors, generator.level_sides, strict=True):
        w, h = level[:, 2] - level[:, 0], level[:, 3] - level[:, 1]
        # Every ratio keeps the area a^2; h / w is the ratio.
        torch.testing.assert_close(w * h, torch.full_like(w, side * side), rtol=1e-5, atol=1e-3)
        torch.testing.assert_close((h / w)[:3], torch.tensor([0.5, 1.0, 2.0]), rtol=1e-5, atol=0)


def test_anchors_are_centred_on_cell_corners_location_major():
    anchors = RFAnchorGenerator()((800, 800))
    p2, p6 = anchors[0], anchors[4]
    centres = (p2[:, :2] + p2[:, 2:]) / 2
    # Cell (row 0, column 1) of P2 holds anchors 3..5, centred at x = 1 * 4, y = 0.
    torch.testing.assert_close(centres[3:6], torch.tensor([[4.0, 0.0]] * 3))
    # The first anchor of row 1 is cell (1, 0): index 200 cells * 3 ratios.
    torch.testing.assert_close(centres[600], torch.tensor([0.0, 4.0]))
    # The last P6 cell is (12, 12) at stride 64.
    torch.testing.assert_close((p6[-1, :2] + p6[-1, 2:]) / 2, torch.tensor([768.0, 768.0]))
    # Ratio 0.5 of the P2 side 17.5: w = 17.5 * sqrt(2), h = 17.5 / sqrt(2), about the centre (0, 0).
    w, h = 17.5 * math.sqrt(2), 17.5 / math.sqrt(2)
    torch.testing.assert_close(p2[0], torch.tensor([-w / 2, -h / 2, w / 2, h / 2]))


def test_given_sides_and_levels():
    generator = RFAnchorGenerator(strides=(4, 8), sides=(32, 64), ratios=(1.0,))
    anchors = generator((64, 96))
    assert [len(level) for level in anchors] == [16 * 24, 8 * 12]
    torch.testing.assert_close(anchors[1][0], torch.tensor([-32.0, -32.0, 32.0, 32.0]))
    assert anchor_levels(anchors).tolist() == [0] * 384 + [1] * 96


@pytest.mark.parametrize(
    "kwargs",
    [{"strides": (4, 8), "sides": (32,)}, {"strides": (3,)}, {"ratios": (0.0, 1.0)}, {"ratios": ()}],
)
def test_bad_settings_name_the_problem(kwargs):
    with pytest.raises(KLDetConfigError):
        RFAnchorGenerator(**kwargs)
