"""kldet-eval: evaluate a checkpoint on a data set split, or a COCO results file; prints the paper table
and writes the metrics JSON.

    kldet-eval ckpt=outputs/aitod_r50/DATE_TIME/checkpoints/best.ckpt data=aitod
    kldet-eval ckpt=best.ckpt data=dior data.root=/data/DIOR split=val trainer=gpu out=metrics.json
    kldet-eval results=RES.json ann=ANN.json metric=aitod out=metrics.json
    kldet-eval results=RES.json metric=voc root=DIOR split=test
    kldet-eval results=RES.json ann=ANN.json plots=analysis/ images=IMAGES/   # + error analysis

checkpoint mode (ckpt=...): Hydra overrides of conf/eval.yaml: data (aitod | dior | coco | synthetic) and
data.* keys as for kldet-train, split (val | test), trainer / precision, out (default: metrics_SPLIT.json
next to the checkpoint). Only the evaluated split has to exist.
results mode keys: results (COCO results JSON), ann (COCO annotation JSON; metric aitod or coco),
metric (aitod | coco | voc), root and split (DIOR / Pascal VOC data set; metric voc),
difficult (object | ignore: VOC difficult objects, as data.difficult; metric voc), out (metrics JSON to write),
plots (folder for the error analysis, metric aitod or coco: PR curves per class and size bin, confusion matrix,
TIDE error breakdown, and with images= drawn examples), score_thresh (confusion matrix and examples, 0.3),
examples (images drawn, 4), scale (their upscale factor, 0: automatic). With ckpt= the same keys analyse the
evaluated split (module.metric aitod or coco), its images drawn from the data set.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kldet.cli.dotlist import parse_dotlist
from kldet.cli.logs import console_logging
from kldet.cli.report import EXIT_OK, report_error
from kldet.errors import KLDetConfigError, KLDetError
from kldet.evaluation import evaluate_results_file, format_table

# The checkpoint mode's imports (Hydra, Lightning through kldet.cli.validate and kldet.cli.train, the model)
# are made in its functions: the results mode needs none of them, and they cost seconds of start-up.
if TYPE_CHECKING:
    from omegaconf import DictConfig

    from kldet.datamodule import KLDetDataModule
    from kldet.lit import KLDetModule


@dataclass
class EvaluateConfig:
    """Arguments of kldet-eval (``key=value``; a key not listed here is an error).

    Attributes:
        results: COCO results JSON to score.
        ann: COCO annotation JSON (metric aitod or coco).
        metric: "aitod", "coco" or "voc".
        root: DIOR / Pascal VOC data set root (metric voc).
        split: its ImageSets/Main split name (metric voc).
        difficult: how the VOC ground truth counts difficult objects (metric voc): "object" (the KLDet
            authors' reading of DIOR) or "ignore" (the VOC devkit's), as ``data.difficult`` in training.
        out: where to write the metrics JSON; nothing is written without it.
        plots: folder for the error analysis (:func:`kldet.analysis.report.write_analysis`; metric aitod or coco).
        images: the image folder of ``ann`` (``file_name`` relative to it), for the drawn examples.
        score_thresh: the detections the confusion matrix and the examples count.
        examples: how many images to draw (those with the most false positives and misses).
        scale: the examples' upscale factor; 0 picks one.
    """

    results: str | None = None
    ann: str | None = None
    metric: str = "aitod"
    root: str | None = None
    split: str | None = None
    difficult: str = "object"
    out: str | None = None
    plots: str | None = None
    images: str | None = None
    score_thresh: float = 0.3
    examples: int = 4
    scale: int = 0


def run(config: EvaluateConfig) -> dict[str, float]:
    """Evaluates, prints the table, writes ``config.out`` and (``config.plots``) the error analysis; returns
    the metrics."""
    if config.results is None:
        raise KLDetConfigError("results= (a COCO results JSON) is required")
    if config.plots is None:
        for key in ("images", "score_thresh", "examples", "scale"):
            if getattr(config, key) != getattr(EvaluateConfig, key):
                raise KLDetConfigError(f"{key}= belongs to the error analysis: give plots=DIR too")
        metrics, class_names = evaluate_results_file(
            config.results,
            ann=config.ann,
            metric=config.metric,
            root=config.root,
            split=config.split,
            difficult=config.difficult,
        )
        print(format_table(metrics, config.metric, class_names))
    else:
        metrics = analyse(config)
    if config.out is not None:
        out = Path(config.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(metrics, indent=2) + "\n")
        print(f"\nmetrics written to {out}")
    return metrics


def analyse(config: EvaluateConfig) -> dict[str, float]:
    """``plots=``: evaluates once, prints the table and the TIDE breakdown, writes the analysis files."""
    from kldet.cli.dotlist import check_writable_folder
    from kldet.evaluation.coco import summarize_evaluation
    from kldet.evaluation.evaluate import results_file_evaluation

    if config.examples < 0 or config.scale < 0:
        raise KLDetConfigError("examples= and scale= must be >= 0")
    check_writable_folder("plots", Path(config.plots))
    evaluation = results_file_evaluation(config.results, config.ann, config.metric)
    metrics = summarize_evaluation(evaluation)
    print(format_table(metrics, config.metric, evaluation.class_names))
    image_paths = None
    if config.images is not None:
        from kldet.data import read_dataset

        records = read_dataset("coco", ann=config.ann, images=config.images).records
        image_paths = {r.image_id: Path(r.image_path) for r in records}
    write_error_analysis(
        evaluation, config.plots, config.score_thresh, image_paths, config.examples, config.scale
    )
    return metrics


def write_error_analysis(
    evaluation,
    plots: str | Path,
    score_thresh: float,
    image_paths: dict[int, Path] | None,
    examples: int,
    scale: int,
) -> None:
    """Writes the analysis files of a :class:`~kldet.evaluation.coco.CocoEvaluation` to ``plots`` and prints
    the TIDE breakdown (the results mode's and the checkpoint mode's ``plots=``)."""
    from kldet.analysis.report import format_errors, write_analysis

    written, breakdowns = write_analysis(
        Path(plots),
        evaluation,
        score_thresh=score_thresh,
        image_paths=image_paths,
        examples=examples,
        scale=scale,
    )
    print("\n" + format_errors(breakdowns))
    note = "" if image_paths is not None else " (add images=DIR for drawn examples)"
    print(f"\nerror analysis: {len(written)} files written to {plots}{note}")


def checkpoint_config(overrides: list[str]) -> DictConfig:
    """``conf/eval.yaml`` composed with Hydra ``overrides``; an unknown key is a ``KLDetConfigError``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from omegaconf import open_dict
    from omegaconf.errors import OmegaConfBaseException

    from kldet.cli.train import CONFIG_DIR
    from kldet.cli.validate import validate_config

    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("eval", overrides=overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as e:
        raise KLDetConfigError(str(e).splitlines()[0]) from None
    # Lets ${hydra:runtime.cwd} in conf/paths resolve as it does under kldet-train.
    HydraConfig.instance().set_config(cfg)
    # The evaluation builds neither training callbacks nor loggers.
    with open_dict(cfg):
        cfg.callbacks = None
        cfg.logger = None
    validate_config(cfg)
    return cfg


def postprocess_overrides(cfg: DictConfig, overrides: list[str]) -> dict[str, object]:
    """The ``model.postprocess.*`` keys given on the command line (the only model keys that apply: the
    network comes from the checkpoint) as ``{"postprocess": {key: value}}`` with the composed, validated
    values, the model-spec overrides of :func:`kldet.checkpoint.load_detector`."""
    from kldet.model.postprocess import POSTPROCESS_KEYS

    keys = (arg.split("=", 1)[0].lstrip("+~") for arg in overrides)
    given = [key.removeprefix("model.") for key in keys if key.startswith("model.")]
    for key in given:
        if key.removeprefix("postprocess.") not in POSTPROCESS_KEYS:
            raise KLDetConfigError(
                f"model.{key}: kldet-eval takes the network from the checkpoint; of the model keys it only "
                f"changes the post-processing: {', '.join('model.postprocess.' + k for k in POSTPROCESS_KEYS)}"
            )
    return {"postprocess": {key: cfg.model.postprocess[key] for key in (k.split(".")[1] for k in given)}}


def checkpoint_and_data(cfg: DictConfig, overrides: list[str] = ()) -> tuple[KLDetModule, KLDetDataModule]:
    """``(KLDetModule, KLDetDataModule)`` of a :func:`checkpoint_config`: the checkpoint's module (its
    post-processing changed by the ``model.*`` keys of ``overrides``, :func:`postprocess_overrides`) and the
    data module with ``cfg.split`` read, normalising as the checkpoint says.

    Raises:
        KLDetConfigError: the split cannot be read, or its classes are not the checkpoint's.
    """
    from kldet.cli.train import build_datamodule, read_data
    from kldet.lit import KLDetModule

    ckpt = Path(cfg.ckpt)
    postprocess = postprocess_overrides(cfg, list(overrides))
    module = KLDetModule.from_checkpoint(ckpt, metric=cfg.module.metric, overrides=postprocess)
    # The images are normalised as in training (the checkpoint's channel order, mean and std), whatever
    # model the configuration names; a model trained on crops is evaluated on whole native images, sliced
    # as in its validation (whatever data.max_size says).
    crop = module.crop_policy
    native = (
        {}
        if crop is None
        else {"max_size": None, "crop_size": crop["crop_size"], "eval_overlap": crop["overlap"]}
    )
    datamodule = build_datamodule(cfg, normalization=module.normalization.as_preprocess(), **native)
    # Only the evaluated split has to exist.
    read_data(cfg, datamodule, ("validate",) if cfg.split == "val" else ("test",))
    if module.hparams["classes"] != datamodule.classes:
        raise KLDetConfigError(
            f"checkpoint {ckpt} was trained on classes {module.hparams['classes']}, "
            f"but data={cfg.data.format} has {datamodule.classes}"
        )
    return module, datamodule


def evaluate_checkpoint(cfg: DictConfig, overrides: list[str] = ()) -> dict[str, float]:
    """Runs ``Trainer.validate`` or ``Trainer.test`` of the checkpoint on ``cfg.split`` of ``cfg.data``.

    ``overrides`` are the command line's; its ``model.*`` keys change the checkpoint's post-processing
    (:func:`postprocess_overrides`). Prints the table and writes the metrics JSON (``cfg.out`` or
    ``metrics_<split>.json`` beside the checkpoint); returns the metrics without the split prefix.
    """
    from kldet.cli.train import build_trainer, prefixed

    ckpt = Path(cfg.ckpt)
    if cfg.plots is None:
        for key in ("score_thresh", "examples", "scale"):
            if any(arg.startswith(f"{key}=") for arg in overrides):
                raise KLDetConfigError(
                    f"{key}= belongs to the error analysis: give plots=DIR too (the model's score threshold "
                    "is model.postprocess.score_thresh)"
                )
    else:
        from kldet.cli.dotlist import check_writable_folder

        if cfg.module.metric == "voc":
            raise KLDetConfigError(
                "plots=: the error analysis reads the COCO matching; evaluate with module.metric=aitod or "
                "module.metric=coco (the data set's VOC metric has no size bins or maxDets)"
            )
        check_writable_folder("plots", Path(cfg.plots))
    module, datamodule = checkpoint_and_data(cfg, overrides)
    module.keep_evaluation = cfg.plots is not None
    trainer = build_trainer(cfg, logger=False, callbacks=[], default_root_dir=ckpt.parent)
    evaluate = trainer.validate if cfg.split == "val" else trainer.test
    logged = evaluate(module, datamodule=datamodule, verbose=False)[0]
    metrics = prefixed(logged, f"{cfg.split}/")
    print(format_table(metrics, cfg.module.metric, datamodule.classes))
    out = Path(cfg.out) if cfg.out is not None else ckpt.parent / f"metrics_{cfg.split}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"\nmetrics written to {out}")
    if cfg.plots is not None:
        from kldet.evaluation.coco import PROTOCOLS, coco_evaluation, coco_inputs

        ground_truth, detections = coco_inputs(module.evaluation, datamodule.classes)
        evaluation = coco_evaluation(ground_truth, detections, PROTOCOLS[cfg.module.metric])
        records = datamodule.ground_truth(cfg.split).records
        image_paths = {r.image_id: Path(r.image_path) for r in records}
        write_error_analysis(evaluation, cfg.plots, cfg.score_thresh, image_paths, cfg.examples, cfg.scale)
    return metrics


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``kldet-eval``; returns the exit status, 0 or 1 (any error, :mod:`kldet.cli.report`)."""
    argv = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in argv):
        print(__doc__.strip())
        return EXIT_OK
    try:
        if any(arg.startswith("ckpt=") for arg in argv):
            with console_logging():
                evaluate_checkpoint(checkpoint_config(argv), argv)
            return EXIT_OK
        if not any(arg.startswith("results=") for arg in argv):
            raise KLDetConfigError(
                "nothing to evaluate: give ckpt=CHECKPOINT to evaluate a checkpoint on a data split "
                "(with data=..., split=val|test, data.* keys as for kldet-train), or results=RESULTS.json to "
                "score a COCO results file (with ann=ANN.json, or metric=voc root=... split=...); see kldet-eval --help"
            )
        run(parse_dotlist(EvaluateConfig, argv, "kldet-eval"))
    except (KLDetError, OSError) as error:  # OSError: the output cannot be written
        return report_error("kldet-eval", error)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
