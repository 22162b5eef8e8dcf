#!/usr/bin/env bash
# Frozen vs Trust-Region on a real pretrained model, on a CPU: SmolLM2-135M-Instruct on the sentiment task
# (dataset=sentiment: film-review openings it wrote itself, continued and judged by VADER minus penalties for
# repetition, garble and off-topic text). Exports the GGUF model once as a plain dir, samples the prompts and every
# seed's pairs once (cached), then runs each family x seed, each evaluated by sampling at step 0 and every
# EVAL_EVERY steps, then `trustregion.report` (bands, matched KL, paired verdicts, detectable effects) and
# samples.md (the first seed's generations at the start, the gold peak and the last evaluation).
#
#   bash scripts/study_smollm2.sh                 # or: make study-smollm2 (5 families x 3 seeds, about 2 h 15 min idle)
#   STUDY=probe bash scripts/study_smollm2.sh     # frozen vs soft TR-DPO, seed 101, 96 steps (about 25 min idle)
#   STUDY=quick bash scripts/study_smollm2.sh     # frozen vs soft TR-DPO, 2 seeds, 12 steps (under 10 minutes)
#   DRY_RUN=1 OUT=<study dir> bash scripts/study_smollm2.sh   # the plan: what is done, resumed or run; runs nothing
#   SEEDS=1,2 FAMILIES="dpo-frozen dpo-soft" bash scripts/study_smollm2.sh -- trainer.max_steps=12  # after --: every run
#
# Resumable: run it again with the same OUT (and settings) and it goes on where it stopped. A finished run (its
# study-run.txt holds its command) is not run again; a run cut by Ctrl-C or SIGTERM (the script passes it on)
# wrote a checkpoint at the end of its step and continues from it (trainer.resume=latest); a run killed outright
# starts again from step 0 (its earlier rows are set aside in metrics.superseded.jsonl), unless CKPT_EVERY > 0
# kept a periodic checkpoint. Checkpoints (about 2 GB each) are removed once their run finishes.
#
# Settings (environment; the STUDY presets fill whatever is unset): OUT (default outputs/study_smollm2/<date>/<time>),
# START (a saved starting-model dir: skips the export), SEEDS, FAMILIES (from: dpo-frozen dpo-soft dpo-hard
# ipo-frozen ipo-soft), STEPS, BATCH (pairs per step, 8), PAIRS (default STEPS x BATCH: one epoch, every pair fresh),
# EVAL_EVERY, EVAL_PROMPTS (held-out prompts sampled at each evaluation), SAMPLES (per prompt, 2), HELD_OUT (held-out
# prompts, whose pairs give the held-out preference metrics), HELD_OUT_MARGIN (keep held-out pairs whose gold differs
# by more), LR, IPO_LR (the IPO families' lr, 1e-4), DPO_BETA, IPO_BETA, SOFT_ALPHA (TR-DPO soft, tau 1),
# IPO_SOFT_ALPHA (TR-IPO soft, tau 1; 0.03, the toy's best), HARD_TAU (default STEPS / 4: four hard updates a run),
# LORA=1 (peft=lora), JOBS (runs at once, 2), THREADS (per run, 1), SETUP_THREADS (export and sampling; default: the
# idle cores), CKPT_EVERY (0), DRY_RUN.
# A failed run is named and the rest go on; the report covers whatever finished.
{  # the whole script is read before it runs: editing or checking out this file during a study cannot break it
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
STUDY=${STUDY:-full}
case $STUDY in
  full) : "${SEEDS:=1,2,3}" "${FAMILIES:=dpo-frozen dpo-soft dpo-hard ipo-frozen ipo-soft}" "${STEPS:=96}" \
    "${EVAL_EVERY:=12}" "${EVAL_PROMPTS:=24}" "${HELD_OUT:=128}" "${HELD_OUT_MARGIN:=0.3}" ;;
  probe) : "${SEEDS:=101}" "${FAMILIES:=dpo-frozen dpo-soft}" "${STEPS:=96}" \
    "${EVAL_EVERY:=12}" "${EVAL_PROMPTS:=24}" "${HELD_OUT:=128}" "${HELD_OUT_MARGIN:=0.3}" ;;
  quick) : "${SEEDS:=1,2}" "${FAMILIES:=dpo-frozen dpo-soft}" "${STEPS:=12}" \
    "${EVAL_EVERY:=4}" "${EVAL_PROMPTS:=12}" "${HELD_OUT:=12}" "${HELD_OUT_MARGIN:=0}" ;;
  *) echo "error: STUDY=$STUDY is not an option: set STUDY to full, probe or quick" >&2; exit 2 ;;
