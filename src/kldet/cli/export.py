"""kldet-export: write a checkpoint's network forward as TorchScript, ONNX or a torch.export program.

Usage::

    kldet-export ckpt=last.ckpt format=torchscript|onnx|pt2 out=FILE [image_size=800]

The exported graph maps normalised (B, 3, H, W) images to the raw per-level maps; decoding, score
threshold and NMS are left to :meth:`kldet.model.KLDet.postprocess` (see :mod:`kldet.inference.export`).
A JSON file beside the export (``out`` + ``.json``) records what post-processing needs: strides, classes,
category ids, normalisation (channel order, mean, std) and the post-processing thresholds.
"""

import dataclasses
import enum
import json
import sys
from pathlib import Path

from omegaconf import MISSING
from torch.onnx import _constants as onnx_constants

from kldet.checkpoint import load_detector
from kldet.cli.dotlist import check_writable_folder, option, run_dotlist_cli
from kldet.errors import KLDetConfigError
from kldet.inference.export import export_model, output_names
from kldet.model import InputNormalization


class ExportFormat(str, enum.Enum):
    torchscript = "torchscript"
    onnx = "onnx"
    pt2 = "pt2"


@dataclasses.dataclass
class ExportConfig:
    """Settings of kldet-export (every key can be given as key=value)."""

    ckpt: str = option(MISSING, "checkpoint file (.ckpt)")
    format: ExportFormat = option(MISSING, "torchscript, onnx or pt2 (torch.export)")
    out: str = option(MISSING, "file to write")
    image_size: int = option(800, "example input side: multiple of 32, >= 96; other such sizes run too")
    opset: int | None = option(
        None,
        f"ONNX opset, {onnx_constants.ONNX_MIN_OPSET}..{onnx_constants.ONNX_MAX_OPSET} "
        "(default: the exporter's)",
    )


def _check(config: ExportConfig) -> None:
    """Settings that cannot work, as one message before the checkpoint is loaded."""
    if config.image_size < 32 or config.image_size % 32:
        raise KLDetConfigError(f"image_size={config.image_size}: must be a positive multiple of 32")
    if config.opset is not None:
        if config.format is not ExportFormat.onnx:
            raise KLDetConfigError(f"opset={config.opset}: only format=onnx takes an opset")
        low, high = onnx_constants.ONNX_MIN_OPSET, onnx_constants.ONNX_MAX_OPSET
        if not low <= config.opset <= high:
            raise KLDetConfigError(f"opset={config.opset}: this torch exports ONNX opsets {low}..{high}")
    out = Path(config.out)
    if out.is_dir():
        raise KLDetConfigError(f"out={out}: is a folder; give the file to write")
    check_writable_folder("out", out.parent)


def export(config: ExportConfig) -> Path:
    """Export as an :class:`ExportConfig` says; returns the written model path."""
    _check(config)
    model, meta = load_detector(config.ckpt)
    path = export_model(
        model,
        config.out,
        config.format.value,
        (config.image_size, config.image_size),
        config.opset,
    )
    normalization = InputNormalization.from_preprocess(meta["preprocess"])
    sidecar = {
        "format": config.format.value,
        "input": {
            "name": "images",
            "layout": f"(B, 3, H, W) float32, {normalization.channel_order}, (pixel - mean) / std with "
            f"pixels 0..255 and mean, std in {normalization.channel_order} order, zero-padded to a multiple of 32",
            **normalization.as_preprocess(),
        },
        "outputs": output_names(model),
        "strides": list(model.strides),
        "classes": meta["classes"],
        "category_ids": meta["category_ids"],
        "postprocess": dataclasses.asdict(model.postprocessor),
    }
    path.with_name(path.name + ".json").write_text(json.dumps(sidecar, indent=2))
    return path


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``kldet-export key=value ...``; exits 1 with the message on a :class:`KLDetError`."""

    def action(config: ExportConfig) -> str:
        path = export(config)
        return f"wrote {path} and {path.name}.json"

    return run_dotlist_cli(ExportConfig, argv, "kldet-export", __doc__, action)


if __name__ == "__main__":
    sys.exit(main())
