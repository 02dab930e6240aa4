"""Held-out loss, measured by the harness on the data build's val and OOD splits (the loss used for matching).

Two units:
- nats per token on fixed token windows of our tokenizer (`measure`): what the trainer logs and matching uses;
- bits per byte on the raw val/OOD documents (`bits_per_byte`): comparable across tokenizers, for external models.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from nexus_eval.batches import heldout_windows


def model_device(model: Any) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def mean_token_loss(model: Any, windows: torch.Tensor, batch_size: int = 16) -> float:
    """Mean next-token cross-entropy (nats) over all predicted tokens of the windows."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    device = model_device(model)
    for chunk in windows.split(batch_size):
        chunk = chunk.to(device)
        logits = model(chunk[:, :-1]).logits.float()
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten(), reduction="sum")
        total += float(loss)
        count += chunk[:, 1:].numel()
    model.train(was_training)
    return total / count


class HeldOut:
    """Fixed held-out windows of every training source (val) and OOD domain, loaded once per run."""

    def __init__(self, data_dir: Path, sources: dict[str, float], context: int, windows: int):
        from nexus_eval.data import load_manifest, open_tokens

        manifest = load_manifest(data_dir)
        self.weights = {s: w / sum(sources.values()) for s, w in sources.items()}
        self.val = {s: heldout_windows(open_tokens(data_dir, "val", s), context, windows) for s in sorted(sources)}
        self.ood = {
            d: heldout_windows(open_tokens(data_dir, "ood", d), context, windows) for d in sorted(manifest["ood"])
        }

    def mixture_loss(self, model: Any) -> tuple[float, dict[str, float]]:
        per_source = {s: mean_token_loss(model, w) for s, w in self.val.items()}
        return sum(self.weights[s] * loss for s, loss in per_source.items()), per_source

    def ood_loss(self, model: Any) -> dict[str, float]:
        return {d: mean_token_loss(model, w) for d, w in self.ood.items()}

    def measure(self, model: Any) -> dict[str, Any]:
        mixture, per_source = self.mixture_loss(model)
        return {"val_loss": mixture, "val_loss_per_source": per_source, "ood_loss": self.ood_loss(model)}


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
    from nexus_eval.checkpoints import load_model, read_meta
    from nexus_eval.data import load_manifest, load_tokenizer, read_docs

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
