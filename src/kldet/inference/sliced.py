"""Sliced inference: stream tiles of many images through a detector in batches and merge them per image.

The merge rule, in two steps:

1. **Ownership.** A tile keeps only the detections whose box centre lies in its core (see
   :mod:`kldet.inference.tiling`). The cores partition the image, so an object seen whole by two tiles is
   kept by exactly one; and a copy of an object truncated by an interior tile edge has its centre outside
   that tile's core, so it is dropped while the neighbour that sees the object whole keeps it. This holds
   for objects up to ``overlap * tile_size`` pixels in each direction (160 px with the defaults, far above
   tiny objects); a larger object may be cut in every tile that holds it, and step 2 merges the pieces
   that overlap enough.
2. **Class-wise NMS across tiles** (``torchvision.ops.batched_nms``) for the two copies of one object that
   two tiles predicted with slightly different centres on either side of the core boundary. Two boxes from
   different tiles can only overlap if one of them crosses its core's boundary, and the other then lies
   within that box's size of the boundary, so NMS runs on that band alone: merging stays fast for a scene
   with hundreds of thousands of boxes, and gives the same result as NMS over all boxes when each tile's
   detections were already NMS-ed at the same IoU threshold (the detector's own post-processing).

``merge="nmm"`` replaces step 2 by SAHI's greedy non-maximum *merging* (:func:`greedy_nmm`) for users who
want it: boxes matching a higher-scored box of their class are merged into it (the enclosing box) instead
of being dropped, with IoU or IoS (intersection over the smaller box) as the match. Step 1 still applies
(SAHI has no ownership): truncated copies are dropped as before, and what NMM merges are the pieces of
objects larger than the overlap and the copies on either side of a core border. It runs over all boxes
of the image, not only those near core borders: with IoS a box can match another box of its own tile.
"""

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import batched_nms

from kldet.inference.tiling import Tile, make_tiles, tile_starts
from kldet.inference.types import DetectFn, Detections, ImageSource, Source


def owned_detections(detections: Detections, tile: Tile) -> Detections:
    """Shift one tile's detections to image pixels and keep those centred in the tile's core.

    Args:
        detections: "boxes" (K, 4) xyxy in tile pixels, "scores" (K,), "labels" (K,).
        tile: where the tile lies in the image, and its core.

    Returns:
        the kept (K', ...) detections in image pixels (on the CPU), plus "core_margin" (K',): the distance
        from each box to the nearest finite side of the core, negative when the box crosses it.
    """
    boxes = detections["boxes"].detach().float().cpu() + torch.tensor([tile.x0, tile.y0, tile.x0, tile.y0])
    cx0, cy0, cx1, cy1 = tile.core
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    owned = (centres[:, 0] >= cx0) & (centres[:, 0] < cx1) & (centres[:, 1] >= cy0) & (centres[:, 1] < cy1)
    boxes = boxes[owned]
    core = torch.tensor([cx0, cy0, cx1, cy1])
    sides = torch.cat([boxes[:, :2] - core[:2], core[2:] - boxes[:, 2:]], dim=1)
    return {
        "boxes": boxes,
        "scores": detections["scores"].detach().float().cpu()[owned],
        "labels": detections["labels"].detach().long().cpu()[owned],
        "core_margin": sides.amin(dim=1),
    }


#: ``merge`` values: class-wise NMS (the exact default) or greedy non-maximum merging (SAHI's NMM).
MERGE_MODES = ("nms", "nmm")
#: ``match`` values of NMM: intersection over union, or over the smaller box's area.
MATCH_METRICS = ("iou", "ios")


