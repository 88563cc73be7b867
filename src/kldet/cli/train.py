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
import shlex
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback as HydraCallback
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException
from omegaconf import DictConfig

from kldet.checkpoint import read_checkpoint
from kldet.cli import signatures
from kldet.cli.logs import FILE_ONLY, capture_warnings
from kldet.cli.report import EXIT_ERROR, report_error
from kldet.cli.validate import validate_config
from kldet.data.synthetic import generate
from kldet.datamodule import KLDetDataModule
from kldet.errors import KLDetConfigError, KLDetError
from kldet.evaluation import format_table
from kldet.inference.precision import resolve_precision
from kldet.lit import InterruptCheckpoint, KLDetModule
from kldet.model import input_normalization

# A wheel carries the Hydra configs as kldet/conf; an editable install (make install) reads <repo>/conf.
_PACKAGED_CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"
CONFIG_DIR = str(
    _PACKAGED_CONFIG_DIR if _PACKAGED_CONFIG_DIR.is_dir() else Path(__file__).resolve().parents[3] / "conf"
)

log = logging.getLogger(__name__)
# The config nodes conf/ builds on (conf/model/*.yaml: defaults: [/signatures/model/<preset>@_here_]).
signatures.register()


def prepare_synthetic(root: str | Path, settings: Mapping[str, Any], format: str = "aitod") -> None:
    """Writes the synthetic data set to ``root`` in ``format`` ("aitod" or "dior", the data config's)
    unless one with the same ``settings`` is there.

    ``settings`` are :func:`kldet.data.synthetic.generate` arguments (num_images, seed, image_size,
    val_fraction); they and a "dior" format are stored in ``root/synthetic.json`` to recognise the set later.
    """
    root = Path(root)
    stamp = root / "synthetic.json"
    settings = dict(settings)
    # The AI-TOD layout's stamp stays what it was, so existing sets are not written again.
    recorded = settings if format == "aitod" else {**settings, "format": format}
    if stamp.is_file() and json.loads(stamp.read_text()) == recorded:
        return
    log.info("writing the synthetic data set to %s", root)
    generate(root, format=format, progress=True, **settings)
    stamp.write_text(json.dumps(recorded) + "\n")


def build_datamodule(
    cfg: DictConfig, normalization: Mapping[str, Any] | None = None, **overrides: Any
) -> KLDetDataModule:
    """The ``data`` config instantiated, after writing the synthetic set if ``cfg.synthetic`` asks for it.

    The transforms normalise as ``normalization`` says (``{"channel_order", "mean", "std"}``, e.g. a
    checkpoint's), by default as the input of ``cfg.model.style``'s backbone; ``overrides`` replace data
    keys (kldet-eval: a checkpoint's crop settings).
    """
    if cfg.get("synthetic"):
        prepare_synthetic(cfg.data.root, cfg.synthetic, cfg.data.format)
    if normalization is None:
        normalization = input_normalization(cfg.model.get("style", "pytorch")).as_preprocess()
    return instantiate(cfg.data, normalization=dict(normalization), **overrides)


def read_data(cfg: DictConfig, datamodule: KLDetDataModule, stages: Sequence[str] = ("fit",)) -> None:
    """Reads the splits of the Lightning ``stages`` ("fit": train and val, "validate", "test") now, so that
    missing or empty data fails before the model is built.

    Raises:
        KLDetConfigError: the data module's message (where the files are expected) plus the Hydra keys to set.
    """
    try:
        for stage in stages:
            datamodule.setup(stage)
    except KLDetConfigError as error:
        raise KLDetConfigError(
            f"{error}\nkeys: data.root=... (now {cfg.data.root}), or data.<split>_ann=... and "
            "data.<split>_images=... per split; paths.data_dir=... moves the default roots of all data sets"
        ) from None


