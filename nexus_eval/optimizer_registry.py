"""The optimizer registry: every optimizer `train --optimizer` trains and `compare` accepts, each said in one entry.

An entry is plain data: its name and display name, the recipe fields it reads as its own, the shape of its update
(inner steps or none, normalized or not, its outer optimizer), what its state costs in memory, and references to the
code that builds it, steps it, records its hyperparameters and implements it. Every stage reads this one table:
training builds and steps what an entry names, the memory estimate counts its state, the guards exempt the fields one
optimizer of a pair does not read, match accepts the recorded names, the report shows the display names.

Torch-free, and importing nothing of the stages: the references are module and attribute names, imported only when a
run is set up, so that comparison, the CLI's help and the memory estimate read the table without loading a runtime.

The built-in optimizers all consume the identical micro-batch tokens for a seed (training/schedule.py): the K
source-pure micro-batches of each outer step, in the same order, except nexus-mixed, which regroups the same rows
(the identical multiset of sequences per outer step). What differs is only the update:

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

import importlib
import importlib.metadata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from nexus_eval.errors import RecipeError
from nexus_eval.schema import OptimizerSource

# The pair the harness was built to compare: the reference series of a comparison of its own runs and the candidate.
# Every other entry is one more series against the reference.
BASELINE, CANDIDATE = "adamw", "nexus"


@dataclass(frozen=True)
class CodeRef:
    """A function or class by module and attribute name, imported only when it is used."""

    module: str
    name: str

    @classmethod
    def of(cls, obj: Any) -> CodeRef:
        """The reference to a module-level function or class."""
        return cls(obj.__module__, obj.__qualname__)

    def load(self) -> Any:
        found: Any = importlib.import_module(self.module)
        for part in self.name.split("."):  # a qualified name: a class's attribute
            found = getattr(found, part)
        return found

    def __str__(self) -> str:
        return f"{self.module}:{self.name}"


@dataclass(frozen=True)
class Update:
    """How an optimizer updates on an outer step's K micro-batches."""

    # "none": the outer optimizer on the accumulated gradient; "each": one inner step per micro-batch; "one": one inner
    # step on the accumulated gradient (K = 1)
    inner: str
    normalize: bool | None  # whether inner steps are normalized; None: the recipe's optim.normalize (as nexus)
    outer: str  # the outer optimizer, as its hyperparameters record it: "AdamW", "SGD"
    mixed_sources: bool = False  # the step's rows regrouped so that each micro-batch holds every source

    @property
    def has_inner_steps(self) -> bool:
        return self.inner != "none"

    def normalized(self, recipe_normalize: bool) -> bool:
        """Whether the inner steps are normalized, given the recipe's optim.normalize."""
        return recipe_normalize if self.normalize is None else self.normalize


@dataclass(frozen=True)
class OptimizerEntry:
    """One named optimizer, as every stage sees it."""

    name: str  # --optimizer NAME, run.json "optimizer", the run directory's <recipe>-NAME-s<seed>, the series label
    display_name: str  # how the report's tables and figures name its series
    update: Update
    # The recipe keys ("optim.grad_clip") this optimizer reads and not every other does: two runs must agree on the
    # ones both read; a key only one of them reads is not compared (comparison/guards.py).
    own_fields: frozenset[str]
    build: CodeRef  # (model, OptimSpec, entry, *, fused, inner_loop) → the torch optimizer
    step: CodeRef  # (training.step.StepInputs) → StepResult: one outer step
    hparams: CodeRef  # (OptimSpec, entry, inner_loop) → the hyperparameters run.json and every nexus.json record
    source: CodeRef  # the class that implements the update: run.json's optimizer_source
    outer_state_copies: int  # parameter-sized tensors the outer optimizer keeps (AdamW: its two moments)
    inner_state_copies: int = 0  # ... and the inner loop keeps (Nexus: θ0 and u, the inner steps' sum)
    color: str | None = None  # its figures' colour; None: the next of comparison/plots.py's cycle

    def source_record(self) -> OptimizerSource:
        """Where the update's code came from: its module, class and the version of the package providing it."""
        return {"module": self.source.module, "name": self.source.name, "version": package_version(self.source.module)}


def package_version(module: str) -> str | None:
    """The version of the top-level package `module` belongs to: its __version__, else its distribution's."""
    top = module.split(".")[0]
    version = getattr(importlib.import_module(top), "__version__", None)
    if version is not None:
        return str(version)
    try:
        return importlib.metadata.version(top)
    except importlib.metadata.PackageNotFoundError:
        return None


