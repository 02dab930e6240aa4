#!/usr/bin/env bash
# make demo: the whole chain on the embedded default, tiny models on CPU.
# data build → train tiny with AdamW and Nexus (seed 0) → eval the reasoning suite (hf) → compare --match-loss
# → leaderboards/demo.md + PNG. Every stage is resumable/cached, so a re-run only does what is missing.
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
nexus-eval compare "$RUNS/tiny-adamw-s0" "$RUNS/tiny-nexus-s0" --match-loss --suite reasoning --backend hf \
  --out reports/demo --leaderboard demo
echo "demo finished in $(( $(date +%s) - start )) s"
