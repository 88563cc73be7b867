"""The one record type every reader returns, and the validation every reader shares.

Readers walk a data set, check each image header and each box, and write what is wrong into a
:class:`ProblemLog`. Strict loading then raises one :class:`~kldet.errors.KLDetDataError` naming the
file and the record; lenient loading drops the bad image or annotation, counts it by kind and logs
a summary.

Box policy (the same for every format):

- a box partly outside the image is clipped to it (counted, not a problem);
- a box with zero or negative width or height, or a non-finite coordinate, is ``invalid_box``;
- a box with no overlap with the image is ``box_outside_image``.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kldet.data.images import exif_rotation_hint, load_image, read_header
from kldet.errors import KLDetDataError

logger = logging.getLogger(__name__)

#: What a reader can find wrong. Lenient loading drops the image for the first seven kinds and the
#: annotation for the last five; for ``duplicate_id`` it drops the later annotation or split-file
#: line, and every COCO image entry sharing the id (their annotations cannot be told apart).
PROBLEM_KINDS = {
    "missing_image": "the image file does not exist",
    "corrupt_image": "the image header cannot be read",
    "undecodable_image": "the pixel data cannot be decoded (truncated or corrupt file)",
    "size_mismatch": "the annotated image size differs from the image file",
    "missing_annotation": "a VOC split lists an image without an XML file",
    "unreadable_annotation": "a VOC XML file cannot be parsed",
    "malformed_record": "an image entry lacks a field or has one of the wrong type",
    "duplicate_id": "an image or annotation id occurs twice",
    "unknown_image": "an annotation refers to an image id not in the file",
    "malformed_annotation": "an annotation lacks a field or has one of the wrong type",
    "unknown_class": "an annotation's class is not one of the data set's classes",
    "invalid_box": "a box has zero, negative or non-finite width or height",
    "box_outside_image": "a box does not overlap its image",
}


@dataclass
class Record:
    """One image and its annotations, in the image's own pixels.

    Arrays are numpy, not tensors: DataLoader workers started with spawn or forkserver pickle the
    records, and pickled tensors each open a shared-memory file.

    A record holds its annotations twice, because training and evaluation read a file differently
    (as the authors' MMDetection loader and the AI-TOD cocoapi do): ``boxes`` / ``labels`` are what
    the detector learns, ``gt_*`` is the ground truth that evaluation scores against.

    Attributes:
        image_path: the image file.
        width, height: image size in pixels, read from the image header (:func:`~kldet.data.read_coco`
            without images: the declared size, 0 where the file has none).
        boxes: (G, 4) float32 ``xyxy`` training targets, clipped to the image.
        labels: (G,) int64 class indices ``0..C-1``.
        image_id: the data set's own image id (COCO ``id``; the numeric DIOR file stem).
        gt_boxes: (M, 4) float64 ``xyxy`` boxes as annotated (not clipped): every object evaluation
            counts, and the ignored ones. None: the training targets.
        gt_labels: (M,) int64 class of each.
        gt_areas: (M,) float64 area that sorts a box into the COCO / AI-TOD size ranges: the COCO
            file's ``area`` field (which need not be w * h), else w * h.
        gt_ignore: (M,) bool boxes that are neither objects nor background, within their class: COCO
            crowd boxes (``iscrowd: 1``, matched with the crowd IoU rule), VOC / DIOR ignored boxes.
    """

    image_path: Path
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    image_id: int = 0
    gt_boxes: np.ndarray | None = None
    gt_labels: np.ndarray | None = None
    gt_areas: np.ndarray | None = None
    gt_ignore: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.image_path = Path(self.image_path)
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, np.int64).reshape(-1)
        if len(self.boxes) != len(self.labels):
            raise ValueError(f"{len(self.boxes)} boxes but {len(self.labels)} labels")
        if self.gt_boxes is None:
            self.gt_boxes, self.gt_labels = self.boxes, self.labels
        self.gt_boxes = np.asarray(self.gt_boxes, np.float64).reshape(-1, 4)
        self.gt_labels = np.asarray(self.gt_labels, np.int64).reshape(-1)
        if self.gt_areas is None:
            self.gt_areas = (self.gt_boxes[:, 2] - self.gt_boxes[:, 0]) * (
                self.gt_boxes[:, 3] - self.gt_boxes[:, 1]
            )
        self.gt_areas = np.asarray(self.gt_areas, np.float64).reshape(-1)
        if self.gt_ignore is None:
            self.gt_ignore = np.zeros(len(self.gt_boxes), bool)
        self.gt_ignore = np.asarray(self.gt_ignore, bool).reshape(-1)
        if not len(self.gt_boxes) == len(self.gt_labels) == len(self.gt_areas) == len(self.gt_ignore):
            raise ValueError(
                f"{len(self.gt_boxes)} gt_boxes, {len(self.gt_labels)} gt_labels, {len(self.gt_areas)} "
                f"gt_areas and {len(self.gt_ignore)} gt_ignore"
            )


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a data set: ``kind`` is a key of :data:`PROBLEM_KINDS`."""

    kind: str
    file: Path
    record: str
    message: str
    skips: str

    def __str__(self) -> str:
        return f"{self.file}: {self.record}: {self.message}"


@dataclass
class DetectionSet:
    """What a reader returns.

    Attributes:
        records: the images that passed validation, in the data set's order.
        classes: class names; ``labels`` index into it.
        category_ids: the data set's category id of each class (for results files).
        source: the annotation file or data set root that was read.
        problems: everything found wrong (empty after a strict read).
        clipped_boxes: boxes that reached outside their image and were clipped to it.
        evaluation_only_boxes: COCO boxes of zero width or height, or wholly outside their image: ground
            truth in evaluation (as pycocotools and the AI-TOD cocoapi count them), no training target.
    """

    records: list[Record]
    classes: list[str]
    category_ids: list[int]
    source: Path
    problems: list[Problem] = field(default_factory=list)
    clipped_boxes: int = 0
    evaluation_only_boxes: int = 0


class ProblemLog:
    """Collects the problems and clipped boxes a reader finds in ``source``."""

    def __init__(self, source: Path):
        self.source = source
        self.problems: list[Problem] = []
        self.clipped_boxes = 0
        self.evaluation_only_boxes = 0

    def add(self, kind: str, file: Path, record: str, message: str, skips: str) -> None:
        """Notes a problem; ``skips`` says what lenient loading drops for it: "image" or "annotation"."""
        self.problems.append(Problem(kind, file, record, message, skips))

    def finish(self, strict: bool) -> None:
        """Raises the first problem when ``strict``; otherwise logs a count of what was skipped."""
        if not self.problems:
            return
        if strict:
            more = len(self.problems) - 1
            hint = (
                f"\n({more} more problem{'s' if more > 1 else ''}; `kldet-data check` lists all, "
                "lenient loading skips them)"
                if more
                else ""
            )
            raise KLDetDataError(f"{self.problems[0]}{hint}")
        logger.warning("%s", self.summary())

    def summary(self) -> str:
        """One line: how many images and annotations were skipped, by kind."""
        skipped = Counter(p.skips for p in self.problems)
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(Counter(p.kind for p in self.problems).items()))
        return (
            f"{self.source}: skipped {skipped['image']} image(s) and {skipped['annotation']} annotation(s) "
            f"({kinds})"
        )

    def detection_set(
        self, records: list[Record], classes: Sequence[str], category_ids: Sequence[int]
    ) -> DetectionSet:
        """The :class:`DetectionSet` of ``records`` with this log's problems."""
        return DetectionSet(
            records,
            list(classes),
            list(category_ids),
            self.source,
            self.problems,
            self.clipped_boxes,
            self.evaluation_only_boxes,
        )


