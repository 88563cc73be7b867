"""Inference for users: sliced prediction on images of any size, result files, rendering and export.

Names are imported from their module when first read (:mod:`kldet.lazy`): ``kldet.inference.render``
draws without importing torch. GeoTIFF support (:mod:`kldet.inference.geo`) needs the optional rasterio and
is imported on demand.
"""

from kldet.lazy import lazy_exports

_EXPORTS = {
    "ArraySource": "kldet.inference.sources",
    "ImageFile": "kldet.inference.sources",
    "Predictor": "kldet.inference.predictor",
    "Tile": "kldet.inference.tiling",
    "detections_to_coco": "kldet.inference.results",
    "draw_detections": "kldet.inference.render",
    "export_model": "kldet.inference.export",
    "find_images": "kldet.inference.sources",
    "make_tiles": "kldet.inference.tiling",
    "merge_tiles": "kldet.inference.sliced",
    "open_image": "kldet.inference.sources",
    "owned_detections": "kldet.inference.sliced",
    "sliced_predict": "kldet.inference.sliced",
    "split_outputs": "kldet.inference.export",
    "tile_starts": "kldet.inference.tiling",
    "write_results": "kldet.inference.results",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
