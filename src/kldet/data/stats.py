"""Counts that describe a data set: objects per class and AI-TOD object-size bins."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kldet.data.records import DetectionSet

#: AI-TOD size bins on box area, with edges on sqrt(area): [0, 8), [8, 16), [16, 32), [32, inf) pixels.
SIZE_BINS = ("very tiny", "tiny", "small", "medium")
SIZE_BIN_EDGES = (8.0, 16.0, 32.0)


def box_sizes(boxes: np.ndarray) -> np.ndarray:
    """(N,) sqrt of the area of (N, 4) ``xyxy`` boxes: the size AI-TOD's bins are defined on."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))


def size_bin_counts(boxes: np.ndarray) -> dict[str, int]:
    """Number of (N, 4) ``xyxy`` boxes in each of :data:`SIZE_BINS` (a box on an edge goes to the larger bin)."""
    bins = np.searchsorted(SIZE_BIN_EDGES, box_sizes(boxes), side="right")
    return dict(zip(SIZE_BINS, np.bincount(bins, minlength=len(SIZE_BINS)).tolist(), strict=True))


@dataclass
class DataSummary:
    """What ``kldet-data check`` prints about a data set."""

    images: int
    empty_images: int
    objects: int
    ignored: int
    class_counts: dict[str, int]
    size_bins: dict[str, int]
    mean_size: float
    median_size: float


def summarize(dataset: DetectionSet) -> DataSummary:
    """Counts over the records of ``dataset`` (sizes are sqrt of box area, in original pixels)."""
    records = dataset.records
    boxes = np.concatenate([r.boxes for r in records]) if records else np.zeros((0, 4), np.float32)
    labels = np.concatenate([r.labels for r in records]) if records else np.zeros(0, np.int64)
    per_class = np.bincount(labels, minlength=len(dataset.classes)).tolist()
    sizes = box_sizes(boxes)
    return DataSummary(
        images=len(records),
        empty_images=sum(len(r.boxes) == 0 for r in records),
        objects=len(boxes),
        ignored=sum(int(r.gt_ignore.sum()) for r in records),
        class_counts=dict(zip(dataset.classes, per_class, strict=True)),
        size_bins=size_bin_counts(boxes),
        mean_size=float(sizes.mean()) if len(sizes) else float("nan"),
        median_size=float(np.median(sizes)) if len(sizes) else float("nan"),
    )
