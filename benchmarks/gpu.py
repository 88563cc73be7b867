"""The GPU path in one call: KLDet's training speed and memory against the FCOS baseline, their FLOPs,
Ali-TSM and the hierarchical KLD (RPN) assigner on the device against the CPU, the share of a training step spent in assignment, and sliced
prediction tiles/s.

    python benchmarks/gpu.py [--device cuda] [--out outputs/bench_gpu.json]   # sized for < 8 minutes on one GPU
    python benchmarks/gpu.py --smoke                                          # tiny sizes, seconds on a CPU

Random weights, synthetic inputs, 8 classes. Every timed region is bracketed by ``torch.cuda.synchronize``
and follows ``--warmup`` untimed iterations; cuDNN autotuning is on, as with ``trainer=gpu``. The sections:

- ``training``: images/s of a training step at ``--size`` px, batch ``--batch``, ``--train-gts`` boxes of
  6..24 px per image (bench_model.py's ``synthetic_batch``): forward and loss under bfloat16 autocast (as
  ``precision=bf16-mixed``), backward, an SGD update (at learning rate 0, see ``make_optimizer``). KLDet
  is ``kldet_r50_caffe`` (P2-P6, TlA, Ali-TSM), the baseline ``fcos_r50`` (P3-P7, FCOS assignment); their
  steps alternate and the median of ``--iters`` steps counts. Peak memory: ``torch.cuda.max_memory_allocated`` during the model's steps (reset before
  each), less the other model's weights and optimiser state, which stay resident meanwhile.
- ``flops``: FLOPs of one forward of one ``--size`` image, counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add is 2 FLOPs; the network only, no assignment).
- ``ratios``: KLDet / FCOS images/s and FLOPs; ``time_ratio`` = FCOS images/s / KLDet images/s (KLDet's time
  per image over FCOS's). The goal: ``time_ratio`` <= 1.1 x ``flop_ratio`` (``time_over_flop_ratio`` <= 1.1).
- ``alitsm``: ``alitsm_assign`` on one 800x800 image for each of ``--assign-gts`` ground truths
  (bench_assign.py's inputs: P2-P6 receptive-field priors, AI-TOD-like boxes): on the device, the median of
  ``--assign-repeats`` calls and the peak allocated memory above the inputs; on the CPU, bench_assign.py's
  own measurement in a fresh process (median time, peak extra resident memory); ``differing_points``
  counts the points whose assignment differs between the two.
- ``hierarchical``: the same for ``hierarchical_kld_assign`` (the two-stage model's RPN assigner) on the
  image's 159,882 receptive-field anchors and the same boxes (bench_assign.py's ``hierarchical`` inputs);
  ``positives`` counts positive anchors, ``differing_points`` differing anchors.
- ``assignment_share``: the share of a KLDet training step (batch ``--batch``, ``--share-gts`` boxes per
  image) spent in the assigner calls and ``build_targets`` of ``KLDet.loss``, each call timed between two
  synchronisations (so the steps measured here wait where a normal step would not). The goal: <= 0.10.
- ``predict``: tiles/s of :class:`kldet.inference.Predictor` on ``--predict-tiles`` random images of one
  ``--size`` px tile each, ``--predict-batch`` tiles per forward, under bfloat16 autocast, and its peak
  memory (KLDet's weights included). The random head scores under the threshold, so post-processing is
  nearly free.

``--backbone``, ``--style`` and ``--channels`` replace the Caffe-style ResNet-50 and the 256 pyramid channels
of both presets; ``--smoke`` sets tiny defaults (64 px, batch 2, pytorch-style ResNet-18, 64 channels, G = 20,
one timed training step, one CPU thread) that run on a CPU in seconds
(tests/test_bench_gpu.py). Memory is measured on CUDA devices only: elsewhere the memory figures are null,
except the CPU path's resident memory. Prints the tables and writes everything to ``--out`` (JSON) after each
section; a section that fails is recorded as ``{"error": ...}``, the others still run, and the exit status
is 1.
"""

import argparse
import contextlib
import functools
import json
import platform
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

import kldet.model.detector as detector_module
from bench_assign import ASSIGNERS, run_case_in_subprocess
from bench_model import synthetic_batch
from kldet.assign import build_targets
from kldet.inference import ArraySource, Predictor
from kldet.model import KLDet, fcos_r50, input_normalization, kldet_r50_caffe

