"""COCO-style result files: detections as a list (what ``COCO.loadRes`` reads) and the images they refer to.

``results.json`` is a list of ``{"image_id", "file_name", "category_id", "category_name", "bbox": [x, y, w,
h], "score"}``; ``images.json`` is a COCO data set skeleton (``images``, ``categories``, no annotations) with
the same image ids, so ``COCO("images.json").loadRes("results.json")`` works as is. To evaluate against a
real ground truth, predict with that file's image ids (:func:`image_ids_from_coco`).
"""

import json
import os
from collections.abc import Sequence
from pathlib import Path

from kldet.data.records import read_json
from kldet.errors import KLDetDataError
from kldet.inference.types import Detections

#: Results files keep scores to this many decimals (boxes: 0.01 px, :func:`coco_box`).
SCORE_DECIMALS = 5


def coco_box(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    """The ``xyxy`` box as COCO's ``[x, y, width, height]``, rounded to 0.01 px as results files store it."""
    return [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]


def detections_to_coco(
    detections: Detections,
    image_id: int,
    file_name: str,
    classes: Sequence[str],
    category_ids: Sequence[int],
) -> list[dict]:
    """One image's detections as COCO result records.

    Args:
        detections: "boxes" (K, 4) xyxy in image pixels, "scores" (K,), "labels" (K,) 0-based.
        image_id, file_name: the image the records refer to.
        classes, category_ids: name and data-set category id of each 0-based label.

    Returns:
        K records with ``bbox`` in COCO ``[x, y, width, height]``, rounded to 0.01 px.
    """
    boxes = detections["boxes"].tolist()
    records = []
    for (x0, y0, x1, y1), score, label in zip(
        boxes, detections["scores"].tolist(), detections["labels"].tolist(), strict=True
    ):
        records.append(
            {
                "image_id": image_id,
                "file_name": file_name,
                "category_id": int(category_ids[label]),
                "category_name": classes[label],
                "bbox": coco_box(x0, y0, x1, y1),
                "score": round(score, SCORE_DECIMALS),
            }
        )
    return records


def write_results(
    output_dir: str | os.PathLike,
    images: Sequence[dict],
    records: Sequence[dict],
    classes: Sequence[str],
    category_ids: Sequence[int],
) -> tuple[Path, Path]:
    """Write ``results.json`` (the records) and ``images.json`` (COCO images + categories) to ``output_dir``.

    Args:
        images: ``{"id", "file_name", "width", "height"}`` per image predicted on.
        records: from :func:`detections_to_coco`.

    Returns:
        the two paths.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    results_path, images_path = output_dir / "results.json", output_dir / "images.json"
    results_path.write_text(json.dumps(list(records)))
    categories = [{"id": int(c), "name": name} for c, name in zip(category_ids, classes, strict=True)]
    images_path.write_text(json.dumps({"images": list(images), "categories": categories, "annotations": []}))
    return results_path, images_path


def image_ids_from_coco(ann_file: str | os.PathLike) -> dict[str, int]:
    """``file_name -> id`` of a COCO annotation file's images, to write results that match it."""
    data = read_json(ann_file)
    try:
        return {image["file_name"]: int(image["id"]) for image in data["images"]}
    except (ValueError, KeyError, TypeError) as error:
        raise KLDetDataError(
            f"{ann_file}: not a COCO annotation file with an images list ({error!r})"
        ) from error
