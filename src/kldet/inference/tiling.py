"""Overlapping tile windows over a large image, and the region each tile owns.

A scene larger than ``tile_size`` is cut into windows of exactly ``tile_size`` pixels that overlap by at
least ``overlap * tile_size`` pixels. The first window starts at 0 and the last one ends flush with the
image border, so no window runs off the image and every pixel is covered; the starts in between are
spread evenly (not at a fixed stride from the origin), so the last two windows never nearly coincide. An
image axis no longer than ``tile_size`` is one window of the image's own length.

Every tile also owns a *core*: along each axis the boundary between two neighbouring tiles is the middle
of the band where they overlap. The cores partition the image plane, and a core keeps at least half the
overlap away from every interior edge of its tile. So an object smaller than the overlap whose centre lies
in a tile's core is seen whole by that tile, and an object cut by a tile edge has its centre outside that
tile's core: keeping only detections centred in their tile's core drops the truncated copies (see
:func:`kldet.inference.sliced.owned_detections`).
"""

import math
from typing import NamedTuple


class Tile(NamedTuple):
    """One window of a tiled image, in image pixels.

    ``x0, y0, x1, y1`` is the window (``x1``/``y1`` exclusive); ``core`` is ``(cx0, cy0, cx1, cy1)``, the
    half-open region ``cx0 <= x < cx1, cy0 <= y < cy1`` of box centres this tile is responsible for. Cores of
    the tiles on the image border extend to infinity on that side, so clipped boxes are owned too.
    """

    x0: int
    y0: int
    x1: int
    y1: int
    core: tuple[float, float, float, float]

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0


def overlap_pixels(tile_size: int, overlap: float) -> int:
    """Minimum overlap in pixels between neighbouring tiles: ``round(tile_size * overlap)``, at most
    ``tile_size - 1`` so that consecutive tiles always advance."""
    if tile_size < 1:
        raise ValueError(f"tile_size must be positive, got {tile_size}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap is a fraction of the tile size in [0, 1), got {overlap}")
    return min(round(tile_size * overlap), tile_size - 1)


def tile_starts(length: int, tile_size: int, overlap: float) -> list[int]:
    """Start offsets of the windows along one image axis.

    Args:
        length: image size along the axis, in pixels (>= 1).
        tile_size: window size in pixels.
        overlap: minimum overlap between neighbouring windows, as a fraction of ``tile_size``.

    Returns:
        ``[0]`` if ``length <= tile_size``; otherwise the fewest starts ``0 = s_0 < ... < s_{n-1} =
        length - tile_size`` whose consecutive gaps are at most ``tile_size - overlap_pixels``, spread as
        evenly as integers allow.
    """
    if length < 1:
        raise ValueError(f"image length must be positive, got {length}")
    stride = tile_size - overlap_pixels(tile_size, overlap)
    if length <= tile_size:
        return [0]
    span = length - tile_size
    gaps = math.ceil(span / stride)
    return [i * span // gaps for i in range(gaps + 1)]


def _cores(starts: list[int], tile_size: int) -> list[tuple[float, float]]:
    """Per window, the half-open interval of the axis it owns: cut in the middle of each overlap band."""
    cuts = [(nxt + prev + tile_size) / 2 for prev, nxt in zip(starts, starts[1:], strict=False)]
    lows = [-math.inf, *cuts]
    highs = [*cuts, math.inf]
    return list(zip(lows, highs, strict=True))


def make_tiles(height: int, width: int, tile_size: int, overlap: float) -> list[Tile]:
    """The windows covering a ``height`` x ``width`` image, row-major, each with its core.

    Windows are ``min(tile_size, height)`` x ``min(tile_size, width)`` pixels; see :func:`tile_starts`.
    """
    ys = tile_starts(height, tile_size, overlap)
    xs = tile_starts(width, tile_size, overlap)
    tile_h, tile_w = min(tile_size, height), min(tile_size, width)
    tiles = []
    for y0, (cy0, cy1) in zip(ys, _cores(ys, tile_h), strict=True):
        for x0, (cx0, cx1) in zip(xs, _cores(xs, tile_w), strict=True):
            tiles.append(Tile(x0, y0, x0 + tile_w, y0 + tile_h, (cx0, cy0, cx1, cy1)))
    return tiles
