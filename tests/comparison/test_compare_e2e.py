"""compare end to end on real checkpoints: trained runs → match → a real hf evaluation (no stub) → paired Δ."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nexus_eval.cli import app
from nexus_eval.evaluation import evaluate
from nexus_eval.provenance import code_version
from nexus_eval.tasks import write_ood_tasks

LIMIT = 4


@pytest.mark.slow
def test_compare_evaluates_the_matched_checkpoints_for_real(
    tiny_runs: dict[str, Path], tiny_data_dir: Path, tmp_path: Path
) -> None:
    """The values and the Δ compare reports are those of a separate evaluation of the same two checkpoints."""
    # A loglikelihood_rolling task over an OOD domain of the runs' own data build: scored in windows, so it fits the
    # test recipe's 32-token context. Given as a YAML path, outside tasks/.
    task_yaml = tmp_path / "tasks" / "ood_fortunes.yaml"
    assert task_yaml.name.removesuffix(".yaml") in write_ood_tasks(tiny_data_dir, task_yaml.parent)
    out, cache = tmp_path / "report", tmp_path / "cache"
    args = [str(tiny_runs["adamw"]), str(tiny_runs["nexus"]), "--match-loss", "--targets", "6", "--tolerance", "50"]
    args += ["--tasks", str(task_yaml), "--limit", str(LIMIT), "--cache", str(cache), "--out", str(out)]
    result = CliRunner().invoke(app, ["compare", *args, "--resamples", "200", "--quiet", "--disagreements"])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert (out / "report.md").is_file() and len(results["pairs"]) == 1
    pair, row = results["pairs"][0], results["tasks"][0]
    ckpts = {side: tiny_runs["adamw"].parent / pair[side]["checkpoint"] for side in ("reference", "candidate")}
    assert all(c.is_dir() for c in ckpts.values()) and len(list(cache.rglob("*.json"))) == 2  # evaluated: both sides
    # From the real samples: two different models give every document a different log-likelihood.
    listed = [line for line in (out / "disagreements.md").read_text().splitlines() if line.startswith("| ")]
    assert len(listed) == 1 + LIMIT and all(line.count("| LL -") == 2 for line in listed[1:])

    direct = evaluate(list(ckpts.values()), [str(task_yaml)], limit=LIMIT, cache_dir=tmp_path / "fresh", progress=False)
    by_side = {side: next(r for r in direct if r["checkpoint"] == str(c)) for side, c in ckpts.items()}
    metric = row["metric"]
    assert metric == "bits_per_byte,none" and row["n"] == LIMIT
    for side in ("reference", "candidate"):
        assert row[side] == pytest.approx(by_side[side]["metrics"][metric], rel=1e-9)
    # Bits per byte is a corpus ratio: items weigh by their bytes, as lm-eval aggregates it.
    items = {side: np.array(by_side[side]["item_scores"][metric]) for side in ("reference", "candidate")}
    weights = np.array(by_side["reference"]["item_weights"][metric])
    expected = float(np.sum(weights * (items["candidate"] - items["reference"])) / np.sum(weights))
    assert row["mean"] == pytest.approx(expected, rel=1e-9)
    assert row["low"] <= row["mean"] <= row["high"]


@pytest.mark.slow
def test_compare_geometry_columns_say_what_measured_them(
    tiny_runs: dict[str, Path], tiny_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`compare --geometry` measures both checkpoints of a pair for real and each geometry row names the code that
    measured each side (the cached measurement's environment)."""
    monkeypatch.chdir(tmp_path)  # the geometry cache is results/geometry of the working directory
    args = [str(tiny_runs["adamw"]), str(tiny_runs["nexus"]), "--match-loss", "--targets", "6", "--tolerance", "50"]
    args += ["--tasks", "arith_steps1_mc", "--limit", "2", "--cache", "eval", "--out", "report", "--resamples", "200"]
    args += ["--data", str(tiny_data_dir), "--geometry", "--quiet"]
    result = CliRunner().invoke(app, ["compare", *args])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(Path("report/results.json").read_text())["geometry"]
    for side in ("reference", "candidate"):
        assert row[f"{side}_measured_with"] == code_version()
        assert -1 <= row[f"{side}_grad_cos"] <= 1 and row[f"{side}_minima_msd"] > 0
    assert len(list(Path("results/geometry").glob("*.json"))) == 2
