"""Label assigners: small objects holding only their own settings, with one call shape.

``assigner(grid, cls_logits, gt_boxes, gt_labels) -> (N,) long`` gives every point of ``grid`` the index
of its ground truth (-1: background). :class:`kldet.model.KLDet` is handed one (as DETR's
``SetCriterion(matcher=...)``); ``kldet-train assigner=alitsm|fcos|atss`` picks one from
``conf/assigner/``. A new assigner is a class with this call shape and a ``check_levels`` method; its
config is a ``_target_`` naming it (see ``docs/architecture.md``).

The assigners are frozen dataclasses: immutable settings, so a shared default instance is safe. Their
defaults are those of the functions they call (the paper's), read from the functions' signatures.
"""

import dataclasses
import functools
import inspect
import math
from collections.abc import Sequence
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from kldet.assign.alitsm import alitsm_assign
from kldet.assign.atss import atss_assign
from kldet.assign.fcos import FCOS_REGRESS_RANGES, fcos_assign
from kldet.assign.hierarchical import hierarchical_kld_assign
from kldet.assign.priors import THEORETICAL_RECEPTIVE_FIELD, points_and_strides, receptive_field_priors
from kldet.errors import KLDetConfigError


class PointGrid(NamedTuple):
    """The points of a padded image: ``points`` (N, 2) x, y and ``point_strides`` (N,), level by level
    (row-major within a level), for ``image_shape`` (H, W) and the levels' ``strides``."""

    image_shape: tuple[int, int]
    strides: tuple[int, ...]
    points: Tensor
    point_strides: Tensor


@functools.lru_cache(maxsize=16)
def point_grid(image_shape: tuple[int, int], strides: tuple[int, ...], device: torch.device) -> PointGrid:
    """The :class:`PointGrid` of a padded image shape, cached per shape and device (every batch of one
    shape computes it once); callers must not modify its tensors."""
    return PointGrid(image_shape, strides, *points_and_strides(image_shape, strides, device))


@functools.lru_cache(maxsize=16)
def _priors(
    image_shape: tuple[int, int], strides: tuple[int, ...], fraction: float, device: torch.device
) -> Tensor:
    return receptive_field_priors(image_shape, strides, fraction, device)[1]


def _default(function, name: str):
    """The default of keyword ``name`` of ``function``: the one place an assigner setting's default lives."""
    return inspect.signature(function).parameters[name].default


