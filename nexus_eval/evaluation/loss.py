"""`nexus-eval loss`: held-out and OOD loss of any checkpoint, measured on the harness's own data.

Two units:
- nats per token on the trainer's fixed held-out windows (nexus_eval.training.heldout), when the checkpoint shares
  the data build's tokenizer: the loss matching uses;
- bits per byte on the raw val/OOD documents: comparable across tokenizers, for external models.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from nexus_eval.checkpoints import load_model, read_meta
from nexus_eval.data import load_manifest, load_tokenizer, read_docs
from nexus_eval.training.heldout import HeldOut, model_device


@torch.no_grad()
def document_bits_per_byte(model: Any, tokenizer: Any, texts: list[str], context: int) -> float:
    """Σ NLL (bits) over Σ UTF-8 bytes, each document scored in non-overlapping windows of `context` tokens."""
    device = model_device(model)
    nll_nats, n_bytes = 0.0, 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ids = torch.tensor([bos, *ids], dtype=torch.long)
        for start in range(0, len(ids) - 1, context):
            window = ids[start : start + context + 1].to(device)
            if len(window) < 2:
                continue
            logits = model(window[None, :-1]).logits[0].float()
            nll_nats += float(torch.nn.functional.cross_entropy(logits, window[1:], reduction="sum"))
        n_bytes += len(text.encode("utf-8"))
    return nll_nats / math.log(2) / max(1, n_bytes)


def measure_checkpoint(ckpt: Path, data_dir: Path, windows: int = 16, docs: int = 20) -> dict[str, Any]:
    """`nexus-eval loss`: nats/token where the checkpoint shares the data's tokenizer, and bits/byte always."""
    manifest = load_manifest(data_dir)
    model, tokenizer = load_model(ckpt)
    context = int(getattr(model.config, "max_position_embeddings", 512) or 512)
    context = min(context, 512)
    meta = read_meta(ckpt)
    sources = meta.get("recipe", {}).get("data", {}).get("mixture") or {s: 1.0 for s in manifest["sources"]}
    result: dict[str, Any] = {"checkpoint": str(ckpt), "data_hash": manifest["hash"], "context": context}
    if tokenizer.get_vocab() == load_tokenizer(data_dir).get_vocab():
        result.update(HeldOut(data_dir, sources, context, windows).measure(model))
    result["val_bits_per_byte"] = {
        s: document_bits_per_byte(model, tokenizer, read_docs(data_dir, "val", s)[:docs], context)
        for s in sorted(sources)
    }
    result["ood_bits_per_byte"] = {
        d: document_bits_per_byte(model, tokenizer, read_docs(data_dir, "ood", d)[:docs], context)
        for d in sorted(manifest["ood"])
    }
    return result
