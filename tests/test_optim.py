"""Optimiser groups, warm-up + step schedule and lr scaling of kldet.optim against hand-computed values."""

import pytest
import torch
from torch import nn

from kldet.errors import KLDetConfigError
from kldet.optim import WarmupMultiStep, param_groups, scaled_lr

PAPER_GROUPS = {"bias_lr_factor": 2.0, "bias_weight_decay": 0.0, "norm_weight_decay": 0.0}


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.proj = nn.Conv2d(4, 4, 1, bias=False)
        self.scale = nn.Parameter(torch.ones(1))
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def _names(module: nn.Module, group: dict) -> set[str]:
    ids = {id(p) for p in group["params"]}
    return {name for name, p in module.named_parameters() if id(p) in ids}


def test_param_groups_split_bias_norm_and_weights():
    toy = Toy()
    groups = {g["name"]: g for g in param_groups(toy, lr=0.01, weight_decay=1e-4, **PAPER_GROUPS)}
    assert _names(toy, groups["weight"]) == {"conv.weight", "proj.weight", "scale"}
    assert _names(toy, groups["bias"]) == {"conv.bias"}
    assert _names(toy, groups["norm"]) == {"bn.weight", "bn.bias", "gn.weight", "gn.bias"}
    assert (groups["weight"]["lr"], groups["weight"]["weight_decay"]) == (0.01, 1e-4)
    assert (groups["bias"]["lr"], groups["bias"]["weight_decay"]) == (0.02, 0.0)
    assert (groups["norm"]["lr"], groups["norm"]["weight_decay"]) == (0.01, 0.0)


def test_param_groups_skip_frozen_and_empty_groups():
    model = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4))
    model[1].requires_grad_(False)
    groups = param_groups(model, lr=0.1, weight_decay=0.0, **{**PAPER_GROUPS, "bias_lr_factor": 3.0})
    assert [g["name"] for g in groups] == ["weight"]
    assert sum(len(g["params"]) for g in groups) == 1


def test_param_groups_cover_every_trainable_parameter_once():
    toy = Toy()
    seen = [id(p) for g in param_groups(toy, lr=1.0, weight_decay=1.0, **PAPER_GROUPS) for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in toy.parameters() if p.requires_grad)


# 100 updates per epoch, spec milestones (8, 11), gamma 0.1, constant warm-up 1/3 for 250 updates.
def spec_like(step: int, **warmup) -> float:
    return WarmupMultiStep(milestones=(8, 11), gamma=0.1, warmup_steps=250, **warmup).factor(step, 100)


@pytest.mark.parametrize(
    ("step", "expected"),
    [(0, 1 / 3), (249, 1 / 3), (250, 1.0), (799, 1.0), (800, 0.1), (1099, 0.1), (1100, 0.01), (5000, 0.01)],
)
def test_constant_warmup_and_epoch_milestones(step, expected):
    assert spec_like(step, warmup="constant", warmup_factor=1 / 3) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("step", "expected"), [(0, 1 / 3), (125, 2 / 3), (249, 1 - (1 / 250) * (2 / 3)), (250, 1.0)]
)
def test_linear_warmup(step, expected):
    # MMDetection's rule 1 - (1 - step / 250) * (1 - 1/3): from 1/3 up to 1 in 250 updates.
    assert spec_like(step, warmup="linear", warmup_factor=1 / 3) == pytest.approx(expected)


def test_warmup_longer_than_an_epoch_multiplies_the_decay():
    # 10 updates per epoch: update 85 is in epoch 8 (decayed once) and still warming up.
    value = WarmupMultiStep(warmup="constant", warmup_steps=100, warmup_factor=1 / 3).factor(85, 10)
    assert value == pytest.approx(0.1 / 3)


def test_no_warmup():
    assert WarmupMultiStep(warmup="none", warmup_steps=100).factor(0, 10) == 1.0


def test_schedule_defaults_are_the_paper_and_bad_warmup_is_a_config_error():
    paper = WarmupMultiStep()
    assert (paper.milestones, paper.gamma, paper.warmup, paper.warmup_steps) == (
        (8, 11),
        0.1,
        "constant",
        10000,
    )
    assert paper.warmup_factor == pytest.approx(1 / 3)
    with pytest.raises(KLDetConfigError, match="warmup='cosine': choose one of constant, linear, none"):
        WarmupMultiStep(warmup="cosine")


def test_lambda_lr_applies_the_factor_per_update():
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.01)
    scheduler = WarmupMultiStep(milestones=(1,), warmup_steps=1, warmup_factor=0.5)(
        optimizer, steps_per_epoch=2
    )
    lrs = []
    for _ in range(4):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.005, 0.01, 0.001, 0.001])


@pytest.mark.parametrize(("total", "expected"), [(2, 0.0025), (8, 0.01), (16, 0.02), (1, 0.00125)])
def test_scaled_lr_is_linear_in_total_batch(total, expected):
    # Spec section 6: 0.0025 at batch 2 becomes 0.01 at batch 8.
    assert scaled_lr(0.0025, 2, total) == pytest.approx(expected)
