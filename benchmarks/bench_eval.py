"""AI-TOD-sized evaluation: kldet's ``evaluate_coco`` against faster-coco-eval and pycocotools on the same
detections.

    python benchmarks/bench_eval.py [--images 2000] [--max-dets 1500] [--seed 0] [--skip-metric]

Synthetic AI-TOD-like set: 800x800 images, 8 classes, object counts heavy-tailed (25 on average,
hundreds in dense scenes), box sides log-normal around 12.8 px; each image gets between 100 and ``--max-dets``
detections (jittered copies of the objects plus background boxes of the same sizes). faster-coco-eval (what
``evaluate_coco`` ran on before it worked on arrays) and pycocotools run with the same area ranges and caps,
from the detection arrays (building the dicts they read is timed; pycocotools' ``loadRes`` is left out, in its
favour), and only for AP and AR, while kldet's time includes the oLRP. All are read by the same ``summarize``;
faster-coco-eval's numbers must be equal to kldet's, pycocotools' within 1e-6. kldet and faster-coco-eval run
twice, before and after pycocotools, and the faster of each pair counts.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import time

import numpy as np
import torch
from faster_coco_eval import COCO as FasterCOCO
from faster_coco_eval import COCOeval_faster
from pycocotools.coco import COCO as PyCOCO
from pycocotools.cocoeval import COCOeval as PyCOCOeval

from kldet.evaluation import (
    AITOD_PROTOCOL,
    CocoDetections,
    DetectionMetric,
    configure_params,
    detections_dataset,
    evaluate_coco,
    summarize,
)

CLASSES = ["airplane", "bridge", "storage-tank", "ship", "swimming-pool", "vehicle", "person", "wind-mill"]


def aitod_like(num_images: int, max_dets: int, seed: int):
    """Per-image arrays: gt xyxy boxes and labels, detection xyxy boxes, labels and scores."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(num_images):
        num_objects = min(int(rng.pareto(1.5) * 12) + 1, 800)
        side = np.clip(np.exp(rng.normal(np.log(12.8), 0.55, (num_objects, 2))), 2, 120)
        xy = rng.uniform(0, 800 - side)
        gt = np.concatenate([xy, xy + side], 1)
        gt_labels = rng.choice(len(CLASSES), num_objects, p=[0.02, 0.02, 0.08, 0.2, 0.02, 0.55, 0.1, 0.01])
        num_dets = int(rng.integers(100, max_dets + 1))
        copies = rng.integers(0, max(2, num_dets // num_objects), num_objects)
        source = np.repeat(np.arange(num_objects), copies)[:num_dets]
        jitter = rng.normal(0, 0.15, (len(source), 4)) * np.tile(side[source], 2)
        near = gt[source] + jitter
        near[:, 2:] = np.maximum(near[:, 2:], near[:, :2] + 1)
        num_background = num_dets - len(source)
        bside = np.clip(np.exp(rng.normal(np.log(12.8), 0.55, (num_background, 2))), 2, 120)
        bxy = rng.uniform(0, 800 - bside)
        boxes = np.concatenate([near, np.concatenate([bxy, bxy + bside], 1)])
        labels = np.concatenate([gt_labels[source], rng.integers(0, len(CLASSES), num_background)])
        wrong = rng.uniform(size=len(labels)) < 0.1
        labels[wrong] = rng.integers(0, len(CLASSES), int(wrong.sum()))
        scores = np.concatenate([rng.beta(4, 2, len(source)), rng.beta(1, 6, num_background)])
        images.append(
            (gt.astype(np.float32), gt_labels, boxes.astype(np.float32), labels, scores.astype(np.float32))
        )
    return images


def coco_form(images):
    """The ground-truth dict and detections kldet and pycocotools both read."""
    annotations, det_parts = [], []
    for image_id, (gt, gt_labels, boxes, labels, scores) in enumerate(images, 1):
        gt, boxes = gt.astype(np.float64), boxes.astype(np.float64)  # as DetectionMetric converts
        xywh = np.concatenate([gt[:, :2], gt[:, 2:] - gt[:, :2]], 1)
        for box, label in zip(xywh.tolist(), gt_labels.tolist(), strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label + 1,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
        det_xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1)
        det_parts.append((np.full(len(boxes), image_id), labels + 1, det_xywh, scores.astype(np.float64)))
    ground_truth = {
        "images": [{"id": i} for i in range(1, len(images) + 1)],
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": name} for k, name in enumerate(CLASSES)],
    }
    detections = CocoDetections(*(np.concatenate(part) for part in zip(*det_parts, strict=True)))
    return ground_truth, detections


def timed(function, *args):
    """``function(*args)``, its wall-clock and CPU seconds (other load on the machine inflates the first)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def run_kldet(ground_truth, detections):
    return evaluate_coco(ground_truth, detections, AITOD_PROTOCOL)


def run_faster_coco_eval(ground_truth, detections):
    coco_gt = FasterCOCO(ground_truth, print_function=lambda *_: None)
    coco_dt = FasterCOCO(detections_dataset(ground_truth, detections), print_function=lambda *_: None)
    evaluator = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=lambda *_: None)
    configure_params(evaluator.params, AITOD_PROTOCOL)
    evaluator.evaluate()
    evaluator.accumulate()
    return summarize(evaluator.eval["precision"], evaluator.eval["recall"], AITOD_PROTOCOL, CLASSES)


def run_pycocotools(ground_truth, detections):
    gt_dataset, dt_dataset = ground_truth, detections_dataset(ground_truth, detections)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt, coco_dt = PyCOCO(), PyCOCO()
        coco_gt.dataset, coco_dt.dataset = gt_dataset, dt_dataset
        coco_gt.createIndex()
        coco_dt.createIndex()
        evaluator = PyCOCOeval(coco_gt, coco_dt, "bbox")
        configure_params(evaluator.params, AITOD_PROTOCOL)
        evaluator.evaluate()
        evaluator.accumulate()
    return summarize(evaluator.eval["precision"], evaluator.eval["recall"], AITOD_PROTOCOL, CLASSES)


def filled_metric(images):
    metric = DetectionMetric("aitod", CLASSES)
    for image_id, (gt, gt_labels, boxes, labels, scores) in enumerate(images, 1):
        pred = {
            "boxes": torch.from_numpy(boxes),
            "scores": torch.from_numpy(scores),
            "labels": torch.from_numpy(labels),
        }
        target = {"boxes": torch.from_numpy(gt), "labels": torch.from_numpy(gt_labels), "image_id": image_id}
        metric.update([pred], [target])
    return metric


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--max-dets", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-metric", action="store_true", help="do not time DetectionMetric.compute")
    args = parser.parse_args()

    images = aitod_like(args.images, args.max_dets, args.seed)
    ground_truth, detections = coco_form(images)
    print(
        f"{args.images} images, {len(ground_truth['annotations'])} objects, {len(detections.scores)} detections "
        f"(max {max(len(im[2]) for im in images)} per image), torch threads {torch.get_num_threads()}"
    )
    variants = {"kldet": run_kldet, "faster-coco-eval": run_faster_coco_eval, "pycocotools": run_pycocotools}
    results, wall, cpu = {}, {}, {}
    for name in ["kldet", "faster-coco-eval", "pycocotools", "kldet", "faster-coco-eval"]:
        result, seconds, cpu_seconds = timed(variants[name], copy.deepcopy(ground_truth), detections)
        results[name] = result
        wall[name], cpu[name] = (
            min(wall.get(name, seconds), seconds),
            min(cpu.get(name, cpu_seconds), cpu_seconds),
        )
        print(f"{name:<18} {seconds:7.2f} s wall {cpu_seconds:7.2f} s CPU")
    ours = results["kldet"]
    for name in ("faster-coco-eval", "pycocotools"):
        print(
            f"kldet is {wall[name] / wall['kldet']:.1f}x faster than {name} (wall), {cpu[name] / cpu['kldet']:.1f}x (CPU)"
        )
    reference = results["pycocotools"]
    difference = max(abs(ours[k] - reference[k]) for k in reference)
    print(f"largest metric difference to pycocotools: {difference:.2e}")
    if difference > 1e-6:
        raise SystemExit("kldet and pycocotools disagree")
    unequal = [k for k, value in results["faster-coco-eval"].items() if ours[k] != value]
    if unequal:
        raise SystemExit(f"kldet and faster-coco-eval differ on {unequal}")
    print("kldet equals faster-coco-eval on every AP and AR key")
    if not args.skip_metric:
        metric = filled_metric(images)
        from_metric, metric_wall, metric_cpu = timed(metric.compute)
        print(f"DetectionMetric.compute (from tensors):  {metric_wall:7.2f} s wall {metric_cpu:7.2f} s CPU")
        if max(abs(from_metric[k] - ours[k]) for k in ours) > 1e-6:
            raise SystemExit("DetectionMetric disagrees with evaluate_coco")
    print(", ".join(f"{k} {100 * ours[k]:.1f}" for k in AITOD_PROTOCOL.summary_keys))


if __name__ == "__main__":
    main()
