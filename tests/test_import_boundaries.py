"""What importing a kldet module, or running a light CLI mode, drags in, seen from ``sys.modules`` of a fresh
interpreter."""

import json
import subprocess
import sys
from pathlib import Path

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


# The heavy rooms a CLI mode that needs no model must not load: each costs seconds of start-up.
HEAVY = ("lightning", "pytorch_lightning", "hydra", "torch", "torchvision", "torchmetrics", "albumentations")


def loaded_by_cli(module: str, argv: list[str]) -> tuple[int, set[str]]:
    """The exit status of ``module.main(argv)`` in a new process and the :data:`HEAVY` packages it loaded."""
    probe = (
        f"import sys, json; from {module} import main; rc = main({argv!r}); "
        f"print(json.dumps([rc, sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))]))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    status, loaded = json.loads(result.stdout.splitlines()[-1])
    return status, set(loaded)


def test_kldet_eval_results_mode_runs_without_lightning_hydra_or_torch(tmp_path: Path):
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 8, 8], "area": 64, "iscrowd": 0},
        {"id": 2, "image_id": 2, "category_id": 2, "bbox": [30, 30, 12, 6], "area": 72, "iscrowd": 0},
    ]
    ann = {
        "images": [{"id": i, "file_name": f"{i}.png", "width": 64, "height": 64} for i in (1, 2)],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "ship"}, {"id": 2, "name": "vehicle"}],
    }
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 11, 8, 8], "score": 0.9},
        {"image_id": 2, "category_id": 2, "bbox": [0, 0, 5, 5], "score": 0.4},
    ]
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    (tmp_path / "res.json").write_text(json.dumps(results))
    out = tmp_path / "metrics.json"
    argv = [f"results={tmp_path / 'res.json'}", f"ann={tmp_path / 'ann.json'}", f"out={out}"]
    status, loaded = loaded_by_cli("kldet.cli.evaluate", argv)
    assert status == 0
    assert json.loads(out.read_text())["AP50"] == 0.5  # ship found, vehicle missed
    assert not loaded


def test_kldet_data_help_and_check_run_without_lightning_hydra_or_torch(synthetic_root: Path):
    assert loaded_by_cli("kldet.cli.data", ["--help"]) == (0, set())
    status, loaded = loaded_by_cli(
        "kldet.cli.data", ["check", "format=aitod", f"root={synthetic_root}", "split=train"]
    )
    assert status == 0
    assert not loaded


def test_kldet_data_tile_runs_without_lightning_hydra_or_torch(synthetic_root: Path, tmp_path: Path):
    argv = ["tile", "format=aitod", f"root={synthetic_root}", "split=train", f"out={tmp_path}", "size=96"]
    assert loaded_by_cli("kldet.cli.data", [*argv, "progress=false"]) == (0, set())


def test_lazy_package_names_are_the_modules_objects_and_unknown_names_fail():
    import kldet.data
    import kldet.data.coco

    assert kldet.data.read_coco is kldet.data.coco.read_coco
    assert set(kldet.data.__all__) <= set(dir(kldet.data))
    with pytest.raises(AttributeError, match="'kldet.data' has no attribute 'read_nothing'"):
        _ = kldet.data.read_nothing
