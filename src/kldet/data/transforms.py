"""Box-aware resizing, flipping and normalisation (albumentations), from a decoded image to model input."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

# albumentations asks PyPI for a newer version on import; training machines are often offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402

from kldet.model.normalization import InputNormalization  # noqa: E402


def resize_policy(max_size: int | None) -> dict[str, str | int | None]:
    """How :class:`DetectionTransform` ``(max_size)`` scales images, as checkpoints record it.

    ``{"resize": "longer_side", "max_size": M}``: every image is scaled, up or down, so that its longer
    side is M pixels, keeping the aspect ratio; ``{"resize": "none", "max_size": None}``: native pixels.
    """
    return {"resize": "longer_side" if max_size else "none", "max_size": max_size or None}


def recorded_resize_policy(preprocess: Mapping[str, Any]) -> dict[str, Any] | None:
    """The :func:`resize_policy` a checkpoint's ``preprocess`` records: its own ``"resize"`` and
    ``"max_size"``, or what ``"max_size"`` alone meant in checkpoints written before ``"resize"`` existed;
    None when it records neither (a checkpoint written without preprocessing settings)."""
    if "resize" in preprocess:
        return {"resize": preprocess["resize"], "max_size": preprocess.get("max_size")}
    if "max_size" in preprocess:
        return resize_policy(preprocess["max_size"])
    return None


def resized_size(height: int, width: int, max_size: int | None) -> tuple[int, int]:
    """``(h, w)`` of an image scaled so its longer side is ``max_size``, keeping the aspect ratio.

    Small images are scaled up, as MMDetection's ``Resize(keep_ratio=True)`` does; None keeps the size.
    """
    if max_size is None:
        return height, width
    scale = max_size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


class DetectionTransform:
    """Resize to fit ``max_size``, random flips and 90-degree rotations, normalise, to tensor.

    Boxes follow the image; they are clipped to it and dropped only when they become empty, so
    4-pixel objects survive any resize. Padding to a multiple of 32 happens in
    :func:`kldet.data.dataset.collate`, after batching.

    Args:
        max_size: longer image side after resizing; None keeps the original size.
        hflip, vflip, rotate90: probability of a horizontal flip, vertical flip and a rotation by a
            random multiple of 90 degrees (0 for evaluation).
        normalization: channel order, mean and std of the model input (the backbone style's, see
            :func:`kldet.model.input_normalization`; default pytorch style: RGB, ImageNet mean/std).
    """

    def __init__(
        self,
        max_size: int | None = 800,
        hflip: float = 0.0,
        vflip: float = 0.0,
        rotate90: float = 0.0,
        normalization: InputNormalization = InputNormalization(),
    ):
        self.max_size = max_size
        self.normalization = normalization
        moves = [A.LongestMaxSize(max_size=max_size, interpolation=cv2.INTER_LINEAR)] if max_size else []
        if hflip:
            moves.append(A.HorizontalFlip(p=hflip))
        if vflip:
            moves.append(A.VerticalFlip(p=vflip))
        if rotate90:
            moves.append(A.RandomRotate90(p=rotate90))
        # Without a geometric step the boxes pass through untouched (albumentations warns otherwise).
        self.moves_boxes = bool(moves)
        bbox_params = A.BboxParams(
            format="pascal_voc",
            label_fields=["labels"],
            clip=True,
            filter_invalid_bboxes=True,
            min_area=0.0,
            min_visibility=0.0,
            min_width=0.0,
            min_height=0.0,
        )
        self.pipeline = A.Compose(
            [
                *moves,
                A.Normalize(mean=normalization.mean, std=normalization.std, max_pixel_value=1.0),
                ToTensorV2(),
            ],
            bbox_params=bbox_params if moves else None,
        )

    def __call__(
        self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray
    ) -> tuple[Tensor, Tensor, Tensor, tuple[float, float]]:
        """Transforms one image and its boxes.

        Args:
            image: (H, W, 3) uint8 RGB.
            boxes: (G, 4) ``xyxy`` boxes in ``image`` pixels.
            labels: (G,) int labels.

        Returns:
            image (3, h, w) float32 normalised (channels in ``normalization.channel_order``), boxes (G', 4) float32 in its pixels, labels (G',)
            int64 (G' <= G: boxes that became empty are dropped), and the resize factors
            ``(sx, sy)`` = resized / original size.
        """
        height, width = image.shape[:2]
        image = self.normalization.reorder(image)
        boxes, labels = np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64).reshape(-1)
        if self.moves_boxes:
            out = self.pipeline(image=image, bboxes=boxes, labels=labels)
            boxes, labels = out["bboxes"], out["labels"]
        else:
            out = self.pipeline(image=image)
        new_height, new_width = resized_size(height, width, self.max_size)
        return (
            out["image"],
            torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4)),
            torch.as_tensor(np.asarray(labels, np.int64).reshape(-1)),
            (new_width / width, new_height / height),
        )

    def reseed(self, seed: int) -> None:
        """Restarts the random flips and rotations from ``seed`` (each DataLoader worker needs its own)."""
        self.pipeline.set_random_seed(seed)
