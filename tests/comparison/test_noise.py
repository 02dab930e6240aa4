"""Seed-to-seed noise (comparison.noise): held-out loss SD at fixed steps, task score SD at fixed losses, the auto
tolerance derived from them, the report's Noise section and `compare --tolerance auto` / bad values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nexus_eval.cli import app
from nexus_eval.comparison.match import load_run
from nexus_eval.comparison.noise import FROM_CHECKPOINTS, FROM_METRICS, loss_noise, score_noise, tolerance_record
from nexus_eval.comparison.settings import CompareSettings
from nexus_eval.errors import ComparisonError
from nexus_eval.schema import MetricPoint
from tests.comparison.synthetic_runs import TASK, block_evaluation, make_run, make_study


@pytest.fixture(autouse=True)
def no_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    block_evaluation(monkeypatch)


def seeds_of(root: Path, optimizer: str, offsets: tuple[float, ...], base: list[float]) -> list[Path]:
    """One run per seed s whose losses are base + offsets[s] (metrics.jsonl logs the same losses)."""
    return [make_run(root, optimizer, s, [x + d for x in base]) for s, d in enumerate(offsets)]


BASE = [6.0, 5.0, 4.0]  # steps 10, 20, 30


def test_loss_sd_at_the_first_step_the_mean_reaches_each_target_and_at_the_final_step(tmp_path: Path) -> None:
    runs = [load_run(p) for p in seeds_of(tmp_path, "adamw", (0.0, 0.02, 0.04), BASE)]
    runs += [load_run(p) for p in seeds_of(tmp_path, "nexus", (0.0, 0.1, 0.2), BASE)]
    rows = loss_noise(runs, [5.5, 5.05, 3.0], "nats")
    adamw = {(r["at"], r["target"]): r for r in rows if r["series"] == "adamw"}
    nexus = {(r["at"], r["target"]): r for r in rows if r["series"] == "nexus"}
    # 5.5: first reached at step 20 (mean 5.02); 5.05 too; 3.0 never; final: step 30.
    assert adamw[("target", 5.5)]["step"] == 20 and adamw[("target", 5.05)]["step"] == 20
    assert adamw[("target", 5.5)]["mean"] == pytest.approx(5.02)
    assert adamw[("target", 5.5)]["sd"] == pytest.approx(0.02) and adamw[("target", 5.5)]["n"] == 3
    assert adamw[("target", 3.0)]["step"] is None and adamw[("target", 3.0)]["sd"] is None
    assert adamw[("final", None)]["step"] == 30 and adamw[("final", None)]["sd"] == pytest.approx(0.02)
    # Nexus' mean at step 20 is 5.1: it reaches 5.5 there but 5.05 only at step 30.
    assert nexus[("target", 5.05)]["step"] == 30 and nexus[("target", 5.05)]["sd"] == pytest.approx(0.1)
    assert all(r["source"] == FROM_METRICS for r in rows)
    assert [r["series"] for r in rows] == ["adamw"] * 4 + ["nexus"] * 4


def test_loss_sd_falls_back_to_the_checkpoints_and_needs_two_seeds(tmp_path: Path) -> None:
    paths = seeds_of(tmp_path, "adamw", (0.0, 0.03), BASE)
    (paths[1] / "metrics.jsonl").unlink()  # one seed without a log: the series uses its checkpoints
    runs = [load_run(p) for p in paths]
    (final,) = [r for r in loss_noise(runs, [], "nats") if r["at"] == "final"]
    assert final["source"] == FROM_CHECKPOINTS and final["sd"] == pytest.approx(0.03 / math.sqrt(2))
    (bpb,) = [r for r in loss_noise([load_run(paths[0])], [], "bpb") if r["at"] == "final"]
    assert bpb["source"] == FROM_CHECKPOINTS and bpb["n"] == 1 and bpb["sd"] is None


def test_auto_tolerance_is_half_the_smallest_loss_sd(tmp_path: Path) -> None:
    runs = [load_run(p) for p in seeds_of(tmp_path, "adamw", (0.0, 0.02, 0.04), BASE)]
    runs += [load_run(p) for p in seeds_of(tmp_path, "nexus", (0.0, 0.1, 0.2), BASE)]
    rows = loss_noise(runs, [5.5], "nats")
    auto = tolerance_record(rows, CompareSettings(tolerance_auto=True), "nats")
    assert auto["auto"] and auto["value"] == pytest.approx(0.01) and auto["smallest_sd"] == pytest.approx(0.02)
    assert auto["series"] == "adamw" and auto["step"] in (20, 30)  # the smaller SD: Nexus' seeds lie 0.1 apart
    assert "½ × the smallest seed SD" in auto["derivation"] and "0.01 nats/token" in auto["derivation"]
    given = tolerance_record(rows, CompareSettings(tolerance=0.05), "nats")
    assert not given["auto"] and given["value"] == 0.05 and "NOT below" in given["derivation"]
    assert "as given: below" in tolerance_record(rows, CompareSettings(tolerance=0.005), "nats")["derivation"]
    one_seed = loss_noise(runs[:1] + runs[3:4], [5.5], "nats")
    with pytest.raises(ComparisonError, match="--tolerance auto: no seed SD"):
        tolerance_record(one_seed, CompareSettings(tolerance_auto=True), "nats")


def point(seed: int, loss: float, value: float) -> MetricPoint:
    return {
        "series": "adamw",
        "seed": seed,
        "run_id": f"r{seed}",
        "checkpoint": f"r{seed}/c{loss}",
        "loss": loss,
        "task": TASK,
        "metric": "acc,none",
        "value": value,
    }


def test_score_sd_at_a_target_interpolates_or_takes_the_nearest_checkpoint() -> None:
    points = [point(0, 5.2, 0.2), point(0, 4.8, 0.6)]  # at 5.0: 0.4
    points += [point(1, 5.2, 0.4), point(1, 4.8, 0.8)]  # at 5.0: 0.6
    points += [point(2, 4.99, 0.9)]  # no bracket: its checkpoint 0.01 from the target
    points += [point(3, 4.0, 0.1)]  # too far from 5.0: left out
    (row,) = score_noise(points, [TASK], [5.0], ["adamw"], tolerance=0.01)
    assert (row["n"], row["interpolated"], row["nearest"]) == (3, 2, 1)
    assert row["mean"] == pytest.approx(np.mean([0.4, 0.6, 0.9]))
    assert row["sd"] == pytest.approx(np.std([0.4, 0.6, 0.9], ddof=1))


def test_compare_tolerance_auto_and_the_noise_section(tmp_path: Path) -> None:
    runs = make_study(tmp_path / "runs", tmp_path / "cache", seeds=(0, 1, 2), items=40, seed_spread=0.02)
    args = ["compare", *map(str, runs), "--match-loss", "--tasks", TASK, "--cache", str(tmp_path / "cache")]
    ok = CliRunner().invoke(app, [*args, "--tolerance", "auto", "--out", str(tmp_path / "out"), "--resamples", "200"])
    assert ok.exit_code == 0, ok.output
    assert "--tolerance auto:" in ok.output  # printed before matching, with its derivation
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    tolerance = results["noise"]["tolerance"]
    assert tolerance["auto"] and tolerance["value"] == pytest.approx(0.01)  # seeds 0.02 apart: SD 0.02
    assert results["settings"]["tolerance"] == tolerance["value"] and results["settings"]["tolerance_auto"]
    assert all(abs(p["delta_loss"]) <= tolerance["value"] for p in results["pairs"]) and results["pairs"]
    scores = results["noise"]["scores"]
    assert {(r["series"], r["target"]) for r in scores} == {(s, t) for s in ("adamw", "nexus") for t in (5.0, 4.5)}
    assert all(r["n"] == 3 and r["sd"] is not None for r in scores)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Noise: held-out loss across seeds at fixed steps" in report
    assert "## Noise: task scores across seeds at fixed losses" in report
    assert "`--tolerance auto`, see Noise" in report and "Matching tolerance: --tolerance auto: 0.01" in report


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tolerance", "abc"], "--tolerance abc: expected a number ≥ 0 or auto"),
        (["--tolerance", "-0.5"], "--tolerance -0.5: expected a number ≥ 0 or auto"),
        (["--tolerance", "nan"], "--tolerance nan: expected a number ≥ 0 or auto"),
        (["--tolerance", "auto", "--interpolate"], "--tolerance auto: only with --match-loss"),
        (["--curve-points", "1"], "--curve-points must be ≥ 2"),
        (["--curve-losses", "5,x"], "--curve-losses: expected comma-separated numbers"),
    ],
)
def test_bad_values_are_one_line_errors(tmp_path: Path, extra: list[str], message: str) -> None:
    runs = [make_run(tmp_path, opt, 0, [5.0, 4.5]) for opt in ("adamw", "nexus")]
    args = ["compare", *map(str, runs), "--match-loss", "--tasks", TASK, "--out", str(tmp_path / "out"), *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and message in result.output
    assert result.output.strip().count("\n") == 0


def test_auto_tolerance_with_one_seed_is_a_one_line_error(tmp_path: Path) -> None:
    runs = make_study(tmp_path / "runs", tmp_path / "cache", seeds=(0,), items=20)
    args = ["compare", *map(str, runs), "--match-loss", "--tasks", TASK, "--cache", str(tmp_path / "cache")]
    result = CliRunner().invoke(app, [*args, "--tolerance", "auto", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "--tolerance auto: no seed SD of held-out loss" in result.output
    assert result.output.strip().count("\n") == 0 and not (tmp_path / "out").exists()
