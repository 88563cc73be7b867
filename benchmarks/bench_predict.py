"""Sliced-inference speed and memory on the CPU: 800x800 images/s, a 4,000 x 4,000 scene, a 10,000 px scene.

    python benchmarks/bench_predict.py [--backbone resnet50] [--images 4] [--scene 4000] [--big-scene 10000]
                                       [--batch-size 2] [--device cpu] [--precision auto] [--cases ...]
    python benchmarks/bench_predict.py --cases modes --backbone resnet18   # number formats side by side

Setting: KLDet with 8 classes and random weights (timing does not depend on the weights; the random head
scores ~0.005, under the 0.05 threshold, so post-processing is nearly free), tile 800, overlap 0.2.
Each case runs in a fresh subprocess so its peak resident memory (``VmHWM``) is its own:

- ``800x800``: ``--images`` random images from memory through :class:`kldet.inference.Predictor`, after one
  warm-up image; images/s.
- ``scene``: one ``--scene`` px square PNG read from disk (36 tiles at 4,000 px); seconds.
- ``modes``: 800x800 images/s of fp32 (contiguous, batch norms unfolded: kldet-predict before it had
  these options), fp32 + channels_last, the same with the batch norms folded into the convs, bf16,
  bf16 + channels_last and bf16 + channels_last + folded (kldet-predict's default on a bf16 CPU),
  interleaved image by image in one process, and the ratio to the first.
- ``big scene, stub``: a ``--big-scene`` px square PNG through the same streaming and merging with the
  network replaced by a stub returning 200 random boxes per tile: the memory of the pipeline itself
  (decoded image + a batch of tiles + detections), which must not grow with the number of tiles.

"added" is the peak minus the peak before the measured call (libraries, model and warm-up included in
the latter); the scenes are written to disk by the parent process beforehand.
"""

import argparse
import multiprocessing
import tempfile
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch

from kldet.inference.precision import resolve_precision
from kldet.inference.predictor import Predictor
from kldet.inference.sliced import sliced_predict, tile_count
from kldet.inference.sources import ArraySource, ImageFile
from kldet.model import kldet_resnet_fpn

CLASSES = [f"class{i}" for i in range(8)]


