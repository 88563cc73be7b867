"""Feature-map points and receptive-field priors (KLDET_SPEC.md section 2)."""

import pytest
import torch

from kldet.assign import (
    THEORETICAL_RECEPTIVE_FIELD,
    feature_sizes,
    points_and_strides,
    receptive_field_priors,
)
from kldet.boxes import box_xyxy_to_cxcywh


def test_aitod_image_has_53294_priors():
    points, priors = receptive_field_priors((800, 800))
    # 200^2 + 100^2 + 50^2 + 25^2 + 13^2
    assert points.shape == (53_294, 2) and priors.shape == (53_294, 4)
    assert points.dtype == priors.dtype == torch.float32


def test_feature_sizes_round_up():
    assert feature_sizes((800, 800), (4, 8, 16, 32, 64)) == [
        (200, 200),
        (100, 100),
        (50, 50),
        (25, 25),
        (13, 13),
    ]
    assert feature_sizes((100, 70), (8, 64)) == [(13, 9), (2, 2)]


def test_points_are_level_by_level_row_major_at_cell_centres():
    points, strides = points_and_strides((16, 24), (4, 8))
    # P2: 4 rows x 6 columns, then P3: 2 x 3.
    assert points.shape == (24 + 6, 2)
    assert points[:3].tolist() == [[2, 2], [6, 2], [10, 2]]
    assert points[6].tolist() == [2, 6]  # second row starts after 6 columns
    assert points[24:27].tolist() == [[4, 4], [12, 4], [20, 4]]
    assert points[-1].tolist() == [20, 12]
    assert strides.tolist() == [4.0] * 24 + [8.0] * 6


def test_prior_sides_are_a_fraction_of_the_theoretical_receptive_field():
    strides = (4, 8, 16, 32, 64)
    points, priors = receptive_field_priors((128, 128), strides)
    _, point_strides = points_and_strides((128, 128), strides)
    cxcywh = box_xyxy_to_cxcywh(priors)
    torch.testing.assert_close(cxcywh[:, :2], points)
    expected = {4: 17.5, 8: 45.5, 16: 133.5, 32: 213.5, 64: 277.5}
    for stride, side in expected.items():
        level = point_strides == stride
        assert torch.all(cxcywh[level, 2] == side) and torch.all(cxcywh[level, 3] == side)
    _, quarter = receptive_field_priors((128, 128), strides, fraction=0.25)
    torch.testing.assert_close(box_xyxy_to_cxcywh(quarter)[:, 2], cxcywh[:, 2] / 2)


def test_theoretical_receptive_field_table():
    assert THEORETICAL_RECEPTIVE_FIELD == {4: 35, 8: 91, 16: 267, 32: 427, 64: 555, 128: 811}


def test_unknown_stride_is_a_clear_error():
    with pytest.raises(ValueError, match="stride"):
        receptive_field_priors((64, 64), (4, 12))
