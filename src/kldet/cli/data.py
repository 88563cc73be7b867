"""``kldet-data``: write the synthetic data set, or check a data set and describe it.

kldet-data synth out=DIR num_images=N seed=S [image_size=512] [format=aitod|dior|dota] [val_fraction=0.2]
    [geotiff=true (dota: georeferenced GeoTIFF scenes)]
kldet-data check format=aitod ann=FILE images=DIR      (or format=aitod root=DIR split=NAME)
kldet-data check format=dior root=DIR split=NAME
kldet-data check format=coco ann=FILE images=DIR       (or format=coco root=DIR split=NAME)
    check reads image headers only; add decode=true to decode every image as training does and find
    truncated or corrupt files (kldet-train: data.decode_check=true; data.lenient=true skips bad images)
kldet-data convert from=dota|yolo|visdrone|xview labels=PATH images=DIR out=FILE.json
    [names=FILE (yolo)] [version=1.0|1.5|2.0 (dota)] [difficult=ignore|object (dota)] [lenient=true]
    writes COCO JSON that data=coco and `check format=coco` read (from= is another name for source=)
kldet-data show format=aitod|dior|coco ann=FILE images=DIR out=DIR [ids=[1,2]] [classes=[ship]]
    [results=RES.json] [scale=0] [crops=0] [labels=false]
    PNGs of the ground truth in class colours with a legend; with results=, the detections beside it:
    true positives, false positives and misses at IoU 0.5 (the colours kldet-eval plots= draws)
kldet-data tile format=aitod|dior|coco ann=FILE images=DIR (or root=DIR split=NAME) out=DIR [size=800]
    [overlap=0.2] [min_visibility=0.5] [cut_boxes=ignore|drop] [empty_fraction=0.1] [split_by=scene|none]
    [val_fraction=0.2] [seed=0] [image_format=png|jpg] [lenient=true] [bands=[3,2,1] stretch=[2,98]]
    scenes cut into kldet-predict's tile grid: out/images/<split>/<scene>_<x0>_<y0>.png and
    out/annotations/<split>.json (train + val by whole scenes, or tiles), each image entry with its scene
    and offset; one scene in memory at a time (GeoTIFFs: one tile)
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import MISSING
from rich.console import Console
from rich.table import Table

from kldet.cli.dotlist import option, parse_dotlist
from kldet.cli.report import EXIT_ERROR, EXIT_OK, report_error
from kldet.data import read_dataset
from kldet.data.convert import Conversion, convert, write_json_atomic
from kldet.data.records import PROBLEM_KINDS, DetectionSet
from kldet.data.stats import SIZE_BIN_EDGES, SIZE_BINS, summarize
from kldet.errors import KLDetConfigError, KLDetError

USAGE = (__doc__ or "").split("\n\n", 1)[1]


class SynthFormat(Enum):
    aitod = "aitod"
    dior = "dior"
    dota = "dota"


class ConvertSource(Enum):
    dota = "dota"
    yolo = "yolo"
    visdrone = "visdrone"
    xview = "xview"


class DataFormat(Enum):
    aitod = "aitod"
    dior = "dior"
    coco = "coco"


@dataclass
class SynthConfig:
    """``kldet-data synth``: write the synthetic AI-TOD-like set (see :func:`kldet.data.synthetic.generate`)."""

    out: str = option(MISSING, "output folder")
    num_images: int = option(200, "images in total (train + val)")
    seed: int = option(0, "image i is drawn from the random state [seed, i]")
    image_size: int = option(512, "side of the square images in pixels")
    format: SynthFormat = option(
        SynthFormat.aitod,
        "aitod (COCO JSON + PNG), dior (VOC XML + JPEG) or dota (labelTxt + PNG: scenes to convert and tile)",
    )
    val_fraction: float = option(0.2, "fraction of the images in the val split")
    geotiff: bool = option(
        False, "dota: georeferenced GeoTIFF scenes (UTM 33N, 0.5 m pixels; needs rasterio)"
    )


@dataclass
class DataSetKeys:
    """The keys that name a data set: ``ann`` + ``images`` (aitod, coco) or ``root`` + ``split`` (any format);
    kldet-data check and kldet-analyze assign take them."""

    format: DataFormat = option(DataFormat.aitod, "aitod, dior or coco")
    ann: str | None = option(None, "annotation file (aitod, coco)")
    images: str | None = option(None, "image folder (aitod, coco)")
    root: str | None = option(None, "data set root (aitod, dior, coco)")
    split: str | None = option(None, "split name under root (aitod, dior, coco)")

    def read(self, **options) -> DetectionSet:
        """The data set these keys name, read leniently (every problem counted, not raised);
        ``options``: the other keywords of :func:`kldet.data.read_dataset`."""
        return read_dataset(
            self.format.value, self.root, self.split, self.ann, self.images, strict=False, **options
        )


class CutBoxes(Enum):
    ignore = "ignore"
    drop = "drop"


class SplitBy(Enum):
    scene = "scene"
    none = "none"


class TileImageFormat(Enum):
    png = "png"
    jpg = "jpg"


@dataclass
class CheckConfig(DataSetKeys):
    """``kldet-data check``: ``ann`` + ``images`` (aitod, coco) or ``root`` + ``split`` (any format)."""

    decode: bool = option(
        False, "decode every image as training does, to find truncated or corrupt files (slower)"
    )
    difficult: str = option(
        "object", "dior: VOC difficult objects count as objects (object) or are ignored (ignore)"
    )


@dataclass
class ConvertConfig:
    """``kldet-data convert``: other annotation formats into COCO JSON (:func:`kldet.data.convert.convert`)."""

    source: ConvertSource = option(MISSING, "dota, yolo, visdrone or xview (also from=)")
    labels: str = option(MISSING, "label folder (dota, yolo, visdrone) or GeoJSON file (xview)")
    images: str = option(MISSING, "image folder (file_name is relative to it)")
    out: str = option(MISSING, "COCO JSON file to write")
    names: str | None = option(None, "yolo: class names, one per line, or an Ultralytics data.yaml")
    version: str = option("1.0", "dota: 1.0, 1.5 or 2.0 (the class list)")
    difficult: str = option(
        "ignore", "dota: difficult objects are ignored boxes (ignore) or objects (object)"
    )
    lenient: bool = option(False, "skip and count bad lines and images instead of stopping at the first")


@dataclass
class ShowConfig(DataSetKeys):
    """``kldet-data show``: draw images with their ground truth (and detections) to PNGs."""

    out: str = option(MISSING, "folder for the PNGs (<image id>.png, <image id>_crops.png)")
    ids: list[int] | None = option(None, "image ids to draw, e.g. [3,17] (default: the first `count`)")
    count: int = option(8, "images drawn when ids= is not given")
    classes: list[str] | None = option(None, "draw only these classes, e.g. [ship,vehicle]")
    results: str | None = option(None, "COCO results JSON: detections beside the ground truth, by outcome")
    score_thresh: float = option(0.3, "results: the detections drawn")
    scale: int = option(
        0, "integer upscale factor (nearest neighbour); 0: the longer side to >= 768 px, at most 8"
    )
    crops: int = option(0, "also write zoomed views of this many objects per image, smallest first")
    labels: bool = option(False, "class names by the ground-truth boxes where there is room")
    difficult: str = option(
        "object", "dior: VOC difficult objects count as objects (object) or are ignored (ignore)"
    )


@dataclass
class TileConfig(DataSetKeys):
    """``kldet-data tile``: cut annotated scenes into training tiles (:func:`kldet.data.tiles.write_tiles`)."""

    out: str = option(MISSING, "output folder (images/<split>/, annotations/<split>.json)")
    size: int = option(800, "tile side in pixels, >= 96 (kldet-predict's tile_size)")
    overlap: float = option(0.2, "minimum tile overlap, fraction of size in [0, 1) (kldet-predict's overlap)")
    min_visibility: float = option(0.5, "a cut object is kept when this share of its area is in the tile")
    cut_boxes: CutBoxes = option(
        CutBoxes.ignore, "objects cut below min_visibility: ignore (iscrowd 1) or drop"
    )
    empty_fraction: float = option(0.1, "share of the tiles without objects written, per split (1.0: all)")
    split_by: SplitBy = option(SplitBy.scene, "scene: whole scenes to train or val; none: one tiles split")
    val_fraction: float = option(0.2, "split_by=scene: share of the scenes in val")
    seed: int = option(0, "draws the val scenes and the empty tiles kept")
    image_format: TileImageFormat = option(TileImageFormat.png, "png or jpg tiles")
    bands: list[int] | None = option(
        None, "GeoTIFF scenes: bands written as R, G, B, 1-based: three, e.g. [3,2,1], or one repeated"
    )
    stretch: Any = option(
        None,
        "GeoTIFF scenes of 16-bit or float pixels: [low,high] percentiles per band to 8 bit, e.g. [2,98]",
    )
    lenient: bool = option(
        False, "skip bad images and annotations (counted) instead of stopping at the first"
    )
    difficult: str = option(
        "object", "dior: VOC difficult objects count as objects (object) or are ignored (ignore)"
    )
    progress: bool = option(True, "a progress bar on stderr")


_COMMANDS = {
    "synth": SynthConfig,
    "check": CheckConfig,
    "convert": ConvertConfig,
    "show": ShowConfig,
    "tile": TileConfig,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``kldet-data``; returns the exit status: 0 fine (or help), 1 problems found in the data set or
    any error, bad arguments included (:mod:`kldet.cli.report`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    console = Console(highlight=False, markup=False, soft_wrap=True)
    if argv and argv[0] in ("-h", "--help", "help"):
        console.print(USAGE)
        return EXIT_OK
    if not argv or argv[0] not in _COMMANDS:
        got = f"unknown command {argv[0]!r}" if argv else "no command"
        return report_error(
            "kldet-data", f"{got}: use synth, check, convert, show or tile (see kldet-data --help)"
        )
    command, overrides = argv[0], argv[1:]
    if command == "convert":  # `from` is a Python keyword, so the field is `source`
        overrides = ["source=" + a[len("from=") :] if a.startswith("from=") else a for a in overrides]
    schema = _COMMANDS[command]
    try:
        config = parse_dotlist(schema, overrides, f"kldet-data {command}", schema.__doc__)
        if config is None:
            return EXIT_OK
        run = {"synth": _synth, "check": _check, "convert": _convert, "show": _show, "tile": _tile}[command]
        return run(config, console)
    except KLDetError as error:
        return report_error(f"kldet-data {command}", error)


def _synth(config: SynthConfig, console: Console) -> int:
    from kldet.data.synthetic import generate

    written = generate(
        config.out,
        config.num_images,
        config.seed,
        image_size=config.image_size,
        format=config.format.value,
        val_fraction=config.val_fraction,
        progress=True,
        geotiff=config.geotiff,
    )
    console.print(
        f"wrote {config.num_images} images of {config.image_size}x{config.image_size} to {config.out}"
    )
    for split, path in written.items():
        console.print(f"  {split}: {path}")
    if config.format is SynthFormat.dota:
        train = Path(config.out) / "train"
        console.print(
            f"convert it with: kldet-data convert from=dota labels={train / 'labelTxt'} "
            f"images={train / 'images'} out={Path(config.out) / 'train.json'}"
        )
    else:
        check = f"format={config.format.value} root={config.out} split=train"
        console.print(f"check it with: kldet-data check {check}")
    return EXIT_OK


def _check(config: CheckConfig, console: Console) -> int:
    dataset = config.read(difficult=config.difficult, decode=config.decode, progress=True)
    _print_summary(dataset, console)
    return EXIT_ERROR if dataset.problems else EXIT_OK


def _convert(config: ConvertConfig, console: Console) -> int:
    conversion = convert(
        config.source.value,
        config.labels,
        config.images,
        names=config.names,
        version=config.version,
        difficult=config.difficult,
        strict=not config.lenient,
    )
    write_json_atomic(conversion.coco, config.out)
    console.print(_conversion_report(conversion, config.out))
    for problem in conversion.problems[:5]:
        console.print(f"  [{problem.kind}] {problem}")
    if len(conversion.problems) > 5:
        console.print(f"  ... and {len(conversion.problems) - 5} more")
    console.print(f"check it with: kldet-data check format=coco ann={config.out} images={config.images}")
    return EXIT_OK


def _show(config: ShowConfig, console: Console) -> int:
    from kldet.cli.dotlist import check_writable_folder
    from kldet.data.images import load_image
    from kldet.inference.render import (
        auto_scale,
        class_colors,
        draw_example,
        object_crops,
        save_image,
    )

    if config.scale < 0 or config.crops < 0 or config.count < 1:
        raise KLDetConfigError("scale= and crops= must be >= 0, count= >= 1")
    out = Path(config.out)
    check_writable_folder("out", out)
    dataset = read_dataset(
        config.format.value, config.root, config.split, config.ann, config.images, difficult=config.difficult
    )
    by_id = {record.image_id: record for record in dataset.records}
    ids = list(by_id)[: config.count] if config.ids is None else list(config.ids)
    unknown = [i for i in ids if i not in by_id]
    if unknown:
        raise KLDetConfigError(f"ids: image id(s) {unknown[:10]} not in {dataset.source}")
    classes = list(dataset.classes)
    shown_labels = None
    if config.classes is not None:
        missing = sorted(set(config.classes) - set(classes))
        if missing:
            raise KLDetConfigError(f"classes: {missing} not among the data set's classes {classes}")
        shown_labels = np.array([classes.index(name) for name in config.classes], dtype=np.int64)
    outcomes = None if config.results is None else _results_outcomes(config, dataset)
    for image_id in ids:
        record = by_id[image_id]
        image = load_image(record.image_path)
        scale = config.scale or auto_scale(*image.shape[:2])
        keep = ~record.gt_ignore
        if shown_labels is not None:
            keep &= np.isin(record.gt_labels, shown_labels)
        boxes, labels = record.gt_boxes[keep], record.gt_labels[keep]
        if outcomes is None:
            drawing = draw_example(image, boxes, labels, classes, scale=scale, show_labels=config.labels)
        else:
            from kldet.analysis.report import draw_image_outcomes

            objects, detections, matched, category_ids = outcomes
            drawing = draw_image_outcomes(
                image,
                objects,
                detections,
                matched,
                image_id,
                category_ids,
                classes,
                scale=scale,
                shown_categories=None if shown_labels is None else category_ids[shown_labels],
                show_labels=config.labels,
            )
        save_image(out / f"{image_id}.png", drawing)
        if config.crops:
            smallest = np.argsort((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), kind="stable")
            crops = object_crops(image, boxes[smallest], class_colors(labels[smallest]), count=config.crops)
            if crops is not None:
                save_image(out / f"{image_id}_crops.png", crops)
    console.print(f"drew {len(ids)} image(s) to {out}")
    return EXIT_OK


def _tile(config: TileConfig, console: Console) -> int:
    from kldet.cli.dotlist import check_writable_folder
    from kldet.data.formats import locate_split
    from kldet.data.raster import RasterPreprocess
    from kldet.data.tiles import check_tile_settings, write_tiles

    out, format = Path(config.out), config.format.value
    settings = {
        "size": config.size,
        "overlap": config.overlap,
        "min_visibility": config.min_visibility,
        "cut_boxes": config.cut_boxes.value,
        "empty_fraction": config.empty_fraction,
        "split_by": config.split_by.value,
        "val_fraction": config.val_fraction,
        "image_format": config.image_format.value,
    }
    check_tile_settings(**settings)
    raster = RasterPreprocess.from_options(config.bands, config.stretch)
    for key in ("ann", "images", "root"):
        value = getattr(config, key)
        if value is not None and not (Path(value).is_file() if key == "ann" else Path(value).is_dir()):
            raise KLDetConfigError(f"{key}={value}: no such {'file' if key == 'ann' else 'folder'}")
    # A tile entry names its scene as the COCO file does (file_name); DIOR: within the image folder.
    image_root = (
        None
        if format == "dior"
        else locate_split(format, config.root, config.split, config.ann, config.images)[1]
    )
    held = [name for name in ("images", "annotations") if (out / name).exists()]
    if held:
        raise KLDetConfigError(f"out={out}: already holds {' and '.join(held)}/ (tile into a new folder)")
    check_writable_folder("out", out)
    dataset = read_dataset(
        format,
        config.root,
        config.split,
        config.ann,
        config.images,
        difficult=config.difficult,
        strict=not config.lenient,
        progress=config.progress,
    )
    summary = write_tiles(
        dataset,
        out,
        image_root=image_root,
        seed=config.seed,
        progress=config.progress,
        raster=raster,
        **settings,
    )
    for name, split in summary.splits.items():
        console.print(
            f"{name}: scenes {split.scenes}, tiles written {split.tiles} (without objects: {split.empty_kept} "
            f"kept, {split.empty_dropped} dropped); boxes: {split.objects} objects, {split.ignored} ignored; "
            f"cut below min_visibility: {split.cut_ignored} ignored, {split.cut_dropped} dropped "
            f"-> {split.annotation_file}"
        )
    notes = (
        [f"{len(dataset.problems)} problem(s) skipped (kldet-data check lists them)"]
        if dataset.problems
        else []
    )
    if summary.objects_in_no_tile:
        notes.append(
            f"{summary.objects_in_no_tile} objects in no tile (cut below min_visibility everywhere: larger "
            "than the overlap)"
        )
    if summary.zero_area_boxes:
        notes.append(f"{summary.zero_area_boxes} boxes of zero area in their scene left out")
    for note in notes:
        console.print(note, style="yellow")
    first = next(iter(summary.splits))
    console.print(f"check it with: kldet-data check format=coco root={out} split={first}")
    return EXIT_OK


def _results_outcomes(config: ShowConfig, dataset: DetectionSet):
    """(objects, detections, :class:`~kldet.analysis.diagnostics.Outcomes`, category ids) of ``config.results``
    against the data set, at IoU 0.5 and ``config.score_thresh``."""
    from kldet.analysis.diagnostics import match_outcomes
    from kldet.evaluation.coco import AITOD_PROTOCOL, check_detection_ids, detection_arrays, object_arrays
    from kldet.evaluation.coco_json import dataset_ground_truth, read_coco_results

    ground_truth = dataset_ground_truth(dataset)
    category_ids = np.asarray(dataset.category_ids, dtype=np.int64)
    image_ids = [record.image_id for record in dataset.records]
    found = read_coco_results(config.results)
    check_detection_ids(found, image_ids, category_ids, f"results file {config.results}")
    objects = object_arrays(ground_truth["annotations"], image_ids, category_ids)
    detections = detection_arrays(found)
    matched = match_outcomes(objects, detections, AITOD_PROTOCOL.max_dets[-1], config.score_thresh)
    return objects, detections, matched, category_ids


def _conversion_report(conversion: Conversion, out: str) -> str:
    """One paragraph: what :func:`kldet.data.convert.convert` wrote, ignored, dropped and skipped."""
    coco = conversion.coco
    per_class = ", ".join(
        f"{name} {conversion.objects[name]}" for name in conversion.classes if conversion.objects[name]
    )
    parts = [
        f"wrote {out}: {len(coco['images'])} images ({conversion.images_without_labels} without labels), "
        f"{len(coco['annotations'])} annotations, {sum(conversion.objects.values())} objects"
        + (f" ({per_class})" if per_class else ""),
        f"{conversion.ignored} ignored boxes (iscrowd: 1; {conversion.ignored_annotations} annotations)",
        f"{conversion.clipped_boxes} boxes clipped to their image",
    ]
    if conversion.zero_area_boxes:
        parts.append(f"{conversion.zero_area_boxes} zero-area boxes dropped")
    kinds = Counter(p.kind for p in conversion.problems)
    skipped = Counter(p.skips for p in conversion.problems)
    if conversion.problems:
        by_kind = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        parts.append(f"skipped {skipped['image']} images and {skipped['annotation']} annotations ({by_kind})")
    else:
        parts.append("nothing skipped")
    return "; ".join(parts) + "."


def _print_summary(dataset: DetectionSet, console: Console) -> None:
    summary = summarize(dataset)
    console.print(str(dataset.source), style="bold")
    console.print(
        f"images: {summary.images} ({summary.empty_images} without objects)   objects: {summary.objects}   "
        f"ignored boxes: {summary.ignored}   boxes clipped to their image: {dataset.clipped_boxes}"
    )
    if dataset.evaluation_only_boxes:
        console.print(
            f"boxes of zero size or outside their image: {dataset.evaluation_only_boxes} (no training targets; "
            "evaluation counts them as objects, as the official COCO / AI-TOD evaluation does)",
            style="yellow",
        )
    if summary.objects:
        console.print(
            f"object size sqrt(area): mean {summary.mean_size:.1f} px, median {summary.median_size:.1f} px"
        )
    classes = Table(title="objects per class")
    classes.add_column("class")
    classes.add_column("objects", justify="right")
    for name, count in summary.class_counts.items():
        classes.add_row(name, str(count))
    console.print(classes)
    edges = (0, *SIZE_BIN_EDGES, math.inf)
    bins = Table(title="AI-TOD size bins (sqrt of box area)")
    for column in ("bin", "range (px)", "objects", "share"):
        bins.add_column(column, justify="left" if column == "bin" else "right")
    for k, name in enumerate(SIZE_BINS):
        count = summary.size_bins[name]
        share = f"{100 * count / summary.objects:.1f}%" if summary.objects else "-"
        bins.add_row(name, f"{edges[k]:g}-{edges[k + 1]:g}", str(count), share)
    console.print(bins)
    if not dataset.problems:
        console.print("no problems found", style="green")
        return
    console.print(f"{len(dataset.problems)} problem(s):", style="red")
    for problem in dataset.problems:
        console.print(f"  [{problem.kind}] {problem}")
    counts = Counter(p.kind for p in dataset.problems)
    for kind, count in sorted(counts.items()):
        console.print(f"  {count:6d} {kind}: {PROBLEM_KINDS[kind]}")


if __name__ == "__main__":
    sys.exit(main())
