"""Image files: truncation is found and named, EXIF orientation is ignored the same way everywhere, and
one suffix list serves the readers and kldet-predict."""

import json
import logging

import cv2
import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from kldet.data import IMAGE_SUFFIXES, DetectionDataset, Record, collate, load_image, read_coco
from kldet.data.folder import read_image_folder
from kldet.data.images import read_header, truncation
from kldet.errors import KLDetDataError
from kldet.inference.sources import ImageFile, find_images


def noise(height=48, width=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def write(path, rgb):
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def cut(path, keep):
    """The file cut to ``keep`` bytes (negative: that many bytes removed)."""
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    return path


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.95])
def test_truncated_jpeg_is_an_error_naming_the_file_not_grey_pixels(tmp_path, fraction):
    path = write(tmp_path / "scene.jpg", noise())
    cut(path, int(path.stat().st_size * fraction))
    # The premise: OpenCV's imread decodes what is there and only prints "Premature end of JPEG file".
    assert cv2.imread(str(path)) is not None
    with pytest.raises(KLDetDataError, match=r"image file \S*scene.jpg cannot be decoded: truncated"):
        load_image(path)


def test_jpeg_without_only_its_end_marker_is_truncated_but_trailing_bytes_are_fine(tmp_path):
    rgb = noise()
    path = write(tmp_path / "a.jpg", rgb)
    intact = path.read_bytes()
    assert intact.endswith(b"\xff\xd9")
    assert truncation(intact[:-2]) is not None and truncation(intact) is None
    path.write_bytes(intact + b"\x00" * 100 + b"trailer")  # data after the end marker: still complete
    np.testing.assert_array_equal(load_image(path), cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))


