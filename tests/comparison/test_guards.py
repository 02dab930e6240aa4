"""Fairness guards of `compare`: runs that differ in data, tokenizer, held-out set, model or recipe (apart from the
optimizer's own fields) are refused with the field and both values, unless --allow-mismatch FIELD lets them through
and the results JSON and the Markdown keep the difference; runs of different seeds are never paired."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from nexus_eval.cli import app
from nexus_eval.comparison import CompareOptions, CompareSettings, compare
from nexus_eval.comparison.guards import check_runs
from nexus_eval.comparison.leaderboard import validate
from nexus_eval.comparison.match import load_runs
from nexus_eval.errors import ComparisonError
from nexus_eval.schema import CompareResults
from nexus_eval.training.recipe import parse_recipe
from tests.comparison.synthetic_runs import TASK, block_evaluation, make_run, make_study

HASH_A, HASH_B = "a" * 64, "b" * 64


@pytest.fixture(autouse=True)
def no_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    """The guards refuse before any evaluation; allowed comparisons take every result from the cache."""
    block_evaluation(monkeypatch)


def edit_run(run_dir: Path, recipe: dict[str, Any] | None = None, **fields: Any) -> None:
    """Change run.json: top-level fields, and recipe keys given as "section.key" (None removes a field)."""
    path = run_dir / "run.json"
    info = json.loads(path.read_text())
    for key, value in (recipe or {}).items():
        section, _, name = key.rpartition(".")
        (info["recipe"].setdefault(section, {}) if section else info["recipe"])[name] = value
    for key, value in fields.items():
        if value is None:
            info.pop(key, None)
        else:
            info[key] = value
    path.write_text(json.dumps(info))


def as_trained(run_dir: Path) -> Path:
    """Give a synthetic run what a trained run's run.json records: the full recipe and the identity hashes."""
    path = run_dir / "run.json"
    recipe = parse_recipe({"name": "tiny", "train": {"target_losses": [5.0, 4.5]}}, "tiny.toml").to_dict()
    recorded = {"total_steps": 100, "model_params": 1000, "tokenizer_hash": HASH_A, "heldout_hash": HASH_A}
    path.write_text(json.dumps({**json.loads(path.read_text()), "recipe": recipe, **recorded}))
    return run_dir


def study(tmp_path: Path, seeds: tuple[int, ...] = (0,)) -> list[Path]:
    """make_study's runs (cached results for TASK), each with a trained run's run.json."""
    return [as_trained(r) for r in make_study(tmp_path / "runs", tmp_path / "cache", seeds=seeds)]


def run_compare(tmp_path: Path, runs: list[Path], allow: tuple[str, ...] = ()) -> CompareResults:
    settings = CompareSettings(tasks=(TASK,), bootstrap_resamples=200, allow_mismatch=allow)
    options = CompareOptions(cache_dir=tmp_path / "cache", out=tmp_path / "out", show=False, progress=False)
    return compare(runs, settings, options)


# Each guarded field: how the Nexus run's run.json differs, and the name the error gives it.
MISMATCHES = {
    "data_hash": ({"data_hash": "data-1"}, {}),
    "tokenizer": ({"tokenizer_hash": HASH_B}, {}),
    "heldout": ({"heldout_hash": HASH_B}, {}),
    "model": ({"model_params": 2000}, {}),
    "optim.lr": ({}, {"optim.lr": 1e-3}),
    "optim.beta2": ({}, {"optim.beta2": 0.99}),
    "train.steps": ({"total_steps": 80}, {}),  # a --steps override, as run.json records it
    "data.mixture": ({}, {"data.mixture": {"text": 1.0, "math": 2.0, "code": 1.0}}),
    "optim.accum": ({}, {"optim.accum": 8}),  # Nexus' inner steps, and AdamW's accumulation: both use it
}