esac
BATCH=${BATCH:-8}
PAIRS=${PAIRS:-$(( STEPS * BATCH ))}
SAMPLES=${SAMPLES:-2}
LR=${LR:-3e-4}  # at 1e-4 frozen DPO had not turned over by step 96 (KL 11-15); at 3e-4 it rose, peaked and fell (seed 101)
DPO_BETA=${DPO_BETA:-0.1}
IPO_BETA=${IPO_BETA:-0.1}
SOFT_ALPHA=${SOFT_ALPHA:-0.1}
IPO_SOFT_ALPHA=${IPO_SOFT_ALPHA:-0.03}
IPO_LR=${IPO_LR:-1e-4}  # at 3e-4 frozen IPO seed 1 diverged at step 26 (the guard stopped it; gradient norm 6.3e5)
HARD_TAU=${HARD_TAU:-$(( STEPS / 4 > 0 ? STEPS / 4 : 1 ))}
LORA=${LORA:-0}
JOBS=${JOBS:-2}
THREADS=${THREADS:-1}  # more threads than free cores: 5-10x slower (seen when others share the machine)
CKPT_EVERY=${CKPT_EVERY:-0}
DRY_RUN=${DRY_RUN:-0}
OUT=${OUT:-outputs/study_smollm2/$(date +%Y-%m-%d/%H-%M-%S)}
FIRST_SEED=${SEEDS%%,*}
DONE=study-run.txt  # in a run dir once its run finished: the run's command, so a changed setting is not mistaken
EXTRA=()
if [[ "${1:-}" == "--" ]]; then shift; EXTRA=("$@"); fi

idle_cores() {  # cores the 1-minute load average leaves free, at least 1: all of them on an idle machine, one when
  # others keep it busy (sampling with more threads than free cores ran far slower than with one)
  local load; load=$(cut -d' ' -f1 /proc/loadavg)
  local free=$(( $(nproc) - ${load%.*} ))
  echo $(( free > 1 ? free : 1 ))
}
SETUP_THREADS=${SETUP_THREADS:-$(idle_cores)}

export WANDB_MODE=${WANDB_MODE:-offline} TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export HYDRA_FULL_ERROR=${HYDRA_FULL_ERROR:-0}
start=$(date +%s)
say() { echo "[study_smollm2 $(( $(date +%s) - start ))s] $*"; }
plan() { echo "[plan] $*"; }

model=${START:-$OUT/start}
SIZE=(trainer.max_steps="$STEPS" trainer.eval_every="$EVAL_EVERY" trainer.batch_size="$BATCH" trainer.lr="$LR"
  dataset.num_pairs="$PAIRS" dataset.eval_samples="$HELD_OUT" dataset.held_out_margin="$HELD_OUT_MARGIN"
  eval.prompts="$EVAL_PROMPTS" eval.samples_per_prompt="$SAMPLES" eval.batch_size=$(( EVAL_PROMPTS * SAMPLES )))
(( LORA )) && SIZE+=(peft=lora)
(( CKPT_EVERY > 0 )) && SIZE+=(trainer.save_every="$CKPT_EVERY" trainer.keep_last=1)
# The SFT log-probs of a seed's pairs are the same for every family: scored by the seed's first run, read by the rest.
COMMON=(experiment=sentiment_smollm2 model.path="$model" dataset.cache_dir="$OUT/cache"
  trainer.sft_logps_cache="$OUT/cache/sft_logps" "${SIZE[@]}" "${EXTRA[@]}")

