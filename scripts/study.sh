#!/usr/bin/env bash
# make study: train/study.toml with 3 seeds x 2 optimizers, loss-matched comparison over seeds and items
# → leaderboards/study.{md,json,png}. Sized for <= 60 minutes on 2 CPU cores; every stage resumes/caches.
set -euo pipefail
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
DATA=${DATA:-data}
RUNS=${RUNS:-runs}
SEEDS=${SEEDS:-0 1 2}
start=$(date +%s)
[ -f "$DATA/manifest.json" ] || nexus-eval data build --out "$DATA"
nexus-eval tasks prepare --data "$DATA"
runs=()
for seed in $SEEDS; do
  for opt in adamw nexus; do
    run="$RUNS/study-$opt-s$seed"
    if [ -d "$run" ]; then resume=--resume; else resume=; fi
    nexus-eval train train/study.toml --optimizer "$opt" --seed "$seed" --data "$DATA" --out "$RUNS" $resume
    runs+=("$run")
  done
done
TASKS=${TASKS:-gsm8k_gold_bpb,arith_gold_bpb,arith_steps1_mc,arith_steps2_mc,arith_steps3_mc,arith_steps4_mc,compare_mc,code_output_mc}
nexus-eval compare "${runs[@]}" --match-loss --targets "${TARGETS:-5.5,5.0}" --tasks "$TASKS" \
  --limit "${LIMIT:-300}" --backend hf --out reports/study --leaderboard study
echo "study finished in $(( $(date +%s) - start )) s"
