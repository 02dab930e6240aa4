"""Held-out loss, measured by the harness on the data build's val and OOD splits (the loss used for matching):
nats per token on fixed token windows of the data's tokenizer. The trainer logs it; `nexus-eval loss`
(nexus_eval.evaluation.loss) measures it, and bits per byte, for any checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from nexus_eval.schema import HeldOutLoss
from nexus_eval.training.parallel import Execution, rank_windows, sum_over_ranks, to_device


def heldout_windows(stream: np.ndarray, context: int, count: int) -> torch.Tensor:
    """`count` evenly spaced windows of context+1 tokens: the same held-out tokens for every run and checkpoint."""
    usable = len(stream) - context - 1
    count = min(count, max(1, usable // (context + 1)))
    starts = np.linspace(0, usable, num=count, dtype=np.int64)
    return torch.from_numpy(np.stack([stream[s : s + context + 1] for s in starts]).astype(np.int64))


def model_device(model: Any) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def mean_token_loss(model: Any, windows: torch.Tensor, batch_size: int = 16, ex: Execution | None = None) -> float:
    """Mean next-token cross-entropy (nats) over all predicted tokens of the windows. Under a distributed `ex` each
    rank measures its share of the windows and the sums are all-reduced: every rank returns the same loss."""
    if ex is not None and ex.distributed:
        return _mean_token_loss_over_ranks(model, windows, batch_size, ex)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    device = model_device(model)
    for chunk in windows.split(batch_size):
        chunk = chunk.to(device)
        logits = model(chunk[:, :-1], use_cache=False).logits.float()  # no KV cache: see causal_lm_loss
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten(), reduction="sum")
        total += float(loss)
        count += chunk[:, 1:].numel()
    model.train(was_training)
    return total / count


def _mean_token_loss_over_ranks(model: Any, windows: torch.Tensor, batch_size: int, ex: Execution) -> float:
    was_training = model.training
    model.eval()
    mine, passes = rank_windows(windows, ex, batch_size)
    total = torch.zeros((), dtype=torch.float64, device=ex.device)
    count = 0
    for i in range(passes):  # the same number of forwards on every rank: under FSDP each one is a collective
        chunk = mine[i * batch_size : (i + 1) * batch_size]
        measured = len(chunk) > 0
        chunk = to_device(chunk if measured else windows[:1], ex)  # a rank out of windows joins with a dummy pass
        logits = model(chunk[:, :-1], use_cache=False).logits.float()  # no autocast: as one process measures
        if measured:
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten(), reduction="sum")
            total += loss.double()
            count += chunk[:, 1:].numel()
    if hasattr(model, "reshard"):  # FSDP2 keeps the root's parameters gathered after a forward without backward
        model.reshard()  # (the optimizer and checkpoints need them sharded, as they are after a training step)
    model.train(was_training)
    total_all, count_all = sum_over_ranks([float(total), float(count)], ex)
    return total_all / count_all


class HeldOut:
    """Fixed held-out windows of every training source (val) and OOD domain, loaded once per run. With a
    distributed `ex`, the windows are split over ranks and the losses all-reduced."""

    def __init__(
        self, data_dir: Path, sources: dict[str, float], context: int, windows: int, ex: Execution | None = None
    ):
        self.ex = ex
        from nexus_eval.data import load_manifest, open_tokens

        manifest = load_manifest(data_dir)
        self.weights = {s: w / sum(sources.values()) for s, w in sources.items()}
        self.val = {s: heldout_windows(open_tokens(data_dir, "val", s), context, windows) for s in sorted(sources)}
        self.ood = {
            d: heldout_windows(open_tokens(data_dir, "ood", d), context, windows) for d in sorted(manifest["ood"])
        }

    def mixture_loss(self, model: Any) -> tuple[float, dict[str, float]]:
        per_source = {s: mean_token_loss(model, w, ex=self.ex) for s, w in self.val.items()}
        return sum(self.weights[s] * loss for s, loss in per_source.items()), per_source

    def ood_loss(self, model: Any) -> dict[str, float]:
        return {d: mean_token_loss(model, w, ex=self.ex) for d, w in self.ood.items()}

    def measure(self, model: Any) -> HeldOutLoss:
        mixture, per_source = self.mixture_loss(model)
        return {"val_loss": mixture, "val_loss_per_source": per_source, "ood_loss": self.ood_loss(model)}
