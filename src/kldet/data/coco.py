"""COCO detection JSON: reading (with validation) into records, and writing records back."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kldet.data.records import (
    DetectionSet,
    ProblemLog,
    Record,
    check_box,
    check_image,
    is_int,
    is_number,
    normalize_class_name,
    read_json,
    stack_boxes,
    warn_annotation_id_zero,
)
from kldet.errors import KLDetConfigError, KLDetDataError


def read_coco(
    ann_file: str | Path,
    image_dir: str | Path | None,
    strict: bool = True,
    classes: Sequence[str] | None = None,
    decode: bool = False,
    progress: bool = False,
) -> DetectionSet:
    """Reads a COCO detection annotation file and checks it against the images in ``image_dir``.

    Training targets (``Record.boxes``) leave out what the authors' loader (MMDetection's
    ``CocoDataset``) leaves out: crowd annotations (``iscrowd: 1``), annotations marked ``ignore: 1`` (as
    some AI-TOD files write), boxes narrower or lower than 1 px, boxes whose ``area`` is <= 0, and boxes
    of zero width or height or wholly outside the image (counted in ``evaluation_only_boxes``, not
    problems). The evaluation ground truth (``Record.gt_*``) keeps every annotation as written, as pycocotools and the
    AI-TOD cocoapi do: the unclipped box, the ``area`` field, ``iscrowd`` as the ignore flag (``ignore``
    does not count there). A file that numbers an annotation 0 gets a warning (pycocotools cannot
    match such an object; kldet's evaluation can). Images are checked by header (``decode`` also
    decodes them).

    Args:
        ann_file: COCO JSON with ``images``, ``annotations`` and ``categories``.
        image_dir: folder the images' ``file_name`` is relative to. None reads the file alone, for
            evaluation (``kldet-eval results=``): no image is opened, ``file_name`` may be missing, and
            boxes are checked against the declared ``width`` and ``height`` where the file has them.
        strict: raise :class:`~kldet.errors.KLDetDataError` on the first problem (after checking
            everything); otherwise skip bad images and annotations and log a count.
        classes: fixed class order, matched to category names case-, hyphen- and space-insensitively;
            categories not in it are unknown classes. None takes the categories sorted by id.
        progress: show a progress bar while checking images.

    Returns:
        :class:`DetectionSet` with records in the file's image order.
    """
    ann_file, image_dir = Path(ann_file), None if image_dir is None else Path(image_dir)
    data = _load(ann_file)
    log = ProblemLog(ann_file)
    class_names, category_ids, label_of, category_names = _categories(data["categories"], ann_file, classes)

    images: dict[int, Record | None] = {}  # None: the image is skipped, and so are its annotations
    ids = Counter(entry.get("id") for entry in data["images"] if isinstance(entry, dict))
    for index, entry in enumerate(
        tqdm(data["images"], desc=f"checking {ann_file.name}", disable=not progress)
    ):
        image_id = entry.get("id") if isinstance(entry, dict) else None
        file_name = entry.get("file_name") if isinstance(entry, dict) else None
        if image_dir is None and file_name is None:  # evaluation reads no image file
            file_name = ""
        if not is_int(image_id) or not isinstance(file_name, str):
            message = "needs an integer id and a file_name"
            log.add("malformed_record", ann_file, f"images[{index}]", message, "image")
            if is_int(image_id):  # its annotations go with it, without a problem each
                images[image_id] = None
            continue
        record = f"image id {image_id} ({file_name})"
        if ids[image_id] > 1:
            if image_id not in images:
                message = (
                    f"image id {image_id} occurs {ids[image_id]} times; its annotations cannot be attributed"
                )
                log.add("duplicate_id", ann_file, record, message, "image")
            images[image_id] = None
            continue
        declared = (entry.get("width"), entry.get("height"))
        declared = tuple(int(v) for v in declared) if all(is_number(v) for v in declared) else None
        if image_dir is None:  # boxes are checked against the declared size, if any
            images[image_id] = Record(file_name, *(declared or (0, 0)), image_id=image_id)
            continue
        size = check_image(log, ann_file, record, image_dir / file_name, declared, decode)
        images[image_id] = None if size is None else Record(image_dir / file_name, *size, image_id=image_id)

    boxes, labels = defaultdict(list), defaultdict(list)
    gt_boxes, gt_labels, gt_areas, gt_ignore = (defaultdict(list) for _ in range(4))
    annotation_ids = set()
    for index, annotation in enumerate(data["annotations"]):
        if not isinstance(annotation, dict):
            log.add(
                "malformed_annotation", ann_file, f"annotations[{index}]", "is not an object", "annotation"
            )
            continue
        annotation_id, image_id = annotation.get("id"), annotation.get("image_id")
        if image_id not in images:
            message = f"refers to image id {image_id!r}, which the file does not list"
            log.add("unknown_image", ann_file, f"annotation id {annotation_id}", message, "annotation")
            continue
        image = images[image_id]
        if image is None:
            continue
        record = f"image id {image_id} ({image.image_path.name}), annotation id {annotation_id}"
        if annotation_id is not None:
            if annotation_id in annotation_ids:
                log.add("duplicate_id", ann_file, record, "annotation id occurs twice", "annotation")
                continue
            annotation_ids.add(annotation_id)
        bbox, area = annotation.get("bbox"), annotation.get("area")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(is_number(v) for v in bbox):
            log.add(
                "malformed_annotation",
                ann_file,
                record,
                f"bbox {bbox!r} is not four finite numbers [x, y, w, h]",
                "annotation",
            )
            continue
        if area is not None and not is_number(area):
            log.add(
                "malformed_annotation",
                ann_file,
                record,
                f"area {area!r} is not a finite number",
                "annotation",
            )
            continue
        if annotation.get("iscrowd", 0) not in (0, 1):
            message = f"iscrowd {annotation['iscrowd']!r} is not 0 or 1"
            log.add("malformed_annotation", ann_file, record, message, "annotation")
            continue
        category_id = annotation.get("category_id")
        if category_id not in label_of:
            known = (
                f"one of the classes {', '.join(class_names)}"
                if classes is not None
                else "in the file's categories"
            )
            name = f" ({category_names[category_id]!r})" if category_id in category_names else ""
            message = f"category_id {category_id!r}{name} is not {known}"
            log.add("unknown_class", ann_file, record, message, "annotation")
            continue
        x, y, w, h = (float(v) for v in bbox)
        written = f"bbox {bbox} (xywh)"
        bounds = (image.width or math.inf, image.height or math.inf)  # 0: no declared size
        if w >= 0 and h >= 0 and not _covers_pixels(x, y, w, h, *bounds):
            # Zero-size or wholly outside: no target for training, but a ground truth the official
            # evaluation counts (it can never be matched), so evaluation counts it too (spec section 7).
            log.evaluation_only_boxes += 1
            box = None
        else:
            box = check_box(log, ann_file, record, (x, y, x + w, y + h), *bounds, written)
            if box is None:
                continue
        area = w * h if area is None else float(area)
        crowd = bool(annotation.get("iscrowd"))
        # Evaluation scores every annotation as the file writes it, as pycocotools does (which takes
        # iscrowd, not the "ignore" key some AI-TOD files write, for the ignore flag).
        gt_boxes[image_id].append((x, y, x + w, y + h))
        gt_labels[image_id].append(label_of[category_id])
        gt_areas[image_id].append(area)
        gt_ignore[image_id].append(crowd)
        # Training drops what the authors' MMDetection loader drops.
        if box is not None and not (crowd or annotation.get("ignore")) and w >= 1 and h >= 1 and area > 0:
            boxes[image_id].append(box)
            labels[image_id].append(label_of[category_id])

    if 0 in annotation_ids:
        warn_annotation_id_zero(ann_file)
    records = []
    for image_id, image in images.items():
        if image is not None:
            image.boxes, image.labels = stack_boxes(boxes[image_id]), np.array(labels[image_id], np.int64)
            image.gt_boxes = stack_boxes(gt_boxes[image_id], np.float64)
            image.gt_labels = np.array(gt_labels[image_id], np.int64)
            image.gt_areas = np.array(gt_areas[image_id], np.float64)
            image.gt_ignore = np.array(gt_ignore[image_id], bool)
            records.append(image)
    log.finish(strict)
    return log.detection_set(records, class_names, category_ids)


def find_coco_split(root: str | Path, split: str) -> tuple[Path, Path]:
    """``(annotation file, image folder)`` of ``split`` in a COCO root: ``root/annotations/<split>.json``
    or ``root/annotations/instances_<split>.json``, and ``root/<split>/`` or ``root/images/<split>/``.

    Raises:
        KLDetConfigError: naming the expected layout, when either is missing.
    """
    root = Path(root)
    names = [root / "annotations" / f"{split}.json", root / "annotations" / f"instances_{split}.json"]
    dirs = [root / split, root / "images" / split]
    ann_file = next((p for p in names if p.is_file()), None)
    image_dir = next((p for p in dirs if p.is_dir()), None)
    if ann_file is None or image_dir is None:
        raise KLDetConfigError(
            f"COCO split {split!r} not found under {root}: expected one of {', '.join(map(str, names))}\n"
            f"and one of the image folders {', '.join(map(str, dirs))}"
        )
    return ann_file, image_dir


def categories_of(ann_file: str | Path) -> tuple[list[str], list[int]]:
    """``(class names, category ids)`` of a COCO file's categories, sorted by id, as :func:`read_coco` takes them."""
    ann_file = Path(ann_file)
    names, category_ids, _, _ = _categories(_load(ann_file)["categories"], ann_file, None)
    return names, category_ids


