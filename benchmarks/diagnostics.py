"""The error analysis (kldet-eval plots=) and kldet-data show on the synthetic set, trained on nothing: the
detections are the ground truth perturbed with every error type of TIDE. Writes the pictures of
docs/evaluation.md#error-analysis and docs/data.md#seeing-the-data, and times the analysis against the plain
evaluation, interleaved, on the synthetic val split and on a generated larger case.

    python benchmarks/diagnostics.py [--out outputs/diagnostics] [--docs docs] [--large-images 3000] [--repeats 3]

``make diagnostics`` runs it. ``--docs ''`` writes no pictures into docs/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from kldet.analysis.report import write_analysis
from kldet.cli.data import main as data_main
from kldet.cli.evaluate import main as eval_main
from kldet.data.synthetic import generate
from kldet.evaluation.coco import AITOD_PROTOCOL, CocoDetections, coco_evaluation, summarize_evaluation
from kldet.evaluation.coco_json import read_coco_ground_truth, read_coco_results
from kldet.inference.render import OUTCOME_COLORS, PALETTE


def perturbed_results(annotations: dict, seed: int) -> list[dict]:
    """COCO results made from ``annotations``: most objects found with a small jitter, some shifted (a
    localisation error), some with the wrong class, some twice, some missed, plus background boxes.
    Scores: found objects high, errors lower, with overlap, so that every error costs AP."""
    rng = np.random.default_rng(seed)
    category_ids = [c["id"] for c in annotations["categories"]]
    sizes = {i["id"]: (i["width"], i["height"]) for i in annotations["images"]}
    results = []
    for a in annotations["annotations"]:
        x, y, w, h = a["bbox"]
        kind = rng.choice(["found", "shifted", "class", "missed"], p=[0.72, 0.1, 0.06, 0.12])
        if kind == "missed":
            continue
        box = np.array([x, y, w, h]) + rng.normal(0, 0.06, 4) * np.array([w, h, w, h])
        category, score = a["category_id"], rng.uniform(0.4, 1.0)
        if kind == "shifted":
            box[:2] += rng.choice([-1, 1], 2) * np.array([w, h]) * rng.uniform(0.35, 0.6)
            score = rng.uniform(0.2, 0.8)
        elif kind == "class":
            category = int(rng.choice([c for c in category_ids if c != category]))
            score = rng.uniform(0.2, 0.8)
        results.append(_result(a["image_id"], category, box, score))
        if rng.random() < 0.05:  # a duplicate
            results.append(_result(a["image_id"], category, box + rng.normal(0, 0.05, 4) * w, score * 0.8))
    for image_id, (width, height) in sizes.items():
        for _ in range(rng.poisson(3)):  # background
            w, h = rng.uniform(4, 16, 2)
            box = [rng.uniform(0, width - w), rng.uniform(0, height - h), w, h]
            results.append(_result(image_id, int(rng.choice(category_ids)), box, rng.uniform(0.05, 0.7)))
    return results


def _result(image_id: int, category_id: int, box, score: float) -> dict:
    box = np.maximum(np.asarray(box, dtype=np.float64), [0, 0, 1, 1])
    return {
        "image_id": int(image_id),
        "category_id": int(category_id),
        "bbox": box.round(2).tolist(),
        "score": round(float(score), 4),
    }


def small_png(source: Path, target: Path) -> None:
    """``source`` as a palette PNG for the docs (well under 200 KB): 200 colours of the image plus the drawing
    colours exactly (class palette, outcomes, legend), no dithering."""
    image = Image.open(source).convert("RGB")
    drawing_colors = [*PALETTE, *OUTCOME_COLORS.values(), (32, 32, 32), (255, 255, 255)]
    palette = image.quantize(colors=200).getpalette()[: 200 * 3] + [
        v for color in drawing_colors for v in color
    ]
    palette_image = Image.new("P", (1, 1))
    palette_image.putpalette(palette + [0] * (768 - len(palette)))
    image.quantize(palette=palette_image, dither=Image.Dither.NONE).save(target, optimize=True)


def large_case(num_images: int, seed: int) -> tuple[dict, CocoDetections]:
    """A generated ground truth of ``num_images`` 800 px images with AI-TOD-like counts (about 25 tiny objects
    per image) and its perturbed results, without image files."""
    rng = np.random.default_rng(seed)
    annotations, n = [], 0
    for image_id in range(1, num_images + 1):
        for _ in range(rng.poisson(25)):
            w, h = np.exp(rng.normal(np.log(11), 0.5, 2))
            n += 1
            box = [float(rng.uniform(0, 800 - w)), float(rng.uniform(0, 800 - h)), float(w), float(h)]
            annotations.append(
                {
                    "id": n,
                    "image_id": image_id,
                    "category_id": int(rng.integers(1, 9)),
                    "bbox": box,
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    ground_truth = {
        "images": [{"id": i, "width": 800, "height": 800} for i in range(1, num_images + 1)],
        "categories": [{"id": c, "name": f"class{c}"} for c in range(1, 9)],
        "annotations": annotations,
    }
    results = perturbed_results(ground_truth, seed)
    detections = CocoDetections(
        image_ids=np.array([r["image_id"] for r in results], np.int64),
        category_ids=np.array([r["category_id"] for r in results], np.int64),
        boxes=np.array([r["bbox"] for r in results], np.float64),
        scores=np.array([r["score"] for r in results], np.float64),
    )
    return ground_truth, detections


def time_side_by_side(
    ground_truth: dict, detections: CocoDetections, out: Path, repeats: int
) -> tuple[float, float]:
    """Median seconds of the evaluation alone and of the evaluation + analysis files (no examples),
    interleaved ``repeats`` times."""
    plain, analysed = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        summarize_evaluation(coco_evaluation(ground_truth, detections, AITOD_PROTOCOL))
        plain.append(time.perf_counter() - start)
        start = time.perf_counter()
        evaluation = coco_evaluation(ground_truth, detections, AITOD_PROTOCOL)
        summarize_evaluation(evaluation)
        write_analysis(out, evaluation)
        analysed.append(time.perf_counter() - start)
    return float(np.median(plain)), float(np.median(analysed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/diagnostics")
    parser.add_argument("--docs", default="docs", help="where the documentation pictures go ('' for nowhere)")
    parser.add_argument("--large-images", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    data = out / "synthetic"
    generate(data, 200, seed=0, image_size=256)
    ann, images = data / "annotations" / "val.json", data / "val"
    results = out / "results.json"
    results.write_text(json.dumps(perturbed_results(json.loads(ann.read_text()), seed=0)))

    plots = out / "analysis"
    common = [f"results={results}", f"ann={ann}"]
    start = time.perf_counter()
    assert eval_main([*common, f"plots={plots}", f"images={images}", "examples=3"]) == 0
    command_seconds = time.perf_counter() - start
    shown = out / "show"
    image_id = min(int(p.stem) for p in (plots / "examples").glob("*.png"))
    # The ground truth alone (with zoomed crops), then beside the perturbed results.
    for extra in ([f"out={shown}", "crops=6"], [f"out={shown / 'results'}", f"results={results}"]):
        show = ["show", "format=aitod", f"ann={ann}", f"images={images}", f"ids=[{image_id}]", *extra]
        assert data_main(show) == 0

    if args.docs:
        docs = Path(args.docs)
        pictures = {
            "analysis_pr_curves.png": plots / "pr_curves_iou50.png",
            "analysis_confusion_matrix.png": plots / "confusion_matrix.png",
            "analysis_errors.png": plots / "errors.png",
            "analysis_example.png": plots / "examples" / f"{image_id}.png",
            "data_show.png": shown / f"{image_id}.png",
            "data_show_crops.png": shown / f"{image_id}_crops.png",
        }
        for name, source in pictures.items():
            small_png(source, docs / name)
            print(f"{docs / name}: {(docs / name).stat().st_size / 1024:.0f} KB")

    ground_truth, detections = read_coco_ground_truth(ann), read_coco_results(results)
    print(
        f"\nkldet-eval results= plots= images= examples=3 on the synthetic val split: {command_seconds:.1f} s"
    )
    cases = {
        f"synthetic val ({len(ground_truth['images'])} images, {len(ground_truth['annotations'])} objects, "
        f"{len(detections.scores)} detections)": (ground_truth, detections)
    }
    large_truth, large_detections = large_case(args.large_images, seed=1)
    cases[
        f"generated ({len(large_truth['images'])} images, {len(large_truth['annotations'])} objects, "
        f"{len(large_detections.scores)} detections)"
    ] = (large_truth, large_detections)
    print("\n| case | evaluation (s) | evaluation + analysis files (s) | ratio |")
    print("|---|---:|---:|---:|")
    for name, (truth, found) in cases.items():
        plain, analysed = time_side_by_side(truth, found, out / "timing", args.repeats)
        print(f"| {name} | {plain:.2f} | {analysed:.2f} | {analysed / plain:.1f} |")


if __name__ == "__main__":
    main()
