"""kldet-eval: evaluate a COCO results file; prints the paper table and writes the metrics JSON.

    kldet-eval results=RES.json ann=ANN.json metric=aitod out=metrics.json
    kldet-eval results=RES.json metric=voc root=DIOR split=test

keys: results (COCO results JSON), ann (COCO annotation JSON; metric aitod or coco),
metric (aitod | coco | voc), root and split (DIOR / Pascal VOC data set; metric voc),
out (metrics JSON to write).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from kldet.errors import KLDetConfigError, KLDetError
from kldet.evaluation import evaluate_results_file, format_table


@dataclass
class EvaluateConfig:
    """Arguments of kldet-eval (``key=value``; a key not listed here is an error).

    Attributes:
        results: COCO results JSON to score.
        ann: COCO annotation JSON (metric aitod or coco).
        metric: "aitod", "coco" or "voc".
        root: DIOR / Pascal VOC data set root (metric voc).
        split: its ImageSets/Main split name (metric voc).
        out: where to write the metrics JSON; nothing is written without it.
    """

    results: str | None = None
    ann: str | None = None
    metric: str = "aitod"
    root: str | None = None
    split: str | None = None
    out: str | None = None


def parse_args(argv: list[str]) -> EvaluateConfig:
    """``key=value`` arguments into an :class:`EvaluateConfig`; anything else is a ``KLDetConfigError``."""
    bare = [arg for arg in argv if "=" not in arg]
    if bare:
        raise KLDetConfigError(f"arguments are key=value; got {' '.join(bare)!r}")
    try:
        config = OmegaConf.merge(OmegaConf.structured(EvaluateConfig), OmegaConf.from_dotlist(argv))
    except OmegaConfBaseException as e:
        known = ", ".join(EvaluateConfig.__dataclass_fields__)
        raise KLDetConfigError(f"{str(e).splitlines()[0]} (known keys: {known})") from None
    return OmegaConf.to_object(config)


def run(config: EvaluateConfig) -> dict[str, float]:
    """Evaluates, prints the table, writes ``config.out``; returns the metrics."""
    if config.results is None:
        raise KLDetConfigError("results= (a COCO results JSON) is required")
    metrics, class_names = evaluate_results_file(
        config.results, ann=config.ann, metric=config.metric, root=config.root, split=config.split
    )
    print(format_table(metrics, config.metric, class_names))
    if config.out is not None:
        out = Path(config.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(metrics, indent=2) + "\n")
        print(f"\nmetrics written to {out}")
    return metrics


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in argv):
        print(__doc__.strip())
        return 0
    try:
        run(parse_args(argv))
    except (KLDetError, OSError) as e:  # OSError: the output cannot be written
        print(f"kldet-eval: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
