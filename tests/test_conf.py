"""The Hydra configuration: every experiment composes through the real entry point, values match the spec,
unknown keys are errors, and the groups the README promises can be combined."""

import contextlib
import functools
import io
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from kldet.cli.train import CONFIG_DIR, main
from training import kldet_train

EXPERIMENTS = sorted(path.stem for path in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))


@functools.cache
def job_config(*overrides: str):
    """The resolved job config that ``kldet-train ... --cfg job --resolve`` prints (cached: read-only)."""
    argv = ["kldet-train", *overrides, "--cfg", "job", "--resolve"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", argv)
        main()
    return OmegaConf.create(out.getvalue())


def composed(*overrides: str):
    """The unresolved config of the compose API (cheaper than the entry point)."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def test_the_promised_experiments_exist():
    assert {"aitod_r50", "aitod_fcos_r50", "dior_r50", "synthetic"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_resolves(experiment):
    cfg = job_config(f"experiment={experiment}")
    assert cfg.name == experiment
    assert cfg.data.format in ("aitod", "dior", "coco")
    assert cfg.model.assigner in ("alitsm", "fcos")
    assert cfg.paths.data_dir == f"{cfg.paths.root_dir}/data"
    assert cfg.callbacks.best_checkpoint.monitor == cfg.monitor


def test_aitod_r50_is_the_paper_setting():
    cfg = job_config("experiment=aitod_r50")
    assert (cfg.data.format, cfg.data.train_split, cfg.data.val_split) == ("aitod", "trainval", "test")
    assert (cfg.data.batch_size, cfg.data.max_size, cfg.data.hflip, cfg.data.size_divisor) == (
        2,
        800,
        0.5,
        32,
    )
    assert (cfg.model.backbone, cfg.model.style, cfg.model.backbone_norm) == (
        "resnet50",
        "caffe",
        "frozen_bn",
    )
    assert cfg.model.weights == "open-mmlab://detectron/resnet50_caffe"
    assert (cfg.model.frozen_stages, list(cfg.model.fpn_levels)) == (1, [2, 3, 4, 5, 6])
    assert cfg.model.attention is True and cfg.model.head_norm is None
    assert (cfg.model.assigner, list(cfg.model.topk), cfg.model.alpha, cfg.model.beta) == (
        "alitsm",
        [3, 1],
        1.0,
        7.0,
    )
    assert (cfg.model.alpha_m, cfg.model.ratio, cfg.model.prior_fraction) == (0.75, 0.9, 0.5)
    assert (cfg.model.score_thresh, cfg.model.nms_thresh, cfg.model.max_detections) == (0.05, 0.5, 3000)
    assert (cfg.model.pre_nms_topk, cfg.model.candidates) == (3000, "points")
    optim = cfg.optim
    assert (optim.lr, optim.momentum, optim.weight_decay, optim.bias_lr_factor) == (0.0025, 0.9, 1e-4, 2.0)
    assert (optim.bias_weight_decay, optim.warmup, optim.warmup_steps) == (0.0, "constant", 10000)
    assert optim.warmup_factor == pytest.approx(1 / 3)
    assert (list(optim.milestones), optim.gamma, optim.base_batch_size) == ([8, 11], 0.1, 2)
    trainer = cfg.trainer
    assert (trainer.max_epochs, trainer.check_val_every_n_epoch) == (12, 12)
    assert (trainer.gradient_clip_val, trainer.gradient_clip_algorithm) == (35.0, "norm")
    assert (cfg.module.metric, cfg.monitor) == ("aitod", "val/AP")


def test_fcos_baseline_differs_from_kldet_only_in_the_detector():
    kldet = job_config("experiment=aitod_r50")
    fcos = job_config("experiment=aitod_fcos_r50")
    assert (list(fcos.model.fpn_levels), fcos.model.attention, fcos.model.assigner) == (
        [3, 4, 5, 6, 7],
        False,
        "fcos",
    )
    assert (fcos.model.center_sampling, fcos.model.center_radius) == (True, 1.5)
    assert "topk" not in fcos.model
    assert (fcos.optim.warmup, fcos.optim.warmup_steps) == ("linear", 500)
    assert fcos.data == kldet.data and fcos.trainer == kldet.trainer


def test_dior_uses_voc_metric():
    cfg = job_config("experiment=dior_r50")
    assert (cfg.data.format, cfg.module.metric, cfg.monitor) == ("dior", "voc", "val/mAP")
    assert cfg.data.root.endswith("/data/DIOR")


def test_synthetic_is_cpu_sized_and_writes_its_data():
    cfg = job_config("experiment=synthetic")
    assert (cfg.trainer.accelerator, cfg.model.backbone, cfg.model.weights) == ("cpu", "resnet18", None)
    assert cfg.data.root == f"{cfg.paths.data_dir}/synthetic"
    assert cfg.data.max_size == cfg.synthetic.image_size <= 512


@pytest.mark.parametrize(
    ("overrides", "key", "expected"),
    [
        (["assigner=fcos"], "model.assigner", "fcos"),
        (["precision=bf16-mixed"], "trainer.precision", "bf16-mixed"),
        (["precision=16-mixed"], "trainer.precision", "16-mixed"),
        (["trainer=ddp", "trainer.num_nodes=2"], "trainer.num_nodes", 2),
        (["trainer=ddp"], "trainer.strategy", "ddp"),
        (["trainer=gpu"], "trainer.accelerator", "gpu"),
        (["logger=wandb"], "logger.wandb.project", "kldet"),
        (["logger=none"], "logger", {}),
        (["data=coco"], "data.format", "coco"),
        (["optim.auto_scale_lr=true"], "optim.auto_scale_lr", True),
    ],
)
def test_groups_combine_with_an_experiment(overrides, key, expected):
    cfg = composed("experiment=synthetic", *overrides)
    assert OmegaConf.select(cfg, key) == expected


def test_run_folder_is_outputs_name_date_time():
    cfg = composed("experiment=aitod_r50")
    raw = OmegaConf.to_container(cfg, resolve=False)
    assert raw["hydra"]["run"]["dir"] == "${paths.log_dir}/${name}/${now:%Y-%m-%d_%H-%M-%S}"
    assert raw["hydra"]["sweep"]["dir"].startswith("${paths.log_dir}/${name}/multirun/")
    assert raw["paths"]["log_dir"] == "${paths.root_dir}/outputs"
    assert cfg.name == "aitod_r50"


def test_sweep_config_is_a_multirun():
    cfg = composed("experiment=synthetic", "hparams_search=synthetic_lr")
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert set(cfg.hydra.sweeper.params) == {"optim.lr", "optim.warmup_steps"}


@pytest.mark.parametrize(
    "override", ["foo=1", "data.foo=1", "trainer.max_epoch=3", "optim.learning_rate=0.1"]
)
def test_unknown_keys_are_errors(monkeypatch, capsys, override):
    with pytest.raises(SystemExit) as exit_info:
        kldet_train(monkeypatch, "--cfg", "job", "experiment=synthetic", override)
    assert exit_info.value.code == 1
    assert "not in struct" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["experiment=dior_r50"], ("dior", "voc", "test")),
        (["data=coco", "split=val"], ("coco", "aitod", "val")),
        (["experiment=synthetic"], ("aitod", "aitod", "test")),
    ],
)
def test_eval_config_takes_the_training_groups(overrides, expected):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("eval", overrides=["ckpt=model.ckpt", *overrides])
    assert (cfg.data.format, cfg.module.metric, cfg.split) == expected
    assert cfg.ckpt == "model.ckpt" and cfg.out is None
