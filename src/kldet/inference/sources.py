"""Images to predict on, read window by window.

A source knows its size before any pixel is decoded (so a progress bar can count tiles up front) and hands
out RGB uint8 windows. PNG and JPEG cannot be decoded in parts, so :class:`ImageFile` decodes the whole
file on the first read and keeps it until :meth:`ImageFile.close` (a 10,000 x 10,000 RGB image is 300 MB);
GeoTIFFs are read window by window from disk by :class:`kldet.inference.geo.RasterFile`.
"""

import glob
import importlib.util
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from kldet.data.images import IMAGE_SUFFIXES, TIFF_SUFFIXES, load_image, read_header
from kldet.data.raster import RasterPreprocess
from kldet.errors import KLDetConfigError, KLDetDataError
from kldet.inference.geo import RasterFile
from kldet.inference.types import ImageSource

if TYPE_CHECKING:  # kldet-data tile reads sources without torch
    from torch import Tensor


class ImageFile:
    """A PNG/JPEG/BMP/TIFF/WebP file decoded on the first read (:func:`kldet.data.images.load_image`, the
    training decoder) and cached until :meth:`close`.

    ``exif_orientation`` is the file's EXIF tag (1 when absent); it is not applied, as in training.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            self.width, self.height, self.exif_orientation = read_header(self.path)
        except FileNotFoundError:
            raise KLDetDataError(f"image file {self.path} not found") from None
        except KLDetDataError as error:
            raise KLDetDataError(f"image file {self.path}: {error}") from None
        self._pixels: np.ndarray | None = None

    def read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        if self._pixels is None:
            pixels = load_image(self.path)
            if pixels.shape[:2] != (self.height, self.width):
                raise KLDetDataError(
                    f"image file {self.path} decodes to {pixels.shape[1]}x{pixels.shape[0]}, its header says "
                    f"{self.width}x{self.height}"
                )
            self._pixels = pixels
        return self._pixels[y0:y1, x0:x1]

    def close(self) -> None:
        self._pixels = None


class ArraySource:
    """An RGB uint8 ``(H, W, 3)`` array already in memory."""

    def __init__(self, pixels: np.ndarray) -> None:
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {pixels.shape} {pixels.dtype}")
        self.pixels = pixels
        self.height, self.width = pixels.shape[:2]

    def read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        return self.pixels[y0:y1, x0:x1]

    def close(self) -> None:
        """Nothing to release: the caller owns the array."""


class TensorSource:
    """An image already made model input: a normalised ``(3, H, W)`` tensor, read as ``(3, h, w)``
    windows (for :meth:`kldet.inference.Predictor.predict_normalized`, not RGB uint8)."""

    def __init__(self, image: "Tensor") -> None:
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a (3, H, W) tensor, got {tuple(image.shape)}")
        self.image = image
        self.height, self.width = image.shape[1:]

    def read(self, x0: int, y0: int, x1: int, y1: int) -> "Tensor":
        return self.image[:, y0:y1, x0:x1]

    def close(self) -> None:
        """Nothing to release: the caller owns the tensor."""


class ResizedSource:
    """Another source scaled to ``height`` x ``width`` pixels (bilinear, as training resizes).

    The whole image is read and resized on the first read, and kept until :meth:`close`; ``source`` is
    closed as soon as it has been read.
    """

    def __init__(self, source: ImageSource, height: int, width: int) -> None:
        self.source = source
        self.height, self.width = height, width
        self._pixels: np.ndarray | None = None

    @property
    def scale(self) -> tuple[float, float]:
        """``(sx, sy)`` = resized / original size."""
        return self.width / self.source.width, self.height / self.source.height

    def read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        if self._pixels is None:
            pixels = self.source.read(0, 0, self.source.width, self.source.height)
            self.source.close()
            self._pixels = cv2.resize(pixels, (self.width, self.height), interpolation=cv2.INTER_LINEAR)
        return self._pixels[y0:y1, x0:x1]

    def close(self) -> None:
        self._pixels = None
        self.source.close()


def open_image(path: str | os.PathLike, raster: RasterPreprocess = RasterPreprocess()) -> ImageSource:
    """An image file as a source: GeoTIFFs through rasterio when it is installed (bands and stretch as
    ``raster`` says, :mod:`kldet.data.raster`), everything else OpenCV (8-bit RGB as decoded in training).

    Raises:
        KLDetConfigError: ``raster`` asks for bands or a stretch of a GeoTIFF and rasterio is missing.
    """
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        if importlib.util.find_spec("rasterio") is not None or raster != RasterPreprocess():
            return RasterFile(path, raster)
        # Python shows a warning once per call site: once per run, not once per file.
        warnings.warn(
            "rasterio is not installed: TIFF files are decoded whole with OpenCV and no GeoJSON is "
            "written (pip install 'kldet[geo]' for windowed reads and georeferenced output)",
            stacklevel=2,
        )
    return ImageFile(path)


def find_images(pattern: str | os.PathLike, exclude: Path | None = None) -> tuple[list[Path], Path]:
    """The image files an ``input=`` argument names: one file, every image under a folder, or a glob.

    Files under ``exclude`` (the output folder, whose rendered images would otherwise be picked up by the
    next run) are left out.

    Returns:
        the files, sorted, and the folder their names in result files are relative to (the folder given,
        or the deepest folder holding all matches).
    """
    path = Path(pattern)
    if path.is_file():
        return [path], path.parent
    candidates = path.rglob("*") if path.is_dir() else map(Path, glob.glob(str(pattern), recursive=True))
    files = sorted(p for p in candidates if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if exclude is not None:
        files = [p for p in files if not p.resolve().is_relative_to(exclude.resolve())]
    if not files:
        raise KLDetConfigError(f"input={pattern}: no image files ({', '.join(IMAGE_SUFFIXES)}) found there")
    return files, path if path.is_dir() else Path(os.path.commonpath([p.parent for p in files]))