def build_module(cfg: DictConfig, datamodule: KLDetDataModule) -> KLDetModule:
    """A KLDetModule whose classes, category ids and preprocessing come from the data module (whose
    normalisation :func:`build_datamodule` took from the model's style)."""
    return KLDetModule(
        model=cfg.model,
        classes=datamodule.classes,
        category_ids=datamodule.category_ids,
        optimizer=cfg.optimizer,
        scheduler=cfg.get("scheduler"),
        preprocess={
            **datamodule.normalization.as_preprocess(),
            "size_divisor": datamodule.size_divisor,
            **datamodule.resize_policy,
        },
        **cfg.module,
    )


def config_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """The callbacks of the ``callbacks`` config group, instantiated."""
    return [instantiate(callback) for callback in (cfg.get("callbacks") or {}).values()]


def trainer_precision(precision: str, accelerator: str) -> str:
    """Lightning's ``precision`` for the configured one: "auto" (``precision=auto``) becomes "bf16-mixed"
    where ``accelerator`` ("cpu", "gpu", "cuda", "mps" or "auto": CUDA when torch sees a GPU) computes bf16
    natively, else "32-true" (the rule of kldet-predict's ``precision=auto``,
    :func:`kldet.inference.precision.resolve_precision`); anything else is Lightning's."""
    if precision != "auto":
        return precision
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device("cuda" if accelerator == "gpu" else accelerator)
    return {"bf16": "bf16-mixed", "fp32": "32-true"}[resolve_precision("auto", device)]


def build_trainer(cfg: DictConfig, **overrides: Any) -> L.Trainer:
    """A Trainer from the ``trainer``, ``callbacks`` and ``logger`` configs, writing under
    ``cfg.paths.output_dir``; ``overrides`` replace any Trainer argument (those groups are then not built).
    ``precision=auto`` is resolved by :func:`trainer_precision` (and logged).

    Without a logger (``logger=none``) a LearningRateMonitor has nowhere to write, so it is left out.
    """
    arguments = {**cfg.trainer, **overrides}
    if "precision" in arguments:
        configured = arguments["precision"]
        arguments["precision"] = trainer_precision(configured, arguments.get("accelerator", "auto"))
        if configured == "auto":
            log.info("precision=auto: %s on this machine", arguments["precision"])
    if "callbacks" not in arguments:
        arguments["callbacks"] = config_callbacks(cfg)
    if "logger" not in arguments:
        arguments["logger"] = [instantiate(logger) for logger in (cfg.get("logger") or {}).values()] or False
    if not arguments["logger"]:
        arguments["callbacks"] = [c for c in arguments["callbacks"] if not isinstance(c, LearningRateMonitor)]
    if "default_root_dir" not in arguments:
        arguments["default_root_dir"] = cfg.paths.output_dir
    try:
        return L.Trainer(**arguments)
    except MisconfigurationException as error:  # e.g. trainer=gpu on a machine without one
        raise KLDetConfigError(
            f"trainer.accelerator={arguments.get('accelerator')!r}, trainer.devices={arguments.get('devices')!r}: "
            f"{error} (trainer=cpu runs on the CPU)"
        ) from None


def check_writable(folder: str | Path, keys: str) -> None:
    """Creates ``folder`` if needed and writes a probe file in it.

    Raises:
        KLDetConfigError: naming the folder, why, and the ``keys`` that move it.
    """
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise KLDetConfigError(
            f"cannot write to {folder} ({error.strerror or error}): choose a writable folder with {keys}"
        ) from None


