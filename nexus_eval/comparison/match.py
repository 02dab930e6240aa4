"""Loss matching: which checkpoints of two series stand at the same held-out pretraining loss.

A comparison has two or more series (labels), one of them the reference; each other series is matched against the
reference. A series holds one run per training seed: the harness's runs are labelled by their optimizer unless a
label is given (so AdamW vs Nexus is the reference "adamw" against the series "nexus"), runs of other origins by
their label (external.py). Seeds pair reference seed s with seed s of the other series, never two different seeds
(the seed fixes the initial weights and the batch order: a pair across seeds would compare those too); a series of
one run with no recorded seed (an external one) pairs with a reference of one run. What else the harness's runs must
share is checked by guards.py.

Losses are in the comparison's unit (nats/token or bits per byte, external.py), measured by the harness on the same
held-out data for every series.

Exact matching (default): a pair sits at its target. For each target loss T and seed, each run offers the
checkpoints that stand for T: those whose loss lies within the tolerance of T and whose nearest target is T (a
checkpoint between two targets stands for the nearer, ties for the higher one). The checkpoint written for crossing T
(nexus.json "target_loss" == T) is one of them only by that same rule: its measured loss may lie far from T. Of the
reference × candidate checkpoints standing for T, the pair with the smallest |Δloss| is kept (ties: the pair whose mean
loss is nearest T), and only when |Δloss| ≤ tolerance; otherwise T is unmatched for that seed and series. So both
sides of a pair lie within the tolerance of the target it is reported under, and no checkpoint stands in pairs under
two targets (which would count one comparison twice, under a loss at least one side is not at). Targets default to
the recipe's `train.target_losses`, else a grid over the loss range both optimizers cover.

Interpolation (`interpolate=True`): each run's downstream metrics at T are read off the straight line between the two
checkpoints that bracket T at its first crossing (the last with loss > T and the next with loss ≤ T), weight
w = (loss_above − T) / (loss_above − loss_below) on the lower one. Both sides then sit exactly at T (Δloss = 0).
Per-item scores are interpolated with the same weight, so paired item statistics still work (a 0/1 item score becomes
a fraction between the two checkpoints' scores).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any, cast

import numpy as np

from nexus_eval.checkpoints import list_checkpoints, read_meta
from nexus_eval.errors import ComparisonError
from nexus_eval.io import read_json_object
from nexus_eval.optimizer_registry import BASELINE, CANDIDATE, REGISTRY
from nexus_eval.schema import CheckpointMeta, SideSummary

GRID_POINTS = 5
LOSS_EPSILON = 1e-12  # float slack in "within the tolerance"


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    run_id: str
    series: str  # the label of its series
    seed: int | None
    step: int
    tokens: int
    loss: float  # harness-measured held-out mixture loss, in the comparison's unit
    target_loss: float | None
    ood_loss: dict[str, float] = field(hash=False, compare=False)  # per held-out domain, in the comparison's unit

    @property
    def label(self) -> str:
        return f"{self.run_id}/{self.path.name}"

    def summary(self) -> SideSummary:
        return {"checkpoint": self.label, "step": self.step, "tokens": self.tokens, "loss": self.loss}


@dataclass(frozen=True)
class Run:
    path: Path
    run_id: str
    label: str  # its series
    optimizer: str | None  # a harness run's; None for an external one
    seed: int | None
    data_hash: str | None
    targets: tuple[float, ...]
    checkpoints: tuple[Checkpoint, ...]  # oldest first
    # run.json (RunInfo) as read, else the newest nexus.json: what guards.py compares between runs
    info: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    external: bool = False  # not a run of this harness: no recorded recipe or data to check (external.py)


@dataclass(frozen=True)
class Side:
    """One series' side of a pair: a checkpoint, or (interpolating) two with weight on the second."""

    checkpoints: tuple[Checkpoint, ...]
    weights: tuple[float, ...]
    loss: float

    def summary(self) -> SideSummary:
        if len(self.checkpoints) == 1:
            return self.checkpoints[0].summary()
        return {
            "checkpoint": " ↔ ".join(c.label for c in self.checkpoints),
            "loss": self.loss,
            "bracket_losses": [c.loss for c in self.checkpoints],
            "weights": list(self.weights),
        }


@dataclass(frozen=True)
class Pair:
    target: float
    seed: str  # the seed both runs were trained with, e.g. "0" ("-": not recorded)
    series: str  # the label of the candidate side's series
    reference: Side
    candidate: Side

    @property
    def delta_loss(self) -> float:
        return self.candidate.loss - self.reference.loss

    def sides(self) -> tuple[tuple[str, Side], tuple[str, Side]]:
        """("reference", side), ("candidate", side): the record keys of the two sides."""
        return ("reference", self.reference), ("candidate", self.candidate)