TIME_OVER_FLOP_GOAL = 1.1
ASSIGNMENT_SHARE_GOAL = 0.10
MODELS = {"kldet": "KLDet (P2-P6, TlA, Ali-TSM)", "fcos": "FCOS (P3-P7)"}
SMOKE = {
    "size": 64,
    "batch": 2,
    "backbone": "resnet18",
    "style": "pytorch",
    "channels": 64,
    "train_gts": 20,
    "share_gts": 50,
    "assign_gts": [20],
    "assign_repeats": 2,
    "warmup": 1,
    "iters": 1,
    "predict_tiles": 4,
    "predict_batch": 2,
    "threads": 1,
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """(seconds, result) of ``function()``, the device synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    result = function()
    synchronize(device)
    return time.perf_counter() - start, result


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def allocated_bytes(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def peak_memory_mb(device: torch.device, less_bytes: int = 0) -> float | None:
    """The allocator's peak since the last reset, less ``less_bytes``, in MiB; None off CUDA."""
    if device.type != "cuda":
        return None
    return (torch.cuda.max_memory_allocated(device) - less_bytes) / 2**20


class CallTimer:
    """``function`` with the same call shape, summing in ``seconds`` the synchronised wall time of its calls
    (wraps ``model.assigner`` and ``build_targets`` in :func:`timed_assignment`)."""

    def __init__(self, function: Callable, device: torch.device) -> None:
        self.function, self.device, self.seconds = function, device, 0.0

    def __call__(self, *args, **kwargs):
        seconds, result = timed(functools.partial(self.function, *args, **kwargs), self.device)
        self.seconds += seconds
        return result


@contextlib.contextmanager
def timed_assignment(model: KLDet, device: torch.device) -> Iterator[tuple[CallTimer, CallTimer]]:
    """Within the block, ``model.loss`` calls its assigner and ``build_targets`` through two
    :class:`CallTimer` s, which it yields as (assigner, targets)."""
    original = model.assigner
    assigner, targets = CallTimer(original, device), CallTimer(build_targets, device)
    model.assigner = assigner
    try:
        with mock.patch.object(detector_module, "build_targets", targets):
            yield assigner, targets
    finally:
        model.assigner = original


def build_models(args, device: torch.device) -> dict[str, KLDet]:
    """KLDet and the FCOS baseline (``kldet_r50_caffe`` and ``fcos_r50``, random weights) on ``device``."""
    options = {"weights": None, "backbone": args.backbone, "style": args.style, "channels": args.channels}
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*starts from random weights")
        models = {
            "kldet": kldet_r50_caffe(args.num_classes, **options),
            "fcos": fcos_r50(args.num_classes, **options),
        }
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    return {name: model.to(device, memory_format=layout) for name, model in models.items()}


def training_batch(args, num_gts: int, device: torch.device) -> tuple[torch.Tensor, list[dict]]:
    """Images (B, 3, size, size) normalised for ``--style``, and ``num_gts`` tiny boxes per image, on
    ``device``."""
    images, targets = synthetic_batch(args.batch, args.size, num_gts, args.num_classes)
    images = input_normalization(args.style).normalize(images * 255)
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    return images.to(device).contiguous(memory_format=layout), [
        {key: value.to(device) for key, value in t.items()} for t in targets
    ]


def make_optimizer(model: KLDet) -> torch.optim.Optimizer:
    """SGD with momentum and weight decay, as the paper's, at learning rate 0: the update costs what a real
    one does, and the random weights stay those of the initialisation (a random ResNet-50 under frozen
    batch norm has activations of ~1e4, which real updates would soon turn into NaN logits)."""
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    return torch.optim.SGD(trainable, lr=0.0, momentum=0.9, weight_decay=1e-4)


def training_step(model: KLDet, optimizer: torch.optim.Optimizer, images: torch.Tensor, targets) -> Tensor:
    """Forward and loss under bfloat16 autocast (as ``precision=bf16-mixed``), backward, one update; returns
    the loss (detached; read it after the timing, it would synchronise)."""
    with torch.autocast(images.device.type, dtype=torch.bfloat16):
        loss = sum(model.loss(images, targets).values())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def check_finite(loss: Tensor, name: str) -> None:
    """Raises when a step's loss is not finite: the figures of such a step would mean nothing."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{name}: the training loss is {loss.item()}")


def resident_bytes(model: KLDet, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the weights, buffers and optimiser state of a model between its steps (gradients are None)."""
    state = [
        value for entry in optimizer.state.values() for value in entry.values() if torch.is_tensor(value)
    ]
    tensors = [*model.parameters(), *model.buffers(), *state]
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def bench_training(models: dict[str, KLDet], args, device: torch.device) -> dict:
    images, targets = training_batch(args, args.train_gts, device)
    optimizers = {name: make_optimizer(model) for name, model in models.items()}
    step_seconds: dict[str, list[float]] = {name: [] for name in models}
    peaks: dict[str, list[float | None]] = {name: [] for name in models}
    for iteration in range(args.warmup + args.iters):
        for name, model in models.items():  # alternating, so that any drift touches both alike
            model.train()
            others = sum(resident_bytes(models[o], optimizers[o]) for o in models if o != name)
            reset_peak_memory(device)
            step = functools.partial(training_step, model, optimizers[name], images, targets)
            seconds, loss = timed(step, device)
            check_finite(loss, name)
            print(f"training round {iteration}: {name}: {seconds:.3f} s", file=sys.stderr)
            if iteration >= args.warmup:
                step_seconds[name].append(seconds)
                peaks[name].append(peak_memory_mb(device, others))
    results = {}
    for name in models:
        median = statistics.median(step_seconds[name])
        peak = None if peaks[name][0] is None else max(peaks[name])
        results[name] = {"images_per_s": args.batch / median, "step_seconds": median, "peak_memory_mb": peak}
    return results


def forward_flops(model: KLDet, size: int, device: torch.device) -> int:
    """FLOPs of ``model(images)`` for one ``size`` x ``size`` image, counted op by op."""
    image = torch.zeros(1, 3, size, size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(image)
    return counter.get_total_flops()


def bench_flops(models: dict[str, KLDet], args, device: torch.device) -> dict:
    return {
        name: {"gflops_per_image": forward_flops(model, args.size, device) / 1e9}
        for name, model in models.items()
    }


def training_ratios(training: dict, flops: dict) -> dict:
    images_per_s_ratio = training["kldet"]["images_per_s"] / training["fcos"]["images_per_s"]
    flop_ratio = flops["kldet"]["gflops_per_image"] / flops["fcos"]["gflops_per_image"]
    time_over_flop_ratio = 1 / images_per_s_ratio / flop_ratio
    return {
        "images_per_s_ratio": images_per_s_ratio,
        "flop_ratio": flop_ratio,
        "time_ratio": 1 / images_per_s_ratio,
        "time_over_flop_ratio": time_over_flop_ratio,
        "goal": TIME_OVER_FLOP_GOAL,
        "goal_met": time_over_flop_ratio <= TIME_OVER_FLOP_GOAL,
    }


def bench_assigner(assigner: str, args, device: torch.device) -> list[dict]:
    """bench_assign.py's ``assigner`` (``alitsm`` or ``hierarchical``) on the device and on the CPU."""
    bench = ASSIGNERS[assigner]
    rows = []
    threads = torch.get_num_threads()
    for num_gts in args.assign_gts:
        inputs = bench.make_inputs(num_gts)
        on_device = [tensor.to(device) for tensor in inputs]
        bench.assign(
            *(tensor.to(device) for tensor in bench.make_inputs(1, seed=1))
        )  # kernels loaded outside
        bench.assign(*on_device)  # warm-up
        synchronize(device)
        reset_peak_memory(device)
        before = allocated_bytes(device)
        calls = [
            timed(functools.partial(bench.assign, *on_device), device) for _ in range(args.assign_repeats)
        ]
        peak = peak_memory_mb(device, before)
        assigned = calls[-1][1].cpu()
        cpu = run_case_in_subprocess(num_gts, args.assign_repeats, 0, threads, assigner)
        device_seconds = statistics.median(seconds for seconds, _ in calls)
        row = {
            "gts": num_gts,
            "positives": int((assigned >= 0).sum()),
            "device_seconds": device_seconds,
            "device_peak_extra_mb": peak,
            "cpu_seconds": cpu["seconds"],
            "cpu_peak_extra_mb": cpu["peak_extra_mb"],
            "cpu_threads": threads,
            "speedup": cpu["seconds"] / device_seconds,
            "differing_points": int((assigned != bench.assign(*inputs)).sum()),
        }
        print(f"{assigner} G={num_gts}: {row}", file=sys.stderr)
        rows.append(row)
    return rows


def bench_assignment_share(model: KLDet, args, device: torch.device) -> dict:
    images, targets = training_batch(args, args.share_gts, device)
    optimizer = make_optimizer(model)
    model.train()
    step = functools.partial(training_step, model, optimizer, images, targets)
    for _ in range(args.warmup):
        check_finite(step(), "kldet")
    with timed_assignment(model, device) as (assigner, build):
        steps = [timed(step, device) for _ in range(args.iters)]
    for _, loss in steps:
        check_finite(loss, "kldet")
    step_seconds = sum(seconds for seconds, _ in steps) / args.iters
    share = (assigner.seconds + build.seconds) / args.iters / step_seconds
    return {
        "gts": args.share_gts,
        "step_seconds": step_seconds,
        "assign_seconds": assigner.seconds / args.iters,
        "targets_seconds": build.seconds / args.iters,
        "share": share,
        "goal": ASSIGNMENT_SHARE_GOAL,
        "goal_met": share <= ASSIGNMENT_SHARE_GOAL,
    }


def predict_images(predictor: Predictor, images: Sequence[np.ndarray]) -> list[dict]:
    """Detections of each (H, W, 3) uint8 image through ``predictor``."""
    return [detections for _, detections in predictor.predict_sources(map(ArraySource, images))]


def bench_predict(model: KLDet, args, device: torch.device) -> dict:
    classes = [f"class{index}" for index in range(args.num_classes)]
    predictor = Predictor(
        model,
        classes,
        list(range(1, args.num_classes + 1)),
        normalization=input_normalization(args.style),
        tile_size=args.size,
        batch_size=args.predict_batch,
        precision="bf16",
        channels_last=args.channels_last,
    )
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for _ in range(args.predict_tiles)
    ]
    for _ in range(args.warmup):
        predict_images(predictor, images[: args.predict_batch])
    tiles = predictor.tile_count(map(ArraySource, images))
    reset_peak_memory(device)
    seconds, detections = timed(functools.partial(predict_images, predictor, images), device)
    return {
        "tiles": tiles,
        "tile_size": args.size,
        "batch_size": args.predict_batch,
        "seconds": seconds,
        "tiles_per_s": tiles / seconds,
        "peak_memory_mb": peak_memory_mb(device),
        "detections": sum(len(d["boxes"]) for d in detections),
    }


def cell(value: float | None, spec: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def print_tables(results: dict) -> None:
    config = results["config"]
    print(
        f"\n{config['device_name']} ({config['device']}), torch {config['torch']}; {config['size']}x{config['size']}, "
        f"batch {config['batch']}, {config['backbone']}, {config['channels']} channels, bf16 autocast"
    )
    if results["memory_note"]:
        print(results["memory_note"])
    training, flops, ratios = results.get("training"), results.get("flops"), results.get("ratios")
    print(f"\nTraining, {config['train_gts']} ground truths per image\n")
    print("| model | images/s | step | peak memory | forward GFLOPs/image |")
    print("|---|---:|---:|---:|---:|")
    for name, label in MODELS.items():
        step = training.get(name, {}) if training else {}
        flop = flops.get(name, {}) if flops else {}
        print(
            f"| {label} | {cell(step.get('images_per_s'), '.2f')} | {cell(step.get('step_seconds'), '.3f', ' s')} "
            f"| {cell(step.get('peak_memory_mb'), ',.0f', ' MiB')} | {cell(flop.get('gflops_per_image'), ',.1f')} |"
        )
    if ratios and "error" not in ratios:
        print(
            f"\nKLDet / FCOS: images/s {ratios['images_per_s_ratio']:.3f}, FLOPs {ratios['flop_ratio']:.3f}; time per "
            f"image {ratios['time_ratio']:.3f}x = {ratios['time_over_flop_ratio']:.3f} x the FLOP ratio "
            f"(goal <= {ratios['goal']}: {'met' if ratios['goal_met'] else 'NOT met'})"
        )
    for name in ASSIGNERS:
        rows = results.get(name)
        if not isinstance(rows, list) or not rows:
            continue
        print(f"\n{ASSIGNERS[name].title}, 800x800 image\n")
        print(
            f"| G | positives | {config['device']} time | {config['device']} peak extra | "
            f"CPU time (torch threads: {rows[0]['cpu_threads']}) | CPU peak extra RSS | speed-up | differing points |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for row in rows:
            print(
                f"| {row['gts']:,} | {row['positives']:,} | {row['device_seconds'] * 1000:.1f} ms "
                f"| {cell(row['device_peak_extra_mb'], ',.0f', ' MiB')} | {row['cpu_seconds'] * 1000:.1f} ms "
                f"| {row['cpu_peak_extra_mb']:,.0f} MB | {row['speedup']:.1f}x | {row['differing_points']} |"
            )
    share = results.get("assignment_share")
    if share and "error" not in share:
        print(
            f"\nAssignment + targets, {share['gts']:,} ground truths per image: {share['assign_seconds'] * 1000:.1f} ms "
            f"+ {share['targets_seconds'] * 1000:.1f} ms of a {share['step_seconds'] * 1000:.1f} ms step = "
            f"{share['share']:.2%} (goal <= {share['goal']:.0%}: {'met' if share['goal_met'] else 'NOT met'})"
        )
    predict = results.get("predict")
    if predict and "error" not in predict:
        print(
            f"\nPredictor, bf16 autocast: {predict['tiles']} tiles of {predict['tile_size']} px, batch "
            f"{predict['batch_size']}: {predict['tiles_per_s']:.2f} tiles/s, peak memory "
            f"{cell(predict['peak_memory_mb'], ',.0f', ' MiB')}"
        )
    for name, section in results.items():
        if isinstance(section, dict) and "error" in section:
            print(f"\n{name}: FAILED: {section['error']}")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_gpu.json"))
    parser.add_argument("--smoke", action="store_true", help=f"tiny defaults for a CPU: {SMOKE}")
    parser.add_argument("--size", type=int, default=800, help="square image and tile side (a multiple of 32)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--style", choices=("caffe", "pytorch"), default="caffe", help="backbone style")
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="NHWC network and batches (module.channels_last=true, kldet-predict's default)",
    )
    parser.add_argument("--num-classes", type=int, default=8)
    parser.add_argument("--train-gts", type=int, default=500, help="ground truths per image in training")
    parser.add_argument(
        "--share-gts", type=int, default=2000, help="ground truths per image, assignment share"
    )
    parser.add_argument("--assign-gts", type=int, nargs="+", default=[500, 2000, 5000])
    parser.add_argument("--assign-repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations before timing")
    parser.add_argument("--iters", type=int, default=10, help="timed training steps per model")
    parser.add_argument("--predict-tiles", type=int, default=64)
    parser.add_argument("--predict-batch", type=int, default=8)
    parser.add_argument(
        "--threads", type=int, help="torch intra-op threads on the CPU (default: torch's choice)"
    )
    if "--smoke" in argv:
        parser.set_defaults(**SMOKE)
    args = parser.parse_args(argv)
    counts = {"--batch": args.batch, "--iters": args.iters, "--assign-repeats": args.assign_repeats}
    counts |= {"--predict-tiles": args.predict_tiles, "--predict-batch": args.predict_batch}
    for flag, value in counts.items():
        if value < 1:
            parser.error(f"{flag}={value}: must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        device = torch.device(args.device)
    except RuntimeError:
        print(f"error: --device {args.device}: not a torch device (e.g. cuda, cuda:1, cpu)", file=sys.stderr)
        return 1
    if device.type == "cuda" and not torch.cuda.is_available():
        built = (
            "built with CUDA, but no GPU is visible" if torch.backends.cuda.is_built() else "a CPU-only build"
        )
        print(
            f"error: --device {args.device}: CUDA is not available (torch {torch.__version__}, {built})",
            file=sys.stderr,
        )
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as trainer=gpu: fixed input sizes
    started = time.perf_counter()
    results: dict[str, Any] = {
        "config": {
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else platform.processor() or "cpu",
            "torch": torch.__version__,
            "precision": "bf16 autocast",
            "smoke": args.smoke,
            **{key: value for key, value in vars(args).items() if key not in ("device", "out", "smoke")},
        },
        "memory_note": None
        if device.type == "cuda"
        else f"{device.type}: device memory is measured on CUDA only; its memory figures are null",
    }

    def section(name: str, function: Callable, *arguments, **keywords) -> None:
        """``results[name] = function(*arguments, **keywords)``, then the JSON file written."""
        start = time.perf_counter()
        try:
            results[name] = function(*arguments, **keywords)
        except Exception as error:  # one failed section must not cost the others' figures
            traceback.print_exc()
            results[name] = {"error": f"{type(error).__name__}: {error}"}
        print(f"{name}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
        results["config"]["seconds"] = time.perf_counter() - started
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")

    section("alitsm", bench_assigner, "alitsm", args, device)
    section("hierarchical", bench_assigner, "hierarchical", args, device)
    models = build_models(args, device)
    section("training", bench_training, models, args, device)
    section("flops", bench_flops, models, args, device)
    if "error" in results["training"] or "error" in results["flops"]:
        section("ratios", dict, error="needs the training and flops sections")
    else:
        section("ratios", training_ratios, results["training"], results["flops"])
    kldet = models.pop("kldet")
    models.clear()  # the baseline's memory is not the predictor's
    section("assignment_share", bench_assignment_share, kldet, args, device)
    section("predict", bench_predict, kldet, args, device)
    print_tables(results)
    print(f"\n{results['config']['seconds']:.0f} s in all; written to {args.out}")
    return 1 if any(isinstance(s, dict) and "error" in s for s in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
