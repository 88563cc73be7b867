"""kldet-train end to end on a tiny synthetic set: fast_dev_run, checkpoints, resume, the non-finite loss
guard, lr scaling, a multirun sweep and the missing-data message."""

import json
import re
from pathlib import Path

import pytest
import torch
from lightning.pytorch.utilities.model_summary import ModelSummary
from omegaconf import OmegaConf, open_dict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import tiny_spec
from kldet.analysis.model import count_flops
from kldet.cli.evaluate import main as kldet_eval
from kldet.cli.train import build_datamodule, build_module, build_trainer, train, trainer_precision
from kldet.cli.validate import validate_config
from kldet.errors import KLDetConfigError
from kldet.inference import precision as precision_module
from kldet.lit import EXAMPLE_INPUT_SIZE, KLDetModule, NonFiniteLossError
from kldet.model import KLDet
from kldet.optim import WarmupMultiStep
from training import TINY, TINY_DATA, Probe, kldet_train, tiny_config

pytestmark = pytest.mark.usefixtures("quiet_single_thread")


def test_fast_dev_run_of_the_synthetic_experiment(monkeypatch, capsys, caplog, tmp_path, data_dir):
    run_dir = tmp_path / "run"
    # With the model summary on, as kldet-train prints it: it runs the module's example input.
    with_summary = [o for o in TINY if not o.startswith("callbacks.model_summary.")]
    kldet_train(
        monkeypatch,
        *with_summary,
        "callbacks.model_summary.max_depth=1",
        "trainer.fast_dev_run=true",
        f"paths.data_dir={data_dir}",
        f"hydra.run.dir={run_dir}",
    )
    assert (data_dir / "synthetic" / "annotations" / "train.json").is_file()
    assert json.loads((data_dir / "synthetic" / "synthetic.json").read_text())["num_images"] == 6
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"train/loss", "train/loss_cls", "train/loss_box", "train/loss_ctr", "val/AP", "test/AP50"} <= set(
        metrics
    )
    assert re.search(r"\|\s*AP\s*\|\s*AP50\s*\|", capsys.readouterr().out)
    flops = re.search(r"^([\d.]+(?: [KMGTB])?)\s+Total Flops", caplog.text, re.MULTILINE)
    assert flops and flops.group(1) != "0"


def test_checkpoints_and_resume_restore_step_optimiser_and_schedule(tmp_path, data_dir):
    # Two epochs of 3 updates (5 images, batch 2); warm-up for 4 updates, decay after epoch 1.
    schedule = [
        "scheduler.warmup=linear",
        "scheduler.warmup_steps=4",
        "scheduler.warmup_factor=0.5",
        "scheduler.milestones=[1]",
    ]
    every_epoch = ["trainer.check_val_every_n_epoch=1", "test=false"]
    first = tiny_config(data_dir, tmp_path / "first", *schedule, *every_epoch, "trainer.max_epochs=1")
    train(first)
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    assert (tmp_path / "first" / "checkpoints" / "best.ckpt").is_file()
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert (saved["global_step"], saved["epoch"]) == (3, 0)
    assert saved["lr_schedulers"][0]["last_epoch"] == 3
    assert set(saved["hyper_parameters"]) >= {"model", "classes", "category_ids", "preprocess"}
    assert all(key.startswith(("model.", "val_metric", "test_metric")) for key in saved["state_dict"])

    second = tiny_config(data_dir, tmp_path / "second", *schedule, *every_epoch, "trainer.max_epochs=2")
    with open_dict(second):
        second.ckpt_path = str(last)
    datamodule = build_datamodule(second)
    module = build_module(second, datamodule)
    trainer = build_trainer(second)
    probe = Probe()
    trainer.callbacks.append(probe)
    trainer.fit(module, datamodule=datamodule, ckpt_path=second.ckpt_path)

    assert (probe.global_step, probe.epoch) == (3, 1)
    assert probe.scheduler["last_epoch"] == 3
    saved_state = saved["optimizer_states"][0]["state"]
    assert saved_state.keys() == probe.optimizer["state"].keys()
    for key, value in saved_state.items():
        assert torch.equal(value["momentum_buffer"], probe.optimizer["state"][key]["momentum_buffer"])
    # Update 3 (0-based) is in epoch 1: decayed once, and 3/4 through the linear warm-up.
    factor = WarmupMultiStep(milestones=(1,), warmup="linear", warmup_steps=4, warmup_factor=0.5).factor(3, 3)
    assert factor == pytest.approx(0.1 * (1 - 0.25 * 0.5))
    lr = second.optimizer.lr
    assert probe.lrs == pytest.approx({"weight": lr * factor, "bias": 2 * lr * factor, "norm": lr * factor})
    assert trainer.global_step == 6


