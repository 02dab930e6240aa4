"""Closeness of per-source minima: fine-tune a copy of θ on each source alone, then measure where the endpoints lie.

The true per-source minimizers θ_k* are out of reach; a fixed short fine-tune from the checkpoint (same steps,
optimizer, learning rate, micro-batches and schedule for every checkpoint) is the comparable stand-in. The learning
rate decays linearly to zero over the fine-tune so the endpoint is not dominated by the last steps' noise, and weight
decay is off: we want the minimum of the source's loss, not of a regularized one. The model stays in eval mode
(no dropout), so the fine-tune is deterministic for fixed micro-batches.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nexus_eval.geometry.losses import (
    Advance,
    BatchesBySource,
    LossFn,
    flat_params,
    mean_loss,
    set_flat_params,
    trainable,
)
from nexus_eval.training.model import causal_lm_loss

FINETUNE_OPTIMIZERS = ("adamw", "sgd")  # how a minimum is fine-tuned: not the registered training optimizers


def _make_optimizer(name: str, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    raise ValueError(f"unknown fine-tune optimizer {name!r} (choose from {', '.join(FINETUNE_OPTIMIZERS)})")


def finetune_endpoint(
    model: nn.Module,
    batches: list,
    steps: int,
    lr: float,
    optimizer: str = "adamw",
    loss_fn: LossFn = causal_lm_loss,
    advance: Advance | None = None,
) -> torch.Tensor:
    """Flattened parameters after `steps` updates on the micro-batches (cycled in order); the model is left there."""
    params = trainable(model)
    opt = _make_optimizer(optimizer, params, lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 - step / steps)
    for step in range(steps):
        inputs, targets = batches[step % len(batches)]
        opt.zero_grad(set_to_none=True)
        loss_fn(model, inputs, targets).backward()
        opt.step()
        schedule.step()
        if advance is not None:
            advance()
    opt.zero_grad(set_to_none=True)
    return flat_params(model)


def minima_closeness(
    model: nn.Module,
    batches_by_source: BatchesBySource,
    steps: int,
    lr: float,
    optimizer: str = "adamw",
    eval_batches_by_source: BatchesBySource | None = None,
    loss_fn: LossFn = causal_lm_loss,
    advance: Advance | None = None,
) -> dict:
    """Fine-tune from θ on each source alone; distances between θ and the endpoints θ_k*, and the cross losses.

    batches_by_source feeds the fine-tunes; losses are measured on eval_batches_by_source (default: the same ones).
    Returns {"sources" (sorted), "minima_sq_dist": {source: ‖θ − θ_k*‖²}, "minima_msd": their mean,
    "minima_pairwise": S×S Euclidean distances ‖θ_i* − θ_j*‖, "minima_pairwise_mean": mean over i≠j,
    "cross_loss": S×S, row i = endpoint of source i, column j = mean loss of source j there,
    "base_loss": {source: loss at θ}, "finetune": the settings}. The model's parameters are restored afterwards.
    """
    if steps < 1:
        raise ValueError("minima_closeness needs at least one fine-tune step")
    if optimizer not in FINETUNE_OPTIMIZERS:
        raise ValueError(f"unknown fine-tune optimizer {optimizer!r} (choose from {', '.join(FINETUNE_OPTIMIZERS)})")
    sources = sorted(batches_by_source)
    eval_batches = eval_batches_by_source if eval_batches_by_source is not None else batches_by_source
    if sorted(eval_batches) != sources:
        raise ValueError("eval_batches_by_source must have the same sources as batches_by_source")
    theta = flat_params(model)
    try:
        base_loss = {s: mean_loss(model, eval_batches[s], loss_fn, advance) for s in sources}
        endpoints: dict[str, torch.Tensor] = {}
        cross_loss: list[list[float]] = []
        for source in sources:
            set_flat_params(model, theta)
            endpoints[source] = finetune_endpoint(
                model, batches_by_source[source], steps, lr, optimizer, loss_fn, advance
            )
            cross_loss.append([mean_loss(model, eval_batches[other], loss_fn, advance) for other in sources])
    finally:
        set_flat_params(model, theta)
    sq_dist = {s: float((endpoints[s] - theta).double().pow(2).sum()) for s in sources}
    pairwise = [
        [math.sqrt(float((endpoints[a] - endpoints[b]).double().pow(2).sum())) for b in sources] for a in sources
    ]
    offdiag = [pairwise[i][j] for i in range(len(sources)) for j in range(len(sources)) if i != j]
    return {
        "sources": sources,
        "minima_sq_dist": sq_dist,
        "minima_msd": sum(sq_dist.values()) / len(sources),
        "minima_pairwise": pairwise,
        "minima_pairwise_mean": sum(offdiag) / len(offdiag) if offdiag else math.nan,
        "cross_loss": cross_loss,
        "base_loss": base_loss,
        "finetune": {
            "steps": steps,
            "lr": lr,
            "optimizer": optimizer,
            "schedule": "linear-to-zero",
            "weight_decay": 0.0,
        },
    }