def check_image(
    log: ProblemLog,
    file: Path,
    record: str,
    path: Path,
    declared: tuple[int, int] | None,
    decode: bool,
) -> tuple[int, int] | None:
    """The image's ``(width, height)`` from its header, or None after logging why the image cannot be used.

    Args:
        file: the annotation file the problem is reported against.
        record: how the problem names the record, e.g. ``"image id 7 (a.png)"``.
        declared: ``(width, height)`` the annotation states, checked against the header; None skips it.
        decode: also decode the pixels with :func:`kldet.data.images.load_image`, the decoder training
            uses (finds truncated and corrupt pixel data that the header check cannot).
    """
    try:
        width, height, orientation = read_header(path)
    except FileNotFoundError:
        log.add("missing_image", file, record, f"image file {path} not found", "image")
        return None
    except KLDetDataError as error:
        log.add("corrupt_image", file, record, f"image file {path}: {error}", "image")
        return None
    if declared is not None and tuple(declared) != (width, height):
        hint = exif_rotation_hint(orientation, declared, (width, height))
        log.add(
            "size_mismatch",
            file,
            record,
            f"annotated size {declared[0]}x{declared[1]} but image {path} is {width}x{height}{hint}",
            "image",
        )
        return None
    if decode:
        try:
            pixels = load_image(path)
        except KLDetDataError as error:
            log.add("undecodable_image", file, record, str(error), "image")
            return None
        if pixels.shape[:2] != (height, width):
            decoded = f"{pixels.shape[1]}x{pixels.shape[0]}"
            message = f"image file {path} decodes to {decoded}, its header says {width}x{height}"
            log.add("undecodable_image", file, record, message, "image")
            return None
    return width, height