def test_auto_scale_lr_follows_the_total_batch(tmp_path, data_dir):
    cfg = tiny_config(
        data_dir,
        tmp_path,
        "module.auto_scale_lr=true",
        "optimizer.lr=0.01",
        "module.base_batch_size=8",
        "trainer.accumulate_grad_batches=2",
        "trainer.fast_dev_run=true",
        "test=false",
    )
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    trainer = build_trainer(cfg)
    trainer.fit(module, datamodule=datamodule)
    # batch 2 x 1 device x accumulate 2 = 4 images per update: half of base 8.
    lrs = {group["name"]: group["initial_lr"] for group in trainer.optimizers[0].param_groups}
    assert lrs == pytest.approx({"weight": 0.005, "bias": 0.01, "norm": 0.005})


def test_non_finite_loss_names_step_and_images(tmp_path, data_dir, monkeypatch):
    def nan_loss(self, images, targets):
        value = self.head.cls_logits.weight.sum() * float("nan")
        return {"loss_cls": value, "loss_box": value.detach(), "loss_ctr": value.detach()}

    monkeypatch.setattr(KLDet, "loss", nan_loss)
    cfg = tiny_config(data_dir, tmp_path, "trainer.max_epochs=1", "test=false")
    with pytest.raises(NonFiniteLossError, match=r"global step 0 .*loss_cls=nan.*images: \d+\.png, \d+\.png"):
        train(cfg)


def test_cli_prints_errors_without_traceback(monkeypatch, capsys, tmp_path, data_dir):
    monkeypatch.setattr(KLDet, "loss", lambda self, images, targets: {"loss_cls": torch.tensor(float("inf"))})
    with pytest.raises(SystemExit) as exit_info:
        kldet_train(monkeypatch, *TINY, f"paths.data_dir={data_dir}", f"hydra.run.dir={tmp_path}")
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "kldet-train: error: non-finite loss at global step 0" in err
    assert "Traceback" not in err


def test_missing_aitod_says_where_and_which_key(monkeypatch, capsys, tmp_path):
    with pytest.raises(SystemExit):
        kldet_train(
            monkeypatch,
            "experiment=aitod_r50",
            "model.weights=null",
            f"paths.data_dir={tmp_path}",
            f"hydra.run.dir={tmp_path / 'run'}",
        )
    err = capsys.readouterr().err
    assert f"AI-TOD split 'trainval' not found: no root at {tmp_path}/aitod" in err
    assert "root=" in err and "Traceback" not in err


def test_missing_caffe_weights_file_is_one_line(monkeypatch, capsys, tmp_path, data_dir):
    missing = tmp_path / "weights" / "resnet50_caffe.pth"
    with pytest.raises(SystemExit) as exit_info:
        kldet_train(
            monkeypatch,
            *TINY,
            "model.backbone=resnet50",
            "model.style=caffe",
            f"model.weights={missing}",
            f"paths.data_dir={data_dir}",
            f"hydra.run.dir={tmp_path / 'run'}",
        )
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    # (The synthetic set's progress bar may come first.)
    assert (
        err.strip().splitlines()[-1] == f"kldet-train: error: backbone weights file {missing} does not exist"
    )
    assert "Traceback" not in err


def test_multirun_sweeps_assigners(monkeypatch, tmp_path, data_dir):
    kldet_train(
        monkeypatch,
        "-m",
        *TINY,
        "assigner=alitsm,fcos,atss",
        "trainer.fast_dev_run=true",
        "test=false",
        f"paths.data_dir={data_dir}",
        f"hydra.sweep.dir={tmp_path}",
    )
    configs = sorted(tmp_path.glob("*/.hydra/config.yaml"))
    assert [path.parent.parent.name for path in configs] == ["0", "1", "2"]
    targets = [OmegaConf.load(path).model.assigner._target_ for path in configs]
    assert targets == [
        "kldet.assign.AliTSMAssigner",
        "kldet.assign.FCOSAssigner",
        "kldet.assign.ATSSAssigner",
    ]
    assert all((path.parent.parent / "metrics.json").is_file() for path in configs)


