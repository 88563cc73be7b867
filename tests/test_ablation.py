"""benchmarks/ablation.py: each configuration composes to the model it names, and the summary arithmetic."""

import argparse
import importlib.util
import math
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from kldet.cli.train import CONFIG_DIR

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ablation():
    spec = importlib.util.spec_from_file_location("ablation", ROOT / "benchmarks" / "ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def composed(overrides):
    # The hydra.* and paths.* overrides need a Hydra run; the rest is what kldet-train composes.
    kept = [o for o in overrides if not o.startswith(("hydra.", "paths."))]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=kept)


def test_configurations_differ_only_in_levels_assigner_and_attention(ablation, tmp_path):
    args = argparse.Namespace(
        out=tmp_path, epochs=4, image_size=320, num_images=40, overrides=["data.num_workers=0"]
    )
    expected = {
        "fcos": ([3, 4, 5, 6, 7], "kldet.assign.FCOSAssigner", False),
        "fcos_p2": ([2, 3, 4, 5, 6], "kldet.assign.FCOSAssigner", False),
        "alitsm": ([2, 3, 4, 5, 6], "kldet.assign.AliTSMAssigner", False),
        "kldet": ([2, 3, 4, 5, 6], "kldet.assign.AliTSMAssigner", True),
    }
    assert list(ablation.STEPS) == list(expected)
    shared = None
    for config, (levels, assigner, attention) in expected.items():
        cfg = composed(ablation.run_overrides(args, config, seed=1, run_dir=tmp_path / config))
        assert (list(cfg.model.fpn_levels), cfg.model.assigner._target_, cfg.model.attention) == (
            levels,
            assigner,
            attention,
        )
        assert cfg.model.backbone == "resnet18" and cfg.seed == 1
        assert (
            cfg.trainer.max_epochs,
            cfg.scheduler.milestones,
            cfg.synthetic.image_size,
            cfg.data.max_size,
        ) == (4, [3], 320, 320)
        assert cfg.synthetic.num_images == 40 and cfg.data.num_workers == 0
        # Everything but the model's assignment-specific keys is the same in all configurations.
        rest = {
            key: cfg[key]
            for key in ("data", "synthetic", "optimizer", "scheduler", "module", "trainer", "seed")
        }
        model = {
            k: v
            for k, v in cfg.model.items()
            if k in ("backbone", "weights", "channels", "head_convs", "frozen_stages", "postprocess")
        }
        shared = shared or (rest, model)
        assert (rest, model) == shared


def test_the_bf16_variant_differs_from_kldet_only_in_number_format_and_memory_layout(ablation, tmp_path):
    args = argparse.Namespace(out=tmp_path, epochs=None, image_size=None, num_images=None, overrides=[])
    kldet, bf16 = (
        composed(ablation.run_overrides(args, config, seed=0, run_dir=tmp_path))
        for config in ("kldet", "kldet_bf16")
    )
    assert (kldet.trainer.precision, kldet.module.channels_last) == ("32-true", False)
    assert (bf16.trainer.precision, bf16.module.channels_last) == ("bf16-mixed", True)
    bf16.trainer.precision, bf16.module.channels_last = kldet.trainer.precision, kldet.module.channels_last
    assert bf16 == kldet


def test_mean_and_sample_spread_skip_missing_values(ablation):
    mean, spread = ablation.mean_and_spread([10.0, 20.0, math.nan, 30.0])
    assert mean == 20.0 and spread == pytest.approx(10.0)  # sqrt(((-10)^2 + 0 + 10^2) / 2)
    assert ablation.mean_and_spread([5.0]) == (5.0, 0.0)
    assert all(math.isnan(v) for v in ablation.mean_and_spread([math.nan]))


def test_table_and_plot(ablation):
    runs = [{m: 10.0 * (i + 1) for m in ablation.METRICS} for i in range(3)]
    runs[0]["AP_s"] = math.nan
    results = {"fcos": runs, "kldet": [{m: math.nan for m in ablation.METRICS}]}
    table = ablation.format_table(results, [0, 1, 2])
    assert "| (a) FCOS P3-P7 | 20.0 ± 10.0 | 20.0 ± 10.0 | 20.0 ± 10.0 | 20.0 ± 10.0 | 25.0 ± 7.1 |" in table
    assert "| (d) + TlA = KLDet | n/a | n/a | n/a | n/a | n/a |" in table
    axes = ablation.plot(results).axes[0]
    assert len(axes.patches) == 2 * len(ablation.METRICS)


def test_a_finished_run_is_reused_only_with_the_same_overrides(ablation, tmp_path, monkeypatch):
    args = argparse.Namespace(
        out=tmp_path, epochs=None, image_size=None, num_images=None, overrides=[], force=False
    )
    run_dir = tmp_path / "runs" / "kldet" / "seed2"
    trained = []

    def fake_kldet_train(command, **kwargs):
        # What kldet-train leaves: the overrides Hydra records and the metrics.
        trained.append(command)
        (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
        recorded = [o for o in command[3:] if not o.startswith("hydra.")]
        (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in recorded))
        (run_dir / "metrics.json").write_text('{"test/AP": 0.25, "test/AP_s": -1.0}')
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(ablation.subprocess, "run", fake_kldet_train)
    first = ablation.train_once(args, "kldet", 2)
    assert len(trained) == 1 and "seed=2" in trained[0] and "model.attention=true" in trained[0]
    assert first["AP"] == 25.0 and math.isnan(first["AP_s"]) and math.isnan(first["AP50"])
    assert ablation.train_once(args, "kldet", 2) == pytest.approx(first, nan_ok=True)
    assert len(trained) == 1
    args.epochs = 3
    ablation.train_once(args, "kldet", 2)
    assert len(trained) == 2 and "trainer.max_epochs=3" in trained[1]
