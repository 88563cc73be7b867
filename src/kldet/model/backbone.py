"""ResNet + FPN feature extractor: C2..C5 of a torchvision ResNet -> pyramid levels P_first..P_last.

Level ``k`` has stride ``2**k``. Levels 2..5 come from the FPN over C2..C5 (only the ones at or above
the first requested level are built); levels 6 and 7 are, with ``extra_levels="conv"``, extra stride-2
convs, the first on the P5 *output*, each further one on the ReLU of the previous (FCOS / mmdet
``add_extra_convs="on_output"`` with ``relu_before_extra_convs``): P6 is the conv of P5 itself, with no
ReLU in between. With ``extra_levels="maxpool"`` (Faster R-CNN, mmdet ``add_extra_convs=False``) P6 is P5
subsampled with stride 2 (torchvision's ``LastLevelMaxPool``: max-pool, kernel 1), and there is no P7.

Two ResNet styles (MMDetection's ``style``): "pytorch" (torchvision: the stride-2 of each stage's first
bottleneck is on its 3x3 conv) and "caffe" (Detectron: on its first 1x1 conv). The style also fixes the
input normalisation the pretrained weights expect, :func:`kldet.model.normalization.input_normalization`.
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
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from kldet.errors import KLDetConfigError
from kldet.model.normalization import STYLE_NORMALIZATIONS

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
STYLES = tuple(STYLE_NORMALIZATIONS)
# MMDetection's names of the Caffe-style ImageNet weights (converted from Detectron / Detectron2, BGR input):
# name -> (ResNet, download URL). MMDetection caches them in torch's hub folder under the URL's file name.
CAFFE_WEIGHTS = {
    "open-mmlab://detectron/resnet50_caffe": (
        "resnet50",
        "https://download.openmmlab.com/pretrain/third_party/resnet50_caffe-788b5fa3.pth",
    ),
    "open-mmlab://detectron2/resnet50_caffe": (
        "resnet50",
        "https://download.openmmlab.com/pretrain/third_party/resnet50_msra-5891d200.pth",
    ),
    "open-mmlab://detectron/resnet101_caffe": (
        "resnet101",
        "https://download.openmmlab.com/pretrain/third_party/resnet101_caffe-3ad79236.pth",
    ),
    "open-mmlab://detectron2/resnet101_caffe": (
        "resnet101",
        "https://download.openmmlab.com/pretrain/third_party/resnet101_msra-6cc46731.pth",
    ),
}
# Keys of a ResNet state dict that loading ignores: the unused classifier, and BatchNorm's step counter.
IGNORED_KEY_PREFIX = "fc."
IGNORED_KEY_SUFFIX = "num_batches_tracked"
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


def _hub_cache_file(url: str) -> Path:
    """Where torchvision and MMDetection keep a downloaded ``url``: ``$TORCH_HOME/hub/checkpoints/<file name>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def weights_file(name: str, weights: str, style: str) -> Path:
    """The local file of ``weights``: a path, a torchvision weight name of ``name`` ("IMAGENET1K_V1",
    pytorch style) or an MMDetection Caffe-style name (:data:`CAFFE_WEIGHTS`), both looked up in torch's
    hub cache. Never downloads: a missing file is an error that says where to put it."""
    path = Path(weights).expanduser()
    if path.is_file():
        return path
    if weights in CAFFE_WEIGHTS:
        network, url = CAFFE_WEIGHTS[weights]
        if (network, style) != (name, "caffe"):
            raise KLDetConfigError(
                f"backbone weights {weights} are a Caffe-style {network}: set backbone={network} style=caffe"
            )
    else:
        if path.suffix in (".pth", ".pt", ".pkl") or "/" in weights:
            raise KLDetConfigError(f"backbone weights file {path} does not exist")
        available = get_model_weights(name)
        try:
            url = available[weights.rsplit(".", 1)[-1]].url
        except KeyError:
            names = ", ".join(
                [*available.__members__, *(n for n, (r, _) in CAFFE_WEIGHTS.items() if r == name)]
            )
            raise KLDetConfigError(
                f"backbone weights {weights!r}: not a file, and not a weight name of {name} ({names})"
            ) from None
        if style != "pytorch":
            raise KLDetConfigError(
                f"backbone weights {weights} are torchvision's (pytorch style) but style={style}: set "
                "style=pytorch, or give Caffe-style weights (a file, or open-mmlab://detectron/resnet50_caffe)"
            )
    path = _hub_cache_file(url)
    if not path.is_file():
        raise KLDetConfigError(
            f"{name} weights {weights} are not in torch's hub cache ({path}) and kldet never downloads: "
            f"copy the file from {url} there, or set weights to the path of a local .pth file"
        )
    return path


