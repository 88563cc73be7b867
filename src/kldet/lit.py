"""KLDetModule: the LightningModule that trains and evaluates a :class:`kldet.model.Detector` (the
single-stage :class:`kldet.model.KLDet` or the two-stage :class:`kldet.model.TwoStageKLDet`).

Lightning owns devices, DDP, AMP, gradient clipping, checkpoints and loggers; this module owns the
steps and builds the detector, the optimiser and the learning-rate schedule from their specs
(``_target_`` configs, :mod:`kldet.spec`) with the parameter groups of :mod:`kldet.optim`.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import shlex
import signal
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor

from kldet.checkpoint import backbone_style, load_detector
from kldet.data.dataset import SIZE_DIVISOR
from kldet.data.transforms import recorded_resize_policy
from kldet.errors import KLDetConfigError, KLDetError
from kldet.evaluation import LRP_KEYS, DetectionMetric, sample_ground_truth
from kldet.inference.predictor import Predictor
from kldet.inference.render import draw_validation_image
from kldet.model import Detector, InputNormalization
from kldet.optim import param_groups, scaled_lr
from kldet.spec import instantiate

log = logging.getLogger(__name__)


#: Side of the zero image the model summary runs to count FLOPs (its "Total Flops" is at this size).
EXAMPLE_INPUT_SIZE = 256


class NonFiniteLossError(KLDetError):
    """The training loss became NaN or infinite; the message names the step and the images."""


def _with_resize_policy(preprocess: dict[str, Any]) -> dict[str, Any]:
    """``preprocess`` with the ``"resize"`` its ``"max_size"`` means, unless it already states one."""
    return {**preprocess, **(recorded_resize_policy(preprocess) or {})}


def _plain(value: Any) -> Any:
    """OmegaConf containers to plain dicts and lists (checkpoints must load without OmegaConf)."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


