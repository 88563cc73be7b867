"""GIS-ready prediction: GeoTIFF bands and bit depths (kldet.data.raster), RFC 7946 GeoJSON and GeoPackage.

Every expectation is computed independently of kldet: corners through rasterio's own ``Affine`` and
``rasterio.warp.transform``, a hand-known point (UTM easting 500,000 m is the zone's central meridian),
the stretch with ``np.percentile`` and the formula written out here, WKB decoded with ``struct``.
"""

import json
import struct

import numpy as np
import pytest
import torch

from kldet.data import raster as raster_module
from kldet.data.raster import RasterPreprocess
from kldet.errors import KLDetConfigError, KLDetDataError

rasterio = pytest.importorskip("rasterio")
warp = pytest.importorskip("rasterio.warp")
from kldet.inference.geo import RasterFile, detections_to_geojson, write_geopackage  # noqa: E402

CLASSES = ["vehicle", "ship"]
CATEGORY_IDS = [6, 4]
NORTH_UP = rasterio.Affine(0.5, 0.0, 500_000.0, 0.0, -0.5, 4_000_000.0)  # UTM 33N, 0.5 m pixels
# 30 degrees rotated, 0.5 m pixels (rasterio's own composition of the affine).
ROTATED = (
    rasterio.Affine.translation(500_000.0, 4_000_000.0)
    @ rasterio.Affine.rotation(30)
    @ rasterio.Affine.scale(0.5, -0.5)
)
BOXES = [[10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 96.0, 64.0], [50.25, 7.5, 53.75, 12.0]]


def write_tif(path, pixels, transform=NORTH_UP, crs="EPSG:32633", nodata=None):
    count, height, width = pixels.shape
    with rasterio.open(
        path, "w", driver="GTiff", width=width, height=height, count=count, dtype=pixels.dtype.name, crs=crs,
        transform=transform, nodata=nodata,
    ) as dataset:  # fmt: skip
        dataset.write(pixels)
    return path


def detections(boxes, labels=None):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.linspace(0.9, 0.5, len(boxes)),
        "labels": torch.tensor(labels or [0] * len(boxes), dtype=torch.long),
    }


def signed_area(ring):
    x, y = np.asarray(ring, dtype=np.float64).T
    return 0.5 * float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]))


def expected_lonlat_corners(box, transform):
    """The four corners of a pixel box in lon/lat, through rasterio's Affine and PROJ."""
    x0, y0, x1, y1 = box
    xs, ys = zip(*(transform @ corner for corner in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))), strict=True)
    return np.stack(warp.transform("EPSG:32633", "EPSG:4326", list(xs), list(ys)), axis=1)


@pytest.mark.parametrize("transform", [NORTH_UP, ROTATED], ids=["north_up", "rotated"])
def test_geojson_is_rfc7946_lonlat_within_1e6_degrees_with_counter_clockwise_rings(tmp_path, transform):
    path = write_tif(tmp_path / "scene.tif", np.zeros((3, 64, 96), np.uint8), transform)
    source = RasterFile(path)  # the transform and CRS as read back from the file
    collection = detections_to_geojson(
        detections(BOXES), source.transform, source.crs, CLASSES, CATEGORY_IDS, "scene.tif"
    )
    collection = json.loads(json.dumps(collection))
    assert "crs" not in collection and collection["type"] == "FeatureCollection"
    for box, feature in zip(BOXES, collection["features"], strict=True):
        (ring,) = feature["geometry"]["coordinates"]
        assert len(ring) == 5 and ring[0] == ring[-1]
        assert signed_area(ring) > 0  # counter-clockwise exterior ring, RFC 7946 §3.1.6
        expected = expected_lonlat_corners(box, transform)
        # The same four corners, whatever corner the ring starts at and whichever way it runs.
        got = np.array(ring[:4])
        distances = np.abs(got[:, None, :] - expected[None, :, :]).max(axis=2)
        assert distances.min(axis=1).max() < 1e-6
        assert sorted(distances.argmin(axis=1).tolist()) == [0, 1, 2, 3]
        assert feature["properties"]["bbox"] == [box[0], box[1], box[2] - box[0], box[3] - box[1]]
    # Hand-known: easting 500,000 m is UTM zone 33's central meridian, 15 degrees east.
    if transform is NORTH_UP:
        (whole,) = [f for f in collection["features"] if f["properties"]["bbox"] == [0.0, 0.0, 96.0, 64.0]]
        assert min(lon for lon, _ in whole["geometry"]["coordinates"][0]) == pytest.approx(15.0, abs=1e-9)


