"""Loss matching: which AdamW and Nexus checkpoints stand at the same held-out pretraining loss.

Runs are grouped by optimizer and seed (run.json, else a checkpoint's nexus.json). Seeds pair AdamW seed s with
Nexus seed s, never two different seeds (the seed fixes the initial weights and the batch order: a pair across seeds
would compare those too). What else the runs must share is checked by guards.py.

Exact matching (default): for each target loss T and seed, each run offers its checkpoints "at T" — the one written
for crossing T (nexus.json "target_loss" == T), and the nearest one at or below T and the nearest one above T when
they lie within max(0.05, 2 × tolerance) nats of T (so a pair far from T never stands for it). Of the
AdamW × Nexus candidates the pair with the smallest |Δloss| is kept (ties: the pair whose mean loss is nearest T), and
only when |Δloss| ≤ tolerance. Targets default to the recipe's `train.target_losses`, else a grid over the loss range
both optimizers cover.

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
from nexus_eval.schema import CheckpointMeta, SideSummary

BASELINE, CANDIDATE = "adamw", "nexus"
GRID_POINTS = 5
# A checkpoint not written for crossing a target stands for it only this close (or 2× the tolerance, if wider).
MIN_REACH = 0.05


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    run_id: str
    optimizer: str
    seed: int | None
    step: int
    tokens: int
    loss: float  # harness-measured held-out mixture loss, nats/token
    target_loss: float | None
    ood_loss: dict[str, float] = field(hash=False, compare=False)  # per held-out domain, nats/token

    @property
    def label(self) -> str:
        return f"{self.run_id}/{self.path.name}"

    def summary(self) -> SideSummary:
        return {"checkpoint": self.label, "step": self.step, "tokens": self.tokens, "loss": self.loss}


@dataclass(frozen=True)
class Run:
    path: Path
    run_id: str
    optimizer: str
    seed: int | None
    data_hash: str | None
    targets: tuple[float, ...]
    checkpoints: tuple[Checkpoint, ...]  # oldest first
    # run.json (RunInfo) as read, else the newest nexus.json: what guards.py compares between runs
    info: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class Side:
    """One optimizer's side of a pair: a checkpoint, or (interpolating) two with weight on the second."""

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
    seed: str  # the seed both runs were trained with, e.g. "0"
    adamw: Side
    nexus: Side

    @property
    def delta_loss(self) -> float:
        return self.nexus.loss - self.adamw.loss


@dataclass(frozen=True)
class Unmatched:
    target: float
    seed: str
    reason: str


def _checkpoint(path: Path, run_id: str, optimizer: str, seed: int | None) -> Checkpoint:
    meta = cast(CheckpointMeta, read_meta(path))
    loss = meta.get("heldout_loss")
    if not isinstance(loss, int | float) or not np.isfinite(loss):
        raise ComparisonError(f"{path / 'nexus.json'}: no finite heldout_loss (measure it with `nexus-eval loss`)")
    target = meta.get("target_loss")
    return Checkpoint(
        path=path,
        run_id=run_id,
        optimizer=optimizer,
        seed=seed,
        step=int(meta.get("step", 0)),
        tokens=int(meta.get("tokens_seen", 0)),
        loss=float(loss),
        target_loss=float(target) if isinstance(target, int | float) else None,
        ood_loss={k: float(v) for k, v in (meta.get("ood_loss") or {}).items()},
    )


