"""compare() end to end on synthetic runs with cached eval results: tables, plots, statistics, determinism, CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from nexus_eval.cli import app
from nexus_eval.comparison import CompareOptions, CompareSettings, compare
from nexus_eval.comparison.report import candidates, headline_frame, render_markdown, tasks_frame
from nexus_eval.schema import CompareResults
from tests.comparison.synthetic_runs import (
    OTHER_TASK,
    TASK,
    EvaluationBlocked,
    block_evaluation,
    make_run,
    make_study,
    write_result,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def no_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every result must come from the cache: evaluating raises EvaluationBlocked in these tests."""
    block_evaluation(monkeypatch)


def run_compare(tmp_path: Path, run_dirs: list[Path], out: str = "out", **settings: Any) -> CompareResults:
    chosen = CompareSettings(**({"tasks": (TASK,), "bootstrap_resamples": 2000} | settings))
    options = CompareOptions(cache_dir=tmp_path / "cache", out=tmp_path / out, show=False, progress=False)
    return compare(run_dirs, chosen, options)


def test_report_tables_plots_and_a_clear_effect(tmp_path: Path) -> None:
    runs = make_study(tmp_path / "runs", tmp_path / "cache", seeds=(0,), bonus=1.5)
    results = run_compare(tmp_path, runs)
    out = tmp_path / "out"
    for name in ("metric_vs_loss.png", "training_loss.png", "grad_cosine.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
    assert json.loads((out / "results.json").read_text()) == results
    report = (out / "report.md").read_text()
    for heading in ("## Loss-matched pairs", "## Downstream", "## Solved-item overlap", "## Out-of-distribution loss"):
        assert heading in report
    assert "tiny-adamw-s0/ckpt-000020" in report and "-0.0030" in report  # both checkpoints and Δloss at 5.0
    rows = results["tasks"]
    assert [r["target"] for r in rows] == [5.0, 4.5]
    assert all(r["excludes_zero"] and r["low"] > 0 and r["n"] == 150 and r["unit"] == "items" for r in rows)
    assert all(r["candidate"] > r["reference"] for r in rows)
    overlap = results["overlap"][0]
    assert overlap["only_baseline"] + overlap["kept"] * overlap["baseline_solved"] == pytest.approx(
        overlap["baseline_solved"]
    )
    assert {r["domain"] for r in results["ood"]} == {"legal", "poetry"}
    assert all(r["mean"] < 0 for r in results["ood"])  # the synthetic Nexus runs sit 0.05 lower OOD


def test_no_effect_is_not_claimed_and_seeds_get_a_t_interval(tmp_path: Path) -> None:
    runs = make_study(tmp_path / "runs", tmp_path / "cache", seeds=(0, 1, 2), bonus=0.0)
    results = run_compare(tmp_path, runs)
    across = [r for r in results["tasks"] if r["seed"] == "all"]
    assert len(across) == 2 and all(r["n"] == 3 and r["unit"] == "seeds×items" and r["items"] == 450 for r in across)
    assert all(r["t_n"] == 3 and r["t_low"] < r["mean"] < r["t_high"] for r in across)
    assert not any(r["excludes_zero"] for r in across)
    ood = [r for r in results["ood"] if r["seed"] == "all"]
    assert ood and all(r["n"] == 3 and r["high"] is not None and "no items" in r["method"] for r in ood)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Downstream across seeds (headline)" in report and "3 seeds, 450 items" in report


def test_across_seeds_headline_comes_first_and_carries_the_seed_variance(tmp_path: Path) -> None:
    """Seeds that disagree: each seed's item CI excludes zero, with opposite signs; the across-seed row does not."""
    runs = make_study(tmp_path / "runs", tmp_path / "cache", seeds=(0,), bonus=3.0)
    runs += make_study(tmp_path / "runs", tmp_path / "cache", seeds=(1,), bonus=-3.0)
    results = run_compare(tmp_path, runs, targets=(5.0,))
    per_seed = {r["seed"]: r for r in results["tasks"] if r["seed"] != "all"}
    assert per_seed["0"]["low"] > 0 and per_seed["1"]["high"] < 0
    (across,) = [r for r in results["tasks"] if r["seed"] == "all"]
    assert across["low"] < 0 < across["high"] and not across["excludes_zero"]
    assert across["mean"] == pytest.approx((per_seed["0"]["mean"] + per_seed["1"]["mean"]) / 2)

    report = (tmp_path / "out" / "report.md").read_text()
    headline = report.index("## Downstream across seeds (headline)")
    conditional = report.index("## Downstream per seed, conditional on the training seed")
    assert report.index("## Loss-matched pairs") < headline < conditional < report.index("## Solved-item overlap")
    assert "does not include seed-to-seed variance" in report[conditional:]
    table = report[headline:conditional]
    assert "95% CI, seeds × items" in table and "95% CI, t over seeds" in table and "2 seeds, 300 items" in table


def test_the_terminal_report_leads_with_the_headline(tmp_path: Path) -> None:
    runs = make_study(tmp_path / "runs", tmp_path / "cache", seeds=(0, 1), bonus=0.5)
    args = ["compare", *map(str, runs), "--match-loss", "--tasks", TASK, "--cache", str(tmp_path / "cache")]
    shown = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "cli"), "--resamples", "500", "--quiet"])
    assert shown.exit_code == 0, shown.output
    headline = shown.output.index("Downstream across seeds (headline)")
    assert headline < shown.output.index("Downstream per seed, conditional on the training seed")


