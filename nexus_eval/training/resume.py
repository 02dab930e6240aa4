"""What `--resume` must agree with before it continues a run: the run's data build, its recipe and its total steps.

A resumed run continues the recorded one exactly, so everything the recorded run says about how it was trained must
hold for the continuation: its checkpoints would otherwise carry two data builds (or two recipes) under one run.json.
A `--steps` that differs from the run's total is refused too: the lr schedule depends on the total, so training a
60-step run on to 80 steps is not an 80-step run (start a new run for that).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nexus_eval.checkpoints import list_checkpoints, read_meta
from nexus_eval.data import load_manifest
from nexus_eval.errors import CheckpointError, DataError, RecipeError
from nexus_eval.io import read_json_object
from nexus_eval.training.recipe import Recipe, flat_recipe

SHOWN_HASH = 12  # hex digits of a hash in messages


def recorded_identity(run_dir: Path) -> dict[str, Any]:
    """run.json (RunInfo), else the newest checkpoint's nexus.json (a run.json lost by hand)."""
    path = run_dir / "run.json"
    if path.exists():
        return read_json_object(path, CheckpointError, "--resume: ")
    return dict(read_meta(list_checkpoints(run_dir)[-1]))


def recorded_total_steps(info: dict[str, Any]) -> int | None:
    total = info.get("total_steps")
    if isinstance(total, int):
        return total
    steps = ((info.get("recipe") or {}).get("train") or {}).get("steps")
    return steps if isinstance(steps, int) else None


def resumed_recipe(run_dir: Path, recipe: Recipe, steps: int | None, data_dir: Path) -> Recipe:
    """The recipe to continue `run_dir` with: `recipe` at the run's total steps, once the run's data build, recipe
    and total steps are checked against `data_dir`, `recipe` and `steps` (RecipeError/DataError naming both sides)."""
    info = recorded_identity(run_dir)
    total = recorded_total_steps(info)
    if total is not None and steps is not None and steps != total:
        raise RecipeError(
            f"--resume --steps {steps}: {run_dir} was started for {total} steps and its lr schedule depends on the "
            f"total, so continuing it is not training {steps} steps; start a new run (another --out) for that"
        )
    resumed = recipe.with_steps(total) if total is not None else recipe
    check_data(run_dir, info, data_dir)
    check_recipe(run_dir, info, resumed, total)
    return resumed


def check_data(run_dir: Path, info: dict[str, Any], data_dir: Path) -> None:
    recorded = info.get("data_hash")
    current = load_manifest(data_dir)["hash"]
    if isinstance(recorded, str) and recorded != current:
        trained_on = f" (it was trained with --data {info['data_dir']})" if info.get("data_dir") else ""
        raise DataError(
            f"--resume: {run_dir} was trained on data build {recorded[:SHOWN_HASH]} but --data {data_dir} is build "
            f"{current[:SHOWN_HASH]}; resume it on its own data build{trained_on}"
        )


def check_recipe(run_dir: Path, info: dict[str, Any], recipe: Recipe, total: int | None) -> None:
    """The recipe must be the recorded one, key by key (the recorded one at its recorded total steps: runs trained
    before `--steps` became part of the recipe recorded the recipe's own train.steps)."""
    if not isinstance(info.get("recipe"), dict):
        return  # nothing recorded to compare with; resume_run still checks the trainer state's recipe hash
    recorded = flat_recipe(info["recipe"])
    if total is not None:
        recorded["train.steps"] = total
    current = flat_recipe(recipe.to_dict())
    for key in sorted(set(recorded) | set(current)):
        if recorded.get(key) != current.get(key):
            raise RecipeError(
                f"--resume: {recipe.path} differs from the recipe {run_dir} was trained with in {key} "
                f"({_shown(current.get(key))} vs recorded {_shown(recorded.get(key))}); resume with that recipe"
            )


def _shown(value: Any) -> str:
    return "unset" if value is None else json.dumps(value, sort_keys=True)