def load_run(run_dir: Path) -> Run:
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise ComparisonError(f"{run_dir}: not a run directory (no ckpt-*/nexus.json)")
    info = (
        read_json_object(run_dir / "run.json", ComparisonError)
        if (run_dir / "run.json").exists()
        else read_meta(ckpts[-1])
    )
    optimizer = info.get("optimizer")
    if optimizer not in (BASELINE, CANDIDATE):
        raise ComparisonError(f"{run_dir}: optimizer {optimizer!r} in run.json/nexus.json is not adamw or nexus")
    seed = info.get("seed")
    seed = int(seed) if isinstance(seed, int) else None
    run_id = str(info.get("run_id") or run_dir.name)
    recipe_targets = ((info.get("recipe") or {}).get("train") or {}).get("target_losses") or []
    checkpoints = tuple(_checkpoint(c, run_id, optimizer, seed) for c in ckpts)
    targets = {float(t) for t in recipe_targets} | {c.target_loss for c in checkpoints if c.target_loss is not None}
    return Run(
        run_dir,
        run_id,
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


def seed_groups(runs: list[Run]) -> list[tuple[str, Run, Run]]:
    """(seed label, AdamW run, Nexus run) for every seed both optimizers have."""
    by_key: dict[tuple[str, int | None], Run] = {}
    for run in runs:
        key = (run.optimizer, run.seed)
        if key in by_key:
            raise ComparisonError(
                f"{run.path}: a second {run.optimizer} run with seed {run.seed} (first: {by_key[key].path})"
            )
        by_key[key] = run
    baseline = {s: r for (o, s), r in by_key.items() if o == BASELINE}
    candidate = {s: r for (o, s), r in by_key.items() if o == CANDIDATE}
    for name, group in ((BASELINE, baseline), (CANDIDATE, candidate)):
        if not group:
            found = ", ".join(sorted(str(r.path) for r in runs))
            raise ComparisonError(f"compare: no {name} run among the RUN_DIRs ({found}); need both adamw and nexus")
    common = sorted((s for s in baseline if s in candidate), key=lambda s: (s is None, s))
    if common:
        return [(str(s), baseline[s], candidate[s]) for s in common]
    raise ComparisonError(
        f"compare: adamw seeds {sorted(map(str, baseline))} and nexus seeds {sorted(map(str, candidate))} share none; "
        "runs of different seeds are never paired (train the missing seed)"
    )


def default_targets(groups: list[tuple[str, Run, Run]]) -> list[float]:
    """The recipes' target losses; without any, a grid over the loss range every run covers."""
    runs = [r for _, a, n in groups for r in (a, n)]
    targets = sorted({t for r in runs for t in r.targets}, reverse=True)
    if targets:
        return targets
    high = min(max(c.loss for c in r.checkpoints) for r in runs)
    low = max(min(c.loss for c in r.checkpoints) for r in runs)
    if low > high:
        return []
    return [round(float(x), 4) for x in np.linspace(high, low, GRID_POINTS)]


def reach(tolerance: float) -> float:
    return max(MIN_REACH, 2 * tolerance)


def _candidates(run: Run, target: float, tolerance: float) -> list[Checkpoint]:
    """The run's checkpoints that can stand for `target`: the one written for crossing it, and the nearest at or
    below and above it if they lie within reach(tolerance) of it."""
    at = [c for c in run.checkpoints if c.target_loss is not None and abs(c.target_loss - target) < 1e-9]
    near = [c for c in run.checkpoints if abs(c.loss - target) <= reach(tolerance)]
    below = [c for c in near if c.loss <= target]
    above = [c for c in near if c.loss > target]
    if below:
        at.append(max(below, key=lambda c: (c.loss, -c.step)))
    if above:
        at.append(min(above, key=lambda c: (c.loss, c.step)))
    return list({c.path: c for c in at}.values())


def _best(pairs: list[tuple[Checkpoint, Checkpoint]], target: float) -> tuple[Checkpoint, Checkpoint]:
    return min(pairs, key=lambda p: (abs(p[1].loss - p[0].loss), abs((p[0].loss + p[1].loss) / 2 - target), p[0].step))


def closest_pair(groups: list[tuple[str, Run, Run]]) -> tuple[Checkpoint, Checkpoint]:
    """The AdamW/Nexus checkpoint pair (same seed group) with the smallest loss difference over everything trained."""
    pairs = [p for _, a, n in groups for p in product(a.checkpoints, n.checkpoints)]
    return _best(pairs, 0.0)


def no_pair_error(groups: list[tuple[str, Run, Run]], tolerance: float) -> ComparisonError:
    a, n = closest_pair(groups)
    mid = (a.loss + n.loss) / 2
    return ComparisonError(
        f"compare --match-loss: no adamw/nexus checkpoint pair within --tolerance {tolerance:g}; closest: "
        f"{a.path} (loss {a.loss:.4f}) vs {n.path} (loss {n.loss:.4f}), Δloss {n.loss - a.loss:+.5f}. To get closer, "
        f"add {mid:.2f} to [train] target_losses in the recipe and retrain (the trainer checkpoints at the crossing), "
        f"or use --interpolate"
    )


def match_exact(
    groups: list[tuple[str, Run, Run]], targets: list[float], tolerance: float
) -> tuple[list[Pair], list[Unmatched]]:
    pairs: list[Pair] = []
    unmatched: list[Unmatched] = []
    for target in targets:
        for seed, adamw, nexus in groups:
            sides = _candidates(adamw, target, tolerance), _candidates(nexus, target, tolerance)
            if far := [r for r, side in zip((adamw, nexus), sides, strict=True) if not side]:
                nearest = min(far[0].checkpoints, key=lambda c: abs(c.loss - target))
                reason = (
                    f"{far[0].run_id} has no checkpoint within {reach(tolerance):g} of it (nearest {nearest.loss:.4f})"
                )
                unmatched.append(Unmatched(target, seed, reason))
                continue
            a, n = _best(list(product(*sides)), target)
            if abs(n.loss - a.loss) <= tolerance + 1e-12:
                pairs.append(Pair(target, seed, Side((a,), (1.0,), a.loss), Side((n,), (1.0,), n.loss)))
            else:
                reason = f"closest {a.label} {a.loss:.4f} vs {n.label} {n.loss:.4f} (Δloss {n.loss - a.loss:+.5f})"
                unmatched.append(Unmatched(target, seed, reason))
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


def match_interpolated(groups: list[tuple[str, Run, Run]], targets: list[float]) -> tuple[list[Pair], list[Unmatched]]:
    pairs: list[Pair] = []
    unmatched: list[Unmatched] = []
    for target in targets:
        for seed, adamw, nexus in groups:
            sides = bracket(adamw, target), bracket(nexus, target)
            if sides[0] is not None and sides[1] is not None:
                pairs.append(Pair(target, seed, sides[0], sides[1]))
            else:
                missing = [r.run_id for r, s in zip((adamw, nexus), sides, strict=True) if s is None]
                unmatched.append(Unmatched(target, seed, f"{', '.join(missing)} never crosses it between checkpoints"))
    return pairs, unmatched


def match(
    runs: list[Run], tolerance: float = 0.01, targets: list[float] | None = None, interpolate: bool = False
) -> tuple[list[Pair], list[Unmatched]]:
    """Loss-matched pairs, one per (target, seed); raises ComparisonError naming the closest pair when there is none."""
    if tolerance < 0:
        raise ComparisonError(f"--tolerance must be ≥ 0 (got {tolerance})")
    groups = seed_groups(runs)
    chosen = sorted(set(targets), reverse=True) if targets else default_targets(groups)
    if interpolate:
        pairs, unmatched = match_interpolated(groups, chosen)
        if not pairs:
            lows = ", ".join(
                f"{r.run_id} {min(c.loss for c in r.checkpoints):.4f}" for _, a, n in groups for r in (a, n)
            )
            raise ComparisonError(
                f"compare --interpolate: no target in {chosen} is crossed by every run (lowest: {lows})"
            )
        return pairs, unmatched
    pairs, unmatched = match_exact(groups, chosen, tolerance) if chosen else ([], [])
    if not pairs:
        raise no_pair_error(groups, tolerance)
    return pairs, unmatched
