"""ResNet + FPN feature extractor: C2..C5 of a torchvision ResNet -> pyramid levels P_first..P_last.

Level ``k`` has stride ``2**k``. Levels 2..5 come from the FPN over C2..C5 (only the ones at or above
the first requested level are built); levels 6 and 7 are extra stride-2 convs, the first on the P5
*output*, each further one on the ReLU of the previous (FCOS / mmdet ``add_extra_convs="on_output"``
with ``relu_before_extra_convs``).
"""

import functools
import warnings
from collections import OrderedDict
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import get_model_weights, resnet
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock
from torchvision.ops.misc import FrozenBatchNorm2d

from kldet.errors import KLDetConfigError

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
BACKBONE_LEVELS = (2, 3, 4, 5)
MAX_LEVEL = 7


def check_levels(levels: tuple[int, ...]) -> tuple[int, ...]:
    """Validate pyramid levels: consecutive, from 2..5 up to 5..7 (P5 is always built for the top-down path)."""
    levels = tuple(int(level) for level in levels)
    if (
        not levels
        or levels != tuple(range(levels[0], levels[-1] + 1))
        or not (2 <= levels[0] <= 5 <= levels[-1] <= MAX_LEVEL)
    ):
        raise KLDetConfigError(
            f"fpn_levels={levels}: need consecutive levels starting at 2..5 and ending at 5..{MAX_LEVEL}, "
            "e.g. (2, 3, 4, 5, 6) for KLDet or (3, 4, 5, 6, 7) for standard FCOS"
        )
    return levels


def resnet_state_dict(name: str, weights: str) -> dict[str, Tensor]:
    """Read ResNet weights from a local file, or from torchvision's cache when ``weights`` names a weight enum.

    Never downloads: a weight name whose file is not in ``$TORCH_HOME/hub/checkpoints`` is an error that
    says where to put the file.
    """
    path = Path(weights).expanduser()
    if not path.is_file():
        available = get_model_weights(name)
        try:
            entry = available[weights.rsplit(".", 1)[-1]]
        except KeyError:
            names = ", ".join(available.__members__)
            raise KLDetConfigError(
                f"backbone weights {weights!r}: not a file, and not a weight name of {name} ({names})"
            ) from None
        # Same file name and folder as torchvision's own download cache.
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(entry.url).path).name
        if not path.is_file():
            raise KLDetConfigError(
                f"{name} weights {weights} are not in torchvision's cache ({path}) and kldet never downloads: "
                f"copy the file from {entry.url} there, or set weights to the path of a local .pth file"
            )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise KLDetConfigError(f"cannot read backbone weights {path}: {error}") from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise KLDetConfigError(f"backbone weights {path}: expected a state dict, got {type(state).__name__}")
    return state


# Frozen statistics suit pretrained weights; a backbone trained from random weights needs a norm that
# learns (plain BatchNorm, or GroupNorm for small batches), else activations are never normalised.
NORM_LAYERS = {
    "frozen_bn": FrozenBatchNorm2d,
    "bn": nn.BatchNorm2d,
    "gn": functools.partial(nn.GroupNorm, 32),
}


def build_resnet(name: str, weights: str | None, norm: str = "frozen_bn") -> resnet.ResNet:
    """A torchvision ResNet with the ``norm`` layer of :data:`NORM_LAYERS`; random weights (said once)
    when ``weights`` is None."""
    if name not in RESNETS:
        raise KLDetConfigError(f"backbone {name!r}: choose one of {', '.join(RESNETS)}")
    if norm not in NORM_LAYERS:
        raise KLDetConfigError(f"backbone_norm={norm!r}: choose one of {', '.join(NORM_LAYERS)}")
    model = getattr(resnet, name)(weights=None, norm_layer=NORM_LAYERS[norm])
    if weights is None:
        warnings.warn(f"{name} backbone starts from random weights (weights=None)", UserWarning, stacklevel=3)
        return model
    state = resnet_state_dict(name, weights)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # The classifier is not used; files without it are fine.
    missing = [key for key in missing if not key.startswith("fc.")]
    if missing or unexpected:
        raise KLDetConfigError(
            f"backbone weights {weights}: not a torchvision {name} state dict "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model


def freeze_stages(model: resnet.ResNet, frozen_stages: int) -> None:
    """Stop gradients into the stem (``frozen_stages >= 0``) and into ``layer1..layer{frozen_stages}``."""
    if not -1 <= frozen_stages <= 4:
        raise KLDetConfigError(f"frozen_stages={frozen_stages}: choose -1 (none) .. 4 (whole ResNet)")
    stem = [model.conv1, model.bn1] if frozen_stages >= 0 else []
    for module in stem + [getattr(model, f"layer{i}") for i in range(1, frozen_stages + 1)]:
        module.requires_grad_(False)


class ExtraLevels(ExtraFPNBlock):
    """Pyramid levels above P5: a 3x3 stride-2 conv on P5's output, then on ReLU of each new level."""

    def __init__(self, num_levels: int, channels: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1) for _ in range(num_levels)
        )

    def forward(
        self, results: list[Tensor], x: list[Tensor], names: list[str]
    ) -> tuple[list[Tensor], list[str]]:
        for index, conv in enumerate(self.convs):
            results.append(conv(results[-1] if index == 0 else F.relu(results[-1])))
            names.append(f"p{6 + index}")
        return results, names


class ResNetFPN(nn.Module):
    """ResNet body and FPN neck.

    Args:
        backbone: "resnet18" | "resnet34" | "resnet50" | "resnet101".
        weights: None (random), a torchvision weight name ("IMAGENET1K_V1", "DEFAULT", ...) read from
            torchvision's local cache, or a path to a ResNet state dict.
        levels: consecutive pyramid levels to output, e.g. (2, 3, 4, 5, 6).
        frozen_stages: -1 none, 0 stem, k stem + layer1..layerk.
        channels: channels of every pyramid level.
        norm: "frozen_bn" (frozen statistics and affine, for pretrained weights), "bn" or "gn" (trained,
            for a backbone that starts from random weights).

    ``forward(images (B, 3, H, W)) -> [(B, channels, ceil(H / 2**k), ceil(W / 2**k)) for k in levels]``.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        weights: str | None = None,
        levels: tuple[int, ...] = (2, 3, 4, 5, 6),
        frozen_stages: int = 1,
        channels: int = 256,
        norm: str = "frozen_bn",
    ) -> None:
        super().__init__()
        self.levels = check_levels(levels)
        body = build_resnet(backbone, weights, norm)
        freeze_stages(body, frozen_stages)
        inputs = [level for level in BACKBONE_LEVELS if level >= self.levels[0]]
        expansion = body.layer1[0].expansion
        self.body = IntermediateLayerGetter(body, {f"layer{level - 1}": f"c{level}" for level in inputs})
        num_extra = self.levels[-1] - BACKBONE_LEVELS[-1]
        self.fpn = FeaturePyramidNetwork(
            [64 * expansion * 2 ** (level - 2) for level in inputs],
            channels,
            extra_blocks=ExtraLevels(num_extra, channels) if num_extra else None,
        )
        for module in self.fpn.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, images: Tensor) -> list[Tensor]:
        features: OrderedDict[str, Tensor] = self.body(images)
        return list(self.fpn(features).values())
