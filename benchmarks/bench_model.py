"""Training-step and inference time of KLDet configurations against torchvision's FCOS, on one device.

Every model is built once; the timed iterations interleave the models (one step of each, in turn) so
that load from other processes spreads over all of them alike. A training step is forward + loss +
backward (no optimiser update); inference is forward + post-processing under ``torch.no_grad``.

    python benchmarks/bench_model.py --size 512 --batch 2 --iters 3             # wall clock, all threads
    python benchmarks/bench_model.py --size 512 --batch 2 --iters 2 --clock cpu # 1 thread, CPU seconds

``--clock cpu`` runs on one thread and counts this process's CPU time, which other processes on a
shared machine barely disturb; ``--clock wall`` is what a user waits on an otherwise idle machine.

Prints a markdown table: seconds per step and per image, and the ratio to torchvision's
``fcos_resnet50_fpn(weights=None, weights_backbone=None)`` (BatchNorm trained, nothing frozen).
"torchvision FCOS, frozen" is the same network with stem + layer1 and BatchNorm frozen, as ours.

    python benchmarks/bench_model.py --modes --iters 3   # number formats and memory layouts instead

``--modes`` times, interleaved, fp32 / fp32 + channels_last / bf16 autocast / bf16 + channels_last for the
synthetic experiment's model (the demo's: ResNet-18, 64-channel GroupNorm head, batch 4, 256 px, one
training step as kldet-train runs it under ``precision=bf16-mixed``) and for KLDet R-50 inference at
800 px (forward + post-processing, batch 1), with the ratio to fp32.
"""

import argparse
import sys
import time
import warnings
from collections.abc import Callable

import torch
from torchvision.models.detection import FCOS, fcos_resnet50_fpn
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from kldet.assign import AliTSMAssigner, FCOSAssigner
from kldet.model import Detector, KLDet, kldet_resnet_fpn

POSTPROCESS = {"score_thresh": 0.05, "nms_thresh": 0.5, "detections_per_img": 3000, "topk_candidates": 3000}


def torchvision_fcos(num_classes: int, size: int, frozen: bool) -> FCOS:
    """torchvision's FCOS R-50 P3-P7 (GroupNorm head) that does not resize ``size`` x ``size`` inputs."""
    options = {"min_size": size, "max_size": size, **POSTPROCESS}
    if not frozen:
        return fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes, **options)
    backbone = resnet_fpn_backbone(
        backbone_name="resnet50",
        weights=None,
        trainable_layers=3,
        returned_layers=[2, 3, 4],
        extra_blocks=LastLevelP6P7(256, 256),
    )
    return FCOS(backbone, num_classes, **options)


def kldet_configurations(num_classes: int) -> dict[str, KLDet]:
    """Ours, from the torchvision-like configuration to the full KLDet default, one change at a time."""
    standard = {"fpn_levels": (3, 4, 5, 6, 7), "attention": False, "assigner": FCOSAssigner()}
    kldet = {"fpn_levels": (2, 3, 4, 5, 6)}
    configurations = {
        "ours P3-P7, GN head, FCOS assigner": {**standard, "head_norm": "GN"},
        "ours P3-P7, FCOS assigner": standard,
        "ours P2-P6, FCOS assigner": {**standard, **kldet},
        "ours P2-P6, TlA, FCOS assigner": {**standard, **kldet, "attention": True},
        "ours P2-P6, TlA, Ali-TSM (KLDet default)": {
            **kldet,
            "attention": True,
            "assigner": AliTSMAssigner(),
        },
    }
    return {name: kldet_resnet_fpn(num_classes, **options) for name, options in configurations.items()}


