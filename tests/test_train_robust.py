"""What a new user meets first: bad config values, per-split COCO files, a checkpoint that does not fit,
empty data, Ctrl-C, every logger, DDP and bf16. Each bad input is made here and must give exit status 1
and one line naming the key or file, before training starts."""

import dataclasses
import importlib.util
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from kldet.checkpoint import load_detector, save_detector
from kldet.cli.evaluate import main as kldet_eval
from kldet.cli.train import CONFIG_DIR, build_datamodule, build_module, build_trainer, train
from kldet.cli.validate import validate_config
from kldet.datamodule import KLDetDataModule
from kldet.errors import KLDetConfigError, KLDetDataError
from training import TINY, TINY_DATA, Probe, kldet_train, tiny_config

REPO = Path(__file__).resolve().parents[1]
# The tiny model and trainer of TINY on data=coco (no synthetic set).
COCO_TINY = [item for item in TINY if not item.startswith("synthetic.")] + ["synthetic=null"]
# Run cheaply: one batch per stage.
SHORT = ["trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1", "trainer.limit_train_batches=1"]

pytestmark = pytest.mark.usefixtures("quiet_single_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """A run folder of one tiny epoch: checkpoints/{best,last}.ckpt and metrics.json."""
    run = tmp_path_factory.mktemp("trained")
    torch.set_num_threads(1)
    train(tiny_config(data_dir, run, *SHORT, "test=false"))
    return run


def run_cli(module: str, *argv: str, cwd) -> str:
    """Runs ``python -m module argv`` on one thread in a fresh process; asserts exit 0, returns its console."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run(
        [sys.executable, "-m", module, *argv], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def train_fails(monkeypatch, capsys, *argv, base=TINY) -> str:
    with pytest.raises(SystemExit) as exit_info:
        kldet_train(monkeypatch, *base, *argv)
    assert exit_info.value.code == 1
    return one_error_line(capsys)


# --- config values --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("data.max_size=0", "data.max_size=0: must be >= 1 (or null)"),
        ("data.max_size=-5", "data.max_size=-5: must be >= 1 (or null)"),
        ("data.lenient=maybe", "data.lenient='maybe': must be true or false"),
        ("data.batch_size=two", "data.batch_size='two': must be an integer"),
        ("trainer.max_epochs=abc", "trainer.max_epochs='abc': must be an integer or null"),
        ("data.hflip=1.5", "data.hflip=1.5: must be in [0, 1]"),
        ("model.postprocess.nms_thresh=-0.1", "model.postprocess.nms_thresh=-0.1: must be in [0, 1]"),
        ("scheduler.milestones=[8,x]", "scheduler.milestones=[8, 'x']: must be a list, each item an integer"),
        ("optimizer.lr=0", "optimizer.lr=0: must be > 0"),
        ("scheduler.warmup=cosine", "scheduler.warmup='cosine': choose one of constant, linear, none"),
        ("model.assigner.topk=[3,-1]", "model.assigner.topk=[3, -1]: must be >= 0"),
        (
            "model.postprocess.candidates=top",
            "model.postprocess.candidates='top': choose one of points, pairs",
        ),
        ("trainer.precision=half", "trainer.precision='half': must be one of"),
        # Lightning's values and kldet-train's own in one list.
        (
            "trainer.precision=half",
            "must be one of 64, 32, 16, transformer-engine, transformer-engine-float16,",
        ),
        ("trainer.precision=half", "bf16-mixed, 32-true, 64-true, bf16, auto or null"),
        ("module.metric=map", "module.metric='map': choose one of aitod, coco, voc"),
        ("model.style=caffee", "model.style='caffee': choose one of pytorch, caffe"),
        (
            "model.assigner._target_=kldet.assign.Nope",
            "model.assigner._target_='kldet.assign.Nope': cannot be",
        ),
        ("optimizer._target_=torch.optim.Nope", "optimizer._target_='torch.optim.Nope': cannot be imported"),
        ("data.difficult=maybe", "data.difficult='maybe': choose one of object, ignore"),
        ("seed=-1", "seed=-1: must be in [0, 4.29497e+09]"),
        # Crops are cut at native resolution: with any data.max_size (TINY's 64) they are refused.
        (
            "data.crop_size=128",
            "data.crop_size=128 with data.max_size=64: crops are cut at native resolution, so set data.max_size=null",
        ),
        ("data.crop_min_visibility=1.5", "data.crop_min_visibility=1.5: must be in [0, 1]"),
        ("data.eval_overlap=1", "data.eval_overlap=1: must be in [0, 1)"),
    ],
)
def test_bad_config_values_stop_before_the_data_is_read(monkeypatch, capsys, tmp_path, override, expected):
    # No data exists under data_dir: an error about the data would mean the check came too late.
    line = train_fails(
        monkeypatch, capsys, override, f"paths.data_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'r'}"
    )
    assert line.startswith("kldet-train: error: ") and expected in line
    assert not (tmp_path / "synthetic").exists()


