# Two commands for a new user: `make train` and `make test`. Both install what they need first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export WANDB_MODE ?= offline
export OMP_NUM_THREADS ?= 2
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: install train test bench sweep-toy clean

install: $(STAMP)

# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

# The default experiment: SFT of the tiny model on the toy task, then TR-DPO (soft update) from it.
RUN := outputs/make-train/$(shell date +%Y-%m-%d_%H-%M-%S)
train: install
	$(BIN)/python -m trustregion.sft hydra.run.dir=$(RUN)/sft experiment=toy_sft
	$(BIN)/python -m trustregion.train model.path=$(RUN)/sft/policy hydra.run.dir=$(RUN)/tr-dpo experiment=toy_overopt
	@echo "run dirs: $(RUN)/sft $(RUN)/tr-dpo"

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest tests

bench: install
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python scripts/bench.py

sweep-toy: install
	bash scripts/sweep_toy.sh

clean:
	rm -rf $(VENV) outputs multirun wandb
