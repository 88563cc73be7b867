"""Streamed sliced prediction and the cross-tile merge (kldet.inference.sliced) with a stub detector.

The stub "sees" a fixed list of objects: for each tile it returns every object that intersects the tile,
clipped to it, in tile pixels — so an object cut by a tile edge comes back truncated, as from a real
detector. It finds where a tile lies from the pixels themselves: the test image encodes each pixel's
coordinates in its colour.
"""

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torchvision.ops import batched_nms

from kldet.inference.sliced import greedy_nmm, merge_tiles, owned_detections, sliced_predict, tile_count
from kldet.inference.sources import ArraySource
from kldet.inference.tiling import make_tiles, overlap_pixels


def coordinate_image(height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 whose pixel (y, x) is (x % 256, y % 256, (x // 256) | (y // 256) << 4); W, H <= 4096."""
    ys, xs = np.mgrid[:height, :width]
    return np.stack([xs % 256, ys % 256, (xs // 256) | (ys // 256) << 4], axis=-1).astype(np.uint8)


def tile_origin(tile: np.ndarray) -> tuple[int, int]:
    r, g, b = (int(v) for v in tile[0, 0])
    return r + 256 * (b & 15), g + 256 * (b >> 4)


class StubDetector:
    """Returns the objects (boxes (K, 4) in image pixels, labels, scores) each tile overlaps, clipped."""

    def __init__(self, boxes, labels, scores):
        self.boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.scores = torch.as_tensor(scores, dtype=torch.float32)
        self.batch_sizes = []

    def __call__(self, tiles):
        self.batch_sizes.append(len(tiles))
        outputs = []
        for tile in tiles:
            x0, y0 = tile_origin(tile)
            h, w = tile.shape[:2]
            shifted = self.boxes - torch.tensor([x0, y0, x0, y0])
            clipped = torch.stack(
                [
                    shifted[:, 0].clamp(0, w),
                    shifted[:, 1].clamp(0, h),
                    shifted[:, 2].clamp(0, w),
                    shifted[:, 3].clamp(0, h),
                ],
                dim=1,
            )
            seen = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
            outputs.append({"boxes": clipped[seen], "scores": self.scores[seen], "labels": self.labels[seen]})
        return outputs


def predict_one(image, detector, **options):
    ((_, detections),) = sliced_predict([ArraySource(image)], detector, **options)
    return detections


def naive_merge(image, detector, tile_size, overlap):
    """Shift every tile's boxes back and run class-wise NMS: what the ownership rule improves on."""
    tiles = make_tiles(image.shape[0], image.shape[1], tile_size, overlap)
    outputs = detector([image[t.y0 : t.y1, t.x0 : t.x1] for t in tiles])
    boxes = torch.cat(
        [o["boxes"] + torch.tensor([t.x0, t.y0, t.x0, t.y0]) for o, t in zip(outputs, tiles, strict=True)]
    )
    scores = torch.cat([o["scores"] for o in outputs])
    labels = torch.cat([o["labels"] for o in outputs])
    return boxes[batched_nms(boxes, scores, labels, 0.5)]


def test_object_cut_by_a_tile_border_is_returned_once_and_whole():
    image = coordinate_image(800, 1440)  # tiles x in [0, 800) and [640, 1440)
    car = [795.0, 100.0, 815.0, 112.0]  # tile 0 sees [795, 800]: IoU with the whole box is 0.25
    detector = StubDetector([car], [3], [0.9])
    assert len(naive_merge(image, detector, 800, 0.2)) == 2  # plain NMS keeps the truncated copy
    detections = predict_one(image, detector, tile_size=800, overlap=0.2)
    assert detections["boxes"].tolist() == [car]
    assert detections["labels"].tolist() == [3]


def test_object_on_a_four_tile_corner_is_returned_once():
    image = coordinate_image(1440, 1440)
    ship = [790.0, 795.0, 806.0, 803.0]  # straddles x = 800 and y = 800, inside all four tiles' overlap
    detections = predict_one(image, StubDetector([ship], [0], [0.5]), tile_size=800, overlap=0.2)
    assert detections["boxes"].tolist() == [ship]


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_object_smaller_than_the_overlap_comes_out_once_and_whole(data):
    height = data.draw(st.integers(20, 1500), label="height")
    width = data.draw(st.integers(20, 1500), label="width")
    tile_size = data.draw(st.sampled_from([64, 128, 200, 320]), label="tile_size")
    overlap = data.draw(st.floats(0.1, 0.5), label="overlap")
    largest = min(overlap_pixels(tile_size, overlap), height, width)
    boxes = []
    for _ in range(data.draw(st.integers(1, 12), label="objects")):
        w = data.draw(st.integers(1, largest))
        h = data.draw(st.integers(1, largest))
        x0 = data.draw(st.integers(0, width - w))
        y0 = data.draw(st.integers(0, height - h))
        boxes.append([x0, y0, x0 + w, y0 + h])
    # One class per object so that class-wise NMS cannot merge two distinct objects.
    labels = list(range(len(boxes)))
    scores = [1.0 - 0.01 * i for i in range(len(boxes))]
    batch_size = data.draw(st.integers(1, 5), label="batch_size")
    detections = predict_one(
        coordinate_image(height, width),
        StubDetector(boxes, labels, scores),
        tile_size=tile_size,
        overlap=overlap,
        batch_size=batch_size,
    )
    assert detections["labels"].tolist() == labels  # each once, sorted by score
    assert detections["boxes"].tolist() == [[float(v) for v in box] for box in boxes]


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    tile_size=st.sampled_from([64, 100, 160]),
    overlap=st.floats(0.1, 0.5),
    iou=st.sampled_from([0.1, 0.3, 0.5]),  # below 0.5 a box that stays inside its core can be suppressed
)
@example(seed=5190, tile_size=160, overlap=0.5, iou=0.1)  # two kept boxes of equal score
def test_band_limited_merge_equals_nms_over_all_owned_boxes(seed, tile_size, overlap, iou):
    generator = torch.Generator().manual_seed(seed)
    tiles = make_tiles(400, 360, tile_size, overlap)
    parts = []
    for tile in tiles:
        count = int(torch.randint(0, 40, (1,), generator=generator))
        xy = torch.rand(count, 2, generator=generator) * torch.tensor([tile.width, tile.height])
        wh = 1 + torch.rand(count, 2, generator=generator) * 60
        boxes = torch.cat([xy, xy + wh], dim=1).clamp(max=torch.tensor([tile.width, tile.height] * 2))
        scores = torch.rand(count, generator=generator)
        labels = torch.randint(0, 3, (count,), generator=generator)
        keep = batched_nms(boxes, scores, labels, iou)  # what the detector's own post-processing does
        parts.append(
            owned_detections({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}, tile)
        )
    merged = merge_tiles(parts, iou_thresh=iou)
    boxes = torch.cat([p["boxes"] for p in parts])
    scores = torch.cat([p["scores"] for p in parts])
    labels = torch.cat([p["labels"] for p in parts])
    reference = batched_nms(boxes, scores, labels, iou)
    assert torch.equal(merged["scores"], scores[reference])  # sorted by score, both

    def rows(box, score, label):  # boxes of equal score may come in either order (random scores tie)
        return sorted(zip(score.tolist(), label.tolist(), box.tolist(), strict=True))

    assert rows(merged["boxes"], merged["scores"], merged["labels"]) == rows(
        boxes[reference], scores[reference], labels[reference]
    )


def test_max_detections_keeps_the_highest_scores():
    image = coordinate_image(100, 100)
    boxes = [[10.0 * i, 10.0 * i, 10.0 * i + 5, 10.0 * i + 5] for i in range(5)]
    detector = StubDetector(boxes, [0] * 5, [0.1, 0.5, 0.3, 0.9, 0.2])
    detections = predict_one(image, detector, max_detections=2)
    assert detections["scores"].tolist() == pytest.approx([0.9, 0.5])


class CountingSource(ArraySource):
    def __init__(self, pixels, log, name):
        super().__init__(pixels)
        self.log, self.name = log, name

    def read(self, x0, y0, x1, y1):
        self.log.append(("read", self.name))
        return super().read(x0, y0, x1, y1)

    def close(self):
        self.log.append(("close", self.name))


def test_images_stream_in_order_through_bounded_batches():
    log = []
    sizes = {"big": (300, 500), "small": (50, 60), "wide": (100, 700)}
    sources = [CountingSource(coordinate_image(h, w), log, name) for name, (h, w) in sizes.items()]
    detector = StubDetector([[1.0, 1.0, 9.0, 9.0]], [0], [0.8])
    results = list(sliced_predict(sources, detector, tile_size=128, overlap=0.25, batch_size=3))
    assert [source.name for source, _ in results] == ["big", "small", "wide"]
    assert [len(d["boxes"]) for _, d in results] == [1, 1, 1]  # the box at the origin, once per image
    assert max(detector.batch_sizes) == 3 and sum(detector.batch_sizes) == tile_count(sources, 128, 0.25)
    # Each image is released right after its last tile was read, before the next image is touched.
    events = [e for i, e in enumerate(log) if i == 0 or e != log[i - 1]]
    assert events == [(kind, name) for name in sizes for kind in ("read", "close")]


def nmm_reference(boxes, scores, labels, thresh, match):
    """Greedy NMM as written in its definition: a dense O(N^2) loop over Python floats."""
    boxes, scores, labels = boxes.tolist(), scores.tolist(), labels.tolist()

    def metric(a, b):
        width = min(a[2], b[2]) - max(a[0], b[0])
        height = min(a[3], b[3]) - max(a[1], b[1])
        if width <= 0 or height <= 0:
            return 0.0
        inter = width * height
        area_a, area_b = (a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])
        return inter / (area_a + area_b - inter) if match == "iou" else inter / min(area_a, area_b)

    order = sorted(range(len(boxes)), key=lambda i: -scores[i])  # stable: ties in input order
    merged, result = set(), []
    for i in order:
        if i in merged:
            continue
        merged.add(i)
        union = list(boxes[i])
        for j in order:
            if j not in merged and labels[j] == labels[i] and metric(boxes[i], boxes[j]) > thresh:
                merged.add(j)
                union = [min(union[0], boxes[j][0]), min(union[1], boxes[j][1]),
                         max(union[2], boxes[j][2]), max(union[3], boxes[j][3])]  # fmt: skip
        result.append((union, scores[i], labels[i]))
    return result


def nmm(boxes, scores, labels, thresh, match):
    merged = greedy_nmm(
        torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        torch.tensor(scores),
        torch.tensor(labels),
        thresh,
        match,
    )
    return merged["boxes"].tolist(), merged["scores"].tolist(), merged["labels"].tolist()


def test_nmm_merges_into_the_enclosing_box_of_the_highest_score_per_class():
    boxes = [[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10]]
    # IoU of the first two: 81 / 119 = 0.68; the last box is the first one's twin of another class.
    merged = nmm(boxes, [0.9, 0.8, 0.7, 0.6], [0, 0, 0, 1], 0.5, "iou")
    assert merged == (
        [[0, 0, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10]],
        pytest.approx([0.9, 0.7, 0.6]),
        [0, 0, 1],
    )


def test_nmm_absorbs_only_what_matches_the_kept_box_not_chains():
    # B overlaps A and C by IoU 50 / 150 = 0.33 each; A and C do not touch: A absorbs B, C stays.
    merged = nmm([[0, 0, 10, 10], [5, 0, 15, 10], [10, 0, 20, 10]], [0.9, 0.8, 0.7], [0, 0, 0], 0.3, "iou")
    assert merged[0] == [[0, 0, 15, 10], [10, 0, 20, 10]]


def test_ios_merges_a_piece_inside_a_larger_box_that_iou_keeps():
    big, piece = [0, 0, 20, 20], [16, 16, 22, 22]  # intersection 16: IoU 16 / 420 = 0.04, IoS 16 / 36 = 0.44
    assert nmm([big, piece], [0.9, 0.8], [0, 0], 0.4, "iou")[0] == [big, piece]
    assert nmm([big, piece], [0.9, 0.8], [0, 0], 0.4, "ios")[0] == [[0, 0, 22, 22]]
    assert nmm([big, piece], [0.9, 0.8], [0, 0], 0.45, "ios")[0] == [big, piece]
    edge = [18, 0, 22, 4]  # IoS exactly 8 / 16 = 0.5: a match must be above the threshold
    assert nmm([big, edge], [0.9, 0.8], [0, 0], 0.5, "ios")[0] == [big, edge]


@settings(max_examples=80, deadline=None)
@given(
    data=st.lists(
        st.tuples(
            st.integers(0, 60),
            st.integers(0, 60),
            st.integers(0, 25),
            st.integers(0, 25),
            st.sampled_from([0.2, 0.4, 0.6, 0.8]),
            st.integers(0, 2),
        ),
        max_size=40,
    ),  # fmt: skip
    thresh=st.sampled_from([0.0, 0.1, 0.3, 0.5]),
    match=st.sampled_from(["iou", "ios"]),
)
def test_nmm_equals_the_dense_reference(data, thresh, match):
    # Integer corners and few score values: touching boxes, zero-area boxes and score ties all occur.
    boxes = [[x, y, x + w, y + h] for x, y, w, h, _, _ in data]
    scores = [s for *_, s, _ in data]
    labels = [c for *_, c in data]
    expected = nmm_reference(
        torch.tensor(boxes).reshape(-1, 4), torch.tensor(scores), torch.tensor(labels), thresh, match
    )
    got = nmm(boxes, scores, labels, thresh, match)
    assert got[0] == [b for b, _, _ in expected]
    assert got[1] == pytest.approx([s for _, s, _ in expected])
    assert got[2] == [c for _, _, c in expected]


def test_sliced_nmm_with_ios_merges_the_owned_pieces_of_a_large_object():
    image = coordinate_image(100, 160)
    # An object of 100 px, larger than the 20 px overlap: both 96 px tiles see a piece of it and own it.
    stub = StubDetector([[20.0, 30.0, 120.0, 60.0]], [0], [0.9])
    nms = predict_one(image, stub, tile_size=96, overlap=0.2)
    merged = predict_one(image, stub, tile_size=96, overlap=0.2, merge="nmm", match="ios", iou_thresh=0.5)
    assert len(nms["boxes"]) == 2  # the two pieces: NMS IoU between them is 0
    assert merged["boxes"].tolist() == [[20.0, 30.0, 120.0, 60.0]]  # IoS merges them back into the object
    with pytest.raises(ValueError, match="match=ios needs merge=nmm"):
        merge_tiles([], merge="nms", match="ios")