@dataclass(frozen=True)
class Unmatched:
    target: float
    seed: str
    series: str
    reason: str


@dataclass(frozen=True)
class SeedGroup:
    """The reference run and a candidate run trained with the same seed: pairs are drawn within a group only."""

    seed: str
    reference: Run
    candidate: Run

    @property
    def runs(self) -> tuple[Run, Run]:
        return self.reference, self.candidate


def _checkpoint(path: Path, run_id: str, label: str, seed: int | None) -> Checkpoint:
    meta = cast(CheckpointMeta, read_meta(path))
    loss = meta.get("heldout_loss")
    if not isinstance(loss, int | float) or not np.isfinite(loss):
        raise ComparisonError(f"{path / 'nexus.json'}: no finite heldout_loss (measure it with `nexus-eval loss`)")
    target = meta.get("target_loss")
    return Checkpoint(
        path=path,
        run_id=run_id,
        series=label,
        seed=seed,
        step=int(meta.get("step", 0)),
        tokens=int(meta.get("tokens_seen", 0)),
        loss=float(loss),
        target_loss=float(target) if isinstance(target, int | float) else None,
        ood_loss={k: float(v) for k, v in (meta.get("ood_loss") or {}).items()},
    )


def load_run(run_dir: Path, label: str | None = None) -> Run:
    """A run directory of this harness, in nats/token from its nexus.json files; labelled by its optimizer unless
    `label` is given."""
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise ComparisonError(f"{run_dir}: not a run directory (no ckpt-*/nexus.json)")
    info = (
        read_json_object(run_dir / "run.json", ComparisonError)
        if (run_dir / "run.json").exists()
        else read_meta(ckpts[-1])
    )
    optimizer = info.get("optimizer")
    if optimizer not in REGISTRY:
        raise ComparisonError(
            f"{run_dir}: optimizer {optimizer!r} in run.json/nexus.json is not one of {', '.join(REGISTRY.names())}, "
            "nexus:OUTER or package.module:factory"
        )
    seed = info.get("seed")
    seed = int(seed) if isinstance(seed, int) else None
    run_id = str(info.get("run_id") or run_dir.name)
    label = label or optimizer
    recipe_targets = ((info.get("recipe") or {}).get("train") or {}).get("target_losses") or []
    checkpoints = tuple(_checkpoint(c, run_id, label, seed) for c in ckpts)
    targets = {float(t) for t in recipe_targets} | {c.target_loss for c in checkpoints if c.target_loss is not None}
    return Run(
        run_dir,
        run_id,
        label,
        optimizer,
        seed,
        info.get("data_hash"),
        tuple(sorted(targets, reverse=True)),
        checkpoints,
        dict(info),
    )


def load_runs(paths: list[Path]) -> list[Run]:
    """Run directories; a directory holding run directories (e.g. runs/) stands for all of them."""
    if not paths:
        raise ComparisonError("compare: no run directories given (RUN_DIR...)")
    runs: list[Run] = []
    for path in paths:
        if not path.is_dir():
            raise ComparisonError(f"{path}: no such run directory")
        if list_checkpoints(path):
            runs.append(load_run(path))
            continue
        children = sorted(p for p in path.iterdir() if p.is_dir() and list_checkpoints(p))
        if not children:
            raise ComparisonError(f"{path}: not a run directory (no ckpt-*) and holds no run directories")
        runs.extend(load_run(p) for p in children)
    return runs


def series_labels(runs: list[Run]) -> list[str]:
    """The labels of the runs' series, in the order their first run appears."""
    return list(dict.fromkeys(r.label for r in runs))


def choose_reference(labels: list[str], harness_only: bool, reference: str | None = None) -> str:
    """--reference LABEL (a ComparisonError naming the labels when it is none of them), else the first series; runs
    of this harness only, as before series: "adamw" when there is one."""
    if reference is not None:
        if reference not in labels:
            raise ComparisonError(f"--reference {reference}: no such series (have: {', '.join(labels)})")
        return reference
    if BASELINE in labels and harness_only:
        return BASELINE
    return labels[0]


def _by_seed(runs: list[Run], label: str) -> dict[int | None, Run]:
    found: dict[int | None, Run] = {}
    for run in runs:
        if run.label != label:
            continue
        if run.seed in found:
            raise ComparisonError(
                f"series {label}: {run.path}: a second run with seed {run.seed} (first: {found[run.seed].path})"
            )
        found[run.seed] = run
    return found


def check_two_series(labels: list[str], paths: list[Path]) -> None:
    """A comparison needs two series or more: a ComparisonError naming what was given otherwise."""
    if len(labels) >= 2:
        return
    found = ", ".join(sorted(map(str, paths)))
    if labels and labels[0] in (BASELINE, CANDIDATE):
        missing = CANDIDATE if labels[0] == BASELINE else BASELINE
        raise ComparisonError(
            f"compare: no {missing} run among the series ({found}); need both adamw and nexus, or two or more "
            "labelled series"
        )
    raise ComparisonError(f"compare: one series only ({found}); need two or more series (LABEL=PATH)")