@pytest.mark.parametrize("field", list(MISMATCHES))
def test_each_mismatch_is_refused_with_its_name_and_both_values(field: str, tmp_path: Path) -> None:
    adamw, nexus = study(tmp_path)
    fields, recipe = MISMATCHES[field]
    edit_run(nexus, recipe, **fields)
    with pytest.raises(ComparisonError) as err:
        run_compare(tmp_path, [adamw, nexus])
    message = str(err.value)
    assert f"differ in {field} (" in message and f"--allow-mismatch {field} " in message, message
    assert "tiny-adamw-s0" in message and "tiny-nexus-s0" in message and "\n" not in message
    assert not (tmp_path / "out").exists()  # refused before anything was evaluated or written

    results = run_compare(tmp_path, [adamw, nexus], allow=(field,))
    (recorded,) = results["allowed_mismatches"]
    assert recorded["field"] == field and recorded["runs"] == ["tiny-adamw-s0", "tiny-nexus-s0"]
    assert recorded["values"][0] != recorded["values"][1]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Warning: these runs were not trained alike" in report and f"`{field}`" in report
    assert report.index("Warning") < report.index("## Loss-matched pairs")  # near the top


def test_values_are_shown_short(tmp_path: Path) -> None:
    adamw, nexus = study(tmp_path)
    edit_run(nexus, tokenizer_hash=HASH_B)
    with pytest.raises(ComparisonError, match=f"\\({HASH_A[:12]} vs {HASH_B[:12]}\\)"):
        check_runs(load_runs([adamw, nexus]))
    edit_run(nexus, tokenizer_hash=HASH_A, model_params=2000)
    with pytest.raises(ComparisonError, match=r'\({"params":1000} vs {"params":2000}\)'):  # only what differs
        check_runs(load_runs([adamw, nexus]))


def test_runs_trained_alike_record_no_mismatch_and_one_setting_apart_are_refused(tmp_path: Path) -> None:
    runs = study(tmp_path)
    results = run_compare(tmp_path, runs)
    assert results["allowed_mismatches"] == []
    assert "Warning" not in (tmp_path / "out" / "report.md").read_text()
    edit_run(runs[1], {"optim.beta2": 0.99})  # the same runs, one shared setting apart: the same call refuses them
    shutil.rmtree(tmp_path / "out")
    with pytest.raises(ComparisonError, match="differ in optim.beta2"):
        run_compare(tmp_path, runs)
    assert not (tmp_path / "out").exists()


def test_optimizer_own_fields_differ_only_across_optimizers(tmp_path: Path) -> None:
    """inner_lr_ratio/normalize are Nexus' own and grad_clip AdamW's: an AdamW and a Nexus run may differ in them,
    two Nexus runs (another seed) may not differ in Nexus' own; two AdamW runs may differ in Nexus' fields."""
    runs = study(tmp_path, seeds=(0, 1))
    adamw0, nexus0, adamw1, nexus1 = runs
    edit_run(nexus0, {"optim.inner_lr_ratio": 20.0, "optim.normalize": False, "optim.grad_clip": 0.0})
    edit_run(nexus1, {"optim.inner_lr_ratio": 20.0, "optim.normalize": False})
    edit_run(adamw1, {"optim.inner_lr_ratio": 5.0})
    assert check_runs(load_runs(runs)) == []
    edit_run(nexus1, {"optim.inner_lr_ratio": 10.0})
    with pytest.raises(ComparisonError, match=r"tiny-nexus-s0 and tiny-nexus-s1 differ in optim.inner_lr_ratio"):
        check_runs(load_runs(runs))
    edit_run(nexus1, {"optim.inner_lr_ratio": 20.0})
    edit_run(adamw1, {"optim.grad_clip": 0.5})
    with pytest.raises(ComparisonError, match=r"tiny-adamw-s0 and tiny-adamw-s1 differ in optim.grad_clip"):
        check_runs(load_runs(runs))


def test_every_seed_is_checked_and_labels_are_not_settings(tmp_path: Path) -> None:
    runs = study(tmp_path, seeds=(0, 1))
    for run in runs:  # the recipe's name and data dir locate and label; the build itself is data_hash
        edit_run(run, {"name": f"renamed-{run.name}", "data.dir": f"/data/{run.name}"})
    assert check_runs(load_runs(runs)) == []
    edit_run(runs[3], {"optim.lr": 1e-3})  # tiny-nexus-s1: another seed than the first pair
    with pytest.raises(ComparisonError, match="tiny-nexus-s0 and tiny-nexus-s1 differ in optim.lr"):
        check_runs(load_runs(runs))


