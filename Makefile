# kldet developer and user targets. `make test` is what CI runs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch/torchvision are pinned to releases that install without a newer CUDA stack.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
# Extra Hydra overrides, e.g. `make train ARGS="trainer=gpu precision=bf16-mixed"`.
EXPERIMENT ?= synthetic
ARGS ?=
CKPT ?=

.PHONY: install test lint bench bench-assign bench-model bench-two-stage bench-data bench-eval bench-startup bench-predict bench-gpu \
	demo scenes synth train eval sweep tensorboard ablation assignment-stats authors-assignment diagnostics clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e '.[dev,geo,onnx]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests benchmarks notebooks
	$(BIN)/ruff format --check src tests benchmarks notebooks

# The synthetic tiny-object set (written on first use), trained on the CPU, evaluated (the AI-TOD table),
# and detections drawn on a few val images (outputs/demo/predictions/rendered/). It trains in bf16 where the CPU
# computes it natively (precision=auto), in fp32 elsewhere; `make demo ARGS="precision=32-true"` forces fp32.
DEMO_DIR := outputs/demo
demo: install
	rm -rf $(DEMO_DIR)
	$(BIN)/kldet-train experiment=synthetic hydra.run.dir=$(DEMO_DIR) $(ARGS)
	$(BIN)/kldet-predict ckpt=$(DEMO_DIR)/checkpoints/best.ckpt 'input=data/synthetic/val/*5.png' \
		out=$(DEMO_DIR)/predictions score_thresh=0.2

# Whole scenes on generated data: DOTA-style GeoTIFF scenes -> COCO -> training on native-resolution crops,
# validated by sliced prediction -> kldet-predict on the whole val scenes -> GeoJSON in lon/lat
# (outputs/scenes/predictions/geojson/). docs/training.md#training-on-large-scenes-crops-at-native-resolution.
SCENES_DATA := data/scenes
SCENES_DIR := outputs/scenes
scenes: install
	rm -rf $(SCENES_DATA) $(SCENES_DIR)
	$(BIN)/kldet-data synth format=dota geotiff=true out=$(SCENES_DATA) num_images=40 image_size=1024 seed=0
	$(BIN)/kldet-data convert from=dota labels=$(SCENES_DATA)/train/labelTxt images=$(SCENES_DATA)/train/images \
		out=$(SCENES_DATA)/train.json
	$(BIN)/kldet-data convert from=dota labels=$(SCENES_DATA)/val/labelTxt images=$(SCENES_DATA)/val/images \
		out=$(SCENES_DATA)/val.json
	$(BIN)/kldet-train experiment=synthetic_scenes hydra.run.dir=$(SCENES_DIR) $(ARGS)
	$(BIN)/kldet-predict ckpt=$(SCENES_DIR)/checkpoints/best.ckpt input=$(SCENES_DATA)/val/images \
		out=$(SCENES_DIR)/predictions

synth: install
	$(BIN)/kldet-data synth out=data/synthetic num_images=200 seed=0

train: install
	$(BIN)/kldet-train experiment=$(EXPERIMENT) $(ARGS)

eval: install
	$(BIN)/kldet-eval ckpt=$(CKPT) experiment=$(EXPERIMENT) $(ARGS)

sweep: install
	$(BIN)/kldet-train -m experiment=synthetic assigner=alitsm,fcos seed=0,1,2 $(ARGS)

tensorboard: install
	$(BIN)/tensorboard --logdir outputs

ablation: install
	$(BIN)/python benchmarks/ablation.py $(ARGS)

assignment-stats: install
	$(BIN)/python benchmarks/assignment_stats.py

# kldet-eval plots= and kldet-data show on the synthetic set (no training): docs/evaluation.md#error-analysis.
diagnostics: install
	$(BIN)/python benchmarks/diagnostics.py $(ARGS)

# kldet's Ali-TSM against the authors' loops (ties, conflicts, in-place shrink): docs/reproduction.md.
authors-assignment: install
	$(BIN)/python benchmarks/authors_assignment.py $(ARGS)

bench: bench-assign bench-model bench-two-stage bench-data bench-eval bench-startup bench-predict

bench-assign: install
	$(BIN)/python benchmarks/bench_assign.py

bench-model: install
	$(BIN)/python benchmarks/bench_model.py --size 512 --batch 2 --iters 3

bench-two-stage: install
	$(BIN)/python benchmarks/bench_two_stage.py --size 512 --batch 2 --iters 3 --threads 2

bench-data: install
	$(BIN)/python benchmarks/bench_data.py

bench-eval: install
	$(BIN)/python benchmarks/bench_eval.py

bench-startup: install
	$(BIN)/python benchmarks/bench_startup.py $(ARGS)

bench-predict: install
	$(BIN)/python benchmarks/bench_predict.py

# The GPU path in one call (docs/benchmarks.md#gpu-benchmark), sized for < 8 min on one GPU; ARGS="--smoke" on a CPU.
bench-gpu: install
	$(BIN)/python benchmarks/gpu.py $(ARGS)

clean:
	rm -rf $(VENV) outputs multirun
