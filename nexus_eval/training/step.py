"""One outer step on the K micro-batches of a training step: where AdamW, Nexus and its ablations differ, and only
there. Each registered optimizer (nexus_eval/optimizer_registry.py) names its step function here; outer_step runs it.

AdamW: backward on each micro-batch loss / K (the gradients accumulate into their mean), clip, one AdamW step.
Nexus: after each micro-batch's backward one normalized inner step, then the outer step on the displacement
(reptile and fish: the same loop, with un-normalized inner steps and, for fish, a plain-SGD outer step). Its linear
inner loop (optim/nexus.py, "Numerics") keeps the weights at θ0 and takes each inner step after the first with the
gradient's first-order form at the inner point, g − γ·H·w: `linearized_backward` gives g and H·w (double backward).
nexus-k1: AdamW's accumulation, then one inner step on the accumulated gradient and the outer step (nexus_k1_step).
nexus-mixed: Nexus on the step's rows regrouped so that every micro-batch holds every source.
All check every micro-batch loss for NaN/inf before its backward, and can record each source's share of the
gradients for the gradient-cosine log at no extra cost (the gradients are there after backward anyway).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from nexus_eval.errors import RecipeError
from nexus_eval.optim import Nexus
from nexus_eval.optimizer_registry import OptimizerEntry
from nexus_eval.training.model import causal_lm_loss
from nexus_eval.training.optimizer import Optimizer
from nexus_eval.training.parallel import Execution, gradient_sync, mean_over_ranks, physical_batches, single_process
from nexus_eval.training.schedule import MicroBatch, mixed_micro_batches


class NonFiniteLoss(RecipeError):
    """A micro-batch loss was NaN or infinite: the run cannot go on (the loop says where the last good state is)."""

    def __init__(self, source: str, value: float):
        super().__init__(f"training loss is {value} on a {source} micro-batch")
        self.source, self.value = source, value


@dataclass
class StepResult:
    loss: float  # mean training loss over the step's micro-batches (before the update)
    grads: dict[str, torch.Tensor] = field(default_factory=dict)  # source → its micro-batch gradients summed, flat


@dataclass
class StepInputs:
    """What one outer step works on: the same for every optimizer's step function."""

    model: torch.nn.Module  # what forward/backward runs through (the DDP wrapper under DDP)
    opt: Optimizer
    batches: list[MicroBatch]
    params: list[torch.Tensor]  # the parameters that train, in order
    grad_clip: float  # for an optimizer that clips its accumulated gradient (0: none)
    record_grads: bool  # also each source's summed micro-batch gradient, for the gradient-cosine log
    ex: Execution


def outer_step(
    model: torch.nn.Module,
    opt: Optimizer,
    batches: list[MicroBatch],
    entry: OptimizerEntry,
    grad_clip: float = 0.0,
    record_grads: bool = False,
    ex: Execution | None = None,
) -> StepResult:
    """One outer step of `opt`, built for the registered optimizer `entry`, on `batches` (the caller sets the lr):
    the entry's step function. `grad_clip` applies to AdamW's accumulated gradient only (0: none); Nexus' inner
    steps are normalized already. With `record_grads`, also each source's summed micro-batch gradient (one flat
    tensor per source; none for nexus-mixed, whose micro-batches mix them). `model`: what forward/backward runs
    through (the DDP wrapper under DDP); `ex`: how this process executes (default: one process)."""
    ex = ex or single_process()
    params = [p for p in model.parameters() if p.requires_grad]
    takes_inner_steps = entry.update.has_inner_steps
    if takes_inner_steps and not isinstance(opt, Nexus):
        raise TypeError(f"{entry.name} takes inner steps: it needs a Nexus (or Fish), got {type(opt).__name__}")
    if not takes_inner_steps and isinstance(opt, Nexus):
        raise TypeError(f"{entry.name} steps a torch optimizer, got {opt!r}")
    return entry.step.load()(StepInputs(model, opt, batches, params, grad_clip, record_grads, ex))


# ---- the built-in optimizers' steps -------------------------------------------------------------------------------


def accumulated_step(s: StepInputs) -> StepResult:
    """adamw: the mean micro-batch gradient, clipped, one step of the torch optimizer."""
    return adamw_step(s.model, s.opt, s.batches, s.params, s.grad_clip, s.record_grads, s.ex)


def inner_loop_step(s: StepInputs) -> StepResult:
    """nexus, reptile, fish: one inner step per micro-batch, then the outer step."""
    return nexus_step(s.model, s.opt, s.batches, s.params, s.record_grads, s.ex)


def single_inner_step(s: StepInputs) -> StepResult:
    """nexus-k1: one inner step on the accumulated gradient, then the outer step."""
    return nexus_k1_step(s.model, s.opt, s.batches, s.params, s.record_grads, s.ex)


def mixed_inner_loop_step(s: StepInputs) -> StepResult:
    """nexus-mixed: the inner loop on the step's rows regrouped so that each micro-batch holds every source. No
    per-source gradients: they do not exist when every micro-batch mixes the sources."""
    return nexus_step(s.model, s.opt, mixed_micro_batches(s.batches), s.params, False, s.ex)


