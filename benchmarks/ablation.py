"""Ablation on the synthetic tiny-object set: FCOS, + P2, + Ali-TSM (KLD assignment), + TlA (= KLDet).

    python benchmarks/ablation.py [--out outputs/ablation] [--seeds 0 1 2] [--configs fcos fcos_p2 alitsm kldet]
                                  [--epochs E] [--image-size S] [--num-images N] [--quick] [--force]
                                  [HYDRA_OVERRIDE ...]

Every run is ``kldet-train experiment=synthetic`` (ResNet-18 from random weights; the experiment fixes
the schedule, batch size and data set) with the configuration's overrides and ``seed=<seed>``, so the
configurations differ only in the three settings below, and a seed sets the same random state at the
start of every configuration's run (initialisation, augmentation and data order). The data set is
generated once (its own seed, ``synthetic.seed``, stays fixed) under ``<out>/data``:

    (a) fcos     FCOS baseline: P3-P7, FCOS assignment with centre sampling, no TlA
    (b) fcos_p2  FCOS with P2: P2-P6
    (c) alitsm   + Ali-TSM / KLD assignment on receptive-field priors
    (d) kldet    + TlA (task-level attention) = KLDet

all four in fp32 with contiguous tensors (``precision=32-true module.channels_last=false``, pinned: the
experiment itself trains in bf16 on CPUs that compute it natively), and, to compare number formats,
``kldet_bf16``: (d) trained with ``precision=bf16-mixed`` and ``module.channels_last=true`` (what
``experiment=synthetic`` does on such a CPU; not in the default ``--configs``).

Each run writes ``<out>/runs/<config>/seed<seed>/`` (``metrics.json`` from kldet-train, its config and
``train.log`` with the run's output); a run whose folder holds the metrics of the same overrides is not
repeated unless ``--force``, so an interrupted ablation resumes where it stopped.
The test metrics (AI-TOD protocol on the val split) are summarised as mean ± sample standard deviation
over the seeds, in percent, in ``<out>/ablation.md``, ``<out>/ablation.json`` and the bar plot
``<out>/ablation.png``.

``--quick`` is a smoke run: one seed, 24 images of 256 px, one epoch (about a minute per configuration
on two cores). ``--epochs``, ``--image-size`` and ``--num-images`` override the experiment's values for
every run (the lr milestone moves to 3/4 of the epochs); other Hydra overrides are passed on verbatim.
"""

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
# The number format and memory layout of the ablation's steps: fp32, contiguous, pinned (the synthetic
# experiment itself trains in bf16 where the CPU computes it natively), so that its table is one format's.
FP32 = ["precision=32-true", "module.channels_last=false"]
BF16 = ["precision=bf16-mixed", "module.channels_last=true"]


def detector(assigner: str, levels: str, attention: bool, number_format: list[str] = FP32) -> list[str]:
    """kldet-train overrides of one configuration: assigner, FPN levels, TlA, number format and layout."""
    return [
        f"assigner={assigner}",
        f"model.fpn_levels={levels}",
        f"model.attention={str(attention).lower()}",
        *number_format,
    ]


# name: (label, kldet-train overrides)
CONFIGS = {
    "fcos": ("(a) FCOS P3-P7", detector("fcos", "[3,4,5,6,7]", attention=False)),
    "fcos_p2": ("(b) FCOS P2-P6", detector("fcos", "[2,3,4,5,6]", attention=False)),
    "alitsm": ("(c) + Ali-TSM", detector("alitsm", "[2,3,4,5,6]", attention=False)),
    "kldet": ("(d) + TlA = KLDet", detector("alitsm", "[2,3,4,5,6]", attention=True)),
    # Not an ablation step: (d) trained in bf16 autocast with channels-last tensors (what
    # experiment=synthetic does on a CPU with native bf16; issue 15's check before it became the default).
    "kldet_bf16": (
        "(d) KLDet, bf16-mixed + channels-last",
        detector("alitsm", "[2,3,4,5,6]", attention=True, number_format=BF16),
    ),
}
#: The ablation's steps (the default ``--configs``).
STEPS = ("fcos", "fcos_p2", "alitsm", "kldet")
METRICS = ("AP", "AP50", "AP_vt", "AP_t", "AP_s")
QUICK = {"seeds": [0], "epochs": 1, "image_size": 256, "num_images": 24}


def run_overrides(args: argparse.Namespace, config: str, seed: int, run_dir: Path) -> list[str]:
    """kldet-train arguments of one run."""
    overrides = [
        "experiment=synthetic",
        *CONFIGS[config][1],
        f"seed={seed}",
        "name=ablation",
        f"hydra.run.dir={run_dir}",
        f"paths.data_dir={args.out.resolve() / 'data'}",
        "logger=csv",
        "trainer.enable_progress_bar=false",
    ]
    if args.epochs is not None:
        overrides += [
            f"trainer.max_epochs={args.epochs}",
            f"trainer.check_val_every_n_epoch={args.epochs}",
            f"scheduler.milestones=[{max(1, round(0.75 * args.epochs))}]",
        ]
    if args.image_size is not None:
        overrides += [f"synthetic.image_size={args.image_size}", f"data.max_size={args.image_size}"]
    if args.num_images is not None:
        overrides.append(f"synthetic.num_images={args.num_images}")
    return overrides + args.overrides


