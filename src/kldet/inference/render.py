"""Drawings a person can read when objects are 4-16 pixels: kldet-predict's renders, the TensorBoard / W&B
validation images, ``kldet-data show`` and kldet-eval's drawn examples all draw here.

- Outlines lie just outside their box, so the few pixels of a tiny object stay visible inside it.
- Colours say the class (:data:`PALETTE`, with a legend strip under the image, :func:`add_legend`) or the
  outcome of a detection (:data:`OUTCOME_COLORS`: true positive, false positive, missed object).
- Labels are small and written only where they cover no box and no other label; crowded boxes go without.
- Small images are upscaled by an integer factor with nearest-neighbour pixels (:func:`upscale`), and
  :func:`object_crops` zooms into a few objects.

Numpy and OpenCV only (torch for :func:`draw_validation_image`, imported there), so that ``kldet-data`` and
``kldet-eval results=`` draw without torch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from kldet.errors import KLDetError

if TYPE_CHECKING:
    from torch import Tensor

    from kldet.inference.types import Detections
    from kldet.model import InputNormalization

# matplotlib's tab10 then the light half of tab20: distinct on aerial imagery; classes beyond 20 wrap.
PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
)  # fmt: skip
# Saturated colours none of the class palette uses: what a detection turned out to be.
OUTCOME_COLORS = {"true positive": (0, 255, 0), "false positive": (255, 0, 255), "missed": (255, 255, 0)}
_FONT, _FONT_SCALE = cv2.FONT_HERSHEY_PLAIN, 0.7
_LEGEND_ROW = 16  # legend line height in pixels
_LEGEND_BACKGROUND = (32, 32, 32)


def class_colors(labels: np.ndarray) -> np.ndarray:
    """(K, 3) uint8 :data:`PALETTE` colour of each class index in ``labels`` (K,)."""
    palette = np.array(PALETTE, dtype=np.uint8)
    return palette[np.asarray(labels, dtype=np.int64).reshape(-1) % len(palette)]


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """(H * factor, W * factor, 3) nearest-neighbour enlargement of an (H, W, 3) image (a copy)."""
    if factor < 1:
        raise KLDetError(f"upscale factor must be a positive integer, not {factor}")
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1) if factor > 1 else image.copy()


def draw_boxes(
    image: np.ndarray,
    boxes: np.ndarray,
    colors: np.ndarray,
    *,
    scale: int = 1,
    width: int = 1,
    texts: Sequence[str] | None = None,
) -> np.ndarray:
    """Outlines (and optionally labels) on an upscaled copy of ``image``.

    Args:
        image: (H, W, 3) uint8 RGB.
        boxes: (K, 4) ``xyxy`` in ``image``'s pixels (a box [x0, x1) covers the pixels x0 .. x1 - 1).
        colors: (K, 3) uint8 outline colour of each.
        scale: integer upscale factor (:func:`upscale`); boxes follow it.
        width: outline width in pixels of the drawing, outside the box.
        texts: K labels, written in the box colour above the box (below it at the top border), in the given
            order, each only where it covers no box and no label written before it.

    Returns:
        (H * scale, W * scale, 3) uint8.
    """
    canvas = upscale(image, scale)
    height, width_px = canvas.shape[:2]
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * scale
    colors = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    # Inner rectangle: the pixels the box covers; the outline is the `width` pixels around it.
    inner = np.stack(
        [np.floor(boxes[:, 0]), np.floor(boxes[:, 1]), np.ceil(boxes[:, 2]), np.ceil(boxes[:, 3])], axis=1
    ).astype(np.int64)
    inner[:, 2:] = np.maximum(inner[:, 2:], inner[:, :2] + 1)  # a box under a pixel still covers one
    outer = inner + np.array([-width, -width, width, width])
    clipped = np.clip(outer, 0, [width_px, height, width_px, height])
    for (x0, y0, x1, y1), (ix0, iy0, ix1, iy1), color in zip(clipped, inner, colors, strict=True):
        if x0 >= x1 or y0 >= y1:
            continue
        canvas[y0 : max(y0, min(iy0, y1)), x0:x1] = color
        canvas[max(y0, min(iy1, y1)) : y1, x0:x1] = color
        canvas[y0:y1, x0 : max(x0, min(ix0, x1))] = color
        canvas[y0:y1, max(x0, min(ix1, x1)) : x1] = color
    if texts is not None:
        _draw_labels(canvas, clipped, colors, texts)
    return canvas


def _draw_labels(canvas: np.ndarray, outlines: np.ndarray, colors: np.ndarray, texts: Sequence[str]) -> None:
    """Writes each text on a filled rectangle of its colour above (else below) its outline, where the
    rectangle meets no outlined box and no earlier label (in place)."""
    height, width = canvas.shape[:2]
    occupied = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in outlines:
        occupied[y0:y1, x0:x1] = True
    for (x0, y0, _, y1), color, text in zip(outlines, colors, texts, strict=True):
        (text_width, text_height), baseline = cv2.getTextSize(text, _FONT, _FONT_SCALE, 1)
        label_height = text_height + baseline + 2
        for top in (y0 - label_height, y1):  # above the box, else below it
            bottom, right = top + label_height, x0 + text_width + 2
            if top < 0 or bottom > height or right > width or occupied[top:bottom, x0:right].any():
                continue
            canvas[top:bottom, x0:right] = color
            cv2.putText(
                canvas, text, (int(x0) + 1, int(bottom) - baseline - 1), _FONT, _FONT_SCALE, (0, 0, 0), 1
            )
            occupied[top:bottom, x0:right] = True
            break


def add_legend(image: np.ndarray, entries: Sequence[tuple[str, Sequence[int]]]) -> np.ndarray:
    """``image`` with a strip below it: a colour swatch and a name for each ``(name, rgb)`` entry, wrapped
    over as many lines of :data:`_LEGEND_ROW` pixels as the width needs.

    Returns:
        (H + 16 * lines, W, 3) uint8; ``image`` itself (a copy) without entries.
    """
    if not entries:
        return image.copy()
    width = image.shape[1]
    placed, x, line = [], 4, 0
    for name, color in entries:
        (text_width, _), _ = cv2.getTextSize(name, _FONT, _FONT_SCALE, 1)
        needed = 14 + text_width + 10
        if x > 4 and x + needed > width:
            x, line = 4, line + 1
        placed.append((x, line, name, color))
        x += needed
    strip = np.empty((_LEGEND_ROW * (line + 1), width, 3), dtype=np.uint8)
    strip[:] = _LEGEND_BACKGROUND
    for x, line, name, color in placed:
        top = line * _LEGEND_ROW + 3
        strip[top : top + 10, x : x + 10] = color
        cv2.putText(strip, name, (x + 14, top + 9), _FONT, _FONT_SCALE, (255, 255, 255), 1)
    return np.concatenate([image, strip], axis=0)


def side_by_side(panels: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """(H, W, 3) panels left to right, bottoms padded to the tallest, ``gap`` pixels between them."""
    height = max(p.shape[0] for p in panels)
    padded = []
    for i, panel in enumerate(panels):
        if i:
            padded.append(np.full((height, gap, 3), 255, dtype=np.uint8))
        fill = np.full((height - panel.shape[0], panel.shape[1], 3), 255, dtype=np.uint8)
        padded.append(np.concatenate([panel, fill], axis=0))
    return np.concatenate(padded, axis=1)


def auto_scale(height: int, width: int, target: int = 768, largest: int = 8) -> int:
    """The integer upscale factor that brings the longer side to at least ``target`` pixels (1 to ``largest``)."""
    return int(min(largest, max(1, math.ceil(target / max(height, width, 1)))))


def draw_example(
    image: np.ndarray,
    gt_boxes: np.ndarray,
    gt_labels: np.ndarray,
    classes: Sequence[str],
    *,
    outcomes: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    scale: int = 1,
    show_labels: bool = False,
) -> np.ndarray:
    """The ground truth in class colours with a class legend and, given ``outcomes``, beside it the
    detections and misses in :data:`OUTCOME_COLORS` with their legend (``kldet-data show``, kldet-eval's
    drawn examples).

    Args:
        image: (H, W, 3) uint8 RGB.
        gt_boxes: (G, 4) ``xyxy`` objects (ignored ones left out by the caller); gt_labels: (G,) class indices.
        classes: class names; the legend lists those present.
        outcomes: ``(detection_boxes (D, 4) xyxy, true_positive (D,) bool, missed (G,) bool)``.
        scale: upscale factor; from 3 on, outlines are 2 px wide.
        show_labels: class names by the ground-truth boxes, where there is room.
    """
    gt_labels = np.asarray(gt_labels, dtype=np.int64).reshape(-1)
    texts = [classes[label] for label in gt_labels] if show_labels else None
    width = 2 if scale >= 3 else 1  # an enlarged object gets a thicker outline
    truth = draw_boxes(image, gt_boxes, class_colors(gt_labels), scale=scale, width=width, texts=texts)
    present = sorted(set(gt_labels.tolist()))
    panels = [add_legend(truth, [(classes[label], PALETTE[label % len(PALETTE)]) for label in present])]
    if outcomes is not None:
        detection_boxes, true_positive, missed = outcomes
        true_positive = np.asarray(true_positive, dtype=bool)
        missed = np.asarray(missed, dtype=bool)
        colors = np.array(list(OUTCOME_COLORS.values()), dtype=np.uint8)
        boxes = np.concatenate(
            [np.asarray(gt_boxes).reshape(-1, 4)[missed], np.asarray(detection_boxes).reshape(-1, 4)]
        )
        kinds = np.concatenate([np.full(int(missed.sum()), 2), np.where(true_positive, 0, 1)])
        drawn = draw_boxes(image, boxes, colors[kinds], scale=scale, width=width)
        counts = np.bincount(kinds, minlength=3)
        legend = [
            (f"{name} {n}", color) for (name, color), n in zip(OUTCOME_COLORS.items(), counts, strict=True)
        ]
        panels.append(add_legend(drawn, legend))
    return side_by_side(panels)


def object_crops(
    image: np.ndarray, boxes: np.ndarray, colors: np.ndarray, *, count: int, size: int = 32, scale: int = 6
) -> np.ndarray | None:
    """A row of zoomed views of ``size`` x ``size`` pixels centred on the first ``count`` boxes, each
    upscaled by ``scale`` with all boxes drawn (None without boxes).

    Args:
        image: (H, W, 3) uint8 RGB; boxes: (K, 4) ``xyxy``; colors: (K, 3) uint8.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if count < 1 or len(boxes) == 0:
        return None
    height, width = image.shape[:2]
    views = []
    for box in boxes[:count]:
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        x0 = int(np.clip(round(cx - size / 2), 0, max(width - size, 0)))
        y0 = int(np.clip(round(cy - size / 2), 0, max(height - size, 0)))
        crop = image[y0 : y0 + size, x0 : x0 + size]
        shifted = boxes - np.array([x0, y0, x0, y0])
        views.append(draw_boxes(crop, shifted, colors, scale=scale))
    return side_by_side(views)