def peak_rss_mb() -> float:
    """This process's resident-set high-water mark (``VmHWM``; unlike ``ru_maxrss`` it is not inherited
    from the parent across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def make_predictor(
    args, precision: str | None = None, channels_last: bool = True, fold_batchnorm: bool = True
) -> Predictor:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "random weights"
        model = kldet_resnet_fpn(len(CLASSES), backbone=args.backbone).to(args.device)
    return Predictor(
        model,
        CLASSES,
        list(range(1, 9)),
        batch_size=args.batch_size,
        precision=precision or args.precision,
        channels_last=channels_last,
        fold_batchnorm=fold_batchnorm,
    )


#: (precision, channels_last, fold_batchnorm) of the ``modes`` case, the first being the reference.
MODES = {
    "fp32": ("fp32", False, False),
    "fp32 + channels_last": ("fp32", True, False),
    "fp32 + channels_last + folded BN": ("fp32", True, True),
    "bf16": ("bf16", False, False),
    "bf16 + channels_last": ("bf16", True, False),
    "bf16 + channels_last + folded BN": ("bf16", True, True),
}


def run_modes(args, _scene: None) -> dict:
    predictors = {mode: make_predictor(args, *options) for mode, options in MODES.items()}
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (800, 800, 3), dtype=np.uint8) for _ in range(args.images)]
    seconds = dict.fromkeys(MODES, 0.0)
    for predictor in predictors.values():
        predictor.predict_image(images[0])  # warm-up
    for image in images:
        for mode, predictor in predictors.items():
            start = time.perf_counter()
            predictor.predict_image(image)
            seconds[mode] += time.perf_counter() - start
    rates = {mode: args.images / value for mode, value in seconds.items()}
    return {
        "case": f"{args.images} images 800x800, interleaved",
        "result": ", ".join(
            f"{mode} {rate:.3f}/s ({rate / rates['fp32']:.2f}x)" for mode, rate in rates.items()
        ),
        "peak_rss_mb": peak_rss_mb(),
        "added_mb": 0.0,
    }


def write_scene(folder: Path, size: int) -> Path:
    # Smooth noise: compresses like an aerial image, so the PNG is quick to write and read.
    small = np.random.default_rng(0).integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
    path = folder / f"scene{size}.png"
    cv2.imwrite(str(path), cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR))
    return path


def run_images(args, _scene: None) -> dict:
    predictor = make_predictor(args)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (800, 800, 3), dtype=np.uint8) for _ in range(args.images + 1)]
    predictor.predict_image(images[0])  # warm-up
    before = peak_rss_mb()
    start = time.perf_counter()
    for _ in predictor.predict_sources(ArraySource(image) for image in images[1:]):
        pass
    seconds = time.perf_counter() - start
    return {
        "case": f"{args.images} images 800x800",
        "result": f"{args.images / seconds:.3f} images/s",
        "peak_rss_mb": peak_rss_mb(),
        "added_mb": peak_rss_mb() - before,
    }


def run_scene(args, path: Path) -> dict:
    predictor = make_predictor(args)
    predictor.predict_image(np.zeros((800, 800, 3), np.uint8))  # warm-up
    before = peak_rss_mb()
    source = ImageFile(path)
    tiles = tile_count([source], 800, 0.2)
    start = time.perf_counter()
    ((_, detections),) = predictor.predict_sources([source])
    seconds = time.perf_counter() - start
    return {
        "case": f"{source.width}x{source.height} scene ({tiles} tiles)",
        "result": f"{seconds:.1f} s ({seconds / tiles:.2f} s/tile)",
        "peak_rss_mb": peak_rss_mb(),
        "added_mb": peak_rss_mb() - before,
    }


def run_big_scene_stub(args, path: Path) -> dict:
    generator = torch.Generator().manual_seed(0)

    def stub(tiles):
        outputs = []
        for tile in tiles:
            xy = torch.rand(200, 2, generator=generator) * torch.tensor(
                [tile.shape[1] - 20, tile.shape[0] - 20]
            )
            boxes = torch.cat([xy, xy + 4 + torch.rand(200, 2, generator=generator) * 16], dim=1)
            labels = torch.randint(0, 8, (200,), generator=generator)
            outputs.append({"boxes": boxes, "scores": torch.rand(200, generator=generator), "labels": labels})
        return outputs

    before = peak_rss_mb()
    source = ImageFile(path)
    tiles = tile_count([source], 800, 0.2)
    start = time.perf_counter()
    ((_, detections),) = sliced_predict([source], stub, batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    return {
        "case": f"{source.width}x{source.height} scene, stub detector ({tiles} tiles)",
        "result": f"{seconds:.1f} s, {len(detections['boxes'])} boxes kept",
        "peak_rss_mb": peak_rss_mb(),
        "added_mb": peak_rss_mb() - before,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--scene", type=int, default=4000)
    parser.add_argument("--big-scene", type=int, default=10000)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--precision", default="auto", help="of the images and scene cases: auto, fp32, bf16, fp16"
    )
    cases = {"images": run_images, "scene": run_scene, "big": run_big_scene_stub, "modes": run_modes}
    parser.add_argument("--cases", nargs="+", default=["images", "scene", "big"], choices=list(cases))
    args = parser.parse_args()
    print(
        f"backbone {args.backbone}, device {args.device}, {torch.get_num_threads()} threads, tile 800, overlap 0.2, "
        f"precision {args.precision} (resolved: {resolve_precision(args.precision, args.device)})"
    )
    print(f"{'case':<48} {'result':<30} {'peak RSS':>9} {'added':>8}")
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as folder:
        scenes = {"images": None, "modes": None}
        if "scene" in args.cases:
            scenes["scene"] = write_scene(Path(folder), args.scene)
        if "big" in args.cases:
            scenes["big"] = write_scene(Path(folder), args.big_scene)
        for name in args.cases:
            with context.Pool(1) as pool:
                row = pool.apply(cases[name], (args, scenes[name]))
            print(
                f"{row['case']:<48} {row['result']:<30} {row['peak_rss_mb']:>6.0f} MB {row['added_mb']:>5.0f} MB",
                flush=True,
            )


if __name__ == "__main__":
    main()
