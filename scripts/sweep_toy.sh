#!/usr/bin/env bash
# The overoptimization study on the toy task, on a CPU: SFT once, then DPO, IPO and KTO with a frozen
# reference and with soft/hard Trust-Region updates (Hydra --multirun, one sweep dir per method and
# rule), then `trustregion.report` over all of it: 15 runs, about 15 minutes on 2 shared cores.
#
#   bash scripts/sweep_toy.sh                    # or: make sweep-toy
#   JOBS=1 METHODS="dpo" bash scripts/sweep_toy.sh -- trainer.max_steps=100   # overrides after -- go to every alignment run
#
# Settings (environment): OUT (default outputs/sweep_toy/<date>/<time>), JOBS (multiruns at once,
# default 2, each with OMP_NUM_THREADS=$THREADS, default 1), METHODS, SOFT_ALPHAS, SOFT_TAU, HARD_TAUS,
# SFT (an existing SFT policy dir: skips the SFT stage).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
OUT=${OUT:-outputs/sweep_toy/$(date +%Y-%m-%d/%H-%M-%S)}
JOBS=${JOBS:-2}
THREADS=${THREADS:-1}
METHODS=${METHODS:-"dpo ipo kto"}
SOFT_ALPHAS=${SOFT_ALPHAS:-"0.01,0.1"}   # soft updates every SOFT_TAU steps
SOFT_TAU=${SOFT_TAU:-1}
HARD_TAUS=${HARD_TAUS:-"32,128"}          # hard updates (alpha = 1)
EXTRA=()
if [[ "${1:-}" == "--" ]]; then shift; EXTRA=("$@"); fi

export WANDB_MODE=${WANDB_MODE:-offline} TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export OMP_NUM_THREADS=$THREADS HYDRA_FULL_ERROR=${HYDRA_FULL_ERROR:-0}
mkdir -p "$OUT/logs"
start=$(date +%s)
say() { echo "[sweep_toy $(( $(date +%s) - start ))s] $*"; }

if [[ -n "${SFT:-}" ]]; then
  policy=$SFT
  say "using the SFT policy $policy"
else
  say "SFT -> $OUT/sft (log: $OUT/logs/sft.log)"
  "$PY" -m trustregion.sft hydra.run.dir="$OUT/sft" experiment=toy_sft \
    > "$OUT/logs/sft.log" 2>&1 || { tail -5 "$OUT/logs/sft.log"; exit 1; }
  policy=$OUT/sft/policy
fi

# Every alignment run evaluates by sampling (gold reward, KL to SFT) on the same held-out prompts.
COMMON=(model.path="$policy" experiment=toy_overopt eval.generate=true eval.prompts=128 eval.samples_per_prompt=2 "${EXTRA[@]}")

run_group() {  # name, then overrides: one Hydra multirun into $OUT/<name>/<job num>
  local name=$1; shift
  say "start $name: $*"
  if "$PY" -m trustregion.train --multirun hydra.sweep.dir="$OUT/$name" "$@" "${COMMON[@]}" > "$OUT/logs/$name.log" 2>&1; then
    say "done  $name"
  else
    say "FAILED $name (see $OUT/logs/$name.log)"; tail -3 "$OUT/logs/$name.log"
  fi
}

groups=()
for m in $METHODS; do
  groups+=("$m-frozen method=$m ref_update=none")
  groups+=("$m-soft method=$m ref_update=soft ref_update.alpha=$SOFT_ALPHAS ref_update.tau=$SOFT_TAU")
  groups+=("$m-hard method=$m ref_update=hard ref_update.tau=$HARD_TAUS")
done
for g in "${groups[@]}"; do
  while (( $(jobs -rp | wc -l) >= JOBS )); do wait -n || true; done
  # shellcheck disable=SC2086
  run_group $g &
done
wait

say "report -> $OUT/report.md"
"$PY" -m trustregion.report "$OUT" --out "$OUT"
say "finished in $(( $(date +%s) - start ))s"
