"""Checks a composed kldet-train / kldet-eval config before any data is read or model built.

Which keys a group takes, and their types, come from what the group configures, read with
:mod:`inspect`: ``data``, ``model`` (and its nested ``assigner`` and ``postprocess``), ``optimizer``,
``scheduler`` and every ``callbacks.*`` / ``logger.*`` entry from their ``_target_``, ``module`` from
:class:`kldet.lit.KLDetModule`, ``trainer`` from :class:`lightning.Trainer`, ``synthetic`` from
:func:`kldet.data.synthetic.generate`. A keyword added to one of those is accepted and type-checked
without changing this module; :data:`RANGES` and :data:`CHOICES` add the allowed values of the
numeric and named keys. Every problem is one :class:`~kldet.errors.KLDetConfigError` line naming the
key, the value and what is allowed.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import inspect
import math
import pathlib
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from kldet.cli.signatures import MODULE_INPUTS
from kldet.data.dior import DIFFICULT_MODES
from kldet.data.synthetic import generate
from kldet.data.transforms import check_crop_settings
from kldet.datamodule import FORMATS
from kldet.errors import KLDetConfigError
from kldet.evaluation import METRIC_KINDS
from kldet.lit import KLDetModule
from kldet.model.backbone import NORM_LAYERS, RESNETS, STYLES
from kldet.model.head import HEAD_NORMS
from kldet.model.postprocess import CANDIDATE_RULES
from kldet.optim import WARMUP_KINDS

# Hydra's instantiate keys, not arguments of the target.
HYDRA_KEYS = frozenset({"_target_", "_partial_", "_recursive_", "_convert_", "_args_"})


@dataclasses.dataclass(frozen=True)
class Interval:
    """Allowed numbers: ``low <= x <= high`` (``<`` where open); None leaves that side unbounded."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"


POSITIVE = Interval(0, low_open=True)
AT_LEAST_ONE = Interval(1)
NON_NEGATIVE = Interval(0)
FRACTION = Interval(0, 1)