def check_box(
    log: ProblemLog,
    file: Path,
    record: str,
    box: Sequence[float],
    width: int,
    height: int,
    written: str | None = None,
) -> tuple[float, float, float, float] | None:
    """The ``xyxy`` box clipped to a ``width`` x ``height`` image, or None after logging why it is unusable.

    Plain floats, not arrays: readers call this once per annotation, hundreds of thousands of times.

    Args:
        written: the box as the file writes it, for the message (default: ``box`` as xyxy).

    Returns:
        the clipped box, or None for a zero-size, negative, non-finite or fully outside box.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    shown = written or "box [" + ", ".join(f"{v:g}" for v in (x1, y1, x2, y2)) + "] (xyxy)"
    if not (math.isfinite(x1) and math.isfinite(y1) and math.isfinite(x2) and math.isfinite(y2)):
        log.add("invalid_box", file, record, f"{shown} has a non-finite coordinate", "annotation")
        return None
    if x2 <= x1 or y2 <= y1:
        side = "width" if x2 <= x1 else "height"
        size = "zero" if (x2 == x1 if side == "width" else y2 == y1) else "negative"
        log.add("invalid_box", file, record, f"{shown} has {size} {side}", "annotation")
        return None
    clipped = (max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height)))
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        message = f"{shown} lies outside the {width}x{height} image"
        log.add("box_outside_image", file, record, message, "annotation")
        return None
    if clipped != (x1, y1, x2, y2):
        log.clipped_boxes += 1
    return clipped


def normalize_class_name(name: str) -> str:
    """Case-, space-, hyphen- and underscore-insensitive form: ``Expressway-Service-area`` -> ``expresswayservicearea``."""
    return "".join(c for c in str(name).lower() if c not in " -_")


def stack_boxes(boxes: Sequence[Sequence[float]], dtype=np.float32) -> np.ndarray:
    """(N, 4) array of N boxes (no boxes give (0, 4))."""
    return np.array(boxes, dtype).reshape(-1, 4)


def warn_annotation_id_zero(path: Path) -> None:
    """Warns that ``path`` numbers an annotation 0, which kldet renumbers but pycocotools cannot match."""
    warnings.warn(
        f"{path}: has an annotation with id 0; kldet renumbers annotations from 1, while pycocotools and "
        "the AI-TOD cocoapi can never match an id-0 object (so their AP can be slightly lower)",
        stacklevel=3,
    )


def is_int(value) -> bool:
    """Whether a parsed JSON value is an integer (``true``/``false`` are not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """Whether a parsed JSON value is a finite number: an int or float, not a bool, NaN or +-Infinity
    (which Python's ``json`` reads although JSON has no such numbers)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pauses Python's cyclic garbage collector.

    Building millions of annotation dicts sets it off again and again, each pass scanning every dict
    made so far (quadratic); none of them can be in a reference cycle.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def read_json(path: str | Path, what: str = "annotation"):
    """The parsed JSON file ``path`` (a ``what`` file: "annotation", "results", ...); a missing, unreadable
    or broken file is one :class:`KLDetDataError` naming it. Garbage collection is paused while parsing
    (annotation and results files hold millions of small dicts)."""
    path = Path(path)
    try:
        with path.open("rb") as f, gc_paused():
            return json.load(f)
    except (FileNotFoundError, NotADirectoryError):
        raise KLDetDataError(f"{path}: {what} file not found") from None
    except IsADirectoryError:
        raise KLDetDataError(f"{path}: {what} file is a directory") from None
    except json.JSONDecodeError as error:
        raise KLDetDataError(
            f"{path}: not valid JSON: {error.msg} (line {error.lineno}, column {error.colno})"
        ) from None
    except UnicodeDecodeError:
        raise KLDetDataError(f"{path}: not a text file") from None
    except OSError as error:
        raise KLDetDataError(f"{path}: cannot read {what} file: {error.strerror}") from None
