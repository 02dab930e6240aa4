#!/usr/bin/env bash
# What only a GPU shows about the trainer (issue 10), in one short run for a borrowed GPU machine:
#   1. bench/train_bench.py on train/130m.toml: bf16 + torch.compile, AdamW and Nexus in a process each: tokens/s,
#      MFU, peak CUDA memory, Nexus/AdamW step-time and memory ratios;
#   2. `nexus-eval train` end to end on CUDA under torchrun with FSDP2 (one rank): held-out eval, sharded
#      checkpoint, the rank-0 HF export;
#   3. that export loaded untouched by transformers, its held-out loss measured again in fp32.
# Usage: scripts/gpu_check.sh OUT_DIR [TIMED_STEPS]   (needs data/ built: `nexus-eval data build`)
set -uo pipefail
out=${1:?usage: scripts/gpu_check.sh OUT_DIR [TIMED_STEPS]}
steps=${2:-20}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-python3}
runs=$(mktemp -d)

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$python" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
} 2>&1 | tee "$out/gpu.txt"

echo "== 1. train bench: train/130m.toml, bf16 + compile, one process per optimizer"
# AdamW and Nexus only: the default adds Muon and Nexus∘Muon, two more compiled children the 330 s were not sized for
timeout 330 "$python" bench/train_bench.py --recipe train/130m.toml --device cuda --steps "$steps" --rounds 1 \
    --optimizers adamw,nexus 2>&1 |
    tee "$out/train_bench.txt"

echo "== 2. nexus-eval train on CUDA, FSDP2 under torchrun (one rank), 12 steps"
timeout 240 "$python" -m torch.distributed.run --standalone --nproc-per-node 1 -m nexus_eval.cli train \
    train/130m.toml --optimizer nexus --strategy fsdp --steps 12 --allow-repeat --out "$runs" --quiet 2>&1 |
    tee "$out/fsdp_train.txt"
cp "$runs"/*/metrics.jsonl "$out/fsdp_metrics.jsonl" 2>/dev/null

echo "== 3. the rank-0 export in transformers, held-out loss again (fp32)"
ckpt=$(ls -d "$runs"/*/ckpt-* 2>/dev/null | tail -1)
timeout 120 "$python" - "$ckpt" <<'EOF' 2>&1 | tee "$out/export_check.txt"
import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from nexus_eval.training.heldout import HeldOut

ckpt = Path(sys.argv[1])
meta = json.loads((ckpt / "nexus.json").read_text())
recipe = meta["recipe"]
model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).cuda().eval()
measured = HeldOut(Path("data"), recipe["data"]["mixture"], recipe["model"]["context"], recipe["train"]["eval_windows"])
loss = measured.measure(model)["val_loss"]
print(json.dumps({"checkpoint": str(ckpt), "trainer_heldout_loss": meta["heldout_loss"], "transformers_fp32": loss}))
EOF
rm -rf "$runs"
