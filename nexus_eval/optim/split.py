"""Several torch optimizers over a split of the parameters, stepped as one optimizer.

Muon orthogonalizes whole 2-D updates, so it steps the hidden weight matrices only and AdamW the rest (embeddings,
head, norms, biases): the split of modded-nanogpt and OLMo-core. A training loop, an lr schedule and Nexus (which
takes any outer optimizer) see one object: its param_groups are the parts' groups (the same dicts: setting a group's
lr sets the part's), step() and zero_grad() go to every part.

    split = OptimizerSplit([torch.optim.Muon(matrices, lr=...), torch.optim.AdamW(rest, lr=...)])
    opt = Nexus(split)   # Nexus∘Muon

Its state_dict holds each part's, in order; torch.distributed.checkpoint takes the parts as a list (`parts`).
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Sequence
from typing import Any

import torch


class OptimizerSplit:
    """torch optimizers over disjoint parameters, stepped as one."""

    def __init__(self, parts: Sequence[torch.optim.Optimizer]):
        if not parts:
            raise ValueError("OptimizerSplit needs at least one optimizer")
        seen: set[int] = set()
        for part in parts:
            for group in part.param_groups:
                for p in group["params"]:
                    if id(p) in seen:
                        raise ValueError("OptimizerSplit: a parameter is in two of its optimizers")
                    seen.add(id(p))
        self.parts = list(parts)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [group for part in self.parts for group in part.param_groups]

    @property
    def state(self) -> ChainMap[Any, Any]:
        """Every part's per-parameter state, read as one mapping."""
        return ChainMap(*(part.state for part in self.parts))

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        if closure is not None:
            raise ValueError("OptimizerSplit.step() takes no closure")
        for part in self.parts:
            part.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def train(self) -> None:
        """Train mode of the parts that have one (Schedule-Free optimizers)."""
        for part in self.parts:
            if callable(getattr(part, "train", None)):
                part.train()

    def eval(self) -> None:
        """Eval mode of the parts that have one: their weights become the ones to evaluate."""
        for part in self.parts:
            if callable(getattr(part, "eval", None)):
                part.eval()

    def state_dict(self) -> dict[str, Any]:
        return {"parts": [part.state_dict() for part in self.parts]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("parts")
        if not isinstance(saved, list) or len(saved) != len(self.parts):
            raise ValueError(f"OptimizerSplit: a state of {len(self.parts)} optimizers expected")
        for part, part_state in zip(self.parts, saved, strict=True):
            part.load_state_dict(part_state)

    def __repr__(self) -> str:
        return f"OptimizerSplit({', '.join(type(part).__name__ for part in self.parts)})"