class KLDetModule(L.LightningModule):
    """Trains, validates and tests a :class:`~kldet.model.Detector` held as ``self.model``.

    It has no ``predict_step``: inference is :class:`kldet.inference.Predictor` (kldet-predict), the one
    path that tiles and resizes as the checkpoint says.

    Args:
        model: the detector's spec (:mod:`kldet.spec`), e.g. ``{"_target_": "kldet.model.kldet_r50_caffe",
            "assigner": {"_target_": "kldet.assign.AliTSMAssigner"}}``; ``num_classes`` is taken from
            ``classes``. Only ``kldet.`` targets (what a checkpoint may name).
        classes: class names, index = 0-based label.
        category_ids: the data set's own category id of each class (for results files).
        optimizer: spec of a partial optimiser called with the parameter groups, e.g.
            ``{"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.0025, "momentum": 0.9,
            "weight_decay": 1e-4}`` (``conf/optimizer/``); its ``lr`` and ``weight_decay`` are those of
            the "weight" group. None: evaluation only (no optimiser can be configured).
        scheduler: spec of a callable taking the optimiser (and ``steps_per_epoch`` when it names that
            argument) and returning a per-update scheduler, e.g. ``{"_target_":
            "kldet.optim.WarmupMultiStep"}`` (``conf/scheduler/``); None: a constant learning rate.
        bias_lr_factor, bias_weight_decay, norm_weight_decay: the "bias" and "norm" parameter groups
            (:func:`kldet.optim.param_groups`; spec section 6: biases at twice the lr, no decay).
        auto_scale_lr: scale the lr by (images per update over all processes) / ``base_batch_size``.
        base_batch_size: the batch the optimiser's lr is right for.
        metric: "aitod", "coco" or "voc" — which :class:`~kldet.evaluation.DetectionMetric` to use.
        preprocess: ``{"channel_order", "mean", "std", "size_divisor", "max_size"}`` the data module
            applied, kept in the checkpoint so inference can repeat it (see :mod:`kldet.checkpoint`);
            ``"resize"`` is added from ``max_size`` (:func:`kldet.data.transforms.resize_policy`), so the
            checkpoint states the training scale. With ``"resize": "crop"`` (training on crops,
            ``data.crop_size``) validation and test predict each whole native image as kldet-predict does:
            :meth:`kldet.inference.Predictor.predict_normalized`, tiles of ``"crop_size"`` px overlapping by
            ``"overlap"``, ownership and merge (:mod:`kldet.inference.sliced`).
        tile_batch_size: tiles per forward pass in that sliced evaluation.
        num_logged_images: validation images drawn with predicted and true boxes for the loggers.
        detector: the detector ``model`` describes, already built (``from_checkpoint`` passes the loaded
            one); None builds it from ``model``.
        channels_last: keep the network and every batch in the NHWC memory format (faster convolutions on
            CPUs with oneDNN and on GPU tensor cores; ``benchmarks/bench_model.py --modes`` measures it).

    Batches are ``(images (B, 3, H, W), targets)`` as made by :func:`kldet.data.collate`.
    """

    def __init__(
        self,
        model: Mapping[str, Any],
        classes: Sequence[str],
        category_ids: Sequence[int] | None = None,
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        bias_lr_factor: float = 2.0,
        bias_weight_decay: float = 0.0,
        norm_weight_decay: float = 0.0,
        auto_scale_lr: bool = False,
        base_batch_size: int = 2,
        metric: str = "aitod",
        preprocess: Mapping[str, Any] | None = None,
        num_logged_images: int = 4,
        tile_batch_size: int = 4,
        channels_last: bool = False,
        detector: Detector | None = None,
    ) -> None:
        super().__init__()
        model = _plain(model)
        classes = [str(name) for name in _plain(classes)]
        num_classes = model.pop("num_classes", len(classes))
        if num_classes != len(classes):
            raise KLDetConfigError(
                f"model.num_classes={num_classes} but the data set has {len(classes)} classes"
            )
        self.save_hyperparameters(
            {
                "model": {**model, "num_classes": num_classes},
                "classes": classes,
                "category_ids": list(_plain(category_ids)) if category_ids is not None else None,
                "optimizer": _plain(optimizer),
                "scheduler": _plain(scheduler),
                "bias_lr_factor": bias_lr_factor,
                "bias_weight_decay": bias_weight_decay,
                "norm_weight_decay": norm_weight_decay,
                "auto_scale_lr": auto_scale_lr,
                "base_batch_size": base_batch_size,
                "metric": metric,
                "preprocess": _with_resize_policy(_plain(preprocess)) if preprocess is not None else None,
                "num_logged_images": num_logged_images,
                "tile_batch_size": tile_batch_size,
                "channels_last": channels_last,
            }
        )
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # The optimiser and schedule are built now, once, so a bad spec fails before any data is read.
        self._optimizer = instantiate(self.hparams["optimizer"], allowed=None)
        self._scheduler = instantiate(self.hparams["scheduler"], allowed=None)
        self.model = instantiate(self.hparams["model"]) if detector is None else detector
        if not isinstance(self.model, Detector):
            raise KLDetConfigError(f"model._target_={model.get('_target_')!r} builds no detector")
        # One small zero image (S a multiple of 64, as every level needs) for Lightning's model summary,
        # which then counts FLOPs; a plain attribute, so no state_dict entry and never moved with the module.
        self.example_input_array = torch.zeros((1, 3, EXAMPLE_INPUT_SIZE, EXAMPLE_INPUT_SIZE))
        self.val_metric = DetectionMetric(metric, classes)
        self.test_metric = DetectionMetric(metric, classes)
        # kldet-eval plots= sets keep_evaluation: the last validation or test keeps its EvaluationSet (this
        # process's images) in ``evaluation`` for the error analysis.
        self.keep_evaluation = False
        self.evaluation = None
        # The sliced_predictor of this validation or test epoch (a model trained on crops), made on first use.
        self._sliced: Predictor | None = None
        # Unreadable files the data sets skipped this epoch, by stage (lenient loading only).
        self._skipped_files: dict[str, set[str]] = {"train": set(), "val": set(), "test": set()}

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        map_location: str | torch.device = "cpu",
        metric: str | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> KLDetModule:
        """The module of a kldet-train checkpoint, for evaluation, read with
        :func:`kldet.checkpoint.load_detector` (so no pretrained backbone file is needed); ``metric``
        replaces the evaluation kind it was trained with, ``overrides`` change the model spec as in
        ``load_detector`` (e.g. ``{"postprocess": {"score_thresh": 0.3}}``)."""
        detector, meta = load_detector(path, map_location, overrides=dict(overrides or {}))
        hyper_parameters = meta["hyper_parameters"]
        return cls(
            model=meta["model"],
            classes=meta["classes"],
            category_ids=meta["category_ids"],
            metric=metric or hyper_parameters.get("metric", "aitod"),
            preprocess=meta["preprocess"] or None,
            num_logged_images=0,
            detector=detector,
        )

    @property
    def normalization(self) -> InputNormalization:
        """How the input images were normalised: ``preprocess``, completed by the model's style."""
        return InputNormalization.from_preprocess(self.hparams["preprocess"], backbone_style(self.model))

    @property
    def crop_policy(self) -> dict[str, Any] | None:
        """``{"resize": "crop", "crop_size", "overlap", ...}`` when the model was trained on crops (its
        ``preprocess`` says so), else None."""
        policy = recorded_resize_policy(self.hparams["preprocess"] or {}) or {}
        return policy if policy.get("resize") == "crop" else None

    def sliced_predictor(self) -> Predictor | None:
        """The :class:`~kldet.inference.Predictor` of this model that evaluation slices whole images with,
        set up as the checkpoint sets up kldet-predict (tiles, overlap, normalisation, the model's own NMS
        across tiles, batch norms folded: the Predictor's defaults) from the current weights; None unless
        the model was trained on crops. Its precision is the surrounding one (Lightning's autocast)."""
        policy = self.crop_policy
        if policy is None:
            return None
        return Predictor(
            self.model,
            self.hparams["classes"],
            self.hparams["category_ids"] or range(1, len(self.hparams["classes"]) + 1),
            normalization=self.normalization,
            size_divisor=self.hparams["preprocess"].get("size_divisor") or SIZE_DIVISOR,
            tile_size=policy["crop_size"],
            overlap=policy["overlap"],
            batch_size=self.hparams["tile_batch_size"],
            precision="fp32",
            channels_last=self.hparams["channels_last"],
        )

    def forward(self, images: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Raw per-level outputs of the detector (see :meth:`kldet.model.KLDet.forward`)."""
        return self.model(images)

    def setup(self, stage: str) -> None:
        self.model.to(memory_format=self.memory_format)

    def training_step(self, batch: tuple[Tensor, list[dict[str, Any]]], batch_idx: int) -> Tensor:
        images, targets = batch
        images = images.contiguous(memory_format=self.memory_format)
        self._note_skipped(targets, "train")
        losses = self.model.loss(images, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            values = ", ".join(f"{name}={value.item():.4g}" for name, value in losses.items())
            files = ", ".join(str(t["file_name"]) for t in targets)
            raise NonFiniteLossError(
                f"non-finite loss at global step {self.global_step} (epoch {self.current_epoch}, "
                f"batch {batch_idx}): {values}; images: {files}"
            )
        batch_size = images.shape[0]
        self.log_dict({f"train/{name}": value for name, value in losses.items()}, batch_size=batch_size)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        return loss

    def _predict(self, images: Tensor, targets: Sequence[Mapping[str, Any]]) -> list[dict[str, Tensor]]:
        """Detections in original pixels: the model's on the batch, or sliced over each whole image
        for a model trained on crops."""
        if self.crop_policy is not None:
            if self._sliced is None:  # once per epoch: the weights do not change until its end
                self._sliced = self.sliced_predictor()
            inputs = [
                image[:, :h, :w] for image, (h, w) in zip(images, (t["size"] for t in targets), strict=True)
            ]
            detections = self._sliced.predict_normalized(inputs)
            return [{key: value.to(images.device) for key, value in d.items()} for d in detections]
        return self.model.predict(
            images.contiguous(memory_format=self.memory_format),
            image_sizes=[tuple(t["size"]) for t in targets],
            scale_factors=[tuple(t["scale"]) for t in targets],
        )

    def _update_metric(
        self, metric: DetectionMetric, images: Tensor, targets: Sequence[Mapping[str, Any]]
    ) -> list[dict[str, Tensor]]:
        predictions = self._predict(images, targets)
        metric.update(predictions, [sample_ground_truth(t) for t in targets])
        return predictions

    def validation_step(self, batch: tuple[Tensor, list[dict[str, Any]]], batch_idx: int) -> None:
        images, targets = batch
        self._note_skipped(targets, "val")
        predictions = self._update_metric(self.val_metric, images, targets)
        if batch_idx == 0 and not self.trainer.sanity_checking:
            self._log_images(images, targets, predictions)

    def test_step(self, batch: tuple[Tensor, list[dict[str, Any]]], batch_idx: int) -> None:
        images, targets = batch
        self._note_skipped(targets, "test")
        self._update_metric(self.test_metric, images, targets)

    def on_train_epoch_end(self) -> None:
        self._report_skipped("train")
        if self.trainer.is_global_zero:
            losses = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("train/")}
            summary = ", ".join(f"{name} {value:.4f}" for name, value in sorted(losses.items()))
            log.info(
                "epoch %d (step %d): %s", self.current_epoch, self.global_step, summary or "no losses logged"
            )

    def on_validation_epoch_start(self) -> None:
        self._sliced = None

    def on_test_epoch_start(self) -> None:
        self._sliced = None

    def on_validation_epoch_end(self) -> None:
        self._sliced = None  # frees its copy of the model
        self._report_skipped("val")
        self._log_metric(self.val_metric, "val")

    def on_test_epoch_end(self) -> None:
        self._sliced = None
        self._report_skipped("test")
        self._log_metric(self.test_metric, "test")

    def _note_skipped(self, targets: Sequence[Mapping[str, Any]], stage: str) -> None:
        self._skipped_files[stage].update(t["skipped_file"] for t in targets if t.get("skipped_file"))

    def _report_skipped(self, stage: str) -> None:
        """Logs how many unreadable images the ``stage`` data set skipped this epoch (lenient loading)."""
        skipped = sorted(self._skipped_files[stage])
        if skipped:
            shown = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
            log.warning(
                "%s epoch %d: skipped %d unreadable image(s) (data.lenient=true): %s",
                stage,
                self.current_epoch,
                len(skipped),
                shown,
            )
        self._skipped_files[stage].clear()

    def _log_metric(self, metric: DetectionMetric, stage: str) -> None:
        # compute() gathers every process's detections, so each process holds the same global values:
        # reducing them with max keeps them exactly (a mean could change the last bit) and gives every
        # process the monitored value that checkpoint callbacks read.
        values = metric.compute()
        if self.keep_evaluation:  # kldet-eval plots=: the error analysis reads every detection
            self.evaluation = metric.evaluation_set()
        metric.reset()
        logged = {f"{stage}/{name}": float(value) for name, value in values.items()}
        self.log_dict(logged, sync_dist=True, reduce_fx="max")
        if self.trainer.is_global_zero:
            # One line of the summary numbers; the per-class values go to the loggers and metrics.json.
            prefixes = ("AP", "AP07", *LRP_KEYS, "oLRP_threshold")
            per_class = {
                f"{stage}/{prefix}_{name}" for name in self.hparams["classes"] for prefix in prefixes
            }
            summary = ", ".join(f"{key} {value:.4f}" for key, value in logged.items() if key not in per_class)
            log.info("%s, epoch %d (step %d): %s", stage, self.current_epoch, self.global_step, summary)

    def _log_images(
        self,
        images: Tensor,
        targets: Sequence[Mapping[str, Any]],
        predictions: Sequence[Mapping[str, Tensor]],
    ) -> None:
        count = min(self.hparams["num_logged_images"], images.shape[0])
        loggers = [logger for logger in self.loggers if isinstance(logger, TensorBoardLogger | WandbLogger)]
        if count == 0 or not loggers:
            return
        drawings = [
            draw_validation_image(
                images[i], targets[i], predictions[i], self.hparams["classes"], self.normalization
            )
            for i in range(count)
        ]
        for logger in loggers:
            if isinstance(logger, TensorBoardLogger):
                for i, drawing in enumerate(drawings):
                    logger.experiment.add_image(f"val/image_{i}", drawing, self.global_step)
            else:
                logger.log_image("val/images", [drawing.permute(1, 2, 0).numpy() for drawing in drawings])

    def configure_optimizers(self) -> dict[str, Any]:
        if self._optimizer is None:
            raise KLDetConfigError("KLDetModule was built without an optimizer spec: it cannot train")
        hparams = self.hparams
        lr = self._optimizer.keywords.get("lr")
        if lr is None:
            raise KLDetConfigError(
                f"optimizer {self._optimizer.func.__name__}: give its lr (optimizer.lr=...)"
            )
        if hparams["auto_scale_lr"]:
            lr = scaled_lr(lr, hparams["base_batch_size"], self._total_batch_size())
        groups = param_groups(
            self.model,
            lr=lr,
            weight_decay=self._optimizer.keywords.get("weight_decay"),
            bias_lr_factor=hparams["bias_lr_factor"],
            bias_weight_decay=hparams["bias_weight_decay"],
            norm_weight_decay=hparams["norm_weight_decay"],
        )
        optimizer = self._optimizer(groups, lr=lr)
        if self._scheduler is None:
            return {"optimizer": optimizer}
        accepts = inspect.signature(self._scheduler).parameters
        extra = {"steps_per_epoch": self._steps_per_epoch()} if "steps_per_epoch" in accepts else {}
        scheduler = self._scheduler(optimizer, **extra)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _steps_per_epoch(self) -> int:
        """Optimiser updates per epoch on this process, to turn epoch milestones into steps."""
        trainer = self.trainer
        # Reading estimated_stepping_batches makes Lightning load the train dataloader if needed.
        if trainer.estimated_stepping_batches == float("inf") or trainer.num_training_batches == float("inf"):
            raise KLDetConfigError("scheduler.milestones are in epochs: the train dataloader needs a length")
        return max(1, math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches))

    def _total_batch_size(self) -> int:
        """Images per optimiser update over all processes: batch size x devices x nodes x accumulation."""
        trainer = self.trainer
        trainer.estimated_stepping_batches  # noqa: B018 (reading it makes Lightning load the train dataloader)
        batch_size = getattr(trainer.train_dataloader, "batch_size", None)
        if batch_size is None:
            raise KLDetConfigError("module.auto_scale_lr needs a train dataloader with a fixed batch_size")
        return batch_size * trainer.world_size * trainer.accumulate_grad_batches


class InterruptCheckpoint(L.Callback):
    """On Ctrl-C (SIGINT) or SIGTERM during training, finishes the step in progress, saves a resumable
    checkpoint of it and says how to resume; the process then exits with status 1.

    SIGINT becomes a request honoured at the end of the current training step (a second Ctrl-C stops at
    once, without a checkpoint); SIGTERM is Lightning's own request (``trainer.received_sigterm``), taken
    at the same point. Under DDP a request on any process stops all of them at the same step.

    Args:
        path: the checkpoint to write (kldet-train: ``<run folder>/checkpoints/last.ckpt``).
        resume_command: the command line that restarts this run, without ``ckpt_path=``.
    """

    def __init__(self, path: str | os.PathLike, resume_command: str = "kldet-train") -> None:
        self.path = os.fspath(path)
        self.resume_command = resume_command
        self.requested = False
        self.saved = False
        self._previous_handler: Any = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGINT, self._request)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handler()

    def _request(self, signum: int, frame: Any) -> None:
        self.requested = True
        self._restore_handler()

    def _restore_handler(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # One small all-reduce under DDP, so that every process stops after the same step.
        if trainer.strategy.reduce_boolean_decision(self.requested or trainer.received_sigterm, all=False):
            self.save(trainer)
            raise KeyboardInterrupt

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore_handler()
        # A SIGTERM seen first by Lightning's loops (e.g. during validation) is raised on every process.
        if isinstance(exception, SIGTERMException) and trainer.training and not self.saved:
            self.save(trainer)

    def save(self, trainer: L.Trainer) -> None:
        """Writes the checkpoint (a collective call under DDP) and logs where it is and how to resume."""
        trainer.save_checkpoint(self.path, weights_only=False)  # the full training state
        self.saved = True
        if trainer.is_global_zero:
            log.warning(
                "interrupted at global step %d: saved %s; resume with: %s ckpt_path=%s",
                trainer.global_step,
                self.path,
                self.resume_command,
                shlex.quote(self.path),
            )