def draw_detections(
    image: np.ndarray,
    detections: Detections,
    classes: Sequence[str],
    *,
    box_width: int = 1,
    show_labels: bool = True,
    scale: int = 1,
    legend: bool = False,
) -> np.ndarray:
    """Detections in their class colour on a copy of an image (:func:`draw_boxes`), kldet-predict's render.

    Args:
        image: (H, W, 3) uint8 RGB.
        detections: "boxes" (K, 4) xyxy in image pixels, "scores" (K,), "labels" (K,) indices into ``classes``
            (tensors or arrays).
        classes: class names.
        box_width: outline width in pixels.
        show_labels: write "class score" by each box where there is room (best scores first).
        scale: integer upscale factor.
        legend: add a strip naming the colours of the classes drawn (:func:`add_legend`).

    Returns:
        (H * scale, W * scale (+ legend), 3) uint8 RGB.
    """
    boxes = np.asarray(detections["boxes"], dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(detections["labels"], dtype=np.int64).reshape(-1)
    scores = np.asarray(detections["scores"], dtype=np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    texts = None
    if show_labels:
        texts = [f"{classes[labels[i]]} {scores[i]:.2f}".replace(" 0.", " .") for i in order]
    drawn = draw_boxes(
        image, boxes[order], class_colors(labels[order]), scale=scale, width=box_width, texts=texts
    )
    if not legend:
        return drawn
    present = sorted(set(labels.tolist()))
    return add_legend(drawn, [(classes[label], PALETTE[label % len(PALETTE)]) for label in present])


def draw_validation_image(
    image: Tensor,
    target: Mapping[str, Any],
    prediction: Mapping[str, Tensor],
    classes: Sequence[str],
    normalization: InputNormalization | None = None,
    score_thresh: float = 0.3,
) -> Tensor:
    """Ground truth (left) and detections scoring at least ``score_thresh`` (right), side by side, in class
    colours: the TensorBoard / W&B validation image.

    Args:
        image: (3, H, W) padded model input, normalised as ``normalization`` says (default
            :class:`~kldet.model.InputNormalization`).
        target: the data set's target: "size" (h, w) before padding, "scale" (sx, sy), "gt_boxes" (G, 4),
            "gt_labels" (G,) in original pixels and optionally "gt_ignore" (G,) (ignored boxes are not drawn).
        prediction: "boxes" (K, 4) in original pixels, "scores" (K,), "labels" (K,).

    Returns:
        (3, h, 2 * w) uint8, the un-padded resized image twice.
    """
    import torch

    from kldet.model import InputNormalization

    normalization = InputNormalization() if normalization is None else normalization
    height, width = (int(v) for v in target["size"])
    scale_x, scale_y = (float(v) for v in target["scale"])
    to_resized = np.array([scale_x, scale_y, scale_x, scale_y])
    pixels = normalization.denormalize(image[:, :height, :width].detach().float().cpu())
    pixels = pixels.clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    gt_boxes = torch.as_tensor(target["gt_boxes"]).double().cpu().reshape(-1, 4).numpy()
    ignore = target.get("gt_ignore")
    shown = (
        np.ones(len(gt_boxes), bool)
        if ignore is None
        else ~torch.as_tensor(ignore).cpu().numpy().astype(bool)
    )
    gt_labels = torch.as_tensor(target["gt_labels"]).long().cpu().reshape(-1).numpy()[shown]
    keep = (prediction["scores"].detach().cpu() >= score_thresh).numpy()
    boxes = prediction["boxes"].detach().double().cpu().numpy()[keep]
    labels = prediction["labels"].detach().cpu().numpy()[keep]
    panels = [
        draw_boxes(pixels, gt_boxes[shown] * to_resized, class_colors(gt_labels)),
        draw_boxes(pixels, boxes * to_resized, class_colors(labels)),
    ]
    return torch.from_numpy(np.concatenate(panels, axis=1)).permute(2, 0, 1)


def save_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 RGB array; the format follows the file suffix (PNG, JPEG, TIFF, ...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise KLDetError(f"could not write image {path}")
