"""A torchmetrics ``Metric`` that gathers detections across DDP processes and computes AI-TOD, COCO or VOC."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from kldet.evaluation.evaluate import METRIC_KINDS, evaluate_detections
from kldet.evaluation.inputs import EvaluationSet

# Each update appends one 1-D tensor per state (boxes flattened) and torchmetrics concatenates the lists
# across processes. Every process must see a batch (a DistributedSampler sees to it): for an empty
# state torchmetrics sends a float tensor, which does not gather with int64 ones.
_STATE_DTYPES = {
    "image_ids": torch.long,
    "pred_counts": torch.long,
    "pred_boxes": torch.float32,
    "pred_scores": torch.float32,
    "pred_labels": torch.long,
    "gt_counts": torch.long,
    "gt_boxes": torch.float64,
    "gt_labels": torch.long,
    "gt_areas": torch.float64,
    "gt_ignore": torch.long,  # bool in the EvaluationSet; sent as int64, which every backend gathers
}


class DetectionMetric(Metric):
    """Detection AP over a validation or test set, safe under DDP.

    Each process stores its images' detections and ground truth; ``compute()`` gathers all of them,
    drops repeated image ids (a ``DistributedSampler`` pads with repeats) and evaluates once.

    Args:
        kind: "aitod" (AI-TOD ranges, up to 1500 detections), "coco" or "voc" (mAP at IoU 0.5).
        class_names: names of labels 0 .. C-1; they name the per-class keys.
        kwargs: passed to ``torchmetrics.Metric``.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, kind: str, class_names: Sequence[str], **kwargs) -> None:
        super().__init__(**kwargs)
        if kind not in METRIC_KINDS:
            raise ValueError(f"unknown metric kind {kind!r}; choose one of {', '.join(METRIC_KINDS)}")
        if not class_names:
            raise ValueError("class_names must name at least one class")
        self.kind = kind
        self.class_names = list(class_names)
        for name in _STATE_DTYPES:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, preds: Sequence[dict[str, Tensor]], targets: Sequence[dict[str, Tensor]]) -> None:
        """Adds a batch.

        Args:
            preds: per image ``{"boxes": (K, 4) xyxy, "scores": (K,), "labels": (K,)}``.
            targets: per image the ground truth to score against, ``{"boxes": (G, 4) xyxy, "labels":
                (G,)}``, optional ``"areas"`` (G,) (a COCO file's ``area``; default w * h), ``"ignore"``
                (G,) bool (COCO crowd / VOC ignored boxes) and ``"image_id"``. Boxes in original image
                pixels, labels 0-based.
        """
        batch = EvaluationSet.from_lists(preds, targets, len(self.class_names))
        for name, value in batch.as_dict().items():
            getattr(self, name).append(value.reshape(-1).to(self.device, _STATE_DTYPES[name]))

    def compute(self) -> dict[str, float]:
        """The metrics of :func:`kldet.evaluation.evaluate_detections` over every image seen."""
        return evaluate_detections(self.evaluation_set(), self.kind, self.class_names)

    def evaluation_set(self) -> EvaluationSet:
        """The detections and ground truth of every image seen, once per image (in :meth:`compute`, of
        every process; outside it, of this one)."""
        states = {name: _concatenated(getattr(self, name), dtype) for name, dtype in _STATE_DTYPES.items()}
        for name in ("pred_boxes", "gt_boxes"):
            states[name] = states[name].reshape(-1, 4)
        states["gt_ignore"] = states["gt_ignore"].bool()
        return EvaluationSet(**states).unique_images()


def sample_ground_truth(target: Mapping[str, Any]) -> dict[str, Any]:
    """The ground truth of a :class:`~kldet.data.DetectionDataset` sample's ``target`` (``gt_boxes``,
    ``gt_labels``, ``gt_areas``, ``gt_ignore``, ``image_id``) as :meth:`DetectionMetric.update` takes it."""
    return {
        "boxes": target["gt_boxes"],
        "labels": target["gt_labels"],
        "areas": target["gt_areas"],
        "ignore": target["gt_ignore"],
        "image_id": target["image_id"],
    }


def _concatenated(state: list[Tensor] | Tensor, dtype: torch.dtype) -> Tensor:
    if isinstance(state, list):
        state = torch.cat(state) if state else torch.zeros(0)
    return state.to("cpu", dtype)
