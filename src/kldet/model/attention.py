"""TlA: task-level attention, the dynamic ReLU of DyHead (KLDET_SPEC.md section 4)."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TaskLevelAttention(nn.Module):
    """Per-channel dynamic ReLU ``max(a1 * x + b1, a2 * x + b2)`` with coefficients from the pooled map.

    ``z = conv(C -> 4C)(relu(conv(C -> C / reduction)(avg_pool(x))))``, ``c1..c4 = hard_sigmoid(z) - 0.5``
    with ``hard_sigmoid(z) = clamp((z + 3) / 6, 0, 1)``; ``a1 = 2 c1 + 1``, ``b1 = c2``, ``a2 = 2 c3``,
    ``b2 = c4``. With ``z = 0`` it is a plain ReLU. One instance is shared by all pyramid levels.

    ``forward(x (B, C, H, W)) -> (B, C, H, W)``.
    """

    def __init__(self, channels: int = 256, reduction: int = 4) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(channels, channels // reduction, kernel_size=1)
        self.expand = nn.Conv2d(channels // reduction, 4 * channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        z = self.expand(F.relu(self.squeeze(F.adaptive_avg_pool2d(x, 1))))
        c1, c2, c3, c4 = (F.hardsigmoid(z) - 0.5).chunk(4, dim=1)
        return torch.maximum((2 * c1 + 1) * x + c2, 2 * c3 * x + c4)
