"""Annotated scenes cut into training tiles (``kldet-data tile``): images, COCO JSON per split, and where
each tile lies in its scene.

The tiles are kldet-predict's grid (:func:`kldet.inference.tiling.make_tiles`): windows of ``size`` pixels
overlapping by at least ``overlap * size``, the last one flush with the scene border, and a scene axis no
longer than ``size`` one window of its own length. So a model is trained on the windows it will see.

A tile's annotations come from the scene's ground truth (``Record.gt_*``: every box as annotated, the
ignored ones included), each clipped to the scene and then to the tile:

- an object (not ignored) is kept, clipped to the tile, when the part inside the tile is at least
  ``min_visibility`` of its area in the scene; below that it becomes an ignored region of its class
  (``iscrowd: 1``, ``cut_boxes="ignore"``, the default) or is dropped (``cut_boxes="drop"``). An ignored
  region is what a half object is: neither an object the model must find nor background. Evaluation on
  the tiles matches a detection of it by the crowd rule (no false positive), and loaders that honour
  ignored boxes (MMDetection's ``bboxes_ignore``) do not train on it; kldet's own training gives it no
  target, as every ignored box (its points are background, as they would be with ``drop``);
- an ignored box of the scene stays an ignored box in every tile it reaches, clipped;
- ``area`` is the scene's ``area`` times the fraction of the box inside the tile (the ``area`` field of a
  box inside the tile is kept as written);
- boxes of zero area in the scene (zero width or height, or wholly outside it) are in no tile.

Tiles *without objects* (they may hold ignored regions): of the ``E`` such tiles of a split, exactly
``round(empty_fraction * E)``, drawn at random (per ``seed``), are written; every tile with objects is.

Streaming: all tiles are planned from the annotations first (no pixels); then one scene at a time is
opened with :func:`kldet.inference.sources.open_image` (PNG / JPEG decoded once, GeoTIFF read window by
window), its tiles written, and the scene released before the next is opened.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from kldet.data.coco import to_coco
from kldet.data.convert import write_json_atomic
from kldet.data.raster import RasterPreprocess
from kldet.data.records import DetectionSet, Record
from kldet.data.windows import crop_boxes
from kldet.errors import KLDetConfigError, KLDetDataError
from kldet.inference.render import save_image
from kldet.inference.sources import open_image
from kldet.inference.tiling import Tile, make_tiles

#: What ``cut_boxes=`` does with an object cut below ``min_visibility``.
CUT_BOX_MODES = ("ignore", "drop")
#: ``split_by=``: whole scenes to train / val, or one ``tiles`` split.
SPLIT_MODES = ("scene", "none")
#: Tile image formats (the file suffix).
TILE_IMAGE_FORMATS = ("png", "jpg")
#: The smallest tile side: kldet-predict's smallest tile (the P2-P6 network's smallest input).
MIN_TILE_SIZE = 96


class TileAnnotations(NamedTuple):
    """The annotations of one tile, in tile pixels.

    Attributes:
        boxes: (K, 4) float64 ``xyxy``, inside ``[0, width] x [0, height]`` of the tile.
        labels: (K,) int64 class indices.
        areas: (K,) float64 ``area`` fields: the scene's, times the share of the box inside the tile.
        ignore: (K,) bool ignored regions (the scene's ignored boxes, and objects cut below
            ``min_visibility`` with ``cut_boxes="ignore"``).
        scene_index: (K,) int64 index of each box in the scene's ``gt_*`` arrays.
        cut_ignored: objects cut below ``min_visibility`` that became ignored regions.
        cut_dropped: objects cut below ``min_visibility`` that were dropped.
    """

    boxes: np.ndarray
    labels: np.ndarray
    areas: np.ndarray
    ignore: np.ndarray
    scene_index: np.ndarray
    cut_ignored: int
    cut_dropped: int

    @property
    def objects(self) -> int:
        """Boxes that are objects (not ignored)."""
        return int((~self.ignore).sum())


def tile_annotations(
    record: Record, tile: Tile, min_visibility: float, cut_boxes: str = "ignore"
) -> TileAnnotations:
    """The part of a scene's ground truth inside one tile (the rules of the module docstring).

    Args:
        record: the scene; its ``gt_boxes`` (M, 4) ``xyxy`` in scene pixels, ``gt_labels``, ``gt_areas``,
            ``gt_ignore``.
        tile: the window ``[x0, x1) x [y0, y1)`` in scene pixels.
        min_visibility: an object is kept when (its area inside the tile) / (its area inside the scene)
            is at least this, in ``(0, 1]``.
        cut_boxes: ``"ignore"`` or ``"drop"``: what becomes of an object cut below ``min_visibility``.
    """
    scene, _ = _scene_boxes(record)
    inside, fraction, kept = crop_boxes(scene, (tile.x0, tile.y0, tile.x1, tile.y1), min_visibility)
    visible = fraction > 0
    cut = visible & ~record.gt_ignore & ~kept
    index = np.flatnonzero(visible & ~cut if cut_boxes == "drop" else visible)
    return TileAnnotations(
        boxes=inside[index] - [tile.x0, tile.y0, tile.x0, tile.y0],
        labels=record.gt_labels[index],
        areas=record.gt_areas[index] * fraction[index],
        ignore=record.gt_ignore[index] | cut[index],
        scene_index=index,
        cut_ignored=int(cut.sum()) if cut_boxes == "ignore" else 0,
        cut_dropped=int(cut.sum()) if cut_boxes == "drop" else 0,
    )


def scene_splits(num_scenes: int, split_by: str, val_fraction: float, seed: int) -> list[str]:
    """The split of each scene: ``"tiles"`` for all (``split_by="none"``), or ``"train"`` / ``"val"`` with
    ``min(max(round(num_scenes * val_fraction), 1), num_scenes - 1)`` val scenes drawn at random from
    ``numpy.random.default_rng([seed, 0])`` (``split_by="scene"``; needs two scenes)."""
    if split_by == "none":
        return ["tiles"] * num_scenes
    if num_scenes < 2:
        raise KLDetConfigError(
            f"split_by=scene needs at least 2 scenes, the data set has {num_scenes} (use split_by=none)"
        )
    num_val = min(max(round(num_scenes * val_fraction), 1), num_scenes - 1)
    val = set(np.random.default_rng([seed, 0]).permutation(num_scenes)[:num_val].tolist())
    return ["val" if i in val else "train" for i in range(num_scenes)]


@dataclass
class SplitSummary:
    """What one split of :func:`write_tiles` holds; box counts are per tile (a box in two tiles counts twice).

    Attributes:
        scenes: scenes of the split; tiles: tiles written.
        empty_kept, empty_dropped: tiles without objects written and left out.
        objects: object boxes in the written tiles; ignored: ignored boxes of the scenes in them.
        cut_ignored, cut_dropped: objects cut below ``min_visibility`` in the written tiles, ignored / dropped.
        annotation_file, image_dir: where the split was written.
    """

    scenes: int = 0
    tiles: int = 0
    empty_kept: int = 0
    empty_dropped: int = 0
    objects: int = 0
    ignored: int = 0
    cut_ignored: int = 0
    cut_dropped: int = 0
    annotation_file: Path | None = None
    image_dir: Path | None = None


@dataclass
class TilingSummary:
    """What :func:`write_tiles` wrote: ``splits`` by name (``train``, ``val`` or ``tiles``), the scene objects
    whole or visible enough in no tile (``objects_in_no_tile``), and the scene boxes of zero area
    (``zero_area_boxes``, in no tile)."""

    splits: dict[str, SplitSummary] = field(default_factory=dict)
    objects_in_no_tile: int = 0
    zero_area_boxes: int = 0


class _PlannedTile(NamedTuple):
    scene: int
    tile: Tile
    annotations: TileAnnotations


def tile_file_name(scene_name: str | os.PathLike, tile: Tile, image_format: str) -> str:
    """``<scene path without suffix>_<x0>_<y0>.<image_format>``, e.g. ``sub/a_800_0.png``."""
    stem = Path(scene_name).with_suffix("").as_posix()
    return f"{stem}_{tile.x0}_{tile.y0}.{image_format}"


def write_tiles(
    dataset: DetectionSet,
    out: str | Path,
    image_root: str | Path | None = None,
    size: int = 800,
    overlap: float = 0.2,
    min_visibility: float = 0.5,
    cut_boxes: str = "ignore",
    empty_fraction: float = 0.1,
    split_by: str = "scene",
    val_fraction: float = 0.2,
    seed: int = 0,
    image_format: str = "png",
    progress: bool = False,
    raster: RasterPreprocess = RasterPreprocess(),
) -> TilingSummary:
    """Cuts the scenes of ``dataset`` into tiles and writes them with COCO JSON per split.

    Writes ``out/images/<split>/<tile file name>`` (:func:`tile_file_name`) and ``out/annotations/<split>.json``
    (so ``data=coco data.root=out`` and ``kldet-data check format=coco root=out split=<split>`` read them). The
    categories are the data set's (ids kept); tile image ids run from 1 over all splits. Each image entry
    maps the tile back to its scene: ``scene`` (the scene's path relative to ``image_root``), ``scene_id``
    (its image id), ``x0``, ``y0`` (the tile's offset): a tile box plus ``(x0, y0, x0, y0)`` is the scene
    box clipped to the tile.

    Args:
        dataset: the scenes, as :func:`~kldet.data.read_dataset` reads them.
        out: the output folder.
        image_root: the folder the scenes' ``scene`` names are relative to (the ``images=`` folder of a
            COCO file, whose ``file_name`` they then repeat); None: the deepest folder holding every scene.
        size, overlap: the tile grid (:func:`~kldet.inference.tiling.make_tiles`), ``size >=``
            :data:`MIN_TILE_SIZE`, ``overlap`` in ``[0, 1)``.
        min_visibility, cut_boxes: see :func:`tile_annotations`.
        empty_fraction: the share of the tiles without objects that is written, per split, in ``[0, 1]``.
        split_by, val_fraction, seed: see :func:`scene_splits`; ``seed`` also draws the empty tiles kept.
        image_format: ``"png"`` or ``"jpg"``.
        progress: a progress bar of the tiles written, on stderr.
        raster: how GeoTIFF scenes' bands become 8-bit RGB (:mod:`kldet.data.raster`): give kldet-predict the
            same ``bands=`` and ``stretch=`` on the scenes, so that it sees the pixels training saw (the
            percentiles are per scene, in both).

    Raises:
        KLDetConfigError: a setting out of range.
        KLDetDataError: two scenes that would write the same tile files, or a scene whose pixels disagree
            with its annotated size.
    """
    check_tile_settings(
        size, overlap, min_visibility, cut_boxes, empty_fraction, split_by, val_fraction, image_format
    )
    out, records = Path(out), dataset.records
    if image_root is None:
        image_root = (
            Path(os.path.commonpath([record.image_path.parent for record in records])) if records else out
        )
    names = [_scene_name(record.image_path, image_root) for record in records]
    _check_distinct_stems(names)
    splits = scene_splits(len(records), split_by, val_fraction, seed)
    summary = TilingSummary()
    for split in dict.fromkeys(splits):
        summary.splits[split] = SplitSummary(
            annotation_file=out / "annotations" / f"{split}.json", image_dir=out / "images" / split
        )

    # 1. Every tile's annotations, from the annotations alone.
    planned: dict[str, list[_PlannedTile]] = {split: [] for split in summary.splits}
    for i, record in enumerate(records):
        split = summary.splits[splits[i]]
        split.scenes += 1
        scene_area = _scene_boxes(record)[1]
        summary.zero_area_boxes += int((scene_area <= 0).sum())
        seen = np.zeros(len(record.gt_boxes), bool)
        for tile in make_tiles(record.height, record.width, size, overlap):
            annotations = tile_annotations(record, tile, min_visibility, cut_boxes)
            seen[annotations.scene_index[~annotations.ignore]] = True
            planned[splits[i]].append(_PlannedTile(i, tile, annotations))
        summary.objects_in_no_tile += int((~seen & ~record.gt_ignore & (scene_area > 0)).sum())

    # 2. Which tiles are written: every tile with objects, round(empty_fraction * E) of the E without.
    written: list[_PlannedTile] = []
    for split_index, (name, tiles) in enumerate(planned.items()):
        split = summary.splits[name]
        empty = [k for k, planned_tile in enumerate(tiles) if planned_tile.annotations.objects == 0]
        rng = np.random.default_rng([seed, 1, split_index])
        kept = set(rng.choice(len(empty), round(empty_fraction * len(empty)), replace=False).tolist())
        kept_tiles = {empty[k] for k in kept}
        split.empty_kept, split.empty_dropped = len(kept), len(empty) - len(kept)
        for k, planned_tile in enumerate(tiles):
            if planned_tile.annotations.objects or k in kept_tiles:
                written.append(planned_tile)
                split.tiles += 1
                split.objects += planned_tile.annotations.objects
                split.ignored += (
                    int(planned_tile.annotations.ignore.sum()) - planned_tile.annotations.cut_ignored
                )
                split.cut_ignored += planned_tile.annotations.cut_ignored
                split.cut_dropped += planned_tile.annotations.cut_dropped
    written.sort(key=lambda planned_tile: planned_tile.scene)  # scene by scene, each scene's tiles row-major

    # 3. The pixels, one scene at a time; the records of the tiles for the COCO files.
    tile_records: dict[str, list[Record]] = {name: [] for name in summary.splits}
    mapping: dict[str, list[dict]] = {name: [] for name in summary.splits}
    image_ids = itertools.count(1)
    with tqdm(total=len(written), unit="tile", desc=f"writing {out}", disable=not progress) as bar:
        for scene, scene_tiles in itertools.groupby(written, key=lambda planned_tile: planned_tile.scene):
            record, split = records[scene], splits[scene]
            source = open_image(record.image_path, raster)
            try:
                if (source.width, source.height) != (record.width, record.height):
                    raise KLDetDataError(
                        f"image file {record.image_path} is {source.width}x{source.height}, its annotations "
                        f"say {record.width}x{record.height}"
                    )
                for _, tile, annotations in scene_tiles:
                    path = summary.splits[split].image_dir / tile_file_name(names[scene], tile, image_format)
                    save_image(path, source.read(tile.x0, tile.y0, tile.x1, tile.y1))
                    tile_records[split].append(
                        Record(
                            path,
                            tile.width,
                            tile.height,
                            image_id=next(image_ids),
                            gt_boxes=annotations.boxes,
                            gt_labels=annotations.labels,
                            gt_areas=annotations.areas,
                            gt_ignore=annotations.ignore,
                        )
                    )
                    scene_keys = {"scene": names[scene], "scene_id": int(record.image_id)}
                    mapping[split].append({**scene_keys, "x0": tile.x0, "y0": tile.y0})
                    bar.update(1)
            finally:
                source.close()

    # 4. One COCO file per split.
    for name, split in summary.splits.items():
        coco = to_coco(tile_records[name], dataset.classes, dataset.category_ids, split.image_dir)
        for image, scene_keys in zip(coco["images"], mapping[name], strict=True):
            image.update(scene_keys)
        split.image_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(coco, split.annotation_file)
    return summary


def check_tile_settings(
    size: int,
    overlap: float,
    min_visibility: float,
    cut_boxes: str,
    empty_fraction: float,
    split_by: str,
    val_fraction: float,
    image_format: str,
) -> None:
    """Raises one :class:`~kldet.errors.KLDetConfigError` naming every setting of :func:`write_tiles` out of
    range (before any data is read)."""
    problems = []
    if size < MIN_TILE_SIZE:
        problems.append(
            f"size={size}: tiles must be at least {MIN_TILE_SIZE} px (kldet-predict's smallest tile)"
        )
    if not 0.0 <= overlap < 1.0:
        problems.append(f"overlap={overlap}: a fraction of the tile size in [0, 1)")
    if not 0.0 < min_visibility <= 1.0:
        problems.append(f"min_visibility={min_visibility}: a fraction of a box's area in (0, 1]")
    if not 0.0 <= empty_fraction <= 1.0:
        problems.append(f"empty_fraction={empty_fraction}: a fraction in [0, 1]")
    if split_by == "scene" and not 0.0 < val_fraction < 1.0:
        problems.append(f"val_fraction={val_fraction}: split_by=scene needs a fraction in (0, 1)")
    for key, value, choices in (
        ("cut_boxes", cut_boxes, CUT_BOX_MODES),
        ("split_by", split_by, SPLIT_MODES),
        ("image_format", image_format, TILE_IMAGE_FORMATS),
    ):
        if value not in choices:
            problems.append(f"{key}={value!r}: one of {', '.join(choices)}")
    if problems:
        raise KLDetConfigError("; ".join(problems))


def _scene_boxes(record: Record) -> tuple[np.ndarray, np.ndarray]:
    """The (M, 4) ground-truth boxes clipped to their scene, and their (M,) areas."""
    scene = np.clip(record.gt_boxes, 0.0, [record.width, record.height, record.width, record.height])
    return scene, (scene[:, 2] - scene[:, 0]) * (scene[:, 3] - scene[:, 1])


def _scene_name(path: Path, image_root: str | Path) -> str:
    """The scene's path relative to ``image_root`` (its file name when it lies elsewhere)."""
    try:
        return path.relative_to(image_root).as_posix()
    except ValueError:
        return path.name


def _check_distinct_stems(names: Sequence[str]) -> None:
    stems = Counter(Path(name).with_suffix("").as_posix() for name in names)
    clashes = [name for name in names if stems[Path(name).with_suffix("").as_posix()] > 1]
    if clashes:
        raise KLDetDataError(
            f"scenes {', '.join(clashes[:4])} differ only in their suffix: their tiles would share file names"
        )
