"""FCOS head (KLDET_SPEC.md section 1): classification tower, regression tower with centerness."""

import math

import torch
from torch import Tensor, nn

from kldet.errors import KLDetConfigError

HEAD_NORMS = (None, "GN")


class Scale(nn.Module):
    """A learnable scalar multiplier (one per pyramid level on the regression output)."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(value))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def conv_tower(channels: int, num_convs: int, norm: str | None) -> nn.Sequential:
    """``num_convs`` x (3x3 conv, optional GroupNorm(32), ReLU); the conv has a bias only without norm."""
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers.append(nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=norm is None))
        if norm == "GN":
            layers.append(nn.GroupNorm(32, channels))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class FCOSHead(nn.Module):
    """Shared FCOS head over all pyramid levels.

    Args:
        num_classes: C, sigmoid classes (no background channel).
        num_levels: number of pyramid levels (one learnable ``Scale`` each).
        channels: input and tower channels.
        num_convs: convs per tower.
        norm: None (KLDet default, conv bias on) or "GN" (GroupNorm with 32 groups, as torchvision's FCOS).
        prior_probability: initial foreground probability of every classification output.

    ``forward(features: list of (B, channels, h_l, w_l))`` returns three lists over levels:
    ``cls_logits (B, C, h_l, w_l)``, ``box_regression (B, 4, h_l, w_l)`` (l, t, r, b >= 0 in units of the
    level stride) and ``centerness (B, 1, h_l, w_l)`` logits (predicted from the regression tower).
    """

    def __init__(
        self,
        num_classes: int,
        num_levels: int,
        channels: int = 256,
        num_convs: int = 4,
        norm: str | None = None,
        prior_probability: float = 0.01,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_levels = num_levels
        self.channels = channels
        if norm not in HEAD_NORMS:
            raise KLDetConfigError(f"head_norm={norm!r}: choose None or 'GN'")
        self.cls_tower = conv_tower(channels, num_convs, norm)
        self.reg_tower = conv_tower(channels, num_convs, norm)
        self.cls_logits = nn.Conv2d(channels, num_classes, kernel_size=3, padding=1)
        self.box_regression = nn.Conv2d(channels, 4, kernel_size=3, padding=1)
        self.centerness = nn.Conv2d(channels, 1, kernel_size=3, padding=1)
        self.scales = nn.ModuleList(Scale() for _ in range(num_levels))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_probability) / prior_probability))

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        if len(features) != self.num_levels:
            raise ValueError(f"the head has {self.num_levels} levels but got {len(features)} feature maps")
        outputs = [self.forward_level(feature, level) for level, feature in enumerate(features)]
        cls_logits, box_regression, centerness = (list(maps) for maps in zip(*outputs, strict=True))
        return cls_logits, box_regression, centerness

    def forward_level(self, feature: Tensor, level: int) -> tuple[Tensor, Tensor, Tensor]:
        """The head on pyramid level ``level`` (0 = the finest) alone: feature (B, channels, h, w) ->
        cls_logits (B, C, h, w), box_regression (B, 4, h, w), centerness (B, 1, h, w)."""
        reg_feature = self.reg_tower(feature)
        return (
            self.cls_logits(self.cls_tower(feature)),
            torch.relu(self.scales[level](self.box_regression(reg_feature))),
            self.centerness(reg_feature),
        )


def decode_boxes(points: Tensor, point_strides: Tensor, distances: Tensor) -> Tensor:
    """Boxes from distances in stride units: ``point + stride * (-l, -t, r, b)``.

    Args:
        points: (..., 2) x, y in pixels.
        point_strides: (...) stride of each point's level.
        distances: (..., 4) l, t, r, b in units of the stride (broadcast against the two above).

    Returns:
        (..., 4) xyxy boxes in pixels.
    """
    offsets = distances * point_strides[..., None]
    return torch.cat([points - offsets[..., :2], points + offsets[..., 2:]], dim=-1)
