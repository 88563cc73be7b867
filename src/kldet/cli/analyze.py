"""``kldet-analyze``: what KLDet would do on a data set, and what a model costs, without training.

kldet-analyze assign format=aitod|dior|coco ann=FILE images=DIR [root=DIR split=NAME] [max_size=800]
                     [per_class=false] [out=DIR] [progress=true]
    "Should I use KLDet on my data?": per AI-TOD size bin, the share of the ground truths that get no
    positive point and the mean positives per ground truth under FCOS P3-P7, FCOS P2-P6, ATSS P2-P6,
    Ali-TSM P2-P6 and the two-stage model's RPN assigner (Hierarchical KLD P2-P6: positive anchors), on
    the boxes as training scales them (longer side to max_size). Ali-TSM sees the constant
    classification logit of a freshly initialised head (its choice is then purely geometric).
    Images are opened for their header (size) only, never decoded; out=DIR writes assignment.md,
    assignment.json and assignment.png there.
kldet-analyze model [model=kldet_r50_caffe|kldet_r50|kldet_r18|fcos_r50] [size=800] [channels=256]
                    [backbone=resnet50] [out=DIR]
    parameters, FLOPs and CPU latency of the preset (random weights) per part: backbone body, FPN, TlA,
    head per pyramid level, total; out=DIR writes model.md and model.json there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import warnings
from collections.abc import Iterator, Sequence
from enum import Enum
from pathlib import Path

import torch
from tqdm import tqdm

from kldet.cli.data import DataSetKeys
from kldet.cli.dotlist import check_writable_folder, option, run_dotlist_cli
from kldet.cli.report import EXIT_OK, report_error
from kldet.errors import KLDetConfigError

USAGE = (__doc__ or "").split("\n\n", 1)[1]


@dataclasses.dataclass
class AssignConfig(DataSetKeys):
    """``kldet-analyze assign``: ``ann`` + ``images`` (aitod, coco) or ``root`` + ``split`` (any format);
    the images' headers are read, the images never decoded."""

    max_size: int | None = option(800, "longer image side in training (data.max_size); null: native size")
    per_class: bool = option(False, "add the tables of each class")
    score_noise: float = option(
        0.0, "std of Gaussian noise on the constant Ali-TSM logits (0: initialisation)"
    )
    out: str | None = option(None, "folder for assignment.md, assignment.json and assignment.png")
    progress: bool = option(True, "progress bars on stderr")
    threads: int = option(1, "torch threads (one is fastest on these small tensors)")


class ModelPreset(Enum):
    kldet_r50_caffe = "kldet_r50_caffe"
    kldet_r50 = "kldet_r50"
    kldet_r18 = "kldet_r18"
    fcos_r50 = "fcos_r50"


