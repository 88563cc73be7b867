"""Types shared by the inference modules (kept apart so that none of them imports another for a type).

``Detections``: ``"boxes"`` (K, 4) float32 xyxy, ``"scores"`` (K,) float32, ``"labels"`` (K,) int64.
``DetectFn``: a batch of RGB uint8 (h, w, 3) tiles -> their detections in tile pixels.
"""

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

import numpy as np

if TYPE_CHECKING:  # the sources and GeoTIFF readers (kldet-data tile) run without torch
    from torch import Tensor

Detections = dict[str, "Tensor"]
DetectFn = Callable[[list[np.ndarray]], list[Detections]]


class ImageSource(Protocol):
    """What sliced inference reads from: a size and RGB windows."""

    height: int
    width: int

    def read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Pixels ``[y0:y1, x0:x1]`` as a ``(y1 - y0, x1 - x0, 3)`` uint8 RGB array."""
        ...

    def close(self) -> None:
        """Release decoded pixels or file handles; a later ``read`` opens the image again."""
        ...


Source = TypeVar("Source", bound=ImageSource)
