"""The two-stage KLDet downstream, unchanged: kldet-train (fast_dev_run and one epoch), the checkpoint,
the Predictor (tiled), kldet-export (the convolutional part, post-processing in Python) and kldet-eval."""

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from kldet.checkpoint import load_detector
from kldet.cli.evaluate import main as kldet_eval
from kldet.cli.export import main as export_main
from kldet.cli.train import train
from kldet.data.synthetic import generate
from kldet.inference import Predictor
from kldet.inference.export import split_outputs
from kldet.model import TwoStageKLDet
from training import TINY_DATA, TINY_TWO_STAGE, kldet_train, tiny_config

pytestmark = pytest.mark.usefixtures("quiet_single_thread")


def test_fast_dev_run_of_the_two_stage_model(monkeypatch, tmp_path, data_dir):
    run_dir = tmp_path / "run"
    kldet_train(
        monkeypatch,
        *TINY_TWO_STAGE,
        "trainer.fast_dev_run=true",
        f"paths.data_dir={data_dir}",
        f"hydra.run.dir={run_dir}",
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    losses = {"train/loss_rpn_cls", "train/loss_rpn_box", "train/loss_rcnn_cls", "train/loss_rcnn_box"}
    assert {"train/loss", *losses, "val/AP", "test/AP50"} <= set(metrics)
    config = (run_dir / ".hydra" / "config.yaml").read_text()
    assert "rpn_assigner" in config and "kldet.assign.HierarchicalKLDAssigner" in config


# The DIOR experiment shrunk to seconds: its data, metric and schedule, a small random-weight network.
SMALL_DIOR_NETWORK = [
    "model.weights=null",
    "model.backbone=resnet18",
    "model.backbone_norm=bn",
    "model.frozen_stages=-1",
    "model.channels=16",
    "model.representation_size=64",
    "model.rpn_pre_nms_topk=200",
    "model.rpn_post_nms_topk=200",
    "model.rcnn_batch_size=64",
]


def test_fast_dev_run_of_the_dior_experiment_on_dior_layout_data(monkeypatch, tmp_path):
    root = tmp_path / "dior"
    generate(root, num_images=6, seed=3, image_size=128, format="dior")
    run_dir = tmp_path / "run"
    kldet_train(
        monkeypatch,
        "experiment=dior_faster_r50",
        *SMALL_DIOR_NETWORK,
        f"data.root={root}",
        "data.train_split=train",
        "data.val_split=val",
        "data.test_split=val",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.persistent_workers=false",
        "trainer=cpu",
        "trainer.fast_dev_run=true",
        "logger=csv",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={run_dir}",
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # DIOR's VOC metric (val/mAP, the area under the curve, and the 11-point val/mAP_07) and the RPN losses.
    assert {"val/mAP", "val/mAP_07", "test/mAP", "train/loss_rpn_cls"} <= set(metrics)
    config = (run_dir / ".hydra" / "config.yaml").read_text()
    assert "kldet.model.faster_kldet_r50" in config and "kldet.assign.HierarchicalKLDAssigner" in config


@pytest.mark.parametrize("experiment", ["dior_faster_r50", "aitod_faster_r50"])
def test_the_two_stage_experiments_have_the_spec_section_9_schedule(monkeypatch, capsys, experiment):
    capsys.readouterr()
    kldet_train(monkeypatch, "--cfg", "job", f"experiment={experiment}")
    cfg = OmegaConf.create(capsys.readouterr().out)
    assert cfg.model._target_ == "kldet.model.faster_kldet_r50" and cfg.model.weights == "IMAGENET1K_V1"
    assert cfg.model.rpn_assigner == {
        "_target_": "kldet.assign.HierarchicalKLDAssigner",
        "topk": [3, 1],
        "ratio": 0.9,
        "threshold": 0.8,
    }
    assert "assigner" not in cfg.model  # no point assigner beside the RPN's
    # Batch 8, SGD lr 0.01 momentum 0.9 wd 1e-4 on every parameter, linear warm-up 5,000 updates from
    # 0.001x, x0.1 after epochs 8 and 11, 12 epochs, no clipping.
    assert (cfg.data.batch_size, cfg.module.base_batch_size) == (8, 8)
    assert (cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (0.01, 0.9, 1e-4)
    assert (cfg.module.bias_lr_factor, cfg.module.bias_weight_decay, cfg.module.norm_weight_decay) == (
        1,
        1e-4,
        1e-4,
    )
    assert (cfg.scheduler.warmup, cfg.scheduler.warmup_steps, cfg.scheduler.warmup_factor) == (
        "linear",
        5000,
        0.001,
    )
    assert (list(cfg.scheduler.milestones), cfg.scheduler.gamma, cfg.trainer.max_epochs) == ([8, 11], 0.1, 12)
    assert cfg.trainer.gradient_clip_val is None and cfg.trainer.precision == "32-true"
    dior = experiment == "dior_faster_r50"
    assert (cfg.data.format, cfg.module.metric) == (("dior", "voc") if dior else ("aitod", cfg.module.metric))
    assert (cfg.data.train_split, cfg.data.val_split, cfg.data.filter_empty_gt) == ("trainval", "test", True)
    if not dior:
        assert cfg.module.metric != "voc" and cfg.monitor == "val/AP"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("two_stage")
    cfg = tiny_config(
        data_dir,
        out,
        "trainer.max_epochs=1",
        "trainer.check_val_every_n_epoch=1",
        "test=false",
        base=TINY_TWO_STAGE,
    )
    train(cfg)
    return out / "checkpoints" / "last.ckpt"


def test_checkpoint_loads_and_the_predictor_tiles_an_image(checkpoint):
    model, meta = load_detector(checkpoint)
    assert isinstance(model, TwoStageKLDet) and meta["model"]["_target_"] == "kldet.model.faster_kldet_r18"
    assert meta["preprocess"]["channel_order"] == "RGB"
    predictor = Predictor.from_checkpoint(
        checkpoint, score_thresh=0.0, nms_thresh=0.6, tile_size=96, overlap=0.2, precision="fp32"
    )
    assert predictor.model.postprocessor.score_thresh == 0.0 and predictor.iou_thresh == 0.6
    rgb = np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8)
    detections = predictor.predict_image(rgb)
    assert set(detections) >= {"boxes", "scores", "labels"} and len(detections["boxes"]) > 0
    boxes = detections["boxes"]
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 200).all() and (boxes[:, 3] <= 150).all()
    assert (detections["labels"] >= 0).all() and (detections["labels"] < model.num_classes).all()


def test_export_of_the_convolutional_part_with_postprocess_in_python(checkpoint, tmp_path):
    out = tmp_path / "model.pt2"
    assert export_main([f"ckpt={checkpoint}", "format=pt2", f"out={out}", "image_size=128"]) == 0
    sidecar = json.loads((tmp_path / "model.pt2.json").read_text())
    assert sidecar["outputs"][::5] == ["features_0", "objectness_0", "rpn_deltas_0"]
    assert sidecar["postprocess"] == {"score_thresh": 0.05, "nms_thresh": 0.5, "max_detections": 3000}
    model, _ = load_detector(checkpoint, overrides={"postprocess": {"score_thresh": 0.0}})
    exported = torch.export.load(str(out)).module()
    images = torch.randn(2, 3, 128, 96)
    sizes = [(128, 90), (100, 96)]
    with torch.no_grad():
        outputs = split_outputs(exported(images))
        detections = model.postprocess(*outputs, (128, 96), sizes)
    eager = model.predict(images, sizes)
    for ours, theirs in zip(detections, eager, strict=True):
        assert len(theirs["boxes"]) > 0
        torch.testing.assert_close(ours["boxes"], theirs["boxes"], atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(ours["labels"], theirs["labels"])


def test_kldet_eval_checkpoint_mode(checkpoint, capsys, data_dir):
    capsys.readouterr()
    code = kldet_eval(
        [
            f"ckpt={checkpoint}",
            "data=synthetic",
            *TINY_DATA,
            "data.num_workers=0",
            f"paths.data_dir={data_dir}",
        ]
    )
    assert code == 0, capsys.readouterr().err
    written = json.loads((checkpoint.parent / "metrics_test.json").read_text())
    assert {"AP", "AP50"} <= set(written)


def test_kldet_eval_checkpoint_mode_writes_the_error_analysis(checkpoint, capsys, data_dir, tmp_path):
    plots, out = tmp_path / "plots", tmp_path / "metrics.json"
    args = [
        f"ckpt={checkpoint}",
        "data=synthetic",
        *TINY_DATA,
        "data.num_workers=0",
        f"paths.data_dir={data_dir}",
        "model.postprocess.score_thresh=0.0",
        f"out={out}",
        f"plots={plots}",
        "examples=1",
    ]
    capsys.readouterr()
    assert kldet_eval(args) == 0, capsys.readouterr().err
    assert "error analysis:" in capsys.readouterr().out
    printed = json.loads(out.read_text())
    # The analysis reads the same detections the printed metrics scored.
    curves = json.loads((plots / "pr_curves.json").read_text())
    all_areas, iou_range = curves["areas"].index("all"), curves["ious"].index("0.5:0.95")
    for name in curves["classes"]:
        if printed.get(f"AP_{name}", -1) >= 0:
            assert curves["ap"][iou_range][curves["classes"].index(name)][all_areas] == pytest.approx(
                printed[f"AP_{name}"], abs=1e-6
            )
    errors = json.loads((plots / "errors.json").read_text())["areas"]["all"]
    assert errors["AP50"] == pytest.approx(printed["AP50"], abs=1e-6)
    assert len(list((plots / "examples").glob("*.png"))) == 1
    # An analysis key without plots= is refused, not silently ignored.
    assert kldet_eval([*args[:-2], "score_thresh=0.5"]) == 1
    assert "score_thresh= belongs to the error analysis" in capsys.readouterr().err
