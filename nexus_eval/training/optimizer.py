"""The two optimizers under comparison, built from the recipe's [optim] table: AdamW, and Nexus around that AdamW."""

from __future__ import annotations

from typing import Any

import torch

from nexus_eval.errors import RecipeError
from nexus_eval.optim import Nexus
from nexus_eval.training.recipe import OPTIMIZERS, OptimSpec

Optimizer = torch.optim.Optimizer | Nexus


def check_optimizer_name(name: str) -> None:
    if name not in OPTIMIZERS:
        raise RecipeError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")


def build_optimizer(model: torch.nn.Module, optim: OptimSpec, name: str, fused: bool = False) -> Optimizer:
    """AdamW with no weight decay on norms (1-D params); Nexus wraps exactly that AdamW. `fused`: the one-kernel
    AdamW (CUDA); the CPU default (foreach) is what every CPU result of this harness was made with."""
    check_optimizer_name(name)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    extra = {"fused": True} if fused else {}
    adamw = torch.optim.AdamW(groups, lr=optim.lr, betas=(optim.beta1, optim.beta2), **extra)
    if name == "adamw":
        return adamw
    return Nexus(adamw, inner_lr_ratio=optim.inner_lr_ratio, normalize=optim.normalize)


def optimizer_hparams(optim: OptimSpec, name: str) -> dict[str, Any]:
    """The settings that define the update, as recorded in run.json and every nexus.json."""
    hp: dict[str, Any] = {
        "outer": "AdamW",
        "lr": optim.lr,
        "betas": [optim.beta1, optim.beta2],
        "weight_decay": optim.weight_decay,
        "accum": optim.accum,
        "micro_batch": optim.micro_batch,
        "schedule": optim.schedule,
    }
    if name == "nexus":
        hp.update(inner_lr_ratio=optim.inner_lr_ratio, normalize=optim.normalize, inner_steps=optim.accum)
    else:
        hp.update(grad_clip=optim.grad_clip)
    return hp


def set_lr(opt: Optimizer, lr: float) -> None:
    """The outer lr of every group (Nexus' inner lr follows it: γ = inner_lr_ratio × lr)."""
    for group in opt.param_groups:
        group["lr"] = lr
