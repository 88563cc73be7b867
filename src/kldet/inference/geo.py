"""GeoTIFF input read window by window with rasterio, and detections as GeoJSON or GeoPackage polygons.

rasterio (and pyogrio, for GeoPackage) are the optional ``geo`` extra (``pip install 'kldet[geo]'``),
imported only when used; the rest of kldet runs without them. Which bands are RGB and how 16-bit or float
pixels become 8-bit: :mod:`kldet.data.raster`. GeoJSON is RFC 7946 (EPSG:4326 lon/lat, no ``crs`` member)
unless the image's own CRS is asked for.
"""

import importlib
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kldet.data.raster import RasterBands, RasterPreprocess, open_raster, rasterio_module
from kldet.errors import KLDetConfigError
from kldet.inference.results import SCORE_DECIMALS, coco_box
from kldet.inference.types import Detections


class RasterFile:
    """A GeoTIFF (or any raster rasterio opens) read window by window from disk as RGB uint8.

    Args:
        path: the file.
        preprocess: which bands are R, G, B and how they are stretched to 8 bit
            (:class:`kldet.data.raster.RasterPreprocess`; the default reads bands 1-3, or band 1 repeated,
            of a uint8 file unchanged). The stretch limits are computed once, on opening.

    Attributes:
        width, height: size in pixels.
        transform: the affine pixel -> CRS transform (``rasterio.Affine``), applied to (column, row).
        crs: the coordinate reference system (``rasterio.crs.CRS``), or None for a plain TIFF.
    """

    def __init__(self, path: str | os.PathLike, preprocess: RasterPreprocess = RasterPreprocess()) -> None:
        self.path = Path(path)
        with open_raster(self.path) as dataset:
            self.width, self.height = dataset.width, dataset.height
            self.transform, self.crs = dataset.transform, dataset.crs
            self._bands = RasterBands(dataset, preprocess, self.path)
        self._dataset = None

    @property
    def georeferenced(self) -> bool:
        """Whether pixels map to a coordinate reference system (else vector output would be meaningless)."""
        return self.crs is not None

    def read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        if self._dataset is None:
            self._dataset = open_raster(self.path)
        window = rasterio_module().windows.Window(x0, y0, x1 - x0, y1 - y0)
        return self._bands.read(self._dataset, window)

    def close(self) -> None:
        if self._dataset is not None:
            self._dataset.close()
            self._dataset = None


#: ``vector_crs`` values: EPSG:4326 longitude/latitude (RFC 7946's GeoJSON) or the image's own CRS.
VECTOR_CRS = ("lonlat", "image")
#: ``vector_format`` values and the file suffix of each.
VECTOR_SUFFIXES = {"geojson": ".geojson", "gpkg": ".gpkg"}
#: Longitude/latitude are written to this many decimals (1e-8 degrees: about 1 mm).
LONLAT_DECIMALS = 8
_LONLAT = "EPSG:4326"


def box_polygons(boxes: np.ndarray, transform: Any, crs: Any, vector_crs: str = "lonlat") -> np.ndarray:
    """Pixel boxes as closed, counter-clockwise rings in the image's CRS or in EPSG:4326 lon/lat.

    The four corners go through the affine ``transform`` (a rotated grid gives rotated rings) and, for
    ``"lonlat"``, through GDAL's PROJ (``rasterio.warp.transform``); the edges between corners stay
    straight in the output CRS (for boxes of a few hundred metres or less the difference to the
    reprojected edge is far below a pixel). Rings are counter-clockwise in the output coordinates, as
    RFC 7946 §3.1.6 asks of exterior rings.

    Args:
        boxes: (K, 4) xyxy in pixels (column, row).
        transform: affine pixel (column, row) -> CRS (x, y).
        crs: the image's CRS (``rasterio.crs.CRS``).
        vector_crs: ``"lonlat"`` or ``"image"``.

    Returns:
        (K, 5, 2) float64 rings, the first corner repeated at the end; ``(x, y)`` = (longitude, latitude)
        for ``"lonlat"``.
    """
    a, b, c, d, e, f = (float(v) for v in tuple(transform)[:6])
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    columns = boxes[:, [0, 2, 2, 0]]
    rows = boxes[:, [1, 1, 3, 3]]
    xs, ys = a * columns + b * rows + c, d * columns + e * rows + f
    if vector_crs == "lonlat" and len(boxes):
        lon, lat = rasterio_module("warp").transform(crs, _LONLAT, xs.ravel(), ys.ravel())
        xs, ys = np.reshape(lon, xs.shape), np.reshape(lat, ys.shape)
    rings = np.stack([xs, ys], axis=-1)
    # Shoelace: a negative signed area is a clockwise ring.
    area = (
        rings[:, :, 0] * np.roll(rings[:, :, 1], -1, 1) - np.roll(rings[:, :, 0], -1, 1) * rings[:, :, 1]
    ).sum(1)
    rings[area < 0] = rings[area < 0, ::-1]
    return np.concatenate([rings, rings[:, :1]], axis=1)


