"""A torch Dataset over records, and the collate function that pads a batch."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, get_worker_info

from kldet.data.records import Record
from kldet.data.transforms import DetectionTransform
from kldet.errors import KLDetDataError


def load_image(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB image decoded with OpenCV.

    EXIF orientation is not applied: annotations refer to the stored pixels, as the header sizes
    the readers check do.

    Raises:
        KLDetDataError: naming ``path``, when the file is missing or cannot be decoded.
    """
    image = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        reason = "not found" if not Path(path).is_file() else "cannot be decoded (corrupt or not an image)"
        raise KLDetDataError(f"image file {path} {reason}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class DetectionDataset(Dataset):
    """``(image, target)`` pairs of ``records``, transformed by ``transform``.

    ``image`` is (3, h, w) float32 normalised; ``target`` holds

    - ``"boxes"`` (G, 4) float32 ``xyxy`` and ``"labels"`` (G,) int64 in the transformed image;
    - ``"image_id"`` int, ``"file_name"`` str;
    - ``"orig_size"`` (H0, W0), ``"size"`` (h, w) after resizing (before batch padding), and
      ``"scale"`` (sx, sy) = resized / original, so ``prediction / scale`` is in original pixels;
    - ``"gt_boxes"`` (M, 4) float64, ``"gt_labels"`` (M,), ``"gt_areas"`` (M,) float64, ``"gt_ignore"``
      (M,) bool: the record's evaluation ground truth in original pixels (see :class:`Record`).

    An image without objects gives empty (0, 4) and (0,) tensors.
    """

    def __init__(self, records: Sequence[Record], transform: DetectionTransform | None = None):
        self.records = list(records)
        self.transform = transform if transform is not None else DetectionTransform()
        self._augmentation_seed: int | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        self._seed_augmentation()
        record = self.records[index]
        image = load_image(record.image_path)
        if image.shape[:2] != (record.height, record.width):
            raise KLDetDataError(
                f"image file {record.image_path} (image id {record.image_id}) is {image.shape[1]}x{image.shape[0]}, "
                f"but was {record.width}x{record.height} when the data set was read"
            )
        tensor, boxes, labels, scale = self.transform(image, record.boxes, record.labels)
        target = {
            "boxes": boxes,
            "labels": labels,
            "image_id": record.image_id,
            "file_name": record.image_path.name,
            "orig_size": (record.height, record.width),
            "size": tuple(tensor.shape[1:]),
            "scale": scale,
            "gt_boxes": torch.from_numpy(record.gt_boxes),
            "gt_labels": torch.from_numpy(record.gt_labels),
            "gt_areas": torch.from_numpy(record.gt_areas),
            "gt_ignore": torch.from_numpy(record.gt_ignore),
        }
        return tensor, target

    def _seed_augmentation(self) -> None:
        """Seeds the augmentation from torch's random state: a DataLoader worker's own seed, or in the
        main process torch's initial seed (what ``seed_everything`` / ``torch.manual_seed`` set).

        albumentations keeps a random state of its own that global seeds do not touch, so without this a
        run's flips differ from run to run whatever its seed, and every forked worker would flip the same
        way. (OpenCV's thread count is left alone: cv2.setNumThreads in a forked worker deadlocks once
        the parent has used OpenCV's thread pool.)
        """
        info = get_worker_info()
        seed = info.seed if info is not None else torch.initial_seed()
        if seed != self._augmentation_seed:
            self._augmentation_seed = seed
            self.transform.reseed(seed % 2**32)


def collate(batch: Sequence[tuple[Tensor, dict]], size_divisor: int = 32) -> tuple[Tensor, list[dict]]:
    """Stacks images zero-padded at the bottom and right to a common size divisible by ``size_divisor``.

    Args:
        batch: ``(image (3, h_i, w_i), target)`` pairs from :class:`DetectionDataset`.

    Returns:
        images (B, 3, Hp, Wp) with Hp, Wp the smallest multiples of ``size_divisor`` that hold
        every image, and the targets as a list.
    """
    images = [image for image, _ in batch]
    height = math.ceil(max(image.shape[1] for image in images) / size_divisor) * size_divisor
    width = math.ceil(max(image.shape[2] for image in images) / size_divisor) * size_divisor
    padded = images[0].new_zeros((len(images), images[0].shape[0], height, width))
    for i, image in enumerate(images):
        padded[i, :, : image.shape[1], : image.shape[2]].copy_(image)
    return padded, [target for _, target in batch]
