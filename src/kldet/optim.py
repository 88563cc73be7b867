"""SGD parameter groups, the warm-up + multi-step learning-rate schedule and the linear scaling rule of
``KLDET_SPEC.md`` section 6, without Lightning (:class:`kldet.lit.KLDetModule` builds its optimiser and
scheduler from them; another trainer can do the same).
"""

from collections.abc import Sequence
from typing import Any

from torch import nn

# Spec section 6: SGD lr 0.0025 at batch 2, momentum 0.9, weight decay 1e-4, biases 2x lr and no
# decay, constant warm-up 1/3 for 10,000 iterations, x0.1 after epochs 8 and 11.
DEFAULT_OPTIM: dict[str, Any] = {
    "lr": 0.0025,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "bias_lr_factor": 2.0,
    "bias_weight_decay": 0.0,
    "norm_weight_decay": 0.0,
    "warmup": "constant",
    "warmup_steps": 10000,
    "warmup_factor": 1.0 / 3.0,
    "milestones": [8, 11],
    "gamma": 0.1,
    "auto_scale_lr": False,
    "base_batch_size": 2,
}

WARMUP_KINDS = ("constant", "linear", "none")
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def param_groups(
    module: nn.Module,
    lr: float,
    weight_decay: float,
    bias_lr_factor: float = 2.0,
    bias_weight_decay: float = 0.0,
    norm_weight_decay: float = 0.0,
) -> list[dict[str, Any]]:
    """Split trainable parameters into SGD groups "weight", "bias" and "norm".

    Weights of normalisation layers (BatchNorm, GroupNorm, LayerNorm) and their biases go to "norm"
    (lr, ``norm_weight_decay``); the other biases to "bias" (``lr * bias_lr_factor``,
    ``bias_weight_decay``); everything else to "weight" (lr, ``weight_decay``). Frozen parameters
    are left out; empty groups are dropped. Each group carries its "name".
    """
    groups: dict[str, dict[str, Any]] = {
        "weight": {"name": "weight", "params": [], "lr": lr, "weight_decay": weight_decay},
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


def lr_factor(
    step: int,
    *,
    steps_per_epoch: int,
    milestones: Sequence[int] = (8, 11),
    gamma: float = 0.1,
    warmup: str = "constant",
    warmup_steps: int = 10000,
    warmup_factor: float = 1.0 / 3.0,
) -> float:
    """Learning-rate multiplier for the optimiser update with 0-based index ``step``.

    ``gamma ** (number of milestones <= epoch)`` with ``epoch = step // steps_per_epoch`` (so
    milestone 8 means "after 8 epochs"), times the warm-up factor while ``step < warmup_steps``:
    ``warmup_factor`` ("constant") or ``1 - (1 - step / warmup_steps) * (1 - warmup_factor)``
    ("linear", MMDetection's rule), 1 for "none".
    """
    epoch = step // steps_per_epoch
    factor = gamma ** sum(epoch >= milestone for milestone in milestones)
    if step < warmup_steps:
        if warmup == "constant":
            factor *= warmup_factor
        elif warmup == "linear":
            factor *= 1.0 - (1.0 - step / warmup_steps) * (1.0 - warmup_factor)
    return factor


def scaled_lr(lr: float, base_batch_size: int, total_batch_size: int) -> float:
    """Linear scaling rule: ``lr`` is right for ``base_batch_size`` images per update."""
    return lr * total_batch_size / base_batch_size
