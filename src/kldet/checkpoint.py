"""Load a trained detector from a Lightning checkpoint without importing Lightning.

A checkpoint written by :class:`kldet.lit.KLDetModule` is a ``torch.save`` dict whose
``hyper_parameters`` hold plain dicts: ``model`` (the detector's spec: ``{"_target_": a builder such as
"kldet.model.kldet_r50_caffe", "num_classes": C, ..., "assigner": {"_target_": ...}, "postprocess": {...}}``,
rebuilt with :func:`kldet.spec.instantiate`; checkpoints of kldet before the composed detector hold the
flat keyword arguments of the old ``KLDet`` and are read too), ``classes`` (names), ``category_ids`` (the data set's own ids, for result files;
None means 1..C) and ``preprocess`` (``channel_order`` "RGB" or "BGR", ``mean``, ``std``, ``size_divisor``,
``max_size``, ``resize`` and, for training on crops, ``crop_size`` and ``overlap``:
:func:`kldet.data.transforms.resize_policy`); ``state_dict`` keys are ``"model."`` + the KLDet state dict keys. The input normalisation
(``channel_order``, ``mean``, ``std``) follows the model's backbone ``style`` (see
:mod:`kldet.model.normalization`); where a checkpoint lacks one of them, the style's value is used, so
checkpoints written before ``channel_order`` existed (all pytorch style) read as RGB.
"""

import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from kldet.data.dataset import SIZE_DIVISOR
from kldet.data.transforms import recorded_resize_policy
from kldet.errors import KLDetConfigError, KLDetError
from kldet.model import Detector, InputNormalization
from kldet.spec import instantiate, merge

STATE_PREFIX = "model."
REQUIRED_HYPER_PARAMETERS = ("model", "classes")
#: The ``hyper_parameters["preprocess"]`` keys kldet-train writes (see the module docstring).
PREPROCESS_KEYS = (
    "channel_order",
    "mean",
    "std",
    "size_divisor",
    "max_size",
    "resize",
    "crop_size",
    "overlap",
)


def load_detector(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    overrides: dict[str, Any] | None = None,
) -> tuple[Detector, dict[str, Any]]:
    """Build the checkpoint's detector (a :class:`kldet.model.Detector`: KLDet or TwoStageKLDet), load its
    weights and put it in eval mode.

    Args:
        path: a ``.ckpt`` file (see the module docstring for its layout).
        map_location: device the weights are loaded to (the model is moved there too).
        overrides: changes to the model spec, merged into it (:func:`kldet.spec.merge`), e.g.
            ``{"postprocess": {"score_thresh": 0.3}}`` for inference.

    Returns:
        the model and the metadata: ``{"model": the spec used, "classes", "category_ids", "preprocess",
        "hyper_parameters"}``; ``preprocess`` is the stored dict (``{}`` when the checkpoint has none) with
        ``channel_order``, ``mean`` and ``std`` always present (filled in from the model's style where
        missing); ``hyper_parameters`` is the checkpoint's own, as stored (so nothing reads the file twice).

    Raises:
        KLDetError: the file is missing, not a checkpoint, or its weights do not fit its own model.
    """
    path = Path(path)
    checkpoint = read_checkpoint(path, map_location)
    hyper_parameters = checkpoint["hyper_parameters"]

    # The checkpoint's weights replace the backbone's initial ones, so never read pretrained files.
    spec = merge(model_spec(hyper_parameters["model"]), {"weights": None, **(overrides or {})})
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*starts from random weights")
            model = instantiate(spec)
    except KLDetConfigError as error:
        raise KLDetError(f"checkpoint {path}: its model does not build ({error})") from None
    if not isinstance(model, Detector):
        raise KLDetError(f"checkpoint {path}: its model spec builds a {type(model).__name__}, not a detector")
    state = {
        key[len(STATE_PREFIX) :]: value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(STATE_PREFIX)
    }
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise KLDetError(f"checkpoint {path}: weights do not match its model settings ({error})") from error
    # A model trained without data-set ids (category_ids None) writes COCO's usual 1..C.
    category_ids = hyper_parameters.get("category_ids") or range(1, model.num_classes + 1)
    meta = {
        "model": spec,
        "classes": [str(name) for name in hyper_parameters["classes"]],
        "category_ids": [int(c) for c in category_ids],
        "preprocess": dict(hyper_parameters.get("preprocess") or {}),
        "hyper_parameters": hyper_parameters,
    }
    try:
        normalization = InputNormalization.from_preprocess(meta["preprocess"], backbone_style(model))
    except KLDetError as error:
        raise KLDetError(f"checkpoint {path}: preprocess {error}") from None
    meta["preprocess"].update(normalization.as_preprocess())
    if len(meta["classes"]) != model.num_classes or len(meta["category_ids"]) != model.num_classes:
        raise KLDetError(
            f"checkpoint {path}: {model.num_classes} classes in the model but {len(meta['classes'])} names "
            f"and {len(meta['category_ids'])} category ids"
        )
    return model.to(map_location).eval(), meta


def backbone_style(model: Detector) -> str:
    """The model's backbone style ("caffe" or "pytorch"), which fixes its input normalisation."""
    return getattr(model.backbone, "style", "pytorch")


# The flat KLDet keywords of checkpoints written before the composed detector, by the part they set.
_LEGACY_ASSIGNERS = {
    "alitsm": (
        "kldet.assign.AliTSMAssigner",
        ("prior_fraction", "topk", "alpha", "beta", "alpha_m", "ratio"),
    ),
    "fcos": ("kldet.assign.FCOSAssigner", ("center_sampling", "center_radius", "regress_ranges")),
}
_LEGACY_POSTPROCESS = ("score_thresh", "nms_thresh", "pre_nms_topk", "max_detections", "candidates")


