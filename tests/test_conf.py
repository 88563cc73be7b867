"""The Hydra configuration: every experiment composes through the real entry point, values match the spec,
unknown keys are errors, and the groups the README promises can be combined."""

import contextlib
import functools
import io
import re
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
    # A single-stage model's point assigner, or a two-stage model's RPN (anchor) assigner.
    assigner = cfg.model.get("assigner") or cfg.model.rpn_assigner
    assert assigner._target_ in (
        "kldet.assign.AliTSMAssigner",
        "kldet.assign.FCOSAssigner",
        "kldet.assign.HierarchicalKLDAssigner",
    )
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
    assigner = cfg.model.assigner
    assert (assigner._target_, list(assigner.topk), assigner.alpha, assigner.beta) == (
        "kldet.assign.AliTSMAssigner",
        [3, 1],
        1.0,
        7.0,
    )
    assert (assigner.alpha_m, assigner.ratio, assigner.prior_fraction) == (0.75, 0.9, 0.5)
    post = cfg.model.postprocess
    assert (post.score_thresh, post.nms_thresh, post.max_detections) == (0.05, 0.5, 3000)
    assert (post.pre_nms_topk, post.candidates) == (3000, "points")
    optimizer, scheduler, module = cfg.optimizer, cfg.scheduler, cfg.module
    assert (optimizer._target_, optimizer.lr, optimizer.momentum, optimizer.weight_decay) == (
        "torch.optim.SGD",
        0.0025,
        0.9,
        1e-4,
    )
    assert (module.bias_lr_factor, module.bias_weight_decay, module.norm_weight_decay) == (2.0, 0.0, 0.0)
    assert (module.auto_scale_lr, module.base_batch_size) == (False, 2)
    assert (scheduler.warmup, scheduler.warmup_steps, scheduler.warmup_factor) == ("constant", 10000, 1 / 3)
    assert (list(scheduler.milestones), scheduler.gamma) == ([8, 11], 0.1)
    trainer = cfg.trainer
    assert (trainer.max_epochs, trainer.check_val_every_n_epoch) == (12, 12)
    assert (trainer.gradient_clip_val, trainer.gradient_clip_algorithm) == (35.0, "norm")
    assert (cfg.module.metric, cfg.monitor) == ("aitod", "val/AP")


def test_fcos_baseline_differs_from_kldet_only_in_the_detector():
    kldet = job_config("experiment=aitod_r50")
    fcos = job_config("experiment=aitod_fcos_r50")
    assert (list(fcos.model.fpn_levels), fcos.model.attention, fcos.model.assigner._target_) == (
        [3, 4, 5, 6, 7],
        False,
        "kldet.assign.FCOSAssigner",
    )
    assert (fcos.model.assigner.center_sampling, fcos.model.assigner.center_radius) == (True, 1.5)
    assert "topk" not in fcos.model.assigner
    assert (fcos.scheduler.warmup, fcos.scheduler.warmup_steps) == ("linear", 500)
    assert fcos.data == kldet.data and fcos.trainer == kldet.trainer
    assert fcos.optimizer == kldet.optimizer and fcos.model.postprocess == kldet.model.postprocess
    different = {key for key in kldet.model if key != "assigner" and kldet.model[key] != fcos.model[key]}
    assert different == {"_target_", "fpn_levels", "attention"}


def test_dior_uses_voc_metric():
    cfg = job_config("experiment=dior_r50")
    assert (cfg.data.format, cfg.module.metric, cfg.monitor) == ("dior", "voc", "val/mAP")
    assert cfg.data.root.endswith("/data/DIOR")


def test_synthetic_is_cpu_sized_and_writes_its_data():
    cfg = job_config("experiment=synthetic")
    assert (cfg.trainer.accelerator, cfg.model.backbone, cfg.model.weights) == ("cpu", "resnet18", None)
    assert cfg.data.root == f"{cfg.paths.data_dir}/synthetic"
    assert cfg.data.max_size == cfg.synthetic.image_size <= 512
    # bf16 where the CPU has it, NHWC (docs/benchmarks.md#training-in-bf16); the scenes experiment keeps the
    # fp32 its figures were measured in.
    assert (cfg.trainer.precision, cfg.module.channels_last) == ("auto", True)
    scenes = job_config("experiment=synthetic_scenes")
    assert (scenes.trainer.precision, scenes.module.channels_last) == ("32-true", False)


