"""A torch Dataset over records, and the collate function that pads a batch."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, get_worker_info

from kldet.data.images import load_image
from kldet.data.records import Record
from kldet.data.transforms import DetectionTransform
from kldet.data.windows import crop_boxes
from kldet.errors import KLDetDataError

logger = logging.getLogger(__name__)


class DetectionDataset(Dataset):
    """``(image, target)`` pairs of ``records``, transformed by ``transform``.

    ``image`` is (3, h, w) float32 normalised; ``target`` holds

    - ``"boxes"`` (G, 4) float32 ``xyxy`` and ``"labels"`` (G,) int64 in the transformed image;
    - ``"image_id"`` int, ``"file_name"`` str;
    - ``"orig_size"`` (H0, W0), ``"size"`` (h, w) after resizing (before batch padding), and
      ``"scale"`` (sx, sy) = resized / original, so ``prediction / scale`` is in original pixels;
    - ``"gt_boxes"`` (M, 4) float64, ``"gt_labels"`` (M,), ``"gt_areas"`` (M,) float64, ``"gt_ignore"``
      (M,) bool: the record's evaluation ground truth in original pixels (see :class:`Record`);
    - ``"window"``: ``(x0, y0, x1, y1)`` in original pixels when the transform cut a crop
      (``crop_size``), else None. The crop's boxes follow it; so does the ground truth, ignored boxes
      included: clipped to the window (still in original pixels), by the same visibility rule
      (:func:`kldet.data.windows.crop_boxes`), areas scaled by the visible fraction.

    An image without objects gives empty (0, 4) and (0,) tensors.

    Readers check image headers only (unless asked to decode), so a truncated or corrupt file can first
    fail here. By default that raises a :class:`~kldet.errors.KLDetDataError` naming the file. With
    ``skip_unreadable`` the sample is replaced by the next readable record, each unreadable file is logged
    once per process, and ``target["skipped_file"]`` names the requested file that was skipped (None
    otherwise), for counting per epoch. Evaluation counts each image id once, so a replacement is not
    evaluated twice.
    """

    def __init__(
        self,
        records: Sequence[Record],
        transform: DetectionTransform | None = None,
        skip_unreadable: bool = False,
    ):
        self.records = list(records)
        self.transform = transform if transform is not None else DetectionTransform()
        self.skip_unreadable = skip_unreadable
        self._unreadable: set[int] = set()
        self._augmentation_seed: int | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        self._seed_augmentation()
        for offset in range(len(self.records)):
            candidate = (index + offset) % len(self.records)
            image = self._load(candidate)
            if image is not None:
                skipped = None if offset == 0 else self.records[index].image_path.name
                return self._sample(self.records[candidate], image, skipped)
        raise KLDetDataError(f"none of the {len(self.records)} images of the data set can be decoded")

    def _load(self, index: int) -> np.ndarray | None:
        """The record's (H, W, 3) pixels; None for a known or newly found unreadable file when skipping."""
        if index in self._unreadable:
            return None
        record = self.records[index]
        try:
            image = load_image(record.image_path)
            if image.shape[:2] != (record.height, record.width):
                raise KLDetDataError(
                    f"image file {record.image_path} (image id {record.image_id}) is "
                    f"{image.shape[1]}x{image.shape[0]}, but was {record.width}x{record.height} when the "
                    "data set was read"
                )
        except KLDetDataError as error:
            if not self.skip_unreadable:
                raise KLDetDataError(
                    f"{error} (found while loading a batch; `kldet-data check ... decode=true` or "
                    "data.decode_check=true finds every such file before training, "
                    "data.lenient=true skips them)"
                ) from None
            self._unreadable.add(index)
            logger.warning("%s: skipped (lenient), the next readable image takes its place", error)
            return None
        return image

    def _sample(self, record: Record, image: np.ndarray, skipped_file: str | None) -> tuple[Tensor, dict]:
        window = self.transform.sample_window(record.height, record.width, record.boxes)
        tensor, boxes, labels, scale = self.transform(image, record.boxes, record.labels, window)
        gt_boxes, gt_labels, gt_areas, gt_ignore = (
            record.gt_boxes,
            record.gt_labels,
            record.gt_areas,
            record.gt_ignore,
        )
        if window is not None:
            clipped, visible, kept = crop_boxes(gt_boxes, window, self.transform.crop_min_visibility)
            gt_boxes, gt_labels = clipped[kept], gt_labels[kept]
            gt_areas, gt_ignore = gt_areas[kept] * visible[kept], gt_ignore[kept]
        target = {
            "boxes": boxes,
            "labels": labels,
            "image_id": record.image_id,
            "file_name": record.image_path.name,
            "orig_size": (record.height, record.width),
            "size": tuple(tensor.shape[1:]),
            "scale": scale,
            "gt_boxes": torch.from_numpy(gt_boxes),
            "gt_labels": torch.from_numpy(gt_labels),
            "gt_areas": torch.from_numpy(gt_areas),
            "gt_ignore": torch.from_numpy(gt_ignore),
            "window": window,
            "skipped_file": skipped_file,
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


#: Images are zero-padded at the bottom/right to a multiple of this: the default of the data module, the
#: Predictor and a checkpoint without its own ``size_divisor``.
SIZE_DIVISOR = 32


def padded_size(sizes: Sequence[tuple[int, int]], size_divisor: int = SIZE_DIVISOR) -> tuple[int, int]:
    """``(H, W)``: the smallest multiples of ``size_divisor`` that hold every ``(h_i, w_i)`` of ``sizes``."""
    height = math.ceil(max(h for h, _ in sizes) / size_divisor) * size_divisor
    width = math.ceil(max(w for _, w in sizes) / size_divisor) * size_divisor
    return height, width


def collate(
    batch: Sequence[tuple[Tensor, dict]], size_divisor: int = SIZE_DIVISOR
) -> tuple[Tensor, list[dict]]:
    """Stacks images zero-padded at the bottom and right to a common size divisible by ``size_divisor``.

    Args:
        batch: ``(image (3, h_i, w_i), target)`` pairs from :class:`DetectionDataset`.

    Returns:
        images (B, 3, Hp, Wp) with ``(Hp, Wp)`` the :func:`padded_size` of the images, and the targets
        as a list.
    """
    images = [image for image, _ in batch]
    height, width = padded_size([tuple(image.shape[1:]) for image in images], size_divisor)
    padded = images[0].new_zeros((len(images), images[0].shape[0], height, width))
    for i, image in enumerate(images):
        padded[i, :, : image.shape[1], : image.shape[2]].copy_(image)
    return padded, [target for _, target in batch]
