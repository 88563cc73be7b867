"""Every inference module imports on its own, and no two kldet modules import each other in a circle."""

import ast
import subprocess
import sys
from pathlib import Path

import kldet

PACKAGE_ROOT = Path(kldet.__file__).parent
INFERENCE_MODULES = sorted(
    f"kldet.inference.{path.stem}"
    for path in (PACKAGE_ROOT / "inference").glob("*.py")
    if path.stem != "__init__"
)


def module_names() -> dict[str, Path]:
    """``kldet.x.y`` -> its file, for every module under src/kldet (a package by its ``__init__.py``)."""
    names = {}
    for path in PACKAGE_ROOT.rglob("*.py"):
        parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def module_level_imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The kldet modules that importing ``name`` (file ``path``) imports at once: the ``import`` statements
    of the module body, including those under ``if``/``try`` but not inside functions or classes."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    pending = list(ast.parse(path.read_text()).body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    [*package.split(".")[: len(package.split(".")) - node.level + 1], base]
                ).strip(".")
            for alias in node.names:
                # "from a import b" imports the module a.b when there is one, else a name of a.
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
        elif isinstance(node, ast.If | ast.Try):
            pending += [*node.body, *node.orelse, *getattr(node, "finalbody", [])]
            pending += [statement for handler in getattr(node, "handlers", []) for statement in handler.body]
    return {module for module in found if module in known and module != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None when it is acyclic (depth-first search)."""
    state: dict[str, str] = {}  # "open" while on the stack, "done" after
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for successor in sorted(graph[node]):
            if state.get(successor) == "open":
                return [*stack[stack.index(successor) :], successor]
            if successor not in state and (cycle := visit(successor)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


# Each module is imported with no kldet module loaded before it (torch and the rest stay loaded: one
# interpreter instead of one per module keeps this fast); a circle that only some import orders break
# fails here with the module that starts it.
IMPORT_EACH_ALONE = """
import importlib, sys
for module in sys.argv[1:]:
    for loaded in [name for name in sys.modules if name == "kldet" or name.startswith("kldet.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(module)
    except Exception as error:
        sys.exit(f"import {module}: {type(error).__name__}: {error}")
"""


def test_each_inference_module_imports_alone_in_a_fresh_interpreter():
    assert "kldet.inference.geo" in INFERENCE_MODULES and "kldet.inference.types" in INFERENCE_MODULES
    completed = subprocess.run(
        [sys.executable, "-c", IMPORT_EACH_ALONE, *INFERENCE_MODULES],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr


def test_find_cycle_finds_a_hand_made_cycle_and_passes_a_chain():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) is None


def test_module_level_imports_reads_relative_and_conditional_imports_but_not_lazy_ones(tmp_path):
    path = tmp_path / "pkg" / "mod.py"
    path.parent.mkdir()
    path.write_text(
        "import os\nfrom . import sibling\nfrom .other import thing\ntry:\n    import pkg.extra\n"
        "except ImportError:\n    pass\ndef f():\n    import pkg.lazy\n"
    )
    known = {"pkg", "pkg.mod", "pkg.sibling", "pkg.other", "pkg.extra", "pkg.lazy"}
    assert module_level_imports(path, "pkg.mod", known) == {"pkg.sibling", "pkg.other", "pkg.extra"}


def test_kldet_modules_import_each_other_without_a_cycle():
    names = module_names()
    graph = {name: module_level_imports(path, name, set(names)) for name, path in names.items()}
    assert len(graph) > 40 and graph["kldet.inference.sliced"] >= {"kldet.inference.types"}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