def test_validation_images_reach_tensorboard_and_kldet_eval_checkpoint_mode(capsys, tmp_path, data_dir):
    overrides = [
        "trainer.max_epochs=1",
        "trainer.check_val_every_n_epoch=1",
        "trainer.log_every_n_steps=1",
        "test=false",
        "logger=tensorboard",
    ]
    train(tiny_config(data_dir, tmp_path, *overrides))
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert "val/image_0" in events.Tags()["images"]
    assert "val/AP" in events.Tags()["scalars"] and "train/loss" in events.Tags()["scalars"]
    logged = json.loads((tmp_path / "metrics.json").read_text())
    ckpt = tmp_path / "checkpoints" / "best.ckpt"
    capsys.readouterr()
    tiny_data = ["data.max_size=64", "data.num_workers=0", *TINY_DATA]
    code = kldet_eval(
        [f"ckpt={ckpt}", "experiment=synthetic", *tiny_data, f"paths.data_dir={data_dir}", "split=val"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert re.search(r"\|\s*AP\s*\|\s*AP50\s*\|", out)
    written = json.loads((tmp_path / "checkpoints" / "metrics_val.json").read_text())
    # The same weights on the same split as the last validation of training.
    assert written["AP50"] == pytest.approx(logged["val/AP50"])
    assert written["AP"] == pytest.approx(logged["val/AP"])


def test_kldet_eval_checkpoint_mode_rejects_unknown_keys(capsys, tmp_path):
    assert kldet_eval([f"ckpt={tmp_path / 'x.ckpt'}", "data=synthetic", "data.nope=1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("kldet-eval: error: ") and "nope" in err and "Traceback" not in err


def test_channels_last_training_keeps_the_network_and_batches_nhwc(tmp_path, data_dir):
    cfg = tiny_config(
        data_dir, tmp_path, "module.channels_last=true", "trainer.fast_dev_run=true", "test=false"
    )
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    seen = []
    loss = module.model.loss
    module.model.loss = lambda images, targets: (
        seen.append(images.is_contiguous(memory_format=torch.channels_last)) or loss(images, targets)
    )
    build_trainer(cfg).fit(module, datamodule=datamodule)
    assert seen == [True]
    assert module.model.head.cls_logits.weight.is_contiguous(memory_format=torch.channels_last)


def cpu_flags() -> set[str]:
    """The CPU feature flags the Linux kernel reports (empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {
        flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":")[1].split()
    }


@pytest.mark.skipif(not cpu_flags(), reason="needs /proc/cpuinfo")
def test_precision_auto_on_this_cpu_follows_its_bf16_instructions():
    # Independent of torch's detection: the kernel's flags for AVX-512-BF16 and AMX-BF16.
    native = bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    assert trainer_precision("auto", "cpu") == ("bf16-mixed" if native else "32-true")


@pytest.mark.parametrize(
    ("accelerator", "cuda_available", "native", "expected"),
    [
        ("cpu", False, {"cpu"}, "bf16-mixed"),
        ("cpu", True, {"cuda"}, "32-true"),  # the CPU is asked for, not the GPU torch sees
        ("gpu", True, {"cuda"}, "bf16-mixed"),
        ("cuda", True, set(), "32-true"),  # e.g. a V100: no bf16
        ("auto", True, {"cuda"}, "bf16-mixed"),
        ("auto", False, {"cuda"}, "32-true"),  # auto without a GPU is the CPU
        ("auto", False, {"cpu"}, "bf16-mixed"),
        ("mps", False, {"cpu"}, "32-true"),
    ],
)
def test_precision_auto_is_bf16_where_the_accelerator_computes_it(
    monkeypatch, accelerator, cuda_available, native, expected
):
    monkeypatch.setattr(precision_module, "native_bf16", lambda device: device.type in native)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_available)
    assert trainer_precision("auto", accelerator) == expected
    # Any other value is Lightning's, passed on untouched.
    assert trainer_precision("16-mixed", accelerator) == "16-mixed"


@pytest.mark.parametrize("native", [True, False])
def test_precision_auto_builds_the_trainer_in_the_precision_it_resolves_to(
    monkeypatch, caplog, tmp_path, data_dir, native
):
    monkeypatch.setattr(precision_module, "native_bf16", lambda device: native)
    # The synthetic experiment's own number format and layout (TINY pins fp32, contiguous).
    cfg = tiny_config(
        data_dir, tmp_path, "precision=auto", "module.channels_last=true", "trainer.fast_dev_run=true"
    )
    assert cfg.trainer.precision == "auto"
    validate_config(cfg)  # kldet-train's own value, beside Lightning's
    with caplog.at_level("INFO", logger="kldet.cli.train"):
        trainer = build_trainer(cfg)
    assert trainer.precision == ("bf16-mixed" if native else "32-true")
    assert f"precision=auto: {trainer.precision} on this machine" in caplog.text


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_gpu_trainer_without_a_gpu_is_one_config_error(tmp_path, data_dir):
    cfg = tiny_config(data_dir, tmp_path, "trainer=gpu")
    with pytest.raises(
        KLDetConfigError, match=r"^trainer.accelerator='gpu', trainer.devices=1: .*trainer=cpu"
    ):
        build_trainer(cfg)


def test_model_summary_counts_flops_on_the_example_input():
    module = KLDetModule(tiny_spec(2), ["a", "b"])
    example = module.example_input_array
    assert example.shape == (1, 3, EXAMPLE_INPUT_SIZE, EXAMPLE_INPUT_SIZE) and EXAMPLE_INPUT_SIZE % 64 == 0
    assert "example_input_array" not in module.state_dict()
    summary = ModelSummary(module, max_depth=1)
    # What the summary counts is the forward of the detector on that input, counted on its own.
    assert summary.total_flops == count_flops(lambda: module.model(example)) > 0
    assert "Total Flops" in str(summary) and module.example_input_array is example
