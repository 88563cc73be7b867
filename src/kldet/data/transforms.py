"""Box-aware resizing, flipping and normalisation (albumentations), from a decoded image to model input."""

from __future__ import annotations

import math
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

from kldet.data.windows import Window, crop_boxes  # noqa: E402
from kldet.errors import KLDetConfigError  # noqa: E402
from kldet.model.normalization import InputNormalization  # noqa: E402


def resize_policy(
    max_size: int | None, crop_size: int | None = None, overlap: float | None = None
) -> dict[str, str | int | float | None]:
    """How :class:`DetectionTransform` ``(max_size, crop_size=...)`` made training images, as checkpoints record it.

    ``{"resize": "longer_side", "max_size": M}``: every image is scaled, up or down, so that its longer
    side is M pixels, keeping the aspect ratio; ``{"resize": "none", "max_size": None}``: native pixels;
    ``{"resize": "crop", "max_size": None, "crop_size": N, "overlap": O}``: native pixels, trained on random
    N x N crops and evaluated by sliced prediction with tiles of N px overlapping by O
    (:func:`kldet.inference.tiling.make_tiles`), as kldet-predict then predicts by default.
    """
    if crop_size:
        return {"resize": "crop", "max_size": None, "crop_size": crop_size, "overlap": overlap}
    return {"resize": "longer_side" if max_size else "none", "max_size": max_size or None}


def recorded_resize_policy(preprocess: Mapping[str, Any]) -> dict[str, Any] | None:
    """The :func:`resize_policy` a checkpoint's ``preprocess`` records: its own ``"resize"`` and
    ``"max_size"`` (and ``"crop_size"``, ``"overlap"`` for crops), or what ``"max_size"`` alone meant in
    checkpoints written before ``"resize"`` existed; None when it records neither (a checkpoint written
    without preprocessing settings)."""
    if "resize" in preprocess:
        keys = (
            ("resize", "max_size", "crop_size", "overlap")
            if preprocess["resize"] == "crop"
            else ("resize", "max_size")
        )
        return {key: preprocess.get(key) for key in keys}
    if "max_size" in preprocess:
        return resize_policy(preprocess["max_size"])
    return None


def check_crop_settings(max_size: int | None, crop_size: int | None) -> None:
    """Crops are taken at native resolution, so ``crop_size`` and ``max_size`` exclude each other.

    Raises:
        KLDetConfigError: both are set (naming the key to clear).
    """
    if crop_size is not None and max_size is not None:
        raise KLDetConfigError(
            f"data.crop_size={crop_size} with data.max_size={max_size}: crops are cut at native resolution, "
            "so set data.max_size=null (or data.crop_size=null to resize whole images instead)"
        )


def sample_crop(
    height: int,
    width: int,
    boxes: np.ndarray,
    crop_size: int,
    object_fraction: float,
    rng: np.random.Generator,
) -> Window:
    """A random ``crop_size`` window of a ``height`` x ``width`` image, ``(x0, y0, x1, y1)`` (x1, y1 exclusive).

    With probability ``object_fraction`` (and when there are boxes) the window is placed around one box
    drawn uniformly over the boxes: uniformly over the window positions that contain that box whole (so the
    object lands anywhere in the window, not always at its centre); a box larger than the window gets the
    window centred on it. Otherwise the window is uniform over all positions. Along an axis no longer than
    ``crop_size`` the window is the whole axis, so an image no larger than the crop is returned whole
    without drawing anything.

    Args:
        height, width: image size in pixels.
        boxes: (G, 4) ``xyxy`` boxes in image pixels.
        crop_size: window side in pixels.
        object_fraction: share of windows placed around a box, in [0, 1].
        rng: the random generator (:meth:`DetectionTransform.reseed` seeds the transform's).
    """
    crop_w, crop_h = min(crop_size, width), min(crop_size, height)
    if (crop_w, crop_h) == (width, height):
        return 0, 0, width, height
    if len(boxes) and rng.random() < object_fraction:
        box = boxes[rng.integers(len(boxes))]
        x0 = _start_around(float(box[0]), float(box[2]), crop_w, width, rng)
        y0 = _start_around(float(box[1]), float(box[3]), crop_h, height, rng)
    else:
        x0 = int(rng.integers(width - crop_w + 1))
        y0 = int(rng.integers(height - crop_h + 1))
    return x0, y0, x0 + crop_w, y0 + crop_h


def _start_around(low: float, high: float, crop: int, length: int, rng: np.random.Generator) -> int:
    """A window start on ``[0, length - crop]`` whose window holds ``[low, high]``: uniform over those
    starts, or the one centring the interval when it is longer than the window."""
    first, last = max(0, math.ceil(high) - crop), min(math.floor(low), length - crop)
    if first > last:
        return min(max(round((low + high - crop) / 2), 0), length - crop)
    return int(rng.integers(first, last + 1))