def test_one_seed_is_labelled_conditional_and_says_what_an_across_seed_estimate_needs(tmp_path: Path) -> None:
    runs = make_study(tmp_path / "runs", tmp_path / "cache", seeds=(0,), bonus=0.5)
    results = run_compare(tmp_path, runs)
    assert all(r["seed"] != "all" and "t_low" not in r for r in results["tasks"])
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Downstream, conditional on the training seed" in report and "headline" not in report
    assert "does not include seed-to-seed variance" in report and "needs ≥ 2 training seeds" in report


def test_results_written_before_the_hierarchical_bootstrap_still_render(tmp_path: Path) -> None:
    """Old across-seed rows hold the t interval in low/high and no t_*/items: it shows as the t CI."""
    runs = make_study(tmp_path / "runs", tmp_path / "cache", seeds=(0, 1), bonus=0.5)
    results = run_compare(tmp_path, runs, targets=(5.0,))
    old = copy.deepcopy(results)
    for row in old["tasks"]:
        if row["seed"] == "all":
            t_interval = {"low": row.pop("t_low"), "high": row.pop("t_high"), "unit": "seeds", "method": "t over seeds"}
            del row["t_n"], row["items"]
            row.update(t_interval)
    md = render_markdown(old, "old")
    (line,) = [x for x in md.splitlines() if x.startswith("| 5 ") and TASK in x and "seeds |" in x]
    cells = [c.strip() for c in line.strip("|").split("|")]
    (new,) = [r for r in results["tasks"] if r["seed"] == "all"]
    # target, the two sides' mean pair losses, task, metric, chance, the two scores, Δ, then the CIs and n
    assert cells[9] == "—" and cells[10] == f"[{new['t_low']:+.4f}, {new['t_high']:+.4f}]" and cells[11] == "2 seeds"


