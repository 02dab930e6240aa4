#!/usr/bin/env bash
# make leaderboard-refresh: the unattended refresh CI runs. Every stage of the chain resumes or reads its cache, so a
# refresh after `make demo` (or on a restored eval cache) only trains and evaluates what is new.
#   $1: the chain that trains, evaluates and compares (default scripts/demo.sh; BACKEND=vllm for the vllm backend)
#   $2: the leaderboards directory
# Exit codes are nexus-eval's: 0 ok, 1 a leaderboard is stale, 2 bad input, 3 the eval engine died or hung, 130/143
# interrupted.
set -euo pipefail
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 CI="${CI:-true}"  # CI=true: one log line per stage, no progress bars
CHAIN=${1:-scripts/demo.sh}
DIR=${2:-leaderboards}
start=$(date +%s)
bash "$CHAIN"
nexus-eval leaderboard refresh --dir "$DIR"
nexus-eval leaderboard check --dir "$DIR"
if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
  for table in "$DIR"/*.md; do
    case "$table" in *.disagreements.md) continue ;; esac  # item lists: long, and in the artifact/PR anyway
    { echo "## $(basename "$table" .md)"; echo; cat "$table"; echo; } >> "$GITHUB_STEP_SUMMARY"
  done
fi
echo "leaderboard refresh finished in $(( $(date +%s) - start )) s"
