"""Fish (Shi et al. 2021, "Gradient Matching for Domain Generalization", arXiv 2104.09937, Algorithm 2): the older
baseline Nexus builds on. Inner plain SGD over the domains' (here: the sources') micro-batches, then a meta step of
plain SGD along the displacement::

    each outer step:  θ0 ← θ
        for each of K micro-batches (one source each):   θ ← θ − γ · g          (plain SGD, no normalization)
        θ ← θ0 + ε (θK − θ0)  =  θ0 − ε Δ,   Δ = θ0 − θK

The inner lr γ_t = inner_lr_ratio × the scheduled lr at step t, exactly as Nexus' (so Fish, Reptile and Nexus walk
the same inner loop; Fish differs from Reptile only in its outer step). The meta step size ε (`meta_lr`) is constant,
as in the paper; default 0.5, DomainBed's default for Fish (its sweep: 0.05, 0.1, 0.5). ε = 1 is sequential SGD over
the micro-batches; smaller ε keeps only part of the inner walk, whose second-order term (as Reptile's) is
−(γ²/2)∇(∇L1·∇L2) averaged over orders: the gradient-inner-product that Fish is named for matching.

The outer step is a torch.optim.SGD (no momentum, no weight decay) whose lr is ε and whose gradient is Δ itself, so
the update is θ0 − ε Δ to rounding. The scheduled lr lives in this object's own param_groups (what lr schedulers and
the trainer's set_lr write), not in the SGD's: the inner steps read it, the meta step does not.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from nexus_eval.optim.nexus import Nexus

DEFAULT_META_LR = 0.5  # DomainBed's default ε for Fish


class Fish(Nexus):
    """Nexus' machinery (θ0, inner steps, displacement) with un-normalized inner steps and a plain-SGD meta step."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        meta_lr: float = DEFAULT_META_LR,
        inner_lr_ratio: float = 1.0,
        inner_loop: str = "exact",
    ):
        if not 0 < meta_lr:
            raise ValueError(f"meta_lr must be positive, got {meta_lr}")
        groups = _groups(params)
        # The meta step: θ ← θ − ε · grad with grad = Δ; momentum and weight decay off (the paper's plain SGD).
        outer = torch.optim.SGD([{"params": g["params"]} for g in groups], lr=meta_lr, momentum=0.0, weight_decay=0.0)
        super().__init__(outer, inner_lr_ratio=inner_lr_ratio, normalize=False, inner_loop=inner_loop)
        # One scheduled-lr group per SGD group, over the same parameters (Nexus zips the two group lists).
        self._inner_groups = [{"params": g["params"], "lr": float(g.get("lr", lr))} for g in groups]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The groups whose "lr" the schedule sets: γ = inner_lr_ratio × lr; the meta step's ε is the SGD's."""
        return self._inner_groups

    @property
    def meta_lr(self) -> float:
        return float(self.outer.param_groups[0]["lr"])

    def _pseudo_gradient_(self, direction: list[torch.Tensor], group: dict[str, Any]) -> None:
        """Δ = γ·u itself: SGD with lr ε then steps θ0 − ε Δ."""
        torch._foreach_mul_(direction, self.inner_lr(group))

    def __repr__(self) -> str:
        return f"Fish(meta_lr={self.meta_lr}, inner_lr_ratio={self.inner_lr_ratio})"


def _groups(params: Iterable[torch.Tensor] | Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Parameter groups as torch optimizers take them: a list of tensors is one group."""
    items = list(params)
    if not items:
        raise ValueError("Fish got an empty parameter list")
    if isinstance(items[0], dict):
        return [{**g, "params": list(g["params"])} for g in items]  # type: ignore[dict-item]
    return [{"params": items}]
