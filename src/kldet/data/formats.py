"""One entry for every data set format: where a split's files are, and reading it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kldet.data.aitod import find_aitod_split, read_aitod
from kldet.data.coco import find_coco_split, read_coco
from kldet.data.dior import find_dior_split, read_dior
from kldet.data.records import DetectionSet
from kldet.errors import KLDetConfigError

#: ``"aitod"`` (COCO JSON, the 8 AI-TOD classes), ``"dior"`` (VOC layout, the 20 DIOR classes),
#: ``"coco"`` (any COCO JSON; classes from its categories).
FORMATS = ("aitod", "dior", "coco")

_FIND_SPLIT = {"aitod": find_aitod_split, "dior": find_dior_split, "coco": find_coco_split}


def locate_split(
    format: str,
    root: str | Path | None = None,
    split: str | None = None,
    ann: str | Path | None = None,
    images: str | Path | None = None,
) -> tuple[Path, Path]:
    """``(annotation file, image folder)`` of a split (aitod, coco), ``(split file, root)`` for dior.

    aitod and coco take ``ann`` and ``images`` where given, and find what is not given in ``root``
    under the name ``split`` (:func:`~kldet.data.find_aitod_split`, :func:`~kldet.data.coco.find_coco_split`);
    dior reads ``root`` and ``split`` only (:func:`~kldet.data.dior.find_dior_split`).

    Raises:
        KLDetConfigError: for an unknown format, missing arguments, or a split not found in ``root``.
    """
    if format not in FORMATS:
        raise KLDetConfigError(f"data format={format!r} is not one of {', '.join(FORMATS)}")
    if format != "dior" and ann is not None and images is not None:
        return Path(ann), Path(images)
    if root is None or split is None:
        needs = "root=DIR split=NAME" if format == "dior" else "ann=FILE images=DIR (or root=DIR split=NAME)"
        raise KLDetConfigError(f"format={format} needs {needs}")
    found = _FIND_SPLIT[format](root, split)
    if format == "dior":
        return found
    return Path(ann) if ann is not None else found[0], Path(images) if images is not None else found[1]


def read_dataset(
    format: str,
    root: str | Path | None = None,
    split: str | None = None,
    ann: str | Path | None = None,
    images: str | Path | None = None,
    classes: Sequence[str] | None = None,
    difficult: str = "object",
    strict: bool = True,
    decode: bool = False,
    progress: bool = False,
) -> DetectionSet:
    """Reads and validates a split of a data set in ``format``, found as :func:`locate_split` says.

    Args:
        classes: coco: fixed class order (see :func:`~kldet.data.read_coco`); None takes the file's
            categories. aitod and dior have their own.
        difficult: dior: how VOC difficult objects count (see :func:`~kldet.data.read_dior`).
        strict, decode, progress: as the readers take them.
    """
    location = locate_split(format, root, split, ann, images)
    options = {"strict": strict, "decode": decode, "progress": progress}
    if format == "dior":
        return read_dior(location[1], split, difficult=difficult, **options)
    if format == "aitod":
        return read_aitod(*location, **options)
    return read_coco(*location, classes=classes, **options)
