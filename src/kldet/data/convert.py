"""Other detection annotation formats converted into COCO detection JSON, which :func:`~kldet.data.read_coco`
reads (``data=coco``, ``kldet-data check format=coco``).

Four sources: DOTA (``labelTxt/*.txt``, oriented quadrilaterals), YOLO (``labels/*.txt``, normalised
``class cx cy w h``), VisDrone-DET (``annotations/*.txt``) and xView (one GeoJSON for all images). Every image
of ``images`` becomes a COCO image entry (``file_name`` relative to ``images``, ``width`` / ``height`` from
the image header); a label file is paired with the image of the same relative path and stem, and an image
without a label file has no objects.

Validation is the readers' (:mod:`kldet.data.records`): image headers are checked with
:func:`~kldet.data.records.check_image`, boxes with :func:`~kldet.data.records.check_box` (a box partly
outside its image is clipped to it; a zero-size, negative or wholly outside box is a problem, except in xView,
where zero-area boxes are dropped and counted). Each problem names the label file and line (xView: the
feature index). Strict conversion stops at the first; lenient conversion skips the line (or the image, for a
missing or unreadable image) and counts it by kind.

Ignored boxes are written as COCO crowd boxes (``iscrowd: 1``), the one ignore flag :func:`~kldet.data.read_coco`
applies both to training (no target) and to evaluation (an ignored box of its class). A class-agnostic ignored
region (VisDrone categories 0 and 11) is written once per class.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kldet.data.images import IMAGE_SUFFIXES
from kldet.data.records import (
    Problem,
    ProblemLog,
    check_box,
    check_image,
    is_int,
    normalize_class_name,
    read_json,
)
from kldet.errors import KLDetDataError

#: The sources :func:`convert` takes.
SOURCES = ("dota", "yolo", "visdrone", "xview")

_DOTA_V1_CLASSES = (
    "plane",
    "ship",
    "storage-tank",
    "baseball-diamond",
    "tennis-court",
    "basketball-court",
    "ground-track-field",
    "harbor",
    "bridge",
    "large-vehicle",
    "small-vehicle",
    "helicopter",
    "roundabout",
    "soccer-ball-field",
    "swimming-pool",
)

#: The classes of each DOTA version, in the DOTA devkit's order (category ids 1..C).
DOTA_CLASSES = {
    "1.0": _DOTA_V1_CLASSES,
    "1.5": (*_DOTA_V1_CLASSES, "container-crane"),
    "2.0": (*_DOTA_V1_CLASSES, "container-crane", "airport", "helipad"),
}

#: VisDrone-DET object categories 1..10 (0 "ignored regions" and 11 "others" are ignored regions).
VISDRONE_CLASSES = (
    "pedestrian",
    "people",
    "bicycle",
    "car",
    "van",
    "truck",
    "tricycle",
    "awning-tricycle",
    "bus",
    "motor",
)
_VISDRONE_IGNORED_CATEGORIES = (0, 11)

#: xView's 60 classes: ``type_id`` -> name (xView's ``xview_class_labels.txt``); the type ids are the
#: category ids of the converted file.
XVIEW_CLASSES = {
    11: "Fixed-wing Aircraft",
    12: "Small Aircraft",
    13: "Cargo Plane",
    15: "Helicopter",
    17: "Passenger Vehicle",
    18: "Small Car",
    19: "Bus",
    20: "Pickup Truck",
    21: "Utility Truck",
    23: "Truck",
    24: "Cargo Truck",
    25: "Truck w/Box",
    26: "Truck Tractor",
    27: "Trailer",
    28: "Truck w/Flatbed",
    29: "Truck w/Liquid",
    32: "Crane Truck",
    33: "Railway Vehicle",
    34: "Passenger Car",
    35: "Cargo Car",
    36: "Flat Car",
    37: "Tank car",
    38: "Locomotive",
    40: "Maritime Vessel",
    41: "Motorboat",
    42: "Sailboat",
    44: "Tugboat",
    45: "Barge",
    47: "Fishing Vessel",
    49: "Ferry",
    50: "Yacht",
    51: "Container Ship",
    52: "Oil Tanker",
    53: "Engineering Vehicle",
    54: "Tower crane",
    55: "Container Crane",
    56: "Reach Stacker",
    57: "Straddle Carrier",
    59: "Mobile Crane",
    60: "Dump Truck",
    61: "Haul Truck",
    62: "Scraper/Tractor",
    63: "Front loader/Bulldozer",
    64: "Excavator",
    65: "Cement Mixer",
    66: "Ground Grader",
    71: "Hut/Tent",
    72: "Shed",
    73: "Building",
    74: "Aircraft Hangar",
    76: "Damaged Building",
    77: "Facility",
    79: "Construction Site",
    83: "Vehicle Lot",
    84: "Helipad",
    86: "Storage Tank",
    89: "Shipping container lot",
    91: "Shipping Container",
    93: "Pylon",
    94: "Tower",
}


@dataclass
class Conversion:
    """What a converter returns: the COCO dict and what went into it.

    Attributes:
        coco: COCO detection dict (``images``, ``annotations``, ``categories``; ``bbox`` as ``[x, y, w, h]``
            in pixels, clipped to the image).
        source: the label folder or file that was read.
        classes: class names, in category-id order.
        objects: annotations that are objects (not ignored), per class name.
        ignored: source boxes written as ignored (``iscrowd: 1``); a class-agnostic region counts once.
        ignored_annotations: crowd annotations written for them (a class-agnostic region: one per class).
        images_without_labels: images with no label file (or, xView, no feature).
        clipped_boxes: boxes that reached outside their image and were clipped to it.
        zero_area_boxes: xView boxes of zero area (after clipping), dropped.
        problems: what was skipped, and why (empty after a strict conversion).
    """

    coco: dict
    source: Path
    classes: list[str]
    objects: Counter = field(default_factory=Counter)
    ignored: int = 0
    ignored_annotations: int = 0
    images_without_labels: int = 0
    clipped_boxes: int = 0
    zero_area_boxes: int = 0
    problems: list[Problem] = field(default_factory=list)


class _ConversionLog(ProblemLog):
    """A :class:`~kldet.data.records.ProblemLog` that raises the first problem at once when strict."""

    def __init__(self, source: Path, strict: bool):
        super().__init__(source)
        self.strict = strict

    def add(self, kind: str, file: Path, record: str, message: str, skips: str) -> None:
        super().add(kind, file, record, message, skips)
        if self.strict:
            raise KLDetDataError(f"{self.problems[-1]} (lenient=true skips such problems and counts them)")


class _Builder:
    """Collects COCO images and annotations, checking each box against its image."""

    def __init__(self, source: Path, classes: Sequence[str], category_ids: Sequence[int], strict: bool):
        self.log = _ConversionLog(source, strict)
        self.classes, self.category_ids = list(classes), list(category_ids)
        self.images: list[dict] = []
        self.annotations: list[dict] = []
        self.result = Conversion({}, source, self.classes)

    def image(self, file_name: str, path: Path, file: Path, record: str, **extra) -> dict | None:
        """The new COCO image entry of ``path`` (size from its header), or None after logging why not."""
        size = check_image(self.log, file, record, path, None, decode=False)
        if size is None:
            return None
        entry = {"id": len(self.images) + 1, "file_name": file_name, "width": size[0], "height": size[1]}
        entry.update(extra)
        self.images.append(entry)
        return entry

    def box(
        self,
        image: dict,
        box: Sequence[float],
        label: int | None,
        ignore: bool,
        file: Path,
        record: str,
        written: str,
        **attributes,
    ) -> None:
        """Adds the ``xyxy`` box, clipped to the image; ``label`` None: a class-agnostic ignored region,
        written as a crowd box of every class."""
        clipped = check_box(self.log, file, record, box, image["width"], image["height"], written)
        if clipped is None:
            return
        x1, y1, x2, y2 = clipped
        labels = range(len(self.classes)) if label is None else (label,)
        for each in labels:
            annotation = {
                "id": len(self.annotations) + 1,
                "image_id": image["id"],
                "category_id": self.category_ids[each],
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1),
                "iscrowd": int(ignore),
            }
            if attributes:
                annotation["attributes"] = attributes
            self.annotations.append(annotation)
        if ignore:
            self.result.ignored += 1
            self.result.ignored_annotations += len(labels)
        else:
            self.result.objects[self.classes[label]] += 1

    def problem(self, kind: str, file: Path, record: str, message: str) -> None:
        """Notes a bad label line (or feature), which lenient conversion skips."""
        self.log.add(kind, file, record, message, "annotation")

    def finish(self) -> Conversion:
        """The :class:`Conversion`; an error when no image could be converted."""
        if not self.images:
            raise KLDetDataError(f"{self.log.source}: no image could be converted")
        categories = [{"id": i, "name": n} for i, n in zip(self.category_ids, self.classes, strict=True)]
        self.result.coco = {"images": self.images, "annotations": self.annotations, "categories": categories}
        self.result.problems, self.result.clipped_boxes = self.log.problems, self.log.clipped_boxes
        return self.result


def convert_dota(
    labels: str | Path,
    images: str | Path,
    version: str = "1.0",
    difficult: str = "ignore",
    strict: bool = True,
) -> Conversion:
    """Converts DOTA label files (``x1 y1 x2 y2 x3 y3 x4 y4 class difficult`` per line, the optional
    ``imagesource:`` and ``gsd:`` header lines kept in the image entry) into COCO.

    Each quadrilateral becomes the axis-aligned box of its corners (min / max), clipped to the image.

    Args:
        labels: folder of ``<image stem>.txt`` files (DOTA's ``labelTxt/``).
        images: folder of the images.
        version: ``"1.0"`` (15 classes), ``"1.5"`` (adds container-crane) or ``"2.0"`` (adds airport and
            helipad); class names are matched case- and hyphen-insensitively.
        difficult: ``difficult 1`` objects are ignored boxes (``"ignore"``, ``iscrowd: 1``) or objects
            (``"object"``).
        strict: stop at the first problem; otherwise skip the line (or image) and count it.
    """
    if version not in DOTA_CLASSES:
        raise KLDetDataError(f"DOTA version={version!r} is not one of {', '.join(DOTA_CLASSES)}")
    if difficult not in ("ignore", "object"):
        raise KLDetDataError(f"DOTA difficult={difficult!r} is not ignore or object")
    classes = DOTA_CLASSES[version]
    label_of = {normalize_class_name(name): label for label, name in enumerate(classes)}
    builder = _Builder(Path(labels), classes, range(1, len(classes) + 1), strict)
    for file_name, image_path, label_path in _pair_files(Path(labels), Path(images), builder):
        header, lines = {}, []
        for number, line in _lines(label_path) if label_path is not None else ():
            key, colon, value = line.partition(":")
            if colon and key in ("imagesource", "gsd"):
                header[key] = value.strip() if key == "imagesource" else _gsd(value.strip())
            else:
                lines.append((number, line))
        file = label_path or image_path
        image = builder.image(file_name, image_path, file, f"image {file_name}", **header)
        if image is None:
            continue
        for number, line in lines:
            record, fields = f"line {number}", line.split()
            if len(fields) not in (9, 10):
                message = f"expected 10 fields `x1 y1 x2 y2 x3 y3 x4 y4 class difficult`, got {len(fields)}"
                builder.problem("malformed_annotation", label_path, record, message)
                continue
            corners = _numbers(fields[:8])
            flag = fields[9] if len(fields) == 10 else "0"
            if corners is None or flag not in ("0", "1"):
                message = "the 8 corner coordinates must be numbers and difficult 0 or 1"
                builder.problem("malformed_annotation", label_path, f"{record}: {line!r}", message)
                continue
            label = label_of.get(normalize_class_name(fields[8]))
            if label is None:
                message = f"class {fields[8]!r} is not a DOTA v{version} class ({', '.join(classes)})"
                builder.problem("unknown_class", label_path, record, message)
                continue
            xs, ys = corners[0::2], corners[1::2]
            box = (min(xs), min(ys), max(xs), max(ys))
            ignore = flag == "1" and difficult == "ignore"
            builder.box(
                image, box, label, ignore, label_path, record, "quadrilateral " + " ".join(fields[:8])
            )
    return builder.finish()


def convert_yolo(
    labels: str | Path, images: str | Path, names: str | Path, strict: bool = True
) -> Conversion:
    """Converts YOLO label files (``class cx cy w h`` per line, normalised to the image size) into COCO.

    Args:
        labels: folder of ``<image stem>.txt`` files (subfolders mirror those of ``images``).
        images: folder of the images; their sizes are read from the headers.
        names: the class names: a text file of one name per line (class 0 first), or an Ultralytics
            ``data.yaml`` whose ``names`` is a list or a dict ``{index: name}``. YOLO class ``k`` gets
            COCO category id ``k + 1``.
        strict: stop at the first problem; otherwise skip the line (or image) and count it.
    """
    index_names = _yolo_names(Path(names))
    indices = sorted(index_names)
    label_of = {index: label for label, index in enumerate(indices)}
    classes = [index_names[i] for i in indices]
    builder = _Builder(Path(labels), classes, [i + 1 for i in indices], strict)
    for file_name, image_path, label_path in _pair_files(Path(labels), Path(images), builder):
        image = builder.image(file_name, image_path, label_path or image_path, f"image {file_name}")
        if image is None or label_path is None:
            continue
        for number, line in _lines(label_path):
            record, fields = f"line {number}", line.split()
            if len(fields) != 5:
                message = f"expected 5 fields `class cx cy w h`, got {len(fields)}"
                builder.problem("malformed_annotation", label_path, record, message)
                continue
            values = _numbers(fields)
            if values is None or not values[0].is_integer():
                message = f"{line!r} is not an integer class and 4 numbers"
                builder.problem("malformed_annotation", label_path, record, message)
                continue
            index = int(values[0])
            if index not in label_of:
                message = f"class {index} is not in the {len(classes)} names of {names}"
                builder.problem("unknown_class", label_path, record, message)
                continue
            cx, cy, w, h = values[1:]
            width, height = image["width"], image["height"]
            box = ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height)
            builder.box(
                image,
                box,
                label_of[index],
                False,
                label_path,
                record,
                f"box {' '.join(fields[1:])} (cx cy w h)",
            )
    return builder.finish()


def convert_visdrone(labels: str | Path, images: str | Path, strict: bool = True) -> Conversion:
    """Converts VisDrone-DET label files (``left,top,width,height,score,category,truncation,occlusion`` per
    line) into COCO.

    Categories 1..10 are :data:`VISDRONE_CLASSES` (category ids 1..10); categories 0 (ignored regions) and
    11 (others) are class-agnostic ignored regions, written as a crowd box of every class; a box of score 0
    (which VisDrone's evaluation ignores) is an ignored box of its class. ``truncation`` and ``occlusion``
    are kept in each annotation's ``attributes``.
    """
    builder = _Builder(Path(labels), VISDRONE_CLASSES, range(1, len(VISDRONE_CLASSES) + 1), strict)
    for file_name, image_path, label_path in _pair_files(Path(labels), Path(images), builder):
        image = builder.image(file_name, image_path, label_path or image_path, f"image {file_name}")
        if image is None or label_path is None:
            continue
        for number, line in _lines(label_path):
            record, fields = f"line {number}", [f.strip() for f in line.rstrip(",").split(",")]
            if len(fields) != 8:
                message = (
                    "expected 8 fields `left,top,width,height,score,category,truncation,occlusion`, "
                    f"got {len(fields)}"
                )
                builder.problem("malformed_annotation", label_path, record, message)
                continue
            values = _numbers(fields)
            if values is None or not all(v.is_integer() for v in values[4:]):
                message = f"{line!r}: the box must be numbers, score to occlusion integers"
                builder.problem("malformed_annotation", label_path, record, message)
                continue
            left, top, w, h = values[:4]
            score, category, truncation, occlusion = (int(v) for v in values[4:])
            if not 0 <= category <= 11:
                message = f"category {category} is not a VisDrone-DET category (0..11)"
                builder.problem("unknown_class", label_path, record, message)
                continue
            agnostic = category in _VISDRONE_IGNORED_CATEGORIES
            builder.box(
                image,
                (left, top, left + w, top + h),
                None if agnostic else category - 1,
                agnostic or score == 0,
                label_path,
                record,
                f"box {','.join(fields[:4])} (left,top,width,height)",
                truncation=truncation,
                occlusion=occlusion,
            )
    return builder.finish()


def convert_xview(labels: str | Path, images: str | Path, strict: bool = True) -> Conversion:
    """Converts the xView GeoJSON (one file for all images) into COCO.

    Each feature's ``properties`` give ``image_id`` (the image file name), ``bounds_imcoords``
    (``"x1,y1,x2,y2"`` in pixels) and ``type_id`` (:data:`XVIEW_CLASSES`; the type id is the category id).
    Boxes are clipped to the image; a box of zero area after clipping (xView has them) is dropped and counted
    in :attr:`Conversion.zero_area_boxes`, not a problem. A problem names the feature by its index.
    """
    labels, images = Path(labels), Path(images)
    data = read_json(labels, "GeoJSON")
    features = data.get("features") if isinstance(data, dict) else None
    if not isinstance(features, list):
        raise KLDetDataError(f'{labels}: not a GeoJSON FeatureCollection (needs a "features" list)')
    classes, type_ids = list(XVIEW_CLASSES.values()), list(XVIEW_CLASSES)
    label_of = {type_id: label for label, type_id in enumerate(type_ids)}
    builder = _Builder(labels, classes, type_ids, strict)
    entries: dict[str, dict | None] = {}
    for path in _image_files(images):
        file_name = path.relative_to(images).as_posix()
        entries[file_name] = builder.image(file_name, path, labels, f"image {file_name}")
    labelled = set()
    for index, feature in enumerate(features):
        record = f"features[{index}]"
        properties = feature.get("properties") if isinstance(feature, dict) else None
        properties = properties if isinstance(properties, dict) else {}
        file_name, bounds, type_id = (properties.get(k) for k in ("image_id", "bounds_imcoords", "type_id"))
        corners = _numbers(bounds.split(",")) if isinstance(bounds, str) else None
        if not isinstance(file_name, str) or corners is None or len(corners) != 4 or not is_int(type_id):
            message = (
                'needs properties "image_id", "bounds_imcoords" ("x1,y1,x2,y2") and an integer "type_id"'
            )
            builder.problem("malformed_annotation", labels, record, message)
            continue
        if file_name not in entries:
            message = f"image file {images / file_name} not found"
            builder.log.add("missing_image", labels, f"{record} (image {file_name})", message, "image")
            entries[file_name] = None  # its other features go with it, without a problem each
            continue
        image = entries[file_name]
        if image is None:
            continue
        record = f"{record} (image {file_name})"
        if type_id not in label_of:
            message = f"type_id {type_id} is not one of xView's 60 classes"
            builder.problem("unknown_class", labels, record, message)
            continue
        labelled.add(file_name)
        x1, y1, x2, y2 = corners
        inside_w = min(x2, image["width"]) - max(x1, 0.0)
        inside_h = min(y2, image["height"]) - max(y1, 0.0)
        if x2 >= x1 and y2 >= y1 and (inside_w <= 0 or inside_h <= 0):
            builder.result.zero_area_boxes += 1
            continue
        builder.box(image, corners, label_of[type_id], False, labels, record, f"bounds_imcoords {bounds!r}")
    builder.result.images_without_labels = sum(
        1 for name, image in entries.items() if image is not None and name not in labelled
    )
    return builder.finish()


def convert(
    source: str,
    labels: str | Path,
    images: str | Path,
    names: str | Path | None = None,
    version: str = "1.0",
    difficult: str = "ignore",
    strict: bool = True,
) -> Conversion:
    """Converts ``labels`` in the ``source`` format (one of :data:`SOURCES`) into COCO.

    Args:
        names: yolo: the class names file (see :func:`convert_yolo`); required there, unused otherwise.
        version, difficult: dota (see :func:`convert_dota`).
    """
    if source == "dota":
        return convert_dota(labels, images, version, difficult, strict)
    if source == "yolo":
        if names is None:
            raise KLDetDataError("from=yolo needs names=FILE (one class name per line, or a data.yaml)")
        return convert_yolo(labels, images, names, strict)
    if source == "visdrone":
        return convert_visdrone(labels, images, strict)
    if source == "xview":
        return convert_xview(labels, images, strict)
    raise KLDetDataError(f"from={source!r} is not one of {', '.join(SOURCES)}")


def write_json_atomic(data: dict, path: str | Path) -> None:
    """Writes ``data`` as JSON to ``path`` through a temporary file in the same folder and a rename, so
    that ``path`` is never left half-written.

    Raises:
        KLDetDataError: the folder cannot be created or written.
    """
    path = Path(path)
    # A plain file (not tempfile's, which is created 0600) takes the umask's permissions, as `path` would.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with temporary.open("w", encoding="utf-8") as f:
                json.dump(data, f)
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
    except OSError as error:
        raise KLDetDataError(f"{path}: cannot write the COCO file ({error.strerror or error})") from None


def _pair_files(labels: Path, images: Path, builder: _Builder) -> Iterator[tuple[str, Path, Path | None]]:
    """``(file_name, image path, label file or None)`` of every image under ``images``, in path order; a
    label file without an image is a ``missing_image`` problem."""
    if not labels.is_dir():
        raise KLDetDataError(f"labels={labels}: not a folder of label files")
    by_stem = {}
    for path in _image_files(images):
        stem = path.relative_to(images).with_suffix("").as_posix()
        if stem in by_stem:
            message = f"{by_stem[stem].name} and {path.name} both match the label file {stem}.txt"
            builder.log.add("duplicate_id", images, f"image {stem}", message, "image")
            continue
        by_stem[stem] = path
    label_files = {p.relative_to(labels).with_suffix("").as_posix(): p for p in labels.rglob("*.txt")}
    for stem in sorted(set(label_files) - set(by_stem)):
        message = f"no image for it in {images} ({'/'.join(IMAGE_SUFFIXES)})"
        builder.log.add("missing_image", label_files[stem], "label file", message, "image")
    builder.result.images_without_labels = len(set(by_stem) - set(label_files))
    for stem, path in sorted(by_stem.items()):
        yield path.relative_to(images).as_posix(), path, label_files.get(stem)


def _image_files(images: Path) -> list[Path]:
    if not images.is_dir():
        raise KLDetDataError(f"images={images}: not a folder")
    return sorted(p for p in images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, stripped line)`` of the non-empty lines of a label file."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise KLDetDataError(f"{path}: not a text file") from None
    except OSError as error:
        raise KLDetDataError(f"{path}: cannot read the label file: {error.strerror}") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield number, line.strip()


def _numbers(fields: Sequence[str]) -> list[float] | None:
    """The fields as finite floats, or None if one is not a number."""
    try:
        values = [float(f) for f in fields]
    except ValueError:
        return None
    return values if all(math.isfinite(v) for v in values) else None


def _gsd(value: str) -> float | None:
    """A DOTA ``gsd:`` value in metres per pixel; None for ``null`` or anything else not a number."""
    number = _numbers([value])
    return None if number is None else number[0]


def _yolo_names(path: Path) -> dict[int, str]:
    """``{YOLO class index: name}`` from a names file or an Ultralytics ``data.yaml``."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        raise KLDetDataError(f"names={path}: cannot read the class names file") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            names = (yaml.safe_load(text) or {}).get("names")
        except (yaml.YAMLError, AttributeError):
            names = None
        if isinstance(names, list):
            names = dict(enumerate(names))
        if not isinstance(names, dict) or not names or not all(is_int(k) for k in names):
            raise KLDetDataError(f"names={path}: needs a `names:` list or a dict {{index: name}}")
        return {int(k): str(v) for k, v in names.items()}
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines or "" in lines:
        where = f"line {lines.index('') + 1} is empty" if lines else "no names"
        raise KLDetDataError(f"names={path}: {where} (one class name per line, class 0 first)")
    return dict(enumerate(lines))
