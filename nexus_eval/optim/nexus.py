"""Nexus: K normalized-SGD inner steps on single-source micro-batches, then the displacement to an outer optimizer.

Algorithm 1 of "Nexus: Same Pretraining Loss, Better Downstream Generalization via Common Minima" (Chen et al.,
2026), in the practical form with gradient accumulation (shared/DESIGN.md)::

    each outer step:  θ0 ← θ
        for each of K micro-batches (one source each):   θ ← θ − γ · g / ‖g‖   (global L2 norm, no momentum)
        Δ ← θ0 − θ ;  θ ← θ0 ;  θ.grad ← Δ / γ ;  outer.step()

Averaged over source orders the pseudo-gradient is γ(n1 + n2) − (γ²/2)(J2·n1 + J1·n2) + O(γ³), n_i = ∇L_i/‖∇L_i‖:
besides descending the loss, the outer step climbs (approximately) the cosine between source gradients, pulling the
per-source minima together. `normalize=False` gives the un-normalized (Reptile-style) ablation, whose second-order
term is exactly −(γ²/2)∇(∇L1·∇L2).

Usage (any training loop; schedule the *outer* optimizer, the inner lr follows it)::

    from nexus_eval.optim import Nexus
    outer = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    opt = Nexus(outer, inner_lr_ratio=1.0)          # γ_t = inner_lr_ratio × the outer group's lr at step t
    sched = torch.optim.lr_scheduler.LambdaLR(outer, schedule)
    for step in range(steps):
        for x, y in micro_batches_of_different_sources(step):   # K micro-batches
            model(x, labels=y).loss.backward()
            opt.inner_step()                         # θ ← θ − γ g/‖g‖, grads cleared
        opt.step()                                   # outer AdamW on Δ/γ
        sched.step()

Under DDP call `backward()` WITHOUT `no_sync()`: each inner step needs the all-reduced gradient of its micro-batch,
so every rank applies the same update and the replicas stay identical.
Under FSDP2 (parameters and gradients are DTensors sharded over ranks) the inner step works on each rank's local
shards: the global L2 norm is the root of the all-reduced sum of squares over the shards, θ0 is kept sharded like the
parameters, and the pseudo-gradient is formed shard by shard. Nothing in the hot path loops over parameters in
Python: torch._foreach_* ops, all in the parameters' dtype (fp32 master weights under mixed precision).
Cost: the forward/backward passes of K-step accumulation, plus one copy of the parameters (θ0).
"""

from __future__ import annotations

from typing import Any

import torch

try:  # imported once, not per parameter in the inner step's hot path
    from torch.distributed.tensor import DTensor, Shard
except ImportError:  # a torch build without distributed support: nothing is ever sharded
    DTensor = Shard = None  # type: ignore[assignment,misc]


