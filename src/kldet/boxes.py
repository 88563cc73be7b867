"""Box formats, Bbox2Gaussian, the KL divergence between box Gaussians (KLD) and element-wise IoU.

Boxes are float ``xyxy`` tensors in pixels. A box with centre (cx, cy), width w and height h is the
Gaussian N(mu, Sigma) with mu = (cx, cy) and Sigma = diag(w^2 / 4, h^2 / 4) (KLDET_SPEC.md section 3).
Widths and heights get ``SIZE_EPS`` before use so that degenerate boxes stay finite.

Pairwise functions take priors (N, 4) and ground truths (G, 4) and return (G, N). ``kld`` is
:func:`gaussian_kl` on :func:`box_centers_and_sizes` broadcast to all pairs, so ``gaussian_kl`` on the
centres and sizes of chosen pairs gives their pairwise values bit for bit, as ``box_iou_aligned`` does for
``torchvision.ops.box_iou`` (the sparse Ali-TSM engine relies on both).
"""

import torch
from torch import Tensor
from torchvision.ops import box_convert

SIZE_EPS = 1e-6


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """(N, 4) x1, y1, x2, y2 -> (N, 4) cx, cy, w, h."""
    return box_convert(boxes, "xyxy", "cxcywh")


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(N, 4) cx, cy, w, h -> (N, 4) x1, y1, x2, y2."""
    return box_convert(boxes, "cxcywh", "xyxy")


def box_xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(N, 4) COCO x, y, w, h -> (N, 4) x1, y1, x2, y2."""
    return box_convert(boxes, "xywh", "xyxy")


def box_xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """(N, 4) x1, y1, x2, y2 -> (N, 4) COCO x, y, w, h."""
    return box_convert(boxes, "xyxy", "xywh")


def box_centers_and_sizes(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Centres and sizes of (..., 4) xyxy boxes: cx, cy, w, h, each (...). Sizes include ``SIZE_EPS``."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) + SIZE_EPS, (y2 - y1) + SIZE_EPS


def bbox_to_gaussian(boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Bbox2Gaussian: (N, 4) xyxy boxes -> mu (N, 2), sigma (N, 2, 2) = diag(w^2 / 4, h^2 / 4)."""
    cx, cy, w, h = box_centers_and_sizes(boxes)
    mu = torch.stack((cx, cy), dim=-1)
    sigma = torch.diag_embed(torch.stack((w * w / 4, h * h / 4), dim=-1))
    return mu, sigma


def gaussian_kl(
    p_cx: Tensor, p_cy: Tensor, p_w: Tensor, p_h: Tensor, g_cx: Tensor, g_cy: Tensor, g_w: Tensor, g_h: Tensor
) -> Tensor:
    """KL(N_p || N_g) of box Gaussians from broadcastable centres and sizes (sizes already include the eps).

    KL = 1/2 [w_p^2/w_g^2 + h_p^2/h_g^2 + 4 dx^2/w_g^2 + 4 dy^2/h_g^2 + ln(w_g^2/w_p^2) + ln(h_g^2/h_p^2) - 2].
    The expression is non-decreasing in |dx| and |dy| operation by operation, so evaluating it at a
    nearer centre gives a lower bound on the float result for a farther one (used by Ali-TSM).
    """
    wg2, hg2 = g_w * g_w, g_h * g_h
    wp2, hp2 = p_w * p_w, p_h * p_h
    dx, dy = p_cx - g_cx, p_cy - g_cy
    shape_terms = wp2 / wg2 + hp2 / hg2 + torch.log(wg2 / wp2) + torch.log(hg2 / hp2) - 2
    return 0.5 * (shape_terms + 4 * (dx * dx) / wg2 + 4 * (dy * dy) / hg2)


def kld(priors: Tensor, gts: Tensor) -> Tensor:
    """Pairwise KL(N_prior || N_gt): priors (N, 4), gts (G, 4) xyxy -> (G, N), >= 0."""
    p = box_centers_and_sizes(priors)
    g = [t[:, None] for t in box_centers_and_sizes(gts)]
    return gaussian_kl(*p, *g)


def kld_similarity(priors: Tensor, gts: Tensor) -> Tensor:
    """Pairwise 1 / (1 + KL(N_prior || N_gt)): priors (N, 4), gts (G, 4) -> (G, N) in (0, 1]."""
    return 1 / (1 + kld(priors, gts))


def box_iou_aligned(a: Tensor, b: Tensor) -> Tensor:
    """Element-wise IoU of broadcastable (..., 4) xyxy boxes -> (...).

    Same operations in the same order as ``torchvision.ops.box_iou``, so the values are bit-identical.
    """
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    lt = torch.max(a[..., :2], b[..., :2])
    rb = torch.min(a[..., 2:], b[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a + area_b - inter)


def shrink_boxes(boxes: Tensor, ratio: float) -> Tensor:
    """(N, 4) xyxy boxes scaled by ``ratio`` about their centres, as a new tensor (the input is untouched)."""
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    half_w, half_h = (boxes[:, 2] - boxes[:, 0]) * (ratio / 2), (boxes[:, 3] - boxes[:, 1]) * (ratio / 2)
    return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=-1)
