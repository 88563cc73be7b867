"""DIOR and other Pascal VOC layouts: reading XML annotations (with validation) and writing them.

Layout: ``root/ImageSets/Main/<split>.txt`` lists image stems, ``root/Annotations/<stem>.xml``
holds the boxes, ``root/JPEGImages/<stem>.jpg`` the image. The DIOR download's own folder names
(``Annotations/Horizontal Bounding Boxes/``, ``JPEGImages-trainval/``, ``JPEGImages-test/``) work too.

As the KLDet authors read DIOR: 1 is subtracted from every coordinate (VOC's 1-based pixels),
``difficult`` is not read (every object counts; ``difficult="ignore"`` makes difficult objects ignored
boxes, as the VOC devkit does), and boxes narrower or lower than ``min_size`` (0.5) pixels are
ignored boxes, in training and in evaluation. ``pose`` and ``truncated`` are read past.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kldet.data.images import IMAGE_SUFFIXES
from kldet.data.records import (
    DetectionSet,
    ProblemLog,
    Record,
    check_box,
    check_image,
    normalize_class_name,
    stack_boxes,
)
from kldet.errors import KLDetConfigError, KLDetDataError

#: DIOR's 20 classes; category ids are 1..20 in this order.
DIOR_CLASSES = (
    "airplane",
    "airport",
    "baseballfield",
    "basketballcourt",
    "bridge",
    "chimney",
    "dam",
    "Expressway-Service-area",
    "Expressway-toll-station",
    "golffield",
    "groundtrackfield",
    "harbor",
    "overpass",
    "ship",
    "stadium",
    "storagetank",
    "tenniscourt",
    "trainstation",
    "vehicle",
    "windmill",
)

_ANNOTATION_DIRS = ("Annotations", "Annotations/Horizontal Bounding Boxes")
_IMAGE_DIRS = ("JPEGImages", "JPEGImages-trainval", "JPEGImages-test")


#: What ``difficult="..."`` does with VOC difficult objects: "object" counts them as every other object
#: (the KLDet authors' reading of DIOR), "ignore" makes them ignored boxes (the VOC devkit's).
DIFFICULT_MODES = ("object", "ignore")


def read_dior(
    root: str | Path,
    split: str,
    strict: bool = True,
    decode: bool = False,
    progress: bool = False,
    difficult: str = "object",
) -> DetectionSet:
    """Reads split ``split`` of a DIOR root; classes are :data:`DIOR_CLASSES`, category ids 1..20.

    See :func:`read_voc` for the rules.
    """
    return read_voc(
        root, split, DIOR_CLASSES, strict=strict, decode=decode, progress=progress, difficult=difficult
    )


def read_voc(
    root: str | Path,
    split: str,
    classes: Sequence[str],
    strict: bool = True,
    decode: bool = False,
    progress: bool = False,
    min_size: float = 0.5,
    difficult: str = "object",
) -> DetectionSet:
    """Reads split ``split`` of a Pascal VOC layout and checks it against the images.

    Class names match case-, hyphen- and space-insensitively (``expressway-service-area`` is
    ``Expressway-Service-area``). Image ids are the numeric stems (``00042`` -> 42) when every stem
    is a number, otherwise the 1-based line numbers of the split file.

    Args:
        classes: class names; category ids are 1..C in this order.
        strict: raise :class:`~kldet.errors.KLDetDataError` on the first problem (after checking
            everything); otherwise skip bad images and objects and log a count.
        decode: decode every image instead of reading its header only.
        min_size: boxes narrower or lower than this many pixels become ignored boxes.
        difficult: one of :data:`DIFFICULT_MODES`.

    Returns:
        records whose training targets (``boxes``) are the objects that are not ignored, clipped to
        the image, and whose evaluation ground truth (``gt_*``) is every object as written (less 1),
        with ``gt_ignore`` marking the ignored ones.
    """
    if difficult not in DIFFICULT_MODES:
        raise KLDetConfigError(f"difficult={difficult!r}: choose one of {', '.join(DIFFICULT_MODES)}")
    root = Path(root)
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    stems = _read_split(split_file)
    numeric = all(stem.isdigit() for stem in stems)
    label_of = {normalize_class_name(name): label for label, name in enumerate(classes)}
    log = ProblemLog(split_file)
    records, seen = [], set()
    for line, stem in enumerate(tqdm(stems, desc=f"checking {split_file.name}", disable=not progress), 1):
        image_id = int(stem) if numeric else line
        record = f"image {stem} (line {line})"
        if image_id in seen:
            log.add("duplicate_id", split_file, record, f"image id {image_id} is listed twice", "image")
            continue
        seen.add(image_id)
        xml_file = _find(root, _ANNOTATION_DIRS, [f"{stem}.xml"])
        if not xml_file.is_file():
            log.add(
                "missing_annotation", split_file, record, f"annotation file {xml_file} not found", "image"
            )
            continue
        try:
            annotation = ET.parse(xml_file).getroot()
        except (ET.ParseError, OSError) as error:
            log.add("unreadable_annotation", xml_file, record, f"not readable XML ({error})", "image")
            continue
        image_path = _find(root, _IMAGE_DIRS, [f"{stem}{suffix}" for suffix in IMAGE_SUFFIXES])
        size = check_image(log, xml_file, record, image_path, _declared_size(annotation), decode)
        if size is None:
            continue
        boxes, labels, gt_boxes, gt_labels, gt_ignore = [], [], [], [], []
        for index, obj in enumerate(annotation.iter("object")):
            object_record = f"{record}, object {index}"
            name = obj.findtext("name", "").strip()
            written = _read_bndbox(obj)
            if written is None:
                message = "needs a bndbox with numeric xmin, ymin, xmax, ymax"
                log.add("malformed_annotation", xml_file, object_record, message, "annotation")
                continue
            if normalize_class_name(name) not in label_of:
                message = f"class {name!r} is not one of {', '.join(classes)}"
                log.add("unknown_class", xml_file, object_record, message, "annotation")
                continue
            label = label_of[normalize_class_name(name)]
            box = tuple(v - 1 for v in written)
            shown = "bndbox [" + ", ".join(f"{v:g}" for v in written) + "]"
            tiny = 0 <= box[2] - box[0] < min_size or 0 <= box[3] - box[1] < min_size
            clipped = None if tiny else check_box(log, xml_file, object_record, box, *size, shown)
            if clipped is None and not tiny:
                continue
            marked = obj.findtext("difficult", "0").strip() not in ("0", "")
            ignore = tiny or (difficult == "ignore" and marked)
            gt_boxes.append(box)
            gt_labels.append(label)
            gt_ignore.append(ignore)
            if not ignore:
                boxes.append(clipped)
                labels.append(label)
        records.append(
            Record(
                image_path,
                *size,
                stack_boxes(boxes),
                labels,
                image_id,
                gt_boxes=stack_boxes(gt_boxes, np.float64),
                gt_labels=gt_labels,
                gt_ignore=gt_ignore,
            )
        )
    log.finish(strict)
    return log.detection_set(records, classes, range(1, len(classes) + 1))


def find_dior_split(root: str | Path, split: str) -> tuple[Path, Path]:
    """``(split file, root)`` of ``split`` in a DIOR / Pascal VOC root: ``root/ImageSets/Main/<split>.txt``.

    Raises:
        KLDetConfigError: naming the expected layout and the splits there, when the split file is missing.
    """
    root = Path(root)
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        raise KLDetConfigError(
            f"DIOR split {split!r} not found: expected {split_file} ({_splits_there(split_file.parent)})\n"
            f"layout: {root}/Annotations/*.xml, {root}/JPEGImages/*.jpg, {root}/ImageSets/Main/{split}.txt"
        )
    return split_file, root


def write_voc_xml(path: str | Path, record: Record, classes: Sequence[str]) -> None:
    """Writes ``record`` as a VOC XML file (``pose``, ``truncated``, ``difficult`` tags as DIOR has them).

    Coordinates are written 1-based (1 added), as :func:`read_voc` reads them; only the training
    targets are written.
    """
    annotation = ET.Element("annotation")
    ET.SubElement(annotation, "filename").text = record.image_path.name
    size = ET.SubElement(annotation, "size")
    for tag, value in (("width", record.width), ("height", record.height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    for box, label in zip(record.boxes.tolist(), record.labels.tolist(), strict=True):
        obj = ET.SubElement(annotation, "object")
        for tag, value in (
            ("name", classes[label]),
            ("pose", "Unspecified"),
            ("truncated", "0"),
            ("difficult", "0"),
        ):
            ET.SubElement(obj, tag).text = value
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True):
            ET.SubElement(bndbox, tag).text = f"{value + 1:g}"
    ET.indent(annotation)
    ET.ElementTree(annotation).write(path, encoding="utf-8")


def _read_split(split_file: Path) -> list[str]:
    """The stems a split file lists."""
    try:
        text = split_file.read_text()
    except (FileNotFoundError, NotADirectoryError):
        raise KLDetDataError(
            f"{split_file}: split file not found ({_splits_there(split_file.parent)})"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise KLDetDataError(f"{split_file}: cannot read split file ({error})") from None
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def _splits_there(folder: Path) -> str:
    """``"splits there: a, b"``: the split files in ``folder``, for a message about a missing one."""
    found = sorted(p.stem for p in folder.glob("*.txt")) if folder.is_dir() else []
    return f"splits there: {', '.join(found)}" if found else f"{folder} holds no split files"


def _find(root: Path, folders: Sequence[str], names: Sequence[str]) -> Path:
    """The first existing ``root/folder/name``, or the first candidate when none exists."""
    candidates = [root / folder / name for folder in folders for name in names]
    return next((path for path in candidates if path.is_file()), candidates[0])


def _declared_size(annotation: ET.Element) -> tuple[int, int] | None:
    """``(width, height)`` from ``<size>``, or None when the XML has no usable one."""
    try:
        width, height = (int(float(annotation.findtext(f"size/{tag}", ""))) for tag in ("width", "height"))
    except ValueError:
        return None
    return (width, height) if width > 0 and height > 0 else None


def _read_bndbox(obj: ET.Element) -> tuple[float, float, float, float] | None:
    """``(xmin, ymin, xmax, ymax)`` as written, or None when a coordinate is missing or not a number."""
    try:
        return tuple(float(obj.findtext(f"bndbox/{tag}", "")) for tag in ("xmin", "ymin", "xmax", "ymax"))
    except ValueError:
        return None