rule_of() {
  case $1 in
    dpo-frozen) echo "method=dpo method.beta=$DPO_BETA ref_update=none" ;;
    dpo-soft) echo "method=dpo method.beta=$DPO_BETA ref_update=soft ref_update.alpha=$SOFT_ALPHA ref_update.tau=1" ;;
    dpo-hard) echo "method=dpo method.beta=$DPO_BETA ref_update=hard ref_update.tau=$HARD_TAU" ;;
    ipo-frozen) echo "method=ipo method.beta=$IPO_BETA ref_update=none" ;;
    ipo-soft) echo "method=ipo method.beta=$IPO_BETA ref_update=soft ref_update.alpha=$IPO_SOFT_ALPHA ref_update.tau=1" ;;
    *) echo "error: FAMILIES holds '$1': use dpo-frozen, dpo-soft, dpo-hard, ipo-frozen, ipo-soft" >&2; return 2 ;;
  esac
}

run_args() {  # family, seed -> RUN_ARGS: the run's trustregion.train arguments
  # shellcheck disable=SC2046
  local lr=$LR; [[ $1 == ipo-* ]] && lr=$IPO_LR
  RUN_ARGS=($(rule_of "$1") "${COMMON[@]/#trainer.lr=*/trainer.lr=$lr}" "trainer.seed=$2" trainer.resume=latest
    hydra.run.dir="$OUT/$1/seed$2")
}

run_state() {  # family, seed -> done | resume <checkpoint> | restart | run; exits 2 on a run finished otherwise
  local dir=$OUT/$1/seed$2 ckpt
  run_args "$1" "$2"
  if [[ -f $dir/$DONE ]]; then
    if [[ "$(cat "$dir/$DONE")" == "$(printf '%q ' "${RUN_ARGS[@]}")" ]]; then echo done; return; fi
    echo "error: $dir finished with other settings (see its $DONE): use another OUT, or remove that dir" >&2
    return 2
  fi
  ckpt=$(find "$dir/checkpoints" -mindepth 2 -maxdepth 2 -name COMPLETE 2>/dev/null | sort -V | tail -1)
  if [[ -n $ckpt ]]; then echo "resume $(basename "$(dirname "$ckpt")")"
  elif [[ -f $dir/metrics.jsonl ]]; then echo restart
  else echo run; fi
}

one_run() {  # family, seed: one training run into $OUT/<family>/seed<seed>, resumed where it stopped
  local family=$1 seed=$2 dir=$OUT/$1/seed$2 clock=$(date +%s) name=$1-seed$2 rc=0
  run_args "$family" "$seed"
  OMP_NUM_THREADS=$THREADS "$PY" -m trustregion.train "${RUN_ARGS[@]}" >> "$OUT/logs/$name.log" 2>&1 &
  echo $! > "$OUT/logs/$name.pid"
  wait $! || rc=$?
  rm -f "$OUT/logs/$name.pid"
  if (( rc == 0 )); then
    printf '%q ' "${RUN_ARGS[@]}" > "$dir/$DONE"
    rm -rf "$dir/checkpoints"  # up to 2 GB each; the study needs the metrics, not the weights
    say "done    $family seed $seed ($(( $(date +%s) - clock ))s; load average $(cut -d' ' -f1 /proc/loadavg))"
  elif (( rc == 2 )) && grep -q "checkpoint written" "$OUT/logs/$name.log"; then
    say "stopped $family seed $seed at a checkpoint: run the study again to continue it"
  elif (( rc == 2 )) && grep -q "^error: signal" "$OUT/logs/$name.log"; then
    say "stopped $family seed $seed before its first step: run the study again to start it again"
  else
    say "FAILED  $family seed $seed (see $OUT/logs/$name.log)"; tail -3 "$OUT/logs/$name.log"
  fi
  touch "$OUT/logs/$name.ended"
}

