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
    muon         torch.optim.Muon on the hidden 2-D weight matrices, AdamW on embeddings, norms and biases, on the
                 accumulated gradient as adamw (training/optimizer.py, build_muon)

Two more kinds of name are resolved, not registered (`resolve`), so that a run records and compare reads them like
any other:

    nexus:OUTER         Nexus around the entry OUTER, one without inner steps (nexus:muon; nexus:adamw is nexus)
    package.module:fn   a user's own optimizer: `fn` builds it (training/optimizer.py has the protocol); the module is
                        imported only when a run is set up, never by compare

Every optimizer NAME may have its own settings, the recipe's [optim."NAME"] table (muon: [optim.muon]), part of the
recipe hash and owned by that optimizer alone (the guards compare it between runs of that optimizer only).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nexus_eval.errors import RecipeError
from nexus_eval.io import sha256_file
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
    build: CodeRef  # (model, OptimSpec, entry, *, fused, inner_loop, total_steps) → the torch optimizer
    step: CodeRef  # (training.step.StepInputs) → StepResult: one outer step
    hparams: CodeRef  # (OptimSpec, entry, inner_loop) → the hyperparameters run.json and every nexus.json record
    source: CodeRef  # the class (or a plug-in's factory) that implements the update: run.json's optimizer_source
    outer_state_copies: int  # parameter-sized tensors the outer optimizer keeps (AdamW: its two moments)
    inner_state_copies: int = 0  # ... and the inner loop keeps (Nexus: θ0 and u, the inner steps' sum)
    color: str | None = None  # its figures' colour; None: the next of comparison/plots.py's cycle
    # Steps every weight matrix whole (Muon's Newton–Schulz orthogonalization): cannot work on FSDP2's row shards
    whole_matrices: bool = False
    outer: str | None = None  # nexus:OUTER: the entry Nexus wraps; None for every other
    state_kind: str = "AdamW moments"  # what its outer_state_copies are, as the memory estimate names them
    # (OptimSpec, name) → its settings from the recipe's [optim."NAME"] table, checked (a RecipeError naming a key it
    # does not take); None: it has no table
    settings: CodeRef | None = None

    def __post_init__(self) -> None:
        # Its [optim."NAME"] table is its own like its own [optim] keys: one set for the guards to read
        object.__setattr__(self, "own_fields", self.own_fields | {self.table})

    @property
    def table(self) -> str:
        """The recipe key of this optimizer's own settings, its [optim."NAME"] table (flat_recipe's name for it)."""
        return f"optim.{self.name}"

    def source_record(self) -> OptimizerSource:
        """Where the update's code came from: its module, class and the version of the package providing it; for a
        plug-in (code that can change under the same version) also its file and that file's sha256."""
        record: OptimizerSource = {
            "module": self.source.module,
            "name": self.source.name,
            "version": package_version(self.source.module),
        }
        if is_plugin_name(self.name) or self.outer is not None and is_plugin_name(self.outer):
            module = importlib.import_module(self.source.module if is_plugin_name(self.name) else self.outer_module())
            path = getattr(module, "__file__", None)
            record["file"] = path
            record["sha256"] = sha256_file(Path(path)) if path else None
        return record

    def outer_module(self) -> str:
        """The module of the plug-in a nexus:OUTER entry wraps."""
        assert self.outer is not None
        return self.outer.partition(":")[0]


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
        """Whether `name` names an optimizer: a registered one or one `resolve` makes from its name."""
        return isinstance(name, str) and self.resolve(name) is not None

    def __iter__(self) -> Iterator[OptimizerEntry]:
        return iter(tuple(self._entries.values()))

    def resolve(self, name: str) -> OptimizerEntry | None:
        """The entry of any name an optimizer can have: a registered one, `nexus:OUTER` or `package.module:fn`
        (entries made from the name, importing nothing); None for a name of none of these forms."""
        if (entry := self.get(name)) is not None:
            return entry
        wrapper, sep, inner = name.partition(":")
        if sep and wrapper == CANDIDATE:
            outer = self.resolve(inner)
            if outer is None or outer.update.has_inner_steps:
                return None
            return self[CANDIDATE] if outer.name == BASELINE else nexus_around(outer)
        if is_plugin_name(name):
            return plugin_entry(name)
        return None

    def chosen(self, name: str) -> OptimizerEntry:
        """The entry `--optimizer NAME` chooses; a RecipeError naming the valid forms for any other name."""
        entry = self.resolve(name)
        if entry is not None:
            return entry
        wrapper, sep, inner = name.partition(":")
        if sep and wrapper == CANDIDATE:
            outer = self.resolve(inner)
            why = "it takes inner steps itself" if outer is not None else f"{inner!r} is no optimizer"
            raise RecipeError(
                f"--optimizer {name}: Nexus wraps an optimizer without inner steps ({why}); e.g. nexus:muon"
            )
        raise RecipeError(
            f"--optimizer must be one of {', '.join(self.names())}, nexus:OUTER or package.module:factory, got {name!r}"
        )

    def owned_fields(self) -> frozenset[str]:
        """Every recipe key some optimizer reads as its own."""
        return frozenset().union(*(entry.own_fields for entry in self))

    def display_name(self, label: str) -> str:
        """A series label as tables name it: a registered optimizer's display name, any other label as it is."""
        entry = self.resolve(label)
        return entry.display_name if entry is not None else label