def test_runs_without_recorded_hashes_are_compared_on_their_data_build(tmp_path: Path) -> None:
    """Runs trained before tokenizer_hash/heldout_hash were recorded: the same data build and held-out settings
    pass (also against a run that records them); another build is another tokenizer and held-out set."""
    adamw, nexus = study(tmp_path)
    edit_run(adamw, tokenizer_hash=None, heldout_hash=None)
    assert check_runs(load_runs([adamw, nexus])) == []
    edit_run(nexus, {"train.eval_windows": 4})
    with pytest.raises(ComparisonError, match="differ in heldout"):
        check_runs(load_runs([adamw, nexus]))
    edit_run(nexus, {"train.eval_windows": 16}, data_hash="data-1")
    mismatches = check_runs(load_runs([adamw, nexus]), allowed=("data_hash", "tokenizer", "heldout"))
    assert [m.field for m in mismatches] == ["data_hash", "tokenizer", "heldout"]


def test_different_seeds_are_never_paired(tmp_path: Path) -> None:
    adamw = as_trained(make_run(tmp_path, "adamw", 0, [5.0, 4.5], crossings={0: 5.0}))
    nexus = as_trained(make_run(tmp_path, "nexus", 1, [5.001, 4.5], crossings={0: 5.0}))
    with pytest.raises(ComparisonError, match=r"adamw seeds \['0'\] and nexus seeds \['1'\] share none"):
        run_compare(tmp_path, [adamw, nexus])
    assert not (tmp_path / "out").exists()


def test_cli_allow_mismatch_repeatable_or_comma_list_and_unknown_names(tmp_path: Path) -> None:
    adamw, nexus = study(tmp_path)
    edit_run(nexus, {"optim.lr": 1e-3}, data_hash="data-1")
    runner = CliRunner()
    args = ["compare", str(adamw), str(nexus), "--match-loss", "--tasks", TASK, "--cache", str(tmp_path / "cache")]
    args += ["--resamples", "200", "--quiet"]

    refused = runner.invoke(app, [*args, "--out", str(tmp_path / "a"), "--allow-mismatch", "optim.lr"])
    assert refused.exit_code == 2 and "differ in data_hash (data-0 vs data-1)" in refused.output
    assert refused.output.strip().count("\n") == 0

    comma, repeated = ["optim.lr,data_hash"], ["optim.lr", "--allow-mismatch", "data_hash"]
    for i, given in enumerate((comma, repeated)):
        ok = runner.invoke(app, [*args, "--out", str(tmp_path / f"ok{i}"), "--allow-mismatch", *given])
        assert ok.exit_code == 0, ok.output
        assert "warning:" in ok.output and "paired anyway" in ok.output
        results = json.loads((tmp_path / f"ok{i}" / "results.json").read_text())
        assert [m["field"] for m in results["allowed_mismatches"]] == ["data_hash", "optim.lr"]
        assert results["allowed_mismatches"][1]["values"] == [0.003, 0.001]

    unknown = runner.invoke(app, [*args, "--out", str(tmp_path / "b"), "--allow-mismatch", "optim.lrr"])
    assert unknown.exit_code == 2 and "--allow-mismatch 'optim.lrr'" in unknown.output
    assert "valid: data_hash, tokenizer, heldout, model," in unknown.output and "optim.lr," in unknown.output
    assert unknown.output.strip().count("\n") == 0


def test_results_without_allowed_mismatches_still_validate(tmp_path: Path) -> None:
    """Leaderboard JSONs written before the guards lack the key; a malformed one is refused."""
    results = dict(run_compare(tmp_path, study(tmp_path)))
    old = {k: v for k, v in results.items() if k != "allowed_mismatches"}
    assert validate(old, "old.json") == old
    with pytest.raises(ComparisonError, match="allowed_mismatches"):
        validate({**results, "allowed_mismatches": "optim.lr"}, "bad.json")
