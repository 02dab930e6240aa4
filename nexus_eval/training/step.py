"""One outer step on the K micro-batches of a training step: where AdamW and Nexus differ, and only there.

AdamW: backward on each micro-batch loss / K (the gradients accumulate into their mean), clip, one AdamW step.
Nexus: after each micro-batch's backward one normalized inner step, then the outer step on the displacement.
Both check every micro-batch loss for NaN/inf before its backward, and can record each source's share of the
gradients for the gradient-cosine log at no extra cost (the gradients are there after backward anyway).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from nexus_eval.errors import RecipeError
from nexus_eval.optim import Nexus
from nexus_eval.training.model import causal_lm_loss
from nexus_eval.training.optimizer import Optimizer
from nexus_eval.training.schedule import MicroBatch


class NonFiniteLoss(RecipeError):
    """A micro-batch loss was NaN or infinite: the run cannot go on (the loop says where the last good state is)."""

    def __init__(self, source: str, value: float):
        super().__init__(f"training loss is {value} on a {source} micro-batch")
        self.source, self.value = source, value


@dataclass
class StepResult:
    loss: float  # mean training loss over the step's micro-batches (before the update)
    grads: dict[str, torch.Tensor] = field(default_factory=dict)  # source → its micro-batch gradients summed, flat


def outer_step(
    model: torch.nn.Module,
    opt: Optimizer,
    batches: list[MicroBatch],
    grad_clip: float = 0.0,
    record_grads: bool = False,
) -> StepResult:
    """One outer step of `opt` on `batches` (the caller sets the lr). `grad_clip` applies to AdamW's accumulated
    gradient only (0: none); Nexus' inner steps are normalized already. With `record_grads`, also each source's
    summed micro-batch gradient (one flat tensor per source)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if isinstance(opt, Nexus):
        return nexus_step(model, opt, batches, params, record_grads)
    return adamw_step(model, opt, batches, params, grad_clip, record_grads)


def nexus_step(
    model: torch.nn.Module, opt: Nexus, batches: list[MicroBatch], params: list[torch.Tensor], record_grads: bool
) -> StepResult:
    losses: list[float] = []
    per_source: dict[str, torch.Tensor] = {}
    for mb in batches:
        loss = finite_loss(model, mb)
        losses.append(loss.item())
        loss.backward()
        if record_grads:
            per_source[mb.source] = per_source.get(mb.source, 0) + flat_grad(params)
        opt.inner_step()  # θ ← θ − γ g/‖g‖, gradients cleared
    opt.step()  # AdamW on (θ0 − θK)/γ from θ0
    return StepResult(sum(losses) / len(losses), per_source)


def adamw_step(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    batches: list[MicroBatch],
    params: list[torch.Tensor],
    grad_clip: float,
    record_grads: bool,
) -> StepResult:
    losses: list[float] = []
    per_source: dict[str, torch.Tensor] = {}
    accumulated = None  # the gradient summed so far: a micro-batch's share is the difference
    for mb in batches:
        loss = finite_loss(model, mb)
        losses.append(loss.item())
        (loss / len(batches)).backward()
        if record_grads:
            total = flat_grad(params)
            micro = total if accumulated is None else total - accumulated
            per_source[mb.source] = per_source.get(mb.source, 0) + micro
            accumulated = total
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return StepResult(sum(losses) / len(losses), per_source)


def finite_loss(model: torch.nn.Module, mb: MicroBatch) -> torch.Tensor:
    loss = causal_lm_loss(model, mb.inputs, mb.labels)
    if not torch.isfinite(loss):
        raise NonFiniteLoss(mb.source, loss.item())
    return loss


def flat_grad(params: list[torch.Tensor]) -> torch.Tensor:
    """All gradients as one flat tensor (zeros for a parameter without one)."""
    return torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros_like(p).flatten() for p in params])
