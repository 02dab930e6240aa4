"""Fairness guards: the runs of one comparison must have been trained alike, apart from the optimizer itself.

A loss-matched pair says something about the optimizers only if everything else was the same. Before any
evaluation, every run of a comparison (all seeds, both optimizers, paired or not: they all appear in its report) is
compared on:

    data_hash   the data build (manifest hash)
    tokenizer   the build's tokenizer files (run.json tokenizer_hash)
    heldout     what the matched loss is measured on (run.json heldout_hash: val/OOD files, context, windows, mixture)
    model       the recipe's [model] and the parameter count
    <recipe key> every other recipe key, e.g. optim.lr, train.steps (run.json total_steps, for runs trained before
                `--steps` became part of the recorded recipe), data.mixture; lr is never exempt

apart from the seed (matching pairs equal seeds only, match.seed_groups) and the optimizers' own fields (each
registered optimizer's own_fields, nexus_eval/optimizer_registry.py).
A difference is a ComparisonError naming the field, both runs and both values, unless `--allow-mismatch FIELD` lets
it through; the differences let through are returned and kept in results["allowed_mismatches"] and the report.

Runs trained before tokenizer_hash / heldout_hash were recorded are compared on their data_hash in those fields
(the same build has the same tokenizer and held-out files), with the recipe's held-out settings for "heldout".
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from rich.markup import escape

from nexus_eval.comparison.match import Run
from nexus_eval.display import console
from nexus_eval.errors import ComparisonError
from nexus_eval.optimizer_registry import REGISTRY
from nexus_eval.schema import AllowedMismatch
from nexus_eval.training.recipe import flat_recipe, recipe_keys

# The [optim] fields not every optimizer reads are each registered optimizer's own (its entry's own_fields): an AdamW
# run and a Nexus run may differ in them (an AdamW recipe still carries Nexus' defaults, and the other way round). Two
# runs must agree on the fields both read like on any other; a field one of them does not read means nothing to it
# and is not compared. Everything all read (lr, betas, weight decay, micro_batch, accum = Nexus' inner steps, the
# schedule and warmup) is compared.
# Recipe keys that are not settings of the training: the recipe's name labels runs, and data.dir is where the build
# was looked for (the build itself is data_hash; `--data` overrides the dir without changing the recipe).
NOT_SETTINGS = frozenset({"name", "data.dir"})
# Recipe keys another field already compares, so that one difference is reported (and allowed) once.
COVERED = frozenset({"model.preset", "model.context", "train.eval_windows"})
RUN_FIELDS = ("data_hash", "tokenizer", "heldout", "model")
SHOWN = 40  # characters of a value in the one-line message
SHOWN_HASH = 12

Values = Callable[[Run, Run], tuple[Any, Any]]


@dataclass(frozen=True)
class Mismatch:
    field: str
    runs: tuple[Run, Run]
    values: tuple[Any, Any]

    def message(self) -> str:
        a, b = self.runs
        shown_a, shown_b = shown_difference(*self.values)
        return (
            f"compare: runs {a.run_id} and {b.run_id} differ in {self.field} ({shown_a} vs {shown_b}); "
            f"pass --allow-mismatch {self.field} to pair them anyway"
        )

    def record(self) -> AllowedMismatch:
        return {"field": self.field, "runs": [r.run_id for r in self.runs], "values": list(self.values)}


# ---- what each run says about a field ----------------------------------------------------------------------------


def _recipe(run: Run) -> dict[str, Any]:
    recipe = run.info.get("recipe")
    return flat_recipe(recipe) if isinstance(recipe, dict) else {}


def heldout_settings(run: Run) -> dict[str, Any]:
    """A run's held-out set where no heldout_hash is recorded: its data build and the recipe's held-out settings."""
    recipe = _recipe(run)
    return {
        "data_hash": run.data_hash,
        "context": recipe.get("model.context"),
        "eval_windows": recipe.get("train.eval_windows"),
        "mixture": recipe.get("data.mixture"),
    }


def recorded_or(key: str, fallback: Callable[[Run], Any]) -> Values:
    """Both runs' recorded `key`, or, when either lacks it, both runs' fallback (so that an old run and a new one
    are compared on the same thing)."""

    def values(a: Run, b: Run) -> tuple[Any, Any]:
        if a.info.get(key) is not None and b.info.get(key) is not None:
            return a.info[key], b.info[key]
        return fallback(a), fallback(b)

    return values


def model_config(run: Run) -> dict[str, Any]:
    recipe = _recipe(run)
    return {
        "preset": recipe.get("model.preset"),
        "context": recipe.get("model.context"),
        "params": run.info.get("model_params"),
    }


RUN_VALUES: dict[str, Values] = {
    "data_hash": lambda a, b: (a.data_hash, b.data_hash),
    "tokenizer": recorded_or("tokenizer_hash", lambda r: r.data_hash),
    "heldout": recorded_or("heldout_hash", heldout_settings),
    "model": lambda a, b: (model_config(a), model_config(b)),
}


def compared_recipe(run: Run) -> dict[str, Any]:
    """The recipe keys the guard compares: all but labels and what another field covers, train.steps as trained."""
    recipe = {k: v for k, v in _recipe(run).items() if k not in NOT_SETTINGS | COVERED}
    if isinstance(run.info.get("total_steps"), int):
        recipe["train.steps"] = run.info["total_steps"]
    return recipe


def own_fields(optimizer: str | None) -> frozenset[str]:
    """The recipe fields a run's optimizer reads as its own (none for a run of no registered optimizer)."""
    entry = REGISTRY.resolve(optimizer or "")
    return entry.own_fields if entry is not None else frozenset()


