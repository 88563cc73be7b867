"""Inference for users: sliced prediction on images of any size, result files, rendering and export.

GeoTIFF support (:mod:`kldet.inference.geo`) needs the optional rasterio and is imported on demand.
"""

from kldet.inference.export import export_model, split_outputs
from kldet.inference.predictor import Predictor
from kldet.inference.render import draw_detections
from kldet.inference.results import detections_to_coco, write_results
from kldet.inference.sliced import merge_tiles, owned_detections, sliced_predict
from kldet.inference.sources import ArraySource, ImageFile, find_images, open_image
from kldet.inference.tiling import Tile, make_tiles, tile_starts

__all__ = [
    "ArraySource",
    "ImageFile",
    "Predictor",
    "Tile",
    "detections_to_coco",
    "draw_detections",
    "export_model",
    "find_images",
    "make_tiles",
    "merge_tiles",
    "open_image",
    "owned_detections",
    "sliced_predict",
    "split_outputs",
    "tile_starts",
    "write_results",
]