def resnet_state_dict(path: Path) -> dict[str, Tensor]:
    """The ResNet state dict of a weights file, in torchvision's key layout (``conv1.weight``,
    ``layer1.0.bn1.running_mean``, ``layer1.0.downsample.0.weight``, ...), which MMDetection's ResNet
    shares. The dict may be wrapped in ``{"state_dict": ...}``; when keys start with ``backbone.``
    (an MMDetection detector checkpoint) only those are kept, without the prefix."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise KLDetConfigError(f"cannot read backbone weights {path}: {reason}") from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise KLDetConfigError(f"backbone weights {path}: expected a state dict, got {type(state).__name__}")
    prefix = "backbone."
    if any(str(key).startswith(prefix) for key in state):
        state = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    return state


def load_resnet_weights(model: resnet.ResNet, name: str, path: Path) -> None:
    """Copy the weights of ``path`` (see :func:`resnet_state_dict`) into ``model``, a ``name`` ResNet.

    ``fc.*`` and ``num_batches_tracked`` keys are ignored on both sides; any other missing, unexpected or
    wrongly shaped key is one error naming the file and the first few keys.
    """
    state = {
        key: value
        for key, value in resnet_state_dict(path).items()
        if not key.startswith(IGNORED_KEY_PREFIX) and not key.endswith(IGNORED_KEY_SUFFIX)
    }
    expected = {
        key: value
        for key, value in model.state_dict().items()
        if not key.startswith(IGNORED_KEY_PREFIX) and not key.endswith(IGNORED_KEY_SUFFIX)
    }
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    wrong_shape = [
        f"{key} {tuple(getattr(state[key], 'shape', ()))} != {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state and (not isinstance(state[key], Tensor) or state[key].shape != value.shape)
    ]
    if missing or unexpected or wrong_shape:
        found = [
            f"{what} {len(keys)} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape))
            if keys
        ]
        raise KLDetConfigError(f"backbone weights {path} do not fit {name}: {'; '.join(found)}")
    model.load_state_dict(state, strict=False)


class FrozenStatsBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that always normalises with its running statistics (never updates them, in train mode
    too) but keeps a trainable affine weight and bias: MMDetection's ``norm_eval=True`` with
    ``requires_grad=True``, the two-stage KLDet's backbone norm (KLDET_SPEC.md section 9)."""

    def forward(self, input: Tensor) -> Tensor:
        return F.batch_norm(
            input, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )


def _batchnorm_affine(norm: nn.Module) -> tuple[Tensor, Tensor]:
    """``(scale, shift)`` (C,) such that ``norm(x) == x * scale + shift`` per channel (eval statistics)."""
    weight = norm.weight if norm.weight is not None else torch.ones_like(norm.running_var)
    bias = norm.bias if norm.bias is not None else torch.zeros_like(norm.running_mean)
    scale = weight * (norm.running_var + norm.eps).rsqrt()
    return scale, bias - norm.running_mean * scale


