"""Draw detections on an image with ``torchvision.utils.draw_bounding_boxes``.

Tiny objects are a few pixels wide, so boxes are 1 px outlines by default and labels are short
("vehicle .87") on a filled background in the class colour, above the box, so they stay readable over busy
scenes without hiding the object.
"""

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor
from torchvision.utils import draw_bounding_boxes

from kldet.errors import KLDetError
from kldet.inference.types import Detections
from kldet.model import InputNormalization

# matplotlib's tab10 then the light half of tab20: distinct on aerial imagery; classes beyond 20 wrap.
PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
)  # fmt: skip
# Height of a label line in Pillow's default font (10 px glyphs), with a pixel to spare.
LABEL_HEIGHT = 12


def draw_detections(
    image: np.ndarray,
    detections: Detections,
    classes: Sequence[str],
    *,
    box_width: int = 1,
    show_labels: bool = True,
) -> np.ndarray:
    """Draw boxes, and optionally "class score" labels, on a copy of an image.

    Labels sit just above their box (below it at the top border) rather than inside, where they would
    hide an object of a few pixels.

    Args:
        image: (H, W, 3) uint8 RGB.
        detections: "boxes" (K, 4) xyxy in image pixels, "scores" (K,), "labels" (K,) indices into ``classes``.
        classes: class names.
        box_width: outline width in pixels.
        show_labels: write the class name and score by each box.

    Returns:
        (H, W, 3) uint8 RGB with the drawing.
    """
    if len(detections["boxes"]) == 0:
        return image.copy()
    boxes = detections["boxes"].float()
    labels = detections["labels"].tolist()
    colors = [PALETTE[label % len(PALETTE)] for label in labels]
    drawn = draw_bounding_boxes(
        torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1), boxes, colors=colors, width=box_width
    )
    if show_labels:
        texts = [
            f"{classes[label]} {score:.2f}".replace(" 0.", " .")
            for label, score in zip(labels, detections["scores"].tolist(), strict=True)
        ]
        # draw_bounding_boxes writes a label 1 px inside the top-left corner of its box: give each label an
        # invisible (width 0) box of one text line above the object, or below it when there is no room.
        top = boxes[:, 1] - LABEL_HEIGHT - 1
        top = torch.where(top >= 0, top, boxes[:, 3] + 1)
        anchors = torch.stack([boxes[:, 0], top, boxes[:, 0] + 1, top + LABEL_HEIGHT], dim=1)
        drawn = draw_bounding_boxes(
            drawn,
            anchors,
            labels=texts,
            colors=colors,
            width=0,
            label_colors="black",
            fill_labels=True,
            label_background_colors=colors,
        )
    return drawn.permute(1, 2, 0).numpy()


def draw_validation_image(
    image: Tensor,
    target: Mapping[str, Any],
    prediction: Mapping[str, Tensor],
    classes: Sequence[str],
    normalization: InputNormalization = InputNormalization(),
    score_thresh: float = 0.3,
) -> Tensor:
    """Ground truth (left) and detections scoring at least ``score_thresh`` (right), side by side.

    Args:
        image: (3, H, W) padded model input, normalised as ``normalization`` says.
        target: the data set's target: "size" (h, w) before padding, "scale" (sx, sy), "gt_boxes" (G, 4),
            "gt_labels" (G,) in original pixels and optionally "gt_ignore" (G,) (ignored boxes are not drawn).
        prediction: "boxes" (K, 4) in original pixels, "scores" (K,), "labels" (K,).

    Returns:
        (3, h, 2 * w) uint8, the un-padded resized image twice.
    """
    height, width = (int(v) for v in target["size"])
    scale_x, scale_y = (float(v) for v in target["scale"])
    to_resized = torch.tensor([scale_x, scale_y, scale_x, scale_y])
    pixels = normalization.denormalize(image[:, :height, :width].detach().float().cpu())
    pixels = pixels.clamp(0, 255).to(torch.uint8)
    pixels = pixels.permute(1, 2, 0).numpy()
    gt_boxes = torch.as_tensor(target["gt_boxes"]).float().cpu().reshape(-1, 4)
    shown = ~torch.as_tensor(target.get("gt_ignore", torch.zeros(len(gt_boxes), dtype=torch.bool))).cpu()
    truth = {
        "boxes": gt_boxes[shown] * to_resized,
        "scores": torch.ones(int(shown.sum())),
        "labels": torch.as_tensor(target["gt_labels"]).long().cpu().reshape(-1)[shown],
    }
    keep = prediction["scores"].detach().cpu() >= score_thresh
    detected = {
        "boxes": prediction["boxes"].detach().float().cpu()[keep] * to_resized,
        "scores": prediction["scores"].detach().float().cpu()[keep],
        "labels": prediction["labels"].detach().cpu()[keep],
    }
    panels = [draw_detections(pixels, boxes, classes, show_labels=False) for boxes in (truth, detected)]
    return torch.from_numpy(np.concatenate(panels, axis=1)).permute(2, 0, 1)


def save_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 RGB array; the format follows the file suffix (PNG, JPEG, TIFF, ...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise KLDetError(f"could not write image {path}")