def test_same_inputs_same_outputs(tmp_path: Path) -> None:
    runs = make_study(tmp_path / "runs", tmp_path / "cache", seeds=(0, 1), bonus=0.5)
    run_compare(tmp_path, runs, out="a")
    run_compare(tmp_path, runs, out="b")
    for name in ("results.json", "report.md"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()


def test_item_alignment_uses_the_common_documents(tmp_path: Path) -> None:
    """Results scored on different doc subsets are compared on their intersection only."""
    import numpy as np

    adamw = make_run(tmp_path / "runs", "adamw", 0, [5.0, 4.5], crossings={1: 4.5})
    nexus = make_run(tmp_path / "runs", "nexus", 0, [5.0, 4.502], crossings={1: 4.5})
    for run, scores, docs in ((adamw, np.ones(6), [0, 1, 2, 3, 4, 5]), (nexus, np.zeros(4), [2, 3, 4, 9])):
        for ckpt in sorted(run.glob("ckpt-*")):
            write_result(tmp_path / "cache", ckpt, TASK, scores, doc_ids=docs)
    results = run_compare(tmp_path, [adamw, nexus], targets=(4.5,))
    (row,) = results["tasks"]
    assert row["n"] == 3 and row["mean"] == -1.0


def test_missing_result_goes_to_the_evaluator(tmp_path: Path) -> None:
    runs = make_study(tmp_path / "runs", tmp_path / "cache", seeds=(0,))
    with pytest.raises(EvaluationBlocked):  # the evaluator is blocked here: proof compare asked it for the missing task
        run_compare(tmp_path, runs, tasks=(TASK, OTHER_TASK))


def test_cli_compare_and_one_line_errors(tmp_path: Path) -> None:
    runs = make_study(tmp_path / "runs", tmp_path / "cache", seeds=(0,), bonus=1.0)
    runner = CliRunner()
    args = ["compare", *map(str, runs), "--match-loss", "--tasks", TASK, "--cache", str(tmp_path / "cache")]
    ok = runner.invoke(app, [*args, "--out", str(tmp_path / "cli"), "--resamples", "500", "--quiet"])
    assert ok.exit_code == 0, ok.output
    assert "Loss-matched pairs" in ok.output and (tmp_path / "cli" / "report.md").exists()

    only_adamw = runner.invoke(app, ["compare", str(runs[0]), "--match-loss", "--tasks", TASK])
    assert only_adamw.exit_code == 2 and "no nexus run" in only_adamw.output
    assert only_adamw.output.strip().count("\n") == 0
    bad_targets = runner.invoke(app, [*args, "--targets", "3.2,abc"])
    assert bad_targets.exit_code == 2 and "--targets" in bad_targets.output
    far = runner.invoke(app, [*args, "--tolerance", "0.0001"])
    assert far.exit_code == 2 and "closest" in far.output and "target_losses" in far.output


def test_compare_needs_match_loss_or_interpolate(tmp_path: Path) -> None:
    runs = make_study(tmp_path / "runs", tmp_path / "cache")
    args = ["compare", *map(str, runs), "--tasks", TASK, "--cache", str(tmp_path / "cache"), "--quiet"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "--match-loss" in result.output


def test_run_rows_carry_provenance_and_the_markdown_flags_what_differs(tmp_path: Path) -> None:
    runs = make_study(tmp_path / "runs", tmp_path / "cache")
    results = run_compare(tmp_path, runs)
    rows = {r["run_id"]: r["provenance"] for r in results["runs"]}
    assert all(p["data_hash"] == "data-0" and p["evaluation"][0]["backend"] == "hf" for p in rows.values())
    assert all(
        p["evaluation"][0]["task_yaml_hashes"] == {TASK: p["evaluation"][0]["task_yaml_hashes"][TASK]}
        for p in rows.values()
    )
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Provenance" in report and "All runs share" in report and "Provenance differs" not in report

    # One run trained under another torch: the footer names the field and both values.
    newest = sorted(runs[0].glob("ckpt-*"))[-1] / "nexus.json"
    meta = json.loads(newest.read_text())
    env = {"code": {}, "python": "3.11", "libraries": {"torch": "9.9"}, "device": {}, "world_size": 1, "platform": "x"}
    newest.write_text(json.dumps({**meta, "environment": env}))
    run_compare(tmp_path, runs, out="again")
    report = (tmp_path / "again" / "report.md").read_text()
    assert "Provenance differs between runs" in report and "`training.libraries.torch`" in report and "9.9" in report


def test_downstream_rows_show_their_pairs_own_losses(tmp_path: Path) -> None:
    """Beside the target, each row names where its two sides stand: the pair's own losses (the mean over the seeds'
    pairs in the headline)."""
    runs = make_study(tmp_path / "runs", tmp_path / "cache", seeds=(0, 1), bonus=0.5, seed_spread=0.002)
    results = run_compare(tmp_path, runs)
    (names,) = candidates(results)
    per_seed = tasks_frame(results, names)
    at_5 = per_seed[per_seed["target loss"] == "5"]
    assert list(at_5["seed"]) == ["0", "1"]
    assert list(at_5["AdamW loss"]) == ["4.9980", "4.9960"] and list(at_5["Nexus loss"]) == ["4.9950", "4.9930"]
    headline = headline_frame(results, names)
    row = headline[headline["target loss"] == "4.5"].iloc[0]
    assert (row["AdamW loss"], row["Nexus loss"]) == ("4.4960", "4.4980")  # (4.497 + 4.495) / 2, (4.499 + 4.497) / 2
    report = (tmp_path / "out" / "report.md").read_text()
    downstream = report[report.index("## Downstream per seed") :]
    assert "| AdamW loss" in downstream.split("\n## ")[0]