def _properties(
    detections: Detections, classes: Sequence[str], category_ids: Sequence[int], file_name: str
) -> list[dict]:
    """Per box: file name, category id and name, score (rounded as results files) and pixel ``bbox``."""
    return [
        {
            "file_name": file_name,
            "category_id": int(category_ids[label]),
            "category_name": classes[label],
            "score": round(score, SCORE_DECIMALS),
            "bbox": coco_box(*box),
        }
        for box, score, label in zip(
            detections["boxes"].tolist(),
            detections["scores"].tolist(),
            detections["labels"].tolist(),
            strict=True,
        )
    ]


def detections_to_geojson(
    detections: Detections,
    transform: Any,
    crs: Any,
    classes: Sequence[str],
    category_ids: Sequence[int],
    file_name: str,
    vector_crs: str = "lonlat",
) -> dict:
    """Detections as a GeoJSON FeatureCollection of box polygons.

    Args:
        detections: "boxes" (K, 4) xyxy in pixels, "scores" (K,), "labels" (K,) 0-based.
        transform, crs: the image's affine pixel (column, row) -> CRS (x, y) and its CRS.
        classes, category_ids: name and data-set category id of each label.
        file_name: the image, copied into every feature's properties.
        vector_crs: ``"lonlat"`` (default): RFC 7946 GeoJSON, EPSG:4326 longitude/latitude to
            :data:`LONLAT_DECIMALS` decimals and no ``crs`` member, which GIS tools read without options;
            ``"image"``: the image's own CRS, named in the (pre-RFC 7946) ``crs`` member that GDAL and
            QGIS read. See :func:`box_polygons` for the rings.

    Returns:
        a dict ready for ``json.dump``; each feature's properties hold file name, category id and name,
        score and the pixel box ``[x, y, w, h]``.
    """
    rings = box_polygons(detections["boxes"].numpy(), transform, crs, vector_crs)
    if vector_crs == "lonlat":
        rings = rings.round(LONLAT_DECIMALS)
    features = [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": properties}
        for ring, properties in zip(
            rings.tolist(), _properties(detections, classes, category_ids, file_name), strict=True
        )
    ]
    collection: dict = {"type": "FeatureCollection", "features": features}
    if vector_crs == "image":
        collection["crs"] = {"type": "name", "properties": {"name": crs.to_string()}}
    return collection


def write_geopackage(
    path: str | os.PathLike,
    detections: Detections,
    transform: Any,
    crs: Any,
    classes: Sequence[str],
    category_ids: Sequence[int],
    file_name: str,
    vector_crs: str = "lonlat",
) -> None:
    """Detections as a GeoPackage layer ``detections`` of box polygons (written with pyogrio).

    The arguments are those of :func:`detections_to_geojson`; the layer's CRS is EPSG:4326 (lon/lat) or
    the image's, and the pixel box is stored as the fields ``bbox_x``, ``bbox_y``, ``bbox_w``, ``bbox_h``.

    Raises:
        KLDetConfigError: pyogrio is not installed.
    """
    raw = _pyogrio_raw()
    rings = box_polygons(detections["boxes"].numpy(), transform, crs, vector_crs)
    properties = _properties(detections, classes, category_ids, file_name)
    columns = {
        "file_name": np.array([p["file_name"] for p in properties], dtype=object),
        "category_id": np.array([p["category_id"] for p in properties], dtype=np.int64),
        "category_name": np.array([p["category_name"] for p in properties], dtype=object),
        "score": np.array([p["score"] for p in properties], dtype=np.float64),
    }
    for index, name in enumerate(("bbox_x", "bbox_y", "bbox_w", "bbox_h")):
        columns[name] = np.array([p["bbox"][index] for p in properties], dtype=np.float64)
    layer_crs = rasterio_module("crs").CRS.from_user_input(_LONLAT if vector_crs == "lonlat" else crs)
    raw.write(
        str(path),
        np.array([_polygon_wkb(ring) for ring in rings], dtype=object),
        list(columns.values()),
        list(columns),
        layer="detections",
        driver="GPKG",
        geometry_type="Polygon",
        crs=layer_crs.to_wkt(),
    )


def _pyogrio_raw() -> Any:
    try:
        return importlib.import_module("pyogrio.raw")
    except ImportError as error:
        raise KLDetConfigError(
            "vector_format=gpkg needs pyogrio: pip install 'kldet[geo]' (or pip install pyogrio)"
        ) from error


def _polygon_wkb(ring: np.ndarray) -> bytes:
    """One ring (P, 2) as a little-endian WKB Polygon."""
    return struct.pack("<BIII", 1, 3, 1, len(ring)) + np.ascontiguousarray(ring, dtype="<f8").tobytes()
