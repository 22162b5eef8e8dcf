#!/usr/bin/env bash
# The toy overoptimization study with LoRA (peft=lora): DPO with a frozen reference and with a soft update whose
# reference delta is kept exactly (peft.reference=exact) or factor-wise (factors), every point over seeds, then
# `trustregion.report` over these runs and, when FT names a full fine-tuning sweep dir (make sweep-toy), beside it.
#
#   SFT=<sft run>/policy FT=<sweep_toy dir> bash scripts/sweep_lora.sh     # or: make sweep-lora SFT=... FT=...
#
# Settings (environment): OUT (default outputs/sweep_lora/<date>/<time>), SEEDS (1,2,3), BETA (0.5), ALPHA
# (0.03, every step), LR (3e-3: 10x full fine-tuning's, as usual for LoRA), RANK (8), JOBS (2), SFT (an SFT
# policy dir; else the SFT stage runs first).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
OUT=${OUT:-outputs/sweep_lora/$(date +%Y-%m-%d/%H-%M-%S)}
SEEDS=${SEEDS:-1,2,3}; BETA=${BETA:-0.5}; ALPHA=${ALPHA:-0.03}; LR=${LR:-3e-3}; RANK=${RANK:-8}; JOBS=${JOBS:-2}
export WANDB_MODE=${WANDB_MODE:-offline} TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export OMP_NUM_THREADS=1
mkdir -p "$OUT/logs"
start=$(date +%s)
say() { echo "[sweep_lora $(( $(date +%s) - start ))s] $*"; }

if [[ -z "${SFT:-}" ]]; then
  say "SFT -> $OUT/sft"
  "$PY" -m trustregion.sft hydra.run.dir="$OUT/sft" experiment=toy_sft > "$OUT/logs/sft.log" 2>&1
  SFT=$OUT/sft/policy
fi
COMMON=(model.path="$SFT" experiment=toy_overopt eval.generate=true eval.prompts=128 eval.samples_per_prompt=4
        trainer.save_models=false "trainer.seed=$SEEDS" method=dpo "method.beta=$BETA" peft=lora
        "peft.rank=$RANK" "trainer.lr=$LR")
run_group() {
  local name=$1; shift
  say "start $name: $*"
  if "$PY" -m trustregion.train --multirun hydra.sweep.dir="$OUT/$name" "$@" "${COMMON[@]}" > "$OUT/logs/$name.log" 2>&1
  then say "done  $name"; else say "FAILED $name (see $OUT/logs/$name.log)"; tail -3 "$OUT/logs/$name.log"; fi
}
groups=("lora-soft ref_update=soft ref_update.alpha=$ALPHA ref_update.tau=1 peft.reference=exact,factors"
        "lora-frozen ref_update=none")
for g in "${groups[@]}"; do
  while (( $(jobs -rp | wc -l) >= JOBS )); do wait -n || true; done
  # shellcheck disable=SC2086
  run_group $g &
done
wait
targets=("$OUT")
if [[ -n "${FT:-}" ]]; then targets+=("$FT/dpo-b$BETA-frozen" "$FT/dpo-b$BETA-soft"); fi
say "report -> $OUT/report.md"
"$PY" -m trustregion.report "runs=[$(IFS=,; echo "${targets[*]}")]" "out=$OUT"
say "finished in $(( $(date +%s) - start ))s"