def test_geojson_in_the_image_crs_names_it_and_rings_stay_counter_clockwise_on_a_south_up_grid(tmp_path):
    south_up = rasterio.Affine(0.5, 0.0, 500_000.0, 0.0, 0.5, 3_999_968.0)
    collection = detections_to_geojson(
        detections(BOXES),
        south_up,
        rasterio.crs.CRS.from_epsg(32633),
        CLASSES,
        CATEGORY_IDS,
        "s.tif",
        "image",
    )
    assert collection["crs"]["properties"]["name"] == "EPSG:32633"
    for box, feature in zip(BOXES, collection["features"], strict=True):
        (ring,) = feature["geometry"]["coordinates"]
        assert signed_area(ring) > 0
        x0, y0, x1, y1 = box
        assert np.array(ring).min(0).tolist() == [500_000 + 0.5 * x0, 3_999_968 + 0.5 * y0]
        assert np.array(ring).max(0).tolist() == [500_000 + 0.5 * x1, 3_999_968 + 0.5 * y1]


def wkb_polygon(data: bytes) -> list[tuple[float, float]]:
    """A little-endian WKB Polygon with one ring, decoded by hand."""
    order, kind, rings, points = struct.unpack_from("<BIII", data)
    assert (order, kind, rings) == (1, 3, 1)
    return list(zip(*[iter(struct.unpack_from(f"<{2 * points}d", data, 13))] * 2, strict=True))


@pytest.mark.parametrize("vector_crs", ["lonlat", "image"])
def test_geopackage_layer_matches_the_geojson(tmp_path, vector_crs):
    raw = pytest.importorskip("pyogrio.raw")
    crs = rasterio.crs.CRS.from_epsg(32633)
    found = detections(BOXES, [0, 1, 0])
    write_geopackage(tmp_path / "s.gpkg", found, ROTATED, crs, CLASSES, CATEGORY_IDS, "s.tif", vector_crs)
    meta, _, geometries, fields = raw.read(tmp_path / "s.gpkg", layer="detections")
    assert meta["crs"] == ("EPSG:4326" if vector_crs == "lonlat" else "EPSG:32633")
    assert meta["geometry_type"] == "Polygon"
    columns = dict(zip(meta["fields"], fields, strict=True))
    assert columns["category_name"].tolist() == ["vehicle", "ship", "vehicle"]
    assert columns["category_id"].tolist() == [6, 4, 6]
    assert columns["bbox_w"].tolist() == [b[2] - b[0] for b in BOXES]
    geojson = detections_to_geojson(found, ROTATED, crs, CLASSES, CATEGORY_IDS, "s.tif", vector_crs)
    for wkb, feature in zip(geometries, geojson["features"], strict=True):
        assert np.allclose(wkb_polygon(wkb), feature["geometry"]["coordinates"][0], atol=1e-8, rtol=0)


def expected_stretch(band: np.ndarray, low: float, high: float, nodata) -> np.ndarray:
    valid = ~np.isnan(band) & (band != nodata) if nodata is not None else ~np.isnan(band)
    lo, hi = np.percentile(band[valid].astype(np.float64), [low, high])
    out = np.clip(np.rint((band.astype(np.float64) - lo) / (hi - lo) * 255), 0, 255)
    out[~valid] = 0
    return out.astype(np.uint8)


