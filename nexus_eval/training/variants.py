"""The named optimizers `--optimizer` chooses from: AdamW, Nexus and the ablations of Nexus, as data.

Torch-free, so that what only needs the names or their shape (the recipe, the memory estimate, `train --dry-run`,
comparison) imports no runtime. optimizer.py builds each one; step.py runs its update.

Every variant consumes the identical micro-batch tokens for a seed (schedule.py): the K source-pure micro-batches
of each outer step, in the same order, except nexus-mixed, which regroups the same rows (the identical multiset of
sequences per outer step). What differs is only the update:

    adamw        the K micro-batch gradients accumulated (mean), clipped, one AdamW step
    nexus        K normalized inner steps, one per micro-batch, then AdamW on the displacement Δ/γ
    reptile      nexus with un-normalized inner steps (θ ← θ − γ g): isolates the normalization
    nexus-k1     K = 1, no inner loop: one normalized inner step on the accumulated gradient (step.nexus_k1_step)
    nexus-mixed  nexus on the same rows regrouped so that every inner micro-batch holds every source of the step
                 (schedule.mixed_micro_batches): tests whether the different-source structure of the inner steps
                 matters
    fish         Fish (Shi et al. 2021): reptile's un-normalized inner steps, then plain SGD θ0 − ε Δ (optim/fish.py)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    """How one named optimizer updates on an outer step's micro-batches."""

    name: str
    # "none": AdamW on the accumulated gradient; "each": one inner step per micro-batch; "one": one inner step on the
    # accumulated gradient (K = 1)
    inner: str
    normalize: bool | None  # whether inner steps are normalized; None: the recipe's optim.normalize (as nexus)
    outer: str  # the outer optimizer: "AdamW" or "SGD"
    mixed_sources: bool = False  # the step's rows regrouped so that each micro-batch holds every source

    @property
    def has_inner_steps(self) -> bool:
        return self.inner != "none"


VARIANTS: dict[str, Variant] = {
    "adamw": Variant("adamw", "none", None, "AdamW"),
    "nexus": Variant("nexus", "each", None, "AdamW"),
    "reptile": Variant("reptile", "each", False, "AdamW"),
    "nexus-k1": Variant("nexus-k1", "one", None, "AdamW"),
    "nexus-mixed": Variant("nexus-mixed", "each", None, "AdamW", mixed_sources=True),
    "fish": Variant("fish", "each", False, "SGD"),
}
OPTIMIZERS = tuple(VARIANTS)
