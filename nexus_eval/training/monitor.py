"""The held-out evaluation hook, called after every training step: when to measure, and which targets were crossed.

At eval and checkpoint steps it measures everything (per-source val loss, mixture, OOD). In between it stays silent,
except while the mixture loss is within target_watch of the next target: then it measures the mixture alone every
step, so that the step that crosses a target is caught (and checkpointed) rather than the next eval's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from nexus_eval.schema import HeldOutLoss
from nexus_eval.training.heldout import HeldOut
from nexus_eval.training.state import RunState


@dataclass(frozen=True)
class Measurement:
    losses: HeldOutLoss
    crossed: list[float]  # recipe targets the mixture loss dropped below at this step (checkpoint labels)

    @property
    def finite(self) -> bool:
        """False when the weights have diverged: such a measurement is never logged or checkpointed."""
        losses = self.losses
        values = [losses["val_loss"], *losses["val_loss_per_source"].values(), *losses["ood_loss"].values()]
        return all(math.isfinite(v) for v in values)


class HeldOutMonitor:
    def __init__(self, heldout: HeldOut, target_watch: float):
        self.heldout = heldout
        self.target_watch = target_watch  # train.target_watch: nats above the next target where watching starts

    def watching(self, state: RunState) -> bool:
        return bool(state.targets_left) and state.last_val - state.targets_left[0] < self.target_watch

    def after_step(self, model: Any, state: RunState, full: bool) -> Measurement | None:
        """Measure the model as the step left it: everything when `full`, else the mixture alone while watching a
        target. Updates state.last_val and state.targets_left. None when nothing was measured, or only the mixture
        and no target was crossed; with a crossing, the OOD loss is measured too (the checkpoint records it)."""
        losses: HeldOutLoss | None = None
        if full:
            losses = self.heldout.measure(model)
            state.last_val = losses["val_loss"]
        elif self.watching(state):
            state.last_val, per_source = self.heldout.mixture_loss(model)
        else:
            return None
        crossed = [x for x in state.targets_left if state.last_val <= x]
        state.targets_left = [x for x in state.targets_left if x not in crossed]
        if losses is None:
            if not crossed:
                return None
            losses = {
                "val_loss": state.last_val,
                "val_loss_per_source": per_source,
                "ood_loss": self.heldout.ood_loss(model),
            }
        return Measurement(losses, crossed)
