"""The LightningDataModule: reads the splits of one data set and serves padded batches."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from kldet.data import (
    AITOD_CLASSES,
    DIOR_CLASSES,
    FORMATS,
    DetectionDataset,
    DetectionSet,
    DetectionTransform,
    Record,
    collate,
    locate_split,
    read_dataset,
)
from kldet.data.coco import categories_of
from kldet.data.dataset import SIZE_DIVISOR
from kldet.data.dior import DIFFICULT_MODES
from kldet.data.transforms import resize_policy
from kldet.errors import KLDetConfigError, KLDetDataError
from kldet.model.normalization import InputNormalization

log = logging.getLogger(__name__)

STAGES = ("train", "val", "test")


class KLDetDataModule(L.LightningDataModule):
    """Train, val and test loaders over an AI-TOD, DIOR or COCO data set.

    Every argument is a plain value, so a Hydra config instantiates it directly.

    Args:
        format: ``"aitod"`` (COCO JSON, the 8 AI-TOD classes), ``"dior"`` (VOC layout, 20 classes)
            or ``"coco"`` (any COCO JSON; classes from its categories).
        root: data set root, where a split is found by name (:func:`kldet.data.locate_split`). aitod:
            ``annotations/`` and image folders (:func:`kldet.data.find_aitod_split`); dior:
            ``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/`` (:func:`kldet.data.find_dior_split`);
            coco: ``annotations/<split>.json`` or ``instances_<split>.json`` and ``<split>/``
            (:func:`kldet.data.find_coco_split`).
        train_split, val_split, test_split: split names; None leaves that stage without data.
        train_ann, val_ann, test_ann, train_images, val_images, test_images: annotation file and
            image folder of a split, overriding what ``root`` and the split name give (aitod, coco).
            A stage given neither takes those of another stage that names the same split (with
            ``test_split`` equal to ``val_split``, ``val_ann``/``val_images`` serve the test stage too).
        batch_size: training images per batch; ``eval_batch_size`` for the other loaders (default the same).
        num_workers, persistent_workers: DataLoader worker processes, kept alive between epochs.
        pin_memory: page-locked batches; None pins when CUDA is available.
        lenient: skip bad images and annotations (counted in a logged summary) instead of raising.
        decode_check: decode every image while reading a split, not only its header.
        max_size: longer image side after resizing (keeping the aspect ratio); None keeps sizes.
        crop_size: train on random ``crop_size`` x ``crop_size`` crops at native resolution (images no
            larger are used whole) and evaluate by sliced prediction over whole native images, tiles of
            ``crop_size`` px, as kldet-predict predicts (:class:`kldet.inference.Predictor`); needs
            ``max_size`` None. The eval loaders then serve one image per batch (``eval_batch_size`` does
            not apply; ``module.tile_batch_size`` tiles go through the network at a time). None: whole
            images, resized by ``max_size``.
        crop_min_visibility: fraction of its area a box must keep inside a crop to stay a training target.
        crop_object_fraction: share of crops placed around an object (drawn uniformly over the image's
            objects, anywhere in the crop), the rest uniform over positions
            (:func:`kldet.data.transforms.sample_crop`).
        eval_overlap: overlap of the evaluation tiles with ``crop_size`` (a fraction of it, as kldet-predict's
            ``overlap``).
        hflip, vflip, rotate90: training augmentation probabilities.
        size_divisor: batches are zero-padded to a multiple of it.
        difficult: dior: VOC ``difficult`` objects are normal objects ("object", the KLDet authors'
            reading) or ignored boxes ("ignore", the VOC devkit's), in training and evaluation.
        filter_empty_gt: train only on images with at least one annotated object of a known class
            (ignored ones included), as MMDetection's ``filter_empty_gt`` (the authors' DIOR setting).
        normalization: the model input's channel order, mean and std, as an
            :class:`~kldet.model.InputNormalization` or its ``{"channel_order", "mean", "std"}`` dict; None
            is the pytorch style's (RGB, ImageNet). Not a data config key: kldet-train derives it from
            ``model.style`` (:func:`kldet.model.input_normalization`), kldet-eval from the checkpoint.
        allow_no_objects: accept a training split without a single object (strict loading otherwise
            stops with an error; lenient loading warns).
    """

    def __init__(
        self,
        format: str = "aitod",
        root: str | None = None,
        train_split: str | None = "trainval",
        val_split: str | None = "test",
        test_split: str | None = "test",
        train_ann: str | None = None,
        val_ann: str | None = None,
        test_ann: str | None = None,
        train_images: str | None = None,
        val_images: str | None = None,
        test_images: str | None = None,
        batch_size: int = 2,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        persistent_workers: bool = True,
        pin_memory: bool | None = None,
        lenient: bool = False,
        decode_check: bool = False,
        max_size: int | None = 800,
        crop_size: int | None = None,
        crop_min_visibility: float = 0.5,
        crop_object_fraction: float = 0.5,
        eval_overlap: float = 0.2,
        hflip: float = 0.5,
        vflip: float = 0.0,
        rotate90: float = 0.0,
        size_divisor: int = SIZE_DIVISOR,
        difficult: str = "object",
        filter_empty_gt: bool = False,
        normalization: InputNormalization | Mapping[str, Any] | None = None,
        allow_no_objects: bool = False,
    ):
        super().__init__()
        if format not in FORMATS:
            raise KLDetConfigError(f"data format={format!r} is not one of {', '.join(FORMATS)}")
        self.format = format
        self.root = Path(root) if root is not None else None
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.ann_files = {"train": train_ann, "val": val_ann, "test": test_ann}
        self.image_dirs = {"train": train_images, "val": val_images, "test": test_images}
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.persistent_workers = persistent_workers and num_workers > 0
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.lenient = lenient
        self.decode_check = decode_check
        if not isinstance(normalization, InputNormalization):
            normalization = InputNormalization.from_preprocess(normalization)
        self.normalization = normalization
        self.train_transform = DetectionTransform(
            max_size,
            crop_size=crop_size,
            crop_min_visibility=crop_min_visibility,
            crop_object_fraction=crop_object_fraction,
            hflip=hflip,
            vflip=vflip,
            rotate90=rotate90,
            normalization=normalization,
        )
        self.crop_size, self.eval_overlap = crop_size, eval_overlap
        self.eval_transform = DetectionTransform(max_size, normalization=normalization)
        self.size_divisor = size_divisor
        if difficult not in DIFFICULT_MODES:
            raise KLDetConfigError(f"data difficult={difficult!r} is not one of {', '.join(DIFFICULT_MODES)}")
        self.difficult = difficult
        self.filter_empty_gt = filter_empty_gt
        self.allow_no_objects = allow_no_objects
        self.sets: dict[str, DetectionSet] = {}
        self._categories: tuple[list[str], list[int]] | None = None

    # --- what the model and the evaluation need -------------------------------------------------------

    @property
    def classes(self) -> list[str]:
        """Class names; labels index into them."""
        return self._class_info()[0]

    @property
    def category_ids(self) -> list[int]:
        """The data set's category id of each class, for results files (from the annotation file once a
        split is read; AI-TOD's are 1..8 and DIOR has none, so 1..20)."""
        if self.sets:
            return next(iter(self.sets.values())).category_ids
        return self._class_info()[1]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def resize_policy(self) -> dict[str, Any]:
        """How the training images are made and evaluation predicts, as checkpoints record it
        (:func:`kldet.data.transforms.resize_policy`)."""
        return resize_policy(self.eval_transform.max_size, self.crop_size, self.eval_overlap)

    def ground_truth(self, stage: str) -> DetectionSet:
        """The records of ``stage`` ("train", "val" or "test"): training targets and evaluation ground truth
        in original pixels, with the image ids that predictions are matched on. Reads the split if needed
        (once for stages that resolve to the same files)."""
        if stage not in self.sets:
            location = self.locate(stage)
            same = next((self.sets[other] for other in self.sets if self.locate(other) == location), None)
            self.sets[stage] = same if same is not None else self.checked(stage, self.read_split(stage))
        return self.sets[stage]

    def annotation_file(self, stage: str) -> Path | None:
        """The COCO JSON of ``stage`` (aitod, coco), for evaluators that read ground truth from a file."""
        return None if self.format == "dior" else self.locate(stage)[0]

    # --- Lightning hooks ------------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}
        for split_stage in needed.get(stage, STAGES):
            if self.has_split(split_stage):
                self.ground_truth(split_stage)

    def train_dataloader(self) -> DataLoader:
        if not self.has_split("train"):
            raise KLDetConfigError(
                "no training data: set train_split= (with root=) or train_ann= and train_images="
            )
        records = self.ground_truth("train").records
        if self.filter_empty_gt:
            records = [r for r in records if len(r.gt_labels)]
        return self._loader(records, self.train_transform, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        # An empty list is Lightning's way of saying there is nothing to validate on.
        if not self.has_split("val"):
            return []
        return self._loader(
            self.ground_truth("val").records, self.eval_transform, self._eval_images_per_batch
        )

    def test_dataloader(self) -> DataLoader | list:
        if not self.has_split("test"):
            return []
        return self._loader(
            self.ground_truth("test").records, self.eval_transform, self._eval_images_per_batch
        )

    @property
    def _eval_images_per_batch(self) -> int:
        # Sliced evaluation tiles each image itself: padding several native scenes into one batch would
        # only spend memory.
        return 1 if self.crop_size is not None else self.eval_batch_size

    def has_split(self, stage: str) -> bool:
        """Whether ``stage`` ("train", "val", "test") has data configured."""
        return self.splits[stage] is not None or self.ann_files[stage] is not None

    # --- reading --------------------------------------------------------------------------------------

    def given_files(self, stage: str) -> tuple[str | None, str | None]:
        """The annotation file and image folder given for ``stage``; when neither is, those given for
        another stage that names the same split (``test_split: val`` uses ``val_ann``, ``val_images``)."""
        if self.ann_files[stage] is None and self.image_dirs[stage] is None:
            for other in STAGES:
                same_split = self.splits[stage] is not None and self.splits[other] == self.splits[stage]
                if same_split and self.ann_files[other] is not None:
                    return self.ann_files[other], self.image_dirs[other]
        return self.ann_files[stage], self.image_dirs[stage]

    def locate(self, stage: str) -> tuple[Path, Path]:
        """``(annotation file, image folder)`` of ``stage`` for aitod and coco; ``(split file, root)`` for dior
        (:func:`kldet.data.locate_split` of the given files, ``root`` and the split name).

        Raises:
            KLDetConfigError: saying where the files are expected and which keys to set.
        """
        try:
            return locate_split(self.format, self.root, self.splits[stage], *self.given_files(stage))
        except KLDetConfigError as error:
            keys = (
                f"set root= (the folder with Annotations/, JPEGImages/ and ImageSets/Main/) and {stage}_split="
                if self.format == "dior"
                else f"set root= (the data set folder), or {stage}_ann= and {stage}_images="
            )
            raise KLDetConfigError(f"{self.format} {stage} data: {error}\n({keys})") from None

    def read_split(self, stage: str) -> DetectionSet:
        """Reads and validates ``stage``'s split (strict unless ``lenient``)."""
        self.locate(stage)  # the configuration error that names this stage's keys
        return read_dataset(
            self.format,
            self.root,
            self.splits[stage],
            *self.given_files(stage),
            classes=self.classes if self.format == "coco" else None,
            difficult=self.difficult,
            strict=not self.lenient,
            decode=self.decode_check,
        )

    def checked(self, stage: str, dataset: DetectionSet) -> DetectionSet:
        """``dataset`` if it can serve ``stage``: at least one image, and for training at least one object
        unless ``allow_no_objects`` (lenient loading then only warns).

        Raises:
            KLDetDataError: naming the split's files and why nothing is left.
        """
        by_name = self.given_files(stage)[0] is None and self.splits[stage] is not None
        where = f"{stage} split {self.splits[stage]!r}" if by_name else f"{stage} data"
        where += f" ({dataset.source})"
        if not dataset.records:
            skipped = Counter(problem.kind for problem in dataset.problems if problem.skips == "image")
            reason = (
                "every image was skipped as bad ("
                + ", ".join(f"{n} {kind}" for kind, n in skipped.items())
                + ")"
                if skipped
                else "it lists no images"
            )
            raise KLDetDataError(
                f"{where}: no images to {'train' if stage == 'train' else 'evaluate'} on: {reason}"
            )
        if stage == "train" and not any(len(record.boxes) for record in dataset.records):
            message = (
                f"{where}: {len(dataset.records)} images but not a single object to learn from "
                "(no annotations, or all of them ignored or skipped)"
            )
            if not (self.lenient or self.allow_no_objects):
                raise KLDetDataError(f"{message}; set allow_no_objects=true if that is intended")
            log.warning("%s: training learns only background", message)
        return dataset

    def _class_info(self) -> tuple[list[str], list[int]]:
        if self._categories is None:
            if self.format == "aitod":
                self._categories = list(AITOD_CLASSES), list(range(1, len(AITOD_CLASSES) + 1))
            elif self.format == "dior":
                self._categories = list(DIOR_CLASSES), list(range(1, len(DIOR_CLASSES) + 1))
            else:  # the first split that resolves (the training file in training) defines the classes
                errors = []
                for stage in (s for s in STAGES if self.has_split(s)):
                    try:
                        ann_file = self.locate(stage)[0]
                    except KLDetConfigError as error:
                        errors.append(error)
                        continue
                    self._categories = categories_of(ann_file)
                    break
                else:
                    raise (
                        errors[0]
                        if errors
                        else KLDetConfigError(
                            "coco data: no split configured; set train_split= (with root=) or train_ann= and train_images="
                        )
                    )
        return self._categories

    def _loader(
        self, records: list[Record], transform: DetectionTransform, batch_size: int, shuffle: bool = False
    ) -> DataLoader:
        return DataLoader(
            DetectionDataset(records, transform, skip_unreadable=self.lenient),
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.persistent_workers,
            pin_memory=self.pin_memory,
            collate_fn=partial(collate, size_divisor=self.size_divisor),
        )