def _conv_norm_pairs(module: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """``(parent, conv name, norm name)`` of each batch norm that directly follows a conv: torchvision
    ResNets' ``convK`` -> ``bnK`` (the stem and every block) and a ``Sequential``'s conv -> norm (the
    shortcut's ``downsample``)."""
    norms = (FrozenBatchNorm2d, nn.BatchNorm2d)
    pairs = []
    for parent in module.modules():
        children = dict(parent.named_children())
        if isinstance(parent, nn.Sequential):
            names = list(children)
            candidates = list(zip(names, names[1:], strict=False))
        else:
            candidates = [("conv" + name[2:], name) for name in children if name.startswith("bn")]
        for conv, norm in candidates:
            if isinstance(children.get(conv), nn.Conv2d) and isinstance(children[norm], norms):
                pairs.append((parent, conv, norm))
    return pairs


@torch.no_grad()
def fold_batchnorm(module: nn.Module) -> int:
    """Fold every batch norm that directly follows a conv into that conv's weight and bias, in place.

    In eval mode a batch norm (``FrozenBatchNorm2d``, :class:`FrozenStatsBatchNorm2d`, ``BatchNorm2d``) is a
    per-channel affine map ``x * scale + shift``, so ``norm(conv(x))`` is one conv with weight ``W * scale``
    and bias ``b * scale + shift``, and the norm becomes ``nn.Identity``. The result equals the unfolded
    network in fp32 up to rounding; under bf16 autocast it also saves the two fp32 elementwise passes (and
    the bf16 -> fp32 -> bf16 casts) of each norm. For inference only: the folded module no longer has the
    norms' parameters, so it cannot be trained or saved as the original.

    Returns:
        the number of norms folded.

    Raises:
        ValueError: ``module`` is in training mode (a training batch norm uses batch statistics).
    """
    if module.training:
        raise ValueError("fold_batchnorm: call module.eval() first (it folds running statistics)")
    pairs = _conv_norm_pairs(module)
    for parent, conv_name, norm_name in pairs:
        conv, norm = getattr(parent, conv_name), getattr(parent, norm_name)
        scale, shift = _batchnorm_affine(norm)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
        conv.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1).to(conv.weight))
        conv.bias = nn.Parameter(bias * scale + shift, requires_grad=False)
        setattr(parent, norm_name, nn.Identity())
    return len(pairs)


# Frozen statistics suit pretrained weights; a backbone trained from random weights needs a norm that
# learns (plain BatchNorm, or GroupNorm for small batches), else activations are never normalised.
NORM_LAYERS = {
    "frozen_bn": FrozenBatchNorm2d,
    "frozen_stats_bn": FrozenStatsBatchNorm2d,
    "bn": nn.BatchNorm2d,
    "gn": functools.partial(nn.GroupNorm, 32),
}
#: How the levels above P5 are made (see the module docstring).
EXTRA_LEVEL_KINDS = ("conv", "maxpool")


def build_resnet(
    name: str, weights: str | None, norm: str = "frozen_bn", style: str = "pytorch"
) -> resnet.ResNet:
    """A torchvision ResNet with the ``norm`` layer of :data:`NORM_LAYERS`, in ``style`` (see
    :func:`to_caffe_style`); random weights (said once) when ``weights`` is None."""
    if name not in RESNETS:
        raise KLDetConfigError(f"backbone {name!r}: choose one of {', '.join(RESNETS)}")
    if norm not in NORM_LAYERS:
        raise KLDetConfigError(f"backbone_norm={norm!r}: choose one of {', '.join(NORM_LAYERS)}")
    if style not in STYLES:
        raise KLDetConfigError(f"style={style!r}: choose one of {', '.join(STYLES)}")
    model = getattr(resnet, name)(weights=None, norm_layer=NORM_LAYERS[norm])
    if style == "caffe":
        to_caffe_style(model, name)
    if weights is None:
        warnings.warn(f"{name} backbone starts from random weights (weights=None)", UserWarning, stacklevel=3)
        return model
    load_resnet_weights(model, name, weights_file(name, weights, style))
    return model


