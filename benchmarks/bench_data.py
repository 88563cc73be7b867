"""Loader throughput: training images per second at 800x800 with 0, 1 and 2 DataLoader workers.

    python benchmarks/bench_data.py [--images 64] [--epochs 2] [--batch-size 2]

Writes a synthetic AI-TOD-layout set of 800x800 PNGs to a temporary folder, then times decode,
augmentation (resize, flip, normalise) and collation through the KLDetDataModule's training loader.
The first batch of each run (worker start-up) is not timed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from kldet.data.synthetic import generate
from kldet.datamodule import KLDetDataModule


def images_per_second(root: Path, num_workers: int, epochs: int, batch_size: int) -> float:
    data = KLDetDataModule(
        format="aitod",
        root=str(root),
        train_split="train",
        val_split=None,
        test_split=None,
        batch_size=batch_size,
        num_workers=num_workers,
    )
    data.setup("fit")
    loader = data.train_dataloader()
    batches = iter(b for _ in range(epochs) for b in loader)
    next(batches)
    start, images = time.perf_counter(), 0
    for batch_images, _ in batches:
        images += len(batch_images)
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate(tmp, args.images, seed=0, image_size=800, val_fraction=0.0)
        print(f"{args.images} synthetic 800x800 PNGs, batch {args.batch_size}, {args.epochs} epochs")
        print(f"{'workers':>8} {'images/s':>10}")
        for workers in (0, 1, 2):
            rate = images_per_second(Path(tmp), workers, args.epochs, args.batch_size)
            print(f"{workers:>8} {rate:>10.1f}")


if __name__ == "__main__":
    main()
