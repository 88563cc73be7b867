"""Tiny kldet-train runs shared by the training, config and data test files (Hydra and Lightning helpers).

Imported as ``training`` (see ``helpers.py`` for why that works); the fixtures ``data_dir`` and
``quiet_single_thread`` that go with these runs are in ``conftest.py``.
"""

import copy
import sys

from hydra import compose, initialize_config_dir
from lightning.pytorch import Callback
from omegaconf import DictConfig, open_dict

from kldet.cli.train import CONFIG_DIR, main

# 6 images of 128x128 (5 train with 7 objects, 1 val with 3: seed 3), resized to 64 px, and a detector
# with 32 channels: seconds per run on a CPU. In fp32, contiguous (the experiment's precision=auto would be
# bf16 on some CPUs only): the same code path on every machine; the bf16 and channels-last tests ask for theirs.
TINY_DATA = ["synthetic.num_images=6", "synthetic.image_size=128", "synthetic.seed=3"]
TINY = [
    "experiment=synthetic",
    *TINY_DATA,
    "precision=32-true",
    "module.channels_last=false",
    "data.max_size=64",
    "data.batch_size=2",
    "data.num_workers=0",
    "model.channels=32",
    "model.head_convs=1",
    "model.head_norm=null",
    "logger=csv",
    "trainer.enable_progress_bar=false",
    "callbacks.model_summary.max_depth=0",
]

# The two-stage model on the same images at their 128 px: 16 channels, a 64-d box head, fewer proposals.
TINY_TWO_STAGE = [
    "data=synthetic",
    *TINY_DATA,
    "data.batch_size=2",
    "data.num_workers=0",
    "data.persistent_workers=false",
    "model=faster_kldet_r18",
    "model.channels=16",
    "model.representation_size=64",
    "model.rpn_pre_nms_topk=200",
    "model.rpn_post_nms_topk=200",
    "model.rcnn_batch_size=64",
    "trainer=cpu",
    "logger=csv",
    "trainer.enable_progress_bar=false",
    "callbacks.model_summary.max_depth=0",
]


def tiny_config(data_dir, output_dir, *overrides, base=TINY) -> DictConfig:
    """The synthetic experiment shrunk (or another ``base`` list of overrides, e.g. :data:`TINY_TWO_STAGE`),
    with the run folder at ``output_dir`` (no Hydra run needed)."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[*base, *overrides])
    with open_dict(cfg):
        cfg.paths = {
            "data_dir": str(data_dir),
            "output_dir": str(output_dir),
            "root_dir": ".",
            "log_dir": ".",
        }
    return cfg


def kldet_train(monkeypatch, *argv):
    """``kldet-train *argv`` in-process (its exit status is a ``SystemExit``); flags such as ``-m`` or
    ``--cfg job`` go before the overrides, as on the command line."""
    # Hydra's logging setup would keep handlers on pytest's per-test captured streams.
    logging = ["hydra/job_logging=none", "hydra/hydra_logging=none"]
    monkeypatch.setattr(sys, "argv", ["kldet-train", *argv, *logging])
    return main()


class Probe(Callback):
    """What the trainer holds when training (re)starts, after any checkpoint was restored."""

    def on_train_start(self, trainer, pl_module):
        self.global_step = trainer.global_step
        self.epoch = trainer.current_epoch
        # Copies: training goes on to update the momentum buffers in place.
        self.optimizer = copy.deepcopy(trainer.optimizers[0].state_dict())
        self.scheduler = copy.deepcopy(trainer.lr_scheduler_configs[0].scheduler.state_dict())
        self.lrs = {group["name"]: group["lr"] for group in trainer.optimizers[0].param_groups}
