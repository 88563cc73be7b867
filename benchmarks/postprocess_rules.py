"""AI-TOD metrics of a checkpoint under both post-processing rules (``candidates`` points and pairs).

    python benchmarks/postprocess_rules.py CKPT [kldet-eval overrides, e.g. experiment=synthetic split=val]

The network runs once per batch of the split; its raw maps are post-processed with each rule, the other
post-processing settings being the checkpoint's. Prints one Markdown row per rule (percentages) with the
number of detections kept.
"""

from __future__ import annotations

import dataclasses
import sys

import torch

from kldet.cli.evaluate import checkpoint_and_data, checkpoint_config
from kldet.evaluation import DetectionMetric, sample_ground_truth
from kldet.model.postprocess import CANDIDATE_RULES

KEYS = ("AP", "AP50", "AP_vt", "AP_t", "AR@1500", "oLRP")


def main(argv: list[str]) -> None:
    ckpt, overrides = argv[0], argv[1:]
    cfg = checkpoint_config([f"ckpt={ckpt}", *overrides])
    # The split read and normalised as kldet-eval does (the checkpoint's channel order, mean and std).
    module, datamodule = checkpoint_and_data(cfg)
    loader = datamodule.val_dataloader() if cfg.split == "val" else datamodule.test_dataloader()
    model = module.model.eval()
    metrics = {rule: DetectionMetric("aitod", datamodule.classes) for rule in CANDIDATE_RULES}
    counts = dict.fromkeys(CANDIDATE_RULES, 0)
    with torch.no_grad():
        for images, targets in loader:
            maps = model(images)
            sizes = [tuple(t["size"]) for t in targets]
            scales = [tuple(t["scale"]) for t in targets]
            truth = [sample_ground_truth(t) for t in targets]
            for rule in CANDIDATE_RULES:
                model.postprocessor = dataclasses.replace(model.postprocessor, candidates=rule)
                predictions = model.postprocess(*maps, tuple(images.shape[-2:]), sizes, scales)
                counts[rule] += sum(len(p["boxes"]) for p in predictions)
                metrics[rule].update(predictions, truth)
    print("| candidates | " + " | ".join(KEYS) + " | detections |")
    print("|---" * (len(KEYS) + 2) + "|")
    for rule in CANDIDATE_RULES:
        values = metrics[rule].compute()
        print(f"| {rule} | " + " | ".join(f"{100 * values[k]:.1f}" for k in KEYS) + f" | {counts[rule]} |")


if __name__ == "__main__":
    main(sys.argv[1:])
