#!/usr/bin/env bash
# make optimizers: does the optimizer change what a model can do at equal held-out loss, beyond AdamW and Nexus?
# AdamW, Nexus, Muon and Nexus∘Muon on the study recipe's micro-batch stream (train/study.toml), each at its own
# learning rate, 5 seeds each, every checkpoint evaluated on the study's tasks, compared at equal loss against AdamW
# with the study's statistics → leaderboards/optimizers.{md,json,png}, and Nexus∘Muon against Muon → optimizers-muon.
#
# 1. The lr sweep, so that no optimizer is handicapped by the recipe's AdamW lr: each optimizer at every lr of LRS on
#    SWEEP_SEEDS, SWEEP_STEPS steps each (its own short schedule: warmup, stable, decay), held-out mixture loss at the
#    end; the lr of the lowest mean loss is chosen ($OUT/sweep.json, and the leaderboard's settings).
# 2. The study: every optimizer at its chosen lr (a copy of train/study.toml that differs in optim.lr only, named
#    "study" like it), SEEDS seeds, trained and evaluated like `make study` (scripts/study.sh).
# 3. compare --interpolate against AdamW; --allow-mismatch optim.lr records that the lrs differ on purpose.
# 4. Nexus∘Muon against Muon, when the sweep chose one lr for both.
# Every stage resumes or reads its cache: a re-run (or one after a kill) does only what is missing. On 2 CPU cores:
# about 1 h of sweep and 70 min of study.
set -euo pipefail
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
DATA=${DATA:-data}
RECIPE=${RECIPE:-train/study.toml}
OUT=${OUT:-runs/optimizers}
CACHE=${CACHE:-results/eval}
OPTIMIZERS=${OPTIMIZERS:-adamw nexus muon nexus:muon}
LRS=${LRS:-0.00075 0.0015 0.003 0.006 0.012 0.024}  # ×2 apart, from 4× below the recipe's 0.003 to 8× above
SWEEP_SEEDS=${SWEEP_SEEDS:-0 1}
SWEEP_STEPS=${SWEEP_STEPS:-100}
SEEDS=${SEEDS:-0 1 2 3 4}
NAME=${NAME:-optimizers}
LIMIT=${LIMIT:-200}
JOBS=${JOBS:-2}
THREADS=${THREADS:-$(( $(nproc) / JOBS > 0 ? $(nproc) / JOBS : 1 ))}  # torch threads per job
start=$(date +%s)
[ -f "$DATA/manifest.json" ] || nexus-eval data build --out "$DATA"
nexus-eval tasks prepare --data "$DATA"
ood_pairs=$(cd tasks/generated && ls pairs_ood_*.yaml | sed 's/\.yaml$//' | paste -sd, -)
TASKS=${TASKS:-pairs_text_order,pairs_comment_order,pairs_code_order,pairs_math_order,$ood_pairs,gsm8k_gold_bpb,arith_gold_bpb}
mkdir -p "$OUT/recipes"
PREFIX=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["name"])' "$RECIPE")  # run names

label() { echo "${1//:/+}"; }  # an optimizer's name in a run directory's (nexus:muon → nexus+muon)

recipe_at() {  # LR → the recipe with that optim.lr, and nothing else changed (its name too: its runs pair)
  local path="$OUT/recipes/$PREFIX-lr$1.toml"
  if [ ! -f "$path" ]; then
    sed "s/^lr = .*/lr = $1/" "$RECIPE" > "$path.tmp"
    grep -q "^lr = $1\$" "$path.tmp" || { echo "error: $RECIPE has no 'lr = ' line to set" >&2; exit 1; }
    mv "$path.tmp" "$path"
  fi
  echo "$path"
}

declare -A pids
pending=()
wait_pending() {
  for job in "${pending[@]}"; do
    wait "${pids[$job]}" || { echo "error: $job failed; see $job.log" >&2; exit 1; }
    echo "$job done ($(( $(date +%s) - start )) s)"
  done
  pending=()
}
launch() {  # JOB COMMAND...: run in the background, JOBS at a time, its output in JOB.log
  local job=$1
  shift
  "$@" > "$job.log" 2>&1 &
  pids[$job]=$!
  pending+=("$job")
  [ "${#pending[@]}" -lt "$JOBS" ] || wait_pending
}

