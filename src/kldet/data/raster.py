"""Multi-band and high-bit-depth rasters to the 8-bit RGB the detector takes: band choice and percentile stretch.

Satellite scenes often come as 16-bit (or float) files with more than three bands, e.g. a 4-band
blue/green/red/near-infrared product. Two settings say how such a file becomes RGB:

- ``bands``: three 1-based band numbers read as R, G, B (``[3, 2, 1]`` for a B-G-R-NIR file), or one
  repeated as grey. ``None``: bands 1-3, or band 1 three times for a file with fewer than three.
- ``stretch``: ``None`` (pixels must already be uint8 and pass unchanged) or ``(low, high)`` percentiles: per
  band, the value at the ``low`` percentile becomes 0 and the one at ``high`` becomes 255, linearly in
  between, clipped outside. The percentiles are computed once per scene (:func:`percentile_limits`, on a
  decimated read for a large scene) and every window is then mapped with the same limits
  (:func:`stretch_to_uint8`), so tiles agree with each other. Nodata pixels take no part in the
  percentiles and come out 0.

Prediction reads rasters through :class:`RasterBands` (:class:`kldet.inference.geo.RasterFile`); the
functions are plain numpy, in the data package, so that a training decoder can apply the same transform.
rasterio is imported only when a raster is opened.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from kldet.errors import KLDetConfigError, KLDetDataError

#: The percentiles of a scene are computed on a read decimated so that its longer side is at most this
#: many pixels (rasterio reads the file's overviews when it has them): a 20,000 px scene is not read whole.
STATS_MAX_SIDE = 2048


@dataclasses.dataclass(frozen=True)
class RasterPreprocess:
    """How raster bands become RGB uint8 (see the module docstring).

    Attributes:
        bands: three 1-based band numbers (R, G, B), or None for the default choice.
        stretch: ``(low, high)`` percentiles with ``0 <= low < high <= 100``, or None for uint8 passthrough.
    """

    bands: tuple[int, int, int] | None = None
    stretch: tuple[float, float] | None = None

    @classmethod
    def from_options(cls, bands: Any = None, stretch: Any = None, key_prefix: str = "") -> RasterPreprocess:
        """Parse the ``bands=`` / ``stretch=`` option values of a CLI or config.

        Args:
            bands: None, or a list of one or three positive band numbers (one is repeated).
            stretch: None or ``"none"`` (uint8 passthrough), or a ``[low, high]`` pair of percentiles.
            key_prefix: prefix of the key names in error messages (``"data."``).

        Raises:
            KLDetConfigError: a value that is none of these, naming the key.
        """
        if bands is not None:
            if (
                isinstance(bands, str)
                or not isinstance(bands, Sequence)
                or len(bands) not in (1, 3)
                or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in bands)
            ):
                raise KLDetConfigError(
                    f"{key_prefix}bands={bands}: give three 1-based band numbers, e.g. [3,2,1], or one, e.g. [1]"
                )
            bands = tuple(bands) * 3 if len(bands) == 1 else tuple(bands)
        if isinstance(stretch, str) and stretch.lower() == "none":
            stretch = None
        if stretch is not None:
            if (
                isinstance(stretch, str)
                or not isinstance(stretch, Sequence)
                or len(stretch) != 2
                or not all(isinstance(p, int | float) and not isinstance(p, bool) for p in stretch)
                or not 0 <= stretch[0] < stretch[1] <= 100
            ):
                raise KLDetConfigError(
                    f"{key_prefix}stretch={stretch}: give none or [low,high] percentiles with "
                    "0 <= low < high <= 100, e.g. [2,98]"
                )
            stretch = (float(stretch[0]), float(stretch[1]))
        return cls(bands, stretch)

    def band_indices(self, count: int, source: str) -> list[int]:
        """The three 1-based bands to read from a file with ``count`` bands.

        Raises:
            KLDetConfigError: a band beyond ``count``, naming ``source``.
        """
        if self.bands is None:
            return [1, 1, 1] if count < 3 else [1, 2, 3]
        if max(self.bands) > count:
            raise KLDetDataError(
                f"{source}: bands={list(self.bands)}, but it has {count} band(s) (numbered from 1)"
            )
        return list(self.bands)


def percentile_limits(
    pixels: np.ndarray, percentiles: tuple[float, float], nodata: float | None = None
) -> np.ndarray:
    """Per band, the values at the ``(low, high)`` percentiles, nodata (and NaN) pixels left out.

    Args:
        pixels: (C, H, W) band values of any numeric dtype (a decimated read of the whole scene).
        percentiles: ``(low, high)`` in [0, 100].
        nodata: the file's nodata value, or None.

    Returns:
        (C, 2) float64 ``[low value, high value]`` per band; ``[0, 0]`` for a band without valid pixels.
    """
    limits = np.zeros((pixels.shape[0], 2))
    for band, values in enumerate(pixels.reshape(pixels.shape[0], -1)):
        valid = values[_valid(values, nodata)]
        if valid.size:
            limits[band] = np.percentile(valid.astype(np.float64), percentiles)
    return limits


def stretch_to_uint8(pixels: np.ndarray, limits: np.ndarray, nodata: float | None = None) -> np.ndarray:
    """Map band values linearly so that each band's ``[low, high]`` becomes ``[0, 255]`` (clipped, rounded).

    Args:
        pixels: (H, W, C) band values.
        limits: (C, 2) from :func:`percentile_limits`; a band with ``high <= low`` maps to 0 at or below
            ``low`` and 255 above it.
        nodata: pixels with this value (and NaN) become 0.

    Returns:
        (H, W, C) uint8.
    """
    low, high = limits[:, 0], limits[:, 1]
    scale = 255.0 / np.where(high > low, high - low, np.finfo(np.float64).tiny)
    values = (pixels.astype(np.float64) - low) * scale
    out = np.clip(np.rint(np.nan_to_num(values, nan=0.0)), 0, 255).astype(np.uint8)
    out[~_valid(pixels, nodata)] = 0
    return out


def _valid(values: np.ndarray, nodata: float | None) -> np.ndarray:
    valid = ~np.isnan(values) if np.issubdtype(values.dtype, np.floating) else np.ones(values.shape, bool)
    if nodata is not None and not np.isnan(nodata):
        valid &= values != nodata
    return valid


def rasterio_module(submodule: str = "") -> Any:
    """rasterio (or its ``submodule``, e.g. ``"warp"``), the optional ``geo`` extra.

    Raises:
        KLDetConfigError: it is not installed (with the install command).
    """
    try:
        return importlib.import_module(f"rasterio.{submodule}" if submodule else "rasterio")
    except ImportError as error:
        raise KLDetConfigError(
            "GeoTIFF support needs rasterio: pip install 'kldet[geo]' (or pip install rasterio)"
        ) from error


def raster_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(width, height)`` of a raster from its header with rasterio; None when rasterio is not installed
    or cannot open the file."""
    try:
        with open_raster(path) as dataset:
            return dataset.width, dataset.height
    except (KLDetConfigError, KLDetDataError):
        return None