def model_spec(stored: dict[str, Any]) -> dict[str, Any]:
    """The model spec of a checkpoint's ``hyper_parameters["model"]``: as stored, or converted from the
    flat keywords of an older kldet (``assigner: "alitsm"``, ``topk``, ``score_thresh``, ...)."""
    if "_target_" in stored:
        return dict(stored)
    flat = dict(stored)
    target, keys = _LEGACY_ASSIGNERS[flat.pop("assigner", "alitsm")]
    assigner = {"_target_": target, **{key: flat[key] for key in keys if key in flat}}
    for _, other_keys in _LEGACY_ASSIGNERS.values():
        for key in other_keys:
            flat.pop(key, None)
    postprocess = {key: flat.pop(key) for key in _LEGACY_POSTPROCESS if key in flat}
    return {
        "_target_": "kldet.model.kldet_resnet_fpn",
        **flat,
        "assigner": assigner,
        "postprocess": {"_target_": "kldet.model.PostProcess", **postprocess},
    }


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The dict a kldet checkpoint holds (see the module docstring), read without running any code.

    Raises:
        KLDetError: the file is missing, is not a torch checkpoint, stores objects other than tensors and
            plain containers, or lacks the kldet ``hyper_parameters`` and ``state_dict``.
    """
    path = Path(path)
    if not path.is_file():
        raise KLDetError(f"checkpoint {path} does not exist")
    try:
        # Plain dicts, lists and tensors only: no arbitrary code runs while loading.
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message is a page long; its "Unsupported global: GLOBAL x.y" line names the culprit.
        culprit = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        reason = f"it stores a {culprit[1]} object" if culprit else "not a torch checkpoint"
        raise KLDetError(
            f"checkpoint {path}: {reason}; kldet reads checkpoints holding only tensors and plain "
            "containers (torch.load weights_only=True)"
        ) from error
    except (RuntimeError, EOFError, OSError) as error:
        raise KLDetError(f"checkpoint {path}: not a readable torch checkpoint ({error})") from error
    hyper_parameters = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(hyper_parameters, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise KLDetError(
            f"checkpoint {path}: no 'hyper_parameters' and 'state_dict' (not a kldet checkpoint)"
        )
    missing = [key for key in REQUIRED_HYPER_PARAMETERS if key not in hyper_parameters]
    if missing:
        raise KLDetError(f"checkpoint {path}: hyper_parameters lack {', '.join(missing)}")
    return checkpoint


def save_detector(
    path: str | os.PathLike,
    model: Detector,
    model_spec: dict[str, Any],
    classes: list[str],
    category_ids: list[int] | None = None,
    preprocess: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a checkpoint that :func:`load_detector` (and kldet-eval/-predict/-export) read.

    The layout is the weights-only part of a kldet-train checkpoint (:class:`kldet.lit.KLDetModule`), for a
    KLDet trained or converted outside Lightning; it cannot resume training.

    Args:
        path: the ``.ckpt`` file to write (missing parent folders are made).
        model: the detector; its ``state_dict`` is stored under ``"model."`` + its keys.
        model_spec: the spec that rebuilds ``model`` (:mod:`kldet.spec`), e.g.
            ``{"_target_": "kldet.model.kldet_r18", "num_classes": 3, "weights": None}``.
        classes: class names, index = 0-based label.
        category_ids: the data set's own id of each class, for result files (None: 1..C).
        preprocess: how the model's input images were made, with the keys of :data:`PREPROCESS_KEYS`:
            ``max_size`` (required: the longer side images were resized to, None for native pixels),
            ``resize`` (default: what ``max_size`` means, :func:`kldet.data.transforms.resize_policy`),
            ``size_divisor`` (default 32), ``channel_order``, ``mean`` and ``std`` (default: the
            normalisation of the model's ``style``, :func:`kldet.model.input_normalization`); with
            ``resize="crop"`` also ``crop_size`` and ``overlap`` (trained on crops, evaluated by sliced
            prediction). The file holds them all, as kldet-train writes them. None records no preprocessing: inference then normalises
            by the model's style and kldet-predict refuses ``resize=train``.

    Returns:
        ``path``.

    Raises:
        KLDetError: ``preprocess`` lacks ``max_size`` or has other keys, or its normalisation is invalid.
    """
    path = Path(path)
    if preprocess is not None:
        preprocess = _complete_preprocess(path, preprocess, backbone_style(model))
    path.parent.mkdir(parents=True, exist_ok=True)
    hyper_parameters = {
        "model": dict(model_spec),
        "classes": list(classes),
        "category_ids": None if category_ids is None else list(category_ids),
        "preprocess": preprocess,
    }
    state_dict = {STATE_PREFIX + key: value for key, value in model.state_dict().items()}
    torch.save({"hyper_parameters": hyper_parameters, "state_dict": state_dict}, path)
    return path


def _complete_preprocess(path: Path, preprocess: dict[str, Any], style: str) -> dict[str, Any]:
    """``preprocess`` with every key of :data:`PREPROCESS_KEYS`, the missing ones filled in."""
    unknown = sorted(set(preprocess) - set(PREPROCESS_KEYS))
    if unknown or "max_size" not in preprocess:
        problem = f"unknown keys {unknown}" if unknown else "no 'max_size' (None for native pixels)"
        raise KLDetError(f"save_detector {path}: preprocess has {problem}; keys: {list(PREPROCESS_KEYS)}")
    try:
        normalization = InputNormalization.from_preprocess(preprocess, style)
    except KLDetError as error:
        raise KLDetError(f"save_detector {path}: preprocess {error}") from None
    return {
        "size_divisor": SIZE_DIVISOR,
        **preprocess,
        **normalization.as_preprocess(),
        **recorded_resize_policy(preprocess),
    }