train_run() {  # RECIPE OPTIMIZER SEED OUT [--steps N]: train, or resume a run a kill interrupted
  local recipe=$1 opt=$2 seed=$3 out=$4
  shift 4
  local resume=
  [ -d "$out/$PREFIX-$(label "$opt")-s$seed" ] && resume=--resume
  OMP_NUM_THREADS=$THREADS nexus-eval train "$recipe" --optimizer "$opt" --seed "$seed" --data "$DATA" \
    --out "$out" --quiet $resume "$@"
}

sweep_run() {  # RECIPE OPTIMIZER SEED OUT: a sweep run; one that stops (diverges) leaves RUN.failed: its lr loses
  local run="$4/$PREFIX-$(label "$2")-s$3"
  rm -f "$run.failed"
  train_run "$1" "$2" "$3" "$4" --steps "$SWEEP_STEPS" || { echo "stopped: see $run.log" > "$run.failed"; }
}

# 1. the lr sweep
for lr in $LRS; do
  recipe=$(recipe_at "$lr")
  for opt in $OPTIMIZERS; do
    for seed in $SWEEP_SEEDS; do
      mkdir -p "$OUT/sweep/lr$lr"
      launch "$OUT/sweep/lr$lr/$PREFIX-$(label "$opt")-s$seed" sweep_run "$recipe" "$opt" "$seed" "$OUT/sweep/lr$lr"
    done
  done
done
wait_pending
python3 scripts/lr_sweep.py --runs "$OUT/sweep" --prefix "$PREFIX" --optimizers $OPTIMIZERS --lrs $LRS --seeds $SWEEP_SEEDS \
  --out "$OUT/sweep.json"

# 2. every optimizer at its chosen lr, SEEDS seeds, trained then evaluated
evaluate_run() {  # RUN: every checkpoint on the study's tasks
  OMP_NUM_THREADS=$THREADS nexus-eval eval "$1"/ckpt-* --tasks "$TASKS" --limit "$LIMIT" --backend hf \
    --cache "$CACHE" --quiet >/dev/null
}
train_and_evaluate() {  # RECIPE OPTIMIZER SEED
  train_run "$1" "$2" "$3" "$OUT/runs"
  evaluate_run "$OUT/runs/$PREFIX-$(label "$2")-s$3"
}
runs=()
for seed in $SEEDS; do
  for opt in $OPTIMIZERS; do
    lr=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["chosen"][sys.argv[2]])' "$OUT/sweep.json" "$opt")
    run="$OUT/runs/$PREFIX-$(label "$opt")-s$seed"
    mkdir -p "$OUT/runs"
    launch "$run" train_and_evaluate "$(recipe_at "$lr")" "$opt" "$seed"
    runs+=("$run")
  done
done
wait_pending

compare_at_targets() {  # RUN... [FLAG...]: the runs at the study's targets, both sides interpolated to the target
  nexus-eval compare "$@" --interpolate --targets "${TARGETS:-5.5,5.0}" \
    --evaluate-all --tasks "$TASKS" --limit "$LIMIT" --backend hf --cache "$CACHE" --data "$DATA"
}

# 3. equal loss against AdamW. Interpolated, not the study's `--tolerance auto` (half the smallest seed SD of held-out
#    loss): Muon's seeds end within 0.01-0.02 nats of each other (a tolerance of 0.006) while its loss falls 0.02 nats
#    a step near the targets, so no checkpoint, not even the one written at the crossing, lands that close to a target
compare_at_targets "${runs[@]}" --allow-mismatch optim.lr --lr-sweep "$OUT/sweep.json" \
  --out "reports/$NAME" --leaderboard "$NAME"
# 4. Nexus around Muon against Muon itself: the one pair of series that share their lr (the sweep chose the same for
#    both), so Nexus's effect on Muon stands apart from the lr's
same_lr='import json, sys; c = json.load(open(sys.argv[1]))["chosen"]; print("muon" in c and c["muon"] == c.get("nexus:muon"))'
if [ "$(python3 -c "$same_lr" "$OUT/sweep.json")" = True ]; then
  muon_runs=()
  for seed in $SEEDS; do muon_runs+=("$OUT/runs/$PREFIX-muon-s$seed" "$OUT/runs/$PREFIX-nexus+muon-s$seed"); done
  compare_at_targets "${muon_runs[@]}" --reference muon --out "reports/$NAME-muon" --leaderboard "$NAME-muon"
fi
echo "optimizer study finished in $(( $(date +%s) - start )) s"
