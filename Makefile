# kldet developer and user targets. `make test` is what CI runs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch/torchvision are pinned to releases that install without a newer CUDA stack.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: install test lint bench demo train eval sweep tensorboard ablation clean

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
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: install
	$(BIN)/python benchmarks/bench_assign.py

clean:
	rm -rf $(VENV) outputs multirun