def nexus_step(
    model: torch.nn.Module,
    opt: Nexus,
    batches: list[MicroBatch],
    params: list[torch.Tensor],
    record_grads: bool,
    ex: Execution,
) -> StepResult:
    losses: list[float] = []
    per_source: dict[str, torch.Tensor] = {}
    for mb in batches:
        direction = opt.hvp_direction() if opt.inner_loop == "linear" else None
        hvp = None
        if direction is None:  # each inner step needs the global gradient
            losses.append(backward(model, mb, ex, divisor=1, sync=True))
        else:
            loss, hvp = linearized_backward(model, mb, ex, optimizer_params(opt), direction[1])
            losses.append(loss)
        if record_grads:
            per_source[mb.source] = per_source.get(mb.source, 0) + flat_grad(params)
        opt.inner_step(hvp=hvp)  # θ ← θ0 − γ Σ g/‖g‖ (linear: θ stays θ0), gradients cleared
    opt.step()  # AdamW on Σ g/‖g‖ = (θ0 − θK)/γ from θ0
    return StepResult(mean_loss(losses, ex), per_source)


def optimizer_params(opt: Nexus) -> list[torch.Tensor]:
    """The parameters of all of `opt`'s groups, in order: what hvp_direction's vectors align with."""
    return [p for group in opt.param_groups for p in group["params"]]


def linearized_backward(
    model: torch.nn.Module, mb: MicroBatch, ex: Execution, params: list[torch.Tensor], direction: list[torch.Tensor]
) -> tuple[float, list[torch.Tensor | None]]:
    """Micro-batch `mb`'s gradient g at the current weights into the parameters' .grad, and H·w, the derivative of
    g along `direction` (a Hessian-vector product by double backward), both averaged over ranks. Returns this rank's
    loss and H·w (None for a parameter without a gradient). The double backward runs eagerly (torch.compile has no
    double backward) with the math attention kernel (the fused kernels have none either), under the run's autocast.
    FSDP2's hooks reduce .grad only after a plain backward: the linear loop is refused there (resolve_inner_loop)."""
    if ex.strategy == "fsdp":
        raise RecipeError("the linear Nexus inner loop needs whole parameters: not under --strategy fsdp")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    module = model.module if ex.strategy == "ddp" else model  # DDP's hooks sync .grad of a plain backward only
    pieces = physical_batches(mb.inputs, mb.labels, ex)
    rows = sum(len(inputs) for inputs, _ in pieces)
    total = 0.0
    hvp: list[torch.Tensor | None] = [None] * len(params)
    eager = torch.compiler.set_stance("force_eager") if ex.compile else contextlib.nullcontext()
    with sdpa_kernel(SDPBackend.MATH), eager:
        for inputs, labels in pieces:
            with ex.autocast():
                loss = finite_loss(module, MicroBatch(mb.source, inputs, labels))
            share = len(inputs) / rows
            total += loss.item() * share
            grads = torch.autograd.grad(loss * share, params, create_graph=True, allow_unused=True)
            used = [i for i, g in enumerate(grads) if g is not None]
            dot = sum((grads[i] * direction[i]).sum() for i in used)
            second = torch.autograd.grad(dot, [params[i] for i in used], allow_unused=True)
            for i, h in zip(used, second, strict=True):
                g = grads[i].detach()
                params[i].grad = g if params[i].grad is None else params[i].grad + g
                if h is not None:
                    hvp[i] = h if hvp[i] is None else hvp[i] + h
    if ex.distributed:
        average_over_ranks([p.grad for p in params if p.grad is not None] + [h for h in hvp if h is not None], ex)
    return total, hvp


def average_over_ranks(tensors: list[torch.Tensor], ex: Execution) -> None:
    """In place, each tensor the mean of its copies on every rank: one all-reduce of them all, flattened."""
    import torch.distributed as dist

    flat = torch.cat([t.flatten() for t in tensors])
    dist.all_reduce(flat)
    flat /= ex.world
    torch._foreach_copy_(
        tensors, [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors, strict=True)]
    )


