"""Predictions and ground truth of many images, flattened image by image (what every evaluator reads)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor


@dataclass(frozen=True)
class EvaluationSet:
    """Detections and annotations of ``I`` images, concatenated in image order.

    Boxes are ``xyxy`` in original image pixels and labels are 0-based. The rows of image ``i`` in
    ``pred_*`` start at ``pred_counts[:i].sum()``; likewise ``gt_*``.

    Attributes:
        image_ids: (I,) int64, -1 where the caller gave none.
        pred_counts: (I,) int64 detections per image.
        pred_boxes: (P, 4) float32.
        pred_scores: (P,) float32.
        pred_labels: (P,) int64.
        gt_counts: (I,) int64 ground-truth boxes per image.
        gt_boxes: (G, 4) float64, as annotated.
        gt_labels: (G,) int64.
        gt_areas: (G,) float64 areas for the COCO / AI-TOD size ranges (a COCO file's ``area`` field).
        gt_ignore: (G,) bool boxes that are neither objects nor background, within their class: COCO
            crowd boxes (matched with the crowd IoU rule) for AI-TOD / COCO, ignored boxes for VOC.
    """

    image_ids: Tensor
    pred_counts: Tensor
    pred_boxes: Tensor
    pred_scores: Tensor
    pred_labels: Tensor
    gt_counts: Tensor
    gt_boxes: Tensor
    gt_labels: Tensor
    gt_areas: Tensor
    gt_ignore: Tensor

    @classmethod
    def from_lists(cls, preds: Sequence[dict], targets: Sequence[dict], num_classes: int) -> EvaluationSet:
        """Flattens per-image dicts.

        Args:
            preds: per image ``{"boxes": (K, 4), "scores": (K,), "labels": (K,)}``.
            targets: per image ``{"boxes": (G, 4), "labels": (G,)}`` with optional ``"areas"`` (G,)
                (default w * h), ``"ignore"`` (G,) bool (default all False) and ``"image_id"`` (int
                or 0-d tensor).
            num_classes: labels must lie in ``0 .. num_classes - 1``.
        """
        if len(preds) != len(targets):
            raise ValueError(f"got {len(preds)} predictions for {len(targets)} targets; they must pair up")
        gt_boxes = [_boxes(t["boxes"], "target boxes", torch.float64) for t in targets]
        parts = {
            "image_ids": [torch.tensor([int(t.get("image_id", -1))]) for t in targets],
            "pred_boxes": [_boxes(p["boxes"], "prediction boxes") for p in preds],
            "pred_scores": [torch.as_tensor(p["scores"]).detach().float().reshape(-1).cpu() for p in preds],
            "pred_labels": [_labels(p["labels"], num_classes, "prediction labels") for p in preds],
            "gt_boxes": gt_boxes,
            "gt_labels": [_labels(t["labels"], num_classes, "target labels") for t in targets],
            "gt_areas": [
                torch.as_tensor(t["areas"]).detach().double().reshape(-1).cpu()
                if "areas" in t
                else (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
                for t, boxes in zip(targets, gt_boxes, strict=True)
            ],
            "gt_ignore": [
                torch.as_tensor(t["ignore"]).detach().bool().reshape(-1).cpu()
                if "ignore" in t
                else torch.zeros(len(boxes), dtype=torch.bool)
                for t, boxes in zip(targets, gt_boxes, strict=True)
            ],
        }
        for i, (boxes, scores, labels) in enumerate(
            zip(parts["pred_boxes"], parts["pred_scores"], parts["pred_labels"], strict=True)
        ):
            if not len(boxes) == len(scores) == len(labels):
                raise ValueError(
                    f"prediction {i}: {len(boxes)} boxes, {len(scores)} scores and {len(labels)} labels"
                )
        for i, columns in enumerate(
            zip(parts["gt_boxes"], parts["gt_labels"], parts["gt_areas"], parts["gt_ignore"], strict=True)
        ):
            if len({len(column) for column in columns}) > 1:
                raise ValueError(
                    "target {}: {} boxes, {} labels, {} areas and {} ignore flags".format(
                        i, *(len(column) for column in columns)
                    )
                )
        counts = {
            "pred_counts": _counts(parts["pred_boxes"]),
            "gt_counts": _counts(parts["gt_boxes"]),
        }
        flat = {name: torch.cat(tensors) if tensors else _empty(name) for name, tensors in parts.items()}
        return cls(**flat, **counts)

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    def image_index(self, counts: Tensor) -> Tensor:
        """(N,) int64: the position (0 .. I-1) of each row's image, for ``counts`` of this set."""
        return torch.repeat_interleave(torch.arange(self.num_images), counts)

    def unique_images(self) -> EvaluationSet:
        """Keeps the first copy of every image id and numbers images without one after the largest id.

        A ``DistributedSampler`` pads the last batches with repeated images so that every process gets
        the same number; gathered, those images would otherwise be counted twice.
        """
        seen: set[int] = set()
        keep_list = []
        for image_id in self.image_ids.tolist():
            keep_list.append(image_id < 0 or image_id not in seen)
            if image_id >= 0:
                seen.add(image_id)
        keep = torch.tensor(keep_list, dtype=torch.bool)
        missing = self.image_ids < 0
        next_id = max(seen, default=-1) + 1
        new_ids = self.image_ids.clone()
        new_ids[missing] = torch.arange(next_id, next_id + int(missing.sum()))
        return EvaluationSet(
            image_ids=new_ids[keep],
            pred_counts=self.pred_counts[keep],
            gt_counts=self.gt_counts[keep],
            **_select_rows(self, "pred", keep, ("pred_boxes", "pred_scores", "pred_labels")),
            **_select_rows(self, "gt", keep, ("gt_boxes", "gt_labels", "gt_areas", "gt_ignore")),
        )

    def as_dict(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _select_rows(data: EvaluationSet, prefix: str, keep: Tensor, names: tuple[str, ...]) -> dict[str, Tensor]:
    counts = getattr(data, f"{prefix}_counts")
    rows = keep[data.image_index(counts)]
    return {name: getattr(data, name)[rows] for name in names}


def _boxes(boxes, what: str, dtype: torch.dtype = torch.float32) -> Tensor:
    boxes = torch.as_tensor(boxes).detach().to("cpu", dtype)
    if boxes.numel() == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{what} must have shape (N, 4), got {tuple(boxes.shape)}")
    return boxes


def _labels(labels, num_classes: int, what: str) -> Tensor:
    labels = torch.as_tensor(labels).detach().long().reshape(-1).cpu()
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{what} must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
    return labels


def _counts(tensors: list[Tensor]) -> Tensor:
    return torch.tensor([len(t) for t in tensors], dtype=torch.long)


def _empty(name: str) -> Tensor:
    dtype = {"pred_scores": torch.float32, "gt_boxes": torch.float64, "gt_areas": torch.float64}.get(
        name, torch.bool if name == "gt_ignore" else torch.float32 if name.endswith("boxes") else torch.long
    )
    return torch.zeros((0, 4) if name.endswith("boxes") else 0, dtype=dtype)
