"""`compare` over runs of the ablation variants (issue 13): each variant is a series labelled by its optimizer name,
matched against the AdamW reference with the same statistics, named in the report; the fairness guards compare every
variant's runs with the reference's, and each optimizer's own [optim] fields only between runs that read them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nexus_eval.comparison import CompareOptions, CompareSettings, compare
from nexus_eval.comparison.guards import check_runs
from nexus_eval.comparison.match import load_runs
from nexus_eval.errors import ComparisonError
from nexus_eval.optimizer_registry import REGISTRY
from nexus_eval.training.recipe import parse_recipe
from tests.comparison.synthetic_runs import TASK, block_evaluation, make_run, solved_items, write_result

OPTIMIZERS = REGISTRY.names()
LOSSES = [5.6, 4.998, 4.8, 4.497, 4.3]  # crosses the targets 5.0 and 4.5 at checkpoints 1 and 3


@pytest.fixture(autouse=True)
def no_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    block_evaluation(monkeypatch)


def variant_runs(root: Path, cache: Path, names: tuple[str, ...] = OPTIMIZERS, seed: int = 0) -> list[Path]:
    """One run per optimizer name with a trained run's recorded recipe, at near-equal losses, with cached results."""
    difficulty = np.random.default_rng(123).normal(0.0, 1.5, 150)
    recipe = parse_recipe({"name": "tiny", "train": {"target_losses": [5.0, 4.5]}}, "tiny.toml").to_dict()
    runs = []
    for i, name in enumerate(names):
        losses = [x + 0.0005 * i - 0.001 * seed for x in LOSSES]
        run = make_run(root, name, seed, losses, targets=(5.0, 4.5), crossings={1: 5.0, 3: 4.5})
        path = run / "run.json"
        recorded = {"recipe": recipe, "total_steps": 100, "model_params": 1000}
        path.write_text(json.dumps({**json.loads(path.read_text()), **recorded}))
        rng = np.random.default_rng([seed, i])
        for ckpt in sorted(run.glob("ckpt-*")):
            loss = json.loads((ckpt / "nexus.json").read_text())["heldout_loss"]
            write_result(cache, ckpt, TASK, solved_items(loss, difficulty, 0.3 * i, rng))
        runs.append(run)
    return runs


def set_optim(run: Path, **values: Any) -> None:
    path = run / "run.json"
    info = json.loads(path.read_text())
    info["recipe"]["optim"].update(values)
    path.write_text(json.dumps(info))


def test_compare_matches_every_variant_against_the_adamw_reference(tmp_path: Path) -> None:
    runs = variant_runs(tmp_path / "runs", tmp_path / "cache")
    settings = CompareSettings(tasks=(TASK,), bootstrap_resamples=200)
    options = CompareOptions(cache_dir=tmp_path / "cache", out=tmp_path / "out", show=False, progress=False)
    results = compare(runs, settings, options)
    assert results["settings"]["reference"] == "adamw"
    assert results["settings"]["series"] == list(OPTIMIZERS)
    for name in OPTIMIZERS[1:]:  # each variant a series, paired at both targets with the same statistics
        pairs = [p for p in results["pairs"] if p["series"] == name]
        assert sorted(p["target"] for p in pairs) == [4.5, 5.0], name
        rows = [r for r in results["tasks"] if r["series"] == name]
        assert rows and all(r["n"] >= 1 and "low" in r for r in rows), name
    report = (tmp_path / "out" / "report.md").read_text()
    for name in OPTIMIZERS:
        assert REGISTRY[name].display_name in report
    set_optim(runs[-1], warmup_steps=3)  # the last variant one shared setting apart: the same call refuses it
    refused = CompareOptions(cache_dir=tmp_path / "cache", out=tmp_path / "refused", show=False, progress=False)
    with pytest.raises(ComparisonError, match="differ in optim.warmup_steps"):
        compare(runs, settings, refused)
    assert not (tmp_path / "refused").exists()


def test_guards_compare_each_variant_with_the_reference(tmp_path: Path) -> None:
    runs = variant_runs(tmp_path / "runs", tmp_path / "cache")
    assert check_runs(load_runs(runs)) == []
    fish = runs[OPTIMIZERS.index("fish")]
    set_optim(fish, lr=1e-3)  # a setting every optimizer reads: refused against the reference
    with pytest.raises(ComparisonError, match=r"tiny-adamw-s0 and tiny-fish-s0 differ in optim.lr"):
        check_runs(load_runs(runs))


