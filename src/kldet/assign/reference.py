"""Ali-TSM and the hierarchical KLD assigner as the spec defines them, on dense G x N matrices: the
readable definitions (the hierarchical one is at the end).

:func:`kldet.assign.alitsm_assign` must return exactly what :func:`alitsm_assign_reference` returns; it
only avoids scoring every (ground truth, prior) pair. The reference needs O(G·N) memory and time (about
0.1 GB per float matrix at G = 500, N = 53,294), so it is for tests, benchmarks and reading only.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou

from kldet.assign.alitsm import log_stage1_metric, stage2_metric
from kldet.assign.anchors import BACKGROUND, IGNORED
from kldet.boxes import kld, kld_similarity, shrink_boxes


def alitsm_assign_reference(
    cls_logits: Tensor,
    priors: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    *,
    topk: tuple[int, int] = (3, 1),
    alpha: float = 1.0,
    beta: float = 7.0,
    alpha_m: float = 0.75,
    ratio: float = 0.9,
) -> Tensor:
    """Ali-TSM of KLDET_SPEC.md section 5, written as the spec reads; same arguments and result as
    :func:`kldet.assign.alitsm_assign`, without its input checks.

    With S, K, U the (G, N) matrices of score, KLD similarity and shrunk-prior IoU:
    stage 1 gives every ground truth its top-k1 priors by A1 = S^alpha * K^beta (ranked as log A1, as the
    fast engine does: same order, no underflow); stage 2 gives every ground truth its top-k2 priors over
    all priors by A2 = (1 - alpha_m) S + alpha_m U, of which it keeps those stage 1 left as background. A
    prior picked by several ground truths in one stage goes to the highest metric. Ties: lower prior index
    within a ground truth, lower ground-truth index between ground truths. Inputs are not modified.
    O(G·N) memory and time: for tests and reading only.

    Args:
        cls_logits: (N, C) classification logits (used detached).
        priors: (N, 4) xyxy.
        gt_boxes: (G, 4) xyxy.
        gt_labels: (G,) long in 0..C-1.

    Returns:
        (N,) long: index of the assigned ground truth, -1 for background.
    """
    k1, k2 = topk
    assigned = torch.full((len(priors),), -1, dtype=torch.long, device=priors.device)
    if len(gt_boxes) == 0 or len(priors) == 0:
        return assigned
    logits = cls_logits.detach().float().T[gt_labels.long()]  # (G, N): g's class at every prior
    priors, gt_boxes = priors.detach().float(), gt_boxes.detach().float()
    kl = kld(priors, gt_boxes)  # (G, N); K = 1 / (1 + KL)
    iou = box_iou(gt_boxes, shrink_boxes(priors, ratio))  # (G, N) = U
    log_a1 = log_stage1_metric(F.logsigmoid(logits), kl, alpha, beta)
    a2 = stage2_metric(torch.sigmoid(logits), iou, alpha_m)
    assigned = _give_to_best(log_a1, row_topk(log_a1, k1), assigned)
    return _give_to_best(a2, row_topk(a2, k2) & (assigned < 0), assigned)


def row_topk(metric: Tensor, k: int) -> Tensor:
    """(G, N) bool: the k highest entries of every row of ``metric`` (G, N), ties to the lower column."""
    order = torch.sort(metric, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.zeros_like(metric, dtype=torch.bool).scatter(1, order, True)


def _give_to_best(metric: Tensor, picked: Tensor, assigned: Tensor) -> Tensor:
    """``assigned`` (N,) with every column of ``picked`` (G, N) that holds a pick given to the row of the
    highest ``metric`` (G, N) among its picks, ties to the lower row; other columns keep their entry."""
    candidates = metric.masked_fill(~picked, -math.inf)
    is_best = picked & (candidates == candidates.amax(dim=0))
    return torch.where(picked.any(dim=0), is_best.int().argmax(dim=0), assigned)


def hierarchical_kld_assign_dense(
    anchors: Tensor,
    gt_boxes: Tensor,
    *,
    topk: tuple[int, int] = (3, 1),
    ratio: float = 0.9,
    threshold: float = 0.8,
) -> Tensor:
    """The hierarchical KLD assigner of KLDET_SPEC.md section 9 on dense (G, N) matrices; same arguments
    and result as :func:`kldet.assign.hierarchical_kld_assign`, without its input checks.

    K1 = KLD similarity of every anchor with every ground truth, K2 = the same for the anchors shrunk by
    ``ratio``. Per stage: anchors whose best K is below ``threshold`` are background, the others ignored;
    each ground truth's top-k anchors by K become its positives (ties: lower anchor index; an anchor
    picked by several ground truths goes to the highest K, then the lower ground-truth index). Final:
    the stage-1 positive, otherwise the stage-2 result. O(G·N) memory and time: for tests and reading only.
    """
    background = torch.full((len(anchors),), BACKGROUND, dtype=torch.long, device=anchors.device)
    if len(gt_boxes) == 0 or len(anchors) == 0:
        return background
    anchors, gt_boxes = anchors.detach().float(), gt_boxes.detach().float()
    stages = []
    for boxes, k in ((anchors, topk[0]), (shrink_boxes(anchors, ratio), topk[1])):
        similarity = kld_similarity(boxes, gt_boxes)  # (G, N)
        assigned = torch.where(similarity.amax(dim=0) >= threshold, IGNORED, background)
        stages.append(_give_to_best(similarity, row_topk(similarity, k), assigned))
    return torch.where(stages[0] >= 0, stages[0], stages[1])