def open_raster(path: str | os.PathLike) -> Any:
    """``rasterio.open(path)`` for reading; a TIFF without georeferencing opens without a warning.

    Raises:
        KLDetConfigError: rasterio is not installed.
        KLDetDataError: rasterio cannot open the file (naming it).
    """
    rasterio = rasterio_module()
    try:
        with warnings.catch_warnings():
            # A plain TIFF is fine: it is read like any image (and gets no vector output).
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            return rasterio.open(path)
    except rasterio.errors.RasterioIOError as error:
        raise KLDetDataError(f"{path}: rasterio cannot open it ({error})") from error


class RasterBands:
    """The RGB uint8 view of an open raster that a :class:`RasterPreprocess` describes.

    The stretch limits are computed here, once, from a read of the chosen bands decimated to at most
    :data:`STATS_MAX_SIDE` px (nearest neighbour); :meth:`read` maps every window with them.

    Args:
        dataset: an open rasterio dataset.
        preprocess: band choice and stretch.
        source: the file, for error messages.

    Raises:
        KLDetDataError: a band beyond the file's count, or pixels that are not uint8 without a stretch.
    """

    def __init__(self, dataset: Any, preprocess: RasterPreprocess, source: str | os.PathLike) -> None:
        self.bands = preprocess.band_indices(dataset.count, str(source))
        dtype = dataset.dtypes[self.bands[0] - 1]
        if preprocess.stretch is None and dtype != "uint8":
            raise KLDetDataError(
                f"{source}: {dtype} pixels; the detector takes 8-bit RGB: set stretch=[2,98] (a per-band "
                "percentile stretch to 8 bit) or convert the file "
                "(gdal_translate -ot Byte -scale in.tif out.tif)"
            )
        self.nodata = dataset.nodata
        self.limits: np.ndarray | None = None
        if preprocess.stretch is not None:
            factor = math.ceil(max(dataset.width, dataset.height) / STATS_MAX_SIDE)
            shape = (3, math.ceil(dataset.height / factor), math.ceil(dataset.width / factor))
            self.limits = percentile_limits(
                dataset.read(self.bands, out_shape=shape), preprocess.stretch, self.nodata
            )

    def read(self, dataset: Any, window: Any = None) -> np.ndarray:
        """(h, w, 3) uint8 RGB pixels of ``window`` (a ``rasterio.windows.Window``; None: the whole raster)."""
        pixels = dataset.read(self.bands, window=window).transpose(1, 2, 0)
        if self.limits is None:
            return np.ascontiguousarray(pixels)
        return stretch_to_uint8(pixels, self.limits, self.nodata)
