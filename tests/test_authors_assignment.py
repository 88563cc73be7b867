"""benchmarks/authors_assignment.py: the authors' Ali-TSM loops against kldet's, on hand-made cases."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from kldet.assign.reference import alitsm_assign_reference
from kldet.boxes import kld, kld_similarity

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location(
        "authors_assignment", ROOT / "benchmarks" / "authors_assignment.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def squares(centres, side):
    """(N, 4) xyxy squares of one side about (N, 2) centres."""
    centres = torch.tensor(centres, dtype=torch.float32)
    return torch.cat((centres - side / 2, centres + side / 2), dim=1)


def test_an_exact_tie_at_the_kth_value_gives_the_authors_every_tied_prior(script):
    # A prior on the box and four at distance 2 on the axes: the four have the same KLD and, with equal
    # logits, the same A1, so the 3rd best is a four-way tie. Stage 2's best (the centred prior, IoU 0.81
    # when shrunk) is already positive.
    priors = squares([[10, 10], [8, 10], [12, 10], [10, 8], [10, 12], [40, 40]], 4.0)
    gt_boxes, gt_labels = squares([[10, 10]], 4.0), torch.tensor([0])
    logits = torch.zeros(len(priors), 1)
    authors = script.authors_alitsm(logits, priors, gt_boxes, gt_labels)
    assert authors.tolist() == [0, 0, 0, 0, 0, -1]
    ours = alitsm_assign_reference(logits, priors, gt_boxes, gt_labels)
    assert ours.tolist() == [0, 0, 0, -1, -1, -1]  # one top-3: the tie goes to the lower prior indices
    assert torch.equal(script.authors_alitsm(logits, priors, gt_boxes, gt_labels, ties=False), ours)


def test_a1_underflowing_to_zero_ties_every_far_prior(script):
    # A 1 px box and priors 2,000 px away: KL = 8e6, K^7 = 5e-49 underflows in float32, so the k1-th best
    # A1 is 0 and the authors' rule makes every prior positive. Ranked as log A1 they stay apart.
    priors = squares([[0.5, 0.5], [2000.5, 0.5], [0.5, 2000.5], [2000.5, 2000.5], [-1999.5, 0.5]], 1.0)
    gt_boxes, gt_labels = squares([[0.5, 0.5]], 1.0), torch.tensor([0])
    logits = torch.full((len(priors), 1), -4.6)
    assert (torch.sigmoid(logits[1:, 0]) * kld_similarity(priors[1:], gt_boxes)[0] ** 7 == 0).all()
    authors = script.authors_alitsm(logits, priors, gt_boxes, gt_labels)
    assert authors.tolist() == [0, 0, 0, 0, 0]
    ours = alitsm_assign_reference(logits, priors, gt_boxes, gt_labels)
    assert ours.tolist() == [0, 0, 0, -1, -1]  # the centred prior, then the lower two of the three on an axis


def test_a_conflict_goes_to_the_last_ground_truth_in_theirs_and_the_higher_metric_in_ours(script):
    # Priors at x = 0, 10, 20; box A (6 px) centred at x = 9, box B at x = 12: both take the prior at 10
    # as their top-1 (A at offset 1, B at offset 2, so A's A1 is higher), and both shrunk-prior IoU
    # maxima are that prior too, so stage 2 adds nothing.
    priors = squares([[0, 0], [10, 0], [20, 0]], 8.0)
    gt_boxes, gt_labels = squares([[9, 0], [12, 0]], 6.0), torch.tensor([0, 0])
    logits = torch.zeros(len(priors), 1)
    kl = kld(priors, gt_boxes)
    assert kl[0, 1] < kl[1, 1] and kl[0].argmin() == kl[1].argmin() == 1
    for ties in (True, False):
        authors = script.authors_alitsm(logits, priors, gt_boxes, gt_labels, topk=(1, 1), ties=ties)
        assert authors.tolist() == [-1, 1, -1]
    ours = alitsm_assign_reference(logits, priors, gt_boxes, gt_labels, topk=(1, 1))
    assert ours.tolist() == [-1, 0, -1]


def test_script_runs_one_small_problem_and_accounts_for_each_difference(
    script, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "authors.json"
    argv = ["authors_assignment.py", "--problems", "1", "--image-size", "128", "--gts", "6", "12"]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(out)])
    script.main()
    assert "| constant logits (initialisation) |" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["setting"]["num_priors"] == 32 * 32 + 16 * 16 + 8 * 8 + 4 * 4 + 2 * 2
    for setting, totals in report["totals"].items():
        assert 6 <= totals["gts"] <= 12
        assert totals["positives_kldet"] <= 4 * totals["gts"], setting  # at most top-3 + top-1 each
        # A prior that differs has to differ in one of the two steps (picks, then conflict rule).
        steps = totals["ties_only"] + totals["conflicts_only"] + totals["ties_and_conflicts"]
        assert steps == totals["differing_priors"], setting
        assert report["per_problem"][setting] == [totals]
