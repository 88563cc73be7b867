"""Ali-TSM and the hierarchical KLD assigner: speed and memory on an AI-TOD-sized image, against their
dense references.

    python benchmarks/bench_assign.py [--assigners alitsm hierarchical] [--gts 10 100 500 2000 5000]
        [--repeats 5] [--reference-max 500] [--threads T]

Setting: 800 x 800 image, ground truths with uniform centres and log-normal sides (median 11 px, like
AI-TOD's 12.8 px mean), aspect ~ logN(0, 0.3). Ali-TSM (``alitsm``): priors of P2-P6 (N = 53,294), C = 8
classes, logits ~ N(-2, 2^2). The two-stage model's RPN assigner (``hierarchical``,
``hierarchical_kld_assign``): the same boxes, on the receptive-field anchors of ``RFAnchorGenerator``
(N = 159,882).

Every G runs in a fresh subprocess so that its memory figure is its own:
- time: median of ``--repeats`` calls of the assigner after one warm-up call;
- peak extra memory: the process's peak resident set size during the calls minus its resident size
  just before them (inputs built, libraries loaded; the kernel's peak counter, VmHWM, is reset there
  through /proc/self/clear_refs), so it counts every byte the calls touched: torch tensors, allocator
  slack and Python objects;
- reference: one call of the dense reference (kldet/assign/reference.py: ``alitsm_assign_reference``,
  ``hierarchical_kld_assign_dense``, the spec on G x N matrices), for G <= ``--reference-max``, its peak
  extra memory measured the same way; the two results are also checked to be equal.
"""

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

import torch

from kldet.assign import alitsm_assign, hierarchical_kld_assign, receptive_field_priors
from kldet.assign.anchors import RFAnchorGenerator
from kldet.assign.reference import alitsm_assign_reference, hierarchical_kld_assign_dense

IMAGE_SIZE = (800, 800)
NUM_CLASSES = 8


def make_inputs(num_gts: int, seed: int = 0):
    """(cls_logits (N, C), priors (N, 4), gt_boxes (G, 4), gt_labels (G,)) of the benchmark setting."""
    generator = torch.Generator().manual_seed(seed)
    _, priors = receptive_field_priors(IMAGE_SIZE)
    logits = torch.randn(len(priors), NUM_CLASSES, generator=generator) * 2 - 2
    centres = torch.rand(num_gts, 2, generator=generator) * torch.tensor(IMAGE_SIZE[::-1])
    side = torch.exp(torch.randn(num_gts, 1, generator=generator) * 0.6 + math.log(11)).clamp(2, 128)
    aspect = torch.exp(torch.randn(num_gts, 1, generator=generator) * 0.3)
    half = torch.cat((side * aspect, side / aspect), dim=1) / 2
    boxes = torch.cat((centres - half, centres + half), dim=1)
    labels = torch.randint(0, NUM_CLASSES, (num_gts,), generator=generator)
    return logits, priors, boxes, labels


def make_anchor_inputs(num_gts: int, seed: int = 0):
    """(anchors (N, 4), gt_boxes (G, 4)): the RPN's anchors of the image and :func:`make_inputs`' boxes."""
    anchors = torch.cat(RFAnchorGenerator()(IMAGE_SIZE))
    return anchors, make_inputs(num_gts, seed)[2]


class Assigner(NamedTuple):
    title: str
    make_inputs: Callable[..., tuple[torch.Tensor, ...]]
    assign: Callable[..., torch.Tensor]
    reference: Callable[..., torch.Tensor]


ASSIGNERS = {
    "alitsm": Assigner("Ali-TSM", make_inputs, alitsm_assign, alitsm_assign_reference),
    "hierarchical": Assigner(
        "Hierarchical KLD (RPN)", make_anchor_inputs, hierarchical_kld_assign, hierarchical_kld_assign_dense
    ),
}


def resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def reset_peak_resident() -> None:
    """Make the kernel's peak resident size (VmHWM) start again from the current size."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def peak_resident_mb() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def run_case(num_gts: int, repeats: int, reference_max: int, assigner: str = "alitsm") -> dict:
    bench = ASSIGNERS[assigner]
    inputs = bench.make_inputs(num_gts)
    bench.assign(*bench.make_inputs(1, seed=1))  # load kernels outside the measurement
    reset_peak_resident()
    before = resident_mb()
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        assigned = bench.assign(*inputs)
        times.append(time.perf_counter() - start)
    peak = peak_resident_mb()
    result = {
        "gts": num_gts,
        "positives": int((assigned >= 0).sum()),
        "seconds": statistics.median(times[1:]),
        "peak_extra_mb": max(0.0, peak - before),
    }
    if num_gts <= reference_max:
        reset_peak_resident()
        before = resident_mb()
        start = time.perf_counter()
        expected = bench.reference(*inputs)
        result["reference_seconds"] = time.perf_counter() - start
        result["reference_peak_extra_mb"] = max(0.0, peak_resident_mb() - before)
        result["equal"] = bool(torch.equal(expected, assigned))
    return result


def run_case_in_subprocess(
    num_gts: int, repeats: int, reference_max: int, threads: int, assigner: str = "alitsm"
) -> dict:
    """:func:`run_case` in a fresh Python process on ``threads`` torch threads, so that its memory figure
    is its own."""
    command = [sys.executable, __file__, "--case", str(num_gts), "--repeats", str(repeats)]
    command += ["--reference-max", str(reference_max), "--threads", str(threads), "--assigners", assigner]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--assigners", nargs="+", choices=list(ASSIGNERS), default=list(ASSIGNERS))
    parser.add_argument("--gts", type=int, nargs="+", default=[10, 100, 500, 2000, 5000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reference-max", type=int, default=500)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--case", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.case is not None:
        print(json.dumps(run_case(args.case, args.repeats, args.reference_max, args.assigners[0])))
        return
    threads = torch.get_num_threads()
    for assigner in args.assigners:
        bench = ASSIGNERS[assigner]
        num_boxes = len(bench.make_inputs(0)[0])
        print(f"{bench.title}, {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}, N = {num_boxes:,}, ", end="")
        print(f"torch {torch.__version__}, {threads} threads\n")
        print(
            "| G | positives | time (median) | peak extra memory | dense reference | reference memory "
            "| speed-up | equal |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|:---:|")
        for num_gts in args.gts:
            row = run_case_in_subprocess(num_gts, args.repeats, args.reference_max, threads, assigner)
            reference = row.get("reference_seconds")
            cells = [
                f"{num_gts:,}",
                f"{row['positives']:,}",
                f"{row['seconds'] * 1000:.0f} ms",
                f"{row['peak_extra_mb']:.0f} MB",
                f"{reference:.2f} s" if reference is not None else "-",
                f"{row['reference_peak_extra_mb']:,.0f} MB" if reference is not None else "-",
                f"{reference / row['seconds']:.0f}x" if reference is not None else "-",
                ("yes" if row["equal"] else "NO") if reference is not None else "-",
            ]
            print("| " + " | ".join(cells) + " |", flush=True)
        print()


if __name__ == "__main__":
    main()