# Allowed values of numeric keys (for a list, of each element); the type comes from the signatures.
RANGES: dict[str, Interval] = {
    "score_thresh": FRACTION,
    "examples": NON_NEGATIVE,
    "scale": NON_NEGATIVE,
    "seed": Interval(0, 2**32 - 1),
    "data.batch_size": AT_LEAST_ONE,
    "data.eval_batch_size": AT_LEAST_ONE,
    "data.num_workers": NON_NEGATIVE,
    "data.max_size": AT_LEAST_ONE,
    "data.crop_size": AT_LEAST_ONE,
    "data.crop_min_visibility": FRACTION,
    "data.crop_object_fraction": FRACTION,
    "data.eval_overlap": Interval(0, 1, high_open=True),
    "data.hflip": FRACTION,
    "data.vflip": FRACTION,
    "data.rotate90": FRACTION,
    "data.size_divisor": AT_LEAST_ONE,
    "model.fpn_levels": Interval(2, 7),
    "model.frozen_stages": Interval(-1, 4),
    "model.channels": AT_LEAST_ONE,
    "model.head_convs": NON_NEGATIVE,
    "model.anchor_sides": POSITIVE,
    "model.anchor_fraction": POSITIVE,
    "model.anchor_ratios": POSITIVE,
    "model.rpn_batch_size": AT_LEAST_ONE,
    "model.rpn_positive_fraction": FRACTION,
    "model.rpn_pre_nms_topk": AT_LEAST_ONE,
    "model.rpn_nms_thresh": FRACTION,
    "model.rpn_post_nms_topk": AT_LEAST_ONE,
    "model.representation_size": AT_LEAST_ONE,
    "model.rcnn_batch_size": AT_LEAST_ONE,
    "model.rcnn_positive_fraction": FRACTION,
    "model.rpn_assigner.fg_iou_thresh": FRACTION,
    "model.rpn_assigner.bg_iou_thresh": FRACTION,
    "model.rpn_assigner.topk": NON_NEGATIVE,
    "model.rpn_assigner.ratio": Interval(0, 1, low_open=True),
    "model.rpn_assigner.threshold": FRACTION,
    "model.assigner.prior_fraction": POSITIVE,
    "model.assigner.topk": NON_NEGATIVE,
    "model.assigner.alpha": NON_NEGATIVE,
    "model.assigner.beta": NON_NEGATIVE,
    "model.assigner.alpha_m": FRACTION,
    "model.assigner.ratio": Interval(0, 1, low_open=True),
    "model.assigner.center_radius": POSITIVE,
    "model.assigner.anchor_scale": POSITIVE,
    "model.postprocess.score_thresh": FRACTION,
    "model.postprocess.nms_thresh": FRACTION,
    "model.postprocess.pre_nms_topk": AT_LEAST_ONE,
    "model.postprocess.max_detections": AT_LEAST_ONE,
    "module.num_logged_images": NON_NEGATIVE,
    "module.tile_batch_size": AT_LEAST_ONE,
    "module.bias_lr_factor": NON_NEGATIVE,
    "module.bias_weight_decay": NON_NEGATIVE,
    "module.norm_weight_decay": NON_NEGATIVE,
    "module.base_batch_size": AT_LEAST_ONE,
    "optimizer.lr": POSITIVE,
    "optimizer.momentum": Interval(0, 1, high_open=True),
    "optimizer.weight_decay": NON_NEGATIVE,
    "scheduler.warmup_steps": NON_NEGATIVE,
    "scheduler.warmup_factor": Interval(0, 1, low_open=True),
    "scheduler.milestones": NON_NEGATIVE,
    "scheduler.gamma": POSITIVE,
    "trainer.num_nodes": AT_LEAST_ONE,
    "trainer.max_epochs": Interval(-1),
    "trainer.min_epochs": NON_NEGATIVE,
    "trainer.max_steps": Interval(-1),
    "trainer.check_val_every_n_epoch": AT_LEAST_ONE,
    "trainer.log_every_n_steps": AT_LEAST_ONE,
    "trainer.accumulate_grad_batches": AT_LEAST_ONE,
    "trainer.gradient_clip_val": NON_NEGATIVE,
    "trainer.num_sanity_val_steps": Interval(-1),
    "trainer.limit_train_batches": NON_NEGATIVE,
    "trainer.limit_val_batches": NON_NEGATIVE,
    "trainer.limit_test_batches": NON_NEGATIVE,
    "synthetic.num_images": AT_LEAST_ONE,
    "synthetic.image_size": Interval(32),
    "synthetic.val_fraction": Interval(0, 1, high_open=True),
}

# Allowed values of keys that name a choice.
CHOICES: dict[str, tuple[Any, ...]] = {
    "data.format": FORMATS,
    "data.difficult": DIFFICULT_MODES,
    "model.backbone": RESNETS,
    "model.style": STYLES,
    "model.postprocess.candidates": CANDIDATE_RULES,
    "model.backbone_norm": tuple(NORM_LAYERS),
    "model.head_norm": HEAD_NORMS,
    "module.metric": METRIC_KINDS,
    "scheduler.warmup": WARMUP_KINDS,
    "trainer.gradient_clip_algorithm": ("norm", "value"),
    "split": ("val", "test"),
}

# Keys of the root config (conf/train.yaml, conf/eval.yaml) and their types.
TOP_LEVEL: dict[str, Any] = {
    "name": str,
    "seed": int,
    "ckpt_path": str | None,
    "test": bool,
    "monitor": str,
    "ckpt": str,
    "split": str,
    "out": str | None,
    "plots": str | None,
    "score_thresh": float,
    "examples": int,
    "scale": int,
}


