"""Hydra config nodes made from the signatures of what they configure, so each default lives once: in
the Python it configures.

:func:`register` stores, in Hydra's ConfigStore group ``signatures``:

- ``signatures/model/<preset>``: the ``_target_`` of a builder of :data:`kldet.model.PRESETS` and every
  keyword of it with its default (the ``postprocess`` default as a nested :class:`kldet.model.PostProcess`
  node); ``num_classes`` comes from the data, ``assigner`` (``rpn_assigner`` of a two-stage model) from
  the assigner group;
- ``signatures/assigner/<name>``: an assigner class of :data:`ASSIGNERS` with its fields;
- ``signatures/scheduler/warmup_multistep``: :class:`kldet.optim.WarmupMultiStep`;
- ``signatures/data``: :class:`kldet.datamodule.KLDetDataModule` (its ``normalization`` follows the model);
- ``signatures/module``: the :class:`kldet.lit.KLDetModule` keywords that are settings (no ``_target_``).

``conf/model/*.yaml``, ``conf/assigner/*.yaml``, ``conf/scheduler/*.yaml``, ``conf/data/default.yaml`` and
``conf/train.yaml`` start
from these (``defaults: [/signatures/model/kldet_r50_caffe@_here_, _self_]``) and list only what they
change. ``kldet-train --cfg job`` prints the composed result.
"""

import dataclasses
import inspect
from collections.abc import Iterable
from typing import Any

from hydra.core.config_store import ConfigStore

from kldet.model import PRESETS
from kldet.spec import locate

#: The assigners of ``conf/assigner/`` by config name.
ASSIGNERS = {
    "alitsm": "kldet.assign.AliTSMAssigner",
    "fcos": "kldet.assign.FCOSAssigner",
    "atss": "kldet.assign.ATSSAssigner",
    "max_iou": "kldet.assign.MaxIoUAnchorAssigner",
    "hierarchical_kld": "kldet.assign.HierarchicalKLDAssigner",
}
#: KLDetModule arguments that are not settings: the data module and the other groups give them.
MODULE_INPUTS = ("model", "classes", "category_ids", "optimizer", "scheduler", "preprocess", "detector")


def config_value(value: Any) -> Any:
    """A default as a config value: tuples become lists and a dataclass instance a ``_target_`` node."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        kind = type(value)
        node = {field.name: config_value(getattr(value, field.name)) for field in dataclasses.fields(value)}
        return {"_target_": f"{kind.__module__}.{kind.__qualname__}", **node}
    if isinstance(value, list | tuple):
        return [config_value(item) for item in value]
    if value is None or isinstance(value, bool | int | float | str | dict):
        return value
    raise TypeError(f"default {value!r} has no config form")


def signature_node(target: str, exclude: Iterable[str] = (), with_target: bool = True) -> dict[str, Any]:
    """``{"_target_": target, keyword: default, ...}`` for every keyword of ``target`` that has a default,
    but those in ``exclude``."""
    excluded = set(exclude)
    node: dict[str, Any] = {"_target_": target} if with_target else {}
    for name, parameter in inspect.signature(locate(target)).parameters.items():
        if name in excluded or parameter.default is inspect.Parameter.empty:
            continue
        if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        node[name] = config_value(parameter.default)
    return node


def register() -> None:
    """Stores the ``signatures`` nodes in Hydra's ConfigStore (again: the same nodes)."""
    store = ConfigStore.instance()
    for name in PRESETS:
        node = signature_node(f"kldet.model.{name}", exclude=("num_classes", "assigner", "rpn_assigner"))
        store.store(group="signatures/model", name=name, node=node)
    for name, target in ASSIGNERS.items():
        store.store(group="signatures/assigner", name=name, node=signature_node(target))
    store.store(
        group="signatures/scheduler",
        name="warmup_multistep",
        node=signature_node("kldet.optim.WarmupMultiStep"),
    )
    store.store(
        group="signatures",
        name="data",
        node=signature_node("kldet.datamodule.KLDetDataModule", exclude=("normalization",)),
    )
    store.store(
        group="signatures",
        name="module",
        node=signature_node("kldet.lit.KLDetModule", exclude=MODULE_INPUTS, with_target=False),
    )