def seed_groups(runs: list[Run], reference: str | None = None) -> list[SeedGroup]:
    """For every series but the reference, (seed, reference run, its run) for every seed both have; a series of
    one run with no recorded seed against a reference of one run is one group (seed "-")."""
    labels = series_labels(runs)
    check_two_series(labels, [r.path for r in runs])
    ref = choose_reference(labels, all(not r.external for r in runs), reference)
    baseline = _by_seed(runs, ref)
    groups: list[SeedGroup] = []
    for label in labels:
        if label == ref:
            continue
        other = _by_seed(runs, label)
        common = sorted((s for s in baseline if s in other), key=lambda s: (s is None, s))
        if common:
            groups += [SeedGroup("-" if s is None else str(s), baseline[s], other[s]) for s in common]
        elif len(baseline) == 1 and len(other) == 1 and None in (*baseline, *other):
            # An external series records no seed: its one run stands against the reference's one run.
            groups.append(SeedGroup("-", next(iter(baseline.values())), next(iter(other.values()))))
        else:
            raise ComparisonError(
                f"compare: {ref} seeds {sorted(map(str, baseline))} and {label} seeds {sorted(map(str, other))} share "
                "none; runs of different seeds are never paired (train the missing seed)"
            )
    return groups


def default_targets(groups: list[SeedGroup]) -> list[float]:
    """The recipes' target losses; without any, a grid over the loss range every run covers."""
    runs = list({id(r): r for g in groups for r in g.runs}.values())
    targets = sorted({t for r in runs for t in r.targets}, reverse=True)
    if targets:
        return targets
    high = min(max(c.loss for c in r.checkpoints) for r in runs)
    low = max(min(c.loss for c in r.checkpoints) for r in runs)
    if low > high:
        return []
    return [round(float(x), 4) for x in np.linspace(high, low, GRID_POINTS)]


def chosen_targets(groups: list[SeedGroup], targets: list[float] | tuple[float, ...] | None) -> list[float]:
    """The targets a comparison pairs at, highest first: those given, else default_targets."""
    return sorted(set(targets), reverse=True) if targets else default_targets(groups)


def standing_target(loss: float, targets: list[float]) -> float:
    """The target a checkpoint at `loss` stands for: the nearest one (equally near two: the higher, reached first in
    training). One target per checkpoint, so no checkpoint is paired twice; and the nearest one because it depends on
    the checkpoint's own loss and the targets only, never on the other series, so a reference checkpoint stands for
    the same target against every series, and for the target its loss is the best evidence about."""
    # Distances rounded so that a loss halfway between two decimal targets counts as a tie, not as float noise.
    return min(targets, key=lambda t: (round(abs(loss - t), 9), -t))


def _candidates(run: Run, target: float, targets: list[float], tolerance: float) -> list[Checkpoint]:
    """The run's checkpoints that stand for `target`: within the tolerance of it, and nearer to it than to any other
    target. The one written for crossing it is no exception: its measured loss may lie far from it."""
    return [
        c
        for c in run.checkpoints
        if abs(c.loss - target) <= tolerance + LOSS_EPSILON and standing_target(c.loss, targets) == target
    ]


def _no_candidate(run: Run, target: float, targets: list[float], tolerance: float) -> str:
    """Why `run` has no checkpoint standing for `target`: none within the tolerance, or those within it stand for a
    nearer target."""
    nearest = min(run.checkpoints, key=lambda c: (abs(c.loss - target), c.step))
    reason = f"{run.run_id} has no checkpoint within {tolerance:g} of it (nearest {nearest.loss:.4f}"
    if abs(nearest.loss - target) <= tolerance + LOSS_EPSILON:
        reason += f", which stands for the nearer target {standing_target(nearest.loss, targets):g}"
    return reason + ")"


def _best(pairs: list[tuple[Checkpoint, Checkpoint]], target: float) -> tuple[Checkpoint, Checkpoint]:
    return min(pairs, key=lambda p: (abs(p[1].loss - p[0].loss), abs((p[0].loss + p[1].loss) / 2 - target), p[0].step))


def closest_pair(groups: list[SeedGroup]) -> tuple[Checkpoint, Checkpoint]:
    """The reference/candidate checkpoint pair (same seed group) with the smallest loss difference over all."""
    pairs = [p for g in groups for p in product(g.reference.checkpoints, g.candidate.checkpoints)]
    return _best(pairs, 0.0)


