"""What importing a kldet module drags in, seen from ``sys.modules`` of a fresh interpreter."""

import json
import subprocess
import sys

import pytest

WATCHED = ("matplotlib", "kldet.data", "lightning", "hydra")


def loaded_by(module: str) -> set[str]:
    """The :data:`WATCHED` packages in ``sys.modules`` after ``import <module>`` in a new process."""
    probe = (
        f"import sys, json, {module}; "
        f"print(json.dumps([name for name in {WATCHED!r} if name in sys.modules]))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(json.loads(result.stdout))


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        ("kldet.assign", {"matplotlib", "kldet.data"}),
        ("kldet.optim", {"lightning", "hydra"}),
    ],
)
def test_module_leaves_other_rooms_unimported(module, absent):
    assert not loaded_by(module) & absent


def test_the_probe_sees_what_an_import_loads():
    # The analysis module reads the data package and draws with matplotlib: the probe must report both.
    assert {"matplotlib", "kldet.data"} <= loaded_by("kldet.analysis.assignment")