class Nexus:
    """Wraps an outer torch optimizer; `inner_step()` after each micro-batch backward, `step()` once per outer step."""

    def __init__(
        self, outer: torch.optim.Optimizer, inner_lr_ratio: float = 1.0, normalize: bool = True, eps: float = 1e-12
    ):
        if inner_lr_ratio <= 0:
            raise ValueError(f"inner_lr_ratio must be positive, got {inner_lr_ratio}")
        self.outer = outer
        self.inner_lr_ratio = inner_lr_ratio
        self.normalize = normalize
        self.eps = eps
        self.inner_steps = 0  # inner steps taken in the current outer step; 0 between outer steps
        self._theta0: list[list[torch.Tensor]] | None = None  # per param group, reused across steps (no realloc)
        self._last_norm: torch.Tensor | None = None  # kept as a tensor: reading it would sync the host every step

    @property
    def last_inner_grad_norm(self) -> float:
        """The global gradient norm of the latest inner step."""
        return float("nan") if self._last_norm is None else float(self._last_norm)

    # The outer optimizer's groups are the groups: lr schedulers and weight-decay groups work as usual.
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.outer.param_groups

    @property
    def state(self) -> Any:
        return self.outer.state

    def inner_lr(self, group: dict[str, Any]) -> float:
        return self.inner_lr_ratio * float(group["lr"])

    def _group_params(self) -> list[list[torch.Tensor]]:
        return [list(group["params"]) for group in self.param_groups]

    @torch.no_grad()
    def inner_step(self) -> None:
        """θ ← θ − γ · g/‖g‖ with the current gradients (one micro-batch of one source), then clear the gradients."""
        groups = self._group_params()
        if self.inner_steps == 0:  # first inner step: θ is still θ0 (backward does not move parameters)
            if self._theta0 is None:  # (under FSDP: this rank's shards; foreach ops have no DTensor rules)
                self._theta0 = [[_local(p).detach().clone() for p in params] for params in groups]
            else:
                for start, params in zip(self._theta0, groups, strict=True):
                    torch._foreach_copy_(start, [_local(p) for p in params])
        grads = [p.grad for params in groups for p in params if p.grad is not None]
        if not grads:
            raise RuntimeError("Nexus.inner_step() found no gradients: call loss.backward() first")
        norm = global_norm(grads)
        self._last_norm = norm
        for group, params in zip(self.param_groups, groups, strict=True):
            with_grad = [_local(p) for p in params if p.grad is not None]
            if not with_grad:
                continue
            step = [_local(p.grad) for p in params if p.grad is not None]
            if self.normalize:
                # γ/‖g‖ as a tensor: no host sync on accelerators; gradients are discarded below, so scale in place.
                torch._foreach_mul_(step, self.inner_lr(group) / norm.clamp_min(self.eps))
            else:
                torch._foreach_mul_(step, self.inner_lr(group))
            torch._foreach_sub_(with_grad, step)
        for params in groups:
            for p in params:
                p.grad = None
        self.inner_steps += 1

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        """Outer step: restore θ0, hand Δ/γ = (θ0 − θ)/γ to the outer optimizer as the gradient, step it."""
        if closure is not None:
            raise ValueError("Nexus.step() takes no closure: run the inner steps in the training loop")
        if self.inner_steps == 0 or self._theta0 is None:
            raise RuntimeError("Nexus.step() before any inner_step(): there is no displacement to apply")
        for group, params, start in zip(self.param_groups, self._group_params(), self._theta0, strict=True):
            local = [_local(p) for p in params]
            displacement = torch._foreach_sub(start, local)
            self._pseudo_gradient_(displacement, group)
            for p, d in zip(params, displacement, strict=True):
                p.grad = _like(p, d)
            torch._foreach_copy_(local, start)
        self.outer.step()
        # The pseudo-gradient must not leak into the next outer step's first backward (which accumulates).
        self.outer.zero_grad(set_to_none=True)
        self.inner_steps = 0

    def _pseudo_gradient_(self, displacement: list[torch.Tensor], group: dict[str, Any]) -> None:
        """Δ → what the outer optimizer gets as the gradient, in place: Δ/γ, so its size matches a gradient's."""
        torch._foreach_div_(displacement, self.inner_lr(group))

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.outer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {
            "outer": self.outer.state_dict(),
            "inner_lr_ratio": self.inner_lr_ratio,
            "normalize": self.normalize,
            "inner_steps": self.inner_steps,
            # θ0 matters only inside an outer step (a save between inner steps); between steps it is stale.
            "theta0": [[t.clone() for t in ts] for ts in self._theta0] if self.inner_steps and self._theta0 else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.outer.load_state_dict(state["outer"])
        self.inner_lr_ratio = state["inner_lr_ratio"]
        self.normalize = state["normalize"]
        self.inner_steps = state["inner_steps"]
        theta0 = state["theta0"]
        if theta0 is not None:
            self._theta0 = [
                [t.to(device=p.device, dtype=p.dtype).clone() for t, p in zip(ts, params, strict=True)]
                for ts, params in zip(theta0, self._group_params(), strict=True)
            ]

    def __repr__(self) -> str:
        return f"Nexus(inner_lr_ratio={self.inner_lr_ratio}, normalize={self.normalize}, outer={self.outer!r})"


def _is_sharded(t: torch.Tensor) -> bool:
    """A DTensor sharded over its (1-D, FSDP2) mesh: each rank holds a slice, not the whole."""
    return DTensor is not None and isinstance(t, DTensor) and any(isinstance(p, Shard) for p in t.placements)


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a DTensor (it shares storage: in-place ops on it update the DTensor); `t` otherwise."""
    return t.to_local() if DTensor is not None and isinstance(t, DTensor) else t


def _like(param: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    """`local` as a gradient of `param`: the DTensor with this rank's shard `local` when `param` is one."""
    if DTensor is None or not isinstance(param, DTensor):
        return local
    return DTensor.from_local(
        local, param.device_mesh, param.placements, run_check=False, shape=param.shape, stride=param.stride()
    )


def global_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of all gradients together, as a 0-d tensor (no host sync). Sharded gradients (FSDP2): the root
    of the sum of squares of the local shards, all-reduced over the shards' mesh; replicated ones count once."""
    sharded = [g for g in grads if _is_sharded(g)]
    if not sharded:  # one process, or DDP (gradients already all-reduced): the norm of the local tensors
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm([_local(g) for g in grads])))
    import torch.distributed as dist

    whole = [_local(g) for g in grads if not _is_sharded(g)]
    squares = torch.stack(torch._foreach_norm([_local(g) for g in sharded])).square().sum()
    dist.all_reduce(squares, group=sharded[0].device_mesh.get_group())
    if whole:
        squares = squares + torch.stack(torch._foreach_norm(whole)).square().sum()
    return squares.sqrt()
