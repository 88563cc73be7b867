"""Pipeline: synthetic set -> reader -> records -> augmented samples -> padded batches, and the DataModule."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from helpers import SYNTHETIC_SIZE
from kldet.data import (
    AITOD_CLASSES,
    DIOR_CLASSES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DetectionDataset,
    DetectionTransform,
    Record,
    collate,
    find_aitod_split,
    load_image,
    read_aitod,
)
from kldet.data.dataset import padded_size
from kldet.data.synthetic import generate
from kldet.data.transforms import resized_size
from kldet.datamodule import KLDetDataModule
from kldet.errors import KLDetConfigError, KLDetDataError


@pytest.fixture(scope="module")
def busiest(synthetic_root) -> Record:
    """The training record with the most objects."""
    records = read_aitod(*find_aitod_split(synthetic_root, "train")).records
    return max(records, key=lambda r: len(r.boxes))


def pixels(image: torch.Tensor) -> np.ndarray:
    """(h, w, 3) 0..255 values of a normalised (3, h, w) image."""
    return image.permute(1, 2, 0).numpy() * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)


def box_extents(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_horizontal_flip_keeps_boxes_on_the_objects(busiest):
    assert len(busiest.boxes) >= 5
    original = load_image(busiest.image_path)
    image, target = DetectionDataset([busiest], DetectionTransform(max_size=None, hflip=1.0))[0]
    flipped = pixels(image)
    np.testing.assert_allclose(flipped, original[:, ::-1], atol=1e-3)
    x1, y1, x2, y2 = busiest.boxes.T
    expected = np.stack([SYNTHETIC_SIZE - x2, y1, SYNTHETIC_SIZE - x1, y2], axis=1)
    np.testing.assert_allclose(target["boxes"].numpy(), expected, atol=1e-3)
    assert target["labels"].tolist() == busiest.labels.tolist()
    moved = np.round(target["boxes"].numpy()).astype(int).tolist()
    for (a1, b1, a2, b2), (c1, d1, c2, d2) in zip(moved, busiest.boxes.astype(int).tolist(), strict=True):
        np.testing.assert_allclose(flipped[b1:b2, a1:a2], original[d1:d2, c1:c2][:, ::-1], atol=1e-3)


def test_vertical_flip(busiest):
    image, target = DetectionDataset([busiest], DetectionTransform(max_size=None, vflip=1.0))[0]
    np.testing.assert_allclose(pixels(image), load_image(busiest.image_path)[::-1], atol=1e-3)
    x1, y1, x2, y2 = busiest.boxes.T
    np.testing.assert_allclose(
        target["boxes"].numpy(),
        np.stack([x1, SYNTHETIC_SIZE - y2, x2, SYNTHETIC_SIZE - y1], axis=1),
        atol=1e-3,
    )


def test_rotate90_moves_boxes_with_the_image(busiest):
    original = load_image(busiest.image_path)
    transform = DetectionTransform(max_size=None, rotate90=1.0)
    turns = set()
    for seed in range(6):
        transform.reseed(seed)
        image, boxes, labels, _ = transform(original, busiest.boxes, busiest.labels)
        rotated = pixels(image)
        k = next(k for k in range(4) if np.allclose(rotated, np.rot90(original, k), atol=1e-3))
        turns.add(k)
        for box, moved in zip(busiest.boxes.astype(int), boxes.numpy(), strict=True):
            mask = np.zeros(original.shape[:2], bool)
            mask[box[1] : box[3], box[0] : box[2]] = True
            np.testing.assert_allclose(moved, box_extents(np.rot90(mask, k)), atol=1e-3)
        assert labels.tolist() == busiest.labels.tolist()
    assert len(turns) > 1


def test_resize_scales_boxes_and_reports_the_scale(busiest):
    image, target = DetectionDataset([busiest], DetectionTransform(max_size=2 * SYNTHETIC_SIZE))[0]
    resized = cv2.resize(
        load_image(busiest.image_path),
        (2 * SYNTHETIC_SIZE, 2 * SYNTHETIC_SIZE),
        interpolation=cv2.INTER_LINEAR,
    )
    np.testing.assert_allclose(pixels(image), resized, atol=1e-3)
    np.testing.assert_allclose(target["boxes"].numpy(), busiest.boxes * 2, atol=1e-3)
    assert target["scale"] == (2.0, 2.0)
    assert target["size"] == (2 * SYNTHETIC_SIZE, 2 * SYNTHETIC_SIZE) and target["orig_size"] == (
        SYNTHETIC_SIZE,
        SYNTHETIC_SIZE,
    )
    # the record's own annotations stay in original pixels, for evaluation
    np.testing.assert_array_equal(target["gt_boxes"].numpy(), busiest.boxes)
    assert target["gt_labels"].tolist() == busiest.labels.tolist()
    assert target["gt_ignore"].tolist() == [False] * len(busiest.boxes)
    np.testing.assert_allclose(
        target["gt_areas"].numpy(), np.prod(busiest.boxes[:, 2:] - busiest.boxes[:, :2], 1)
    )
    assert target["image_id"] == busiest.image_id and target["file_name"] == busiest.image_path.name


def test_resize_keeps_the_aspect_ratio_of_wide_images():
    image = np.zeros((200, 300, 3), np.uint8)
    out, boxes, _, scale = DetectionTransform(800)(image, np.array([[30, 20, 60, 50]]), np.array([0]))
    assert tuple(out.shape) == (3, 533, 800) == (3, *resized_size(200, 300, 800))
    assert scale == (800 / 300, 533 / 200)
    np.testing.assert_allclose(
        boxes.numpy(), [[30 * scale[0], 20 * scale[1], 60 * scale[0], 50 * scale[1]]], rtol=1e-5
    )


def test_tiny_boxes_survive_a_downscale():
    image = np.zeros((1600, 1600, 3), np.uint8)
    boxes = np.array([[100, 100, 104, 104], [1596, 0, 1600, 2]], np.float32)
    _, out, labels, _ = DetectionTransform(800)(image, boxes, np.array([1, 2]))
    np.testing.assert_allclose(out.numpy(), boxes / 2, atol=1e-3)
    assert labels.tolist() == [1, 2]


def test_image_without_objects_is_a_valid_sample(tmp_path):
    path = tmp_path / "empty.png"
    cv2.imwrite(str(path), np.zeros((40, 50, 3), np.uint8))
    image, target = DetectionDataset([Record(path, 50, 40, image_id=3)], DetectionTransform(64, hflip=1.0))[0]
    assert tuple(image.shape) == (3, 51, 64)
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64


def test_unreadable_image_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"not a png at all")
    with pytest.raises(KLDetDataError, match=r"broken.png cannot be decoded"):
        DetectionDataset([Record(path, 10, 10, image_id=1)])[0]
    with pytest.raises(KLDetDataError, match=r"gone.png not found"):
        load_image(tmp_path / "gone.png")
    cv2.imwrite(str(path), np.zeros((8, 9, 3), np.uint8))
    with pytest.raises(KLDetDataError, match=r"broken.png \(image id 1\) is 9x8, but was 10x10"):
        DetectionDataset([Record(path, 10, 10, image_id=1)])[0]


def test_collate_pads_to_a_multiple_of_32():
    a, b = torch.rand(3, 50, 70), torch.rand(3, 33, 100)
    images, targets = collate([(a, {"image_id": 1}), (b, {"image_id": 2})])
    assert tuple(images.shape) == (2, 3, 64, 128)
    assert torch.equal(images[0, :, :50, :70], a) and torch.equal(images[1, :, :33, :100], b)
    assert images[0, :, 50:].abs().sum() == 0 and images[0, :, :, 70:].abs().sum() == 0
    assert images[1, :, 33:].abs().sum() == 0 and images[1, :, :, 100:].abs().sum() == 0
    assert [t["image_id"] for t in targets] == [1, 2]
    images, _ = collate([(torch.rand(3, 64, 96), {})])
    assert tuple(images.shape) == (1, 3, 64, 96)
    assert tuple(collate([(a, {})], size_divisor=1)[0].shape) == (1, 3, 50, 70)


def test_padded_size_is_the_smallest_multiple_holding_every_image():
    assert padded_size([(50, 70), (33, 100)]) == (64, 128)
    assert padded_size([(64, 96)]) == (64, 96) and padded_size([(65, 1)]) == (96, 32)
    assert padded_size([(50, 70)], size_divisor=1) == (50, 70)
    assert padded_size([(50, 70)], size_divisor=7) == (56, 70)


def test_workers_flip_independently(tmp_path):
    path = tmp_path / "one.png"
    cv2.imwrite(str(path), np.zeros((16, 16, 3), np.uint8))
    record = Record(path, 16, 16, np.array([[0, 0, 4, 4]]), [0], image_id=1)
    dataset = DetectionDataset([record] * 32, DetectionTransform(max_size=None, hflip=0.5))
    loader = DataLoader(dataset, batch_size=1, num_workers=2, collate_fn=collate)
    flipped = [bool(targets[0]["boxes"][0, 0] > 0) for _, targets in loader]
    by_worker = flipped[0::2], flipped[1::2]  # batches alternate between the two workers
    assert by_worker[0] != by_worker[1]
    assert 0 < sum(flipped) < 32


@pytest.mark.parametrize("num_workers", [0, 2])
def test_flips_follow_the_torch_seed(tmp_path, num_workers):
    """albumentations ignores global seeds; the data set seeds it from torch, so a run's seed fixes its
    augmentation, in the main process and in workers."""
    path = tmp_path / "one.png"
    cv2.imwrite(str(path), np.zeros((16, 16, 3), np.uint8))
    record = Record(path, 16, 16, np.array([[0, 0, 4, 4]]), [0], image_id=1)

    def flips(seed: int) -> list[bool]:
        torch.manual_seed(seed)
        dataset = DetectionDataset([record] * 24, DetectionTransform(max_size=None, hflip=0.5))
        loader = DataLoader(dataset, batch_size=1, num_workers=num_workers, collate_fn=collate)
        return [bool(targets[0]["boxes"][0, 0] > 0) for _, targets in loader]

    first = flips(0)
    assert flips(0) == first
    assert flips(1) != first and 0 < sum(first) < 24


# --- the DataModule -------------------------------------------------------------------------------------


def test_datamodule_on_the_synthetic_set(synthetic_root):
    data = KLDetDataModule(
        root=str(synthetic_root),
        train_split="train",
        val_split="val",
        test_split=None,
        num_workers=0,
        max_size=256,
    )
    assert (
        data.classes == list(AITOD_CLASSES)
        and data.category_ids == list(range(1, 9))
        and data.num_classes == 8
    )
    data.setup("fit")
    images, targets = next(iter(data.train_dataloader()))
    assert tuple(images.shape) == (2, 3, 256, 256)
    assert all(t["scale"] == (256 / SYNTHETIC_SIZE, 256 / SYNTHETIC_SIZE) for t in targets)
    val = list(data.val_dataloader())
    assert sum(len(t) for _, t in val) == len(data.ground_truth("val").records) == 2
    assert data.annotation_file("val") == synthetic_root / "annotations" / "val.json"
    assert data.test_dataloader() == []


def test_datamodule_reads_a_coco_layout(synthetic_root):
    data = KLDetDataModule(
        format="coco", root=str(synthetic_root), train_split="train", val_split="val", num_workers=0
    )
    assert data.classes == list(AITOD_CLASSES)
    data.setup("validate")
    assert len(data.ground_truth("val").records) == 2


def test_datamodule_reads_dior(tmp_path):
    generate(tmp_path, 3, seed=5, image_size=160, format="dior")
    data = KLDetDataModule(
        format="dior", root=str(tmp_path), train_split="train", val_split="val", num_workers=0
    )
    assert data.classes == list(DIOR_CLASSES)
    data.setup("fit")
    labels = np.concatenate([r.labels for r in data.ground_truth("train").records])
    names = {DIOR_CLASSES[label] for label in labels}
    assert names and names <= {"airplane", "bridge", "storagetank", "ship", "vehicle", "windmill"}


def test_datamodule_explains_a_missing_aitod_root(tmp_path):
    data = KLDetDataModule(root=str(tmp_path / "AI-TOD"), num_workers=0)
    with pytest.raises(KLDetConfigError) as raised:
        data.setup("fit")
    message = str(raised.value)
    assert f"{tmp_path / 'AI-TOD'}/annotations/" in message and "aitod_trainval_v1.json" in message
    assert "root=" in message and "train_ann=" in message and "train_images=" in message
    with pytest.raises(KLDetConfigError, match="root="):
        KLDetDataModule(num_workers=0).setup("fit")
    with pytest.raises(KLDetConfigError, match="not one of aitod, dior, coco"):
        KLDetDataModule(format="yolo")
