"""Positives per ground truth by object size: how many training samples each assigner gives tiny objects.

The assigners are compared without training: FCOS on P3-P7 (the standard detector) and on P2-P6, the
ATSS-style IoU top-k assigner on P2-P6, Ali-TSM on the P2-P6 receptive-field priors, and the two-stage
model's RPN assigner (hierarchical KLD, KLDET_SPEC.md section 9) on its P2-P6 receptive-field anchors (three
per location, so its positives are anchors, not points; its ignored anchors count as none). Ali-TSM also
reads classification scores; by default they are constant, the state of a freshly initialised head
(every logit equals the classification bias), where its ranking depends only on the KLD (stage 1) and
the IoU of the shrunk priors (stage 2) — a constant of any value gives the same assignment.
"""

import math
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from kldet.assign.anchors import RFAnchorGenerator, anchor_levels
from kldet.assign.assigners import (
    AliTSMAssigner,
    ATSSAssigner,
    FCOSAssigner,
    HierarchicalKLDAssigner,
    point_grid,
)
from kldet.data.aitod import AITOD_CLASSES
from kldet.data.dataset import padded_size
from kldet.data.records import Record
from kldet.data.stats import SIZE_BIN_EDGES, SIZE_BINS, box_sizes
from kldet.data.synthetic import synthesize_image
from kldet.data.transforms import resized_size
from kldet.errors import KLDetDataError

P2_P6_STRIDES = (4, 8, 16, 32, 64)
P3_P7_STRIDES = (8, 16, 32, 64, 128)
# The classification logit of every point at initialisation: the FCOS head's bias, prior probability 0.01.
INITIAL_LOGIT = -math.log((1 - 0.01) / 0.01)


class Assignment(NamedTuple):
    """The points an assigner chose from and its choice."""

    points: Tensor  # (N, 2) x, y (for Ali-TSM the centres of the priors, for the RPN of the anchors)
    point_strides: Tensor  # (N,)
    assigned: Tensor  # (N,) long, ground-truth index or < 0 (-1 background; the RPN's -2: ignored)


class SizeBinStatistics(NamedTuple):
    """Positives of the ground truths in one AI-TOD size bin."""

    size_bin: str
    num_gts: int
    zero_fraction: float  # fraction of the ground truths with no positive point (nan when num_gts is 0)
    mean_positives: float  # positive points per ground truth (nan when num_gts is 0)


def compare_assigners(
    image_size: tuple[int, int],
    gt_boxes: Tensor,
    gt_labels: Tensor,
    num_classes: int,
    cls_logits: Tensor | None = None,
) -> dict[str, Assignment]:
    """The five assignments of one image's ground truths, keyed by a display name.

    Args:
        image_size: (H, W).
        gt_boxes: (G, 4) xyxy.
        gt_labels: (G,) long in 0..num_classes-1.
        cls_logits: (N, num_classes) Ali-TSM scores on the P2-P6 points; None for the constant
            :data:`INITIAL_LOGIT`.
    """
    p3 = point_grid(tuple(image_size), P3_P7_STRIDES, gt_boxes.device)
    p2 = point_grid(tuple(image_size), P2_P6_STRIDES, gt_boxes.device)
    if cls_logits is None:
        cls_logits = torch.full((len(p2.points), num_classes), INITIAL_LOGIT)
    # The assigners with their training defaults, as kldet-train's assigner=fcos|atss|alitsm.
    runs = {
        "FCOS P3-P7": (FCOSAssigner(), p3),
        "FCOS P2-P6": (FCOSAssigner(), p2),
        "ATSS P2-P6": (ATSSAssigner(), p2),
        "Ali-TSM P2-P6": (AliTSMAssigner(), p2),
    }
    assignments = {
        name: Assignment(grid.points, grid.point_strides, assigner(grid, cls_logits, gt_boxes, gt_labels))
        for name, (assigner, grid) in runs.items()
    }
    generator = RFAnchorGenerator()  # the two-stage model's RPN, as the spec's section 9 sets it
    levels = generator(tuple(image_size), gt_boxes.device)
    anchors = torch.cat(levels)
    strides = torch.tensor(generator.strides, device=anchors.device)[anchor_levels(levels)]
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    assignments["Hierarchical KLD P2-P6"] = Assignment(
        centres, strides, HierarchicalKLDAssigner()(anchors, gt_boxes)
    )
    return assignments


