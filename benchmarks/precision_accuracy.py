"""What bf16 inference changes in a trained checkpoint's detections, against fp32.

    python benchmarks/precision_accuracy.py CKPT [kldet-eval overrides, e.g. experiment=synthetic split=val]

Each batch of the split runs through the network in fp32, under bf16 autocast with channels_last, and so
with the batch norms folded into the convs (what ``kldet-predict precision=bf16`` does, ``fold_batchnorm``); both are post-processed in fp32 with the checkpoint's settings and
evaluated with the AI-TOD protocol. Prints the metrics of both (percentages) and, for the fp32 detections
with score >= 0.3, how far the bf16 detection of the same class that overlaps it most lies (IoU, largest
corner shift in pixels), for each of the two bf16 modes.
"""

from __future__ import annotations

import copy
import sys

import torch
from torchvision.ops import box_iou

from kldet.cli.evaluate import checkpoint_and_data, checkpoint_config
from kldet.evaluation import DetectionMetric, sample_ground_truth
from kldet.inference.precision import autocast
from kldet.model import fold_batchnorm

KEYS = ("AP", "AP50", "AP_vt", "AP_t", "AR@1500")
CONFIDENT = 0.3


def main(argv: list[str]) -> None:
    ckpt, overrides = argv[0], argv[1:]
    cfg = checkpoint_config([f"ckpt={ckpt}", *overrides])
    # The split read and normalised as kldet-eval does (the checkpoint's channel order, mean and std).
    module, datamodule = checkpoint_and_data(cfg)
    loader = datamodule.val_dataloader() if cfg.split == "val" else datamodule.test_dataloader()
    model = module.model.eval()
    folded = copy.deepcopy(model)
    fold_batchnorm(folded)
    # name: (precision, memory format, network); the first is the reference.
    modes = {
        "fp32": ("fp32", torch.contiguous_format, model),
        "bf16 + channels_last": ("bf16", torch.channels_last, model),
        "bf16 + channels_last + folded BN": ("bf16", torch.channels_last, folded),
    }
    metrics = {mode: DetectionMetric("aitod", datamodule.classes) for mode in modes}
    ious = {mode: [] for mode in list(modes)[1:]}
    shifts = {mode: [] for mode in list(modes)[1:]}
    with torch.no_grad():
        for images, targets in loader:
            sizes = [tuple(t["size"]) for t in targets]
            scales = [tuple(t["scale"]) for t in targets]
            truth = [sample_ground_truth(t) for t in targets]
            results = {}
            for mode, (precision, layout, network) in modes.items():
                network.to(memory_format=layout)
                with autocast(precision, "cpu"):
                    maps = network(images.contiguous(memory_format=layout))
                results[mode] = network.postprocess(*maps, tuple(images.shape[-2:]), sizes, scales)
                metrics[mode].update(results[mode], truth)
            for mode in ious:
                for reference, other in zip(results["fp32"], results[mode], strict=True):
                    confident = reference["scores"] >= CONFIDENT
                    if not confident.any() or not len(other["boxes"]):
                        continue
                    boxes, labels = reference["boxes"][confident], reference["labels"][confident]
                    overlap = box_iou(boxes, other["boxes"]) * (labels[:, None] == other["labels"][None])
                    best, match = overlap.max(dim=1)
                    ious[mode].append(best)
                    shifts[mode].append((boxes - other["boxes"][match]).abs().amax(dim=1))
    print("| inference | " + " | ".join(KEYS) + " |")
    print("|---" * (len(KEYS) + 1) + "|")
    for mode in modes:
        values = metrics[mode].compute()
        print(f"| {mode} | " + " | ".join(f"{100 * values[k]:.2f}" for k in KEYS) + " |")
    for mode in ious:
        iou, shift = torch.cat(ious[mode]), torch.cat(shifts[mode])
        matched = iou > 0.5
        print(
            f"\n{mode}: of {len(iou)} fp32 detections with score >= {CONFIDENT}, {int(matched.sum())} have a box "
            f"of their class with IoU > 0.5 (median IoU {float(iou.median()):.3f}); corner shift of those: median "
            f"{float(shift[matched].median()):.3f} px, 99th percentile {float(shift[matched].quantile(0.99)):.3f} "
            f"px, max {float(shift[matched].max()):.3f} px"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
