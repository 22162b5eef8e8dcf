#!/usr/bin/env bash
# The TR paper's sweep grids for DPO, IPO and KTO, as Hydra multiruns on Slurm: one job per grid point,
# one task per GPU (conf/hydra/launcher/slurm.yaml). Frozen baseline, soft update over alpha, hard over tau.
#
#   scripts/sweep_paper.sh model=pythia-2.8b dataset=hh dataset.path=/data/hh deepspeed=zero3 \
#       trainer=paper hydra.launcher.partition=gpu hydra.launcher.gpus_per_node=8
#
# LAUNCHER=basic runs the points one after another on this machine instead; SOFT_TAU (default 1, the
# paper's per-step reading) sets tau for the soft grid (TRL's reading: SOFT_TAU=512). The grids are as
# the paper is usually cited (alpha 0.1-0.8, tau 64-1024); DRY_RUN=1 prints the commands only.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
LAUNCHER=${LAUNCHER:-slurm}
SOFT_TAU=${SOFT_TAU:-1}
ALPHAS=${ALPHAS:-0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8}
TAUS=${TAUS:-64,128,256,512,1024}
run() { echo "+ $*"; [ -n "${DRY_RUN:-}" ] || "$@"; }
for method in dpo ipo kto; do
  common=(--multirun "hydra/launcher=$LAUNCHER" "method=$method" trainer.resume=latest "$@")
  run "$PY" -m trustregion.train "${common[@]}" ref_update=none
  run "$PY" -m trustregion.train "${common[@]}" ref_update=soft "ref_update.alpha=$ALPHAS" "ref_update.tau=$SOFT_TAU"
  run "$PY" -m trustregion.train "${common[@]}" ref_update=hard "ref_update.tau=$TAUS"
done
