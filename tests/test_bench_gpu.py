"""benchmarks/gpu.py cannot rot: its smoke mode runs on the CPU and writes every figure, consistent with
each other; without CUDA, --device cuda is one line and exit status 1."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("quiet_single_thread")

# Every key of each section of the JSON file (a renamed or dropped figure fails here).
TRAINING_KEYS = {"images_per_s", "step_seconds", "peak_memory_mb"}
RATIO_KEYS = {"images_per_s_ratio", "flop_ratio", "time_ratio", "time_over_flop_ratio", "goal", "goal_met"}
ALITSM_KEYS = {
    "gts",
    "positives",
    "device_seconds",
    "device_peak_extra_mb",
    "cpu_seconds",
    "cpu_peak_extra_mb",
    "cpu_threads",
    "speedup",
    "differing_points",
}
SHARE_KEYS = {"gts", "step_seconds", "assign_seconds", "targets_seconds", "share", "goal", "goal_met"}
PREDICT_KEYS = {"tiles", "tile_size", "batch_size", "seconds", "tiles_per_s", "peak_memory_mb", "detections"}


@pytest.fixture()
def bench_gpu(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # its imports of bench_assign and bench_model
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def positive(value) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    )


def test_smoke_mode_on_the_cpu_writes_every_figure(bench_gpu, tmp_path, capsys):
    out = tmp_path / "bench_gpu.json"
    assert bench_gpu.main(["--smoke", "--device", "cpu", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert set(results) == {
        "config",
        "memory_note",
        "alitsm",
        "hierarchical",
        "training",
        "flops",
        "ratios",
        "assignment_share",
        "predict",
    }
    assert results["config"]["smoke"] is True and results["config"]["device"] == "cpu"
    assert "null" in results["memory_note"]  # off CUDA the memory figures are null, and it says so

    training, flops = results["training"], results["flops"]
    for name in ("kldet", "fcos"):
        assert set(training[name]) == TRAINING_KEYS
        assert positive(training[name]["images_per_s"]) and positive(training[name]["step_seconds"])
        assert training[name]["images_per_s"] == pytest.approx(2 / training[name]["step_seconds"])  # batch 2
        assert training[name]["peak_memory_mb"] is None
        assert set(flops[name]) == {"gflops_per_image"} and positive(flops[name]["gflops_per_image"])
    # P2 (a 4x denser head grid than P3) and TlA can only add work to the same backbone.
    assert flops["kldet"]["gflops_per_image"] > flops["fcos"]["gflops_per_image"]

    ratios = results["ratios"]
    assert set(ratios) == RATIO_KEYS
    assert all(positive(ratios[key]) for key in RATIO_KEYS - {"goal_met"})
    assert ratios["flop_ratio"] == pytest.approx(
        flops["kldet"]["gflops_per_image"] / flops["fcos"]["gflops_per_image"]
    )
    assert ratios["time_ratio"] == pytest.approx(
        training["fcos"]["images_per_s"] / training["kldet"]["images_per_s"]
    )
    assert ratios["time_over_flop_ratio"] == pytest.approx(ratios["time_ratio"] / ratios["flop_ratio"])
    assert ratios["goal_met"] is (ratios["time_over_flop_ratio"] <= 1.1)

    for assigner in ("alitsm", "hierarchical"):
        (row,) = results[assigner]
        assert set(row) == ALITSM_KEYS and row["gts"] == 20
        assert all(positive(row[key]) for key in ("positives", "device_seconds", "cpu_seconds", "speedup"))
        assert row["device_peak_extra_mb"] is None
        assert math.isfinite(row["cpu_peak_extra_mb"]) and row["cpu_peak_extra_mb"] >= 0
        assert row["differing_points"] == 0  # both paths on the CPU

    share = results["assignment_share"]
    assert set(share) == SHARE_KEYS and share["gts"] == 50
    assert all(positive(share[key]) for key in ("step_seconds", "assign_seconds", "targets_seconds"))
    assert 0 <= share["share"] <= 1
    assert share["share"] == pytest.approx(
        (share["assign_seconds"] + share["targets_seconds"]) / share["step_seconds"]
    )

    predict = results["predict"]
    assert set(predict) == PREDICT_KEYS
    assert predict["tiles"] == 4  # four images of one tile each
    assert positive(predict["seconds"]) and predict["tiles_per_s"] == pytest.approx(4 / predict["seconds"])
    assert predict["peak_memory_mb"] is None

    printed = capsys.readouterr().out
    assert "| KLDet (P2-P6, TlA, Ali-TSM) |" in printed and "| FCOS (P3-P7) |" in printed
    assert "tiles/s" in printed and "FAILED" not in printed
    assert "Ali-TSM, 800x800 image" in printed and "Hierarchical KLD (RPN), 800x800 image" in printed


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_one_line_and_exit_1(bench_gpu, tmp_path, capsys):
    out = tmp_path / "bench_gpu.json"
    assert bench_gpu.main(["--smoke", "--device", "cuda", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "CUDA is not available" in captured.err
    assert not out.exists()


def test_a_failing_section_is_recorded_and_the_others_still_run(bench_gpu, tmp_path, monkeypatch, capsys):
    def fail(*_):
        raise RuntimeError("CUDA error: an illegal memory access")

    training = {
        name: {"images_per_s": rate, "step_seconds": 2 / rate, "peak_memory_mb": None}
        for name, rate in (("kldet", 2.0), ("fcos", 5.0))
    }
    monkeypatch.setattr(bench_gpu, "bench_assigner", fail)
    monkeypatch.setattr(bench_gpu, "build_models", lambda *_: {"kldet": None, "fcos": None})
    monkeypatch.setattr(bench_gpu, "bench_training", lambda *_: training)
    monkeypatch.setattr(
        bench_gpu,
        "bench_flops",
        lambda *_: {"kldet": {"gflops_per_image": 3.0}, "fcos": {"gflops_per_image": 1.0}},
    )
    monkeypatch.setattr(bench_gpu, "bench_assignment_share", fail)
    monkeypatch.setattr(bench_gpu, "bench_predict", lambda *_: {"error": "not run"})
    out = tmp_path / "bench_gpu.json"
    assert bench_gpu.main(["--smoke", "--device", "cpu", "--out", str(out)]) == 1
    results = json.loads(out.read_text())
    assert results["alitsm"] == {"error": "RuntimeError: CUDA error: an illegal memory access"}
    assert results["assignment_share"] == results["hierarchical"] == results["alitsm"]
    # 2.5x the time per image for 3x the FLOPs: 2.5 / 3 of the FLOP ratio, within the goal.
    assert results["ratios"]["time_ratio"] == pytest.approx(2.5)
    assert results["ratios"]["time_over_flop_ratio"] == pytest.approx(2.5 / 3)
    assert results["ratios"]["goal_met"] is True
    printed = capsys.readouterr().out
    assert "alitsm: FAILED: RuntimeError" in printed and "assignment_share: FAILED" in printed