@dataclasses.dataclass
class ModelConfig:
    """``kldet-analyze model``: the preset with random weights, on one (1, 3, size, size) zero image."""

    model: ModelPreset = option(ModelPreset.kldet_r50_caffe, "preset of kldet.model.PRESETS")
    size: int = option(800, "input side in pixels (multiple of 32)")
    num_classes: int = option(8, "classes of the head (AI-TOD: 8)")
    channels: int | None = option(None, "pyramid and head channels (default: the preset's)")
    backbone: str | None = option(None, "resnet18|resnet34|resnet50|resnet101 (default: the preset's)")
    repeats: int = option(3, "timed forwards per part after one warm-up (0: no timing)")
    threads: int | None = option(None, "torch threads for the timing (default: torch's, one per core)")
    out: str | None = option(None, "folder for model.md and model.json")


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Runs the block with ``threads`` torch intra-op threads (None: as they are), then restores them."""
    before = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise KLDetConfigError(f"threads={threads}: must be at least 1")
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else value


def assign(config: AssignConfig) -> str:
    """Runs ``kldet-analyze assign``; prints the tables and returns the closing line."""
    from kldet.analysis.assignment import (
        count_positives,
        format_statistics,
        plot_statistics,
        record_scenes,
    )

    if config.max_size is not None and config.max_size < 1:
        raise KLDetConfigError(f"max_size={config.max_size}: must be positive (or null for the native size)")
    out = Path(config.out) if config.out is not None else None
    if out is not None:
        check_writable_folder("out", out)
    with torch_threads(config.threads):
        dataset = config.read(progress=config.progress)
        if not dataset.records:
            raise KLDetConfigError(f"{dataset.source}: no usable image (see kldet-data check)")
        scenes = tqdm(
            record_scenes(dataset.records, config.max_size),
            total=len(dataset.records),
            desc="assigning",
            file=sys.stderr,
            disable=not config.progress,
        )
        counted = count_positives(scenes, len(dataset.classes), config.score_noise)
    resize = "native size" if config.max_size is None else f"longer side scaled to {config.max_size} px"
    scores = (
        "constant logits (initialisation)" if config.score_noise == 0 else f"logit noise {config.score_noise}"
    )
    setting = (
        f"{dataset.source}: {len(dataset.records)} images, {len(counted.labels)} training boxes, {resize}; "
        f"Ali-TSM scores: {scores}; sizes are sqrt(box area) in the scaled image."
    )
    sections = {"all classes": counted.statistics()}
    if config.per_class:
        sections |= {name: counted.statistics(label) for label, name in enumerate(dataset.classes)}
    text = [setting, ""]
    for title, statistics in sections.items():
        if config.per_class:
            text += [f"### {title}", ""]
        text += [format_statistics(statistics), ""]
    table = "\n".join(text)
    print(table)
    skipped = (
        f"; {len(dataset.problems)} problem(s) skipped (see kldet-data check)" if dataset.problems else ""
    )
    if out is None:
        return f"counted {len(counted.labels)} ground truths{skipped}"
    (out / "assignment.md").write_text(table)
    payload = {
        "source": str(dataset.source),
        "images": len(dataset.records),
        "max_size": config.max_size,
        "score_noise": config.score_noise,
        "tables": {
            title: {
                name: [
                    {
                        **s._asdict(),
                        "zero_fraction": _json_number(s.zero_fraction),
                        "mean_positives": _json_number(s.mean_positives),
                    }
                    for s in bins
                ]
                for name, bins in statistics.items()
            }
            for title, statistics in sections.items()
        },
    }
    (out / "assignment.json").write_text(json.dumps(payload, indent=2))
    plot_statistics(sections["all classes"]).savefig(out / "assignment.png", dpi=120)
    return (
        f"counted {len(counted.labels)} ground truths{skipped}; wrote assignment.md, .json and .png to {out}"
    )


def model(config: ModelConfig) -> str:
    """Runs ``kldet-analyze model``; prints the table and returns the closing line."""
    from kldet.analysis.model import format_costs, model_costs
    from kldet.model import PRESETS

    if config.size < 32 or config.size % 32:
        raise KLDetConfigError(f"size={config.size}: must be a positive multiple of 32")
    if config.repeats < 0:
        raise KLDetConfigError(f"repeats={config.repeats}: must be 0 or more")
    out = Path(config.out) if config.out is not None else None
    if out is not None:
        check_writable_folder("out", out)
    with torch_threads(config.threads):
        options = {"channels": config.channels, "backbone": config.backbone}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*starts from random weights")
            detector = PRESETS[config.model.value](
                num_classes=config.num_classes,
                weights=None,
                **{key: value for key, value in options.items() if value is not None},
            )
        rows = model_costs(detector, config.size, config.repeats)
        threads = torch.get_num_threads()
    table = f"{config.model.value} (random weights)\n\n{format_costs(rows, config.size)}\n"
    print(table)
    if out is None:
        return f"{config.model.value}: {rows[-1].parameters / 1e6:.2f} M parameters, {rows[-1].flops / 1e9:.2f} GFLOPs"
    (out / "model.md").write_text(table)
    payload = {
        "model": config.model.value,
        "size": config.size,
        "num_classes": config.num_classes,
        "threads": threads,
        "parts": [r._asdict() for r in rows],
    }
    (out / "model.json").write_text(json.dumps(payload, indent=2))
    return f"wrote model.md and model.json to {out}"


COMMANDS = {"assign": (AssignConfig, assign), "model": (ModelConfig, model)}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``kldet-analyze assign|model key=value ...``; exit status as every kldet CLI
    (:mod:`kldet.cli.report`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return EXIT_OK
    if not argv or argv[0] not in COMMANDS:
        got = f"unknown command {argv[0]!r}" if argv else "no command"
        return report_error("kldet-analyze", f"{got}: use assign or model (see kldet-analyze --help)")
    schema, action = COMMANDS[argv[0]]
    return run_dotlist_cli(schema, argv[1:], f"kldet-analyze {argv[0]}", schema.__doc__, action)


if __name__ == "__main__":
    sys.exit(main())
