"""What a run carries from one step to the next, and what its checkpoints store for an exact resume."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, TypedDict

import torch

from nexus_eval.training.recipe import Recipe


@dataclass
class RunState:
    """The loop's counters: saved in every checkpoint's trainer state, restored on resume."""

    total_steps: int  # the recipe's train.steps (--steps is applied to the recipe); a resumed run keeps its own
    step: int = 0  # outer steps completed
    tokens: int = 0  # training tokens seen
    targets_left: list[float] = field(default_factory=list)  # recipe targets not crossed yet, largest first
    last_val: float = math.inf  # the latest held-out mixture loss measured

    @classmethod
    def start(cls, recipe: Recipe, steps: int | None = None) -> RunState:
        """The state of a fresh run: no step taken, every target still ahead."""
        return cls(total_steps=steps or recipe.train.steps, targets_left=list(recipe.train.target_losses))


class TrainerState(TypedDict):
    """optimizer/state.pt beside a checkpoint (torch.save): everything besides the weights that resuming needs."""

    # the optimizer's state_dict (Nexus: its outer AdamW's, plus θ0 inside a step); under torchrun instead
    # {"sharded": "optimizer/sharded", ["nexus": its settings]}: the state in torch.distributed.checkpoint shards
    optimizer: dict[str, Any]
    step: int
    tokens: int
    targets_left: list[float]
    last_val: float
    recipe_hash: str  # a resume must use the same recipe ...
    optimizer_name: str  # ... and the same optimizer
    total_steps: int
    torch_rng: torch.Tensor
    cosine_grads: dict[str, torch.Tensor]  # per-source gradient sums of the gradient-cosine window so far
