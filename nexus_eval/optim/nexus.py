"""Nexus: K normalized-SGD inner steps on single-source micro-batches, then the displacement to an outer optimizer.

Algorithm 1 of "Nexus: Same Pretraining Loss, Better Downstream Generalization via Common Minima" (Chen et al.,
2026), in the practical form with gradient accumulation (docs/design.md)::

    each outer step:  θ0 ← θ
        for each of K micro-batches (one source each):   θ ← θ − γ · g / ‖g‖   (global L2 norm, no momentum)
        Δ ← θ0 − θ ;  θ ← θ0 ;  θ.grad ← Δ / γ ;  outer.step()

Averaged over source orders the pseudo-gradient is γ(n1 + n2) − (γ²/2)(J2·n1 + J1·n2) + O(γ³), n_i = ∇L_i/‖∇L_i‖:
besides descending the loss, the outer step climbs (approximately) the cosine between source gradients, pulling the
per-source minima together. `normalize=False` gives the un-normalized (Reptile-style) ablation, whose second-order
term is exactly −(γ²/2)∇(∇L1·∇L2).

Numerics (why the code does not compute Δ as θ0 − θ_K). The pseudo-gradient P = Δ/γ = Σ_k n_k(θ_{k−1}) is its
first-order part N = Σ_k n_k(θ0), what normalized gradient accumulation gives, plus the part that carries the method,
S = P − N = O(γ). At GPU scale the per-element inner step γ/√(#params) is 1e-7..1e-8, at or below the float32
spacing of the weights, so θ0 − θ_K (a difference of nearly equal float32 numbers) loses S, and under bf16 autocast
the forwards at θ_{k−1} see bf16(θ_{k−1}) = bf16(θ0). Hence two things:

- P is accumulated in its own buffer, u_k = u_{k−1} + g_k/‖g_k‖ (float32, or the parameters' dtype if wider), never
  recovered from the weights; the inner point is set as θ_{k−1} = θ0 − γ·u_{k−1} from θ0 (one rounding, none that
  accumulates over the inner steps). The outer optimizer gets u_K. This is `inner_loop="exact"`: the exact algorithm,
  faithful wherever the forward sees the displacement (float32 or wider compute, no TF32).
- `inner_loop="linear"`: the weights stay at θ0; the gradient at the inner point is its first-order Taylor form
  g_k(θ0) − γ·H_k(θ0)·u_{k−1}, with the Hessian-vector product H_k·u supplied by the training loop (double backward,
  training/step.py). u is O(1), so bf16 can carry H_k·u to its relative precision, while it cannot carry a
  displacement of 1e-8. It drops O(γ²) terms of the inner gradients, which `nexus-eval optim check` measures against
  the float64 exact algorithm (docs/training.md, "Nexus at scale"); θ0 is not copied.

Usage (any training loop; schedule the *outer* optimizer, the inner lr follows it)::

    from nexus_eval.optim import Nexus
    outer = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    opt = Nexus(outer, inner_lr_ratio=1.0)          # γ_t = inner_lr_ratio × the outer group's lr at step t
    sched = torch.optim.lr_scheduler.LambdaLR(outer, schedule)
    for step in range(steps):
        for x, y in micro_batches_of_different_sources(step):   # K micro-batches
            model(x, labels=y).loss.backward()
            opt.inner_step()                         # θ ← θ0 − γ Σ g/‖g‖, grads cleared
        opt.step()                                   # outer AdamW on Σ g/‖g‖ from θ0
        sched.step()

Under DDP call `backward()` WITHOUT `no_sync()`: each inner step needs the all-reduced gradient of its micro-batch,
so every rank applies the same update and the replicas stay identical.
Under FSDP2 (parameters and gradients are DTensors sharded over ranks) the inner step works on each rank's local
shards: the global L2 norm is the root of the all-reduced sum of squares over the shards, θ0 and u are kept sharded
like the parameters. Nothing in the hot path loops over parameters in Python: torch._foreach_* ops.
Cost: the forward/backward passes of K-step accumulation, plus two copies of the parameters (θ0 and u; u alone in
the linear loop, which instead pays a double backward on each inner step after the first).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.distributed.tensor import DTensor, Shard

from nexus_eval.optim.split import OptimizerSplit

INNER_LOOPS = ("exact", "linear")


class Nexus:
    """Wraps an outer torch optimizer; `inner_step()` after each micro-batch backward, `step()` once per outer step."""

    def __init__(
        self,
        outer: torch.optim.Optimizer | OptimizerSplit,
        inner_lr_ratio: float = 1.0,
        normalize: bool = True,
        eps: float = 1e-12,
        inner_loop: str = "exact",
    ):
        if inner_lr_ratio <= 0:
            raise ValueError(f"inner_lr_ratio must be positive, got {inner_lr_ratio}")
        if inner_loop not in INNER_LOOPS:
            raise ValueError(f"inner_loop must be one of {', '.join(INNER_LOOPS)}, got {inner_loop!r}")
        self.outer = outer
        self.inner_lr_ratio = inner_lr_ratio
        self.normalize = normalize
        self.eps = eps
        self.inner_loop = inner_loop
        self.inner_steps = 0  # inner steps taken in the current outer step; 0 between outer steps
        # Per param group, allocated once and reused across steps: θ0 (exact loop only) and u = Σ_k step_k/γ.
        self._theta0: list[list[torch.Tensor]] | None = None
        self._direction: list[list[torch.Tensor]] | None = None
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

    def hvp_direction(self) -> tuple[float, list[torch.Tensor]] | None:
        """For the linear loop: (γ, w) such that θ0 − θ_k = γ·w, w aligned with the parameters of all groups in
        order (this rank's shards under FSDP; a group whose γ differs from the first's is scaled to it). The training
        loop hands H·w back to `inner_step`. None before the first inner step of an outer step (the point is θ0)."""
        if self.inner_steps == 0 or self._direction is None:
            return None
        gamma = self.inner_lr(self.param_groups[0])
        out: list[torch.Tensor] = []
        for group, direction in zip(self.param_groups, self._direction, strict=True):
            scale = self.inner_lr(group) / gamma
            out += direction if scale == 1.0 else [d * scale for d in direction]
        return gamma, out

    @torch.no_grad()
    def inner_step(self, hvp: list[torch.Tensor | None] | None = None) -> None:
        """One inner step with the current gradients (one micro-batch of one source), then clear the gradients.
        `hvp` (linear loop, after the first inner step): H·w for `hvp_direction()`'s w, one tensor (or None: no
        gradient) per parameter of all groups in order; the step then uses the gradient g − γ·H·w."""
        groups = self._group_params()
        if self.inner_steps == 0:
            self._start(groups)
        elif self.inner_loop == "linear" and hvp is None:
            raise RuntimeError("Nexus(inner_loop='linear').inner_step() after the first needs hvp=H·w")
        grads = [p.grad for params in groups for p in params if p.grad is not None]
        if not grads:
            raise RuntimeError("Nexus.inner_step() found no gradients: call loss.backward() first")
        if hvp is not None and self.inner_steps > 0:
            gamma = self.inner_lr(self.param_groups[0])
            flat = [p for params in groups for p in params]
            if len(hvp) != len(flat):
                raise ValueError(f"hvp has {len(hvp)} tensors for {len(flat)} parameters")
            pairs = [
                (_local(p.grad), _local(h))
                for p, h in zip(flat, hvp, strict=True)
                if p.grad is not None and h is not None
            ]
            if pairs:
                torch._foreach_add_([g for g, _ in pairs], [h for _, h in pairs], alpha=-gamma)
        norm = global_norm(grads)
        self._last_norm = norm
        assert self._direction is not None
        theta0 = self._theta0 if self.inner_loop == "exact" else [None] * len(groups)
        assert theta0 is not None
        for group, params, direction, start in zip(self.param_groups, groups, self._direction, theta0, strict=True):
            pairs = [(d, _local(p.grad)) for d, p in zip(direction, params, strict=True) if p.grad is not None]
            if pairs:
                step = [g if g.dtype == d.dtype else g.to(d.dtype) for d, g in pairs]
                if self.normalize:
                    # 1/‖g‖ as a tensor: no host sync on accelerators; gradients are discarded below, so scale in place
                    torch._foreach_mul_(step, 1.0 / norm.clamp_min(self.eps).to(step[0].dtype))
                torch._foreach_add_([d for d, _ in pairs], step)
            if start is not None:  # exact loop: θ_k = θ0 − γ·u_k from θ0, one rounding, none that accumulates
                local = [_local(p) for p in params]
                torch._foreach_copy_(local, start)
                torch._foreach_add_(
                    local, [d.to(t.dtype) for d, t in zip(direction, local, strict=True)], alpha=-self.inner_lr(group)
                )
        for params in groups:
            for p in params:
                p.grad = None
        self.inner_steps += 1

    def _start(self, groups: list[list[torch.Tensor]]) -> None:
        """First inner step of an outer step: θ is still θ0 (backward does not move parameters); u ← 0."""
        if self._direction is None:  # (under FSDP: this rank's shards; foreach ops have no DTensor rules)
            self._direction = [[torch.zeros_like(_local(p), dtype=accumulator_dtype(p)) for p in ps] for ps in groups]
        else:
            for direction in self._direction:
                torch._foreach_zero_(direction)
        if self.inner_loop != "exact":
            return
        if self._theta0 is None:
            self._theta0 = [[_local(p).detach().clone() for p in params] for params in groups]
        else:
            for start, params in zip(self._theta0, groups, strict=True):
                torch._foreach_copy_(start, [_local(p) for p in params])

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        """Outer step: θ back at θ0, hand P = u_K = Σ_k g_k/‖g_k‖ (= Δ/γ) to the outer optimizer as the gradient."""
        if closure is not None:
            raise ValueError("Nexus.step() takes no closure: run the inner steps in the training loop")
        if self.inner_steps == 0 or self._direction is None:
            raise RuntimeError("Nexus.step() before any inner_step(): there is no displacement to apply")
        theta0 = self._theta0 if self.inner_loop == "exact" else [None] * len(self._direction)
        assert theta0 is not None
        for group, params, direction, start in zip(
            self.param_groups, self._group_params(), self._direction, theta0, strict=True
        ):
            self._pseudo_gradient_(direction, group)
            for p, d in zip(params, direction, strict=True):
                p.grad = _like(p, d if d.dtype == p.dtype else d.to(p.dtype))
            if start is not None:
                torch._foreach_copy_([_local(p) for p in params], start)
        self.outer.step()
        # The pseudo-gradient must not leak into the next outer step's first backward (which accumulates).
        self.outer.zero_grad(set_to_none=True)
        self.inner_steps = 0

    def _pseudo_gradient_(self, direction: list[torch.Tensor], group: dict[str, Any]) -> None:
        """u = Δ/γ → what the outer optimizer gets as the gradient, in place: u itself, the size of a gradient."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.outer.zero_grad(set_to_none=set_to_none)

    def train(self) -> None:
        """The outer optimizer's train mode, where it has one (Schedule-Free: its weights are the ones it steps)."""
        if callable(getattr(self.outer, "train", None)):
            self.outer.train()

    def eval(self) -> None:
        """The outer optimizer's eval mode, where it has one (Schedule-Free: the weights to evaluate). Between outer
        steps only: inside one the weights are an inner point."""
        if self.inner_steps:
            raise RuntimeError("Nexus.eval() inside an outer step")
        if callable(getattr(self.outer, "eval", None)):
            self.outer.eval()

    def state_dict(self) -> dict[str, Any]:
        mid_step = self.inner_steps > 0
        return {
            "outer": self.outer.state_dict(),
            "inner_lr_ratio": self.inner_lr_ratio,
            "normalize": self.normalize,
            "inner_loop": self.inner_loop,
            "inner_steps": self.inner_steps,
            # θ0 and u matter only inside an outer step (a save between inner steps); between steps they are stale.
            "theta0": _copy(self._theta0) if mid_step and self._theta0 else None,
            "direction": _copy(self._direction) if mid_step and self._direction else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.outer.load_state_dict(state["outer"])
        self.inner_lr_ratio = state["inner_lr_ratio"]
        self.normalize = state["normalize"]
        # inner_loop stays this object's: how the loop is computed belongs to the execution resuming the run (linear
        # under bf16, exact in fp32), and a state saved between outer steps holds nothing that depends on it
        self.inner_steps = state["inner_steps"]
        groups = self._group_params()
        if state["theta0"] is not None:
            self._theta0 = _placed(state["theta0"], groups, lambda p: p.dtype)
        if state.get("direction") is not None:
            self._direction = _placed(state["direction"], groups, accumulator_dtype)
        elif self.inner_steps:  # a state from before u was kept: u = (θ0 − θ)/γ, as the weights say
            assert self._theta0 is not None
            self._direction = [
                [((t - _local(p)) / self.inner_lr(g)).to(accumulator_dtype(p)) for t, p in zip(ts, ps, strict=True)]
                for ts, ps, g in zip(self._theta0, groups, self.param_groups, strict=True)
            ]

    def __repr__(self) -> str:
        return (
            f"Nexus(inner_lr_ratio={self.inner_lr_ratio}, normalize={self.normalize}, inner_loop={self.inner_loop!r}, "
            f"outer={self.outer!r})"
        )


def accumulator_dtype(p: torch.Tensor) -> torch.dtype:
    """u's dtype: float32 at least (bf16/fp16 weights would lose the small steps it sums), wider if the weights are."""
    return torch.promote_types(p.dtype, torch.float32)


def _copy(tensors: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
    return [[t.clone() for t in ts] for ts in tensors]


def _placed(saved: list[list[torch.Tensor]], groups: list[list[torch.Tensor]], dtype: Any) -> list[list[torch.Tensor]]:
    return [
        [t.to(device=p.device, dtype=dtype(p)).clone() for t, p in zip(ts, params, strict=True)]
        for ts, params in zip(saved, groups, strict=True)
    ]


def _is_sharded(t: torch.Tensor) -> bool:
    """A DTensor sharded over its (1-D, FSDP2) mesh: each rank holds a slice, not the whole."""
    return isinstance(t, DTensor) and any(isinstance(p, Shard) for p in t.placements)


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a DTensor (it shares storage: in-place ops on it update the DTensor); `t` otherwise."""
    return t.to_local() if isinstance(t, DTensor) else t


def _like(param: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    """`local` as a gradient of `param`: the DTensor with this rank's shard `local` when `param` is one."""
    if not isinstance(param, DTensor):
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
