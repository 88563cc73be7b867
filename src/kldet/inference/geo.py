"""GeoTIFF input read window by window with rasterio, and detections as GeoJSON in the image's CRS.

rasterio is an optional extra (``pip install 'kldet[geo]'``) imported only here; the rest of kldet runs
without it. Bands 1-3 are taken as RGB (a single band is repeated); pixels must be 8-bit.
"""

import importlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kldet.errors import KLDetConfigError, KLDetDataError
from kldet.inference.results import SCORE_DECIMALS, coco_box
from kldet.inference.types import Detections


def _rasterio() -> Any:
    try:
        return importlib.import_module("rasterio")
    except ImportError as error:
        raise KLDetConfigError(
            "GeoTIFF support needs rasterio: pip install 'kldet[geo]' (or pip install rasterio)"
        ) from error


def _open(path: Path) -> Any:
    rasterio = _rasterio()
    try:
        with warnings.catch_warnings():
            # A plain TIFF is fine: it is read like any image and gets no GeoJSON.
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            return rasterio.open(path)
    except rasterio.errors.RasterioIOError as error:
        raise KLDetDataError(f"{path}: rasterio cannot open it ({error})") from error


class RasterFile:
    """A GeoTIFF (or any raster rasterio opens) read window by window from disk.

    Attributes:
        width, height: size in pixels.
        transform: the affine pixel -> CRS transform (``rasterio.Affine``), applied to (column, row).
        crs: the coordinate reference system (``rasterio.crs.CRS``), or None for a plain TIFF.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        with _open(self.path) as dataset:
            self.width, self.height = dataset.width, dataset.height
            self.transform, self.crs = dataset.transform, dataset.crs
            self._bands = [1, 1, 1] if dataset.count < 3 else [1, 2, 3]
            dtype = dataset.dtypes[0]
        if dtype != "uint8":
            raise KLDetDataError(
                f"{self.path}: {dtype} pixels; the detector expects 8-bit RGB "
                "(convert, e.g. gdal_translate -ot Byte -scale in.tif out.tif)"
            )
        self._dataset = None

    @property
    def georeferenced(self) -> bool:
        """Whether pixels map to a coordinate reference system (else GeoJSON would be meaningless)."""
        return self.crs is not None

    def read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        if self._dataset is None:
            self._dataset = _open(self.path)
        window = _rasterio().windows.Window(x0, y0, x1 - x0, y1 - y0)
        return np.ascontiguousarray(self._dataset.read(self._bands, window=window).transpose(1, 2, 0))

    def close(self) -> None:
        if self._dataset is not None:
            self._dataset.close()
            self._dataset = None


def detections_to_geojson(
    detections: Detections,
    transform: Any,
    crs: Any,
    classes: Sequence[str],
    category_ids: Sequence[int],
    file_name: str,
) -> dict:
    """Detections as a GeoJSON FeatureCollection of box polygons in the image's CRS.

    Args:
        detections: "boxes" (K, 4) xyxy in pixels, "scores" (K,), "labels" (K,) 0-based.
        transform: affine pixel (column, row) -> CRS (x, y); rotated grids give rotated polygons.
        crs: the CRS, written as the (pre-RFC 7946) ``crs`` member that GDAL and QGIS read.
        classes, category_ids: name and data-set category id of each label.
        file_name: the image, copied into every feature's properties.

    Returns:
        a dict ready for ``json.dump``; each feature's properties hold category id and name, score and
        the pixel box ``[x, y, w, h]``.
    """
    a, b, c, d, e, f = (float(v) for v in tuple(transform)[:6])
    features = []
    for (x0, y0, x1, y1), score, label in zip(
        detections["boxes"].tolist(),
        detections["scores"].tolist(),
        detections["labels"].tolist(),
        strict=True,
    ):
        corners = ((x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0))
        ring = [(a * col + b * row + c, d * col + e * row + f) for col, row in corners]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [[list(point) for point in ring]]},
                "properties": {
                    "file_name": file_name,
                    "category_id": int(category_ids[label]),
                    "category_name": classes[label],
                    "score": round(score, SCORE_DECIMALS),
                    "bbox": coco_box(x0, y0, x1, y1),
                },
            }
        )
    collection: dict = {"type": "FeatureCollection", "features": features}
    if crs is not None:
        collection["crs"] = {"type": "name", "properties": {"name": crs.to_string()}}
    return collection
