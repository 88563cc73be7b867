"""kldet-predict: detect objects in images or large scenes with a trained checkpoint.

Usage::

    kldet-predict ckpt=last.ckpt input=scenes/ out=predictions/ [key=value ...]

``input`` is an image, a folder (searched recursively) or a glob (quote it). Images keep their native
resolution unless ``resize=train`` (scale them as training did) or ``resize=N`` (longer side N px);
anything larger than ``tile_size`` is then cut into overlapping tiles. EXIF orientation is ignored, as
in training: boxes refer to the stored pixels. ``out`` receives
``results.json`` (COCO results list), ``images.json`` (the matching COCO images/categories), ``summary.csv``
(per image: size, tiles, boxes per class, seconds), ``scenes/`` (each image's part of the results, which
``skip_existing=true`` resumes from), ``rendered/`` (images with boxes) and, for georeferenced GeoTIFFs,
``geojson/`` (RFC 7946: EPSG:4326 lon/lat; ``vector_crs=image`` for the image's CRS) or ``gpkg/``
(``vector_format=gpkg``). ``bands=`` / ``stretch=`` read multi-band and 16-bit or float GeoTIFFs.
Run ``kldet-predict --help`` for every key. ``output=`` is the former name of ``out=``: it still works
in this release, with a one-line deprecation note.
"""

import csv
import dataclasses
import importlib.util
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import MISSING
from tqdm import tqdm

from kldet.cli.dotlist import check_writable_folder, option, run_dotlist_cli
from kldet.cli.report import report_error
from kldet.data.images import TIFF_SUFFIXES
from kldet.data.raster import RasterPreprocess
from kldet.errors import KLDetConfigError, KLDetDataError
from kldet.inference.export import smallest_input_size
from kldet.inference.geo import VECTOR_CRS, VECTOR_SUFFIXES, detections_to_geojson, write_geopackage
from kldet.inference.precision import resolve_precision
from kldet.inference.predictor import OVERLAP, RESIZE_MODES, TILE_SIZE, Predictor
from kldet.inference.render import auto_scale, draw_detections, save_image
from kldet.inference.results import detections_to_coco, image_ids_from_coco, write_results
from kldet.inference.sliced import MATCH_METRICS, MERGE_MODES
from kldet.inference.sources import find_images, open_image
from kldet.inference.tiling import overlap_pixels
from kldet.inference.types import ImageSource

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class PredictConfig:
    """Settings of kldet-predict (every key can be given as key=value)."""

    ckpt: str = option(MISSING, "checkpoint file (.ckpt)")
    input: str = option(MISSING, "image, folder or glob")
    out: str = option(MISSING, "output folder")
    device: str = option("cpu", "cpu, cuda or cuda:N")
    precision: str = option(
        "auto",
        "fp32, bf16, fp16 or auto: bf16 where the device computes it natively (CUDA with bf16, CPUs with "
        "AVX-512-BF16 or AMX), else fp32; decoding and NMS stay fp32",
    )
    channels_last: bool = option(True, "run the network in the NHWC memory format (faster on CPUs and GPUs)")
    fold_batchnorm: bool = option(
        True, "fold the backbone's batch norms into the convs before them (same detections, faster)"
    )
    batch_size: int = option(4, "tiles per forward pass")
    tile_size: int | None = option(
        None,
        "tile side in pixels, >= 96 for P2-P6 (the network's smallest input) (default: the checkpoint's "
        "crop_size if it was trained on crops, else 800)",
    )
    overlap: float | None = option(
        None,
        "tile overlap, fraction of tile_size in [0, 1) (default: the checkpoint's if trained on crops, else 0.2)",
    )
    score_thresh: float | None = option(
        None,
        "candidate threshold in [0, 1] (default: the checkpoint's); with candidates=points (the authors' rule) "
        "it bounds the class probability, so kept scores (probability x centerness) can be lower",
    )
    nms_thresh: float | None = option(
        None, "class-wise NMS IoU in [0, 1] within and across tiles (default: the checkpoint's)"
    )
    max_detections: int | None = option(None, "keep at most this many boxes per image, >= 1 (default: all)")
    resize: str | None = option(
        None,
        "none, train (scale as training did) or a longer side in px (default: native, warns on a mismatch)",
    )
    candidates: str | None = option(
        None, "pre-NMS candidates: points (the authors') or pairs (torchvision's) (default: the checkpoint's)"
    )
    coco_gt: str | None = option(None, "COCO annotation file whose image ids the results should use")
    render: bool = option(True, "write images with boxes to out/rendered")
    render_labels: bool = option(True, "write class and score by each box where it covers no other box")
    render_scale: int = option(
        0, "rendered images enlarged by this integer factor (nearest neighbour); 0: small images to >= 768 px"
    )
    box_width: int = option(1, "rendered box outline in pixels, outside the box")
    merge: str = option(
        "nms", "merging across tiles: nms (core ownership + class-wise NMS, exact) or nmm (greedy merging)"
    )
    match: str = option("iou", "the nmm match metric: iou or ios (intersection over the smaller box)")
    merge_thresh: float | None = option(
        None, "IoU (nms) or match (nmm) threshold across tiles in [0, 1] (default: nms_thresh)"
    )
    bands: list[int] | None = option(
        None, "GeoTIFF bands read as R, G, B, 1-based: three, e.g. [3,2,1], or one repeated (default: 1-3)"
    )
    stretch: Any = option(
        None,
        "GeoTIFF pixels to 8 bit: none (uint8 passed as is) or [low,high] percentiles per band, e.g. [2,98]",
    )
    geojson: bool = option(True, "write vector boxes (vector_format) for georeferenced GeoTIFFs")
    vector_format: str = option(
        "geojson", "geojson (out/geojson/) or gpkg (GeoPackage, out/gpkg/; needs pyogrio)"
    )
    vector_crs: str = option(
        "lonlat", "lonlat (EPSG:4326; GeoJSON as RFC 7946, without a crs member) or image (the image's CRS)"
    )
    skip_existing: bool = option(
        False, "skip images whose outputs exist in out/ (a resumed run); results.json covers all images"
    )
    progress: bool = option(True, "show a progress bar")


