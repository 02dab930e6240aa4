#!/usr/bin/env bash
# make demo: the whole chain on the embedded default, tiny models on CPU.
# data build → train tiny with AdamW and Nexus (seed 0) → eval the reasoning suite (hf) → compare --match-loss
# → leaderboards/demo.{json,md,png} (+ demo.disagreements.md: the items the matched pair answers differently).
# Every stage is resumable/cached, so a re-run only does what is missing.
set -euo pipefail
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
DATA=${DATA:-data}
RUNS=${RUNS:-runs}
start=$(date +%s)
[ -f "$DATA/manifest.json" ] || nexus-eval data build --out "$DATA"
nexus-eval tasks prepare --data "$DATA"
for opt in adamw nexus; do
  if [ -d "$RUNS/tiny-$opt-s0" ]; then resume=--resume; else resume=; fi
  nexus-eval train train/tiny.toml --optimizer "$opt" --seed 0 --data "$DATA" --out "$RUNS" $resume
done
# The loglikelihood tasks of the reasoning suite: at this scale exact-match generation scores are all zero.
TASKS=${TASKS:-gsm8k_gold_bpb,arith_gold_bpb,arith_steps1_mc,arith_steps2_mc,arith_steps3_mc,arith_steps4_mc,compare_mc,code_output_mc}
nexus-eval compare "$RUNS/tiny-adamw-s0" "$RUNS/tiny-nexus-s0" --match-loss --targets "${TARGETS:-5.5,5.0}" \
  --tasks "$TASKS" --limit "${LIMIT:-200}" --backend "${BACKEND:-hf}" --out reports/demo --leaderboard demo --disagreements
echo "demo finished in $(( $(date +%s) - start )) s"
