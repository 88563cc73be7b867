"""Data sets as records: readers with validation, a synthetic set, transforms, a Dataset and collate."""

from kldet.data.aitod import AITOD_CLASSES, find_aitod_split, read_aitod
from kldet.data.coco import find_coco_split, read_coco, to_coco
from kldet.data.dataset import DetectionDataset, collate
from kldet.data.dior import DIOR_CLASSES, find_dior_split, read_dior, read_voc
from kldet.data.folder import read_image_folder
from kldet.data.formats import FORMATS, locate_split, read_dataset
from kldet.data.images import IMAGE_SUFFIXES, load_image
from kldet.data.records import DetectionSet, Problem, Record
from kldet.data.transforms import DetectionTransform
from kldet.model.normalization import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "AITOD_CLASSES",
    "DIOR_CLASSES",
    "FORMATS",
    "IMAGE_SUFFIXES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DetectionDataset",
    "DetectionSet",
    "DetectionTransform",
    "Problem",
    "Record",
    "collate",
    "find_aitod_split",
    "find_coco_split",
    "find_dior_split",
    "load_image",
    "locate_split",
    "read_aitod",
    "read_coco",
    "read_dataset",
    "read_dior",
    "read_image_folder",
    "read_voc",
    "to_coco",
]
