"""AI-TOD: COCO JSON with 8 fixed classes, and where its releases put the files of each split."""

from __future__ import annotations

from pathlib import Path

from kldet.data.coco import read_coco
from kldet.data.records import DetectionSet
from kldet.errors import KLDetConfigError

#: AI-TOD's classes in the order of its category ids 1..8.
AITOD_CLASSES = (
    "airplane",
    "bridge",
    "storage-tank",
    "ship",
    "swimming-pool",
    "vehicle",
    "person",
    "wind-mill",
)

# Releases and code bases name the files differently (docs/data.md's table lists the names in order):
# the KLDet configs say aitod_{trainval,test}_v1_1.0.json, an unused base config of theirs
# aitod_{training,validation}_v1.0.json, the v1 release aitod_<split>_v1.json, the RFLA code base
# aitod_{training,validation}_v1.json (images still in trainval/ and test/), v2 aitodv2_<split>.json,
# and kldet's synthetic set <split>.json.
_TRAINING_OR_VALIDATION = {
    "trainval": "training",
    "train": "training",
    "test": "validation",
    "val": "validation",
}
_IMAGE_DIR_ALIASES = {"trainval": ("train",), "train": ("trainval",), "val": ("test",), "test": ("val",)}


def read_aitod(
    ann_file: str | Path,
    image_dir: str | Path,
    strict: bool = True,
    decode: bool = False,
    progress: bool = False,
) -> DetectionSet:
    """Reads an AI-TOD annotation file; classes are :data:`AITOD_CLASSES` whatever the file's category order.

    See :func:`kldet.data.coco.read_coco` for validation, ``strict`` and ``decode``.
    """
    return read_coco(
        ann_file, image_dir, strict=strict, classes=AITOD_CLASSES, decode=decode, progress=progress
    )


def aitod_annotation_names(split: str) -> list[str]:
    """File names under ``annotations/`` that hold ``split``, in the order they are looked for.

    ``trainval``: aitod_trainval_v1_1.0.json, aitod_training_v1.0.json, aitod_trainval_v1.json,
    aitod_training_v1.json, aitodv2_trainval.json, trainval.json (``test`` likewise, with ``validation``).
    """
    alias = _TRAINING_OR_VALIDATION.get(split)
    names = [f"aitod_{split}_v1_1.0.json"]
    names += [f"aitod_{alias}_v1.0.json"] if alias else []
    names += [f"aitod_{split}_v1.json"]
    names += [f"aitod_{alias}_v1.json"] if alias else []
    return [*names, f"aitodv2_{split}.json", f"{split}.json"]


def aitod_image_dirs(split: str) -> list[str]:
    """Image folders that hold ``split``, in the order they are looked for."""
    return [split, *_IMAGE_DIR_ALIASES.get(split, ())]


def find_aitod_split(root: str | Path, split: str) -> tuple[Path, Path]:
    """``(annotation file, image folder)`` of ``split`` in an AI-TOD root.

    Looks for ``root/annotations/<name>`` with the names of :func:`aitod_annotation_names` and for
    ``root/<dir>`` with the folders of :func:`aitod_image_dirs`, taking the first that exists.

    Raises:
        KLDetConfigError: naming the expected layout, when either is missing.
    """
    root = Path(root)
    names, dirs = aitod_annotation_names(split), aitod_image_dirs(split)
    ann_file = next((root / "annotations" / n for n in names if (root / "annotations" / n).is_file()), None)
    image_dir = next((root / d for d in dirs if (root / d).is_dir()), None)
    if ann_file is not None and image_dir is not None:
        return ann_file, image_dir
    missing = "root" if not root.is_dir() else "annotation file" if ann_file is None else "image folder"
    raise KLDetConfigError(
        f"AI-TOD split {split!r} not found: no {missing} at {root}\n"
        f"expected {root}/annotations/ with one of {', '.join(names)}\n"
        f"     and {root}/ with one of the folders {', '.join(d + '/' for d in dirs)} holding the images\n"
        "set the data set root, or the split's annotation file and image folder"
    )