@pytest.mark.parametrize(
    ("overrides", "key", "expected"),
    [
        (["assigner=fcos"], "model.assigner._target_", "kldet.assign.FCOSAssigner"),
        (["assigner=atss"], "model.assigner.topk", 9),
        (["optimizer=adamw"], "optimizer._target_", "torch.optim.AdamW"),
        (["precision=bf16-mixed"], "trainer.precision", "bf16-mixed"),
        (["precision=16-mixed"], "trainer.precision", "16-mixed"),
        (["trainer=ddp", "trainer.num_nodes=2"], "trainer.num_nodes", 2),
        (["trainer=ddp"], "trainer.strategy", "ddp"),
        (["trainer=gpu"], "trainer.accelerator", "gpu"),
        (["logger=wandb"], "logger.wandb.project", "kldet"),
        (["logger=none"], "logger", {}),
        (["data=coco"], "data.format", "coco"),
        (["module.auto_scale_lr=true"], "module.auto_scale_lr", True),
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
    assert set(cfg.hydra.sweeper.params) == {"optimizer.lr", "scheduler.warmup_steps"}


@pytest.mark.parametrize(
    "override",
    [
        "foo=1",
        "data.foo=1",
        "trainer.max_epoch=3",
        "optimizer.learning_rate=0.1",
        "model.assigner.top_k=[1,1]",
    ],
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


def _file_values(path: Path) -> dict:
    """The keys a config file sets itself (its own body, not its defaults list), flattened."""
    body = OmegaConf.to_container(OmegaConf.load(path))
    body.pop("defaults", None)

    def flat(node, prefix=""):
        if isinstance(node, dict):
            return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}{key}.").items()}
        return {prefix[:-1]: node}

    return flat(body)


@pytest.mark.parametrize("group", ["model", "assigner", "scheduler"])
def test_group_files_only_change_what_their_signatures_give(group):
    """Each default lives once (kldet.cli.signatures): the model, assigner and scheduler files take
    their keys from the Python they configure and restate none of its values."""
    for path in sorted((Path(CONFIG_DIR) / group).glob("*.yaml")):
        assert OmegaConf.load(path).defaults[0].startswith(f"/signatures/{group}/"), path
        assert _file_values(path) == {}, path


def test_experiments_change_only_what_differs_from_their_groups():
    """An experiment file lists only what it changes: none of its values equals what its defaults list
    alone (its group choices, or the experiment it extends) gives."""
    for experiment in EXPERIMENTS:
        path = Path(CONFIG_DIR) / "experiment" / f"{experiment}.yaml"
        base = []
        for entry in OmegaConf.load(path).get("defaults", []):
            if isinstance(entry, str):  # the experiment it extends
                base.append(f"experiment={entry}")
            else:
                base += [f"{key.removeprefix('override /')}={value}" for key, value in entry.items()]
        # Unresolved: a path such as ${paths.data_dir}/... is compared as written.
        defaults_only = OmegaConf.create(OmegaConf.to_container(composed(*base), resolve=False))
        for key, value in _file_values(path).items():
            if key != "name":
                given = OmegaConf.select(defaults_only, key, throw_on_resolution_failure=False)
                assert given != value, (experiment, key, value)


@pytest.mark.parametrize("preset", ["faster_kldet_r50", "faster_rcnn_r50", "faster_kldet_r18"])
def test_two_stage_models_take_an_anchor_assigner_and_the_spec_settings(preset):
    cfg = job_config(f"model={preset}", "data=dior")
    model = cfg.model
    assert "assigner" not in model
    if preset == "faster_rcnn_r50":  # the baseline: torchvision's IoU rule
        assert model.rpn_assigner._target_ == "kldet.assign.MaxIoUAnchorAssigner"
        assert (model.rpn_assigner.fg_iou_thresh, model.rpn_assigner.bg_iou_thresh) == (0.7, 0.3)
    else:  # KLDET_SPEC.md section 9
        assert model.rpn_assigner._target_ == "kldet.assign.HierarchicalKLDAssigner"
        assert (list(model.rpn_assigner.topk), model.rpn_assigner.ratio, model.rpn_assigner.threshold) == (
            [3, 1],
            0.9,
            0.8,
        )
    assert (model.rpn_batch_size, model.rpn_positive_fraction, model.rcnn_batch_size) == (256, 0.5, 512)
    assert (model.rpn_pre_nms_topk, model.rpn_nms_thresh, model.rpn_post_nms_topk) == (3000, 0.7, 3000)
    post = model.postprocess
    assert (post._target_, post.score_thresh, post.nms_thresh, post.max_detections) == (
        "kldet.model.roi_head.RCNNPostProcess",
        0.05,
        0.5,
        3000,
    )
    sides = {"faster_rcnn_r50": [32, 64, 128, 256, 512]}.get(preset)
    assert (model.anchor_sides, model.anchor_fraction) == (sides, 0.5)
    if preset != "faster_kldet_r18":
        assert (model.backbone, model.weights, model.style) == ("resnet50", "IMAGENET1K_V1", "pytorch")
        assert (model.backbone_norm, model.frozen_stages, model.representation_size) == (
            "frozen_stats_bn",
            1,
            1024,
        )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.rpn_nms_thresh=1.5", r"model.rpn_nms_thresh=1.5: must be in \[0, 1\]"),
        ("model.rpn_assigner.threshold=-1", r"model.rpn_assigner.threshold=-1: must be in \[0, 1\]"),
        ("model.anchor_sides=[0,1,2,3,4]", r"model.anchor_sides=\[0, 1, 2, 3, 4\]: must be > 0"),
        (
            "assigner=alitsm",
            r"model.assigner: kldet.model.faster_kldet_r18 is a two-stage model: .*assigner=max_iou",
        ),
    ],
)
def test_two_stage_keys_are_validated(monkeypatch, capsys, tmp_path, override, message):
    # Validation runs before any data is read or model built.
    with pytest.raises(SystemExit) as exit_info:
        kldet_train(
            monkeypatch,
            "model=faster_kldet_r18",
            "data=synthetic",
            f"paths.data_dir={tmp_path}",
            f"hydra.run.dir={tmp_path / 'run'}",
            override,
        )
    assert exit_info.value.code == 1
    assert re.search(message, capsys.readouterr().err)
