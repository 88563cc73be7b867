"""Per-size-bin positive statistics of the assigners, and the benchmark script that prints them."""

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kldet.analysis.assignment import (
    INITIAL_LOGIT,
    compare_assigners,
    format_statistics,
    plot_statistics,
    positives_per_gt,
    size_bin_statistics,
    synthetic_assignment_statistics,
)

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["FCOS P3-P7", "FCOS P2-P6", "ATSS P2-P6", "Ali-TSM P2-P6", "Hierarchical KLD P2-P6"]


def square(cx, cy, side):
    return [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]


def test_positives_per_gt_counts_points_and_ignores_background():
    assigned = torch.tensor([-1, 2, 2, 0, -1, 2])
    assert positives_per_gt(assigned, 4).tolist() == [1, 0, 3, 0]


def test_size_bins_on_sqrt_area_with_edges_to_the_larger_bin():
    boxes = np.array(
        [
            [0, 0, 4, 4],  # 4 px: very tiny
            [0, 0, 2, 32],  # sqrt(64) = 8, on the edge: tiny
            [0, 0, 10, 12],  # 10.95: tiny
            [0, 0, 16, 16],  # 16 on the edge: small
        ],
        np.float32,
    )
    statistics = size_bin_statistics(boxes, np.array([0, 3, 0, 5]))
    assert [s.size_bin for s in statistics] == ["very tiny", "tiny", "small", "medium"]
    assert [s.num_gts for s in statistics] == [1, 2, 1, 0]
    assert [s.zero_fraction for s in statistics[:3]] == [1.0, 0.5, 0.0]
    assert [s.mean_positives for s in statistics[:3]] == [0.0, 1.5, 5.0]
    assert math.isnan(statistics[3].zero_fraction) and math.isnan(statistics[3].mean_positives)


def test_a_4px_object_between_p3_points_is_found_by_p2_and_ali_tsm_only():
    # P3 points sit at 4, 12, 20, ... and P2 points at 2, 6, 10, ...: the box (6, 6, 10, 10) contains no
    # P3 point and no P2 point strictly, (7, 7, 11, 11) holds the P2 point (10, 10) strictly inside;
    # the same for (38, 38, 42, 42) and the P2 point (42, 42).
    boxes = torch.tensor([[6.0, 6.0, 10.0, 10.0], [38.0, 38.0, 42.0, 42.0]])
    assignments = compare_assigners((64, 64), boxes, torch.tensor([0, 0]), num_classes=1)
    assert list(assignments) == NAMES
    counts = {name: positives_per_gt(a.assigned, 2).tolist() for name, a in assignments.items()}
    assert counts["FCOS P3-P7"] == [0, 0]
    assert counts["FCOS P2-P6"] == [0, 0]  # the P2 points 6 and 10 lie on the box edges
    assert counts["ATSS P2-P6"] == [0, 0]
    # Ali-TSM and the RPN's hierarchical KLD assigner: top-3 by KLD, plus stage 2's best when it is not one
    # of them, for each box (the two boxes are too far apart to compete).
    assert all(3 <= c <= 4 for c in counts["Ali-TSM P2-P6"])
    assert all(3 <= c <= 4 for c in counts["Hierarchical KLD P2-P6"])
    shifted = compare_assigners((64, 64), boxes + 1, torch.tensor([0, 0]), num_classes=1)
    assert positives_per_gt(shifted["FCOS P2-P6"].assigned, 2).tolist() == [1, 1]
    assert positives_per_gt(shifted["ATSS P2-P6"].assigned, 2).tolist() == [1, 1]
    assert positives_per_gt(shifted["FCOS P3-P7"].assigned, 2).tolist() == [0, 0]


def test_ali_tsm_at_constant_scores_does_not_depend_on_the_constant():
    rng = np.random.default_rng(0)
    centres, sides = rng.uniform(20, 236, (30, 2)), rng.uniform(3, 40, 30)
    boxes = torch.tensor(
        [square(x, y, s) for (x, y), s in zip(centres, sides, strict=True)], dtype=torch.float32
    )
    labels = torch.from_numpy(rng.integers(0, 3, 30))
    at_init = compare_assigners((256, 256), boxes, labels, num_classes=3)["Ali-TSM P2-P6"]
    num_points = len(at_init.points)
    for constant in (0.0, 3.0):
        logits = torch.full((num_points, 3), constant)
        other = compare_assigners((256, 256), boxes, labels, 3, logits)["Ali-TSM P2-P6"]
        assert torch.equal(other.assigned, at_init.assigned)
    assert pytest.approx(math.log(0.01 / 0.99)) == INITIAL_LOGIT


def test_synthetic_statistics_add_up_to_the_assignments():
    statistics = synthetic_assignment_statistics(num_images=2, image_size=256, seed=3)
    assert list(statistics) == NAMES
    num_gts = [sum(s.num_gts for s in bins) for bins in statistics.values()]
    assert len(set(num_gts)) == 1 and num_gts[0] > 0
    # Recount the positive points of the same scenes directly from the assigners.
    from kldet.data.synthetic import synthesize_image

    total_positives = dict.fromkeys(NAMES, 0)
    for i in range(2):
        _, boxes, labels = synthesize_image(np.random.default_rng([3, i]), 256)
        for name, a in compare_assigners(
            (256, 256), torch.from_numpy(boxes), torch.from_numpy(labels), 8
        ).items():
            total_positives[name] += int((a.assigned >= 0).sum())
    for name, bins in statistics.items():
        counted = sum(s.mean_positives * s.num_gts for s in bins if s.num_gts)
        assert counted == pytest.approx(total_positives[name])
        assert all(0 <= s.zero_fraction <= 1 for s in bins if s.num_gts)


def test_table_and_plot():
    bins = size_bin_statistics(np.array([[0, 0, 4, 4], [0, 0, 20, 20]], np.float32), np.array([0, 7]))
    statistics = {
        "A": bins,
        "B": size_bin_statistics(np.array([[0, 0, 4, 4], [0, 0, 20, 20]]), np.array([2, 2])),
    }
    table = format_statistics(statistics)
    assert "| assigner | very tiny (n=1) | tiny (n=0) | small (n=1) | medium (n=0) |" in table
    assert "| A | 100.0 | - | 0.0 | - |" in table
    assert "| B | 2.00 | - | 2.00 | - |" in table
    figure = plot_statistics(statistics)
    left, right = figure.axes
    assert len(left.patches) == len(right.patches) == 2 * 4
    assert [p.get_height() for p in right.patches[:4]] == pytest.approx(
        [0.0, math.nan, 7.0, math.nan], nan_ok=True
    )


def test_benchmark_script_writes_table_and_plot(tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location(
        "assignment_stats", ROOT / "benchmarks" / "assignment_stats.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "stats.png"
    argv = ["assignment_stats.py", "--images", "1", "--image-size", "256", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    script.main()
    printed = capsys.readouterr().out
    assert "Ground truths with no positive point (%)" in printed and "| Ali-TSM P2-P6 |" in printed
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| FCOS P3-P7 |" in out.with_suffix(".md").read_text()