def train_once(args: argparse.Namespace, config: str, seed: int) -> dict[str, float]:
    """Test metrics of one run (in percent; nan where the evaluation has no value), training it unless
    the run folder holds the metrics of a run with the same overrides."""
    run_dir = (args.out / "runs" / config / f"seed{seed}").resolve()
    overrides = run_overrides(args, config, seed, run_dir)
    metrics_file, previous = run_dir / "metrics.json", run_dir / ".hydra" / "overrides.yaml"
    # Hydra records the overrides except its own (hydra.run.dir).
    same_run = previous.is_file() and list(OmegaConf.load(previous)) == [
        o for o in overrides if not o.startswith("hydra.")
    ]
    if args.force or not (same_run and metrics_file.is_file()):
        metrics_file.unlink(missing_ok=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "kldet.cli.train", *overrides]
        start = time.perf_counter()
        with open(run_dir / "train.log", "w") as log:
            log.write(" ".join(command) + "\n")
            log.flush()
            finished = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        minutes = (time.perf_counter() - start) / 60
        if finished.returncode != 0 or not metrics_file.is_file():
            raise SystemExit(
                f"ablation: {config} seed {seed} failed after {minutes:.1f} min; see {run_dir / 'train.log'}"
            )
        print(f"{config} seed {seed}: {minutes:.1f} min", flush=True)
    values = json.loads(metrics_file.read_text())
    # The evaluation reports -1 for an area range without ground truth.
    return {m: 100 * values[f"test/{m}"] if values.get(f"test/{m}", -1) >= 0 else math.nan for m in METRICS}


def mean_and_spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value) of the values that are not nan."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


def format_table(results: dict[str, list[dict[str, float]]], seeds: list[int]) -> str:
    """Markdown table: one row per configuration, mean ± std over the seeds of every metric."""
    lines = [
        f"Synthetic tiny-object set, test = val split, AI-TOD protocol; mean ± sample std over seeds {seeds} (%).",
        "",
        "| configuration | " + " | ".join(METRICS) + " |",
        "|---|" + "---:|" * len(METRICS),
    ]
    for config, runs in results.items():
        cells = []
        for metric in METRICS:
            mean, spread = mean_and_spread([run[metric] for run in runs])
            cells.append("n/a" if math.isnan(mean) else f"{mean:.1f} ± {spread:.1f}")
        lines.append(f"| {CONFIGS[config][0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, list[dict[str, float]]]) -> Figure:
    """Grouped bars: one group per metric, one bar per configuration, error bars of one std."""
    figure = Figure(figsize=(9, 4), layout="constrained")
    axes = figure.subplots()
    positions = np.arange(len(METRICS))
    width = 0.8 / len(results)
    for k, (config, runs) in enumerate(results.items()):
        means, spreads = zip(*(mean_and_spread([run[m] for run in runs]) for m in METRICS), strict=True)
        offset = positions + (k - (len(results) - 1) / 2) * width
        axes.bar(offset, means, width, yerr=spreads, capsize=3, label=CONFIGS[config][0])
    axes.set_xticks(positions, METRICS)
    axes.set_ylabel("AP (%)")
    axes.set_title("synthetic tiny-object set, mean ± std over seeds")
    axes.grid(axis="y", alpha=0.3)
    axes.legend()
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/ablation"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(STEPS))
    parser.add_argument("--epochs", type=int, help="trainer.max_epochs of every run")
    parser.add_argument("--image-size", type=int, help="synthetic image side and data.max_size")
    parser.add_argument("--num-images", type=int, help="synthetic.num_images (train + val)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: " + ", ".join(f"{k}={v}" for k, v in QUICK.items())
    )
    parser.add_argument("--force", action="store_true", help="retrain runs that already have metrics")
    parser.add_argument("overrides", nargs="*", help="extra kldet-train overrides for every run")
    args = parser.parse_args()
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)

    start = time.perf_counter()
    # Seed-major order, so that an interrupted ablation already holds every configuration at the first seeds.
    runs_by_seed = [
        {config: train_once(args, config, seed) for config in args.configs} for seed in args.seeds
    ]
    results = {config: [runs[config] for runs in runs_by_seed] for config in args.configs}
    table = format_table(results, args.seeds)
    print(table)
    print(f"({(time.perf_counter() - start) / 60:.1f} min)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ablation.md").write_text(table)
    # nan (no value) as null, so that the file is standard JSON.
    runs = {
        config: {
            seed: {m: None if math.isnan(v) else v for m, v in run.items()}
            for seed, run in zip(args.seeds, runs, strict=True)
        }
        for config, runs in results.items()
    }
    (args.out / "ablation.json").write_text(json.dumps(runs, indent=2) + "\n")
    plot(results).savefig(args.out / "ablation.png", dpi=120)
    print(f"wrote {args.out / 'ablation.md'}, {args.out / 'ablation.json'} and {args.out / 'ablation.png'}")


if __name__ == "__main__":
    main()