def synthetic_batch(batch: int, size: int, objects: int, num_classes: int, seed: int = 0):
    """Images (B, 3, size, size) in 0..1 and tiny boxes of 6..24 px, as for AI-TOD."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size, size, generator=generator)
    targets = []
    for _ in range(batch):
        wh = 6 + 18 * torch.rand(objects, 2, generator=generator)
        xy = (size - wh) * torch.rand(objects, 2, generator=generator)
        labels = torch.randint(0, num_classes, (objects,), generator=generator)
        targets.append({"boxes": torch.cat([xy, xy + wh], dim=1), "labels": labels})
    return images, targets


def step_functions(model: torch.nn.Module, images: torch.Tensor, targets) -> tuple[Callable, Callable]:
    """(training step, inference) closures for either model family (a kldet :class:`Detector` takes
    ImageNet-normalised images; torchvision's detectors normalise themselves)."""
    if isinstance(model, Detector):
        mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
        std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
        normalised = (images - mean) / std

        def train() -> None:
            sum(model.loss(normalised, targets).values()).backward()

        def infer() -> None:
            model.predict(normalised)

    else:
        image_list = list(images)

        def train() -> None:
            sum(model(image_list, targets).values()).backward()

        def infer() -> None:
            with torch.no_grad():
                model(image_list)

    return train, infer


def timed(function: Callable, model: torch.nn.Module, training: bool, clock: Callable[[], float]) -> float:
    model.train(training)
    model.zero_grad(set_to_none=True)
    start = clock()
    function()
    return clock() - start


MODES = {
    "fp32": (None, False),
    "fp32 + channels_last": (None, True),
    "bf16": (torch.bfloat16, False),
    "bf16 + channels_last": (torch.bfloat16, True),
}


def mode_step(model: KLDet, images: torch.Tensor, targets, training: bool, dtype, channels_last: bool):
    """A training step or an inference of ``model`` in one number format and memory layout."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=layout)
    batch = images.contiguous(memory_format=layout)
    autocast = torch.autocast("cpu", dtype=dtype, enabled=dtype is not None)
    if training:
        with autocast:
            losses = model.loss(batch, targets)
        sum(losses.values()).backward()
    else:
        with torch.no_grad():
            with autocast:
                maps = model(batch)
            model.postprocess(*maps, tuple(batch.shape[-2:]))


def run_modes(args, clock: Callable[[], float]) -> None:
    """The ``--modes`` table (see the module docstring)."""
    demo = kldet_resnet_fpn(
        8,
        backbone="resnet18",
        backbone_norm="bn",
        frozen_stages=-1,
        channels=64,
        head_convs=2,
        head_norm="GN",
    )
    r50 = kldet_resnet_fpn(8).eval()
    cases = {
        "demo model, train step (batch 4, 256 px)": (demo, *synthetic_batch(4, 256, args.objects, 8), True),
        "KLDet R-50, inference (batch 1, 800 px)": (r50, *synthetic_batch(1, 800, args.objects, 8), False),
    }
    times = {(case, mode): [] for case in cases for mode in MODES}
    for iteration in range(args.iters + 1):
        for case, (model, images, targets, training) in cases.items():
            for mode, (dtype, channels_last) in MODES.items():
                model.train(training)
                model.zero_grad(set_to_none=True)
                start = clock()
                mode_step(model, images, targets, training, dtype, channels_last)
                elapsed = clock() - start
                print(f"round {iteration}: {case}, {mode}: {elapsed:.3f} s", file=sys.stderr)
                if iteration > 0:
                    times[case, mode].append(elapsed)
    print(
        f"\nCPU, {torch.get_num_threads()} thread(s); best of {args.iters} interleaved iterations after 1 warm-up\n"
    )
    print("| case | " + " | ".join(MODES) + " |")
    print("|---" * (len(MODES) + 1) + "|")
    for case in cases:
        best = {mode: min(times[case, mode]) for mode in MODES}
        cells = [f"{best[mode]:.3f} s ({best['fp32'] / best[mode]:.2f}x)" for mode in MODES]
        print(f"| {case} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=512, help="square image side (a multiple of 32)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3, help="timed iterations after one warm-up")
    parser.add_argument("--objects", type=int, default=30, help="objects per image")
    parser.add_argument("--num-classes", type=int, default=8)
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="ignored with --clock cpu"
    )
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--modes", action="store_true", help="compare number formats and memory layouts")
    args = parser.parse_args()
    threads = 1 if args.clock == "cpu" else args.threads
    torch.set_num_threads(threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    warnings.filterwarnings("ignore", message=".*backbone starts from random weights")
    torch.manual_seed(0)
    if args.modes:
        run_modes(args, clock)
        return

    models: dict[str, torch.nn.Module] = {
        "torchvision FCOS R-50 (reference)": torchvision_fcos(args.num_classes, args.size, frozen=False),
        "torchvision FCOS R-50, frozen": torchvision_fcos(args.num_classes, args.size, frozen=True),
        **kldet_configurations(args.num_classes),
    }
    images, targets = synthetic_batch(args.batch, args.size, args.objects, args.num_classes)
    functions = {name: step_functions(model, images, targets) for name, model in models.items()}
    train_times: dict[str, list[float]] = {name: [] for name in models}
    infer_times: dict[str, list[float]] = {name: [] for name in models}
    for iteration in range(args.iters + 1):
        for name, model in models.items():
            train, infer = functions[name]
            train_time, infer_time = timed(train, model, True, clock), timed(infer, model, False, clock)
            print(f"round {iteration}: {name}: {train_time:.2f} s, {infer_time:.2f} s", file=sys.stderr)
            if iteration > 0:  # the first round is the warm-up
                train_times[name].append(train_time)
                infer_times[name].append(infer_time)

    reference = "torchvision FCOS R-50 (reference)"
    train = {name: min(times) for name, times in train_times.items()}
    infer = {name: min(times) for name, times in infer_times.items()}
    print(
        f"\nCPU, {threads} thread(s), {args.clock} clock, {args.size}x{args.size}, batch {args.batch}, {args.objects} objects/image, "
        f"{args.num_classes} classes; best of {args.iters} interleaved iterations after 1 warm-up\n"
    )
    print("| model | train step s | train s/img | x torchvision | inference s/img | x torchvision |")
    print("|---|---|---|---|---|---|")
    for name in models:
        print(
            f"| {name} | {train[name]:.2f} | {train[name] / args.batch:.2f} | {train[name] / train[reference]:.2f} "
            f"| {infer[name] / args.batch:.2f} | {infer[name] / infer[reference]:.2f} |"
        )


if __name__ == "__main__":
    main()
