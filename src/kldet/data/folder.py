"""A folder of images without annotations, as records (for prediction)."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from kldet.data.images import IMAGE_SUFFIXES
from kldet.data.records import DetectionSet, ProblemLog, Record, check_image
from kldet.errors import KLDetDataError


def read_image_folder(
    image_dir: str | Path, strict: bool = True, decode: bool = False, progress: bool = False
) -> DetectionSet:
    """The images directly in ``image_dir``, sorted by name, with no boxes; image ids are 1..N.

    Raises:
        KLDetDataError: the folder does not exist or holds no images; with ``strict``, an unreadable image.
    """
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise KLDetDataError(f"{image_dir}: image folder not found")
    paths = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise KLDetDataError(f"{image_dir}: no images ({', '.join(IMAGE_SUFFIXES)}) in the folder")
    log = ProblemLog(image_dir)
    records = []
    for image_id, path in enumerate(tqdm(paths, desc=f"checking {image_dir.name}", disable=not progress), 1):
        size = check_image(log, image_dir, f"image {path.name}", path, None, decode)
        if size is not None:
            records.append(Record(path, *size, image_id=image_id))
    log.finish(strict)
    return log.detection_set(records, [], [])