class RunFolderCheck(HydraCallback):
    """Hydra callback (conf/hydra/default.yaml): a run folder that cannot be written stops kldet-train with
    one line before Hydra creates it (Hydra would print a traceback)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "run", "paths.log_dir=... or hydra.run.dir=...")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "sweep", "paths.log_dir=... or hydra.sweep.dir=...")

    @staticmethod
    def _check(config: DictConfig, mode: str, keys: str) -> None:
        # The folder's interpolations (paths.root_dir = ${hydra:runtime.cwd}) resolve through HydraConfig,
        # which Hydra sets only when the job starts: set it now (the job sets it again).
        HydraConfig.instance().set_config(config)
        try:
            check_writable(config.hydra[mode].dir, keys)
        except KLDetConfigError as error:
            print(f"kldet-train: error: {error}", file=sys.stderr)
            raise SystemExit(1) from None


def check_resumable(path: str, checkpoint: Mapping[str, Any], module: KLDetModule) -> None:
    """Whether ``checkpoint`` (read from ``path``) can resume training ``module``: a training checkpoint
    with the same classes and the same parameter names and shapes.

    Raises:
        KLDetConfigError: naming the checkpoint and the first difference.
    """
    where = f"ckpt_path={path}"
    if "optimizer_states" not in checkpoint or "loops" not in checkpoint:
        raise KLDetConfigError(
            f"{where}: holds weights but no training state (optimiser, loops); resuming needs a last.ckpt or "
            "best.ckpt written by kldet-train"
        )
    trained_on = list(checkpoint["hyper_parameters"]["classes"])
    if trained_on != list(module.hparams["classes"]):
        raise KLDetConfigError(
            f"{where}: trained on the classes {trained_on}, but the data has {list(module.hparams['classes'])}; "
            "resume with the data it was trained on"
        )
    expected = {key: tuple(value.shape) for key, value in module.state_dict().items()}
    saved = {key: tuple(value.shape) for key, value in checkpoint["state_dict"].items()}
    for key in sorted(expected.keys() | saved.keys()):
        if expected.get(key) != saved.get(key):
            raise KLDetConfigError(
                f"{where}: {key} has shape {saved.get(key, 'none (missing)')} in the checkpoint but "
                f"{expected.get(key, 'none (not in this model)')} in the configured model; set the model.* keys "
                "of the run that wrote it (its .hydra/config.yaml)"
            )


def resume_command() -> str:
    """``kldet-train`` with this run's command-line overrides, without ``ckpt_path=``."""
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    kept = [item for item in overrides if not item.lstrip("+~").startswith("ckpt_path=")]
    return shlex.join(["kldet-train", *kept])


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
    validate_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    check_writable(output_dir / "checkpoints", "paths.log_dir=... or hydra.run.dir=...")
    resume_from = read_checkpoint(cfg.ckpt_path, "cpu") if cfg.ckpt_path else None
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    read_data(cfg, datamodule, ("fit", "test") if cfg.test else ("fit",))
    module = build_module(cfg, datamodule)
    if resume_from is not None:
        check_resumable(cfg.ckpt_path, resume_from, module)
        del resume_from
    interrupt = InterruptCheckpoint(output_dir / "checkpoints" / "last.ckpt", resume_command())
    trainer = build_trainer(cfg, callbacks=[*config_callbacks(cfg), interrupt])
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
    if cfg.test:
        # verbose=False: the table below replaces Lightning's listing of every logged value.
        best = best_checkpoint(trainer, cfg.monitor)
        test_metrics = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)
        metrics.update(test_metrics[0])
        if trainer.is_global_zero:
            table = format_table(prefixed(test_metrics[0], "test/"), cfg.module.metric, datamodule.classes)
            print(table)
            log.info("test metrics of %s:\n%s", best or "the last weights", table, extra=FILE_ONLY)
    if trainer.is_global_zero:
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        log.info("run folder: %s", output_dir)
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Entry point ``kldet-train``; returns ``cfg.monitor`` for Hydra sweepers. Exits 1 on any error (a bad
    override, which Hydra reports, bad data, an interrupted run), as every kldet CLI (:mod:`kldet.cli.report`)."""
    capture_warnings()
    try:
        metrics = train(cfg)
    except KLDetError as error:
        raise SystemExit(report_error("kldet-train", error)) from None
    except SIGTERMException:  # Lightning's exits with status 0; the run did not finish
        raise SystemExit(EXIT_ERROR) from None
    return metrics.get(cfg.monitor)


if __name__ == "__main__":
    main()