def exempt(a: Run, b: Run) -> frozenset[str]:
    """Fields owned by an optimizer (a registered one, or either run's: nexus:OUTER, a plug-in and their tables)
    that not both runs use."""
    mine, theirs = own_fields(a.optimizer), own_fields(b.optimizer)
    return (REGISTRY.owned_fields() | mine | theirs) - (mine & theirs)


# ---- comparing runs ----------------------------------------------------------------------------------------------


def differences(a: Run, b: Run) -> list[Mismatch]:
    found = []
    for name in RUN_FIELDS:
        va, vb = RUN_VALUES[name](a, b)
        if va != vb:
            found.append(Mismatch(name, (a, b), (va, vb)))
    ra, rb = compared_recipe(a), compared_recipe(b)
    skip = exempt(a, b)
    for key in sorted((set(ra) | set(rb)) - skip):
        if ra.get(key) != rb.get(key):
            found.append(Mismatch(key, (a, b), (ra.get(key), rb.get(key))))
    return found


def run_pairs(runs: list[Run]) -> list[tuple[Run, Run]]:
    """The comparisons that make every run agree with every other: the first run (lowest seed) of the first
    optimizer (AdamW when there is one) against the first run of every other optimizer (Nexus first, then the
    ablations, in the registry's order), and each other run against the first of its optimizer."""
    ordered = sorted(runs, key=lambda r: (r.seed is None, r.seed or 0, r.run_id))
    first: dict[str | None, Run] = {}
    for run in ordered:
        first.setdefault(run.optimizer, run)
    registered = REGISTRY.names()
    names = sorted(first, key=lambda name: registered.index(name) if name in registered else len(registered))
    anchor = first[names[0]] if names else None
    pairs = [(anchor, first[name]) for name in names[1:] if anchor is not None]
    return pairs + [(first[r.optimizer], r) for r in ordered if r is not first[r.optimizer]]


def known_fields(runs: list[Run]) -> list[str]:
    keys = set(recipe_keys()) | {k for r in runs for k in compared_recipe(r)}
    return list(RUN_FIELDS) + sorted(keys - NOT_SETTINGS - COVERED)


def check_allowed(allowed: Iterable[str], runs: list[Run]) -> set[str]:
    """The --allow-mismatch names, each a field the guard compares (else a ComparisonError naming the valid ones)."""
    chosen = set(allowed)
    valid = known_fields(runs)
    for name in sorted(chosen):
        if name not in valid:
            raise ComparisonError(f"--allow-mismatch {name!r}: not a compared field (valid: {', '.join(valid)})")
    return chosen


def check_runs(runs: list[Run], allowed: Iterable[str] = ()) -> list[Mismatch]:
    """The differences between the runs that `allowed` lets through (none when all agree); a ComparisonError for the
    first one it does not."""
    chosen = check_allowed(allowed, runs)
    found = [m for a, b in run_pairs(runs) for m in differences(a, b)]
    for mismatch in found:
        if mismatch.field not in chosen:
            raise ComparisonError(mismatch.message())
    return found


def warn_mismatches(mismatches: list[Mismatch]) -> None:
    """One warning line per difference let through, on stderr (report.md keeps them too)."""
    shown_on = console(stderr=True)
    for m in mismatches:
        a, b = shown_difference(*m.values)
        text = f"runs {m.runs[0].run_id} and {m.runs[1].run_id} differ in {m.field} ({a} vs {b}); paired anyway"
        shown_on.print(f"[yellow]warning:[/] {escape(text)} (--allow-mismatch)", highlight=False)


# ---- one-line display ---------------------------------------------------------------------------------------------


def shown(value: Any) -> str:
    """A value for a one-line message: hashes to their first hex digits, long values cut."""
    if value is None:
        return "unrecorded"
    if isinstance(value, str) and len(value) > SHOWN_HASH and all(c in "0123456789abcdef" for c in value):
        return value[:SHOWN_HASH]
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))
    return text if len(text) <= SHOWN else text[: SHOWN - 1] + "…"


def shown_difference(a: Any, b: Any) -> tuple[str, str]:
    """Both values shown; of two dicts only the entries that differ, so that the difference fits the line."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        a, b = {k: a.get(k) for k in keys}, {k: b.get(k) for k in keys}
    return shown(a), shown(b)
