#!/usr/bin/env bash
# make demo: the whole chain on the embedded default, tiny models on CPU.
# data build → train tiny with AdamW and Nexus (seed 0) → eval (hf) → compare --match-loss
# → leaderboards/demo.{json,md,png} (+ demo.disagreements.md: the items the matched pair answers differently).
# The tasks are the study's (scripts/study.sh): the minimal pairs of the build's text, code and OOD domains, which tiny
# models score well above chance at the demo's losses, and the GSM8k / arithmetic gold-answer bits per byte; the
# multiple-choice arithmetic of the reasoning suite sits at chance there and would measure nothing. One seed: its
# intervals are over items for that training seed only (make study has 5).
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
ood_pairs=$(cd tasks/generated && ls pairs_ood_*.yaml | sed 's/\.yaml$//' | paste -sd, -)
TASKS=${TASKS:-pairs_text_order,pairs_comment_order,pairs_code_order,pairs_math_order,$ood_pairs,gsm8k_gold_bpb,arith_gold_bpb}
# Tolerance 0.05, the study's (half the smallest seed SD of loss over 5 seeds): a pair sits within it of its target,
# and the harness's loss of the checkpoint written at a crossing lies up to ~0.03 from the trainer's estimate (fewer
# windows), so 0.01 or 0.02 leave the 5.0 target without a pair.
nexus-eval compare "$RUNS/tiny-adamw-s0" "$RUNS/tiny-nexus-s0" --match-loss --targets "${TARGETS:-5.5,5.0}" \
  --tolerance "${TOLERANCE:-0.05}" --tasks "$TASKS" --limit "${LIMIT:-200}" --backend "${BACKEND:-hf}" \
  --out reports/demo --leaderboard demo --disagreements
echo "demo finished in $(( $(date +%s) - start )) s"