def resized_size(height: int, width: int, max_size: int | None) -> tuple[int, int]:
    """``(h, w)`` of an image scaled so its longer side is ``max_size``, keeping the aspect ratio.

    Small images are scaled up, as MMDetection's ``Resize(keep_ratio=True)`` does; None keeps the size.
    """
    if max_size is None:
        return height, width
    scale = max_size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


class DetectionTransform:
    """Resize to fit ``max_size`` or cut a random ``crop_size`` window, random flips and 90-degree
    rotations, normalise, to tensor.

    Boxes follow the image; they are clipped to it and dropped only when they become empty, so
    4-pixel objects survive any resize. A crop (:func:`sample_crop`) keeps the boxes that keep at least
    ``crop_min_visibility`` of their area (:func:`crop_boxes`). Padding to a multiple of 32 happens in
    :func:`kldet.data.dataset.collate`, after batching.

    Args:
        max_size: longer image side after resizing; None keeps the original size.
        crop_size: side of the random window cut from images larger than it, at native resolution
            (``max_size`` must then be None); None: whole images.
        crop_min_visibility: visible fraction of its area a box needs to stay in a crop.
        crop_object_fraction: share of crops placed around a random object (the rest are uniform).
        hflip, vflip, rotate90: probability of a horizontal flip, vertical flip and a rotation by a
            random multiple of 90 degrees (0 for evaluation).
        normalization: channel order, mean and std of the model input (the backbone style's, see
            :func:`kldet.model.input_normalization`; default pytorch style: RGB, ImageNet mean/std).
    """

    def __init__(
        self,
        max_size: int | None = 800,
        crop_size: int | None = None,
        crop_min_visibility: float = 0.5,
        crop_object_fraction: float = 0.5,
        hflip: float = 0.0,
        vflip: float = 0.0,
        rotate90: float = 0.0,
        normalization: InputNormalization = InputNormalization(),
    ):
        check_crop_settings(max_size, crop_size)
        self.max_size = max_size
        self.crop_size, self.crop_min_visibility = crop_size, crop_min_visibility
        self.crop_object_fraction = crop_object_fraction
        self.rng = np.random.default_rng()
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
            [*moves, ToTensorV2()],
            bbox_params=bbox_params if moves else None,
        )

    def sample_window(self, height: int, width: int, boxes: np.ndarray) -> Window | None:
        """The crop of a ``height`` x ``width`` image with ``boxes`` (:func:`sample_crop` on this
        transform's generator); None without ``crop_size``."""
        if self.crop_size is None:
            return None
        return sample_crop(height, width, boxes, self.crop_size, self.crop_object_fraction, self.rng)

    def __call__(
        self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, window: Window | None = None
    ) -> tuple[Tensor, Tensor, Tensor, tuple[float, float]]:
        """Transforms one image and its boxes.

        Args:
            image: (H, W, 3) uint8 RGB.
            boxes: (G, 4) ``xyxy`` boxes in ``image`` pixels.
            labels: (G,) int labels.
            window: the crop ``(x0, y0, x1, y1)`` to cut (:meth:`sample_window`); None: one drawn here when
                ``crop_size`` is set.

        Returns:
            image (3, h, w) float32 normalised (channels in ``normalization.channel_order``), boxes (G', 4)
            float32 in its pixels, labels (G',) int64 (G' <= G: boxes that became empty, or kept too
            little of their area in a crop, are dropped), and the resize factors ``(sx, sy)`` = resized /
            original size (1 for a crop).
        """
        boxes, labels = np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64).reshape(-1)
        if window is None:
            window = self.sample_window(*image.shape[:2], boxes)
        if window is not None:
            x0, y0, x1, y1 = window
            clipped, _, kept = crop_boxes(boxes, window, self.crop_min_visibility)
            image = np.ascontiguousarray(image[y0:y1, x0:x1])
            boxes, labels = (clipped[kept] - [x0, y0, x0, y0]).astype(np.float32), labels[kept]
        height, width = image.shape[:2]
        if self.moves_boxes:
            out = self.pipeline(image=image, bboxes=boxes, labels=labels)
            boxes, labels = out["bboxes"], out["labels"]
        else:
            out = self.pipeline(image=image)
        new_height, new_width = resized_size(height, width, self.max_size)
        return (
            # Normalised as the Predictor normalises tiles (the same float32 operations), so evaluation
            # inputs equal kldet-predict's to the bit.
            self.normalization.normalize(out["image"].float()),
            torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4)),
            torch.as_tensor(np.asarray(labels, np.int64).reshape(-1)),
            (new_width / width, new_height / height),
        )

    def reseed(self, seed: int) -> None:
        """Restarts the random crops, flips and rotations from ``seed`` (each DataLoader worker needs its own)."""
        self.pipeline.set_random_seed(seed)
        self.rng = np.random.default_rng(seed)