def merge_tiles(
    parts: list[Detections],
    iou_thresh: float = 0.5,
    max_detections: int | None = None,
    merge: str = "nms",
    match: str = "iou",
) -> Detections:
    """Merge the :func:`owned_detections` of all tiles of one image (step 2 of the module's rule).

    Args:
        parts: per tile, "boxes" (K_t, 4), "scores" (K_t,), "labels" (K_t,), "core_margin" (K_t,).
        iou_thresh: class-wise NMS IoU threshold across tiles; with ``merge="nmm"`` the match threshold.
        max_detections: keep at most this many boxes, highest scores first (``None``: all).
        merge: ``"nms"`` (the default rule) or ``"nmm"`` (:func:`greedy_nmm` over all boxes).
        match: the NMM match metric, ``"iou"`` or ``"ios"`` (only ``"iou"`` with ``merge="nms"``).

    Returns:
        "boxes" (K, 4), "scores" (K,), "labels" (K,) sorted by decreasing score.
    """
    if merge not in MERGE_MODES or match not in MATCH_METRICS or (merge == "nms" and match != "iou"):
        raise ValueError(f"merge={merge!r} match={match!r}: merge is nms or nmm; match=ios needs merge=nmm")
    boxes = torch.cat([p["boxes"] for p in parts])
    scores = torch.cat([p["scores"] for p in parts])
    labels = torch.cat([p["labels"] for p in parts])
    if merge == "nmm":
        merged = greedy_nmm(boxes, scores, labels, iou_thresh, match)
        return {key: value[:max_detections] for key, value in merged.items()}
    margins = torch.cat([p["core_margin"] for p in parts])
    crossing = margins < 0
    reach = (boxes[crossing, 2:] - boxes[crossing, :2]).max().item() if crossing.any() else 0.0
    near = (margins < reach).nonzero().squeeze(1)
    kept_near = near[batched_nms(boxes[near], scores[near], labels[near], iou_thresh)]
    keep = torch.cat([(margins >= reach).nonzero().squeeze(1), kept_near])
    keep = keep[scores[keep].argsort(descending=True, stable=True)][:max_detections]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


def greedy_nmm(
    boxes: Tensor, scores: Tensor, labels: Tensor, thresh: float, match: str = "iou"
) -> Detections:
    """Greedy non-maximum merging, class by class (SAHI's ``greedy_nmm``, without its re-check).

    Boxes are visited by decreasing score (ties: input order). Each box not yet merged is kept and
    absorbs every not yet merged box of its class whose match with it exceeds ``thresh``; a kept box
    becomes the enclosing box of itself and what it absorbed, with its own (the highest) score. (SAHI
    re-checks each absorbed box against the growing box and drops those that no longer match; here all
    are merged, so the result does not depend on the order of absorption.)

    Only boxes that intersect can match, so the candidate pairs come from a sweep over boxes sorted by
    their left edge: the work grows with the number of boxes that overlap in x, not with N².

    Args:
        boxes: (N, 4) xyxy.
        scores: (N,).
        labels: (N,) class of each box; boxes of different classes never merge.
        thresh: a pair matches when its metric is above this.
        match: ``"iou"`` (intersection over union) or ``"ios"`` (intersection over the smaller area).

    Returns:
        "boxes" (K, 4), "scores" (K,), "labels" (K,) sorted by decreasing score (dtype of the inputs).
    """
    count = len(boxes)
    xyxy, label = boxes.double().numpy(), labels.numpy()
    first, second = _intersecting_pairs(xyxy, label)
    lo, hi = np.maximum(xyxy[first, :2], xyxy[second, :2]), np.minimum(xyxy[first, 2:], xyxy[second, 2:])
    inter = np.prod(hi - lo, axis=1)
    area = np.prod(xyxy[:, 2:] - xyxy[:, :2], axis=1)
    if match == "iou":
        metric = inter / (area[first] + area[second] - inter)
    else:
        metric = inter / np.minimum(area[first], area[second])
    matched = metric > thresh
    first, second = first[matched], second[matched]
    # Both directions, grouped by box: neighbours[start[i]:start[i + 1]] match box i.
    source, neighbours = np.concatenate([first, second]), np.concatenate([second, first])
    by_source = np.argsort(source, kind="stable")
    neighbours = neighbours[by_source]
    start = np.searchsorted(source[by_source], np.arange(count + 1))
    group = np.full(count, -1)
    kept = []
    for index in torch.sort(scores, descending=True, stable=True).indices.tolist():
        if group[index] >= 0:
            continue
        members = neighbours[start[index] : start[index + 1]]
        members = members[group[members] < 0]
        group[index] = group[members] = index
        kept.append(index)
    union = xyxy.copy()
    np.minimum.at(union[:, 0], group, xyxy[:, 0])
    np.minimum.at(union[:, 1], group, xyxy[:, 1])
    np.maximum.at(union[:, 2], group, xyxy[:, 2])
    np.maximum.at(union[:, 3], group, xyxy[:, 3])
    kept = torch.tensor(kept, dtype=torch.long)
    return {
        "boxes": torch.from_numpy(union[kept.numpy()]).to(boxes.dtype).reshape(-1, 4),
        "scores": scores[kept],
        "labels": labels[kept],
    }


