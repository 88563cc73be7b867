"""Image files: which suffixes are images, their header size, and the one decoder of training,
evaluation, data checks and prediction.

**EXIF orientation is ignored everywhere**: sizes, training, evaluation and prediction all use the pixel
array as stored in the file, never the view rotated by an EXIF ``Orientation`` tag. Annotation files of
detection data sets (COCO ``width``/``height``, VOC ``<size>``) describe the stored array, remote-sensing
imagery has no camera orientation, and a GeoTIFF's geotransform refers to the stored pixels. (OpenCV's
``imread`` and mmcv's default ``flag="color"`` would rotate; Ultralytics rotates too. A data set annotated on
the rotated view shows up as a ``size_mismatch`` whose message names the EXIF tag.) The exception is a
TIFF's own Orientation tag, which both PIL and OpenCV's libtiff apply (rare in imagery; GeoTIFFs read with
rasterio for prediction are never rotated).

A truncated file must not decode into grey pixels: :func:`load_image` checks that a JPEG ends its last
scan with the end-of-image marker and that a PNG's chunks run to ``IEND`` before decoding.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from kldet.data.raster import raster_size
from kldet.errors import KLDetDataError

#: File suffixes taken for images (compared lower-case), by the folder readers and by kldet-predict.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")

#: TIFF suffixes: GeoTIFFs among them may be multi-band or 16-bit (:mod:`kldet.data.raster`).
TIFF_SUFFIXES = (".tif", ".tiff")

#: EXIF tag number of ``Orientation``; values 5-8 swap width and height when applied.
EXIF_ORIENTATION = 0x0112

_JPEG_MAGIC, _PNG_MAGIC = b"\xff\xd8", b"\x89PNG\r\n\x1a\n"
_JPEG_START_OF_SCAN, _JPEG_END_OF_IMAGE = b"\xff\xda", b"\xff\xd9"


@contextmanager
def _no_pixel_limit() -> Iterator[None]:
    # Pillow refuses images above ~179 Mpx as "decompression bombs"; here it only reads the header.
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def read_header(path: str | Path) -> tuple[int, int, int]:
    """``(width, height, exif_orientation)`` of an image file from its header (no pixels are decoded).

    ``width`` x ``height`` is the stored pixel array; ``exif_orientation`` is the EXIF tag's value, 1 when
    absent (it is never applied, see the module docstring).

    Raises:
        FileNotFoundError: no such file.
        KLDetDataError: the header cannot be read (message without the path).
    """
    try:
        with _no_pixel_limit(), Image.open(path) as image:
            return image.width, image.height, _exif_orientation(image)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise FileNotFoundError(path) from None
    except UnidentifiedImageError:
        # A multi-band or 16-bit GeoTIFF: its size from rasterio (when installed), the pixels for
        # prediction and tiling through kldet.data.raster (load_image refuses them, see there).
        size = raster_size(path) if Path(path).suffix.lower() in TIFF_SUFFIXES else None
        if size is not None:
            return (*size, 1)
        raise KLDetDataError("not an image file PIL can identify") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise KLDetDataError(f"corrupt image header ({error})") from None


def _exif_orientation(image: Image.Image) -> int:
    if image.format == "TIFF":
        # PIL and OpenCV (libtiff) both apply a TIFF's own Orientation tag: header and pixels agree.
        return 1
    if image.format == "PNG":
        # PIL's PNG getexif() decodes the whole image to reach an eXIf chunk after the pixels.
        exif = Image.Exif()
        if image.info.get("exif"):
            exif.load(image.info["exif"])
    else:
        exif = image.getexif()
    orientation = exif.get(EXIF_ORIENTATION, 1)
    return orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1


def truncation(data: bytes) -> str | None:
    """Why the JPEG or PNG file content ``data`` is cut short; None when complete or another format.

    A JPEG is complete when an end-of-image marker follows its last start-of-scan marker (entropy-coded
    data cannot contain ``FF D9``, so trailing bytes after the marker are fine); a PNG when its chunk
    lengths lead to an ``IEND`` chunk within the file.
    """
    if data.startswith(_JPEG_MAGIC):
        if data.rfind(_JPEG_END_OF_IMAGE) < max(data.rfind(_JPEG_START_OF_SCAN), 0):
            return "truncated: the JPEG data ends before its end-of-image marker"
        return None
    if data.startswith(_PNG_MAGIC):
        position = len(_PNG_MAGIC)
        while position + 8 <= len(data):
            if data[position + 4 : position + 8] == b"IEND":
                return None
            # length (4 bytes) + type (4) + data (length) + CRC (4)
            position += 12 + int.from_bytes(data[position : position + 4], "big")
        return "truncated: the PNG data ends before its IEND chunk"
    return None


def load_image(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels of an image file, decoded with OpenCV, EXIF orientation not applied.

    Raises:
        KLDetDataError: naming ``path``: the file is missing, truncated, or cannot be decoded.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise KLDetDataError(f"image file {path} not found") from None
    except OSError as error:
        raise KLDetDataError(f"image file {path} cannot be read: {error.strerror}") from None
    reason = truncation(data)
    if reason is not None:
        raise KLDetDataError(f"image file {path} cannot be decoded: {reason}")
    if path.suffix.lower() in TIFF_SUFFIXES and not _eight_bit_tiff(data):
        raise KLDetDataError(
            f"image file {path}: not an 8-bit RGB or grey TIFF (16-bit, float or multi-band pixels); training "
            "takes 8-bit RGB: cut such scenes into 8-bit tiles with kldet-data tile bands=[3,2,1] "
            "stretch=[2,98], and give kldet-predict the same bands= and stretch="
        )
    with _opencv_errors_only():  # libtiff warns of every GeoTIFF tag it does not know, on every decode
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    del data  # release the encoded file before the conversion
    if bgr is None:
        raise KLDetDataError(f"image file {path} cannot be decoded (corrupt, or not an image OpenCV reads)")
    # In place: a second 300 MB copy of a 10,000 px scene is not needed.
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=bgr)


@contextmanager
def _opencv_errors_only() -> Iterator[None]:
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


def _eight_bit_tiff(data: bytes) -> bool:
    """Whether PIL reads the TIFF file content ``data`` (its header: no second read of the file) as 8-bit
    grey, palette or RGB(A): what OpenCV decodes to RGB faithfully (it would scale 16-bit pixels down by
    256 and take the first bands of a multi-band file as B, G, R)."""
    try:
        with _no_pixel_limit(), Image.open(io.BytesIO(data)) as image:
            return image.mode in ("1", "L", "P", "RGB", "RGBA", "LA")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return False


def exif_rotation_hint(orientation: int, declared: tuple[int, int], stored: tuple[int, int]) -> str:
    """A sentence for a size mismatch that the file's EXIF rotation explains, else ``""``.

    Args:
        orientation: the file's EXIF orientation (1..8).
        declared, stored: ``(width, height)`` from the annotation and of the stored pixels.
    """
    if orientation in (5, 6, 7, 8) and tuple(declared) == (stored[1], stored[0]):
        return (
            f"; the file carries EXIF orientation {orientation} (rotated by 90 degrees when displayed): "
            "the annotations were made on the rotated view, but kldet reads the stored pixels and ignores "
            "EXIF orientation (rotate the pixels, e.g. PIL.ImageOps.exif_transpose, and save without the tag)"
        )
    return ""