def _image_id(file_name: str, index: int, gt_ids: dict[str, int] | None, coco_gt: str | None) -> int:
    if gt_ids is None:
        return index + 1
    # The annotation file may name images by path or by bare file name.
    for key in (file_name, Path(file_name).name):
        if key in gt_ids:
            return gt_ids[key]
    raise KLDetConfigError(f"coco_gt={coco_gt}: no image named {file_name} in its images list")


def _check(config: PredictConfig) -> None:
    """Settings that cannot work, as one message before anything is loaded."""
    try:
        overlap_pixels(
            TILE_SIZE if config.tile_size is None else config.tile_size,
            OVERLAP if config.overlap is None else config.overlap,
        )
    except ValueError as error:
        raise KLDetConfigError(f"tile_size={config.tile_size} overlap={config.overlap}: {error}") from None
    if config.batch_size < 1 or config.box_width < 1:
        raise KLDetConfigError(
            f"batch_size={config.batch_size} box_width={config.box_width}: must be positive"
        )
    if config.render_scale < 0:
        raise KLDetConfigError(f"render_scale={config.render_scale}: must be >= 0 (0: automatic)")
    for key in ("score_thresh", "nms_thresh", "merge_thresh"):
        value = getattr(config, key)
        if value is not None and not 0.0 <= value <= 1.0:
            raise KLDetConfigError(f"{key}={value}: must be in [0, 1]")
    if config.max_detections is not None and config.max_detections < 1:
        raise KLDetConfigError(
            f"max_detections={config.max_detections}: must be at least 1 (leave it unset to keep all boxes)"
        )
    _resize_value(config.resize)
    choices = {
        "merge": MERGE_MODES,
        "match": MATCH_METRICS,
        "vector_format": tuple(VECTOR_SUFFIXES),
        "vector_crs": VECTOR_CRS,
    }
    for key, allowed in choices.items():
        if getattr(config, key) not in allowed:
            raise KLDetConfigError(f"{key}={getattr(config, key)}: use {' or '.join(allowed)}")
    if config.match != "iou" and config.merge != "nmm":
        raise KLDetConfigError(f"match={config.match}: only merge=nmm has a match metric (merge=nms is IoU)")
    if config.vector_format == "gpkg" and importlib.util.find_spec("pyogrio") is None:
        raise KLDetConfigError(
            "vector_format=gpkg needs pyogrio: pip install 'kldet[geo]' (or pip install pyogrio)"
        )
    RasterPreprocess.from_options(config.bands, config.stretch)
    try:
        device = torch.device(config.device)
    except RuntimeError as error:
        raise KLDetConfigError(f"device={config.device}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise KLDetConfigError(f"device={config.device}: CUDA is not available here (use device=cpu)")
    resolve_precision(config.precision, device)


def _resize_value(resize: str | None) -> str | int | None:
    """``resize=`` as :class:`Predictor` takes it: None, "none", "train" or a positive int."""
    if resize is None or resize in RESIZE_MODES:
        return resize
    if resize.isdigit() and int(resize) > 0:
        return int(resize)
    raise KLDetConfigError(
        f"resize={resize}: use none, train or a longer side in pixels (a positive integer)"
    )


def _warn_exif_orientation(sources: list, file_names: list[str]) -> None:
    """One line when inputs carry an EXIF orientation, which kldet ignores (as in training)."""
    rotated = [
        (name, s.exif_orientation)
        for name, s in zip(file_names, sources, strict=True)
        if getattr(s, "exif_orientation", 1) != 1
    ]
    if rotated:
        logger.warning(
            "%d input image(s) carry an EXIF orientation tag (first: %s, orientation %d); kldet ignores it, "
            "as in training: boxes refer to the stored pixels, which EXIF-aware viewers show rotated",
            len(rotated),
            *rotated[0],
        )


@dataclasses.dataclass
class PredictSummary:
    """What a kldet-predict run wrote and found."""

    results: Path
    images: int
    boxes: int
    images_without_boxes: int
    skipped: int = 0

    def __str__(self) -> str:
        skipped = f" ({self.skipped} skipped: their outputs existed)" if self.skipped else ""
        return (
            f"wrote {self.results} and {self.results.with_name('images.json')}: {self.images} image(s){skipped}, "
            f"{self.boxes} box(es), {self.images_without_boxes} image(s) without boxes"
        )


def _scene_file(output: Path, file_name: str) -> Path:
    """Where one image's results part is kept (``out/scenes/<file_name>.json``)."""
    return output / "scenes" / f"{file_name}.json"


def _outputs(config: PredictConfig, output: Path, file_name: str, source: ImageSource) -> dict[str, Path]:
    """The files a run writes for one image: ``scene`` (its results part), ``rendered``, ``vectors``."""
    paths = {"scene": _scene_file(output, file_name)}
    if config.render:
        # A TIFF rendering would be a large plain TIFF named like the GeoTIFF it is not: PNG beside its name.
        tiff = Path(file_name).suffix.lower() in TIFF_SUFFIXES
        paths["rendered"] = output / "rendered" / (f"{file_name}.png" if tiff else file_name)
    if config.geojson and getattr(source, "georeferenced", False):
        suffix = VECTOR_SUFFIXES[config.vector_format]
        paths["vectors"] = (output / config.vector_format / file_name).with_suffix(suffix)
    return paths


def _write_vectors(path: Path, config: PredictConfig, source, detections, predictor, file_name: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arguments = (
        detections,
        source.transform,
        source.crs,
        predictor.classes,
        predictor.category_ids,
        file_name,
    )
    if config.vector_format == "gpkg":
        path.unlink(missing_ok=True)  # a GeoPackage is a database: start it afresh
        write_geopackage(path, *arguments, vector_crs=config.vector_crs)
    else:
        path.write_text(json.dumps(detections_to_geojson(*arguments, vector_crs=config.vector_crs)))


def _write_json(path: Path, content: Any) -> None:
    """``content`` as JSON, written to a temporary file first so that an interrupted run leaves none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(content))
    partial.replace(path)


def _read_scene(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise KLDetDataError(
            f"{path}: cannot read this scene's results ({error}); delete it to predict again"
        ) from None


def _write_summary(path: Path, scenes: list[dict], classes: Sequence[str]) -> None:
    """``summary.csv``: per image its size, tiles, boxes, boxes per class and seconds."""
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["file_name", "width", "height", "tiles", "boxes", *classes, "seconds"])
        for scene in scenes:
            counts = Counter(record["category_name"] for record in scene["records"])
            writer.writerow(
                [scene["file_name"], scene["width"], scene["height"], scene["tiles"], len(scene["records"])]
                + [counts[name] for name in classes]
                + [scene["seconds"]]
            )


def predict(config: PredictConfig) -> PredictSummary:
    """Run the prediction a :class:`PredictConfig` describes.

    Each image's results go to ``out/scenes/<file_name>.json`` as soon as it is done (with its rendering
    and vector file); ``results.json``, ``images.json`` and ``summary.csv`` are then assembled from those
    parts in input order, so a run resumed with ``skip_existing=true`` writes the same files as an
    uninterrupted one.
    """
    _check(config)
    raster = RasterPreprocess.from_options(config.bands, config.stretch)
    output = Path(config.out)
    files, root = find_images(config.input, exclude=output)
    check_writable_folder("out", output)
    gt_ids = image_ids_from_coco(config.coco_gt) if config.coco_gt else None
    predictor = Predictor.from_checkpoint(
        config.ckpt,
        device=config.device,
        score_thresh=config.score_thresh,
        nms_thresh=config.nms_thresh,
        candidates=config.candidates,
        tile_size=config.tile_size,
        overlap=config.overlap,
        batch_size=config.batch_size,
        iou_thresh=config.merge_thresh,
        max_detections=config.max_detections,
        merge=config.merge,
        match=config.match,
        resize=_resize_value(config.resize),
        precision=config.precision,
        channels_last=config.channels_last,
        fold_batchnorm=config.fold_batchnorm,
    )
    smallest = smallest_input_size(predictor.model)
    if predictor.tile_size < smallest:
        raise KLDetConfigError(
            f"tile_size={predictor.tile_size}: this network takes tiles of at least {smallest} px "
            f"(its coarsest stride is {predictor.model.strides[-1]})"
        )
    file_names = [path.relative_to(root).as_posix() for path in files]
    sources = [open_image(path, raster) for path in files]
    outputs = [
        _outputs(config, output, name, source) for name, source in zip(file_names, sources, strict=True)
    ]
    todo = [
        index
        for index, paths in enumerate(outputs)
        if not (config.skip_existing and all(path.exists() for path in paths.values()))
    ]
    _warn_exif_orientation([sources[i] for i in todo], [file_names[i] for i in todo])
    total = predictor.tile_count([sources[i] for i in todo])
    with tqdm(total=total, unit="tile", disable=not config.progress, file=sys.stderr) as bar:
        started = time.perf_counter()
        results = predictor.predict_sources([sources[i] for i in todo], on_batch=bar.update)
        for index, (source, detections) in zip(todo, results, strict=True):  # in input order
            file_name, paths = file_names[index], outputs[index]
            records = detections_to_coco(
                detections,
                _image_id(file_name, index, gt_ids, config.coco_gt),
                file_name,
                predictor.classes,
                predictor.category_ids,
            )
            bar.set_postfix_str(f"{file_name}: {len(records)} boxes", refresh=False)
            if config.render:
                drawn = draw_detections(
                    source.read(0, 0, source.width, source.height),
                    detections,
                    predictor.classes,
                    box_width=config.box_width,
                    show_labels=config.render_labels,
                    scale=config.render_scale or auto_scale(source.height, source.width),
                    legend=True,
                )
                source.close()
                save_image(paths["rendered"], drawn)
            if "vectors" in paths:
                _write_vectors(paths["vectors"], config, source, detections, predictor, file_name)
            finished = time.perf_counter()
            scene = {"file_name": file_name, "width": source.width, "height": source.height}
            scene |= {"tiles": predictor.tile_count([source]), "seconds": round(finished - started, 3)}
            _write_json(paths["scene"], {**scene, "records": records})
            started = finished
    scenes = [_read_scene(paths["scene"]) for paths in outputs]
    images, records = [], []
    for index, scene in enumerate(scenes):
        image_id = _image_id(scene["file_name"], index, gt_ids, config.coco_gt)
        images.append({"id": image_id, **{key: scene[key] for key in ("file_name", "width", "height")}})
        records += [{**record, "image_id": image_id} for record in scene["records"]]
    results_path, _ = write_results(output, images, records, predictor.classes, predictor.category_ids)
    _write_summary(output / "summary.csv", scenes, predictor.classes)
    without_boxes = sum(not scene["records"] for scene in scenes)
    return PredictSummary(results_path, len(images), len(records), without_boxes, len(files) - len(todo))


def renamed_keys(argv: Sequence[str], renamed: Mapping[str, str], prog: str) -> list[str]:
    """``argv`` with each ``old=value`` of ``renamed`` (old -> new key) written ``new=value``, printing a
    one-line deprecation note on stderr for each.

    Raises:
        KLDetConfigError: both the old and the new key are given.
    """
    keys = [arg.partition("=")[0] if "=" in arg else None for arg in argv]
    rewritten = []
    for arg, key in zip(argv, keys, strict=True):
        if key in renamed:
            new = renamed[key]
            if new in keys:
                raise KLDetConfigError(f"{key}= is the former name of {new}=; give {new}= only")
            print(
                f"{prog}: {key}= is deprecated, use {new}= ({key}= goes in the next release)", file=sys.stderr
            )
            arg = f"{new}={arg.partition('=')[2]}"
        rewritten.append(arg)
    return rewritten


#: Former key names of kldet-predict that still work, with a deprecation note: old -> new.
RENAMED_KEYS = {"output": "out"}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``kldet-predict key=value ...``; returns the exit status, 0 or 1 (any error: the
    message as one line, :mod:`kldet.cli.report`)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        argv = renamed_keys(argv, RENAMED_KEYS, "kldet-predict")
    except KLDetConfigError as error:
        return report_error("kldet-predict", error)

    def action(config: PredictConfig) -> str:
        return str(predict(config))

    return run_dotlist_cli(PredictConfig, argv, "kldet-predict", __doc__, action)


if __name__ == "__main__":
    sys.exit(main())
