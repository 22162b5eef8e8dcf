#!/usr/bin/env bash
# The cross-loss study on the toy task: for every reference-based loss, a frozen reference against soft
# Trust-Region updates (alpha 0.03 and 0.1 every step), each over several seeds, then `trustregion.report` with
# paired verdicts (peak gold, and gold at the frozen run's peak KL). One SFT model for every run.
#
#   make sweep-losses                              # 15 losses x 3 families x 3 seeds = 135 runs, 57 min here (measured)
#   LOSSES="dpo hinge" SEEDS=1 STEPS=40 bash scripts/sweep_losses.sh    # a quick look (the smoke test's mode)
#   OUT=outputs/sweep_losses/<date>/<time> make sweep-losses            # continue a cut study
#
# Resumable: every run has its own dir under $OUT/<loss>/<family>/seed<s>; a run that finished carries a .done
# stamp and is never run again, an unfinished one starts over; the SFT model is reused the same way. So a study
# that was cut (Ctrl-C, a reboot) continues with the same OUT.
#
# Settings (environment): OUT (default outputs/sweep_losses/<date>/<time>), LOSSES (presets: conf/method/<loss>.yaml),
# SEEDS (comma-separated), ALPHAS (soft alphas at tau 1), STEPS (optimizer steps per run; default: the toy
# experiment's 30 epochs, 480 steps), EVAL_EVERY, PROMPTS (held-out prompts per evaluation), SAMPLES (per prompt),
# JOBS (runs at once, default 2, one thread each), SFT (an existing SFT policy dir), SFT_STEPS (SFT's optimizer
# steps; default: the toy_sft experiment's), BETA_<loss> (a loss's beta; defaults below).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
OUT=${OUT:-outputs/sweep_losses/$(date +%Y-%m-%d/%H-%M-%S)}
JOBS=${JOBS:-2}
LOSSES=${LOSSES:-"dpo ipo kto hinge exo_pair nca_pair robust bco_pair sppo_hard aot aot_unpaired apo_zero apo_down discopop sigmoid_norm"}
SEEDS=${SEEDS:-1,2,3}
ALPHAS=${ALPHAS:-0.03,0.1}
PROMPTS=${PROMPTS:-128}
SAMPLES=${SAMPLES:-4}
EVAL_EVERY=${EVAL_EVERY:-20}

# A beta per loss, by the scale of what it multiplies (the toy's responses are 8 tokens): 0.5 where beta scales a
# summed log-ratio inside a sigmoid, hinge or softmax (DPO's overoptimizing beta on this toy, docs/results/toy.md), 0.1
# for the squared losses (IPO, SPPO: their targets are +-1/(2 beta) nats) and KTO (as the toy study), 4 for sigmoid_norm
# (per-token log-ratios, 8 times smaller). Override with BETA_<loss>=<beta>.
beta_of() {
  local var="BETA_$1"
  if [[ -n "${!var:-}" ]]; then echo "${!var}"; return; fi
  case $1 in
    ipo | sppo_hard | kto) echo 0.1 ;;
    sigmoid_norm) echo 4.0 ;;
    *) echo 0.5 ;;
  esac
}

export WANDB_MODE=${WANDB_MODE:-offline} TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export OMP_NUM_THREADS=1 HYDRA_FULL_ERROR=${HYDRA_FULL_ERROR:-0}
mkdir -p "$OUT/logs"
start=$(date +%s)
say() { echo "[sweep_losses $(( $(date +%s) - start ))s] $*"; }

# run <dir> <module> <overrides...>: once; a dir with a .done stamp is skipped, an unfinished one starts over.
run() {
  local dir=$1 module=$2; shift 2
  if [[ -f "$dir/.done" ]]; then return 0; fi
  rm -rf "$dir"
  local log="$OUT/logs/$(echo "${dir#"$OUT"/}" | tr '/' '_').log"
  if "$PY" -m "$module" hydra.run.dir="$dir" "$@" > "$log" 2>&1; then
    touch "$dir/.done"
  else
    say "FAILED $dir (see $log)"; tail -3 "$log"; return 1
  fi
}

if [[ -n "${SFT:-}" ]]; then
  policy=$SFT
else
  say "SFT -> $OUT/sft"
  run "$OUT/sft" trustregion.sft experiment=toy_sft ${SFT_STEPS:+trainer.max_steps=$SFT_STEPS} || exit 1
  policy=$OUT/sft/policy
fi

COMMON=(model.path="$policy" experiment=toy_overopt eval.generate=true "eval.prompts=$PROMPTS"
        "eval.samples_per_prompt=$SAMPLES" "trainer.eval_every=$EVAL_EVERY" trainer.save_models=false
        trainer.save_final=false ${STEPS:+trainer.max_steps=$STEPS})

points=()  # loss, family dir, overrides: frozen and each alpha, every seed
for loss in $LOSSES; do
  beta=$(beta_of "$loss")
  for seed in ${SEEDS//,/ }; do
    points+=("$loss frozen/seed$seed method=$loss method.beta=$beta ref_update=none trainer.seed=$seed")
    for alpha in ${ALPHAS//,/ }; do
      points+=("$loss soft-a$alpha/seed$seed method=$loss method.beta=$beta ref_update=soft ref_update.alpha=$alpha ref_update.tau=1 trainer.seed=$seed")
    done
  done
done
say "${#points[@]} runs in $OUT (finished ones are skipped), $JOBS at once"
failed=0
for p in "${points[@]}"; do
  while (( $(jobs -rp | wc -l) >= JOBS )); do wait -n || failed=1; done
  # shellcheck disable=SC2086
  set -- $p
  run "$OUT/$1/$2" trustregion.train "${@:3}" "${COMMON[@]}" &
done
while (( $(jobs -rp | wc -l) > 0 )); do wait -n || failed=1; done

say "report -> $OUT/report.md"
"$PY" -m trustregion.report "runs=[$OUT]" "out=$OUT"
say "finished in $(( $(date +%s) - start ))s$([[ $failed == 1 ]] && echo ' (some runs failed: rerun with the same OUT)')"
