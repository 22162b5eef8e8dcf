#!/usr/bin/env bash
# The overoptimization study on the toy task, on a CPU: SFT once, then DPO, IPO and KTO with a frozen
# reference and with soft/hard Trust-Region updates, every point over several seeds and betas (Hydra
# --multirun, one sweep dir per method, beta and update rule), then `trustregion.report` over all of it:
# per-family means with 95 % intervals over seeds and paired differences against the frozen reference.
#
#   bash scripts/sweep_toy.sh                    # or: make sweep-toy   (96 fixed-rule runs + 27 adaptive, 3 seeds)
#   GRID=large bash scripts/sweep_toy.sh         # 5 seeds and more betas (about 3x longer)
#   SEEDS=1,2 METHODS="dpo" bash scripts/sweep_toy.sh -- trainer.max_steps=100   # after --: every alignment run
#
# Settings (environment): OUT (default outputs/sweep_toy/<date>/<time>), JOBS (multiruns at once, default 2,
# each with OMP_NUM_THREADS=$THREADS, default 1), SEEDS, METHODS, DPO_BETAS, IPO_BETAS, KTO_BETAS,
# SOFT_ALPHAS (at tau 1), HARD_TAUS, PAPER_ALPHA and PAPER_TAU (the paper's soft reading: a few updates per
# run), SFT (an existing SFT policy dir: skips the SFT stage), ADAPTIVE_AT (method:beta points where the rules beyond a
# fixed (alpha, tau) run, default "dpo:0.1 dpo:0.5 ipo:0.1"; "" for none), KL_BUDGETS (kl_budget's budgets, alpha 1,
# at most every 8 steps) and SCHEDULE (the schedule rule's settings). A failed group is named and the rest go on;
# the report covers whatever finished (partial runs included).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
OUT=${OUT:-outputs/sweep_toy/$(date +%Y-%m-%d/%H-%M-%S)}
JOBS=${JOBS:-2}
THREADS=${THREADS:-1}
METHODS=${METHODS:-"dpo ipo kto"}
if [[ "${GRID:-default}" == "large" ]]; then
  SEEDS=${SEEDS:-1,2,3,4,5}; DPO_BETAS=${DPO_BETAS:-0.05,0.1,0.5}; IPO_BETAS=${IPO_BETAS:-0.1,0.5}
  KTO_BETAS=${KTO_BETAS:-0.1,0.5}
fi
SEEDS=${SEEDS:-1,2,3}
DPO_BETAS=${DPO_BETAS:-0.1,0.5}
IPO_BETAS=${IPO_BETAS:-0.1}
KTO_BETAS=${KTO_BETAS:-0.1}
SOFT_ALPHAS=${SOFT_ALPHAS:-0.003,0.01,0.03,0.1}   # soft updates after every optimizer step
HARD_TAUS=${HARD_TAUS:-32,128}                     # hard updates (alpha = 1)
PAPER_ALPHA=${PAPER_ALPHA:-0.6}                    # the paper's alpha, applied every PAPER_TAU steps
PAPER_TAU=${PAPER_TAU:-128}                        # 3 updates in the 480-step run
ADAPTIVE_AT=${ADAPTIVE_AT-"dpo:0.1 dpo:0.5 ipo:0.1"}  # where kl_budget and schedule join the study
KL_BUDGETS=${KL_BUDGETS:-0.05,0.2}                  # nats per response token; alpha 1, tau 8 (the preset)
SCHEDULE=${SCHEDULE:-"ref_update.alpha=0.1 ref_update.alpha_end=0.01 ref_update.shape=cosine ref_update.tau=1"}
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

# Every alignment run evaluates by sampling (gold reward, KL to SFT) on the same held-out prompts, from step 0.
# The wandb group is the family (method, beta, rule), so wandb's grouped view averages over seeds.
COMMON=(model.path="$policy" experiment=toy_overopt eval.generate=true eval.prompts=128 eval.samples_per_prompt=4
        trainer.save_models=false "trainer.seed=$SEEDS" "${EXTRA[@]}")

run_group() {  # name, then overrides: one Hydra multirun into $OUT/<name>/<job num>
  local name=$1; shift
  say "start $name: $*"
  if "$PY" -m trustregion.train --multirun hydra.sweep.dir="$OUT/$name" "$@" "${COMMON[@]}" > "$OUT/logs/$name.log" 2>&1; then
    say "done  $name"
  else
    say "FAILED $name (see $OUT/logs/$name.log)"; tail -3 "$OUT/logs/$name.log"
  fi
}

betas_of() { case $1 in dpo) echo "$DPO_BETAS";; ipo) echo "$IPO_BETAS";; kto) echo "$KTO_BETAS";; esac; }

groups=()  # the largest first, so the two slots finish together
for m in $METHODS; do
  for b in $(betas_of "$m" | tr ',' ' '); do
    groups+=("$m-b$b-soft method=$m method.beta=$b ref_update=soft ref_update.alpha=$SOFT_ALPHAS ref_update.tau=1")
  done
done
for m in $METHODS; do
  for b in $(betas_of "$m" | tr ',' ' '); do
    groups+=("$m-b$b-hard method=$m method.beta=$b ref_update=hard ref_update.tau=$HARD_TAUS")
  done
done
for m in $METHODS; do
  for b in $(betas_of "$m" | tr ',' ' '); do
    groups+=("$m-b$b-frozen method=$m method.beta=$b ref_update=none")
    groups+=("$m-b$b-paper method=$m method.beta=$b ref_update=soft ref_update.alpha=$PAPER_ALPHA ref_update.tau=$PAPER_TAU")
  done
done
for point in $ADAPTIVE_AT; do
  m=${point%%:*}; b=${point##*:}
  if [[ " $METHODS " == *" $m "* ]]; then
    groups+=("$m-b$b-kl_budget method=$m method.beta=$b ref_update=kl_budget ref_update.budget=$KL_BUDGETS")
    groups+=("$m-b$b-schedule method=$m method.beta=$b ref_update=schedule $SCHEDULE")
  fi
done
for g in "${groups[@]}"; do
  while (( $(jobs -rp | wc -l) >= JOBS )); do wait -n || true; done
  # shellcheck disable=SC2086
  run_group $g &
done
wait

say "report -> $OUT/report.md"
"$PY" -m trustregion.report "runs=[$OUT]" "out=$OUT"
say "finished in $(( $(date +%s) - start ))s"