def test_truncated_png_is_named_and_trailing_bytes_after_iend_are_fine(tmp_path):
    rgb = noise()
    path = write(tmp_path / "a.png", rgb)
    intact = path.read_bytes()
    for keep in (len(intact) // 2, len(intact) - 12, 40):
        assert truncation(intact[:keep]) == "truncated: the PNG data ends before its IEND chunk"
    path.write_bytes(intact + b"junk after IEND")
    np.testing.assert_array_equal(load_image(path), rgb)  # PNG is lossless
    cut(path, len(intact) - 12)
    with pytest.raises(KLDetDataError, match=r"a.png cannot be decoded: truncated: the PNG data ends"):
        load_image(path)


def test_other_failures_are_named(tmp_path):
    with pytest.raises(KLDetDataError, match=r"gone.png not found"):
        load_image(tmp_path / "gone.png")
    (tmp_path / "text.bmp").write_bytes(b"BM not really a bitmap")
    with pytest.raises(KLDetDataError, match=r"text.bmp cannot be decoded \(corrupt"):
        load_image(tmp_path / "text.bmp")


def truncated_set(tmp_path):
    """Three records; the second image is a JPEG cut in half (its header intact)."""
    records = []
    for i in range(3):
        path = write(tmp_path / f"{i}.jpg", noise(seed=i))
        records.append(Record(path, 64, 48, boxes=[[1, 1, 9, 9]], labels=[0], image_id=i + 1))
    cut(records[1].image_path, records[1].image_path.stat().st_size // 2)
    assert read_header(records[1].image_path)[:2] == (64, 48)  # the header check passes
    return records


@pytest.mark.parametrize("num_workers", [0, 1])
def test_strict_dataset_stops_at_the_first_unreadable_image_with_one_line(tmp_path, num_workers):
    records = truncated_set(tmp_path)
    loader = DataLoader(DetectionDataset(records), batch_size=1, num_workers=num_workers, collate_fn=collate)
    with pytest.raises(KLDetDataError) as raised:
        list(loader)
    message = str(raised.value)
    # From a worker too: the original message, not torch's "Caught ... Original Traceback" wrapper.
    assert message.startswith(f"image file {records[1].image_path} cannot be decoded: truncated")
    assert "data.lenient=true" in message and "decode=true" in message
    assert "Traceback" not in message and "\n" not in message


def test_lenient_dataset_skips_counts_and_replaces_unreadable_images(tmp_path, caplog):
    records = truncated_set(tmp_path)
    dataset = DetectionDataset(records, skip_unreadable=True)
    with caplog.at_level(logging.WARNING, logger="kldet.data.dataset"):
        samples = [dataset[i] for i in range(3)] + [dataset[1]]  # the bad one twice: logged once
    ids = [target["image_id"] for _, target in samples]
    assert ids == [1, 3, 3, 3]  # the next readable record takes the unreadable one's place
    assert [target["skipped_file"] for _, target in samples] == [None, "1.jpg", None, "1.jpg"]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "1.jpg cannot be decoded: truncated" in warnings[0]
    # In a DataLoader worker the targets carry the skipped file back to the main process.
    loader = DataLoader(dataset, batch_size=3, num_workers=1, collate_fn=collate)
    ((_, targets),) = list(loader)
    assert [t["skipped_file"] for t in targets] == [None, "1.jpg", None]
    for record in records:
        cut(record.image_path, 100)
    with pytest.raises(KLDetDataError, match="none of the 3 images of the data set can be decoded"):
        DetectionDataset(records, skip_unreadable=True)[0]


def write_coco(tmp_path, images):
    """A COCO file over ``images`` [(file name, width, height)], one category, no annotations."""
    ann = tmp_path / "ann.json"
    entries = [{"id": i, "file_name": n, "width": w, "height": h} for i, (n, w, h) in enumerate(images, 1)]
    ann.write_text(json.dumps({"images": entries, "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    return ann


def test_decode_check_labels_a_decode_failure_as_such(tmp_path):
    records = truncated_set(tmp_path)
    write(tmp_path / "3.png", noise())
    cut(tmp_path / "3.png", -12)
    ann = write_coco(tmp_path, [(r.image_path.name, 64, 48) for r in records] + [("3.png", 64, 48)])
    assert len(read_coco(ann, tmp_path).records) == 4  # header checks alone pass
    dataset = read_coco(ann, tmp_path, strict=False, decode=True)
    assert [p.kind for p in dataset.problems] == ["undecodable_image", "undecodable_image"]
    assert [r.image_id for r in dataset.records] == [1, 3]
    with pytest.raises(
        KLDetDataError, match=r"image id 2 \(1.jpg\): image file \S+ cannot be decoded: truncated"
    ):
        read_coco(ann, tmp_path, decode=True)


def gradient(height, width):
    """A smooth RGB image (JPEG keeps it within a few levels) that differs from its rotations."""
    y, x = np.mgrid[:height, :width]
    return np.dstack([x * 255 // width, y * 255 // height, np.full_like(x, 128)]).astype(np.uint8)


def write_exif_jpeg(path, rgb, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb).save(path, exif=exif, quality=95)
    return path


def test_exif_orientation_is_ignored_by_header_training_and_prediction(tmp_path):
    rgb = gradient(20, 30)
    path = write_exif_jpeg(tmp_path / "rotated.jpg", rgb, 6)
    assert cv2.imread(str(path)).shape == (30, 20, 3)  # OpenCV's default would rotate it
    assert read_header(path) == (30, 20, 6)
    stored = load_image(path)
    assert stored.shape == (20, 30, 3)
    assert np.abs(stored.astype(int) - rgb).mean() < 3  # the stored pixels, not a rotation of them
    # Training: the record's header size and the decoded sample agree.
    image, target = DetectionDataset(read_image_folder(tmp_path).records)[0]
    assert target["orig_size"] == (20, 30)
    # Prediction reads the same pixels.
    source = ImageFile(path)
    assert (source.width, source.height, source.exif_orientation) == (30, 20, 6)
    np.testing.assert_array_equal(source.read(0, 0, 30, 20), stored)


def test_annotations_made_on_the_exif_rotated_view_are_a_clear_size_mismatch(tmp_path):
    write_exif_jpeg(tmp_path / "rotated.jpg", noise(20, 30), 8)
    write_exif_jpeg(tmp_path / "upright.jpg", noise(20, 30), 1)
    ann = write_coco(tmp_path, [("rotated.jpg", 20, 30), ("upright.jpg", 20, 30)])
    dataset = read_coco(ann, tmp_path, strict=False)
    assert [p.kind for p in dataset.problems] == ["size_mismatch", "size_mismatch"]
    rotated, upright = (str(p) for p in dataset.problems)
    assert "annotated size 20x30 but image" in rotated and "is 30x20" in rotated
    assert "EXIF orientation 8" in rotated and "ignores EXIF orientation" in rotated
    assert "EXIF" not in upright  # a plain mismatch gets no EXIF hint


def test_one_suffix_list_serves_readers_and_prediction(tmp_path):
    for suffix in IMAGE_SUFFIXES:
        Image.fromarray(noise(8, 8)).save(tmp_path / f"img{suffix}")
    (tmp_path / "notes.txt").write_text("not an image")
    expected = sorted(f"img{suffix}" for suffix in IMAGE_SUFFIXES)
    assert ".webp" in IMAGE_SUFFIXES
    assert sorted(r.image_path.name for r in read_image_folder(tmp_path).records) == expected
    files, _ = find_images(tmp_path)
    assert sorted(p.name for p in files) == expected
    assert load_image(tmp_path / "img.webp").shape == (8, 8, 3)


def test_kldet_train_on_a_truncated_image_strict_stops_lenient_skips_and_counts(
    monkeypatch, capsys, caplog, tmp_path
):
    from kldet.cli.train import prepare_synthetic, train
    from training import TINY, kldet_train, tiny_config

    run = [*TINY, f"paths.data_dir={tmp_path}", "trainer.max_epochs=1", "test=false"]
    cfg = tiny_config(tmp_path, tmp_path / "lenient", *run[len(TINY) + 1 :], "data.lenient=true")
    prepare_synthetic(cfg.data.root, cfg.synthetic)
    victim = sorted((tmp_path / "synthetic" / "train").glob("*.png"))[0]
    cut(victim, victim.stat().st_size // 2)

    with pytest.raises(SystemExit) as exit_info:
        kldet_train(monkeypatch, *run, f"hydra.run.dir={tmp_path / 'strict'}")
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert f"kldet-train: error: image file {victim} cannot be decoded: truncated" in err
    assert "Traceback" not in err

    with caplog.at_level(logging.WARNING, logger="kldet"):
        train(cfg)
    messages = [r.getMessage() for r in caplog.records]
    assert f"train epoch 0: skipped 1 unreadable image(s) (data.lenient=true): {victim.name}" in messages
