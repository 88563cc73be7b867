"""Objects from plain ``_target_`` specs, without Hydra.

A spec is what a ``conf/`` node with a ``_target_`` composes to: ``{"_target_": "kldet.model.kldet_r18",
"num_classes": 3, "assigner": {"_target_": "kldet.assign.AliTSMAssigner", "topk": [3, 1]}}``. The
model a checkpoint stores is such a spec, so :func:`kldet.checkpoint.load_detector` rebuilds it with
:func:`instantiate` (Hydra is not needed for inference); training builds the same spec the same way
(:class:`kldet.lit.KLDetModule`). A checkpoint is data: its spec may name only ``kldet.`` callables.
"""

import functools
import importlib
from collections.abc import Mapping, Sequence
from typing import Any

from kldet.errors import KLDetConfigError

#: Keys of a spec besides the target's arguments.
SPEC_KEYS = ("_target_", "_partial_")


def locate(target: str) -> Any:
    """The object a dotted path names ("kldet.model.kldet_r50_caffe", "torch.optim.SGD").

    Raises:
        KLDetConfigError: naming the path when it cannot be imported.
    """
    module_name, _, name = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise KLDetConfigError(f"_target_={target!r}: cannot be imported ({error})") from None


def instantiate(spec: Any, allowed: Sequence[str] | None = ("kldet.",)) -> Any:
    """``spec`` with every mapping that has a ``_target_`` replaced by the call it describes, innermost
    first; ``_partial_: true`` gives a ``functools.partial`` instead of calling. Lists and other mappings
    are kept (their items instantiated), other values are returned as they are.

    Args:
        allowed: prefixes a ``_target_`` must start with (None: any).

    Raises:
        KLDetConfigError: a target outside ``allowed``, one that cannot be imported, an unknown ``_x_``
            key, or a call that rejects its arguments (naming the target and the reason).
    """
    if isinstance(spec, Mapping):
        items = {key: instantiate(value, allowed) for key, value in spec.items() if key not in SPEC_KEYS}
        if "_target_" not in spec:
            return items
        target = str(spec["_target_"])
        if allowed is not None and not target.startswith(tuple(allowed)):
            raise KLDetConfigError(f"_target_={target!r}: only {', '.join(allowed)} targets are allowed here")
        unknown = [key for key in items if key.startswith("_") and key.endswith("_")]
        if unknown:
            raise KLDetConfigError(f"_target_={target!r}: unknown spec keys {unknown}; known: {SPEC_KEYS}")
        function = locate(target)
        if spec.get("_partial_", False):
            return functools.partial(function, **items)
        try:
            return function(**items)
        except TypeError as error:
            raise KLDetConfigError(f"_target_={target!r}: {error}") from None
    if isinstance(spec, list | tuple):
        return [instantiate(item, allowed) for item in spec]
    return spec


def merge(spec: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``spec`` with ``changes`` applied: a mapping merges into the mapping it replaces (so
    ``{"postprocess": {"score_thresh": 0.3}}`` changes one setting), anything else replaces."""
    merged = dict(spec)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged
