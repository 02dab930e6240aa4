"""The torch side of the registered optimizers (nexus_eval/optimizer_registry.py): each entry's builder and the
hyperparameters it records, all from the recipe's [optim] table. AdamW, Nexus around that AdamW, and the ablations
of Nexus, each a named optimizer run exactly like the two (`--optimizer NAME`)."""

from __future__ import annotations

from typing import Any

import torch

from nexus_eval.errors import RecipeError
from nexus_eval.optim import Fish, Nexus
from nexus_eval.optimizer_registry import REGISTRY, OptimizerEntry
from nexus_eval.schema import OptimizerSource
from nexus_eval.training.parallel import Execution
from nexus_eval.training.recipe import OptimSpec

Optimizer = torch.optim.Optimizer | Nexus


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
    """The optimizer registered as `name`, built by its entry's builder. `fused`: the one-kernel AdamW (CUDA); the
    CPU default (foreach) is what every CPU result of this harness was made with."""
    entry = REGISTRY.chosen(name)
    return entry.build.load()(model, optim, entry, fused=fused, inner_loop=inner_loop)


def optimizer_hparams(optim: OptimSpec, name: str, inner_loop: str = "exact") -> dict[str, Any]:
    """The settings that define the update, as recorded in run.json and every nexus.json."""
    entry = REGISTRY.chosen(name)
    return entry.hparams.load()(optim, entry, inner_loop)


def optimizer_source(name: str) -> OptimizerSource:
    """Where the update's code came from, as recorded in run.json and every nexus.json."""
    return REGISTRY.chosen(name).source_record()


# ---- the built-in optimizers' builders ----------------------------------------------------------------------------


def param_groups(model: torch.nn.Module, optim: OptimSpec) -> list[dict[str, Any]]:
    """Weight decay on matrices, none on norms (1-D params): the groups every built-in optimizer steps."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_adamw(
    model: torch.nn.Module, optim: OptimSpec, entry: OptimizerEntry, *, fused: bool = False, inner_loop: str = "exact"
) -> torch.optim.AdamW:
    """AdamW with no weight decay on norms."""
    extra = {"fused": True} if fused else {}
    return torch.optim.AdamW(param_groups(model, optim), lr=optim.lr, betas=(optim.beta1, optim.beta2), **extra)


def build_nexus(
    model: torch.nn.Module, optim: OptimSpec, entry: OptimizerEntry, *, fused: bool = False, inner_loop: str = "exact"
) -> Nexus:
    """Nexus (and its AdamW-outer ablations) wrapping exactly the AdamW that adamw trains with."""
    adamw = build_adamw(model, optim, entry, fused=fused)
    normalize = entry.update.normalized(optim.normalize)
    return Nexus(adamw, inner_lr_ratio=optim.inner_lr_ratio, normalize=normalize, inner_loop=inner_loop)


def build_fish(
    model: torch.nn.Module, optim: OptimSpec, entry: OptimizerEntry, *, fused: bool = False, inner_loop: str = "exact"
) -> Fish:
    """Fish: plain SGD over the same groups as AdamW's, its meta step ε = optim.fish_meta_lr."""
    groups = param_groups(model, optim)
    ratio = optim.inner_lr_ratio
    return Fish(groups, lr=optim.lr, meta_lr=optim.fish_meta_lr, inner_lr_ratio=ratio, inner_loop=inner_loop)


# ---- what the built-in optimizers record --------------------------------------------------------------------------


def _outer_hparams(optim: OptimSpec, entry: OptimizerEntry) -> dict[str, Any]:
    hp: dict[str, Any] = {"outer": entry.update.outer, "lr": optim.lr}
    if entry.update.outer == "AdamW":
        hp.update(betas=[optim.beta1, optim.beta2], weight_decay=optim.weight_decay)
    else:  # Fish's meta step: plain SGD
        hp.update(meta_lr=optim.fish_meta_lr, momentum=0.0, weight_decay=0.0)
    hp.update(accum=optim.accum, micro_batch=optim.micro_batch, schedule=optim.schedule)
    return hp


def adamw_hparams(optim: OptimSpec, entry: OptimizerEntry, inner_loop: str = "exact") -> dict[str, Any]:
    """The outer AdamW's settings and the clipping of its accumulated gradient."""
    return {**_outer_hparams(optim, entry), "grad_clip": optim.grad_clip}


def inner_loop_hparams(optim: OptimSpec, entry: OptimizerEntry, inner_loop: str = "exact") -> dict[str, Any]:
    """The outer optimizer's settings and the inner loop's: its lr ratio, normalization, steps and how computed."""
    hp = _outer_hparams(optim, entry)
    inner_steps = 1 if entry.update.inner == "one" else optim.accum
    normalize = entry.update.normalized(optim.normalize)
    hp.update(inner_lr_ratio=optim.inner_lr_ratio, normalize=normalize, inner_steps=inner_steps)
    hp.update(inner_loop=inner_loop)
    if entry.update.mixed_sources:
        hp.update(micro_batches="mixed sources")
    return hp


def set_lr(opt: Optimizer, lr: float) -> None:
    """The outer lr of every group (Nexus' inner lr follows it: γ = inner_lr_ratio × lr; Fish's groups are its
    inner steps' and the meta step keeps its ε)."""
    for group in opt.param_groups:
        group["lr"] = lr