def test_kldet_eval_checks_values_before_reading_the_checkpoint(capsys, tmp_path):
    assert kldet_eval([f"ckpt={tmp_path / 'missing.ckpt'}", "experiment=synthetic", "data.max_size=0"]) == 1
    assert "data.max_size=0: must be >= 1" in one_error_line(capsys)
    assert kldet_eval([f"ckpt={tmp_path / 'missing.ckpt'}", "experiment=synthetic", "split=train"]) == 1
    assert "split='train': choose one of val, test" in one_error_line(capsys)


class DataModuleWithAnOption(KLDetDataModule):
    """A data module that grew keywords, as other work adds them (the others reach the base class)."""

    def __init__(self, new_option: float = 0.5, choice: bool | None = None, **kwargs):
        super().__init__(**kwargs)


def composed_train(*overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    cfg.paths.output_dir = "outputs/run"  # what Hydra sets in a run
    return cfg


@pytest.mark.parametrize(
    "experiment",
    [
        "synthetic",
        "aitod_r50",
        "aitod_fcos_r50",
        "dior_r50",
        "dior_faster_r50",
        "aitod_faster_r50",
        "synthetic_faster",
    ],
)
def test_every_experiment_passes_validation(experiment):
    validate_config(composed_train(f"experiment={experiment}", "logger=csv", "trainer=ddp"))


def test_a_new_keyword_is_checked_by_its_annotation_without_changing_the_validator():
    cfg = composed_train("experiment=synthetic")
    with open_dict(cfg):
        cfg.data._target_ = f"{__name__}.DataModuleWithAnOption"
        cfg.data.new_option = 0.25
        cfg.data.choice = None
    validate_config(cfg)  # accepted: the keyword exists, the values fit its type
    cfg.data.new_option = "high"
    with pytest.raises(KLDetConfigError, match=r"^data.new_option='high': must be a number$"):
        validate_config(cfg)
    with open_dict(cfg):
        cfg.data.new_option = 1
        cfg.data.newer_option = 1
    with pytest.raises(
        KLDetConfigError, match=r"^data.newer_option: unknown key; .*DataModuleWithAnOption takes"
    ):
        validate_config(cfg)


def test_callbacks_and_loggers_are_checked_against_their_targets():
    cfg = composed_train("experiment=synthetic", "logger=csv")
    cfg.callbacks.best_checkpoint.save_top_k = "all"
    with pytest.raises(
        KLDetConfigError, match=r"callbacks.best_checkpoint.save_top_k='all': must be an integer"
    ):
        validate_config(cfg)
    cfg = composed_train("experiment=synthetic", "logger=csv")
    with open_dict(cfg):
        cfg.logger.csv.flush_every = 3
    with pytest.raises(KLDetConfigError, match=r"logger.csv.flush_every: unknown key; .*CSVLogger takes"):
        validate_config(cfg)


# --- COCO splits given file by file -----------------------------------------------------------------


@pytest.fixture(scope="module")
def coco_files(data_dir, trained):
    """The tiny synthetic set (written by the ``trained`` fixture) as COCO files and image folders."""
    root = data_dir / "synthetic"
    return {
        "train_ann": root / "annotations" / "train.json",
        "train_images": root / "train",
        "val_ann": root / "annotations" / "val.json",
        "val_images": root / "val",
    }


def test_coco_per_split_keys_train_validate_and_test(monkeypatch, capsys, tmp_path, coco_files):
    # Exactly the README's keys, with no data/coco folder: the test split (val) takes val's files.
    files = [f"data.{key}={path}" for key, path in coco_files.items()]
    run = tmp_path / "run"
    kldet_train(
        monkeypatch,
        *COCO_TINY,
        "data=coco",
        *files,
        *SHORT,
        f"paths.data_dir={tmp_path}",
        f"hydra.run.dir={run}",
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"val/AP", "test/AP", "test/AP50"} <= set(metrics)
    assert metrics["test/AP"] == metrics["val/AP"]  # the same checkpoint on the same files


def test_coco_split_that_cannot_be_resolved_fails_before_training(monkeypatch, capsys, tmp_path, coco_files):
    files = [f"data.{key}={path}" for key, path in coco_files.items() if key.startswith("train")]
    line = train_fails(
        monkeypatch,
        capsys,
        "data=coco",
        *files,
        f"paths.data_dir={tmp_path}",
        f"hydra.run.dir={tmp_path / 'run'}",
        base=COCO_TINY,
    )
    assert f"COCO split 'val' not found under {tmp_path}/coco" in line
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


def test_kldet_eval_applies_post_processing_keys_and_refuses_network_keys(
    monkeypatch, capsys, tmp_path, trained, coco_files
):
    from kldet.lit import KLDetModule
    from kldet.model.postprocess import POSTPROCESS_KEYS

    loaded = []
    from_checkpoint = KLDetModule.from_checkpoint
    monkeypatch.setattr(
        KLDetModule,
        "from_checkpoint",
        staticmethod(lambda *a, **k: loaded.append(from_checkpoint(*a, **k)) or loaded[-1]),
    )
    ckpt = trained / "checkpoints" / "best.ckpt"
    val = [f"data.val_ann={coco_files['val_ann']}", f"data.val_images={coco_files['val_images']}"]
    base = [f"ckpt={ckpt}", "data=coco", *val, "data.max_size=64", f"paths.data_dir={tmp_path}", "split=val"]
    options = [
        "model.postprocess.candidates=pairs",
        "model.postprocess.score_thresh=0.2",
        "model.postprocess.max_detections=7",
    ]
    assert kldet_eval([*base, *options, f"out={tmp_path / 'm.json'}"]) == 0, capsys.readouterr().err
    applied = dataclasses.asdict(loaded[-1].model.postprocessor)
    assert set(applied) == set(POSTPROCESS_KEYS)
    assert (applied["candidates"], applied["score_thresh"], applied["max_detections"]) == ("pairs", 0.2, 7)
    assert kldet_eval([*base, "model.channels=8"]) == 1
    line = one_error_line(capsys)
    assert (
        "model.channels: kldet-eval takes the network from the checkpoint" in line
        and "model.postprocess.candidates" in line
    )


def test_kldet_eval_needs_only_the_split_it_evaluates(capsys, tmp_path, trained, coco_files):
    ckpt = trained / "checkpoints" / "best.ckpt"
    val = [f"data.val_ann={coco_files['val_ann']}", f"data.val_images={coco_files['val_images']}"]
    out = tmp_path / "metrics.json"
    code = kldet_eval(
        [
            f"ckpt={ckpt}",
            "data=coco",
            *val,
            "data.max_size=64",
            f"paths.data_dir={tmp_path}",
            "split=test",
            f"out={out}",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert "AP50" in json.loads(out.read_text())


def test_kldet_eval_without_ckpt_or_results_says_what_to_give(capsys):
    assert kldet_eval(["data=coco", "split=val"]) == 1
    line = one_error_line(capsys)
    assert "ckpt=" in line and "results=" in line and "EvaluateConfig" not in line


# --- before the first step ----------------------------------------------------------------------------


def test_unwritable_run_folder_is_one_line(monkeypatch, capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    line = train_fails(monkeypatch, capsys, f"hydra.run.dir={blocker / 'run'}")
    assert f"cannot write to {blocker / 'run'}" in line and "hydra.run.dir=" in line


def test_unwritable_default_run_folder_is_one_line(monkeypatch, capsys, recwarn, tmp_path):
    # The default run folder is <cwd>/outputs/... through ${hydra:runtime.cwd}: the Hydra callback resolves
    # it before the job starts (no "HydraConfig was not set" warning from a check that did not run).
    (tmp_path / "outputs").write_text("")
    monkeypatch.chdir(tmp_path)
    line = train_fails(monkeypatch, capsys, f"paths.data_dir={tmp_path / 'data'}")
    assert f"cannot write to {tmp_path / 'outputs'}" in line and "paths.log_dir=" in line
    assert not [w for w in recwarn if "RunFolderCheck" in str(w.message)]


def test_unwritable_output_dir_of_a_direct_call(tmp_path, data_dir):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(KLDetConfigError, match=r"cannot write to .*a_file/run/checkpoints"):
        train(tiny_config(data_dir, blocker / "run"))


def resume_fails(monkeypatch, capsys, tmp_path, data_dir, ckpt, *overrides) -> str:
    run = tmp_path / "run"
    line = train_fails(
        monkeypatch,
        capsys,
        f"ckpt_path={ckpt}",
        *overrides,
        f"paths.data_dir={data_dir}",
        f"hydra.run.dir={run}",
    )
    assert not (run / "checkpoints" / "last.ckpt").exists()
    return line


def test_resume_from_a_missing_file(monkeypatch, capsys, tmp_path, data_dir):
    line = resume_fails(monkeypatch, capsys, tmp_path, data_dir, tmp_path / "nope.ckpt")
    assert f"checkpoint {tmp_path / 'nope.ckpt'} does not exist" in line


def test_resume_from_a_file_that_is_not_a_checkpoint(monkeypatch, capsys, tmp_path, data_dir):
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    line = resume_fails(monkeypatch, capsys, tmp_path, data_dir, text)
    assert f"checkpoint {text}:" in line and "weights_only=False" not in line


def test_resume_with_another_model_names_the_first_mismatching_tensor(
    monkeypatch, capsys, tmp_path, data_dir, trained
):
    line = resume_fails(
        monkeypatch, capsys, tmp_path, data_dir, trained / "checkpoints" / "last.ckpt", "model.channels=16"
    )
    assert re.search(
        r"ckpt_path=\S+last.ckpt: model\.\S+ has shape \(\d+.*\) in the checkpoint but \(\d+", line
    )
    assert "model.* keys" in line


def test_resume_with_other_classes(monkeypatch, capsys, tmp_path, data_dir, trained):
    saved = torch.load(trained / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    saved["hyper_parameters"]["classes"] = [f"c{i}" for i in range(8)]
    other = tmp_path / "other.ckpt"
    torch.save(saved, other)
    line = resume_fails(monkeypatch, capsys, tmp_path, data_dir, other)
    assert "trained on the classes ['c0'," in line and "but the data has ['airplane'," in line


def test_resume_from_a_weights_only_file(monkeypatch, capsys, tmp_path, data_dir, trained):
    model, meta = load_detector(trained / "checkpoints" / "last.ckpt")
    weights = save_detector(tmp_path / "weights.ckpt", model, meta["model"], meta["classes"])
    line = resume_fails(monkeypatch, capsys, tmp_path, data_dir, weights)
    assert "holds weights but no training state" in line


def test_save_detector_stores_the_preprocessing_of_a_training_checkpoint(tmp_path, trained):
    """A model converted with save_detector and only the training max_size reads back as kldet-train wrote it."""
    trained_file = trained / "checkpoints" / "last.ckpt"
    model, meta = load_detector(trained_file)
    written = torch.load(trained_file, weights_only=True)["hyper_parameters"]["preprocess"]
    saved = save_detector(
        tmp_path / "m.ckpt",
        model,
        meta["model"],
        meta["classes"],
        preprocess={"max_size": written["max_size"]},
    )
    assert torch.load(saved, weights_only=True)["hyper_parameters"]["preprocess"] == written
    assert set(written) == {"channel_order", "mean", "std", "size_divisor", "max_size", "resize"}


# --- empty data ---------------------------------------------------------------------------------------


def write_coco(path: Path, images: list[dict], annotations: list[dict] | None) -> Path:
    content = {"images": images, "categories": [{"id": 1, "name": "car"}]}
    if annotations is not None:
        content["annotations"] = annotations
    path.write_text(json.dumps(content))
    return path


def coco_module(ann: Path, images: Path, **options) -> KLDetDataModule:
    return KLDetDataModule(
        "coco", train_ann=str(ann), train_images=str(images), val_split=None, test_split=None, **options
    )


@pytest.fixture
def image_folder(data_dir, trained):
    """The tiny set's training images (names 000000.png ... as in its annotation file)."""
    return data_dir / "synthetic" / "train"


def first_images(folder: Path, count: int) -> list[dict]:
    files = sorted(folder.glob("*.png"))[:count]
    return [{"id": i + 1, "file_name": f.name, "width": 128, "height": 128} for i, f in enumerate(files)]


def test_a_training_split_without_images(tmp_path, image_folder):
    ann = write_coco(tmp_path / "train.json", [], [])
    with pytest.raises(
        KLDetDataError, match=r"^train data \(.*train.json\): no images to train on: it lists no images$"
    ):
        coco_module(ann, image_folder).setup("fit")


def test_a_training_split_emptied_by_lenient_skipping(tmp_path, image_folder):
    images = [{"id": 1, "file_name": "gone.png", "width": 128, "height": 128}]
    ann = write_coco(tmp_path / "train.json", images, [])
    with pytest.raises(
        KLDetDataError, match=r"no images to train on: every image was skipped as bad \(1 missing_image\)"
    ):
        coco_module(ann, image_folder, lenient=True).setup("fit")


@pytest.mark.parametrize("annotations", [None, []], ids=["no annotations key", "empty list"])
def test_a_training_split_without_objects(tmp_path, image_folder, caplog, annotations):
    ann = write_coco(tmp_path / "train.json", first_images(image_folder, 2), annotations)
    with pytest.raises(KLDetDataError, match=r"2 images but not a single object.*set allow_no_objects=true"):
        coco_module(ann, image_folder).setup("fit")
    for options in ({"allow_no_objects": True}, {"lenient": True}):
        with caplog.at_level(logging.WARNING, logger="kldet.datamodule"):
            module = coco_module(ann, image_folder, **options)
            module.setup("fit")
        assert len(module.ground_truth("train").records) == 2
        assert "not a single object" in caplog.text and "learns only background" in caplog.text
        caplog.clear()


def test_the_cli_names_the_key_for_a_split_without_objects(
    monkeypatch, capsys, tmp_path, image_folder, coco_files
):
    ann = write_coco(tmp_path / "train.json", first_images(image_folder, 2), None)
    files = [f"data.train_ann={ann}", f"data.train_images={image_folder}"]
    files += [f"data.val_ann={coco_files['val_ann']}", f"data.val_images={coco_files['val_images']}"]
    line = train_fails(
        monkeypatch, capsys, "data=coco", *files, f"hydra.run.dir={tmp_path / 'run'}", base=COCO_TINY
    )
    assert "train data (" in line and "allow_no_objects=true" in line


# --- loggers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("logger", ["tensorboard", "csv", "none", "wandb"])
def test_every_documented_logger_trains(tmp_path, data_dir, logger, monkeypatch):
    extra = []
    if logger == "wandb":
        if importlib.util.find_spec("wandb") is None:
            pytest.skip("wandb is not installed")
        monkeypatch.setenv("WANDB_MODE", "offline")
        extra = ["logger.wandb.offline=true"]
    train(tiny_config(data_dir, tmp_path, *SHORT, "test=false", f"logger={logger}", *extra))
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert "val/AP" in json.loads((tmp_path / "metrics.json").read_text())
    written = {path.name for path in tmp_path.iterdir()}
    assert (logger in written) == (logger in ("tensorboard", "csv"))


# --- interruption -------------------------------------------------------------------------------------


def start_training(data_dir, run, *overrides) -> subprocess.Popen:
    """kldet-train in a subprocess, long enough to be interrupted; its output goes to run.out."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    env["OMP_NUM_THREADS"] = "1"
    argv = [*TINY, "trainer.max_epochs=1000", "trainer.check_val_every_n_epoch=1000", "test=false"]
    out = open(run.parent / f"{run.name}.out", "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kldet.cli.train",
            *argv,
            *overrides,
            f"paths.data_dir={data_dir}",
            f"hydra.run.dir={run}",
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=run.parent,
    )


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_file():
        assert process.poll() is None, (
            path.parent.parent.parent / f"{path.parent.parent.name}.out"
        ).read_text()
        assert time.monotonic() < deadline, f"{path} not written in {timeout} s"
        time.sleep(0.2)


def resumed_step(data_dir, run, ckpt) -> int:
    """The global step at which training resumed from ``ckpt`` (in this process)."""
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    cfg = tiny_config(data_dir, run, "test=false", f"trainer.max_epochs={saved['epoch'] + 2}")
    datamodule = build_datamodule(cfg)
    trainer = build_trainer(cfg)
    probe = Probe()
    trainer.callbacks.append(probe)
    trainer.fit(build_module(cfg, datamodule), datamodule=datamodule, ckpt_path=ckpt)
    return probe.global_step


@pytest.mark.slow
def test_interrupts_save_the_current_step_and_a_kill_resumes_from_the_last_saved_one(
    tmp_path, data_dir, trained
):
    # Three runs at once (most of their time is start-up): Ctrl-C, SIGTERM and kill -9 once epoch 0
    # (3 steps: 5 images in batches of 2) is saved and a few more steps ran.
    names = ("SIGINT", "SIGTERM", "SIGKILL")
    processes = {name: start_training(data_dir, tmp_path / name, "seed=5") for name in names}
    for name, process in processes.items():
        wait_for(tmp_path / name / "checkpoints" / "last.ckpt", process)
    time.sleep(1.0)
    for name, process in processes.items():
        process.send_signal(getattr(signal, name))
    assert processes["SIGKILL"].wait(timeout=120) == -signal.SIGKILL
    steps = {}
    for name in ("SIGINT", "SIGTERM"):
        assert processes[name].wait(timeout=120) == 1
        output = (tmp_path / f"{name}.out").read_text()
        last = tmp_path / name / "checkpoints" / "last.ckpt"
        steps[name] = int(re.search(r"interrupted at global step (\d+): saved", output)[1])
        assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == steps[name] > 3
        resume = re.search(r"resume with: (kldet-train .*) ckpt_path=(\S+)$", output, re.MULTILINE)
        assert resume[2] == str(last) and "seed=5" in resume[1] and "experiment=synthetic" in resume[1]
        assert "Traceback" not in output and "weights_only" not in output
    assert (
        resumed_step(data_dir, tmp_path / "resumed_int", tmp_path / "SIGINT" / "checkpoints" / "last.ckpt")
        == steps["SIGINT"]
    )
    killed = tmp_path / "SIGKILL" / "checkpoints" / "last.ckpt"
    saved_step = torch.load(killed, map_location="cpu", weights_only=True)["global_step"]
    assert resumed_step(data_dir, tmp_path / "resumed_kill", killed) == saved_step >= 3


# --- DDP and bf16 ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_matches_a_single_process_evaluation(capsys, tmp_path, data_dir, trained):
    run = tmp_path / "run"
    # 8 images of seed 4: 6 train (13 objects), 2 val, one per process: a bridge in one, a ship in the other.
    ddp_data = ["synthetic.num_images=8", "synthetic.image_size=128", "synthetic.seed=4"]
    argv = [*TINY, *ddp_data, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
    argv += ["trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1", "trainer.benchmark=false"]
    ddp_data_dir = tmp_path / "data"
    console = run_cli(
        "kldet.cli.train", *argv, f"paths.data_dir={ddp_data_dir}", f"hydra.run.dir={run}", cwd=tmp_path
    )
    # Neither Lightning's DDP logging advice, nor its tips, nor library deprecations reach the console.
    assert "sync_dist" not in console and "Tip:" not in console and "deprecated" not in console
    log = (run / "train.log").read_text()  # the whole run
    metric_line = re.search(r"val, epoch 0 \(step \d+\): val/AP [\d.]+, val/AP50 .*", log)
    assert metric_line and "val/AP_vt" in metric_line[0] and "val/oLRP " in metric_line[0]
    assert "val/AP_airplane" not in metric_line[0] and "oLRP_FN_" not in metric_line[0]  # per class: not here
    assert re.search(r"epoch 0 \(step \d+\): train/loss [\d.]+", log)
    assert "[py.warnings][WARNING]" in log and "test metrics of" in log and "| AP50 |" in log
    logged = json.loads((run / "metrics.json").read_text())
    out = tmp_path / "single.json"
    code = kldet_eval(
        [
            f"ckpt={run / 'checkpoints' / 'best.ckpt'}",
            "experiment=synthetic",
            "data.max_size=64",
            "data.num_workers=0",
        ]
        + ddp_data
        + [f"paths.data_dir={ddp_data_dir}", "split=test", f"out={out}"]
    )
    assert code == 0
    single = json.loads(out.read_text())
    assert {f"test/{key}": value for key, value in single.items()} == pytest.approx(
        {key: value for key, value in logged.items() if key.startswith("test/")}, abs=1e-6
    )
    # An untrained model finds nothing, but a class is scored (AP 0, not -1) only where the gathered ground
    # truth has it: both processes' images reached the metric.
    val = json.loads((ddp_data_dir / "synthetic" / "annotations" / "val.json").read_text())
    names = {category["id"]: category["name"] for category in val["categories"]}
    per_image = {(a["image_id"], names[a["category_id"]]) for a in val["annotations"]}
    assert {image for image, _ in per_image} == {image["id"] for image in val["images"]}
    scored = {
        key[len("test/AP_") :] for key, value in logged.items() if key.startswith("test/AP_") and value != -1
    }
    assert scored - {"vt", "t", "s", "m"} == {name for _, name in per_image} == {"bridge", "ship"}


def test_bf16_mixed_trains_and_evaluates_on_the_cpu(tmp_path, data_dir, trained):
    metrics = train(tiny_config(data_dir, tmp_path, *SHORT, "precision=bf16-mixed"))
    assert all(torch.isfinite(torch.tensor(metrics[key])) for key in ("train/loss", "val/AP", "test/AP"))
    saved = torch.load(tmp_path / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert saved["state_dict"]["model.head.cls_logits.weight"].dtype == torch.float32


def test_kldet_eval_console_has_no_tips_or_library_deprecations(tmp_path, data_dir, trained):
    console = run_cli(
        "kldet.cli.evaluate",
        f"ckpt={trained / 'checkpoints' / 'last.ckpt'}",
        *[arg for arg in TINY if arg.split("=")[0] in ("experiment", "data.max_size")],
        *TINY_DATA,
        f"paths.data_dir={data_dir}",
        "split=val",
        f"out={tmp_path / 'metrics.json'}",
        cwd=tmp_path,
    )
    assert "| AP50 |" in console and (tmp_path / "metrics.json").is_file()
    assert "Tip:" not in console and "deprecated" not in console and "Traceback" not in console