def nexus_k1_step(
    model: torch.nn.Module,
    opt: Nexus,
    batches: list[MicroBatch],
    params: list[torch.Tensor],
    record_grads: bool,
    ex: Execution,
) -> StepResult:
    """nexus-k1, the K = 1 ablation: one inner step per outer step, no inner loop. The step's micro-batches are the
    ones AdamW and Nexus see, accumulated as AdamW accumulates them (their mean gradient g, one all-reduce under
    DDP), then one inner step θ1 = θ0 − γ g/‖g‖ and the outer AdamW on (θ0 − θ1)/γ = g/‖g‖. Why this is the faithful
    K = 1: taking K = 1 by giving every micro-batch its own outer step would change the number of AdamW steps, the
    lr schedule and the tokens per step, so the run would no longer be comparable at equal tokens; feeding only
    one of the K micro-batches would drop tokens. With one inner step the displacement has no second-order term:
    what Nexus argues is its gain, −(γ²/2)(J2·n1 + J1·n2), vanishes, while everything else (the same tokens per
    step, AdamW on a normalized pseudo-gradient of the same direction as AdamW's gradient) stays. So it separates
    "the inner loop across sources" from "AdamW on a unit-norm step direction" (no clipping: the norm is 1). Note
    that while ‖g‖ exceeds grad_clip, AdamW's clipped gradient g/(‖g‖ + 1e-6) is that same unit vector: nexus-k1 then
    steps as adamw does (up to rounding); they part where ‖g‖ < grad_clip (on train/tiny.toml: most steps after
    the first ~40)."""
    losses, per_source = accumulate(model, batches, params, record_grads, ex)
    opt.inner_step()  # θ ← θ0 − γ g/‖g‖ on the accumulated gradient, gradients cleared
    opt.step()  # AdamW on (θ0 − θ1)/γ from θ0
    return StepResult(mean_loss(losses, ex), per_source)


def adamw_step(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    batches: list[MicroBatch],
    params: list[torch.Tensor],
    grad_clip: float,
    record_grads: bool,
    ex: Execution,
) -> StepResult:
    losses, per_source = accumulate(model, batches, params, record_grads, ex)
    if grad_clip > 0:
        clip_grad_norm(params, grad_clip, ex)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return StepResult(mean_loss(losses, ex), per_source)


def accumulate(
    model: torch.nn.Module, batches: list[MicroBatch], params: list[torch.Tensor], record_grads: bool, ex: Execution
) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Backward on every micro-batch loss / K: the parameters' gradients become the mean micro-batch gradient (all
    ranks' once the last micro-batch synchronizes). Returns the micro-batch losses and, with `record_grads`, each
    source's share of the gradient (its micro-batch gradients / K, summed)."""
    losses: list[float] = []
    per_source: dict[str, torch.Tensor] = {}
    accumulated = None  # the gradient summed so far: a micro-batch's share is the difference
    for i, mb in enumerate(batches):
        # Ranks average their gradients once, after the last micro-batch; every micro-batch when its share of the
        # gradient is recorded (the difference of two local sums would be one rank's, not the global one).
        sync = record_grads or i == len(batches) - 1
        losses.append(backward(model, mb, ex, divisor=len(batches), sync=sync))
        if record_grads:
            total = flat_grad(params)
            micro = total if accumulated is None else total - accumulated
            per_source[mb.source] = per_source.get(mb.source, 0) + micro
            accumulated = total
    return losses, per_source


def backward(model: torch.nn.Module, mb: MicroBatch, ex: Execution, divisor: int, sync: bool) -> float:
    """Forward and backward of this rank's rows of micro-batch `mb`, in device_batch pieces whose gradients add up
    to that of (the micro-batch loss / divisor); ranks average theirs at the last piece when `sync`. Returns this
    rank's loss on its rows."""
    pieces = physical_batches(mb.inputs, mb.labels, ex)
    rows = sum(len(inputs) for inputs, _ in pieces)
    total = 0.0
    for i, (inputs, labels) in enumerate(pieces):
        # DDP decides in forward whether the backward all-reduces: the sync context holds both
        with gradient_sync(model, ex, sync and i == len(pieces) - 1):
            with ex.autocast():
                loss = finite_loss(model, MicroBatch(mb.source, inputs, labels))
            if len(pieces) == 1:  # the single-process path, op for op as every CPU result of the harness was made
                total = loss.item()
                (loss if divisor == 1 else loss / divisor).backward()
                return total
            share = len(inputs) / rows  # a piece's mean loss weighted by its rows: the mean over the rank's rows
            total += loss.item() * share
            (loss * share / divisor).backward()
    return total


def mean_loss(losses: list[float], ex: Execution) -> float:
    """The step's mean training loss over its micro-batches, and over ranks (each held an equal share)."""
    return sum(mean_over_ranks(losses, ex)) / len(losses)


def clip_grad_norm(params: list[torch.Tensor], max_norm: float, ex: Execution) -> None:
    if ex.strategy != "fsdp":
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        return
    # FSDP: the norm of sharded gradients is a partial DTensor; reduce it over ranks before scaling (as torchtitan)
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)


def finite_loss(model: torch.nn.Module, mb: MicroBatch) -> torch.Tensor:
    loss = causal_lm_loss(model, mb.inputs, mb.labels)
    if not torch.isfinite(loss):
        raise NonFiniteLoss(mb.source, loss.item())
    return loss


def flat_grad(params: list[torch.Tensor]) -> torch.Tensor:
    """All gradients as one flat tensor (zeros for a parameter without one); under FSDP the whole gradients,
    gathered from the shards (a collective: only at the steps whose gradients the cosine log records)."""
    return torch.cat(
        [
            _whole(p.grad).flatten()
            if p.grad is not None
            else torch.zeros(p.shape, dtype=p.dtype, device=p.device).flatten()
            for p in params
        ]
    )


def _whole(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t
