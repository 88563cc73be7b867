"""Export the detector's raw forward pass to TorchScript, ONNX or a ``torch.export`` program (.pt2).

What is exported is the detector's ``forward`` with its three per-level lists flattened to one tuple of
3L tensors for L pyramid levels, named after the model's ``output_kinds``. For :class:`kldet.model.KLDet`,
in this order (names as in the ONNX graph)::

    cls_logits_0 .. cls_logits_{L-1}      (B, C, h_l, w_l)
    box_regression_0 .. _{L-1}            (B, 4, h_l, w_l)   l, t, r, b in stride units
    centerness_0 .. centerness_{L-1}      (B, 1, h_l, w_l)   logits

and for :class:`kldet.model.TwoStageKLDet` its convolutional part: ``features_l`` (B, channels, h_l, w_l)
(the pyramid), ``objectness_l`` (B, A, h_l, w_l) and ``rpn_deltas_l`` (B, 4A, h_l, w_l). The proposals, the
RoI head and the NMS then run in Python, in ``model.postprocess``.

Inputs are normalised (B, 3, H, W) float32 images zero-padded to a multiple of 32 (see
:meth:`kldet.inference.predictor.Predictor.preprocess`). Post-processing (decode, score threshold,
class-wise NMS) is not in the graph; run it in Python on the outputs::

    outputs = session.run(None, {"images": batch})        # ONNX Runtime
    outputs = torch.jit.load(path)(batch)                   # TorchScript
    outputs = torch.export.load(path).module()(batch)       # .pt2
    detections = model.postprocess(*split_outputs([torch.as_tensor(o) for o in outputs]),
                                   image_shape=batch.shape[-2:], image_sizes=sizes)

or with :func:`kldet.model.postprocess_detections` and the model's strides when no model is at hand.
"""

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from kldet.errors import KLDetConfigError
from kldet.model import Detector

FORMATS = ("torchscript", "onnx", "pt2")


class FlatForward(nn.Module):
    """A detector's ``forward`` returning a flat tuple of 3L tensors (see the module docstring)."""

    def __init__(self, model: Detector) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        first, second, third = self.model(images)
        return (*first, *second, *third)


def output_names(model: Detector) -> list[str]:
    """Names of the 3L flat outputs: ``<kind>_<level>`` for the model's ``output_kinds``, e.g.
    ``cls_logits_0``, ..., ``centerness_{L-1}``."""
    return [f"{kind}_{level}" for kind in model.output_kinds for level in range(len(model.strides))]


def split_outputs(outputs: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Flat 3L outputs of an exported model -> its three lists of L (``(cls_logits, box_regression,
    centerness)`` for KLDet)."""
    if len(outputs) % 3:
        raise ValueError(f"expected 3 outputs per pyramid level, got {len(outputs)}")
    num_levels = len(outputs) // 3
    return tuple(list(outputs[i * num_levels : (i + 1) * num_levels]) for i in range(3))


def smallest_input_size(model: Detector) -> int:
    """The smallest image side the network takes: a multiple of 32 with two cells on its coarsest level
    (96 for P2-P6, whose top stride is 64)."""
    return model.strides[-1] + 32


def export_model(
    model: Detector,
    path: str | os.PathLike,
    format: str = "torchscript",
    image_size: tuple[int, int] = (800, 800),
    opset: int | None = None,
) -> Path:
    """Write the raw forward of ``model`` (moved to the CPU, eval mode) to ``path``.

    Args:
        format: "torchscript" (``torch.jit.trace``, which torch now marks deprecated; load with
            ``torch.jit.load``), "onnx" (``torch.onnx.export``; needs the ``onnx`` extra: onnx, onnxscript,
            and onnxruntime to run it) or "pt2" (``torch.export``; load with ``torch.export.load``).
        image_size: (H, W) of the example input, multiples of 32 with at least two cells on the coarsest
            level (96 for the default top stride of 64). Every format then takes any batch size and any such
            H, W (ONNX and pt2 declare them dynamic; the trace follows them).
        opset: ONNX opset version (default: the exporter's).

    Returns:
        the written path.
    """
    height, width = image_size
    smallest = smallest_input_size(model)
    if height % 32 or width % 32 or min(height, width) < smallest:
        raise KLDetConfigError(
            f"image_size={image_size}: height and width must be multiples of 32 and at least {smallest}"
        )
    if format not in FORMATS:
        raise KLDetConfigError(f"format={format!r}: choose one of {', '.join(FORMATS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = FlatForward(model.cpu().eval()).eval()
    # torch.export would freeze sizes of 1 (a batch of one, a 1-cell level) into constants.
    example = torch.zeros(2, 3, height, width)
    dynamic = {
        "images": {
            0: torch.export.Dim("batch"),
            2: 32 * torch.export.Dim("h32"),
            3: 32 * torch.export.Dim("w32"),
        }
    }
    with torch.no_grad():
        if format == "torchscript":
            torch.jit.trace(flat, example).save(str(path))
        elif format == "pt2":
            torch.export.save(torch.export.export(flat, (example,), dynamic_shapes=dynamic), str(path))
        else:
            torch.onnx.export(
                flat,
                (example,),
                str(path),
                input_names=["images"],
                output_names=output_names(model),
                opset_version=opset,
                dynamic_shapes=dynamic,
                external_data=False,
                verbose=False,
            )
    return path