def _parameters(target: Callable[..., Any], excluded: frozenset[str] = frozenset()) -> dict[str, Any] | None:
    """Keyword arguments of ``target`` and their type hints (``Any`` where unknown); None when any key is
    accepted (``**kwargs`` that reach no class with a fixed signature).

    A class whose ``__init__`` passes ``**kwargs`` on takes the keywords of its bases' ``__init__`` too;
    a ``functools.partial`` (a preset) takes its function's, with its own defaults.
    """
    if isinstance(target, functools.partial):
        hints = _parameters(target.func, excluded)
        accepted = inspect.signature(target).parameters
        return None if hints is None else {name: hint for name, hint in hints.items() if name in accepted}
    functions = (
        [vars(cls)["__init__"] for cls in target.__mro__ if "__init__" in vars(cls)]
        if inspect.isclass(target)
        else [target]
    )
    found: dict[str, Any] = {}
    for function in functions:
        signature = inspect.signature(function)
        try:
            hints = typing.get_type_hints(function)
        except (NameError, TypeError):
            hints = {}
        for name, parameter in signature.parameters.items():
            if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                continue
            if name != "self" and name not in excluded:
                found.setdefault(name, hints.get(name, Any))
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
            return found
    return None


def group_schemas() -> dict[str, tuple[str, dict[str, Any] | None]]:
    """``group -> (what it configures, {key: type hint})`` for the groups without a ``_target_``."""
    trainer = _parameters(L.Trainer, frozenset({"logger", "callbacks"}))
    # precision=auto is kldet-train's own value, resolved before the Trainer is built (cli.train.trainer_precision).
    trainer["precision"] = trainer["precision"] | typing.Literal["auto"]
    return {
        "module": ("KLDetModule", _parameters(KLDetModule, frozenset(MODULE_INPUTS))),
        "trainer": ("lightning.Trainer", trainer),
        "synthetic": (
            "kldet.data.synthetic.generate",
            _parameters(generate, frozenset({"out", "format", "progress"})),
        ),
    }


