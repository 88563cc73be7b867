"""A trained KLDet as a function from images of any size to detections in their own pixels.

Images keep their native resolution unless ``resize`` says otherwise (objects are a few pixels wide): each
is cut into tiles by :func:`kldet.inference.sliced.sliced_predict`, normalised as in training and
zero-padded to a multiple of 32. ``resize="train"`` scales each image as training did (the checkpoint
records how), an int scales its longer side to that many pixels; boxes always come back in the image's
own pixels.

Example::

    predictor = Predictor.from_checkpoint("last.ckpt", device="cuda", tile_size=800, overlap=0.2)
    detections = predictor.predict_image(rgb)  # rgb: (H, W, 3) uint8, any size
"""

import copy
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kldet.checkpoint import load_detector
from kldet.data.dataset import SIZE_DIVISOR, padded_size
from kldet.data.transforms import recorded_resize_policy, resized_size
from kldet.errors import KLDetConfigError
from kldet.inference.precision import autocast, resolve_precision
from kldet.inference.sliced import MATCH_METRICS, MERGE_MODES, sliced_predict, tile_count
from kldet.inference.sources import ArraySource, ResizedSource, TensorSource
from kldet.inference.types import DetectFn, Detections, ImageSource, Source
from kldet.model import Detector, InputNormalization
from kldet.model import fold_batchnorm as fold_batchnorm_into_convs

logger = logging.getLogger(__name__)

#: ``resize`` values besides a longer side in pixels.
RESIZE_MODES = ("none", "train")
#: Tile side and overlap of a checkpoint that was not trained on crops (one trained on crops gives its own).
TILE_SIZE, OVERLAP = 800, 0.2


def _first_given(*values: Any) -> Any:
    """The first of ``values`` that is not None."""
    return next(value for value in values if value is not None)


