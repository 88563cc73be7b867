"""Plain helpers and constants shared by several test files; the shared fixtures are in ``conftest.py``.

pytest's default ``prepend`` import mode puts this folder (it has no ``__init__.py``) on ``sys.path``, so
test files import this module as ``helpers``, from ``python -m pytest`` at the repository root or anywhere.
Lightning and Hydra helpers live in ``training.py``, so tests that need neither do not import them.
"""

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from kldet.assign import AliTSMAssigner, Assigner
from kldet.model import KLDet, PostProcess, kldet_resnet_fpn
from kldet.spec import instantiate

#: Side in pixels of the images of the ``synthetic_root`` fixture's set.
SYNTHETIC_SIZE = 192


def tiny_detector(
    assigner: Assigner = AliTSMAssigner(), postprocess: PostProcess = PostProcess(), **options
) -> KLDet:
    """Cheapest KLDet (2 classes, ResNet-18, 32 channels, one head conv); ``options`` change the keywords
    of :func:`kldet.model.kldet_resnet_fpn`.

    Level shapes do not depend on the channels or the number of head convs.
    """
    options = {"backbone": "resnet18", "channels": 32, "head_convs": 1, **options}
    return kldet_resnet_fpn(2, assigner, postprocess=postprocess, **options)


def tiny_spec(num_classes: int, postprocess: dict[str, Any] | None = None, **changes) -> dict[str, Any]:
    """The model spec (:mod:`kldet.spec`, as checkpoints store it) of a small ResNet-18 KLDet with random
    weights: 16 channels, one head conv; ``postprocess`` settings and ``changes`` of the builder's keywords."""
    return {
        "_target_": "kldet.model.kldet_resnet_fpn",
        "num_classes": num_classes,
        "backbone": "resnet18",
        "weights": None,
        "channels": 16,
        "head_convs": 1,
        "postprocess": {"_target_": "kldet.model.PostProcess", **(postprocess or {})},
        **changes,
    }


def seeded_detector(spec: dict[str, Any], seed: int = 0) -> KLDet:
    """An eval-mode KLDet of the model ``spec`` with random weights drawn after ``torch.manual_seed(seed)``.

    The backbone's "starts from random weights" warning is silenced.
    """
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return instantiate(spec).eval()


def store_preprocess(checkpoint: Path, preprocess: dict[str, Any] | None) -> Path:
    """Replace a checkpoint's ``hyper_parameters["preprocess"]`` by ``preprocess`` verbatim, as older kldet
    versions wrote it (``save_detector`` would complete it)."""
    content = torch.load(checkpoint, weights_only=True)
    content["hyper_parameters"]["preprocess"] = preprocess
    torch.save(content, checkpoint)
    return checkpoint


def write_dior(
    root: Path,
    images: dict[str, list[tuple[str, tuple, int]]],
    splits: Sequence[str] = ("trainval", "test"),
) -> None:
    """A DIOR-layout set of 64 x 64 grey images whose ``splits`` all list every image.

    ``images`` maps a file stem to its objects ``(class name, (x1, y1, x2, y2) as written, difficult)``.
    """
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for stem, objects in images.items():
        cv2.imwrite(str(root / "JPEGImages" / f"{stem}.jpg"), np.full((64, 64, 3), 90, np.uint8))
        xml = "".join(
            f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin>"
            f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
            for name, (x1, y1, x2, y2), difficult in objects
        )
        size = "<size><width>64</width><height>64</height><depth>3</depth></size>"
        (root / "Annotations" / f"{stem}.xml").write_text(f"<annotation>{size}{xml}</annotation>")
    for split in splits:
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(images) + "\n")
