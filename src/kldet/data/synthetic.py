"""A synthetic aerial tiny-object data set in AI-TOD (or DIOR) layout, for demos and tests.

Each image is a textured landscape (fields, roads, rivers, sea) with the 8 AI-TOD classes drawn as
distinct small shapes in their usual surroundings: vehicles in parking lots and on roads, ships in
harbours and at sea, bridges over rivers, storage tanks in tank farms, planes on aprons, swimming
pools and people in residential blocks, wind mills in fields. Sizes follow AI-TOD (mostly 4-16 px,
a mean near 12, a few up to 64). Boxes are the exact extent of each object's drawn pixels.

Image ``i`` depends only on ``(seed, i)``, so a set is reproducible and a larger one extends a smaller.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from kldet.data.aitod import AITOD_CLASSES
from kldet.data.coco import to_coco
from kldet.data.dior import DIOR_CLASSES, write_voc_xml
from kldet.data.raster import rasterio_module
from kldet.data.records import Record
from kldet.errors import KLDetConfigError, KLDetDataError

#: ``format`` values of :func:`generate`.
SYNTH_FORMATS = ("aitod", "dior", "dota")

AIRPLANE, BRIDGE, STORAGE_TANK, SHIP, SWIMMING_POOL, VEHICLE, PERSON, WIND_MILL = range(8)

#: AI-TOD classes written in DIOR layout under DIOR's names; swimming pools and people have no DIOR class.
DIOR_NAMES = {
    AIRPLANE: "airplane",
    BRIDGE: "bridge",
    STORAGE_TANK: "storagetank",
    SHIP: "ship",
    VEHICLE: "vehicle",
    WIND_MILL: "windmill",
}

# RGB colours (0..255). Objects are light or saturated, backgrounds mid-dark and desaturated.
_FIELDS = np.array(
    [
        [78, 104, 58],
        [98, 122, 66],
        [120, 116, 80],
        [138, 128, 92],
        [104, 90, 64],
        [66, 88, 52],
        [150, 142, 104],
    ],
    np.float32,
)
_WATER = np.array([34, 66, 84], np.float32)
_ASPHALT = np.array([84, 84, 86], np.float32)
_CONCRETE = np.array([156, 154, 148], np.float32)
_ROOFS = np.array([[150, 74, 58], [110, 104, 100], [128, 92, 70], [86, 82, 92]], np.float32)
_CARS = np.array(
    [[235, 235, 232], [200, 36, 32], [36, 60, 170], [178, 180, 184], [24, 110, 96]],
    np.float32,
)
_PEOPLE = np.array([[255, 214, 0], [255, 120, 20], [230, 40, 200]], np.float32)

#: AI-TOD classes written in DOTA v1.0 layout under DOTA's names; people and wind mills have no DOTA class.
DOTA_NAMES = {
    AIRPLANE: "plane",
    BRIDGE: "bridge",
    STORAGE_TANK: "storage-tank",
    SHIP: "ship",
    SWIMMING_POOL: "swimming-pool",
    VEHICLE: "small-vehicle",
}
#: The made-up place of the georeferenced DOTA-layout scenes (``geotiff=True``): UTM zone 33N (EPSG:32633),
#: 0.5 m pixels, scene ``i`` east of scene ``i - 1``.
GEOTIFF_CRS, GEOTIFF_ORIGIN, GEOTIFF_PIXEL = "EPSG:32633", (500_000.0, 4_600_000.0), 0.5


def generate(
    out: str | Path,
    num_images: int,
    seed: int,
    image_size: int = 512,
    format: str = "aitod",
    val_fraction: float = 0.2,
    progress: bool = False,
    geotiff: bool = False,
) -> dict[str, Path]:
    """Writes a synthetic data set to ``out``.

    ``format="aitod"``: ``out/annotations/{train,val}.json`` (COCO, the 8 AI-TOD categories with
    ids 1..8) and PNG images in ``out/train/`` and ``out/val/``. ``format="dior"``:
    ``out/Annotations/*.xml``, ``out/JPEGImages/*.jpg`` and ``out/ImageSets/Main/{train,val}.txt``,
    with the six classes DIOR shares with AI-TOD (no swimming pools or people are drawn).
    ``format="dota"``: DOTA's layout, ``out/{train,val}/images/P0001.png`` and ``out/{train,val}/labelTxt/
    P0001.txt`` (v1.0 lines: the four corners of each box clockwise, the class, ``difficult 0``, after the
    ``imagesource`` and ``gsd`` header lines), with the six classes of :data:`DOTA_NAMES`: large scenes to
    convert (``kldet-data convert from=dota``) and tile or crop. ``geotiff=True`` writes the scenes as
    georeferenced GeoTIFFs (``P0001.tif``, RGB uint8, :data:`GEOTIFF_CRS`; needs rasterio) instead.

    Args:
        num_images: total images; the last ``round(num_images * val_fraction)`` form the val split.
        seed: image ``i`` is drawn from ``numpy.random.default_rng([seed, i])``.
        image_size: side of the square images in pixels.

    Returns:
        ``{"train": ..., "val": ...}``: the annotation file (aitod), split file (dior) or label folder (dota)
        of each split.
    """
    if format not in SYNTH_FORMATS:
        raise KLDetConfigError(
            f"format={format!r}: the synthetic set is written as {', '.join(SYNTH_FORMATS)}"
        )
    if num_images < 1 or image_size < 64 or not 0 <= val_fraction < 1:
        raise KLDetConfigError("need num_images >= 1, image_size >= 64 and 0 <= val_fraction < 1")
    if geotiff and format != "dota":
        raise KLDetConfigError(f"geotiff=true: only format=dota writes GeoTIFF scenes, not format={format}")
    out = Path(out)
    num_val = min(round(num_images * val_fraction), num_images - 1)
    splits = {"train": range(num_images - num_val), "val": range(num_images - num_val, num_images)}
    if format == "dota":
        return _write_dota(out, splits, seed, image_size, geotiff, progress)
    labels = range(len(AITOD_CLASSES)) if format == "aitod" else sorted(DIOR_NAMES)
    bar = tqdm(total=num_images, desc=f"writing {out}", disable=not progress)
    written = {}
    for split, indices in splits.items():
        image_dir = out / split if format == "aitod" else out / "JPEGImages"
        image_dir.mkdir(parents=True, exist_ok=True)
        records = []
        for i in indices:
            image, boxes, box_labels = synthesize_image(np.random.default_rng([seed, i]), image_size, labels)
            path = image_dir / f"{i + 1:05d}{'.png' if format == 'aitod' else '.jpg'}"
            options = (
                [cv2.IMWRITE_PNG_COMPRESSION, 3] if format == "aitod" else [cv2.IMWRITE_JPEG_QUALITY, 92]
            )
            if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), options):
                raise KLDetDataError(f"cannot write image file {path}")
            records.append(Record(path, image_size, image_size, boxes, box_labels, image_id=i + 1))
            bar.update()
        written[split] = _write_split(out, split, records, format, image_dir)
    bar.close()
    return written


def _write_dota(
    out: Path, splits: dict[str, range], seed: int, image_size: int, geotiff: bool, progress: bool
) -> dict[str, Path]:
    """The DOTA-layout scenes of :func:`generate`; returns each split's ``labelTxt`` folder."""
    if geotiff:
        rasterio = rasterio_module()
    written = {}
    with tqdm(total=sum(map(len, splits.values())), desc=f"writing {out}", disable=not progress) as bar:
        for split, indices in splits.items():
            image_dir, label_dir = out / split / "images", out / split / "labelTxt"
            image_dir.mkdir(parents=True, exist_ok=True)
            label_dir.mkdir(parents=True, exist_ok=True)
            for i in indices:
                image, boxes, labels = synthesize_image(
                    np.random.default_rng([seed, i]), image_size, DOTA_NAMES
                )
                stem = f"P{i + 1:04d}"
                if geotiff:
                    x, y = GEOTIFF_ORIGIN
                    transform = rasterio.Affine(
                        GEOTIFF_PIXEL, 0.0, x + i * image_size * GEOTIFF_PIXEL, 0.0, -GEOTIFF_PIXEL, y
                    )
                    profile = {"driver": "GTiff", "width": image_size, "height": image_size, "count": 3}
                    profile.update(dtype="uint8", crs=GEOTIFF_CRS, transform=transform, compress="deflate")
                    with rasterio.open(image_dir / f"{stem}.tif", "w", **profile) as raster:
                        raster.write(image.transpose(2, 0, 1))
                else:
                    path = image_dir / f"{stem}.png"
                    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
                        raise KLDetDataError(f"cannot write image file {path}")
                lines = ["imagesource:kldet-synthetic", f"gsd:{GEOTIFF_PIXEL}"]
                for (x0, y0, x1, y1), label in zip(boxes.tolist(), labels.tolist(), strict=True):
                    corners = (x0, y0, x1, y0, x1, y1, x0, y1)
                    lines.append(" ".join(f"{v:g}" for v in corners) + f" {DOTA_NAMES[label]} 0")
                (label_dir / f"{stem}.txt").write_text("\n".join(lines) + "\n")
                bar.update()
            written[split] = label_dir
    return written


def _write_split(out: Path, split: str, records: list[Record], format: str, image_dir: Path) -> Path:
    """Writes the annotations of one split; returns the annotation or split file."""
    if format == "aitod":
        path = out / "annotations" / f"{split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        coco = to_coco(records, AITOD_CLASSES, range(1, len(AITOD_CLASSES) + 1), image_dir)
        path.write_text(json.dumps(coco))
        return path
    (out / "Annotations").mkdir(parents=True, exist_ok=True)
    names = [DIOR_NAMES.get(label, "") for label in range(len(AITOD_CLASSES))]
    dior_label = {label: DIOR_CLASSES.index(name) for label, name in DIOR_NAMES.items()}
    for record in records:
        write_voc_xml(out / "Annotations" / f"{record.image_path.stem}.xml", record, names)
        record.labels = np.array([dior_label[label] for label in record.labels.tolist()], np.int64)
    path = out / "ImageSets" / "Main" / f"{split}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{r.image_path.stem}\n" for r in records))
    return path


def synthesize_image(
    rng: np.random.Generator, image_size: int = 512, labels: Sequence[int] = range(8)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draws one scene.

    Args:
        labels: AI-TOD class indices that may be drawn (others are left out, not drawn unlabelled).

    Returns:
        image (S, S, 3) uint8 RGB, boxes (N, 4) float32 ``xyxy`` tight around each object's pixels,
        labels (N,) int64 AI-TOD class indices.
    """
    scene = _Scene(rng, image_size, labels)
    scene.fields()
    for _ in range(rng.poisson(1.6 * scene.area)):
        scene.road()
    if rng.random() < 0.45:
        scene.river()
    if rng.random() < 0.35:
        scene.sea()
    if rng.random() < 0.06:  # an image with no objects at all
        scene.allowed = set()
    layers = (
        (scene.parking_lot, 1.2),
        (scene.residential, 0.5),
        (scene.tank_farm, 0.35),
        (scene.apron, 0.3),
        (scene.wind_farm, 0.22),
        (scene.crowd, 0.4),
    )
    for layer, rate in layers:
        for _ in range(rng.poisson(rate * scene.area)):
            layer()
    scene.traffic()
    scene.harbour_and_ships()
    return scene.finish()


class _Scene:
    """Background layers and the object placement that keeps objects apart and boxes tight."""

    def __init__(self, rng: np.random.Generator, size: int, labels: Sequence[int]):
        self.rng, self.size = rng, size
        self.area = (size / 512) ** 2
        self.allowed = set(labels)
        self.image = np.zeros((size, size, 3), np.float32)
        self.water = np.zeros((size, size), np.uint8)
        self.open_water = np.zeros((size, size), np.uint8)  # open water, where harbours are
        self.used = np.zeros((size, size), np.uint8)  # ground claimed by a lot, block, farm or apron
        self.taken = np.zeros((size, size), np.uint8)  # object pixels, grown by one so objects never touch
        self.roads: list[np.ndarray] = []
        self.rivers: list[tuple[np.ndarray, float]] = []
        self.boxes: list[tuple[int, int, int, int]] = []
        self.labels: list[int] = []

    # --- background -------------------------------------------------------------------------------

    def fields(self) -> None:
        """A rotated patchwork of fields with row texture and low-frequency shading."""
        rng, size = self.rng, self.size
        cells = int(rng.integers(3, 8))
        grid = _FIELDS[rng.integers(0, len(_FIELDS), (cells + 2, cells + 2))]
        grid = grid + rng.normal(0, 8, grid.shape).astype(np.float32)
        big = cv2.resize(grid, (2 * size, 2 * size), interpolation=cv2.INTER_NEAREST)
        rotation = cv2.getRotationMatrix2D((size, size), float(rng.uniform(0, 180)), 1.0)
        rotation[:, 2] -= size / 2
        self.image[:] = cv2.warpAffine(big, rotation, (size, size), flags=cv2.INTER_NEAREST)
        y, x = np.mgrid[0:size, 0:size].astype(np.float32)
        angle = rng.uniform(0, np.pi)
        rows = np.sin((x * np.cos(angle) + y * np.sin(angle)) * rng.uniform(0.5, 1.2))
        self.image += (rows * rng.uniform(2, 6))[..., None]
        self.image += _smooth_noise(rng, size, 24, 10)[..., None]

    def road(self) -> None:
        """A straight road across the image; vehicles are put on it later."""
        rng, size = self.rng, self.size
        a, b = _edge_point(rng, size), _edge_point(rng, size)
        width = float(rng.uniform(7, 14))
        cv2.line(self.image, _pt(a), _pt(b), _ASPHALT.tolist(), int(width), cv2.LINE_AA)
        cv2.line(self.image, _pt(a), _pt(b), (120, 120, 118), 1, cv2.LINE_AA)
        self.roads.append(np.array([a, b, (width, 0)], np.float32))

    def river(self) -> None:
        """A meandering river; bridges cross it later."""
        rng, size = self.rng, self.size
        a, b = _edge_point(rng, size), _edge_point(rng, size)
        t = np.linspace(0, 1, 12)[:, None]
        normal = np.array([a[1] - b[1], b[0] - a[0]]) / (np.hypot(*(b - a)) + 1e-6)
        wiggle = np.sin(t * np.pi * rng.uniform(1, 3) + rng.uniform(0, 6)) * rng.uniform(10, 40)
        points = a + (b - a) * t + normal * wiggle
        width = float(rng.uniform(16, 40))
        mask = np.zeros_like(self.water)
        cv2.polylines(mask, [np.round(points).astype(np.int32)], False, 1, int(width), cv2.LINE_8)
        self._paint_water(mask)
        self.rivers.append((points, width))

    def sea(self) -> None:
        """Open water beyond a wavy coastline along one side of the image."""
        rng, size = self.rng, self.size
        depth = rng.uniform(0.2, 0.45) * size
        along = np.arange(size, dtype=np.float32)
        coast = depth + np.sin(along / size * np.pi * rng.uniform(1, 4) + rng.uniform(0, 6)) * size * 0.06
        coast += _smooth_noise(rng, size, 16, 6)[0]
        mask = (np.arange(size)[:, None] < coast[None, :]).astype(np.uint8)
        mask = np.rot90(mask, int(rng.integers(0, 4))).copy()
        self._paint_water(mask)
        self.open_water |= mask

    def _paint_water(self, mask: np.ndarray) -> None:
        water = _WATER + self.rng.normal(0, 4, 3).astype(np.float32)
        shade = _smooth_noise(self.rng, self.size, 32, 5)[..., None]
        inside = mask.astype(bool)
        self.image[inside] = (water + shade)[inside]
        self.water |= mask

    def _claim(self, width: float, height: float) -> tuple[float, float, float] | None:
        """Centre and angle of a free dry rectangle of ground, claimed for a cluster; None if there is none."""
        for _ in range(8):
            cx, cy = self.rng.uniform(0, self.size, 2)
            angle = float(self.rng.uniform(0, 180))
            corners = cv2.boxPoints(((cx, cy), (width, height), angle))
            mask = np.zeros_like(self.used)
            cv2.fillPoly(mask, [np.round(corners).astype(np.int32)], 1)
            if mask.sum() < 0.6 * width * height or (mask & (self.used | self.water)).any():
                continue
            self.used |= mask
            return cx, cy, angle
        return None

    def _ground(self, cx: float, cy: float, width: float, height: float, angle: float, colour) -> None:
        corners = cv2.boxPoints(((cx, cy), (width, height), angle))
        cv2.fillPoly(self.image, [np.round(corners).astype(np.int32)], np.asarray(colour, float).tolist())

    # --- clusters of objects ------------------------------------------------------------------------

    def parking_lot(self) -> None:
        """Rows of cars parked side by side on asphalt."""
        rng = self.rng
        length = float(rng.uniform(8, 14))
        rows, columns = int(rng.integers(2, 6)), int(rng.integers(4, 14))
        pitch_x, pitch_y = length * 0.55 + 2, length + 4
        spot = self._claim(columns * pitch_x + 6, rows * pitch_y + 6)
        if spot is None:
            return
        cx, cy, angle = spot
        self._ground(
            cx, cy, columns * pitch_x + 6, rows * pitch_y + 6, angle, _ASPHALT * rng.uniform(0.85, 1.15)
        )
        fill = rng.uniform(0.55, 0.95)
        for r in range(rows):
            for c in range(columns):
                if rng.random() < fill:
                    x, y = _rotate(((c - (columns - 1) / 2) * pitch_x, (r - (rows - 1) / 2) * pitch_y), angle)
                    car_angle = angle + 90 + rng.normal(0, 4) + 180 * (rng.random() < 0.5)
                    self.vehicle(cx + x, cy + y, length * rng.uniform(0.85, 1.15), car_angle)

    def residential(self) -> None:
        """Houses in a grid; some have a swimming pool, some people around."""
        rng = self.rng
        rows, columns = int(rng.integers(2, 4)), int(rng.integers(2, 5))
        pitch = float(rng.uniform(30, 40))
        spot = self._claim(columns * pitch, rows * pitch)
        if spot is None:
            return
        cx, cy, angle = spot
        self._ground(cx, cy, columns * pitch, rows * pitch, angle, (112, 118, 90))
        for r in range(rows):
            for c in range(columns):
                x, y = _rotate(((c - (columns - 1) / 2) * pitch, (r - (rows - 1) / 2) * pitch), angle)
                house = _rect(cx + x - 4, cy + y - 4, pitch * 0.4, pitch * 0.32, angle)
                roof = _ROOFS[rng.integers(0, len(_ROOFS))]
                cv2.fillPoly(self.image, [np.round(house).astype(np.int32)], roof.tolist())
                if rng.random() < 0.6:
                    px, py = _rotate((pitch * 0.25, pitch * 0.22), angle)
                    self.swimming_pool(cx + x + px, cy + y + py, rng.uniform(6, 16), angle + rng.normal(0, 5))
                for _ in range(rng.poisson(0.6)):
                    px, py = _rotate(rng.uniform(-0.45, 0.45, 2) * pitch, angle)
                    self.person(cx + x + px, cy + y + py)

    def tank_farm(self) -> None:
        """Storage tanks in a grid on light ground."""
        rng = self.rng
        diameter = float(rng.uniform(8, 30))
        rows, columns = int(rng.integers(1, 4)), int(rng.integers(2, 6))
        pitch = diameter * rng.uniform(1.3, 1.7)
        spot = self._claim(columns * pitch + 4, rows * pitch + 4)
        if spot is None:
            return
        cx, cy, angle = spot
        self._ground(cx, cy, columns * pitch + 4, rows * pitch + 4, angle, (176, 168, 150))
        for r in range(rows):
            for c in range(columns):
                x, y = _rotate(((c - (columns - 1) / 2) * pitch, (r - (rows - 1) / 2) * pitch), angle)
                self.storage_tank(cx + x, cy + y, diameter * rng.uniform(0.85, 1.1))

    def apron(self) -> None:
        """Planes parked on concrete, with a few service vehicles."""
        rng = self.rng
        span = float(rng.uniform(24, 64))
        count = int(rng.integers(1, 4))
        spot = self._claim(count * span * 1.2 + 10, span * 1.6)
        if spot is None:
            return
        cx, cy, angle = spot
        self._ground(cx, cy, count * span * 1.2 + 10, span * 1.6, angle, _CONCRETE)
        for k in range(count):
            x, y = _rotate(((k - (count - 1) / 2) * span * 1.2, 0), angle)
            self.airplane(cx + x, cy + y, span * rng.uniform(0.85, 1.05), angle + 90 + rng.normal(0, 8))
            for _ in range(rng.poisson(1.0)):
                vx, vy = _rotate((rng.uniform(-0.5, 0.5) * span, span * 0.65), angle)
                self.vehicle(cx + x + vx, cy + y + vy, rng.uniform(7, 12), angle + rng.uniform(0, 180))

    def wind_farm(self) -> None:
        """Wind mills spread over the fields."""
        rng = self.rng
        for _ in range(int(rng.integers(2, 7))):
            x, y = rng.uniform(0, self.size, 2)
            if not self.water[int(y), int(x)] and not self.used[int(y), int(x)]:
                self.wind_mill(x, y, rng.uniform(12, 34), rng.uniform(0, 120))

    def crowd(self) -> None:
        """A loose group of people, often along a road."""
        rng = self.rng
        if self.roads and rng.random() < 0.6:
            a, b, (width, _) = self.roads[int(rng.integers(0, len(self.roads)))]
            x, y = a + (b - a) * rng.uniform(0.1, 0.9)
        else:
            x, y = rng.uniform(0, self.size, 2)
        for _ in range(int(rng.integers(2, 9))):
            self.person(x + rng.normal(0, 10), y + rng.normal(0, 10))

    def traffic(self) -> None:
        """Vehicles driving along the roads, in both lanes."""
        rng = self.rng
        for a, b, (width, _) in self.roads:
            direction = (b - a) / (np.hypot(*(b - a)) + 1e-6)
            normal = np.array([-direction[1], direction[0]])
            angle = math.degrees(math.atan2(direction[1], direction[0]))
            for _ in range(rng.poisson(np.hypot(*(b - a)) / 60)):
                lane = 1 if rng.random() < 0.5 else -1
                x, y = a + (b - a) * rng.uniform(0, 1) + normal * lane * width / 4
                self.vehicle(x, y, rng.uniform(8, 15), angle + 90 * (1 - lane))

    def harbour_and_ships(self) -> None:
        """Piers with ships moored side by side, bridges over rivers, ships under way on open water."""
        rng = self.rng
        ys, xs = np.nonzero(self.open_water)
        moorings = []
        for _ in range(rng.poisson(1.5 * self.area) if len(xs) else 0):
            k = int(rng.integers(0, len(xs)))
            length, angle, count = (
                float(rng.uniform(10, 40)),
                float(rng.uniform(0, 180)),
                int(rng.integers(2, 8)),
            )
            pitch = length * rng.uniform(0.38, 0.5)
            sx, sy = _rotate((-length * 0.5 - 4, (count - 1) * pitch / 2), angle)
            pier = np.round(_rect(xs[k] + sx, ys[k] + sy, 5, count * pitch + 8, angle)).astype(np.int32)
            cv2.fillPoly(self.image, [pier], (112, 100, 84))
            cv2.fillPoly(self.taken, [pier], 1)
            moorings.append((xs[k], ys[k], length, angle, count, pitch))
        for points, width in self.rivers:
            for _ in range(int(rng.integers(1, 3))):
                k = int(rng.integers(1, len(points) - 1))
                direction = points[k + 1] - points[k - 1]
                angle = math.degrees(math.atan2(direction[1], direction[0])) + 90
                length = width + rng.uniform(6, 16)
                ends = [points[k] + _rotate((side * length / 2, 0), angle) for side in (-1, 1)]
                if not any(self.water[_clamp(y, self.size), _clamp(x, self.size)] for x, y in ends):
                    self.bridge(*points[k], length, rng.uniform(3, 8), angle)
        for x, y, length, angle, count, pitch in moorings:
            for j in range(count):
                ox, oy = _rotate((0, j * pitch), angle)
                self.ship(x + ox, y + oy, length * rng.uniform(0.8, 1.0), angle + rng.normal(0, 2))
        ys, xs = np.nonzero(self.water)
        for _ in range(rng.poisson(6 * self.water.mean() * self.area)):
            k = int(rng.integers(0, len(xs)))
            self.ship(xs[k], ys[k], rng.uniform(6, 30), rng.uniform(0, 360))

    # --- single objects (RGB colours light or saturated, so they stand out) --------------------------

    def vehicle(self, x: float, y: float, length: float, angle: float) -> None:
        if self.water[_clamp(y, self.size), _clamp(x, self.size)]:
            return
        colour = _CARS[self.rng.integers(0, len(_CARS))]
        parts = [(_rect(x, y, length, length * self.rng.uniform(0.45, 0.55), angle), colour)]
        if length >= 9:  # a dark windscreen in front of the roof
            wx, wy = _rotate((length * 0.18, 0), angle)
            parts.append((_rect(x + wx, y + wy, length * 0.14, length * 0.38, angle), colour * 0.35))
        self.place(VEHICLE, parts)

    def person(self, x: float, y: float) -> None:
        if self.water[_clamp(y, self.size), _clamp(x, self.size)]:
            return
        colour = _PEOPLE[self.rng.integers(0, len(_PEOPLE))]
        self.place(PERSON, [(_circle(x, y, self.rng.uniform(1.0, 2.6)), colour)])

    def swimming_pool(self, x: float, y: float, length: float, angle: float) -> None:
        colour = np.array([40, 200, 235], np.float32) * self.rng.uniform(0.9, 1.08)
        width = length * self.rng.uniform(0.45, 0.75)
        self.place(
            SWIMMING_POOL,
            [
                (_rect(x, y, length, width, angle), colour + 15),
                (_rect(x, y, length - 2, width - 2, angle), colour),
            ],
        )

    def storage_tank(self, x: float, y: float, diameter: float) -> None:
        shade = self.rng.uniform(205, 245)
        parts = [(_circle(x, y, diameter / 2), np.full(3, shade * 0.8, np.float32))]
        parts.append((_circle(x, y, diameter * 0.4), np.full(3, shade, np.float32)))
        self.place(STORAGE_TANK, parts)

    def ship(self, x: float, y: float, length: float, angle: float) -> None:
        if not self.water[_clamp(y, self.size), _clamp(x, self.size)]:
            return
        width = length * self.rng.uniform(0.22, 0.32)
        hull = np.array([[-0.5, -0.5], [0.25, -0.5], [0.5, 0], [0.25, 0.5], [-0.5, 0.5]]) * (length, width)
        colour = np.full(3, self.rng.uniform(215, 250), np.float32)
        parts = [(_local(hull, x, y, angle), colour)]
        if length >= 14:  # a darker deckhouse towards the stern
            sx, sy = _rotate((-length * 0.2, 0), angle)
            parts.append((_rect(x + sx, y + sy, length * 0.2, width * 0.6, angle), colour * 0.7))
        self.place(SHIP, parts)

    def bridge(self, x: float, y: float, length: float, width: float, angle: float) -> None:
        colour = np.array([196, 188, 166], np.float32) * self.rng.uniform(0.92, 1.05)
        self.place(BRIDGE, [(_rect(x, y, length, width, angle), colour)])

    def airplane(self, x: float, y: float, length: float, angle: float) -> None:
        colour = np.full(3, self.rng.uniform(225, 250), np.float32)
        parts = []
        for (dx, dy), (part_length, part_width) in (
            ((0, 0), (length, length * 0.13)),  # fuselage
            ((length * 0.06, 0), (length * 0.17, length * 0.95)),  # wings
            ((-length * 0.42, 0), (length * 0.1, length * 0.38)),  # tailplane
        ):
            ox, oy = _rotate((dx, dy), angle)
            parts.append((_rect(x + ox, y + oy, part_length, part_width, angle), colour))
        self.place(AIRPLANE, parts)

    def wind_mill(self, x: float, y: float, diameter: float, angle: float) -> None:
        colour = np.full(3, self.rng.uniform(232, 252), np.float32)
        blade = max(1.2, diameter * 0.07)
        parts = [(_circle(x, y, max(1.2, diameter * 0.08)), colour)]
        for k in range(3):
            ox, oy = _rotate((diameter / 4, 0), angle + 120 * k)
            parts.append((_rect(x + ox, y + oy, diameter / 2, blade, angle + 120 * k), colour))
        self.place(WIND_MILL, parts)

    def place(self, label: int, parts: list[tuple[np.ndarray, np.ndarray]]) -> bool:
        """Draws an object made of filled polygons, unless it leaves the image or touches another object.

        Args:
            parts: ``(polygon (k, 2) xy in image pixels, RGB colour)``, drawn in order.

        Returns:
            whether it was drawn; its box is then the extent of its pixels.
        """
        if label not in self.allowed:
            return False
        points = np.concatenate([polygon for polygon, _ in parts])
        x0, y0 = np.floor(points.min(0)).astype(int) - 1
        x1, y1 = np.ceil(points.max(0)).astype(int) + 2
        if x0 < 0 or y0 < 0 or x1 > self.size or y1 > self.size:
            return False
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        colours = np.zeros((y1 - y0, x1 - x0, 3), np.float32)
        for polygon, colour in parts:
            part = np.zeros_like(mask)
            cv2.fillPoly(part, [np.round((polygon - (x0, y0)) * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
            colours[part > 0] = colour
            mask |= part
        if (mask & self.taken[y0:y1, x0:x1]).any():
            return False
        inside = mask > 0
        self.image[y0:y1, x0:x1][inside] = colours[inside] + self.rng.normal(0, 5, (int(inside.sum()), 3))
        self.taken[y0:y1, x0:x1] |= cv2.dilate(mask, np.ones((3, 3), np.uint8))
        ys, xs = np.nonzero(mask)
        self.boxes.append((x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1))
        self.labels.append(label)
        return True

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sensor blur and noise; the image as uint8 with the boxes and labels."""
        image = cv2.GaussianBlur(self.image, (3, 3), 0.6)
        image += self.rng.normal(0, 3, image.shape).astype(np.float32)
        image = np.clip(image * self.rng.uniform(0.9, 1.1) + self.rng.uniform(-10, 10), 0, 255).astype(
            np.uint8
        )
        boxes = np.array(self.boxes, np.float32).reshape(-1, 4)
        return image, boxes, np.array(self.labels, np.int64)


def _rotate(offset: Sequence[float], angle: float) -> np.ndarray:
    """``offset`` (x, y) rotated by ``angle`` degrees (image axes: y down, so clockwise on screen)."""
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    return np.array([offset[0] * c - offset[1] * s, offset[0] * s + offset[1] * c])


def _local(points: np.ndarray, x: float, y: float, angle: float) -> np.ndarray:
    """(k, 2) ``points`` in an object's frame (x along its length) placed at ``(x, y)`` turned by ``angle``."""
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    return points @ np.array([[c, s], [-s, c]]) + (x, y)


def _rect(x: float, y: float, length: float, width: float, angle: float) -> np.ndarray:
    """(4, 2) corners of a ``length`` x ``width`` rectangle centred on ``(x, y)``, its length along ``angle``."""
    corners = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]]) * (length, width)
    return _local(corners, x, y, angle)


def _circle(x: float, y: float, radius: float) -> np.ndarray:
    """(k, 2) polygon of a circle."""
    t = np.linspace(0, 2 * np.pi, max(8, int(radius * 4)), endpoint=False)[:, None]
    return np.hstack([np.cos(t), np.sin(t)]) * radius + (x, y)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, amplitude: float) -> np.ndarray:
    """(size, size) float32 noise varying over about ``size / cells`` pixels."""
    coarse = rng.normal(0, amplitude, (cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def _edge_point(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random point on the image border."""
    t = rng.uniform(0, size)
    return np.array([(t, 0), (t, size - 1), (0, t), (size - 1, t)][int(rng.integers(0, 4))], np.float64)


def _pt(point: np.ndarray) -> tuple[int, int]:
    return int(round(point[0])), int(round(point[1]))


def _clamp(value: float, size: int) -> int:
    return min(max(int(value), 0), size - 1)