stop_runs() {  # on Ctrl-C or SIGTERM: each running run checkpoints at the end of its step and stops
  trap - INT TERM
  say "stopping: every running run checkpoints its last step (run the study again to continue)"
  local pidfile
  for pidfile in "$OUT"/logs/*.pid; do [[ -f $pidfile ]] && kill -TERM "$(cat "$pidfile")" 2>/dev/null; done
  wait
  exit 130
}

ready() {  # family, seed: a seed's other runs start once its first run has scored the SFT log-probs they read (its
  # setup, before its step-0 evaluation row), or has ended
  local first=${FAMILIES%% *}
  [[ $1 == "$first" || -f $OUT/logs/$first-seed$2.ended ]] \
    || grep -qs '"eval/' "$OUT/$first/seed$2/metrics.jsonl"
}

print_plan() {  # what the study will do, run by run; with the runs' commands when DRY_RUN is set
  local first=${FAMILIES%% *} family seed state
  [[ -n ${START:-} ]] && plan "starting model: $START" || {
    [[ -f $model/.exported ]] && plan "export: done ($model)" || plan "export SmolLM2-135M-Instruct (GGUF) -> $model"; }
  plan "prompts and pairs for seeds $SEEDS -> $OUT/cache ($SETUP_THREADS threads; cached ones are read, not sampled)"
  for seed in ${SEEDS//,/ }; do
    for family in $FAMILIES; do
      state=$(run_state "$family" "$seed") || exit 2
      run_args "$family" "$seed"  # run_state's RUN_ARGS stayed in its subshell
      case $state in
        done) plan "$family seed $seed: done, not run again" ;;
        *) [[ $family == "$first" ]] && state+=", first of its seed" || state+=", after $first seed $seed's setup"
           (( DRY_RUN )) && state+=": $PY -m trustregion.train $(printf '%q ' "${RUN_ARGS[@]}")"
           plan "$family seed $seed: $state" ;;
      esac
    done
  done
  plan "report -> $OUT/report.md; samples.md (seed $FIRST_SEED)"
}

for family in $FAMILIES; do rule_of "$family" > /dev/null || exit 2; done
(( PAIRS >= STEPS * BATCH )) || echo "note: PAIRS=$PAIRS < STEPS x BATCH = $(( STEPS * BATCH )): pairs repeat" >&2
if (( DRY_RUN )); then print_plan; exit 0; fi

mkdir -p "$OUT/logs"
rm -f "$OUT"/logs/*.ended "$OUT"/logs/*.pid
say "STUDY=$STUDY, seeds $SEEDS, families: $FAMILIES; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
say "cut short? the same command with OUT=$OUT continues it"
print_plan

if [[ -z ${START:-} && ! -f $model/.exported ]]; then
  say "export SmolLM2-135M-Instruct (GGUF) -> $model"
  OMP_NUM_THREADS=$SETUP_THREADS "$PY" scripts/export_model.py "$model" model=smollm2-135m > "$OUT/logs/export.log" 2>&1 \
    || { tail -5 "$OUT/logs/export.log"; exit 1; }
  touch "$model/.exported"  # a later run of the study keeps this export: its files key the cached pairs
fi

say "prompts and pairs for seeds $SEEDS -> $OUT/cache ($SETUP_THREADS threads)"
OMP_NUM_THREADS=$SETUP_THREADS "$PY" scripts/sentiment_pairs.py "$SEEDS" "${COMMON[@]}" 2>&1 | tee "$OUT/logs/pairs.log" \
  | grep '^seed' || { tail -5 "$OUT/logs/pairs.log"; exit 1; }

trap stop_runs INT TERM
pending=()
for seed in ${SEEDS//,/ }; do  # seed by seed: a study cut short still holds whole seeds to pair
  for family in $FAMILIES; do
    if [[ $(run_state "$family" "$seed") == done ]]; then touch "$OUT/logs/$family-seed$seed.ended"
    else pending+=("$family:$seed"); fi
  done
done
while (( ${#pending[@]} )); do
  left=()
  for item in "${pending[@]}"; do
    if (( $(jobs -rp | wc -l) < JOBS )) && ready "${item%:*}" "${item#*:}"; then one_run "${item%:*}" "${item#*:}" &
    else left+=("$item"); fi
  done
  pending=("${left[@]+"${left[@]}"}")
  (( ${#pending[@]} )) || break
  (( $(jobs -rp | wc -l) )) || { say "error: runs wait on none running: ${pending[*]}"; exit 1; }
  sleep 5  # a slot frees when a run ends; a seed's runs are ready when its first run has logged step 0
done
wait
trap - INT TERM

say "report -> $OUT/report.md"
"$PY" -m trustregion.report "runs=[$OUT]" "out=$OUT" > "$OUT/logs/report.log" 2>&1 || { tail -5 "$OUT/logs/report.log"; exit 1; }
"$PY" scripts/study_samples.py "$OUT" --seed "$FIRST_SEED" > "$OUT/samples.md" || say "no samples.md (see above)"
say "finished in $(( $(date +%s) - start ))s (load average $(cut -d' ' -f1-3 /proc/loadavg)); report: $OUT/report.md"
exit 0
}