def test_variant_own_fields_are_compared_only_between_runs_that_read_them(tmp_path: Path) -> None:
    seed0 = variant_runs(tmp_path / "runs", tmp_path / "cache", ("adamw", "reptile", "fish"))
    seed1 = variant_runs(tmp_path / "runs", tmp_path / "cache", ("adamw", "reptile", "fish"), seed=1)
    adamw0, reptile0, fish0 = seed0
    _, reptile1, fish1 = seed1
    set_optim(fish0, fish_meta_lr=0.2)
    set_optim(fish1, fish_meta_lr=0.2)
    set_optim(reptile0, normalize=False)  # reptile forces it: the recorded value means nothing to it
    assert check_runs(load_runs(seed0 + seed1)) == []  # fish_meta_lr: fish's own; adamw and reptile do not read it
    set_optim(fish1, fish_meta_lr=0.1)
    with pytest.raises(ComparisonError, match=r"tiny-fish-s0 and tiny-fish-s1 differ in optim.fish_meta_lr"):
        check_runs(load_runs(seed0 + seed1))
    set_optim(fish1, fish_meta_lr=0.2)
    set_optim(reptile1, inner_lr_ratio=5.0)  # two runs of the same variant must agree on the inner lr
    with pytest.raises(ComparisonError, match=r"tiny-reptile-s0 and tiny-reptile-s1 differ in optim.inner_lr_ratio"):
        check_runs(load_runs(seed0 + seed1))
    set_optim(reptile1, inner_lr_ratio=1.0)
    set_optim(adamw0, inner_lr_ratio=5.0)  # AdamW does not read it: its runs may carry any value
    assert check_runs(load_runs(seed0 + seed1)) == []


def test_an_unknown_optimizer_in_a_run_is_one_line(tmp_path: Path) -> None:
    (run,) = variant_runs(tmp_path / "runs", tmp_path / "cache", ("adamw",))
    path = run / "run.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "optimizer": "lion"}))
    with pytest.raises(ComparisonError, match=r"optimizer .lion. in run.json/nexus.json is not one of adamw, nexus"):
        load_runs([run])


def test_any_optimizer_name_is_a_series_and_its_table_is_its_own(tmp_path: Path) -> None:
    """nexus:muon and a plug-in are read back by name (compare imports no plug-in), each a series against AdamW;
    an optimizer's [optim."NAME"] table is compared between its own runs only, like its own [optim] keys."""
    names = ("adamw", "muon", "nexus:muon", "my_optimizers:lion")
    seed0 = variant_runs(tmp_path / "runs", tmp_path / "cache", names)
    seed1 = variant_runs(tmp_path / "runs", tmp_path / "cache", names, seed=1)
    for runs in (seed0, seed1):
        set_optim(runs[1], muon={"momentum": 0.9})
        set_optim(runs[2], muon={"momentum": 0.9})
        set_optim(runs[3], **{"my_optimizers:lion": {"lr_ratio": 0.2}})
    assert check_runs(load_runs(seed0 + seed1)) == []  # AdamW reads neither table
    set_optim(seed1[3], **{"my_optimizers:lion": {"lr_ratio": 0.3}})
    with pytest.raises(ComparisonError, match=r"s0 and tiny-my_optimizers:lion-s1 differ in optim.my_optimizers:lion"):
        check_runs(load_runs(seed0 + seed1))
    set_optim(seed1[3], **{"my_optimizers:lion": {"lr_ratio": 0.2}})
    set_optim(seed1[2], muon={"momentum": 0.8})  # Nexus∘Muon reads Muon's table
    with pytest.raises(ComparisonError, match=r"tiny-nexus:muon-s0 and tiny-nexus:muon-s1 differ in optim.muon"):
        check_runs(load_runs(seed0 + seed1))
    set_optim(seed1[2], muon={"momentum": 0.9})
    settings = CompareSettings(tasks=(TASK,), bootstrap_resamples=200)
    options = CompareOptions(cache_dir=tmp_path / "cache", out=tmp_path / "out", show=False, progress=False)
    results = compare(seed0, settings, options)
    assert results["settings"]["series"] == list(names)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Muon" in report and "Nexus∘Muon" in report and "my_optimizers:lion" in report
