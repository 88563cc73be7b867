"""Training crops at native resolution (data.crop_size): the window sampler, the visibility rule, the
transform and the dataset's targets, the recorded policy and the config error."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kldet.data import DetectionDataset, Record
from kldet.data.transforms import (
    DetectionTransform,
    check_crop_settings,
    recorded_resize_policy,
    resize_policy,
    sample_crop,
)
from kldet.errors import KLDetConfigError
from kldet.model import InputNormalization

# Mean 0 and std 1: the model input is the pixel values themselves, so crops can be compared to pixels.
IDENTITY = InputNormalization(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def visible_fraction(box, window) -> float:
    """The share of ``box``'s area inside ``window``, by hand (the second implementation)."""
    width = min(box[2], window[2]) - max(box[0], window[0])
    height = min(box[3], window[3]) - max(box[1], window[1])
    if width <= 0 or height <= 0:
        return 0.0
    return width * height / ((box[2] - box[0]) * (box[3] - box[1]))


@st.composite
def scenes(draw):
    height, width = draw(st.integers(20, 400)), draw(st.integers(20, 400))
    count = draw(st.integers(0, 12))
    boxes = []
    for _ in range(count):
        x0, y0 = draw(st.integers(0, width - 2)), draw(st.integers(0, height - 2))
        boxes.append([x0, y0, draw(st.integers(x0 + 1, width)), draw(st.integers(y0 + 1, height))])
    return height, width, np.array(boxes, np.float32).reshape(-1, 4)


@settings(max_examples=150, deadline=None)
@given(
    scene=scenes(),
    crop_size=st.integers(8, 300),
    object_fraction=st.floats(0, 1),
    min_visibility=st.floats(0, 1),
    seed=st.integers(0, 2**32 - 1),
)
def test_crops_keep_exactly_the_boxes_visible_enough_all_inside_the_crop(
    scene, crop_size, object_fraction, min_visibility, seed
):
    height, width, boxes = scene
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    labels = np.arange(len(boxes))
    transform = DetectionTransform(
        None,
        crop_size=crop_size,
        crop_min_visibility=min_visibility,
        crop_object_fraction=object_fraction,
        normalization=IDENTITY,
    )
    transform.reseed(seed)
    window = transform.sample_window(height, width, boxes)
    x0, y0, x1, y1 = window
    assert (x1 - x0, y1 - y0) == (min(crop_size, width), min(crop_size, height))
    assert min(x0, y0) >= 0 and x1 <= width and y1 <= height
    out, kept_boxes, kept_labels, scale = transform(image, boxes, labels, window)
    assert scale == (1.0, 1.0)
    torch.testing.assert_close(out, torch.from_numpy(image[y0:y1, x0:x1]).permute(2, 0, 1).float())
    fractions = [visible_fraction(box, window) for box in boxes]
    expected = [i for i, f in enumerate(fractions) if f > 0 and f >= min_visibility]
    assert kept_labels.tolist() == expected
    assert (kept_boxes >= 0).all() and (kept_boxes[:, [0, 2]] <= x1 - x0).all()
    assert (kept_boxes[:, [1, 3]] <= y1 - y0).all()
    if expected:
        clipped = np.clip(boxes[expected], [x0, y0, x0, y0], [x1, y1, x1, y1]) - [x0, y0, x0, y0]
        np.testing.assert_allclose(kept_boxes.numpy(), clipped, atol=1e-4)


def test_a_share_of_crops_holds_an_object_anywhere_in_the_crop_the_rest_are_uniform():
    # One 4 px object in a corner of a 1000 px image: a uniform 100 px crop holds it with probability
    # (11 / 901)^2 (x0, y0 in 0..10 of 0..900), so the share of crops holding it is the object share.
    boxes = np.array([[10, 10, 14, 14]], np.float32)
    rng = np.random.default_rng(0)
    windows = np.array([sample_crop(1000, 1000, boxes, 100, 0.3, rng) for _ in range(4000)])
    holding = (windows[:, 0] <= 10) & (windows[:, 1] <= 10)
    assert abs(holding.mean() - (0.3 + 0.7 * (11 / 901) ** 2)) < 0.03
    # Not always centred on the object: every start that holds it occurs.
    assert set(windows[holding, 0]) == set(range(11)) and set(windows[holding, 1]) == set(range(11))
    assert (windows[~holding, 0] > 10).mean() > 0.9  # the other crops are spread over the image


def test_object_crops_draw_uniformly_over_objects():
    boxes = np.array([[0, 0, 5, 5], [990, 990, 995, 995], [995, 0, 1000, 4]], np.float32)
    rng = np.random.default_rng(1)
    windows = np.array([sample_crop(1000, 1000, boxes, 50, 1.0, rng) for _ in range(3000)])
    shares = [
        ((windows[:, 0] == 0) & (windows[:, 1] == 0)).mean(),
        ((windows[:, 2] >= 995) & (windows[:, 3] >= 995)).mean(),
        ((windows[:, 2] == 1000) & (windows[:, 1] == 0)).mean(),
    ]
    # Each object's crops hold it (the first always at the origin: no other start holds it).
    assert sum(shares) == pytest.approx(1.0, abs=1e-9)
    assert all(abs(share - 1 / 3) < 0.04 for share in shares)


