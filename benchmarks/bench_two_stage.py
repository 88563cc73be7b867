"""Training-step and inference time of the two-stage KLDet against torchvision's Faster R-CNN, on the CPU.

    python benchmarks/bench_two_stage.py --size 512 --batch 2 --iters 3 --threads 2   # wall clock
    python benchmarks/bench_two_stage.py --size 512 --batch 2 --iters 3 --clock cpu   # 1 thread, CPU seconds

``--clock cpu`` (as in ``bench_model.py``) runs on one thread and counts this process's CPU time, which other
processes on a shared machine barely disturb.

Models, all ResNet-50 FPN from random weights with the same settings (20 classes + background, 3000
proposals per level before and 3000 after NMS in training and test, 512 RoIs per image, score > 0.05,
at most 3000 detections), built once and timed interleaved (one step of each in turn; the first round is
a warm-up), medians of the rest:

- torchvision ``fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)`` (the reference: BatchNorm
  trained, nothing frozen, as torchvision builds it without weights);
- torchvision's Faster R-CNN with stem + layer1 and BatchNorm frozen (``resnet_fpn_backbone(...,
  trainable_layers=3)``), the freezing of ours;
- ours ``faster_rcnn_r50`` (standard anchors 32..512, max-IoU RPN assigner): the issue's target is
  within 1.15x of torchvision;
- ours ``faster_rcnn_r50`` with RoIAlign ``sampling_ratio=2`` (torchvision's) instead of the spec's 0
  (adaptive: ceil(side / 7) samples per bin side, many for large RoIs): what the spec's RoIAlign costs;
- ours ``faster_kldet_r50`` (receptive-field anchors: sides 17.5..277.5, the small P2 anchors match tiny
  objects, so more positives and proposals on P2).

A training step is forward + losses + backward (no optimiser update); inference is forward +
post-processing under ``torch.no_grad``. Images are random with ``--objects`` boxes of 6..24 px
(:func:`bench_model.synthetic_batch`). Prints a markdown table of seconds and ratios to the reference.
"""

import argparse
import statistics
import sys
import time
import warnings

import torch
from torchvision.models.detection import FasterRCNN, fasterrcnn_resnet50_fpn
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

from bench_model import step_functions, synthetic_batch, timed
from kldet.model import faster_kldet_r50, faster_rcnn_r50

# torchvision's settings made ours (KLDET_SPEC.md section 9).
SETTINGS = {
    "rpn_pre_nms_top_n_train": 3000,
    "rpn_pre_nms_top_n_test": 3000,
    "rpn_post_nms_top_n_train": 3000,
    "rpn_post_nms_top_n_test": 3000,
    "box_batch_size_per_image": 512,
    "box_score_thresh": 0.05,
    "box_detections_per_img": 3000,
}
REFERENCE = "torchvision fasterrcnn_resnet50_fpn (reference)"


def torchvision_faster_rcnn(num_classes: int, size: int, frozen: bool) -> FasterRCNN:
    """torchvision's Faster R-CNN R-50 FPN with our settings, not resizing ``size`` x ``size`` inputs."""
    options = {"min_size": size, "max_size": size, **SETTINGS}
    if not frozen:
        return fasterrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=num_classes + 1, **options
        )
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=3)
    return FasterRCNN(backbone, num_classes + 1, **options)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=512, help="square image side (a multiple of 64)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3, help="timed iterations after one warm-up")
    parser.add_argument("--objects", type=int, default=30, help="objects per image")
    parser.add_argument("--num-classes", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2, help="ignored with --clock cpu")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = parser.parse_args()
    threads = 1 if args.clock == "cpu" else args.threads
    torch.set_num_threads(threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    warnings.filterwarnings("ignore", message=".*backbone starts from random weights")
    torch.manual_seed(0)
    models: dict[str, torch.nn.Module] = {
        REFERENCE: torchvision_faster_rcnn(args.num_classes, args.size, frozen=False),
        "torchvision Faster R-CNN, frozen as ours": torchvision_faster_rcnn(
            args.num_classes, args.size, frozen=True
        ),
        "ours faster_rcnn_r50 (standard anchors)": faster_rcnn_r50(args.num_classes, weights=None),
        "ours faster_rcnn_r50, RoIAlign sampling_ratio 2": faster_rcnn_r50(args.num_classes, weights=None),
        "ours faster_kldet_r50 (RF anchors)": faster_kldet_r50(args.num_classes, weights=None),
    }
    models["ours faster_rcnn_r50, RoIAlign sampling_ratio 2"].roi_head.roi_align.sampling_ratio = 2
    images, targets = synthetic_batch(args.batch, args.size, args.objects, args.num_classes)
    functions = {name: step_functions(model, images, targets) for name, model in models.items()}
    train_times: dict[str, list[float]] = {name: [] for name in models}
    infer_times: dict[str, list[float]] = {name: [] for name in models}
    for iteration in range(args.iters + 1):
        for name, model in models.items():
            train, infer = functions[name]
            train_time = timed(train, model, True, clock)
            infer_time = timed(infer, model, False, clock)
            print(f"round {iteration}: {name}: {train_time:.2f} s, {infer_time:.2f} s", file=sys.stderr)
            if iteration > 0:
                train_times[name].append(train_time)
                infer_times[name].append(infer_time)
    train = {name: statistics.median(times) for name, times in train_times.items()}
    infer = {name: statistics.median(times) for name, times in infer_times.items()}
    print(
        f"\nCPU, {threads} thread(s), {args.clock} clock, fp32, {args.size}x{args.size}, batch {args.batch}, {args.objects} "
        f"objects/image, {args.num_classes} classes; median of {args.iters} interleaved iterations after 1 warm-up\n"
    )
    print("| model | train step s | x torchvision | inference s | x torchvision |")
    print("|---|---:|---:|---:|---:|")
    for name in models:
        print(
            f"| {name} | {train[name]:.2f} | {train[name] / train[REFERENCE]:.2f} "
            f"| {infer[name]:.2f} | {infer[name] / infer[REFERENCE]:.2f} |"
        )


if __name__ == "__main__":
    main()