def to_caffe_style(model: resnet.ResNet, name: str) -> None:
    """Move the stride of each stage's first bottleneck from its 3x3 conv (``conv2``) to its first 1x1
    conv (``conv1``), as in Caffe / Detectron ResNets; the shortcut's 1x1 conv keeps its stride. The
    output shapes do not change."""
    if not isinstance(model.layer1[0], resnet.Bottleneck):
        raise KLDetConfigError(
            f"style=caffe needs a bottleneck ResNet (resnet50, resnet101); {name} has basic blocks without "
            "a 1x1 conv to take the stride: use style=pytorch"
        )
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        first = layer[0]
        first.conv1.stride, first.conv2.stride = first.conv2.stride, first.conv1.stride


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
        weights: None (random), a torchvision weight name ("IMAGENET1K_V1", "DEFAULT", ...; pytorch style)
            or an MMDetection Caffe-style name ("open-mmlab://detectron/resnet50_caffe", see
            :data:`CAFFE_WEIGHTS`), both read from torch's local hub cache, or a path to a ResNet state dict
            (torchvision / MMDetection keys, see :func:`resnet_state_dict`).
        levels: consecutive pyramid levels to output, e.g. (2, 3, 4, 5, 6).
        frozen_stages: -1 none, 0 stem, k stem + layer1..layerk.
        channels: channels of every pyramid level.
        norm: "frozen_bn" (frozen statistics and affine, for pretrained weights), "frozen_stats_bn"
            (frozen statistics, trainable affine: :class:`FrozenStatsBatchNorm2d`), "bn" or "gn" (trained,
            for a backbone that starts from random weights).
        style: "pytorch" (stride on the 3x3 conv) or "caffe" (stride on the first 1x1 conv; bottleneck
            ResNets only). It must match the weights, and fixes the input normalisation
            (:func:`kldet.model.normalization.input_normalization`).
        extra_levels: "conv" (stride-2 convs, up to P7) or "maxpool" (P6 = P5 max-pooled with kernel 1,
            stride 2; at most P6), see the module docstring.

    ``forward(images (B, 3, H, W)) -> [(B, channels, ceil(H / 2**k), ceil(W / 2**k)) for k in levels]``;
    ``strides`` (2**k per level) and ``channels`` say what it gives (what :class:`kldet.model.KLDet` reads).
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        weights: str | None = None,
        levels: tuple[int, ...] = (2, 3, 4, 5, 6),
        frozen_stages: int = 1,
        channels: int = 256,
        norm: str = "frozen_bn",
        style: str = "pytorch",
        extra_levels: str = "conv",
    ) -> None:
        super().__init__()
        self.levels = check_levels(levels)
        num_extra = self.levels[-1] - BACKBONE_LEVELS[-1]
        if extra_levels not in EXTRA_LEVEL_KINDS:
            raise KLDetConfigError(
                f"extra_levels={extra_levels!r}: choose one of {', '.join(EXTRA_LEVEL_KINDS)}"
            )
        if extra_levels == "maxpool" and num_extra > 1:
            raise KLDetConfigError(
                f"fpn_levels={self.levels}: extra_levels=maxpool makes only P6; end the levels at 5 or 6"
            )
        self.strides = tuple(2**level for level in self.levels)
        self.channels = channels
        self.style = style
        body = build_resnet(backbone, weights, norm, style)
        freeze_stages(body, frozen_stages)
        inputs = [level for level in BACKBONE_LEVELS if level >= self.levels[0]]
        expansion = body.layer1[0].expansion
        self.body = IntermediateLayerGetter(body, {f"layer{level - 1}": f"c{level}" for level in inputs})
        if not num_extra:
            extra_blocks = None
        elif extra_levels == "maxpool":
            extra_blocks = LastLevelMaxPool()
        else:
            extra_blocks = ExtraLevels(num_extra, channels)
        self.fpn = FeaturePyramidNetwork(
            [64 * expansion * 2 ** (level - 2) for level in inputs], channels, extra_blocks=extra_blocks
        )
        for module in self.fpn.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, images: Tensor) -> list[Tensor]:
        features: OrderedDict[str, Tensor] = self.body(images)
        return list(self.fpn(features).values())
