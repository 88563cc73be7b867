"""The number format and memory layout a detector runs its network in for inference.

``precision`` is "fp32", "bf16", "fp16" (autocast of the network's forward pass; post-processing, decode
and NMS stay fp32) or "auto": bf16 where the device computes it natively (CUDA with bf16 support; CPUs with
AVX-512-BF16 or AMX), fp32 elsewhere. bf16 keeps fp32's exponent range, so nothing overflows; fp16 is for
older GPUs. ``benchmarks/bench_predict.py`` measures the speed of each, ``benchmarks/precision_accuracy.py``
what bf16 changes in the detections. ``channels_last`` (NHWC) suits both oneDNN on CPUs and tensor cores.
"""

import contextlib

import torch

from kldet.errors import KLDetConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware (so bf16 autocast is faster, not emulated)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """ "fp32", "bf16" or "fp16" for ``precision`` (one of :data:`PRECISIONS`) on ``device``.

    Raises:
        KLDetConfigError: an unknown precision.
    """
    if precision not in PRECISIONS:
        raise KLDetConfigError(f"precision={precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if native_bf16(torch.device(device)) else "fp32"
    return precision


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The autocast context of a resolved ``precision`` on ``device`` (none for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=_DTYPES[precision])
