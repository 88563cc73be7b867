"""Tile windows and their cores (kldet.inference.tiling)."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kldet.inference.tiling import make_tiles, overlap_pixels, tile_starts


@pytest.mark.parametrize(
    ("length", "tile_size", "overlap", "expected"),
    [
        (500, 800, 0.2, [0]),  # smaller than a tile: one window of the image's own length
        (800, 800, 0.2, [0]),  # exactly one tile
        (801, 800, 0.2, [0, 1]),  # one pixel too many: the last window is flush with the border
        (1440, 800, 0.2, [0, 640]),  # exactly two tiles at the nominal stride of 640
        (2000, 800, 0.2, [0, 600, 1200]),  # span 1200 in ceil(1200 / 640) = 2 even gaps
        (1600, 800, 0.0, [0, 800]),  # no overlap: exact cover
        (
            1000,
            100,
            0.5,
            [0, 50, 100, 150, 200, 250, 300, 350, 400, 450, 500, 550, 600, 650, 700, 750, 800, 850, 900],
        ),
    ],
)
def test_tile_starts_hand_computed(length, tile_size, overlap, expected):
    assert tile_starts(length, tile_size, overlap) == expected


@settings(max_examples=300, deadline=None)
@given(
    length=st.integers(1, 5000),
    tile_size=st.integers(1, 1200),
    overlap=st.floats(0.0, 0.9),
)
def test_tile_starts_cover_the_axis_with_the_fewest_flush_windows(length, tile_size, overlap):
    starts = tile_starts(length, tile_size, overlap)
    stride = tile_size - overlap_pixels(tile_size, overlap)
    window = min(tile_size, length)
    assert starts[0] == 0
    assert starts[-1] + window == length  # last window flush with the border, never past it
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert all(0 < gap <= stride for gap in gaps)  # every overlap is at least the requested one
    assert len(starts) == (1 if length <= tile_size else math.ceil((length - tile_size) / stride) + 1)
    covered = set()
    for start in starts:
        covered.update(range(start, start + window))
    assert covered == set(range(length))


@settings(max_examples=150, deadline=None)
@given(
    height=st.integers(1, 3000),
    width=st.integers(1, 3000),
    tile_size=st.integers(32, 900),
    overlap=st.floats(0.05, 0.6),
    fx=st.floats(0, 1, exclude_max=True),
    fy=st.floats(0, 1, exclude_max=True),
)
def test_cores_partition_the_image_and_keep_half_the_overlap_from_interior_edges(
    height, width, tile_size, overlap, fx, fy
):
    tiles = make_tiles(height, width, tile_size, overlap)
    point = (fx * width, fy * height)
    owners = [t for t in tiles if t.core[0] <= point[0] < t.core[2] and t.core[1] <= point[1] < t.core[3]]
    assert len(owners) == 1
    half = overlap_pixels(tile_size, overlap) / 2
    for tile in tiles:
        assert 0 <= tile.x0 < tile.x1 <= width and 0 <= tile.y0 < tile.y1 <= height
        assert (tile.width, tile.height) == (min(tile_size, width), min(tile_size, height))
        cx0, cy0, cx1, cy1 = tile.core
        # A side of the core is finite only where the tile has a neighbour; there it keeps its distance.
        assert cx0 == -math.inf if tile.x0 == 0 else cx0 - tile.x0 >= half
        assert cy0 == -math.inf if tile.y0 == 0 else cy0 - tile.y0 >= half
        assert cx1 == math.inf if tile.x1 == width else tile.x1 - cx1 >= half
        assert cy1 == math.inf if tile.y1 == height else tile.y1 - cy1 >= half


def test_image_smaller_than_a_tile_is_one_tile_owning_everything():
    (tile,) = make_tiles(300, 500, 800, 0.2)
    assert (tile.x0, tile.y0, tile.x1, tile.y1) == (0, 0, 500, 300)
    assert tile.core == (-math.inf, -math.inf, math.inf, math.inf)


def test_tiles_are_row_major_with_midpoint_cores():
    tiles = make_tiles(800, 1440, 800, 0.2)
    assert [(t.x0, t.y0, t.x1, t.y1) for t in tiles] == [(0, 0, 800, 800), (640, 0, 1440, 800)]
    # Overlap band [640, 800): the cut is at its middle, 720.
    assert tiles[0].core == (-math.inf, -math.inf, 720.0, math.inf)
    assert tiles[1].core == (720.0, -math.inf, math.inf, math.inf)


@pytest.mark.parametrize(("tile_size", "overlap"), [(0, 0.2), (800, 1.0), (800, -0.1)])
def test_invalid_tiling_is_rejected(tile_size, overlap):
    with pytest.raises(ValueError):
        tile_starts(1000, tile_size, overlap)