def positives_per_gt(assigned: Tensor, num_gts: int) -> Tensor:
    """(G,) number of points assigned to each ground truth, from an (N,) assignment (< 0: none)."""
    return torch.bincount(assigned[assigned >= 0], minlength=num_gts)


def size_bin_statistics(
    gt_boxes: np.ndarray | Tensor, positives: np.ndarray | Tensor
) -> list[SizeBinStatistics]:
    """Statistics of (G,) positive counts of (G, 4) xyxy boxes per AI-TOD size bin (sqrt of the area;
    a box on an edge goes to the larger bin), in the order of :data:`kldet.data.stats.SIZE_BINS`."""
    bins = np.searchsorted(SIZE_BIN_EDGES, box_sizes(np.asarray(gt_boxes)), side="right")
    positives = np.asarray(positives)
    statistics = []
    for index, name in enumerate(SIZE_BINS):
        counts = positives[bins == index]
        empty = len(counts) == 0
        statistics.append(
            SizeBinStatistics(
                name,
                len(counts),
                math.nan if empty else float((counts == 0).mean()),
                math.nan if empty else float(counts.mean()),
            )
        )
    return statistics


class Scene(NamedTuple):
    """The ground truths of one network input."""

    image_size: tuple[int, int]  # (H, W) of the input the points are laid on
    boxes: np.ndarray  # (G, 4) float32 xyxy in that input's pixels
    labels: np.ndarray  # (G,) int64 class indices


class GroundTruthPositives(NamedTuple):
    """Every ground truth of a set of scenes with its number of positives under each assigner."""

    boxes: np.ndarray  # (G, 4) float32 xyxy, in the scenes' pixels
    labels: np.ndarray  # (G,) int64
    positives: dict[str, np.ndarray]  # assigner name -> (G,) int32 positive points of each ground truth

    def statistics(self, label: int | None = None) -> dict[str, list[SizeBinStatistics]]:
        """:func:`size_bin_statistics` per assigner, of every ground truth or of class ``label`` only."""
        keep = slice(None) if label is None else self.labels == label
        return {
            name: size_bin_statistics(self.boxes[keep], counts[keep])
            for name, counts in self.positives.items()
        }


def count_positives(
    scenes: Iterable[Scene], num_classes: int, score_noise: float = 0.0, seed: int = 0
) -> GroundTruthPositives:
    """Runs :func:`compare_assigners` on each scene as it comes and keeps only the positive count of each
    ground truth, so memory grows with the ground truths, not with the points (a stream of scenes read
    from a large data set is fine).

    Args:
        score_noise: standard deviation of Gaussian noise added to the constant Ali-TSM logits (0: the
            state at initialisation), drawn from ``torch.Generator().manual_seed(seed)``.
    """
    generator = torch.Generator().manual_seed(seed)
    boxes, labels, positives = [], [], {}
    for scene in scenes:
        gt_boxes = torch.as_tensor(scene.boxes, dtype=torch.float32).reshape(-1, 4)
        logits = None
        if score_noise:
            num_priors = len(point_grid(tuple(scene.image_size), P2_P6_STRIDES, torch.device("cpu")).points)
            noise = torch.randn((num_priors, num_classes), generator=generator)
            logits = INITIAL_LOGIT + score_noise * noise
        assignments = compare_assigners(
            scene.image_size, gt_boxes, torch.as_tensor(scene.labels), num_classes, logits
        )
        for name, assignment in assignments.items():
            counts = positives_per_gt(assignment.assigned, len(gt_boxes)).to(torch.int32).numpy()
            positives.setdefault(name, []).append(counts)
        boxes.append(gt_boxes.numpy())
        labels.append(np.asarray(scene.labels, np.int64).reshape(-1))
    if not boxes:
        raise KLDetDataError("no scenes to count positives in (an empty data set?)")
    return GroundTruthPositives(
        np.concatenate(boxes),
        np.concatenate(labels),
        {name: np.concatenate(counts) for name, counts in positives.items()},
    )


