"""The learning-rate sweep behind a comparison of optimizers at their own lr (`compare --lr-sweep FILE`, written by
scripts/lr_sweep.py in `make optimizers`): checked, kept in results.json and the leaderboard, shown as a table.

Comparing optimizers at one lr handicaps all but the one it was tuned for; comparing them at lrs chosen by hand
hides how. The sweep says how each lr was chosen (the held-out loss of every lr tried), and the guard here says that
every run of the comparison trained at its optimizer's chosen lr.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from nexus_eval.comparison.match import Run
from nexus_eval.errors import ComparisonError
from nexus_eval.io import read_json_object
from nexus_eval.optimizer_registry import REGISTRY
from nexus_eval.schema import LrSweep


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def read_lr_sweep(path: Path) -> LrSweep:
    """The sweep file, its shape checked: a ComparisonError naming the file and the first thing wrong."""
    data = read_json_object(path, ComparisonError, "lr sweep")

    def bad(what: str) -> ComparisonError:
        return ComparisonError(f"--lr-sweep {path}: {what}")

    optimizers, lrs, seeds = data.get("optimizers"), data.get("lrs"), data.get("seeds")
    if not isinstance(optimizers, list) or not optimizers or not all(isinstance(o, str) for o in optimizers):
        raise bad("'optimizers' must be a list of optimizer names")
    if not isinstance(lrs, list) or len(lrs) < 2 or not all(_number(lr) and lr > 0 for lr in lrs):
        raise bad("'lrs' must list two or more positive learning rates")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise bad("'seeds' must be a list of seeds")
    if not isinstance(data.get("steps"), int) or data["steps"] <= 0:
        raise bad("'steps' must be a positive number of steps")
    mean, chosen = data.get("mean"), data.get("chosen")
    if not isinstance(mean, dict) or not isinstance(chosen, dict) or set(chosen) != set(optimizers):
        raise bad("'mean' and 'chosen' must hold every optimizer of 'optimizers'")
    for name in optimizers:
        if name not in REGISTRY:
            raise bad(f"{name!r} is no optimizer")
        row = mean.get(name)
        if not isinstance(row, dict) or len(row) != len(lrs):
            raise bad(f"'mean' of {name} must give a loss (or null: diverged) for every lr")
        if not all(v is None or _number(v) for v in row.values()):
            raise bad(f"'mean' of {name}: losses must be numbers or null")
        if not _number(chosen[name]) or not any(math.isclose(chosen[name], lr) for lr in lrs):
            raise bad(f"'chosen' of {name} must be one of 'lrs'")
    return {
        "optimizers": optimizers,
        "lrs": [float(lr) for lr in lrs],
        "seeds": seeds,
        "steps": data["steps"],
        "metric": str(data.get("metric", "held-out loss")),
        "mean": {name: {str(k): v for k, v in mean[name].items()} for name in optimizers},
        "chosen": {name: float(chosen[name]) for name in optimizers},
    }


def check_chosen_lrs(runs: list[Run], sweep: LrSweep) -> None:
    """Every harness run of an optimizer the sweep covers trained at that optimizer's chosen lr: a ComparisonError
    naming the first that did not (a run at another lr is not what the sweep chose)."""
    for run in runs:
        if run.external or run.optimizer not in sweep["chosen"]:
            continue
        recipe = run.info.get("recipe") or {}
        lr = (recipe.get("optim") or {}).get("lr") if isinstance(recipe, dict) else None
        want = sweep["chosen"][run.optimizer]
        if not _number(lr) or not math.isclose(lr, want, rel_tol=1e-9):
            raise ComparisonError(
                f"compare: run {run.run_id} trained at optim.lr {lr}, but the lr sweep chose {want:g} for "
                f"{run.optimizer}"
            )


def lr_sweep_frame(sweep: LrSweep) -> pd.DataFrame:
    """One row per optimizer: its mean held-out loss at every lr tried (the chosen one in bold), and the choice."""
    rows = []
    for name in sweep["optimizers"]:
        row: dict[str, Any] = {"optimizer": REGISTRY.display_name(name)}
        for lr, value in zip(sweep["lrs"], sweep["mean"][name].values(), strict=True):
            shown = "diverged" if value is None else f"{value:.4f}"
            row[f"lr {lr:g}"] = f"**{shown}**" if math.isclose(lr, sweep["chosen"][name]) else shown
        row["chosen lr"] = f"{sweep['chosen'][name]:g}"
        edge = sweep["chosen"][name] in (min(sweep["lrs"]), max(sweep["lrs"]))
        row["note"] = "at the grid's edge: the best lr may lie beyond it" if edge else ""
        rows.append(row)
    return pd.DataFrame(rows)


def lr_sweep_note(sweep: LrSweep) -> str:
    seeds = ", ".join(str(s) for s in sweep["seeds"])
    return (
        f"Each optimizer trained at the lr of its lowest mean {sweep['metric']} in a sweep of {sweep['steps']}-step "
        f"runs (their own schedule), seeds {seeds}. Every run below trained at its optimizer's chosen lr "
        "(checked): where the lrs differ, they differ on purpose."
    )
