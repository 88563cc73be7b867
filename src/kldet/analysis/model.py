"""What a detector costs, part by part: parameters, FLOPs and CPU latency of the backbone body, the FPN,
the task-level attention (TlA) and the head on each pyramid level, at one input size.

The parts are run one after another on the outputs of the previous part, exactly as
:meth:`kldet.model.KLDet.forward` chains them, so their FLOPs add up to the FLOPs of the whole forward.
FLOPs are those :class:`torch.utils.flop_counter.FlopCounterMode` counts (2 per multiply-add of the
convolutions and matrix products; element-wise operations, normalisation and pooling count 0).
"""

import statistics
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kldet.errors import KLDetConfigError
from kldet.model import KLDet, ResNetFPN


class PartCost(NamedTuple):
    """The cost of one part of the forward at one input size."""

    part: str
    parameters: int  # parameters the part owns (the shared head's count once, on the row "head (shared)")
    flops: int
    seconds: float | None  # median wall time of one forward of the part; None: not timed


def count_flops(run: Callable[[], Any]) -> int:
    """FLOPs of ``run()`` as :class:`~torch.utils.flop_counter.FlopCounterMode` counts them."""
    counter = FlopCounterMode(display=False)
    with counter:
        run()
    return counter.get_total_flops()


def median_seconds(run: Callable[[], Any], repeats: int, warmup: int = 1) -> float | None:
    """Median wall time of ``repeats`` calls of ``run()`` after ``warmup`` calls (None for no repeats)."""
    if repeats < 1:
        return None
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _parameters(*modules: nn.Module | None) -> int:
    return sum(p.numel() for module in modules if module is not None for p in module.parameters())


@torch.inference_mode()
def model_costs(model: KLDet, image_size: int, repeats: int = 3) -> list[PartCost]:
    """Parameters, FLOPs and median CPU seconds per part of ``model`` on one zero image.

    Args:
        model: a detector on a :class:`kldet.model.ResNetFPN` backbone.
        image_size: side S of the (1, 3, S, S) input.
        repeats: timed forwards per part (after one warm-up); 0 skips timing (``seconds`` None).

    Returns:
        rows "backbone body", "FPN", "TlA" (absent without attention), "head P<k>" per level (parameters
        0: the head is shared), "head (shared)" (its parameters, the sum of the level rows' FLOPs and
        seconds), then "total": the whole forward measured on its own (parameters of the whole model).
    """
    if not isinstance(model, KLDet):
        raise KLDetConfigError(
            f"model costs per part are for the single-stage KLDet; a {type(model).__name__} has other parts "
            "(benchmarks/bench_two_stage.py times the two-stage model)"
        )
    if not isinstance(model.backbone, ResNetFPN):
        raise TypeError(f"model_costs needs a ResNetFPN backbone, got {type(model.backbone).__name__}")
    model.eval()
    images = torch.zeros((1, 3, image_size, image_size))
    backbone = model.backbone
    features = backbone.body(images)
    pyramid = list(backbone.fpn(features).values())
    attended = [model.attention(level) for level in pyramid] if model.attention is not None else pyramid

    def row(part: str, parameters: int, run: Callable[[], Any]) -> PartCost:
        return PartCost(part, parameters, count_flops(run), median_seconds(run, repeats))

    rows = [
        row("backbone body", _parameters(backbone.body), lambda: backbone.body(images)),
        row("FPN", _parameters(backbone.fpn), lambda: backbone.fpn(features)),
    ]
    if model.attention is not None:
        rows.append(
            row("TlA", _parameters(model.attention), lambda: [model.attention(level) for level in pyramid])
        )
    head_rows = [
        row(
            f"head P{level}", 0, lambda feature=feature, index=index: model.head.forward_level(feature, index)
        )
        for index, (level, feature) in enumerate(zip(backbone.levels, attended, strict=True))
    ]
    rows += head_rows
    rows.append(
        PartCost(
            "head (shared)",
            _parameters(model.head),
            sum(r.flops for r in head_rows),
            None if repeats < 1 else sum(r.seconds for r in head_rows),
        )
    )
    rows.append(row("total", _parameters(model), lambda: model(images)))
    return rows


def format_costs(rows: list[PartCost], image_size: int) -> str:
    """A markdown table of :func:`model_costs` rows: parameters (M), GFLOPs, share of the total FLOPs, ms."""
    total = rows[-1].flops or 1
    lines = [
        f"Input 1 x 3 x {image_size} x {image_size}; FLOPs as torch.utils.flop_counter counts them "
        "(2 per multiply-add of convolutions and matrix products; element-wise operations count 0); "
        "CPU ms: median of the timed forwards.",
        "",
        "| part | parameters (M) | GFLOPs | FLOPs share (%) | CPU ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        parameters = f"{r.parameters / 1e6:.2f}" if r.parameters else "-"
        milliseconds = "-" if r.seconds is None else f"{1000 * r.seconds:.1f}"
        lines.append(
            f"| {r.part} | {parameters} | {r.flops / 1e9:.2f} | {100 * r.flops / total:.1f} | {milliseconds} |"
        )
    return "\n".join(lines)