class Predictor:
    """Sliced inference with a detector (:class:`kldet.model.KLDet` or :class:`kldet.model.TwoStageKLDet`).

    Args:
        model: the detector (its score threshold, per-tile NMS and per-tile cap apply to each tile).
        classes, category_ids: name and data-set category id of each 0-based label.
        normalization: channel order, mean and std of the model input, as in training (a checkpoint's).
        size_divisor: tiles are zero-padded to a multiple of this.
        tile_size, overlap: see :func:`kldet.inference.tiling.make_tiles`.
        batch_size: tiles per forward pass.
        iou_thresh: class-wise NMS IoU across tiles (with ``merge="nmm"``: the match threshold); ``None``:
            the model's own ``nms_thresh`` (the NMS merge is exact only when the two agree, see
            :mod:`kldet.inference.sliced`).
        merge, match: ``"nms"`` (the exact default) or ``"nmm"`` (greedy non-maximum merging), and NMM's
            match metric ``"iou"`` or ``"ios"``; see :func:`kldet.inference.sliced.merge_tiles`.
        max_detections: cap per image after merging (``None``: none; a scene can hold many thousands).
        resize: ``"none"``: native pixels; ``"train"``: scale each image as training did (``train_resize``;
            with ``{"resize": "longer_side", "max_size": M}`` the longer side becomes M, up or down); an
            int: scale the longer side to that many pixels. ``None`` is ``"none"``, but logs one warning per
            :meth:`predict_sources` call when an image is larger than training's ``max_size``. Resized
            images are tiled like any other; boxes are mapped back to the image's own pixels.
        train_resize: how training resized images (:func:`kldet.data.transforms.resize_policy`);
            ``None``: not recorded (then ``resize="train"`` is an error and nothing is warned).
        precision: "auto" (bf16 where the device computes it natively, else fp32), "fp32", "bf16" or
            "fp16": the network's forward pass under autocast; decoding and NMS stay fp32
            (:mod:`kldet.inference.precision`). ``self.precision`` is the resolved one.
        channels_last: run the network in the NHWC memory format (the model is converted in place).
        fold_batchnorm: run a copy of the model with each batch norm folded into the conv before it
            (:func:`kldet.model.fold_batchnorm`): the same function (equal in fp32 up to rounding), faster,
            above all under bf16, where an unfolded norm runs in fp32 between two casts. ``self.model`` is
            then that copy; ``model`` is left as it was (but for ``eval()`` and the memory format).
    """

    def __init__(
        self,
        model: Detector,
        classes: Sequence[str],
        category_ids: Sequence[int],
        *,
        normalization: InputNormalization = InputNormalization(),
        size_divisor: int = SIZE_DIVISOR,
        tile_size: int = TILE_SIZE,
        overlap: float = OVERLAP,
        batch_size: int = 4,
        iou_thresh: float | None = None,
        max_detections: int | None = None,
        merge: str = "nms",
        match: str = "iou",
        resize: str | int | None = None,
        train_resize: Mapping[str, Any] | None = None,
        precision: str = "auto",
        channels_last: bool = True,
        fold_batchnorm: bool = True,
    ) -> None:
        if resize == "train" and train_resize is None:
            raise KLDetConfigError(
                "resize=train: the checkpoint does not record how training resized images; "
                "use resize=none or resize=<longer side in pixels>"
            )
        if resize is not None and resize not in RESIZE_MODES and not (isinstance(resize, int) and resize > 0):
            raise KLDetConfigError(f"resize={resize}: use none, train or a positive longer side in pixels")
        if merge not in MERGE_MODES or match not in MATCH_METRICS or (merge == "nms" and match != "iou"):
            raise KLDetConfigError(
                f"merge={merge} match={match}: merge is {' or '.join(MERGE_MODES)}, match is "
                f"{' or '.join(MATCH_METRICS)}, and match=ios needs merge=nmm"
            )
        self.device = next(model.parameters()).device
        self.precision = resolve_precision(precision, self.device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.eval().to(memory_format=self.memory_format)
        if fold_batchnorm:
            self.model = copy.deepcopy(self.model)
            fold_batchnorm_into_convs(self.model)
        self.classes, self.category_ids = list(classes), list(category_ids)
        self.normalization = normalization
        self.size_divisor = size_divisor
        self.tile_size, self.overlap, self.batch_size = tile_size, overlap, batch_size
        self.iou_thresh = model.postprocessor.nms_thresh if iou_thresh is None else iou_thresh
        self.max_detections = max_detections
        self.merge, self.match = merge, match
        self.resize, self.train_resize = resize, dict(train_resize) if train_resize is not None else None

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        *,
        score_thresh: float | None = None,
        nms_thresh: float | None = None,
        candidates: str | None = None,
        tile_size: int | None = None,
        overlap: float | None = None,
        **options,
    ) -> "Predictor":
        """Load a checkpoint (:func:`kldet.checkpoint.load_detector`) onto ``device``.

        ``score_thresh`` / ``nms_thresh`` / ``candidates`` override the checkpoint's post-processing
        (``None``: keep it). ``tile_size`` / ``overlap`` default to the checkpoint's crop and evaluation
        overlap when it was trained on crops (``resize: "crop"``, so prediction tiles as its validation
        did), else to :data:`TILE_SIZE` / :data:`OVERLAP`. ``options`` are the remaining :class:`Predictor`
        arguments.
        """
        overrides = {"score_thresh": score_thresh, "nms_thresh": nms_thresh, "candidates": candidates}
        model, meta = load_detector(
            path,
            map_location=device,
            overrides={"postprocess": {k: v for k, v in overrides.items() if v is not None}},
        )
        preprocess = meta["preprocess"]
        train_resize = recorded_resize_policy(preprocess)
        crop = train_resize if train_resize is not None and train_resize["resize"] == "crop" else {}
        return cls(
            model,
            meta["classes"],
            meta["category_ids"],
            normalization=InputNormalization.from_preprocess(preprocess),
            size_divisor=preprocess.get("size_divisor") or SIZE_DIVISOR,
            train_resize=train_resize,
            tile_size=_first_given(tile_size, crop.get("crop_size"), TILE_SIZE),
            overlap=_first_given(overlap, crop.get("overlap"), OVERLAP),
            **options,
        )

    @property
    def train_max_size(self) -> int | None:
        """The longer side training scaled images to; None when it kept native pixels or is unknown."""
        policy = self.train_resize or {}
        return policy.get("max_size") if policy.get("resize") == "longer_side" else None

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """``(h, w)`` an image of ``height`` x ``width`` is predicted at, after ``resize``."""
        max_size = {"none": None, None: None, "train": self.train_max_size}.get(self.resize, self.resize)
        return resized_size(height, width, max_size)

    def _resized(self, source: ImageSource) -> ImageSource:
        size = self.input_size(source.height, source.width)
        return source if size == (source.height, source.width) else ResizedSource(source, *size)

    def tile_count(self, sources: Iterable[ImageSource]) -> int:
        """Tiles :meth:`predict_sources` runs for ``sources`` (for a progress bar's total)."""
        return tile_count([self._resized(source) for source in sources], self.tile_size, self.overlap)

    def preprocess(self, tiles: Sequence[np.ndarray]) -> tuple[Tensor, list[tuple[int, int]]]:
        """RGB uint8 (h_i, w_i, 3) tiles -> a (B, 3, H, W) batch normalised as ``normalization`` says
        (channels reordered to its ``channel_order``), zero-padded to a multiple of ``size_divisor``, in
        the network's memory format, and each tile's (h_i, w_i)."""

        def normalized(tile: np.ndarray) -> Tensor:
            # Copy as uint8, normalise on the device: 4x less to transfer than float.
            pixels = torch.from_numpy(np.ascontiguousarray(tile)).to(self.device).permute(2, 0, 1)
            return self.normalization.normalize(pixels.float())

        return self._padded([(tile.shape[0], tile.shape[1]) for tile in tiles], map(normalized, tiles))

    def _padded(
        self, sizes: list[tuple[int, int]], inputs: Iterable[Tensor]
    ) -> tuple[Tensor, list[tuple[int, int]]]:
        """(3, h_i, w_i) model inputs of ``sizes`` zero-padded into one (B, 3, H, W) batch on the device,
        in the network's memory format, and ``sizes``."""
        height, width = padded_size(sizes, self.size_divisor)
        batch = torch.zeros(len(sizes), 3, height, width, device=self.device).contiguous(
            memory_format=self.memory_format
        )
        for image, pixels, (h, w) in zip(batch, inputs, sizes, strict=True):
            image[:, :h, :w] = pixels
        return batch, sizes

    def detect_tiles(self, tiles: Sequence[np.ndarray]) -> list[Detections]:
        """Detections of each tile in its own pixels (a :data:`kldet.inference.types.DetectFn`)."""
        return self._detect(*self.preprocess(tiles))

    def detect_normalized_tiles(self, tiles: Sequence[Tensor]) -> list[Detections]:
        """:meth:`detect_tiles` of tiles already normalised: (3, h_i, w_i) model inputs (a
        :data:`~kldet.inference.types.DetectFn` over :class:`~kldet.inference.sources.TensorSource` tiles)."""
        return self._detect(*self._padded([tuple(tile.shape[1:]) for tile in tiles], tiles))

    def _detect(self, batch: Tensor, sizes: list[tuple[int, int]]) -> list[Detections]:
        with torch.no_grad():
            with autocast(self.precision, self.device):
                maps = self.model(batch)
            return self.model.postprocess(*maps, tuple(batch.shape[-2:]), sizes)

    def predict_sources(
        self, sources: Iterable[Source], on_batch: Callable[[int], None] | None = None
    ) -> Iterator[tuple[Source, Detections]]:
        """Detections per image source, boxes in its own pixels, streamed in input order; see
        :func:`kldet.inference.sliced.sliced_predict`."""
        results = self._sliced(map(self._resized, self._warn_on_scale(sources)), self.detect_tiles, on_batch)
        for source, detections in results:
            if isinstance(source, ResizedSource):
                sx, sy = source.scale
                boxes = detections["boxes"] / torch.tensor([sx, sy, sx, sy])
                detections, source = {**detections, "boxes": boxes}, source.source
            yield source, detections

    def predict_normalized(self, images: Iterable[Tensor]) -> list[Detections]:
        """Detections of whole images already normalised as training did ((3, H, W) model inputs, e.g. a
        :class:`~kldet.data.DetectionDataset` image with ``max_size`` None), boxes in their pixels: the
        sliced prediction of :meth:`predict_sources`, which validation of a model trained on crops runs
        (:class:`kldet.lit.KLDetModule`). ``resize`` does not apply."""
        sources = [TensorSource(image) for image in images]
        return [detections for _, detections in self._sliced(sources, self.detect_normalized_tiles)]

    def _sliced(
        self, sources: Iterable[Source], detect: DetectFn, on_batch: Callable[[int], None] | None = None
    ) -> Iterator[tuple[Source, Detections]]:
        return sliced_predict(
            sources,
            detect,
            tile_size=self.tile_size,
            overlap=self.overlap,
            batch_size=self.batch_size,
            iou_thresh=self.iou_thresh,
            max_detections=self.max_detections,
            merge=self.merge,
            match=self.match,
            on_batch=on_batch,
        )

    def _warn_on_scale(self, sources: Iterable[Source]) -> Iterator[Source]:
        """``sources``, with one warning when ``resize`` is unset and one is larger than training's
        ``max_size``."""
        max_size, warned = self.train_max_size, self.resize is not None
        for source in sources:
            if not warned and max_size is not None and max(source.height, source.width) > max_size:
                warned = True
                name = getattr(source, "path", "an input image")
                logger.warning(
                    "%s is %dx%d px, predicted at native scale, but training resized images so their longer "
                    "side was %d px (a %dx%d px training image was scaled by %.3g): set resize=train to "
                    "resize like training (boxes stay in original pixels), or resize=none to keep native "
                    "scale and silence this",
                    name,
                    source.width,
                    source.height,
                    max_size,
                    source.width,
                    source.height,
                    max_size / max(source.height, source.width),
                )
            yield source

    def predict_image(self, image: np.ndarray) -> Detections:
        """Detections of one (H, W, 3) uint8 RGB image of any size, boxes xyxy in its pixels."""
        ((_, detections),) = self.predict_sources([ArraySource(image)])
        return detections