def synthetic_scenes(num_images: int = 20, image_size: int = 800, seed: int = 0) -> Iterator[Scene]:
    """Scene ``i`` is image ``i`` of ``kldet.data.synthetic.generate(..., seed=seed, image_size=image_size)``
    (AI-TOD-like sizes: mostly 4-16 px, a few up to 64)."""
    for i in range(num_images):
        _, boxes, labels = synthesize_image(np.random.default_rng([seed, i]), image_size)
        yield Scene((image_size, image_size), boxes, labels)


def synthetic_assignment_statistics(
    num_images: int = 20,
    image_size: int = 800,
    seed: int = 0,
    score_noise: float = 0.0,
) -> dict[str, list[SizeBinStatistics]]:
    """Per-size-bin statistics of the five assigners over :func:`synthetic_scenes` (``score_noise``: see
    :func:`count_positives`)."""
    scenes = synthetic_scenes(num_images, image_size, seed)
    return count_positives(scenes, len(AITOD_CLASSES), score_noise, seed).statistics()


def format_statistics(statistics: dict[str, list[SizeBinStatistics]]) -> str:
    """Two markdown tables, the share of ground truths without a positive and the mean positives, with
    one row per assigner and one column per size bin."""
    first = next(iter(statistics.values()))
    header = "| assigner | " + " | ".join(f"{s.size_bin} (n={s.num_gts})" for s in first) + " |"
    rule = "|---|" + "---:|" * len(first)

    def cell(value: float, spec: str) -> str:
        return "-" if math.isnan(value) else format(value, spec)  # "-": a size bin without ground truths

    zero = [
        f"| {name} | " + " | ".join(cell(100 * s.zero_fraction, ".1f") for s in bins) + " |"
        for name, bins in statistics.items()
    ]
    mean = [
        f"| {name} | " + " | ".join(cell(s.mean_positives, ".2f") for s in bins) + " |"
        for name, bins in statistics.items()
    ]
    return "\n".join(
        [
            "Ground truths with no positive point (%)",
            "",
            header,
            rule,
            *zero,
            "",
            "Positive points per ground truth (mean)",
            "",
            header,
            rule,
            *mean,
        ]
    )


def plot_statistics(statistics: dict[str, list[SizeBinStatistics]]) -> Figure:
    """Grouped bars per size bin, one bar per assigner: no-positive share (left), mean positives (right)."""
    figure = Figure(figsize=(11, 4), layout="constrained")
    left, right = figure.subplots(1, 2)
    first = next(iter(statistics.values()))
    positions = np.arange(len(first))
    width = 0.8 / len(statistics)
    for k, (name, bins) in enumerate(statistics.items()):
        offset = positions + (k - (len(statistics) - 1) / 2) * width
        left.bar(offset, [100 * s.zero_fraction for s in bins], width, label=name)
        right.bar(offset, [s.mean_positives for s in bins], width, label=name)
    labels = [f"{s.size_bin}\n(n={s.num_gts})" for s in first]
    for axes, title in ((left, "ground truths with no positive (%)"), (right, "positives per ground truth")):
        axes.set_xticks(positions, labels)
        axes.set_title(title)
        axes.grid(axis="y", alpha=0.3)
    right.legend()
    return figure


def record_scenes(records: Iterable[Record], max_size: int | None = 800) -> Iterator[Scene]:
    """The training input of each record as a scene: its ``boxes`` scaled as
    :class:`kldet.data.transforms.DetectionTransform` ``(max_size)`` scales them (longer side to
    ``max_size``, no flips), on the image zero-padded to a multiple of 32 as a batch of one is
    (:func:`kldet.data.dataset.padded_size`). Only the boxes and the recorded size are read: no image."""
    for record in records:
        height, width = resized_size(record.height, record.width, max_size)
        scale = np.array([width / record.width, height / record.height] * 2, np.float32)
        yield Scene(padded_size([(height, width)]), record.boxes * scale, record.labels)