def to_coco(
    records: Sequence[Record],
    classes: Sequence[str],
    category_ids: Sequence[int],
    image_dir: str | Path | None = None,
) -> dict:
    """A COCO detection dict (``bbox`` as ``[x, y, w, h]``) of the records' ground truth (``gt_*``: the
    boxes as annotated, their ``area``, ``iscrowd`` for the ignored ones), which :func:`read_coco` reads back.

    Args:
        image_dir: ``file_name`` is the image path relative to it; None writes the bare file name.
    """
    images, annotations = [], []
    for record in records:
        file_name = (
            record.image_path.relative_to(image_dir) if image_dir is not None else record.image_path.name
        )
        images.append(
            {
                "id": int(record.image_id),
                "file_name": str(file_name),
                "width": record.width,
                "height": record.height,
            }
        )
        for box, label, area, ignore in zip(
            record.gt_boxes.tolist(),
            record.gt_labels.tolist(),
            record.gt_areas.tolist(),
            record.gt_ignore.tolist(),
            strict=True,
        ):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": int(record.image_id),
                    "category_id": int(category_ids[label]),
                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                    "area": area,
                    "iscrowd": int(ignore),
                }
            )
    categories = [{"id": int(i), "name": name} for i, name in zip(category_ids, classes, strict=True)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _load(path: Path) -> dict:
    """The parsed annotation file, with ``images``, ``annotations`` and ``categories`` lists."""
    data = read_json(path, "annotation")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise KLDetDataError(f'{path}: not a COCO annotation file (needs an object with an "images" list)')
    data.setdefault("annotations", [])
    if not isinstance(data["annotations"], list) or not isinstance(data.get("categories"), list):
        raise KLDetDataError(f'{path}: "annotations" and "categories" must be lists')
    return data


def _categories(categories: list, path: Path, classes: Sequence[str] | None):
    """``(class names, category id of each class, label of each known category id, name of every category id)``."""
    names = {}
    for index, category in enumerate(categories):
        if not isinstance(category, dict) or not is_int(category.get("id")) or "name" not in category:
            raise KLDetDataError(f"{path}: categories[{index}] needs an integer id and a name")
        if category["id"] in names:
            raise KLDetDataError(f"{path}: category id {category['id']} occurs twice")
        names[category["id"]] = str(category["name"])
    if classes is None:
        ids = sorted(names)
        return [names[i] for i in ids], ids, {i: label for label, i in enumerate(ids)}, names
    wanted = {normalize_class_name(name): label for label, name in enumerate(classes)}
    label_of = {
        i: wanted[normalize_class_name(n)] for i, n in names.items() if normalize_class_name(n) in wanted
    }
    category_ids = list(range(1, len(classes) + 1))
    for category_id, label in label_of.items():
        category_ids[label] = category_id
    return list(classes), category_ids, label_of, names


def _covers_pixels(x: float, y: float, w: float, h: float, width: float, height: float) -> bool:
    """Whether the ``[x, y, w, h]`` box has a part of positive area inside a ``width`` x ``height`` image."""
    return min(x + w, width) > max(x, 0.0) and min(y + h, height) > max(y, 0.0)