class Assigner(Protocol):
    """What :class:`kldet.model.KLDet` needs of an assigner."""

    def check_levels(self, strides: Sequence[int]) -> None:
        """Raises :class:`KLDetConfigError` when the assigner cannot serve levels of these strides."""

    def __call__(self, grid: PointGrid, cls_logits: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> Tensor:
        """(N,) long ground-truth index per point of ``grid`` (-1 background) for one image.

        Args:
            grid: the image's points.
            cls_logits: (N, C) the head's classification logits (detached; score-aware assigners read them).
            gt_boxes: (G, 4) xyxy in the padded image's pixels.
            gt_labels: (G,) long in 0..C-1.
        """


@dataclasses.dataclass(frozen=True)
class AliTSMAssigner:
    """Ali-TSM on receptive-field priors (KLDET_SPEC.md sections 2 and 5, :func:`kldet.assign.alitsm_assign`).

    Args:
        prior_fraction: prior side as a fraction of the level's theoretical receptive field.
        topk: (k1, k2) priors per ground truth in stage 1 (KL metric) and stage 2 (IoU metric).
        alpha, beta: exponents of the class score and of the KL term in the stage-1 metric.
        alpha_m: weight of the IoU in the stage-2 metric.
        ratio: how much a prior is shrunk about its centre for the stage-2 IoU.
    """

    prior_fraction: float = _default(receptive_field_priors, "fraction")
    topk: tuple[int, int] = _default(alitsm_assign, "topk")
    alpha: float = _default(alitsm_assign, "alpha")
    beta: float = _default(alitsm_assign, "beta")
    alpha_m: float = _default(alitsm_assign, "alpha_m")
    ratio: float = _default(alitsm_assign, "ratio")

    def __post_init__(self) -> None:
        topk = tuple(int(k) for k in self.topk)
        if len(topk) != 2:
            raise KLDetConfigError(f"AliTSMAssigner topk={list(self.topk)}: give (k1, k2)")
        object.__setattr__(self, "topk", topk)

    def check_levels(self, strides: Sequence[int]) -> None:
        unknown = [s for s in strides if s not in THEORETICAL_RECEPTIVE_FIELD]
        if unknown:
            raise KLDetConfigError(
                f"AliTSMAssigner: no theoretical receptive field for strides {unknown}; "
                f"known: {list(THEORETICAL_RECEPTIVE_FIELD)}"
            )

    def __call__(self, grid: PointGrid, cls_logits: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> Tensor:
        priors = _priors(grid.image_shape, grid.strides, self.prior_fraction, grid.points.device)
        return alitsm_assign(
            cls_logits.float(),
            priors,
            gt_boxes,
            gt_labels,
            topk=self.topk,
            alpha=self.alpha,
            beta=self.beta,
            alpha_m=self.alpha_m,
            ratio=self.ratio,
        )


@dataclasses.dataclass(frozen=True)
class FCOSAssigner:
    """Standard FCOS assignment (:func:`kldet.assign.fcos_assign`), the baseline of the ablations.

    Args:
        center_sampling: positives only within ``center_radius`` strides of the box centre.
        center_radius: centre-region half-side in strides.
        regress_ranges: one (low, high) range of max(l, t, r, b) per level, in increasing stride order;
            None gives FCOS's five ranges ((-1, 64), (64, 128), ..., (512, inf)) to the levels in order
            (with P2: objects under 64 px then all go to the first level).
    """

    center_sampling: bool = _default(fcos_assign, "center_sampling")
    center_radius: float = _default(fcos_assign, "radius")
    regress_ranges: tuple[tuple[float, float], ...] | None = None

    def __post_init__(self) -> None:
        if self.regress_ranges is not None:
            ranges = tuple((float(low), float(high)) for low, high in self.regress_ranges)
            object.__setattr__(self, "regress_ranges", ranges)

    def ranges_by_stride(self, strides: Sequence[int]) -> dict[float, tuple[float, float]]:
        """``{stride: (low, high)}``: the ranges given to the levels in increasing stride order."""
        self.check_levels(strides)
        ranges = FCOS_REGRESS_RANGES if self.regress_ranges is None else self.regress_ranges
        return {float(s): r for s, r in zip(sorted(strides), ranges, strict=True)}

    def check_levels(self, strides: Sequence[int]) -> None:
        ranges = FCOS_REGRESS_RANGES if self.regress_ranges is None else self.regress_ranges
        if len(ranges) != len(strides):
            given = "default " if self.regress_ranges is None else ""
            raise KLDetConfigError(
                f"FCOSAssigner: {len(ranges)} {given}regress_ranges for {len(strides)} levels: "
                "give one (low, high) per level (model.assigner.regress_ranges=[[-1, 64], ...])"
            )

    def __call__(self, grid: PointGrid, cls_logits: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> Tensor:
        return fcos_assign(
            grid.points,
            grid.point_strides,
            gt_boxes,
            regress_ranges=self.ranges_by_stride(grid.strides),
            center_sampling=self.center_sampling,
            radius=self.center_radius,
        )


@dataclasses.dataclass(frozen=True)
class ATSSAssigner:
    """ATSS on points (:func:`kldet.assign.atss_assign`): every point a square anchor of side
    ``anchor_scale * stride``; per ground truth the ``topk`` nearest points per level are candidates,
    positive when their IoU reaches the candidates' mean + standard deviation and the point is inside."""

    topk: int = _default(atss_assign, "topk")
    anchor_scale: float = _default(atss_assign, "anchor_scale")

    def __post_init__(self) -> None:
        if self.topk < 1 or not (self.anchor_scale > 0 and math.isfinite(self.anchor_scale)):
            raise KLDetConfigError(
                f"ATSSAssigner topk={self.topk} must be >= 1 and anchor_scale={self.anchor_scale} > 0"
            )

    def check_levels(self, strides: Sequence[int]) -> None:
        pass  # any levels

    def __call__(self, grid: PointGrid, cls_logits: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> Tensor:
        return atss_assign(
            grid.points, grid.point_strides, gt_boxes, topk=self.topk, anchor_scale=self.anchor_scale
        )


@dataclasses.dataclass(frozen=True)
class HierarchicalKLDAssigner:
    """The two-stage KLDet's RPN assigner (KLDET_SPEC.md section 9, :func:`kldet.assign.hierarchical_kld_assign`).

    An anchor assigner: called as ``assigner(anchors, gt_boxes)`` with the image's (N, 4) xyxy anchors
    (:class:`kldet.assign.anchors.RFAnchorGenerator`'s, levels concatenated) and (G, 4) xyxy ground truths; returns
    (N,) long: the ground-truth index, :data:`kldet.assign.anchors.BACKGROUND` or ``IGNORED``.

    Args:
        topk: (k1, k2) positives per ground truth by the KLD similarity of the anchors (stage 1) and of
            the anchors shrunk by ``ratio`` (stage 2).
        ratio: the anchors' shrink factor for stage 2.
        threshold: the best similarity from which an unpicked anchor is ignored instead of background.
    """

    topk: tuple[int, int] = _default(hierarchical_kld_assign, "topk")
    ratio: float = _default(hierarchical_kld_assign, "ratio")
    threshold: float = _default(hierarchical_kld_assign, "threshold")

    def __post_init__(self) -> None:
        topk = tuple(int(k) for k in self.topk)
        if len(topk) != 2 or min(topk) < 0:
            raise KLDetConfigError(f"HierarchicalKLDAssigner topk={list(self.topk)}: give (k1, k2) >= 0")
        if self.ratio <= 0:
            raise KLDetConfigError(f"HierarchicalKLDAssigner ratio={self.ratio}: must be > 0")
        object.__setattr__(self, "topk", topk)

    def __call__(self, anchors: Tensor, gt_boxes: Tensor) -> Tensor:
        return hierarchical_kld_assign(
            anchors, gt_boxes, topk=self.topk, ratio=self.ratio, threshold=self.threshold
        )
