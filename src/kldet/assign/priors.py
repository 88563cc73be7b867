"""Feature-map points and the receptive-field priors that Ali-TSM assigns with (KLDET_SPEC.md section 2)."""

import math

import torch
from torch import Tensor

# Theoretical receptive field in pixels of a ResNet-50 FPN level, keyed by its stride.
THEORETICAL_RECEPTIVE_FIELD = {4: 35, 8: 91, 16: 267, 32: 427, 64: 555, 128: 811}


def feature_sizes(image_size: tuple[int, int], strides: tuple[int, ...]) -> list[tuple[int, int]]:
    """Feature map (h, w) of every stride for an (H, W) input: (ceil(H / s), ceil(W / s))."""
    height, width = image_size
    return [(math.ceil(height / s), math.ceil(width / s)) for s in strides]


def points_and_strides(
    image_size: tuple[int, int],
    strides: tuple[int, ...] = (4, 8, 16, 32, 64),
    device: torch.device | None = None,
) -> tuple[Tensor, Tensor]:
    """Points of all levels: (N, 2) float32 (x, y) and their strides (N,) float32.

    Level by level, row-major within a level; cell (i, j) of stride s is the point (j*s + s//2, i*s + s//2).
    """
    points, point_strides = [], []
    for stride, (h, w) in zip(strides, feature_sizes(image_size, strides), strict=True):
        xs = torch.arange(w, device=device, dtype=torch.float32) * stride + stride // 2
        ys = torch.arange(h, device=device, dtype=torch.float32) * stride + stride // 2
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), dim=-1))
        point_strides.append(torch.full((h * w,), float(stride), device=device))
    return torch.cat(points), torch.cat(point_strides)


def receptive_field_priors(
    image_size: tuple[int, int],
    strides: tuple[int, ...] = (4, 8, 16, 32, 64),
    fraction: float = 0.5,
    device: torch.device | None = None,
) -> tuple[Tensor, Tensor]:
    """Points (N, 2) and square priors (N, 4) xyxy of side TRF(stride) * fraction centred on them.

    An 800 x 800 image with strides (4, 8, 16, 32, 64) has N = 53,294 points.
    """
    unknown = [s for s in strides if s not in THEORETICAL_RECEPTIVE_FIELD]
    if unknown:
        raise ValueError(
            f"no theoretical receptive field for strides {unknown}; known: {list(THEORETICAL_RECEPTIVE_FIELD)}"
        )
    points, point_strides = points_and_strides(image_size, strides, device)
    half_sides = [THEORETICAL_RECEPTIVE_FIELD[s] * fraction / 2 for s in strides]
    counts = [h * w for h, w in feature_sizes(image_size, strides)]
    half_side = torch.tensor(half_sides, device=points.device).repeat_interleave(
        torch.tensor(counts, device=points.device)
    )[:, None]
    return points, torch.cat((points - half_side, points + half_side), dim=-1)
