"""How 0..255 image pixels become backbone input: channel order, mean and std, fixed by the backbone style.

The single source of truth is :func:`input_normalization`: kldet-train builds the data transforms from the
model's ``style`` with it and stores the result in the checkpoint (``hyper_parameters["preprocess"]`` keys
``channel_order``, ``mean``, ``std``); evaluation, kldet-predict and kldet-export read it back from there
with :meth:`InputNormalization.from_preprocess`. A key missing from a checkpoint takes the value of its
model's style, so checkpoints written before styles existed (pytorch style, no ``channel_order``) load as RGB.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from kldet.errors import KLDetConfigError

#: Normalisation of 0..255 RGB input (ImageNet statistics, as torchvision's pretrained ResNets expect).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
#: Normalisation of 0..255 BGR input of the Caffe-style (Detectron) ResNets: mean only, in B, G, R order.
CAFFE_MEAN = (102.9801, 115.9465, 122.7717)
CAFFE_STD = (1.0, 1.0, 1.0)

CHANNEL_ORDERS = ("RGB", "BGR")


@dataclass(frozen=True)
class InputNormalization:
    """Pixels ``x`` (0..255, RGB) -> ``(x[order] - mean) / std``, per channel.

    Attributes:
        channel_order: "RGB" or "BGR", the channel order the backbone expects.
        mean, std: 3 values each, in ``channel_order``.
    """

    channel_order: str = "RGB"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.channel_order not in CHANNEL_ORDERS:
            raise KLDetConfigError(f"channel_order={self.channel_order!r}: choose RGB or BGR")
        for name in ("mean", "std"):
            values = tuple(float(v) for v in getattr(self, name))
            if len(values) != 3:
                raise KLDetConfigError(f"normalisation {name}={list(values)}: need 3 values, one per channel")
            object.__setattr__(self, name, values)
        if min(self.std) <= 0:
            raise KLDetConfigError(f"normalisation std={list(self.std)}: every value must be positive")

    @classmethod
    def from_preprocess(
        cls, preprocess: Mapping[str, Any] | None, style: str = "pytorch"
    ) -> InputNormalization:
        """The normalisation of a checkpoint's ``preprocess`` dict; missing keys come from ``style``."""
        preprocess = preprocess or {}
        default = input_normalization(style)
        return cls(
            str(preprocess.get("channel_order") or default.channel_order),
            tuple(preprocess.get("mean") or default.mean),
            tuple(preprocess.get("std") or default.std),
        )

    def as_preprocess(self) -> dict[str, Any]:
        """``{"channel_order", "mean", "std"}`` with plain lists, as stored in a checkpoint's ``preprocess``."""
        return {"channel_order": self.channel_order, "mean": list(self.mean), "std": list(self.std)}

    def normalize(self, rgb: Tensor) -> Tensor:
        """(..., 3, H, W) float RGB pixels 0..255 -> normalised model input of the same shape.

        ``(pixels - mean) * (1 / std)``, with the reciprocal rounded to float32 first: the operations of
        albumentations' ``Normalize`` on uint8 images, so the input equals what training fed the network
        before the data pipeline used this function, to the bit (tested), and runs trained then repeat.
        """
        pixels = rgb.flip(-3) if self.channel_order == "BGR" else rgb
        mean = pixels.new_tensor(self.mean).view(3, 1, 1)
        inverse_std = pixels.new_tensor(self.std).view(3, 1, 1).reciprocal()
        return (pixels - mean).mul_(inverse_std)  # in place on the new tensor: one allocation, same bits

    def denormalize(self, image: Tensor) -> Tensor:
        """Inverse of :meth:`normalize`: (..., 3, H, W) model input -> float RGB pixels 0..255."""
        pixels = image * image.new_tensor(self.std).view(3, 1, 1) + image.new_tensor(self.mean).view(3, 1, 1)
        return pixels.flip(-3) if self.channel_order == "BGR" else pixels


#: What each backbone style's pretrained weights were trained on (see :class:`kldet.model.ResNetFPN`).
STYLE_NORMALIZATIONS = {
    "pytorch": InputNormalization("RGB", IMAGENET_MEAN, IMAGENET_STD),
    "caffe": InputNormalization("BGR", CAFFE_MEAN, CAFFE_STD),
}


def input_normalization(style: str) -> InputNormalization:
    """The input normalisation of a backbone ``style``: "pytorch" RGB with ImageNet mean/std, "caffe" BGR
    minus the Detectron mean with std 1."""
    if style not in STYLE_NORMALIZATIONS:
        raise KLDetConfigError(f"style={style!r}: choose one of {', '.join(STYLE_NORMALIZATIONS)}")
    return STYLE_NORMALIZATIONS[style]
