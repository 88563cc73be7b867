"""A trained KLDet as a function from images of any size to detections in their own pixels.

Images are never resized (objects are a few pixels wide): each is cut into tiles by
:func:`kldet.inference.sliced.sliced_predict`, normalised as in training and zero-padded to a multiple of 32.

Example::

    predictor = Predictor.from_checkpoint("last.ckpt", device="cuda", tile_size=800, overlap=0.2)
    detections = predictor.predict_image(rgb)  # rgb: (H, W, 3) uint8, any size
"""

import os
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from kldet.checkpoint import load_detector
from kldet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from kldet.inference.sliced import Detections, Source, sliced_predict
from kldet.inference.sources import ArraySource
from kldet.model import KLDet


class Predictor:
    """Sliced inference with a KLDet.

    Args:
        model: the detector (its score threshold, per-tile NMS and per-tile cap apply to each tile).
        classes, category_ids: name and data-set category id of each 0-based label.
        mean, std: per-channel normalisation of 0..255 RGB, as in training.
        size_divisor: tiles are zero-padded to a multiple of this.
        tile_size, overlap: see :func:`kldet.inference.tiling.make_tiles`.
        batch_size: tiles per forward pass.
        iou_thresh: class-wise NMS IoU across tiles; ``None``: the model's own ``nms_thresh`` (the merge
            is exact only when the two agree, see :mod:`kldet.inference.sliced`).
        max_detections: cap per image after merging (``None``: none; a scene can hold many thousands).
    """

    def __init__(
        self,
        model: KLDet,
        classes: Sequence[str],
        category_ids: Sequence[int],
        *,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        size_divisor: int = 32,
        tile_size: int = 800,
        overlap: float = 0.2,
        batch_size: int = 4,
        iou_thresh: float | None = None,
        max_detections: int | None = None,
    ) -> None:
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.classes, self.category_ids = list(classes), list(category_ids)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(3, 1, 1)
        self.size_divisor = size_divisor
        self.tile_size, self.overlap, self.batch_size = tile_size, overlap, batch_size
        self.iou_thresh = model.postprocess_options["nms_thresh"] if iou_thresh is None else iou_thresh
        self.max_detections = max_detections

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        *,
        score_thresh: float | None = None,
        nms_thresh: float | None = None,
        candidates: str | None = None,
        **options,
    ) -> "Predictor":
        """Load a checkpoint (:func:`kldet.checkpoint.load_detector`) onto ``device``.

        ``score_thresh`` / ``nms_thresh`` / ``candidates`` override the checkpoint's post-processing
        (``None``: keep it); ``options`` are the remaining :class:`Predictor` arguments.
        """
        overrides = {"score_thresh": score_thresh, "nms_thresh": nms_thresh, "candidates": candidates}
        model, meta = load_detector(
            path, map_location=device, overrides={k: v for k, v in overrides.items() if v is not None}
        )
        preprocess = meta["preprocess"]
        return cls(
            model,
            meta["classes"],
            meta["category_ids"],
            mean=preprocess.get("mean") or IMAGENET_MEAN,
            std=preprocess.get("std") or IMAGENET_STD,
            size_divisor=preprocess.get("size_divisor") or 32,
            **options,
        )

    def preprocess(self, tiles: Sequence[np.ndarray]) -> tuple[Tensor, list[tuple[int, int]]]:
        """RGB uint8 (h_i, w_i, 3) tiles -> a normalised (B, 3, H, W) batch zero-padded to a multiple of
        ``size_divisor``, and each tile's (h_i, w_i)."""
        sizes = [(tile.shape[0], tile.shape[1]) for tile in tiles]
        divisor = self.size_divisor
        height = -(-max(h for h, _ in sizes) // divisor) * divisor
        width = -(-max(w for _, w in sizes) // divisor) * divisor
        batch = torch.zeros(len(tiles), 3, height, width, device=self.device)
        for image, tile, (h, w) in zip(batch, tiles, sizes, strict=True):
            # Copy as uint8, normalise on the device: 4x less to transfer than float.
            pixels = torch.from_numpy(np.ascontiguousarray(tile)).to(self.device).permute(2, 0, 1)
            image[:, :h, :w] = (pixels.float() - self.mean) / self.std
        return batch, sizes

    def detect_tiles(self, tiles: Sequence[np.ndarray]) -> list[Detections]:
        """Detections of each tile in its own pixels (a :data:`kldet.inference.sliced.DetectFn`)."""
        batch, sizes = self.preprocess(tiles)
        return self.model.predict(batch, image_sizes=sizes)

    def predict_sources(
        self, sources: Iterable[Source], on_batch: Callable[[int], None] | None = None
    ) -> Iterator[tuple[Source, Detections]]:
        """Detections per image source, streamed; see :func:`kldet.inference.sliced.sliced_predict`."""
        return sliced_predict(
            sources,
            self.detect_tiles,
            tile_size=self.tile_size,
            overlap=self.overlap,
            batch_size=self.batch_size,
            iou_thresh=self.iou_thresh,
            max_detections=self.max_detections,
            on_batch=on_batch,
        )

    def predict_image(self, image: np.ndarray) -> Detections:
        """Detections of one (H, W, 3) uint8 RGB image of any size, boxes xyxy in its pixels."""
        ((_, detections),) = self.predict_sources([ArraySource(image)])
        return detections
