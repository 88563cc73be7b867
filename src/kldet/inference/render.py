"""Draw detections on an image with ``torchvision.utils.draw_bounding_boxes``.

Tiny objects are a few pixels wide, so boxes are 1 px outlines by default and labels are short
("vehicle .87") on a filled background in the class colour, above the box, so they stay readable over busy
scenes without hiding the object.
"""

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torchvision.utils import draw_bounding_boxes

from kldet.errors import KLDetError
from kldet.inference.types import Detections

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


def save_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 RGB array; the format follows the file suffix (PNG, JPEG, TIFF, ...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise KLDetError(f"could not write image {path}")