def test_an_object_larger_than_the_crop_gets_the_crop_centred_on_it():
    boxes = np.array([[100, 50, 300, 90]], np.float32)  # 200 px wide, 40 px high
    x0, y0, x1, y1 = sample_crop(400, 500, boxes, 64, 1.0, np.random.default_rng(0))
    assert (x0, x1) == (168, 232)  # centred on x = 200
    assert y0 <= 50 and y1 >= 90  # the short side is held whole


def test_images_no_larger_than_the_crop_are_used_whole_without_a_draw():
    image = np.random.default_rng(2).integers(0, 256, (90, 100, 3), dtype=np.uint8)
    boxes, labels = np.array([[0, 0, 100, 90], [5, 6, 7, 9]], np.float32), np.array([1, 0])
    transform = DetectionTransform(None, crop_size=128, normalization=IDENTITY)
    state = transform.rng.bit_generator.state
    out, out_boxes, out_labels, _ = transform(image, boxes, labels)
    assert transform.rng.bit_generator.state == state
    torch.testing.assert_close(out, torch.from_numpy(image).permute(2, 0, 1).float())
    np.testing.assert_array_equal(out_boxes.numpy(), boxes)
    assert out_labels.tolist() == [1, 0]


def test_crops_are_deterministic_per_seed():
    transform = DetectionTransform(None, crop_size=32)
    boxes = np.array([[40, 40, 48, 48]], np.float32)

    def windows(seed):
        transform.reseed(seed)
        return [transform.sample_window(200, 300, boxes) for _ in range(20)]

    assert windows(5) == windows(5)
    assert windows(5) != windows(6)


def test_the_dataset_crops_the_ground_truth_with_ignored_boxes_like_the_boxes(tmp_path):
    import cv2

    path = tmp_path / "scene.png"
    pixels = np.random.default_rng(3).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    cv2.imwrite(str(path), pixels[..., ::-1])  # OpenCV writes BGR
    gt_boxes = np.array([[10, 10, 20, 20], [250, 150, 260, 160], [60, 60, 80, 80]], np.float64)
    record = Record(
        path,
        300,
        200,
        boxes=gt_boxes[:2],
        labels=[0, 1],
        gt_boxes=gt_boxes,
        gt_labels=[0, 1, 1],
        gt_ignore=[False, False, True],
    )
    transform = DetectionTransform(
        None, crop_size=64, crop_min_visibility=0.5, crop_object_fraction=0.5, normalization=IDENTITY
    )
    dataset = DetectionDataset([record], transform)
    seen = set()
    for seed in range(60):
        torch.manual_seed(seed)  # the dataset seeds the crops from torch's seed
        image, target = dataset[0]
        x0, y0, x1, y1 = window = target["window"]
        torch.testing.assert_close(image, torch.from_numpy(pixels[y0:y1, x0:x1]).permute(2, 0, 1).float())
        kept = [i for i, box in enumerate(gt_boxes) if visible_fraction(box, window) >= 0.5]
        seen.update(kept)
        expected = np.clip(gt_boxes[kept], [x0, y0, x0, y0], [x1, y1, x1, y1])
        np.testing.assert_allclose(target["gt_boxes"].numpy(), expected)
        assert target["gt_labels"].tolist() == [[0, 1, 1][i] for i in kept]
        assert target["gt_ignore"].tolist() == [i == 2 for i in kept]
        areas = (expected[:, 2] - expected[:, 0]) * (expected[:, 3] - expected[:, 1])
        np.testing.assert_allclose(target["gt_areas"].numpy(), areas)
        assert target["labels"].tolist() == [i for i in kept if i < 2]  # the training targets
    assert seen == {0, 1, 2}  # every box, the ignored one included, was in some crop


def test_the_policy_a_checkpoint_records_for_crops_and_for_older_checkpoints():
    crop = resize_policy(None, 128, 0.25)
    assert crop == {"resize": "crop", "max_size": None, "crop_size": 128, "overlap": 0.25}
    assert recorded_resize_policy({**crop, "mean": [0, 0, 0]}) == crop
    assert recorded_resize_policy({"max_size": 800}) == {"resize": "longer_side", "max_size": 800}
    assert recorded_resize_policy({"resize": "none", "max_size": None}) == {
        "resize": "none",
        "max_size": None,
    }


def test_crop_and_resize_do_not_combine():
    with pytest.raises(
        KLDetConfigError, match=r"^data.crop_size=128 with data.max_size=800: .*data.max_size=null"
    ):
        DetectionTransform(800, crop_size=128)
    check_crop_settings(None, 128)
    check_crop_settings(800, None)