@pytest.mark.parametrize(
    ("dtype", "nodata"),
    [("uint16", 0), ("int16", -9999), ("float32", None)],
    ids=["uint16", "int16", "float32"],
)
def test_multiband_high_bit_depth_geotiff_is_stretched_per_band_once_per_scene(tmp_path, dtype, nodata):
    rng = np.random.default_rng(5)
    pixels = rng.normal(1500, 400, (4, 40, 56)).astype(dtype)  # blue, green, red, near infrared
    if nodata is not None:
        pixels[:, :5, :7] = nodata
    else:
        pixels[1, 3, 4] = np.nan
    path = write_tif(tmp_path / "bgrn.tif", pixels, nodata=nodata)
    source = RasterFile(path, RasterPreprocess.from_options([3, 2, 1], [2, 98]))
    whole = source.read(0, 0, 56, 40)
    assert whole.dtype == np.uint8 and whole.shape == (40, 56, 3)
    for channel, band in enumerate([3, 2, 1]):
        assert np.array_equal(whole[..., channel], expected_stretch(pixels[band - 1], 2, 98, nodata))
    # The limits are the scene's, not the window's: a window is the same pixels as in the whole read.
    assert np.array_equal(source.read(30, 10, 56, 25), whole[10:25, 30:56])
    source.close()


def test_one_band_is_repeated_and_percentiles_come_from_a_decimated_read(tmp_path, monkeypatch):
    pixels = (np.arange(64 * 80, dtype=np.uint16).reshape(1, 64, 80) * 7)[[0, 0]]
    path = write_tif(tmp_path / "pan.tif", pixels)
    reads = []
    real_read = rasterio.io.DatasetReader.read

    def spy(self, *args, **kwargs):
        reads.append(kwargs.get("out_shape"))
        return real_read(self, *args, **kwargs)

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", spy)
    monkeypatch.setattr(raster_module, "STATS_MAX_SIDE", 20)
    source = RasterFile(path, RasterPreprocess.from_options([2], [0, 100]))
    assert reads == [(3, 16, 20)]  # 80 px wide, at most 20: every 4th pixel
    grey = source.read(0, 0, 80, 64)
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 0], grey[..., 2])
    # The decimated read misses at most the last 3 columns and rows: its maximum is within 4 px of the true one.
    assert grey[0, 0, 0] == 0 and grey[-1, -1, 0] == 255 and grey[-1, -5, 0] == 255
    assert 0 < grey[32, 40, 0] < 255


def test_8_bit_rgb_geotiff_reads_exactly_as_before_with_or_without_stretch_none(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (4, 30, 50), dtype=np.uint8)
    path = write_tif(tmp_path / "rgbn.tif", pixels)
    expected = pixels[:3].transpose(1, 2, 0)
    for preprocess in (RasterPreprocess(), RasterPreprocess.from_options(None, "none")):
        source = RasterFile(path, preprocess)
        assert np.array_equal(source.read(0, 0, 50, 30), expected)
        assert np.array_equal(source.read(5, 6, 20, 30), expected[6:30, 5:20])
        source.close()


@pytest.mark.parametrize(
    ("bands", "stretch", "words"),
    [
        ([0, 1, 2], None, "bands=[0, 1, 2]"),
        ([1, 2], None, "bands=[1, 2]"),
        ("rgb", None, "bands=rgb"),
        (None, [98, 2], "stretch=[98, 2]"),
        (None, [2, 101], "stretch=[2, 101]"),
        (None, "auto", "stretch=auto"),
    ],
)
def test_bad_band_and_stretch_options_are_one_clear_error(bands, stretch, words):
    with pytest.raises(KLDetConfigError, match=f"^{words.replace('[', '.').replace(']', '.')}"):
        RasterPreprocess.from_options(bands, stretch)


def test_a_band_beyond_the_file_names_the_file(tmp_path):
    path = write_tif(tmp_path / "rgb.tif", np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(KLDetDataError, match=r"rgb.tif: bands=\[4, 3, 2\], but it has 3 band"):
        RasterFile(path, RasterPreprocess.from_options([4, 3, 2]))
