"""Boxes cut by a window (a training crop, a training tile): clipped to it, and kept by the share of their area
left inside. Plain numpy, so that ``kldet-data tile`` uses it without importing torch."""

from __future__ import annotations

import numpy as np

#: ``(x0, y0, x1, y1)`` in image pixels, ``x1`` and ``y1`` exclusive.
Window = tuple[int, int, int, int]


def crop_boxes(
    boxes: np.ndarray, window: Window, min_visibility: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes clipped to ``window``, and which of them a crop keeps.

    A box is kept when the part inside the window has a positive area of at least ``min_visibility``
    times its own area (0: every box that shows at all).

    Args:
        boxes: (G, 4) ``xyxy`` boxes in image pixels.
        window: ``(x0, y0, x1, y1)`` in image pixels.
        min_visibility: visible fraction a box needs to be kept, in [0, 1].

    Returns:
        the (G, 4) clipped boxes, still in image pixels, the (G,) visible fraction of each box's area (0
        for an empty box) and the (G,) bool mask of the kept ones.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    x0, y0, x1, y1 = window
    clipped = np.clip(boxes, [x0, y0, x0, y0], [x1, y1, x1, y1])
    visible = np.prod(np.clip(clipped[:, 2:] - clipped[:, :2], 0, None), axis=1)
    area = np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=1)
    fraction = np.divide(visible, area, out=np.zeros_like(area), where=area > 0)
    return clipped, fraction, (fraction > 0) & (fraction >= min_visibility)
