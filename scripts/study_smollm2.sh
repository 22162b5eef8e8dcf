#!/usr/bin/env bash
# Frozen vs Trust-Region on a real pretrained model, on a CPU: SmolLM2-135M-Instruct on the sentiment task
# (dataset=sentiment: film-review openings it wrote itself, continued and judged by VADER minus a degeneracy
# penalty). Exports the GGUF model once as a plain dir, samples the prompts and every seed's pairs once (cached),
# then runs each family x seed (frozen DPO, TR-DPO soft and hard, frozen IPO, TR-IPO soft), each evaluated by
# sampling at step 0 and every eval_every steps, then `trustregion.report` (bands, matched KL, paired verdicts) and
# samples.md (seed 1's generations at the start, the gold peak and the last evaluation).
#
#   bash scripts/study_smollm2.sh                 # or: make study-smollm2   (15 runs, under an hour on 2 idle cores)
#   STUDY=quick bash scripts/study_smollm2.sh     # frozen vs soft TR-DPO, 2 seeds, fewer steps (under 10 minutes)
#   SEEDS=1,2 FAMILIES="dpo-frozen dpo-soft" bash scripts/study_smollm2.sh -- trainer.max_steps=12  # after --: every run
#
# Settings (environment): OUT (default outputs/study_smollm2/<date>/<time>), START (a saved starting-model dir:
# skips the export), SEEDS, FAMILIES (from: dpo-frozen dpo-soft dpo-hard ipo-frozen ipo-soft), SOFT_ALPHA (at
# tau 1), HARD_TAU, DPO_BETA, IPO_BETA, JOBS (runs at once, default 2, each with OMP_NUM_THREADS=$THREADS, default
# 1). A failed run is named and the rest go on; the report covers whatever finished.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
OUT=${OUT:-outputs/study_smollm2/$(date +%Y-%m-%d/%H-%M-%S)}
STUDY=${STUDY:-full}
case $STUDY in
  full) SIZE=(); SEEDS=${SEEDS:-1,2,3}; FAMILIES=${FAMILIES:-"dpo-frozen dpo-soft dpo-hard ipo-frozen ipo-soft"} ;;
  quick)
    SIZE=(trainer.max_steps=12 trainer.eval_every=4 dataset.num_pairs=96 eval.prompts=12 dataset.eval_samples=12)
    SEEDS=${SEEDS:-1,2}; FAMILIES=${FAMILIES:-"dpo-frozen dpo-soft"} ;;
  *) echo "error: STUDY=$STUDY is not an option: set STUDY to full or quick" >&2; exit 2 ;;
esac
SOFT_ALPHA=${SOFT_ALPHA:-0.1}
HARD_TAU=${HARD_TAU:-6}
DPO_BETA=${DPO_BETA:-0.1}
IPO_BETA=${IPO_BETA:-0.1}
JOBS=${JOBS:-2}
THREADS=${THREADS:-1}  # more threads than free cores: 5-10x slower (seen when others share the machine)
SETUP_THREADS=${SETUP_THREADS:-$(nproc)}  # the export and the pairs run alone, before the runs
EXTRA=()
if [[ "${1:-}" == "--" ]]; then shift; EXTRA=("$@"); fi

export WANDB_MODE=${WANDB_MODE:-offline} TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export HYDRA_FULL_ERROR=${HYDRA_FULL_ERROR:-0}
mkdir -p "$OUT/logs"
start=$(date +%s)
say() { echo "[study_smollm2 $(( $(date +%s) - start ))s] $*"; }
say "STUDY=$STUDY, seeds $SEEDS, families: $FAMILIES; load average: $(cut -d' ' -f1-3 /proc/loadavg)"

if [[ -n "${START:-}" ]]; then
  model=$START
  say "using the starting model $model"
else
  model=$OUT/start
  say "export SmolLM2-135M-Instruct (GGUF) -> $model"
  OMP_NUM_THREADS=$SETUP_THREADS "$PY" scripts/export_model.py "$model" model=smollm2-135m > "$OUT/logs/export.log" 2>&1 \
    || { tail -5 "$OUT/logs/export.log"; exit 1; }
fi

# The SFT log-probs of a seed's pairs are the same for every family: scored by the seed's first run, read by the rest.
COMMON=(experiment=sentiment_smollm2 model.path="$model" dataset.cache_dir="$OUT/cache"
  trainer.sft_logps_cache="$OUT/cache/sft_logps" "${SIZE[@]}" "${EXTRA[@]}")
say "prompts and pairs for seeds $SEEDS -> $OUT/cache"
OMP_NUM_THREADS=$SETUP_THREADS "$PY" scripts/sentiment_pairs.py "$SEEDS" "${COMMON[@]}" 2>&1 | tee "$OUT/logs/pairs.log" \
  | grep '^seed' || { tail -5 "$OUT/logs/pairs.log"; exit 1; }

rule_of() {
  case $1 in
    dpo-frozen) echo "method=dpo method.beta=$DPO_BETA ref_update=none" ;;
    dpo-soft) echo "method=dpo method.beta=$DPO_BETA ref_update=soft ref_update.alpha=$SOFT_ALPHA ref_update.tau=1" ;;
    dpo-hard) echo "method=dpo method.beta=$DPO_BETA ref_update=hard ref_update.tau=$HARD_TAU" ;;
    ipo-frozen) echo "method=ipo method.beta=$IPO_BETA ref_update=none" ;;
    ipo-soft) echo "method=ipo method.beta=$IPO_BETA ref_update=soft ref_update.alpha=$SOFT_ALPHA ref_update.tau=1" ;;
    *) echo "error: FAMILIES holds '$1': use dpo-frozen, dpo-soft, dpo-hard, ipo-frozen, ipo-soft" >&2; return 2 ;;
  esac
}

one_run() {  # family, seed: one training run into $OUT/<family>/seed<seed>; its checkpoint removed after
  local family=$1 seed=$2 dir=$OUT/$1/seed$2 clock=$(date +%s)
  # shellcheck disable=SC2046
  if OMP_NUM_THREADS=$THREADS "$PY" -m trustregion.train $(rule_of "$family") "${COMMON[@]}" "trainer.seed=$seed" \
      hydra.run.dir="$dir" > "$OUT/logs/$family-seed$seed.log" 2>&1; then
    say "done   $family seed $seed ($(( $(date +%s) - clock ))s; load average $(cut -d' ' -f1 /proc/loadavg))"
  else
    say "FAILED $family seed $seed (see $OUT/logs/$family-seed$seed.log)"; tail -3 "$OUT/logs/$family-seed$seed.log"
  fi
  rm -rf "$dir/checkpoints"  # up to a GB each; the study needs the metrics, not the weights
}

for family in $FAMILIES; do rule_of "$family" > /dev/null || exit 2; done
for seed in ${SEEDS//,/ }; do  # seed by seed: a study cut short still holds whole seeds to pair
  for family in $FAMILIES; do
    while (( $(jobs -rp | wc -l) >= JOBS )); do wait -n || true; done
    one_run "$family" "$seed" &
  done
done
wait

say "report -> $OUT/report.md"
"$PY" -m trustregion.report "runs=[$OUT]" "out=$OUT" > "$OUT/logs/report.log" 2>&1 || { tail -5 "$OUT/logs/report.log"; exit 1; }
"$PY" scripts/study_samples.py "$OUT" > "$OUT/samples.md" || say "no samples.md (see above)"
say "finished in $(( $(date +%s) - start ))s (load average $(cut -d' ' -f1-3 /proc/loadavg)); report: $OUT/report.md"
