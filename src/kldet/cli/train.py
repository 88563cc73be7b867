"""kldet-train: train KLDet as configured by Hydra (root config ``conf/train.yaml``).

    kldet-train experiment=aitod_r50
    kldet-train experiment=synthetic trainer.max_epochs=2
    kldet-train experiment=aitod_r50 trainer=ddp trainer.devices=4 precision=bf16-mixed
    kldet-train experiment=aitod_r50 ckpt_path=outputs/aitod_r50/<date_time>/checkpoints/last.ckpt
    kldet-train -m experiment=synthetic assigner=alitsm,fcos seed=0,1,2

Each run writes under ``outputs/<name>/<date_time>/``: ``.hydra/`` (the resolved config and the
overrides), ``checkpoints/`` (``best.ckpt`` by the validation metric and ``last.ckpt``), the logger's
folder, ``metrics.json`` and ``train.log``.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from kldet.data.synthetic import generate
from kldet.datamodule import KLDetDataModule
from kldet.errors import KLDetConfigError, KLDetError
from kldet.evaluation import format_table
from kldet.lit import KLDetModule
from kldet.model import input_normalization

# A wheel carries the Hydra configs as kldet/conf; an editable install (make install) reads <repo>/conf.
_PACKAGED_CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"
CONFIG_DIR = str(
    _PACKAGED_CONFIG_DIR if _PACKAGED_CONFIG_DIR.is_dir() else Path(__file__).resolve().parents[3] / "conf"
)

log = logging.getLogger(__name__)


def prepare_synthetic(root: str | Path, settings: Mapping[str, Any]) -> None:
    """Writes the synthetic data set to ``root`` unless one with the same ``settings`` is there.

    ``settings`` are :func:`kldet.data.synthetic.generate` arguments (num_images, seed, image_size,
    val_fraction); they are stored in ``root/synthetic.json`` to recognise the set later.
    """
    root = Path(root)
    stamp = root / "synthetic.json"
    settings = dict(settings)
    if stamp.is_file() and json.loads(stamp.read_text()) == settings:
        return
    log.info("writing the synthetic data set to %s", root)
    generate(root, format="aitod", progress=True, **settings)
    stamp.write_text(json.dumps(settings) + "\n")


def build_datamodule(cfg: DictConfig, normalization: Mapping[str, Any] | None = None) -> KLDetDataModule:
    """The ``data`` config instantiated, after writing the synthetic set if ``cfg.synthetic`` asks for it.

    The transforms normalise as ``normalization`` says (``{"channel_order", "mean", "std"}``, e.g. a
    checkpoint's), by default as the input of ``cfg.model.style``'s backbone.
    """
    if cfg.get("synthetic"):
        prepare_synthetic(cfg.data.root, cfg.synthetic)
    if normalization is None:
        normalization = input_normalization(cfg.model.get("style", "pytorch")).as_preprocess()
    return instantiate(cfg.data, normalization=dict(normalization))


def read_training_data(cfg: DictConfig, datamodule: KLDetDataModule) -> None:
    """Reads the train and val splits now, so that missing data fails before the model is built.

    Raises:
        KLDetConfigError: the data module's message (where the files are expected) plus the Hydra keys to set.
    """
    try:
        datamodule.setup("fit")
    except KLDetConfigError as error:
        raise KLDetConfigError(
            f"{error}\nkldet-train keys: data.root=... (now {cfg.data.root}), or data.<split>_ann=... and "
            "data.<split>_images=... per split; paths.data_dir=... moves the default roots of all data sets"
        ) from None


def build_module(cfg: DictConfig, datamodule: KLDetDataModule) -> KLDetModule:
    """A KLDetModule whose classes, category ids and preprocessing come from the data module (whose
    normalisation :func:`build_datamodule` took from the model's style)."""
    return KLDetModule(
        model=cfg.model,
        classes=datamodule.classes,
        category_ids=datamodule.category_ids,
        optim=cfg.optim,
        preprocess={
            **datamodule.normalization.as_preprocess(),
            "size_divisor": datamodule.size_divisor,
            "max_size": datamodule.eval_transform.max_size,
        },
        **cfg.module,
    )


def build_trainer(cfg: DictConfig, **overrides: Any) -> L.Trainer:
    """A Trainer from the ``trainer``, ``callbacks`` and ``logger`` configs, writing under
    ``cfg.paths.output_dir``; ``overrides`` replace any Trainer argument (those groups are then not built)."""
    arguments = {**cfg.trainer, **overrides}
    if "callbacks" not in arguments:
        arguments["callbacks"] = [instantiate(callback) for callback in (cfg.get("callbacks") or {}).values()]
    if "logger" not in arguments:
        arguments["logger"] = [instantiate(logger) for logger in (cfg.get("logger") or {}).values()] or False
    if "default_root_dir" not in arguments:
        arguments["default_root_dir"] = cfg.paths.output_dir
    return L.Trainer(**arguments)


def prefixed(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    """Values of the keys starting with ``prefix`` (e.g. "test/"), prefix removed."""
    return {key[len(prefix) :]: float(value) for key, value in metrics.items() if key.startswith(prefix)}


def best_checkpoint(trainer: L.Trainer, monitor: str) -> str | None:
    """Path of the best checkpoint by ``monitor``, None when none was written (e.g. no validation yet)."""
    for callback in trainer.checkpoint_callbacks:
        if callback.monitor == monitor and callback.best_model_path:
            return callback.best_model_path
    return None


def train(cfg: DictConfig) -> dict[str, float]:
    """Fits (resuming from ``cfg.ckpt_path`` if set), then tests the best checkpoint when ``cfg.test``.

    Writes ``metrics.json`` in the run folder and prints the test table.

    Returns:
        the last logged metrics of training, validation and test (keys "val/AP", "test/AP", ...).
    """
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    read_training_data(cfg, datamodule)
    module = build_module(cfg, datamodule)
    trainer = build_trainer(cfg)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
    if cfg.test:
        # verbose=False: the table below replaces Lightning's listing of every logged value.
        best = best_checkpoint(trainer, cfg.monitor)
        test_metrics = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)
        metrics.update(test_metrics[0])
        if trainer.is_global_zero:
            print(format_table(prefixed(test_metrics[0], "test/"), cfg.module.metric, datamodule.classes))
    if trainer.is_global_zero:
        output_dir = Path(cfg.paths.output_dir)
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        log.info("run folder: %s", output_dir)
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Entry point ``kldet-train``; returns ``cfg.monitor`` for Hydra sweepers."""
    try:
        metrics = train(cfg)
    except KLDetError as error:
        print(f"kldet-train: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    return metrics.get(cfg.monitor)


if __name__ == "__main__":
    main()
