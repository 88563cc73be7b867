"""The validation drawing logged to TensorBoard / W&B: ground truth left, detections right, un-normalised."""

import torch

from kldet.data import IMAGENET_MEAN, IMAGENET_STD
from kldet.inference.render import PALETTE, draw_validation_image

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def normalised_gray(height, width, value=100.0):
    return (torch.full((3, height, width), value) - MEAN) / STD


def test_panels_are_unpadded_unnormalised_and_boxes_follow_the_resize():
    # Resized image 32x48 inside a 64x64 padded batch; original image twice as large (scale 0.5).
    image = torch.zeros(3, 64, 64)
    image[:, :32, :48] = normalised_gray(32, 48)
    target = {
        "size": (32, 48),
        "scale": (0.5, 0.5),
        "gt_boxes": torch.tensor([[20.0, 20.0, 40.0, 40.0]]),  # original pixels -> (10, 10, 20, 20)
        "gt_labels": torch.tensor([2]),
    }
    prediction = {
        "boxes": torch.tensor([[60.0, 0.0, 80.0, 20.0], [0.0, 0.0, 10.0, 10.0]]),
        "scores": torch.tensor([0.9, 0.1]),  # the second is under the 0.3 threshold
        "labels": torch.tensor([5, 1]),
    }
    drawing = draw_validation_image(image, target, prediction, [f"c{i}" for i in range(8)])
    assert drawing.shape == (3, 32, 96) and drawing.dtype == torch.uint8
    truth, detected = drawing[:, :, :48], drawing[:, :, 48:]
    assert truth[:, 15, 30].tolist() == [100, 100, 100]  # un-normalised background
    assert truth[:, 15, 9].tolist() == list(PALETTE[2])  # outline left of the true box (10, 10, 20, 20)
    assert truth[:, 15, 10].tolist() == [100, 100, 100]  # ... not over the object's own pixels
    assert detected[:, 15, 10].tolist() == [100, 100, 100]  # no detection there
    assert detected[:, 5, 29].tolist() == list(PALETTE[5])  # outline left of the detection (30, 0, 40, 10)
    assert detected[:, 2, 2].tolist() == [100, 100, 100]  # the low-score box is not drawn


def test_empty_ground_truth_and_detections_give_the_plain_image():
    image = normalised_gray(32, 32, value=50.0)
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
    target = {
        "size": (32, 32),
        "scale": (1.0, 1.0),
        "gt_boxes": torch.zeros(0, 4),
        "gt_labels": torch.zeros(0),
    }
    drawing = draw_validation_image(image, target, empty, ["a"])
    assert drawing.shape == (3, 32, 64)
    assert bool((drawing == 50).all())