# ---- the built-in optimizers -------------------------------------------------------------------------------------

_OPTIMIZER = "nexus_eval.training.optimizer"  # builders and recorded hyperparameters
_STEP = "nexus_eval.training.step"  # the outer steps
# The inner lr γ = ratio × lr and how the inner loop is computed (exact or linear): numerics of every optimizer with
# inner steps, its own. AdamW alone clips its accumulated gradient (the inner steps are normalized already).
INNER = frozenset({"optim.inner_lr_ratio", "optim.inner_loop"})
CLIP = "optim.grad_clip"
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


def run_label(name: str) -> str:
    """An optimizer's name as a run directory's name holds it: ":" (nexus:muon, package.module:factory) as "+", which
    no name has and no shell, URL or scp path reads as a separator."""
    return name.replace(":", "+")


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def is_plugin_name(name: str) -> bool:
    """`package.module:factory`: dotted identifiers, a colon, an identifier (the form of an entry point's value)."""
    module, sep, factory = name.partition(":")
    if not sep or module == CANDIDATE:
        return False
    return all(_IDENTIFIER.fullmatch(part) for part in module.split(".")) and bool(_IDENTIFIER.fullmatch(factory))


def plugin_entry(name: str) -> OptimizerEntry:
    """A user's optimizer `package.module:factory`, stepped as AdamW is on the accumulated, clipped gradient."""
    module, _, factory = name.partition(":")
    return OptimizerEntry(
        name,
        name,
        Update("none", None, name),
        own_fields=frozenset({CLIP}),
        build=CodeRef(_OPTIMIZER, "build_plugin"),
        step=CodeRef(_STEP, "accumulated_step"),
        hparams=CodeRef(_OPTIMIZER, "plugin_hparams"),
        source=CodeRef(module, factory),
        outer_state_copies=ADAM_MOMENTS,  # unknown until it steps: AdamW's, the common case, in the estimate
        state_kind="unknown: assumed AdamW's",
        settings=CodeRef(_OPTIMIZER, "plugin_settings"),
    )


def nexus_around(outer: OptimizerEntry) -> OptimizerEntry:
    """nexus:OUTER: Nexus' inner loop, its pseudo-gradient stepped by OUTER (an entry without inner steps). It owns
    the inner loop's fields and OUTER's own (its table too), but OUTER's clipping: the inner steps are normalized
    already."""
    return OptimizerEntry(
        f"{CANDIDATE}:{outer.name}",
        f"Nexus∘{outer.display_name}",
        Update("each", None, outer.update.outer),
        own_fields=NORMALIZED | (outer.own_fields - {CLIP}),  # OUTER's table included: nexus:muon reads [optim.muon]
        build=CodeRef(_OPTIMIZER, "build_nexus"),
        step=CodeRef(_STEP, "inner_loop_step"),
        hparams=CodeRef(_OPTIMIZER, "inner_loop_hparams"),
        source=NEXUS_SOURCE,
        outer_state_copies=outer.outer_state_copies,
        inner_state_copies=THETA0_AND_SUM,
        whole_matrices=outer.whole_matrices,
        outer=outer.name,
        state_kind=outer.state_kind,
    )


NORMALIZED = INNER | {"optim.normalize"}  # reptile and fish force un-normalized inner steps: normalize is not theirs
BUILT_IN: tuple[OptimizerEntry, ...] = (
    OptimizerEntry(
        BASELINE,
        "AdamW",
        Update("none", None, "AdamW"),
        own_fields=frozenset({CLIP}),
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
        state_kind="none: SGD without momentum",
    ),
    OptimizerEntry(
        "muon",
        "Muon",
        Update("none", None, "Muon"),
        own_fields=frozenset({CLIP}),  # and its [optim.muon] table: momentum, nesterov, ns_steps, adjust_lr
        build=CodeRef(_OPTIMIZER, "build_muon"),
        step=CodeRef(_STEP, "accumulated_step"),
        hparams=CodeRef(_OPTIMIZER, "muon_hparams"),
        source=CodeRef("torch.optim", "Muon"),
        settings=CodeRef(_OPTIMIZER, "muon_settings"),
        outer_state_copies=ADAM_MOMENTS,  # momentum on the matrices, AdamW's two moments on the rest: at most two
        whole_matrices=True,
        state_kind="Muon momentum, AdamW moments; at most",
        color="tab:green",
    ),
)

REGISTRY = OptimizerRegistry(BUILT_IN)
