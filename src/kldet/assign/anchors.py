"""Anchors of the two-stage KLDet's RPN (KLDET_SPEC.md section 9): receptive-field anchors.

Per pyramid level of stride s, a base side a (by default TRF(s) * 0.5: 17.5, 45.5, 133.5, 213.5, 277.5
for P2..P6) and aspect ratios r = h / w give anchors of height a * sqrt(r) and width a / sqrt(r),
centred on the cell *corners* (x * s, y * s) (centre offset 0, unlike the FCOS points at (x + 1/2) * s).
Order: level by level; within a level location-major (cells row-major), then the ratios in the order
given, i.e. the order of an RPN head's (B, A, h, w) maps flattened as (B, h, w, A). An 800 x 800 image has
(200² + 100² + 50² + 25² + 13²) * 3 = 159,882 anchors.

An anchor assigner takes ``(anchors (N, 4), gt_boxes (G, 4))`` and returns (N,) long: the index of the
anchor's ground truth, :data:`BACKGROUND` or :data:`IGNORED`.
"""

import dataclasses
import functools
from collections.abc import Sequence

import torch
from torch import Tensor

from kldet.assign.priors import THEORETICAL_RECEPTIVE_FIELD, feature_sizes
from kldet.errors import KLDetConfigError

#: What an anchor assigner gives an anchor that is not a positive (torchvision ``Matcher``'s codes): a
#: negative (background) sample, or one that is never sampled.
BACKGROUND = -1
IGNORED = -2


@dataclasses.dataclass(frozen=True)
class RFAnchorGenerator:
    """Anchors per level for a padded image; see the module docstring.

    Args:
        strides: the pyramid levels' strides.
        sides: the base side a of every level in pixels; None: TRF(stride) * ``fraction``
            (:data:`kldet.assign.THEORETICAL_RECEPTIVE_FIELD`). ``(32, 64, 128, 256, 512)`` gives
            torchvision's standard Faster R-CNN anchors.
        fraction: the TRF fraction of the default sides.
        ratios: aspect ratios h / w.
    """

    strides: tuple[int, ...] = (4, 8, 16, 32, 64)
    sides: tuple[float, ...] | None = None
    fraction: float = 0.5
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        object.__setattr__(self, "ratios", tuple(float(r) for r in self.ratios))
        if self.sides is not None:
            object.__setattr__(self, "sides", tuple(float(a) for a in self.sides))
            if len(self.sides) != len(self.strides):
                raise KLDetConfigError(
                    f"anchor sides {list(self.sides)}: give one per level (strides {list(self.strides)})"
                )
        else:
            unknown = [s for s in self.strides if s not in THEORETICAL_RECEPTIVE_FIELD]
            if unknown:
                raise KLDetConfigError(
                    f"no theoretical receptive field for strides {unknown} (known: "
                    f"{list(THEORETICAL_RECEPTIVE_FIELD)}): give the anchor sides"
                )
        if not self.ratios or min(self.ratios) <= 0 or min(self.level_sides) <= 0:
            raise KLDetConfigError(
                f"anchor ratios {list(self.ratios)} and sides {self.level_sides} must be > 0"
            )

    @property
    def level_sides(self) -> tuple[float, ...]:
        """The base side a of every level."""
        if self.sides is not None:
            return self.sides
        return tuple(THEORETICAL_RECEPTIVE_FIELD[s] * self.fraction for s in self.strides)

    @property
    def num_anchors_per_location(self) -> int:
        """A: anchors per cell (one per ratio)."""
        return len(self.ratios)

    def base_anchors(self, side: float, device: torch.device | None = None) -> Tensor:
        """(A, 4) xyxy anchors of base ``side`` centred on (0, 0), one per ratio."""
        ratios = torch.tensor(self.ratios, dtype=torch.float64)
        heights, widths = side * ratios.sqrt(), side / ratios.sqrt()
        half = torch.stack((widths, heights), dim=1) / 2
        return torch.cat((-half, half), dim=1).to(device, torch.float32)

    def __call__(self, image_shape: tuple[int, int], device: torch.device | None = None) -> list[Tensor]:
        """Anchors of an (H, W) padded image: one (h_l * w_l * A, 4) float32 xyxy tensor per level, for
        the feature sizes (ceil(H / s), ceil(W / s)). Cached per shape and device (every batch of one shape
        computes them once, as :func:`kldet.assign.point_grid`); callers must not modify them."""
        return list(_level_anchors(self, tuple(image_shape), torch.device(device or "cpu")))

    def num_anchors(self, image_shape: tuple[int, int]) -> int:
        """N: anchors of all levels for an (H, W) padded image."""
        return self.num_anchors_per_location * sum(h * w for h, w in feature_sizes(image_shape, self.strides))


def anchor_levels(anchors: Sequence[Tensor]) -> Tensor:
    """(N,) level index of every anchor of the per-level list ``anchors`` concatenated."""
    counts = torch.tensor([len(level) for level in anchors], device=anchors[0].device)
    return torch.repeat_interleave(torch.arange(len(anchors), device=counts.device), counts)


@functools.lru_cache(maxsize=16)
def _level_anchors(
    generator: RFAnchorGenerator, image_shape: tuple[int, int], device: torch.device
) -> tuple[Tensor, ...]:
    anchors = []
    for stride, side, (height, width) in zip(
        generator.strides, generator.level_sides, feature_sizes(image_shape, generator.strides), strict=True
    ):
        xs = torch.arange(width, device=device, dtype=torch.float32) * stride
        ys = torch.arange(height, device=device, dtype=torch.float32) * stride
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        shifts = torch.stack((grid_x, grid_y, grid_x, grid_y), dim=-1).reshape(-1, 1, 4)
        anchors.append((shifts + generator.base_anchors(side, device)).reshape(-1, 4))
    return tuple(anchors)
