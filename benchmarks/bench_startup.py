"""Start-up of the light CLI modes: whole-process wall time of ``kldet-eval results=`` and ``kldet-data``.

    python benchmarks/bench_startup.py [--images 200] [--repeats 5] [--baseline-src OTHER/src]

Writes an AI-TOD-like annotation file and results file (``bench_eval.aitod_like``, up to 300 detections per
image) and a 4-image synthetic set, then runs ``python -m kldet.cli.evaluate results=... ann=...``,
``python -m kldet.cli.data --help`` and ``python -m kldet.cli.data check ...`` as new processes, ``--repeats``
times each, and prints the median. With ``--baseline-src`` (another checkout's ``src``) each run is followed by
the same command on that source, so the two are measured side by side under the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_eval import aitod_like, coco_form
from kldet.data.synthetic import generate

SOURCE = Path(__file__).resolve().parents[1] / "src"


def write_case(folder: Path, num_images: int) -> tuple[Path, Path]:
    """An annotation file and a results file of ``num_images`` AI-TOD-like images."""
    ground_truth, detections = coco_form(aitod_like(num_images, 300, seed=0))
    ground_truth["images"] = [
        {"id": image["id"], "file_name": f"{image['id']}.png", "width": 800, "height": 800}
        for image in ground_truth["images"]
    ]
    results = [
        {"image_id": int(i), "category_id": int(c), "bbox": box, "score": score}
        for i, c, box, score in zip(
            detections.image_ids,
            detections.category_ids,
            detections.boxes.tolist(),
            detections.scores.tolist(),
            strict=True,
        )
    ]
    ann, res = folder / "ann.json", folder / "res.json"
    ann.write_text(json.dumps(ground_truth))
    res.write_text(json.dumps(results))
    return ann, res


def wall_time(source: Path, args: list[str]) -> float:
    """Seconds of ``python -m ARGS`` with ``source`` first on the path; fails on a non-zero exit status."""
    env = {**os.environ, "PYTHONPATH": str(source)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", *args], env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline-src", type=Path, help="another checkout's src, timed alongside")
    args = parser.parse_args()
    sources = {"this": SOURCE} | ({"baseline": args.baseline_src.resolve()} if args.baseline_src else {})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ann, res = write_case(folder, args.images)
        generate(folder / "synthetic", 4, seed=0, image_size=128)
        commands = {
            f"kldet-eval results= ({args.images} images)": [
                "kldet.cli.evaluate",
                f"results={res}",
                f"ann={ann}",
            ],
            "kldet-data --help": ["kldet.cli.data", "--help"],
            "kldet-data check (4 images)": [
                "kldet.cli.data",
                "check",
                "format=aitod",
                f"root={folder / 'synthetic'}",
                "split=train",
            ],
        }
        for command, command_args in commands.items():
            times = {name: [] for name in sources}
            for _ in range(args.repeats):
                for name, source in sources.items():  # interleaved: the same load for both
                    times[name].append(wall_time(source, command_args))
            medians = {name: statistics.median(values) for name, values in times.items()}
            line = ", ".join(f"{name} {value:.2f} s" for name, value in medians.items())
            ratio = f" ({medians['baseline'] / medians['this']:.1f}x faster)" if "baseline" in medians else ""
            print(f"{command}: median of {args.repeats}: {line}{ratio}")


if __name__ == "__main__":
    main()
