"""In-training evaluation (issue 14): a recipe's [train] eval_tasks are evaluated at each checkpoint as it is written,
into the cache `nexus-eval eval` reads, so that a later `eval` (or `compare`) loads nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nexus_eval.checkpoints import list_checkpoints
from nexus_eval.cli import app
from nexus_eval.training.recipe import load_recipe
from tests.conftest import write_recipe

TASK = "arith_steps1_mc"


def recipe_with_eval(tmp_path: Path, data_dir: Path, tasks: str) -> Path:
    path = write_recipe(tmp_path, data_dir)
    path.write_text(path.read_text().replace('keep_state = "all"', f'keep_state = "all"\neval_tasks = {tasks}'))
    return path


@pytest.mark.slow
def test_eval_tasks_are_cached_at_each_checkpoint_and_outside_the_recipe_hash(
    tiny_data_dir: Path, tmp_path: Path
) -> None:
    recipe = recipe_with_eval(tmp_path, tiny_data_dir, f'["{TASK}"]')
    (tmp_path / "plain").mkdir()
    plain = write_recipe(tmp_path / "plain", tiny_data_dir)
    assert load_recipe(recipe).hash() == load_recipe(plain).hash()
    assert load_recipe(recipe).train.eval_tasks == (TASK,)
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    args = ["train", str(recipe), "--optimizer", "nexus", "--out", str(runs), "--eval-cache", str(cache), "--quiet"]
    trained = CliRunner().invoke(app, args)
    assert trained.exit_code == 0, trained.output
    (run_dir,) = runs.iterdir()
    ckpts = list_checkpoints(run_dir)
    assert len(ckpts) >= 2 and len(list(cache.rglob(f"{TASK}.hf.*.json"))) == len(ckpts)
    shown = CliRunner().invoke(app, ["eval", str(run_dir), "--tasks", TASK, "--cache", str(cache), "--json"])
    assert shown.exit_code == 0, shown.output
    results = json.loads(shown.stdout)
    assert len(results) == len(ckpts) and {r["source"] for r in results} == {"cache"}


def test_a_bad_eval_task_is_one_line_before_training(tiny_data_dir: Path, tmp_path: Path) -> None:
    for tasks, named in (('["no_such_task"]', "no_such_task"), ("[1, 2]", "eval_tasks")):
        recipe = recipe_with_eval(tmp_path, tiny_data_dir, tasks)
        result = CliRunner().invoke(app, ["train", str(recipe), "--optimizer", "adamw", "--out", str(tmp_path / "r")])
        assert result.exit_code == 2 and named in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
        assert not (tmp_path / "r").exists()
