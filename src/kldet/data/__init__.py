"""Data sets as records: readers with validation, a synthetic set, transforms, a Dataset and collate."""

from kldet.lazy import lazy_exports

# name -> its module, imported when the name is first read: importing one submodule does not import
# the others (see kldet.lazy).
_EXPORTS = {
    "AITOD_CLASSES": "kldet.data.aitod",
    "DIOR_CLASSES": "kldet.data.dior",
    "FORMATS": "kldet.data.formats",
    "IMAGE_SUFFIXES": "kldet.data.images",
    "IMAGENET_MEAN": "kldet.model.normalization",
    "IMAGENET_STD": "kldet.model.normalization",
    "DetectionDataset": "kldet.data.dataset",
    "DetectionSet": "kldet.data.records",
    "DetectionTransform": "kldet.data.transforms",
    "Problem": "kldet.data.records",
    "Record": "kldet.data.records",
    "collate": "kldet.data.dataset",
    "find_aitod_split": "kldet.data.aitod",
    "find_coco_split": "kldet.data.coco",
    "find_dior_split": "kldet.data.dior",
    "load_image": "kldet.data.images",
    "locate_split": "kldet.data.formats",
    "read_aitod": "kldet.data.aitod",
    "read_coco": "kldet.data.coco",
    "read_dataset": "kldet.data.formats",
    "read_dior": "kldet.data.dior",
    "read_image_folder": "kldet.data.folder",
    "read_voc": "kldet.data.dior",
    "to_coco": "kldet.data.coco",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
