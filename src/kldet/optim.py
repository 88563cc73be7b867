"""Parameter groups, the warm-up + multi-step learning-rate schedule and the linear scaling rule of
``KLDET_SPEC.md`` section 6, without Lightning (:class:`kldet.lit.KLDetModule` builds its optimiser and
scheduler from them; another trainer can do the same).

The optimiser itself is a config (``conf/optimizer/sgd.yaml``: ``torch.optim.SGD`` with the paper's lr
0.0025, momentum 0.9, weight decay 1e-4); the schedule is :class:`WarmupMultiStep`, whose defaults are
the paper's.
"""

import dataclasses
import functools
from typing import Any

import torch
from torch import nn

from kldet.errors import KLDetConfigError

WARMUP_KINDS = ("constant", "linear", "none")
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def param_groups(
    module: nn.Module,
    lr: float,
    weight_decay: float | None,
    bias_lr_factor: float,
    bias_weight_decay: float,
    norm_weight_decay: float,
) -> list[dict[str, Any]]:
    """Split trainable parameters into optimiser groups "weight", "bias" and "norm".

    Weights of normalisation layers (BatchNorm, GroupNorm, LayerNorm) and their biases go to "norm"
    (lr, ``norm_weight_decay``); the other biases to "bias" (``lr * bias_lr_factor``,
    ``bias_weight_decay``); everything else to "weight" (lr, ``weight_decay``; None leaves the
    optimiser's own). Frozen parameters are left out; empty groups are dropped. Each group carries its
    "name". The paper's values are :class:`kldet.lit.KLDetModule`'s defaults (2, 0, 0).
    """
    weight = {"weight_decay": weight_decay} if weight_decay is not None else {}
    groups: dict[str, dict[str, Any]] = {
        "weight": {"name": "weight", "params": [], "lr": lr, **weight},
        "bias": {"name": "bias", "params": [], "lr": lr * bias_lr_factor, "weight_decay": bias_weight_decay},
        "norm": {"name": "norm", "params": [], "lr": lr, "weight_decay": norm_weight_decay},
    }
    for submodule in module.modules():
        for param_name, param in submodule.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            if isinstance(submodule, _NORM_TYPES):
                groups["norm"]["params"].append(param)
            elif param_name == "bias":
                groups["bias"]["params"].append(param)
            else:
                groups["weight"]["params"].append(param)
    return [group for group in groups.values() if group["params"]]


@dataclasses.dataclass(frozen=True)
class WarmupMultiStep:
    """Warm-up, then the learning rate times ``gamma`` after each milestone epoch (spec section 6: constant
    warm-up 1/3 for 10,000 updates, x0.1 after epochs 8 and 11).

    ``schedule(optimizer, steps_per_epoch)`` is the per-update ``LambdaLR`` of :meth:`factor`.

    Args:
        milestones: epochs after which the lr is multiplied by ``gamma``.
        warmup: "constant" (``warmup_factor``), "linear" (MMDetection's rule, from ``warmup_factor`` up to 1)
            or "none"; counted in optimiser updates.
        warmup_steps: updates the warm-up lasts.
        warmup_factor: the lr multiplier at the first update.
    """

    milestones: tuple[int, ...] = (8, 11)
    gamma: float = 0.1
    warmup: str = "constant"
    warmup_steps: int = 10000
    warmup_factor: float = 1.0 / 3.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))
        if self.warmup not in WARMUP_KINDS:
            raise KLDetConfigError(f"warmup={self.warmup!r}: choose one of {', '.join(WARMUP_KINDS)}")

    def factor(self, step: int, steps_per_epoch: int) -> float:
        """Learning-rate multiplier for the optimiser update with 0-based index ``step``.

        ``gamma ** (number of milestones <= epoch)`` with ``epoch = step // steps_per_epoch`` (so
        milestone 8 means "after 8 epochs"), times the warm-up factor while ``step < warmup_steps``:
        ``warmup_factor`` ("constant") or ``1 - (1 - step / warmup_steps) * (1 - warmup_factor)``
        ("linear"), 1 for "none".
        """
        epoch = step // steps_per_epoch
        value = self.gamma ** sum(epoch >= milestone for milestone in self.milestones)
        if step < self.warmup_steps:
            if self.warmup == "constant":
                value *= self.warmup_factor
            elif self.warmup == "linear":
                value *= 1.0 - (1.0 - step / self.warmup_steps) * (1.0 - self.warmup_factor)
        return value

    def __call__(
        self, optimizer: torch.optim.Optimizer, steps_per_epoch: int
    ) -> torch.optim.lr_scheduler.LambdaLR:
        # A partial (no state of its own) so that a resumed run restores only the step count and
        # recomputes the schedule from its own configuration.
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, functools.partial(self.factor, steps_per_epoch=steps_per_epoch)
        )


def scaled_lr(lr: float, base_batch_size: int, total_batch_size: int) -> float:
    """Linear scaling rule: ``lr`` is right for ``base_batch_size`` images per update."""
    return lr * total_batch_size / base_batch_size
