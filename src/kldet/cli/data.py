"""``kldet-data``: write the synthetic data set, or check a data set and describe it.

kldet-data synth out=DIR num_images=N seed=S [image_size=512] [format=aitod|dior] [val_fraction=0.2]
kldet-data check format=aitod ann=FILE images=DIR      (or format=aitod root=DIR split=NAME)
kldet-data check format=dior root=DIR split=NAME
kldet-data check format=coco ann=FILE images=DIR       (or format=coco root=DIR split=NAME)
    check reads image headers only; add decode=true to decode every image as training does and find
    truncated or corrupt files (kldet-train: data.decode_check=true; data.lenient=true skips bad images)
kldet-data convert from=dota|yolo|visdrone|xview labels=PATH images=DIR out=FILE.json
    [names=FILE (yolo)] [version=1.0|1.5|2.0 (dota)] [difficult=ignore|object (dota)] [lenient=true]
    writes COCO JSON that data=coco and `check format=coco` read (from= is another name for source=)
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from omegaconf import MISSING
from rich.console import Console
from rich.table import Table

from kldet.cli.dotlist import option, parse_dotlist
from kldet.cli.report import EXIT_ERROR, EXIT_OK, report_error
from kldet.data import read_dataset
from kldet.data.convert import Conversion, convert, write_json_atomic
from kldet.data.records import PROBLEM_KINDS, DetectionSet
from kldet.data.stats import SIZE_BIN_EDGES, SIZE_BINS, summarize
from kldet.errors import KLDetError

USAGE = (__doc__ or "").split("\n\n", 1)[1]


class SynthFormat(Enum):
    aitod = "aitod"
    dior = "dior"


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
    format: SynthFormat = option(SynthFormat.aitod, "aitod (COCO JSON + PNG) or dior (VOC XML + JPEG)")
    val_fraction: float = option(0.2, "fraction of the images in the val split")


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


_COMMANDS = {"synth": SynthConfig, "check": CheckConfig, "convert": ConvertConfig}


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
        return report_error("kldet-data", f"{got}: use synth, check or convert (see kldet-data --help)")
    command, overrides = argv[0], argv[1:]
    if command == "convert":  # `from` is a Python keyword, so the field is `source`
        overrides = ["source=" + a[len("from=") :] if a.startswith("from=") else a for a in overrides]
    schema = _COMMANDS[command]
    try:
        config = parse_dotlist(schema, overrides, f"kldet-data {command}", schema.__doc__)
        if config is None:
            return EXIT_OK
        run = {"synth": _synth, "check": _check, "convert": _convert}[command]
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
    )
    console.print(
        f"wrote {config.num_images} images of {config.image_size}x{config.image_size} to {config.out}"
    )
    for split, path in written.items():
        console.print(f"  {split}: {path}")
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