def no_pair_error(groups: list[SeedGroup], tolerance: float, unit: str = "nats") -> ComparisonError:
    a, n = closest_pair(groups)
    mid = (a.loss + n.loss) / 2
    harness = not any(r.external for g in groups for r in g.runs) and unit == "nats"
    closer = (
        f"add {mid:.2f} to [train] target_losses in the recipe and retrain (the trainer checkpoints at the crossing), "
        "or use --interpolate"
        if harness
        else "save checkpoints more often around that loss, or use --interpolate"
    )
    return ComparisonError(
        f"compare --match-loss: no {a.series}/{n.series} checkpoint pair within --tolerance {tolerance:g} of each "
        f"other and of a target; closest: "
        f"{a.path} (loss {a.loss:.4f}) vs {n.path} (loss {n.loss:.4f}), Δloss {n.loss - a.loss:+.5f}. To get closer, "
        f"{closer}"
    )


def match_exact(groups: list[SeedGroup], targets: list[float], tolerance: float) -> tuple[list[Pair], list[Unmatched]]:
    """Per target and seed group the closest pair of checkpoints standing for the target (module docstring)."""
    pairs: list[Pair] = []
    unmatched: list[Unmatched] = []
    for target in targets:
        for g in groups:
            label = g.candidate.label
            sides = tuple(_candidates(r, target, targets, tolerance) for r in g.runs)
            if far := [r for r, side in zip(g.runs, sides, strict=True) if not side]:
                unmatched.append(Unmatched(target, g.seed, label, _no_candidate(far[0], target, targets, tolerance)))
                continue
            a, n = _best(list(product(*sides)), target)
            if abs(n.loss - a.loss) <= tolerance + LOSS_EPSILON:
                pairs.append(Pair(target, g.seed, label, Side((a,), (1.0,), a.loss), Side((n,), (1.0,), n.loss)))
            else:
                reason = f"closest {a.label} {a.loss:.4f} vs {n.label} {n.loss:.4f} (Δloss {n.loss - a.loss:+.5f})"
                unmatched.append(Unmatched(target, g.seed, label, reason))
    return pairs, unmatched


def bracket(run: Run, target: float) -> Side | None:
    """The two checkpoints around the run's first crossing of `target`, with linear weights; None if it never does."""
    ckpts = sorted(run.checkpoints, key=lambda c: c.step)
    for i, ckpt in enumerate(ckpts):
        if ckpt.loss <= target:
            if abs(ckpt.loss - target) < 1e-12 or i == 0:
                return Side((ckpt,), (1.0,), target) if abs(ckpt.loss - target) < 1e-12 else None
            above = ckpts[i - 1]
            w = (above.loss - target) / (above.loss - ckpt.loss)
            return Side((above, ckpt), (1.0 - w, w), target)
    return None


def match_interpolated(groups: list[SeedGroup], targets: list[float]) -> tuple[list[Pair], list[Unmatched]]:
    pairs: list[Pair] = []
    unmatched: list[Unmatched] = []
    for target in targets:
        for g in groups:
            label = g.candidate.label
            sides = bracket(g.reference, target), bracket(g.candidate, target)
            if sides[0] is not None and sides[1] is not None:
                pairs.append(Pair(target, g.seed, label, sides[0], sides[1]))
            else:
                missing = [r.run_id for r, s in zip(g.runs, sides, strict=True) if s is None]
                reason = f"{', '.join(missing)} never crosses it between checkpoints"
                unmatched.append(Unmatched(target, g.seed, label, reason))
    return pairs, unmatched


def match(
    runs: list[Run],
    tolerance: float = 0.01,
    targets: list[float] | None = None,
    interpolate: bool = False,
    reference: str | None = None,
    unit: str = "nats",
) -> tuple[list[Pair], list[Unmatched]]:
    """Loss-matched pairs, one per (target, seed, candidate series); raises ComparisonError naming the closest pair
    when there is none. A target that some series never reaches is reported as unmatched for that series."""
    if tolerance < 0:
        raise ComparisonError(f"--tolerance must be ≥ 0 (got {tolerance})")
    groups = seed_groups(runs, reference)
    chosen = chosen_targets(groups, targets)
    if interpolate:
        pairs, unmatched = match_interpolated(groups, chosen)
    else:
        pairs, unmatched = match_exact(groups, chosen, tolerance) if chosen else ([], [])
    paired = {p.series for p in pairs}
    for label in dict.fromkeys(g.candidate.label for g in groups):  # every series needs a pair somewhere
        if label in paired:
            continue
        own = [g for g in groups if g.candidate.label == label]
        if interpolate:
            runs_shown = list({id(r): r for g in own for r in g.runs}.values())
            lows = ", ".join(f"{r.run_id} {min(c.loss for c in r.checkpoints):.4f}" for r in runs_shown)
            raise ComparisonError(
                f"compare --interpolate: series {label}: no target in {chosen} is crossed by it and the reference "
                f"(lowest: {lows})"
            )
        raise no_pair_error(own, tolerance, unit)
    return pairs, unmatched