def describe(hint: Any) -> str:
    """What a value of type ``hint`` looks like, for messages: "an integer", "true or false", ..."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        # The values of all the Literal members in one list (Lightning's precision has three such members).
        values = [
            str(v) for arg in args if typing.get_origin(arg) is typing.Literal for v in typing.get_args(arg)
        ]
        parts = [f"one of {', '.join(dict.fromkeys(values))}"] if values else []
        parts += [describe(arg) for arg in args if typing.get_origin(arg) is not typing.Literal]
        return " or ".join(dict.fromkeys(parts))
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, args))
    if origin is tuple and args and args[-1] is not Ellipsis:
        items = dict.fromkeys(describe(arg) for arg in args)
        return f"a list of {len(args)}, each {' or '.join(items)}"
    if origin is not None and issubclass(origin, collections.abc.Sequence) and origin is not str:
        return f"a list, each item {describe(args[0])}" if args else "a list"
    if origin is not None and issubclass(origin, collections.abc.Mapping):
        return "a mapping"
    names = {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def matches(value: Any, hint: Any) -> bool:
    """Whether a config value (plain or OmegaConf container) fits the type ``hint``.

    A bool is not an integer; an integer is a float; a string is a path. Classes that a config value
    cannot be (an ``Accelerator``, a ``timedelta``) never match, so they count only inside a Union.
    """
    if hint is Any or isinstance(hint, typing.TypeVar):
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, arg) for arg in args)
    if origin is typing.Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if hint is type(None) or hint is None:
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint in (str, pathlib.Path):
        return isinstance(value, str)
    container = origin or hint
    if not inspect.isclass(container):
        return True  # an annotation this check does not understand
    if issubclass(container, collections.abc.Mapping):
        return isinstance(value, DictConfig | dict)
    if issubclass(container, collections.abc.Sequence | collections.abc.Iterable) and container is not str:
        if not isinstance(value, ListConfig | list | tuple):
            return False
        if container is tuple and args and args[-1] is not Ellipsis:
            return len(args) == len(value) and all(map(matches, value, args))
        return not args or all(matches(item, args[0]) for item in value)
    return isinstance(value, container)


def _numbers(value: Any) -> list[float]:
    """The numbers in ``value``: itself, or the elements of a (nested) list."""
    if isinstance(value, ListConfig | list | tuple):
        return [number for item in value for number in _numbers(item)]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [value]
    return []


def check_value(key: str, value: Any, hint: Any) -> None:
    """Type, range (:data:`RANGES`) and choice (:data:`CHOICES`) of one value; raises KLDetConfigError."""
    plain = (
        OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value
    )
    shown = f"{key}={plain!r}"
    if not matches(value, hint):
        raise KLDetConfigError(f"{shown}: must be {describe(hint)}")
    if key in CHOICES and value is not None and value not in CHOICES[key]:
        allowed = ", ".join("null" if choice is None else str(choice) for choice in CHOICES[key])
        raise KLDetConfigError(f"{shown}: choose one of {allowed}")
    interval = RANGES.get(key)
    if interval is not None:
        for number in _numbers(value):
            if number not in interval:
                nullable = " (or null)" if matches(None, hint) else ""
                raise KLDetConfigError(f"{shown}: must be {interval}{nullable}")


def _check_node(prefix: str, node: DictConfig, owner: str, hints: dict[str, Any] | None) -> None:
    for key in node:
        if key in HYDRA_KEYS:
            continue
        name = f"{prefix}.{key}"
        if hints is not None and key not in hints:
            if key == "assigner" and "rpn_assigner" in hints:
                raise KLDetConfigError(
                    f"{name}: {owner} is a two-stage model: its assigner labels the RPN's anchors, "
                    "model.rpn_assigner (assigner=hierarchical_kld or assigner=max_iou), not points"
                )
            raise KLDetConfigError(f"{name}: unknown key; {owner} takes {', '.join(sorted(hints))}")
        value = node[key]
        if isinstance(value, DictConfig) and "_target_" in value:
            _check_target(name, value)  # a part built by its own target (model.assigner, ...)
        else:
            check_value(name, value, Any if hints is None else hints[key])


def _check_target(prefix: str, node: DictConfig) -> None:
    try:
        target = get_object(node._target_)
    except Exception as error:  # Hydra wraps import errors of any kind
        raise KLDetConfigError(f"{prefix}._target_={node._target_!r}: cannot be imported ({error})") from None
    _check_node(prefix, node, node._target_, _parameters(target))


def validate_config(cfg: DictConfig) -> None:
    """Checks every key of a kldet-train / kldet-eval config against what it configures.

    Raises:
        KLDetConfigError: one line naming the key, its value and what is allowed (or where an
            interpolation such as ``${paths.data_dir}`` cannot be resolved).
    """
    try:
        _validate(cfg)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "config"
        raise KLDetConfigError(f"{key}: {str(error).splitlines()[0]}") from None


def _validate(cfg: Mapping[str, Any]) -> None:
    for key, hint in TOP_LEVEL.items():
        if key in cfg:
            check_value(key, cfg[key], hint)
    for group, (owner, hints) in group_schemas().items():
        node = cfg.get(group)
        if node is not None:
            if not isinstance(node, DictConfig):
                raise KLDetConfigError(f"{group}={node!r}: must be a mapping of {owner} keys")
            _check_node(group, node, owner, hints)
    for group in ("data", "model", "optimizer", "scheduler"):
        node = cfg.get(group)
        if node is not None:
            if not isinstance(node, DictConfig) or "_target_" not in node:
                raise KLDetConfigError(f"{group}: must be a mapping with a _target_ (see conf/{group}/)")
            _check_target(group, node)
    if cfg.get("data") is not None:
        check_crop_settings(cfg.data.get("max_size"), cfg.data.get("crop_size"))
    for group in ("callbacks", "logger"):
        for name, node in (cfg.get(group) or {}).items():
            if isinstance(node, DictConfig) and "_target_" in node:
                _check_target(f"{group}.{name}", node)
