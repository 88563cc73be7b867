"""The files of ``kldet-eval ... plots=DIR``: PR curves, confusion matrix, TIDE error breakdown (PNG + JSON /
CSV) and drawn examples, from one :func:`kldet.evaluation.coco.coco_evaluation`.

Matplotlib draws through ``matplotlib.figure.Figure`` (no pyplot, no GUI backend); the examples through
:mod:`kldet.inference.render`, as ``kldet-data show`` does.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from kldet.analysis.diagnostics import (
    BACKGROUND_IOU,
    ERROR_TYPES,
    FALSE_POSITIVE,
    FOREGROUND_IOU,
    NOT_COUNTED,
    SCORE_THRESHOLD,
    TRUE_POSITIVE,
    ErrorBreakdown,
    Outcomes,
    PRCurves,
    confusion_matrix,
    error_breakdown,
    match_outcomes,
    pr_curves,
    row_normalised,
)
from kldet.data.images import load_image
from kldet.evaluation.coco import CocoEvaluation
from kldet.evaluation.cocoeval import CocoArrays
from kldet.inference.render import PALETTE, auto_scale, draw_example, save_image


def write_analysis(
    out: str | Path,
    evaluation: CocoEvaluation,
    *,
    score_thresh: float = SCORE_THRESHOLD,
    image_paths: Mapping[int, Path] | None = None,
    examples: int = 4,
    scale: int = 0,
) -> tuple[list[Path], list[ErrorBreakdown]]:
    """Writes the analysis of ``evaluation`` under ``out``.

    Files: ``pr_curves.json`` and ``pr_curves_iou50.png`` / ``pr_curves_iou50-95.png`` (per class and size
    bin); ``confusion_matrix.csv`` (counts), ``confusion_matrix_normalised.csv`` (rows sum to 1) and
    ``confusion_matrix.png``; ``errors.json``, ``errors.csv`` and ``errors.png`` (TIDE dAP per size bin);
    with ``image_paths`` (image id -> file), ``examples/<image id>.png`` for the ``examples`` images with the
    most false positives and misses.

    Args:
        score_thresh: the detections the confusion matrix and the examples count.
        scale: upscale factor of the examples; 0 picks one (:func:`kldet.inference.render.auto_scale`).

    Returns:
        The paths written and the error breakdown (:func:`~kldet.analysis.diagnostics.error_breakdown`).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    curves = pr_curves(evaluation)
    written.append(_write_json(out / "pr_curves.json", curves.to_json()))
    for i, name in enumerate(("iou50", "iou50-95")):
        path = out / f"pr_curves_{name}.png"
        plot_pr_curves(curves, i).savefig(path, dpi=80)
        written.append(path)

    counts = confusion_matrix(evaluation, score_thresh)
    rows = [*evaluation.class_names, "background"]
    columns = [*evaluation.class_names, "missed"]
    written.append(_write_matrix(out / "confusion_matrix.csv", counts, rows, columns))
    written.append(
        _write_matrix(out / "confusion_matrix_normalised.csv", row_normalised(counts), rows, columns)
    )
    plot_confusion_matrix(counts, rows, columns, score_thresh).savefig(out / "confusion_matrix.png", dpi=80)
    written.append(out / "confusion_matrix.png")

    breakdowns = error_breakdown(evaluation)
    written.append(_write_json(out / "errors.json", errors_json(breakdowns)))
    with (out / "errors.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(
            ["area", "AP50", *(f"dAP_{e}" for e in ERROR_TYPES), *(f"n_{e}" for e in ERROR_TYPES)]
        )
        for b in breakdowns:
            writer.writerow(
                [
                    b.area,
                    _round(b.ap),
                    *(_round(b.delta_ap[e]) for e in ERROR_TYPES),
                    *(b.counts[e] for e in ERROR_TYPES),
                ]
            )
    written.append(out / "errors.csv")
    plot_error_breakdown(breakdowns).savefig(out / "errors.png", dpi=80)
    written.append(out / "errors.png")

    if image_paths is not None and examples > 0:
        written += write_examples(out / "examples", evaluation, image_paths, examples, score_thresh, scale)
    return written, breakdowns


# TIDE's short names of the error types, for the printed table.
SHORT_NAMES = {
    "classification": "Cls",
    "localisation": "Loc",
    "both": "Both",
    "duplicate": "Dupe",
    "background": "Bkg",
    "missed": "Miss",
}