class OptimizerRegistry:
    """The named optimizers, in the order they were registered (the order of listings and of the guards' pairs)."""

    def __init__(self, entries: tuple[OptimizerEntry, ...] = ()) -> None:
        self._entries: dict[str, OptimizerEntry] = {}
        for entry in entries:
            self.register(entry)

    def register(self, entry: OptimizerEntry) -> None:
        if entry.name in self._entries:
            raise ValueError(f"optimizer {entry.name!r} is registered already")
        self._entries[entry.name] = entry

    def unregister(self, name: str) -> None:
        del self._entries[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def get(self, name: str) -> OptimizerEntry | None:
        return self._entries.get(name)

    def __getitem__(self, name: str) -> OptimizerEntry:
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[OptimizerEntry]:
        return iter(tuple(self._entries.values()))

    def chosen(self, name: str) -> OptimizerEntry:
        """The entry `--optimizer NAME` chooses; a RecipeError naming the registered ones for any other name."""
        entry = self.get(name)
        if entry is None:
            raise RecipeError(f"--optimizer must be one of {', '.join(self.names())}, got {name!r}")
        return entry

    def owned_fields(self) -> frozenset[str]:
        """Every recipe key some optimizer reads as its own."""
        return frozenset().union(*(entry.own_fields for entry in self))

    def display_name(self, label: str) -> str:
        """A series label as tables name it: a registered optimizer's display name, any other label as it is."""
        entry = self.get(label)
        return entry.display_name if entry is not None else label


# ---- the built-in optimizers -------------------------------------------------------------------------------------

_OPTIMIZER = "nexus_eval.training.optimizer"  # builders and recorded hyperparameters
_STEP = "nexus_eval.training.step"  # the outer steps
# The inner lr γ = ratio × lr and how the inner loop is computed (exact or linear): numerics of every optimizer with
# inner steps, its own. AdamW alone clips its accumulated gradient (the inner steps are normalized already).
INNER = frozenset({"optim.inner_lr_ratio", "optim.inner_loop"})
NEXUS_SOURCE = CodeRef("nexus_eval.optim.nexus", "Nexus")
ADAM_MOMENTS = 2  # exp_avg, exp_avg_sq
THETA0_AND_SUM = 2  # Nexus' θ0 and u (its exact loop keeps both, the linear loop u alone: an upper bound)


def _nexus_like(
    name: str, display_name: str, update: Update, step: str, own: frozenset[str], color: str | None = None
) -> OptimizerEntry:
    """Nexus or one of its AdamW-outer ablations: a Nexus around the run's AdamW."""
    return OptimizerEntry(
        name,
        display_name,
        update,
        own_fields=own,
        build=CodeRef(_OPTIMIZER, "build_nexus"),
        step=CodeRef(_STEP, step),
        hparams=CodeRef(_OPTIMIZER, "inner_loop_hparams"),
        source=NEXUS_SOURCE,
        outer_state_copies=ADAM_MOMENTS,
        inner_state_copies=THETA0_AND_SUM,
        color=color,
    )


NORMALIZED = INNER | {"optim.normalize"}  # reptile and fish force un-normalized inner steps: normalize is not theirs
BUILT_IN: tuple[OptimizerEntry, ...] = (
    OptimizerEntry(
        BASELINE,
        "AdamW",
        Update("none", None, "AdamW"),
        own_fields=frozenset({"optim.grad_clip"}),
        build=CodeRef(_OPTIMIZER, "build_adamw"),
        step=CodeRef(_STEP, "accumulated_step"),
        hparams=CodeRef(_OPTIMIZER, "adamw_hparams"),
        source=CodeRef("torch.optim", "AdamW"),
        outer_state_copies=ADAM_MOMENTS,
        color="tab:blue",
    ),
    _nexus_like(CANDIDATE, "Nexus", Update("each", None, "AdamW"), "inner_loop_step", NORMALIZED, "tab:red"),
    _nexus_like("reptile", "Reptile", Update("each", False, "AdamW"), "inner_loop_step", INNER),
    _nexus_like("nexus-k1", "Nexus K=1", Update("one", None, "AdamW"), "single_inner_step", NORMALIZED),
    _nexus_like(
        "nexus-mixed",
        "Nexus mixed",
        Update("each", None, "AdamW", mixed_sources=True),
        "mixed_inner_loop_step",
        NORMALIZED,
    ),
    OptimizerEntry(
        "fish",
        "Fish",
        Update("each", False, "SGD"),
        own_fields=INNER | {"optim.fish_meta_lr"},  # its outer step: plain SGD with ε = optim.fish_meta_lr
        build=CodeRef(_OPTIMIZER, "build_fish"),
        step=CodeRef(_STEP, "inner_loop_step"),
        hparams=CodeRef(_OPTIMIZER, "inner_loop_hparams"),
        source=CodeRef("nexus_eval.optim.fish", "Fish"),
        outer_state_copies=0,  # plain SGD without momentum
        inner_state_copies=THETA0_AND_SUM,
    ),
)

REGISTRY = OptimizerRegistry(BUILT_IN)
