"""Package namespaces that import a name's module on first use (PEP 562), so that importing one submodule
of a package does not import all of them: ``kldet-eval results=`` reads COCO files through
``kldet.data.coco`` without the transforms (albumentations, torch), and ``kldet.evaluation.coco`` without
the torchmetrics ``Metric``."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list]]:
    """The module ``__getattr__`` and ``__dir__`` of ``package`` that serve ``exports``.

    Args:
        package: the package's ``__name__``.
        exports: public name -> the module that defines it (``"kldet.data.coco"``).

    Returns:
        ``(__getattr__, __dir__)``: the first imports the name's module when the name is first read (and
        raises ``AttributeError`` for any other name, as a module does), the second lists the names.
    """

    def __getattr__(name: str) -> object:  # noqa: N807 (the module protocol's name)
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        setattr(sys.modules[package], name, value)  # the next read finds it without this call
        return value

    def __dir__() -> list:  # noqa: N807
        return sorted(exports)

    return __getattr__, __dir__