def _intersecting_pairs(boxes: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs ``(i, j)``, ``i != j`` and each pair once, of same-label boxes whose intersection has
    a positive area, found by sorting the boxes by (label, left edge) and sweeping."""
    span = (boxes[:, 2].max() - boxes[:, 0].min() + 1.0) if len(boxes) else 0.0
    left = boxes[:, 0] + labels * span
    right = boxes[:, 2] + labels * span
    order = np.argsort(left, kind="stable")
    # For the box at sorted position p, the boxes at positions p+1 .. end[p]-1 start left of its right edge.
    end = np.searchsorted(left[order], right[order], side="left")
    counts = np.maximum(end - np.arange(len(order)) - 1, 0)
    position = np.repeat(np.arange(len(order)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    first, second = order[position], order[position + 1 + offsets]
    x_overlap = np.minimum(boxes[first, 2], boxes[second, 2]) > np.maximum(boxes[first, 0], boxes[second, 0])
    y_overlap = np.minimum(boxes[first, 3], boxes[second, 3]) > np.maximum(boxes[first, 1], boxes[second, 1])
    same = labels[first] == labels[second]
    keep = x_overlap & y_overlap & same
    return first[keep], second[keep]


@dataclass
class _OpenImage:
    source: ImageSource
    tiles_left: int
    parts: list[Detections] = field(default_factory=list)


def sliced_predict(
    sources: Iterable[Source],
    detect: DetectFn,
    *,
    tile_size: int = 800,
    overlap: float = 0.2,
    batch_size: int = 4,
    iou_thresh: float = 0.5,
    max_detections: int | None = None,
    merge: str = "nms",
    match: str = "iou",
    on_batch: Callable[[int], None] | None = None,
) -> Iterator[tuple[Source, Detections]]:
    """Detect objects in images of any size, tile by tile, yielding each image's merged detections.

    Tiles of consecutive images share batches, so a folder of small images runs as fast as one scene.
    Memory is bounded by one decoded image (a GeoTIFF source: one tile), ``batch_size`` tiles and the
    detections kept so far; a source is closed as soon as its last tile has been read.

    Args:
        sources: images to predict on (see :class:`kldet.inference.types.ImageSource`).
        detect: the detector on a batch of tiles (see ``DetectFn``); tiles may differ in size.
        tile_size, overlap: see :func:`kldet.inference.tiling.make_tiles`.
        batch_size: tiles per ``detect`` call.
        iou_thresh, max_detections, merge, match: see :func:`merge_tiles`.
        on_batch: called with the number of tiles after each ``detect`` call (progress bars).

    Yields:
        ``(source, detections)`` in input order; boxes in image pixels.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    open_images: list[_OpenImage] = []
    batch: list[tuple[_OpenImage, Tile, np.ndarray]] = []

    def run_batch() -> Iterator[tuple[Source, Detections]]:
        outputs = detect([pixels for _, _, pixels in batch])
        for (image, tile, _), detections in zip(batch, outputs, strict=True):
            image.parts.append(owned_detections(detections, tile))
            image.tiles_left -= 1
        if on_batch is not None:
            on_batch(len(batch))
        batch.clear()
        while open_images and open_images[0].tiles_left == 0:
            done = open_images.pop(0)
            yield done.source, merge_tiles(done.parts, iou_thresh, max_detections, merge, match)

    for source in sources:
        tiles = make_tiles(source.height, source.width, tile_size, overlap)
        image = _OpenImage(source, len(tiles))
        open_images.append(image)
        for tile in tiles:
            batch.append((image, tile, source.read(tile.x0, tile.y0, tile.x1, tile.y1)))
            if len(batch) == batch_size:
                yield from run_batch()
        source.close()
    if batch:
        yield from run_batch()


def tile_count(sources: Iterable[ImageSource], tile_size: int, overlap: float) -> int:
    """Number of tiles :func:`sliced_predict` will run for these sources (for a progress bar's total)."""
    return sum(
        len(tile_starts(s.height, tile_size, overlap)) * len(tile_starts(s.width, tile_size, overlap))
        for s in sources
    )
