"""Metrics as the Markdown tables papers print: percentages with one decimal, "-" where undefined."""

from __future__ import annotations

from kldet.evaluation.coco import PROTOCOLS
from kldet.evaluation.lrp import LRP_KEYS


def format_table(metrics: dict[str, float], kind: str, class_names: list[str]) -> str:
    """Markdown tables of ``metrics`` as :func:`kldet.evaluation.evaluate_detections` returns them.

    AI-TOD / COCO: one row of AP numbers, one of AR numbers, then AP per class; AI-TOD adds a row of oLRP
    numbers, and oLRP, its components and its score threshold to the per-class rows. VOC: the two mAP
    variants, then both per class.
    """
    if kind == "voc":
        summary = _table(
            ["mAP (VOC12, area)", "mAP (VOC07, 11-point)"], [[metrics["mAP"], metrics["mAP_07"]]]
        )
        per_class = _table(
            ["class", "AP (area)", "AP (11-point)"],
            [[name, metrics[f"AP_{name}"], metrics[f"AP07_{name}"]] for name in class_names],
        )
        return f"{summary}\n\n{per_class}"
    protocol = PROTOCOLS[kind]
    precision_keys = [k for k in protocol.summary_keys if k.startswith("AP")]
    recall_keys = [k for k in protocol.summary_keys if k.startswith("AR")]
    tables = [
        _table(precision_keys, [[metrics[k] for k in precision_keys]]),
        _table(recall_keys, [[metrics[k] for k in recall_keys]]),
    ]
    if not protocol.olrp:
        return "\n\n".join(
            [*tables, _table(["class", "AP"], [[name, metrics[f"AP_{name}"]] for name in class_names])]
        )
    per_class = [
        [name, metrics[f"AP_{name}"], *(metrics[f"{key}_{name}"] for key in LRP_KEYS)]
        + [_score(metrics[f"oLRP_threshold_{name}"])]
        for name in class_names
    ]
    return "\n\n".join(
        [
            *tables,
            _table(list(LRP_KEYS), [[metrics[k] for k in LRP_KEYS]]),
            _table(["class", "AP", *LRP_KEYS, "oLRP threshold"], per_class),
        ]
    )


def _table(header: list[str], rows: list[list]) -> str:
    cells = [header] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _score(value: float) -> str:
    """A detection score as is (not a percentage), "-" where undefined."""
    return "-" if value < 0 else f"{value:.3f}"


def _cell(value) -> str:
    if isinstance(value, str):
        return value
    return "-" if value < 0 else f"{100 * value:.1f}"
