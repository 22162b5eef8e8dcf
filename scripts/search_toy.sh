#!/usr/bin/env bash
# A search over the update schedule on the toy task, then a held-out confirmation (make search-toy).
#
# For DPO at BETA (0.5): Hydra's Optuna sweeper (TPE, seeded) searches the soft rule's (alpha, tau) and kl_budget's
# (budget, alpha), each trial training SEARCH_SEEDS and returning the mean peak gold (the report's reading). Then the
# two winners, the fixed grid's best (GRID_BEST: the 96-run study's best family at this beta) and the frozen reference
# train on HELDOUT_SEEDS, which neither the search nor the study saw, and scripts/confirm_heldout.py reports each
# candidate against the grid's best and against frozen, paired by seed, with 95 % t-intervals.
#
#   bash scripts/search_toy.sh                    # or: make search-toy
#   TRIALS=8 bash scripts/search_toy.sh           # fewer trials per rule
#   OUT=<dir> bash scripts/search_toy.sh          # resume: finished trials stay in <dir>/<rule>.db
#
# Settings (environment): OUT (default outputs/search_toy/<date>/<time>), SFT (an SFT policy dir: skips SFT), BETA,
# TRIALS (per rule, counted in the storage: a rerun adds only the missing ones), SEARCH_SEEDS, HELDOUT_SEEDS, SAMPLER_SEED,
# GRID_BEST. The two searches run side by side (one thread each), then the held-out runs.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
OUT=${OUT:-outputs/search_toy/$(date +%Y-%m-%d/%H-%M-%S)}
BETA=${BETA:-0.5}
TRIALS=${TRIALS:-12}
SEARCH_SEEDS=${SEARCH_SEEDS:-1,2}
HELDOUT_SEEDS=${HELDOUT_SEEDS:-101,102,103}
SAMPLER_SEED=${SAMPLER_SEED:-0}
GRID_BEST=${GRID_BEST:-"ref_update=soft ref_update.alpha=0.03 ref_update.tau=1"}
EXTRA=()
if [[ "${1:-}" == "--" ]]; then shift; EXTRA=("$@"); fi

export WANDB_MODE=${WANDB_MODE:-offline} TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export OMP_NUM_THREADS=1 HYDRA_FULL_ERROR=${HYDRA_FULL_ERROR:-0}
OUT=$(realpath -m "$OUT")
mkdir -p "$OUT/logs"
start=$(date +%s)
say() { echo "[search_toy $(( $(date +%s) - start ))s, load $(cut -d' ' -f1-3 /proc/loadavg)] $*"; }

if [[ -n "${SFT:-}" ]]; then
  policy=$SFT
elif [[ -d "$OUT/sft/policy" ]]; then
  policy=$OUT/sft/policy
else
  say "SFT -> $OUT/sft"
  "$PY" -m trustregion.sft hydra.run.dir="$OUT/sft" experiment=toy_sft > "$OUT/logs/sft.log" 2>&1 \
    || { tail -5 "$OUT/logs/sft.log"; exit 1; }
  policy=$OUT/sft/policy
fi

# The study's run settings (scripts/sweep_toy.sh), DPO at BETA.
COMMON=(model.path="$policy" experiment=toy_overopt method=dpo method.beta="$BETA" eval.generate=true
        eval.prompts=128 eval.samples_per_prompt=4 trainer.save_models=false "${EXTRA[@]}")

remaining() {  # trials still to run in a study: TRIALS minus the finished ones
  "$PY" - "$1" "$2" "$TRIALS" <<'PYEOF'
import sys, optuna
storage, name, want = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    done = [t for t in optuna.load_study(study_name=name, storage=storage).trials if t.state.is_finished()]
except KeyError:
    done = []
print(max(want - len(done), 0))
PYEOF
}

search() {  # rule, then the search space as sweeper overrides
  local rule=$1; shift
  local storage="sqlite:///$OUT/$rule.db" todo
  todo=$(remaining "$storage" "$rule")
  say "search $rule: $todo trials to go (of $TRIALS), seeds $SEARCH_SEEDS, storage $OUT/$rule.db"
  if (( todo > 0 )); then
    "$PY" -m trustregion.search --multirun "ref_update=$rule" "$@" "${COMMON[@]}" "search.seeds=[$SEARCH_SEEDS]" \
      hydra.sweeper.storage="$storage" hydra.sweeper.study_name="$rule" hydra.sweeper.n_trials="$todo" \
      hydra.sweeper.sampler.seed="$SAMPLER_SEED" hydra.sweep.dir="$OUT/search/$rule/$(date +%H-%M-%S)" \
      > "$OUT/logs/search-$rule.log" 2>&1 || { say "search $rule FAILED"; tail -5 "$OUT/logs/search-$rule.log"; return 1; }
  fi
  say "search $rule done"
}

search soft 'ref_update.alpha=tag(log, interval(0.003, 1.0))' 'ref_update.tau=choice(1,2,4,8,16,32,64)' &
search kl_budget 'ref_update.budget=tag(log, interval(0.01, 0.5))' 'ref_update.alpha=tag(log, interval(0.03, 1.0))' &
wait

best() {  # the best trial's settings as overrides
  "$PY" - "sqlite:///$OUT/$1.db" "$1" <<'PYEOF'
import sys, optuna
study = optuna.load_study(study_name=sys.argv[2], storage=sys.argv[1])
print(" ".join(f"{k}={v}" for k, v in sorted(study.best_trial.params.items())))
print(f"best of {len(study.trials)} trials: {study.best_value:.4f}", file=sys.stderr)
PYEOF
}
soft_best=$(best soft 2>> "$OUT/logs/winners.log")
kl_best=$(best kl_budget 2>> "$OUT/logs/winners.log")
say "winners: soft $soft_best; kl_budget $kl_best"
printf 'soft: %s\nkl_budget: %s\ngrid_best: %s\n' "$soft_best" "$kl_best" "$GRID_BEST" > "$OUT/winners.txt"

heldout() {  # name, then overrides: the HELDOUT_SEEDS runs of one candidate
  local name=$1; shift
  if [[ -f "$OUT/heldout/$name/.done" ]]; then say "held-out $name: done before"; return 0; fi
  say "held-out $name: $*"
  "$PY" -m trustregion.train --multirun "$@" "${COMMON[@]}" "trainer.seed=$HELDOUT_SEEDS" \
    hydra.sweep.dir="$OUT/heldout/$name" > "$OUT/logs/heldout-$name.log" 2>&1 \
    && touch "$OUT/heldout/$name/.done" || { say "held-out $name FAILED"; tail -3 "$OUT/logs/heldout-$name.log"; }
}
heldout frozen ref_update=none &
# shellcheck disable=SC2086
heldout grid_best $GRID_BEST &
wait
# shellcheck disable=SC2086
heldout soft_winner ref_update=soft $soft_best &
# shellcheck disable=SC2086
heldout kl_budget_winner ref_update=kl_budget $kl_best &
wait

"$PY" scripts/confirm_heldout.py "$OUT/heldout" --reference grid_best --out "$OUT" | tee "$OUT/logs/confirm.log"
"$PY" -m trustregion.report "runs=[$OUT/heldout]" "out=$OUT/heldout" > "$OUT/logs/report.log" 2>&1 || tail -3 "$OUT/logs/report.log"
say "finished in $(( $(date +%s) - start ))s: $OUT/heldout.md, $OUT/heldout/report.md"