def errors_json(breakdowns: list[ErrorBreakdown]) -> dict:
    """The breakdowns as JSON: the thresholds and, per area range, AP50, dAP and counts per error type."""
    return {
        "foreground_iou": FOREGROUND_IOU,
        "background_iou": BACKGROUND_IOU,
        "areas": {
            b.area: {
                "AP50": _round(b.ap),
                "dAP": {e: _round(v) for e, v in b.delta_ap.items()},
                "counts": b.counts,
            }
            for b in breakdowns
        },
    }


def format_errors(breakdowns: list[ErrorBreakdown]) -> str:
    """A plain-text table: one row per area range, AP50 and the dAP of each error type (TIDE's short names), in
    points."""
    header = f"{'area':<6}{'AP50':>7}" + "".join(f"{SHORT_NAMES[e]:>7}" for e in ERROR_TYPES)
    lines = [
        f"TIDE error breakdown (dAP50 if fixed, points; IoU fg {FOREGROUND_IOU}, bg {BACKGROUND_IOU})",
        header,
    ]
    for b in breakdowns:
        if b.ap < 0:
            lines.append(f"{b.area:<6}{'-':>7}" + "".join(f"{'-':>7}" for _ in ERROR_TYPES))
            continue
        lines.append(
            f"{b.area:<6}{100 * b.ap:7.1f}" + "".join(f"{100 * b.delta_ap[e]:7.1f}" for e in ERROR_TYPES)
        )
    return "\n".join(lines)


def plot_pr_curves(curves: PRCurves, iou: int) -> Figure:
    """One panel per area range: the PR curve of each class (its drawing colour) and of all classes (bold
    black), AP in the legend."""
    figure = Figure(figsize=(3.2 * len(curves.areas), 3.2), layout="constrained")
    axes = figure.subplots(1, len(curves.areas), sharey=True, squeeze=False)[0]
    for a, (axis, area) in enumerate(zip(axes, curves.areas, strict=True)):
        for k, name in enumerate(curves.classes):
            precision = curves.precision[iou, k, a]
            if np.isnan(precision).all():
                continue
            overall = name == "all"
            axis.plot(
                curves.recall,
                precision,
                label=f"{name} {100 * precision.mean():.1f}",
                color="black" if overall else np.array(PALETTE[k % len(PALETTE)]) / 255,
                linewidth=2 if overall else 1,
            )
        axis.set_title(f"area {area}, IoU {curves.ious[iou]}", fontsize=9)
        axis.set_xlabel("recall")
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1.02)
        axis.legend(fontsize=6, title="AP", title_fontsize=6, loc="lower left")
    axes[0].set_ylabel("precision")
    return figure


def plot_confusion_matrix(
    counts: np.ndarray, rows: list[str], columns: list[str], score_thresh: float
) -> Figure:
    """Counts (left) and row-normalised shares (right) as heat maps with the numbers written in."""
    size = 1.2 + 0.45 * len(rows)
    figure = Figure(figsize=(2 * size + 1, size), layout="constrained")
    shares = row_normalised(counts)
    for axis, values, title, fmt in zip(
        figure.subplots(1, 2), (counts, shares), ("counts", "row-normalised"), ("{:d}", "{:.2f}"), strict=True
    ):
        axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        for (i, j), value in np.ndenumerate(values):
            if counts[i, j]:
                text = fmt.format(int(value) if fmt == "{:d}" else value)
                axis.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if shares[i, j] > 0.5 else "black",
                )
        axis.set_xticks(range(len(columns)), columns, rotation=45, ha="right", fontsize=7)
        axis.set_yticks(range(len(rows)), rows, fontsize=7)
        axis.set_xlabel("predicted")
        axis.set_ylabel("ground truth")
        axis.set_title(f"{title} (IoU {FOREGROUND_IOU}, score >= {score_thresh:g})", fontsize=8)
    return figure


