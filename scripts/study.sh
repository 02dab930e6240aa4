#!/usr/bin/env bash
# make study: train/study.toml with 5 seeds x 2 optimizers; every checkpoint of every seed evaluated on the minimal
# pairs (tasks/README.md: in distribution, transfer, OOD; all well above chance at the matched losses) and the GSM8k /
# arithmetic gold-answer bits per byte; loss-matched comparison at a tolerance set from the measured seed SD, seed
# bands, curves of score and OOD loss against held-out loss → leaderboards/study.{md,json,png} + study.curves.png.
# Sized for <= 90 minutes on 2 CPU cores: the two optimizers of a seed train (then evaluate their checkpoints) side by
# side, one thread each, which on small models beats one process with two threads. Every stage resumes or reads its
# cache, so a re-run (or a run after a kill) only does what is missing.
# GEOMETRY=1 (make study-geometry) adds the gradient-cosine / minima columns at the matched pairs (about 1.5 min per
# checkpoint on 2 cores; evaluation is cached by then).
set -euo pipefail
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
DATA=${DATA:-data}
RUNS=${RUNS:-runs}
CACHE=${CACHE:-results/eval}
SEEDS=${SEEDS:-0 1 2 3 4}
OPTIMIZERS=${OPTIMIZERS:-adamw nexus}  # make ablations adds the variants (nexus_eval/optimizer_registry.py) on seeds 0-2
NAME=${NAME:-study}  # the leaderboard and report written
LIMIT=${LIMIT:-200}
JOBS=${JOBS:-2}  # runs trained and evaluated at once
THREADS=$(( $(nproc) / JOBS > 0 ? $(nproc) / JOBS : 1 ))
start=$(date +%s)
[ -f "$DATA/manifest.json" ] || nexus-eval data build --out "$DATA"
mkdir -p "$RUNS"
nexus-eval tasks prepare --data "$DATA"  # writes the pair tasks of this build, one pairs_ood_<domain> per OOD domain
ood_pairs=$(cd tasks/generated && ls pairs_ood_*.yaml | sed 's/\.yaml$//' | paste -sd, -)
TASKS=${TASKS:-pairs_text_order,pairs_comment_order,pairs_code_order,pairs_math_order,$ood_pairs,gsm8k_gold_bpb,arith_gold_bpb}

train_and_evaluate() {  # RUN_NAME OPTIMIZER SEED: train (or resume) one run, then evaluate all its checkpoints
  local run="$RUNS/$1" resume=
  [ -d "$run" ] && resume=--resume
  OMP_NUM_THREADS=$THREADS nexus-eval train train/study.toml --optimizer "$2" --seed "$3" --data "$DATA" \
    --out "$RUNS" --quiet $resume
  OMP_NUM_THREADS=$THREADS nexus-eval eval "$run"/ckpt-* --tasks "$TASKS" --limit "$LIMIT" --backend hf \
    --cache "$CACHE" --quiet >/dev/null
}

runs=()
pending=()  # run names of the jobs started and not yet waited for
wait_pending() {
  for name in "${pending[@]}"; do
    wait "${pids[$name]}" || { echo "error: $RUNS/$name failed; see $RUNS/$name.log" >&2; exit 1; }
    echo "$name trained and evaluated ($(( $(date +%s) - start )) s)"
  done
  pending=()
}
declare -A pids
for seed in $SEEDS; do
  for opt in $OPTIMIZERS; do
    name="study-$opt-s$seed"
    train_and_evaluate "$name" "$opt" "$seed" > "$RUNS/$name.log" 2>&1 &
    pids[$name]=$!
    pending+=("$name")
    runs+=("$RUNS/$name")
    [ "${#pending[@]}" -lt "$JOBS" ] || wait_pending
  done
done
wait_pending

geometry=()
[ "${GEOMETRY:-0}" = 1 ] && geometry=(--geometry)
nexus-eval compare "${runs[@]}" --match-loss --targets "${TARGETS:-5.5,5.0}" --tolerance "${TOLERANCE:-auto}" \
  --evaluate-all --tasks "$TASKS" --limit "$LIMIT" --backend hf --cache "$CACHE" --data "$DATA" \
  --out "reports/$NAME" --leaderboard "$NAME" "${geometry[@]}"
echo "study finished in $(( $(date +%s) - start )) s"
