"""The optimizers under comparison, built from the recipe's [optim] table: AdamW, Nexus around that AdamW, and the
ablations of Nexus, each a named variant run exactly like the two (`--optimizer NAME`; variants.py says
what each one is)."""

from __future__ import annotations

from typing import Any

import torch

from nexus_eval.errors import RecipeError
from nexus_eval.optim import Fish, Nexus
from nexus_eval.training.parallel import Execution
from nexus_eval.training.recipe import OptimSpec
from nexus_eval.training.variants import OPTIMIZERS, VARIANTS, Variant

Optimizer = torch.optim.Optimizer | Nexus


def check_optimizer_name(name: str) -> None:
    if name not in OPTIMIZERS:
        raise RecipeError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")


def variant(name: str) -> Variant:
    check_optimizer_name(name)
    return VARIANTS[name]


def inner_normalize(optim: OptimSpec, name: str) -> bool:
    """Whether the inner steps of variant `name` are normalized (nexus, nexus-k1 and nexus-mixed: as the recipe says;
    reptile and fish: never)."""
    chosen = variant(name).normalize
    return optim.normalize if chosen is None else chosen


def resolve_inner_loop(optim: OptimSpec, ex: Execution) -> str:
    """The Nexus inner loop this run uses (optim.inner_loop; optim/nexus.py, "Numerics"). "auto": linear under bf16
    autocast, whose forwards round away inner steps below bf16's resolution, exact in fp32. FSDP2 reduces gradients
    in its hooks on a plain backward, which the linear loop's double backward bypasses: linear is refused there, and
    "auto" keeps exact (train warns; `nexus-eval optim check` measures what that costs)."""
    if optim.inner_loop == "auto":
        return "linear" if ex.mixed_precision and ex.strategy != "fsdp" else "exact"
    if optim.inner_loop == "linear" and ex.strategy == "fsdp":
        raise RecipeError(
            'optim.inner_loop = "linear" needs whole parameters for its double backward: use --strategy ddp, or '
            '"exact" under fsdp'
        )
    return optim.inner_loop


def build_optimizer(
    model: torch.nn.Module, optim: OptimSpec, name: str, fused: bool = False, inner_loop: str = "exact"
) -> Optimizer:
    """AdamW with no weight decay on norms (1-D params); Nexus (and its AdamW-outer ablations) wraps exactly that
    AdamW; Fish takes plain SGD over the same groups. `fused`: the one-kernel AdamW (CUDA); the CPU default (foreach)
    is what every CPU result of this harness was made with."""
    chosen = variant(name)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if chosen.outer == "SGD":
        ratio = optim.inner_lr_ratio
        return Fish(groups, lr=optim.lr, meta_lr=optim.fish_meta_lr, inner_lr_ratio=ratio, inner_loop=inner_loop)
    extra = {"fused": True} if fused else {}
    adamw = torch.optim.AdamW(groups, lr=optim.lr, betas=(optim.beta1, optim.beta2), **extra)
    if not chosen.has_inner_steps:
        return adamw
    normalize = inner_normalize(optim, name)
    return Nexus(adamw, inner_lr_ratio=optim.inner_lr_ratio, normalize=normalize, inner_loop=inner_loop)


def optimizer_hparams(optim: OptimSpec, name: str, inner_loop: str = "exact") -> dict[str, Any]:
    """The settings that define the update, as recorded in run.json and every nexus.json."""
    chosen = variant(name)
    hp: dict[str, Any] = {"outer": chosen.outer, "lr": optim.lr}
    if chosen.outer == "AdamW":
        hp.update(betas=[optim.beta1, optim.beta2], weight_decay=optim.weight_decay)
    else:
        hp.update(meta_lr=optim.fish_meta_lr, momentum=0.0, weight_decay=0.0)
    hp.update(accum=optim.accum, micro_batch=optim.micro_batch, schedule=optim.schedule)
    if not chosen.has_inner_steps:
        hp.update(grad_clip=optim.grad_clip)
        return hp
    inner_steps = 1 if chosen.inner == "one" else optim.accum
    hp.update(inner_lr_ratio=optim.inner_lr_ratio, normalize=inner_normalize(optim, name), inner_steps=inner_steps)
    hp.update(inner_loop=inner_loop)
    if chosen.mixed_sources:
        hp.update(micro_batches="mixed sources")
    return hp


def set_lr(opt: Optimizer, lr: float) -> None:
    """The outer lr of every group (Nexus' inner lr follows it: γ = inner_lr_ratio × lr; Fish's groups are its
    inner steps' and the meta step keeps its ε)."""
    for group in opt.param_groups:
        group["lr"] = lr