def plot_error_breakdown(breakdowns: list[ErrorBreakdown]) -> Figure:
    """Grouped bars: the dAP50 of each error type, one group per area range with objects."""
    shown = [b for b in breakdowns if b.ap >= 0]
    figure = Figure(figsize=(1.6 + 1.3 * len(shown), 3.2), layout="constrained")
    axis = figure.subplots()
    width = 0.8 / len(ERROR_TYPES)
    for i, error in enumerate(ERROR_TYPES):
        axis.bar(
            np.arange(len(shown)) + (i - (len(ERROR_TYPES) - 1) / 2) * width,
            [100 * b.delta_ap[error] for b in shown],
            width,
            label=error,
        )
    axis.set_xticks(range(len(shown)), [f"{b.area}\nAP50 {100 * b.ap:.1f}" for b in shown], fontsize=8)
    axis.set_ylabel("dAP50 if fixed (points)")
    axis.set_title("TIDE error breakdown by size bin", fontsize=9)
    axis.legend(fontsize=7)
    return figure


def write_examples(
    out: Path,
    evaluation: CocoEvaluation,
    image_paths: Mapping[int, Path],
    count: int,
    score_thresh: float,
    scale: int = 0,
) -> list[Path]:
    """``out/<image id>.png`` for the ``count`` images with the most false positives and misses at
    ``score_thresh`` (ties: lower id): ground truth beside true positives, false positives and misses
    (:func:`kldet.inference.render.draw_example`)."""
    objects, detections = evaluation.objects, evaluation.detections
    outcomes = match_outcomes(objects, detections, evaluation.protocol.max_dets[-1], score_thresh)
    wrong = detections.image_ids[outcomes.detection == FALSE_POSITIVE]
    missed = objects.image_ids[outcomes.missed]
    image_ids, errors = np.unique(np.concatenate([wrong, missed]), return_counts=True)
    chosen = image_ids[np.lexsort((image_ids, -errors))][:count]
    written = []
    for image_id in chosen.tolist():
        path = out / f"{image_id}.png"
        drawing = draw_image_outcomes(
            load_image(image_paths[image_id]),
            objects,
            detections,
            outcomes,
            image_id,
            evaluation.category_ids,
            evaluation.class_names,
            scale=scale,
        )
        save_image(path, drawing)
        written.append(path)
    return written


def draw_image_outcomes(
    image: np.ndarray,
    objects: CocoArrays,
    detections: CocoArrays,
    outcomes: Outcomes,
    image_id: int,
    category_ids: np.ndarray,
    class_names: list[str],
    *,
    scale: int = 0,
    shown_categories: np.ndarray | None = None,
    show_labels: bool = False,
) -> np.ndarray:
    """:func:`~kldet.inference.render.draw_example` of image ``image_id``: its objects beside its true
    positives, false positives and misses (:class:`~kldet.analysis.diagnostics.Outcomes`); crowd boxes and
    uncounted detections left out, and with ``shown_categories`` every other category.

    Args:
        image: (H, W, 3) uint8 RGB; scale: upscale factor, 0 for :func:`~kldet.inference.render.auto_scale`.
        category_ids: (K,) sorted ids, the classes ``class_names`` name.
    """

    def drawn(arrays: CocoArrays) -> np.ndarray:
        return (
            np.ones(len(arrays.scores), bool)
            if shown_categories is None
            else np.isin(arrays.category_ids, shown_categories)
        )

    rows = np.flatnonzero((objects.image_ids == image_id) & ~objects.crowd & drawn(objects))
    shown = np.flatnonzero(
        (detections.image_ids == image_id) & (outcomes.detection != NOT_COUNTED) & drawn(detections)
    )
    return draw_example(
        image,
        _xyxy(objects.boxes[rows]),
        np.searchsorted(category_ids, objects.category_ids[rows]),
        class_names,
        outcomes=(
            _xyxy(detections.boxes[shown]),
            outcomes.detection[shown] == TRUE_POSITIVE,
            outcomes.missed[rows],
        ),
        scale=scale or auto_scale(*image.shape[:2]),
        show_labels=show_labels,
    )


def _xyxy(boxes: np.ndarray) -> np.ndarray:
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def _write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def _write_matrix(path: Path, values: np.ndarray, rows: list[str], columns: list[str]) -> Path:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["ground_truth \\ predicted", *columns])
        for name, row in zip(rows, values, strict=True):
            writer.writerow(
                [name, *(int(v) if values.dtype.kind == "i" else round(float(v), 6) for v in row)]
            )
    return path


def _round(value: float) -> float:
    return round(float(value), 6)
