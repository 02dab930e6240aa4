"""The at-chance rule (comparison/chance.py) on hand-made scores, and task_rows applying it: rows at chance are
flagged, rows above or below chance and rows without a chance level (bits per byte) are not."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest

from nexus_eval.comparison import CompareOptions, CompareSettings, compare
from nexus_eval.comparison.chance import (
    curve_at_chance,
    differs_from_chance,
    guesser_range,
    has_chance,
    item_chance,
    row_at_chance,
    seed_vs_chance,
    seeds_vs_chance,
    task_chance,
)
from nexus_eval.comparison.pipeline import task_rows
from nexus_eval.comparison.report import render_markdown
from nexus_eval.comparison.stats import Estimate
from nexus_eval.schema import CompareResults
from tests.comparison.synthetic_runs import OTHER_TASK, TASK, block_evaluation, make_run, write_result
from tests.comparison.test_task_rows import CANDIDATE, PAIR, REFERENCE, accuracy_result, result

ITEMS = 300


def solved(count: int, start: int = 0, n: int = ITEMS) -> np.ndarray:
    """0/1 scores: items start .. start + count − 1 (mod n) solved."""
    scores = np.zeros(n)
    scores[(start + np.arange(count)) % n] = 1.0
    return scores


def judged(reference: np.ndarray, candidate: np.ndarray, chance: np.ndarray) -> bool | None:
    sides = [[seed_vs_chance(x, chance, resamples=2000, seed=i)] for i, x in enumerate((reference, candidate))]
    return row_at_chance(*sides)


def test_metrics_with_a_chance_level_are_accuracies_only() -> None:
    assert has_chance("acc,none") and has_chance("acc_norm,none")
    assert not has_chance("bits_per_byte,none") and not has_chance("word_perplexity,none")
    assert not has_chance("exact_match,strict-match")


def test_chance_is_the_mean_over_items_of_one_over_their_choices() -> None:
    """Half the items with 2 choices, half with 4: chance 0.375, not 1/mean(choices) = 1/3 nor 1/4."""
    counts = {d: 2 if d % 2 == 0 else 4 for d in range(8)}
    chance = item_chance(counts, list(range(8)))
    assert chance is not None and float(chance.mean()) == pytest.approx(0.375)
    assert item_chance(counts, [0, 1, 99]) is None  # a doc whose choices are unknown: not judged
    assert item_chance({0: 1, 1: 2}, [0, 1]) is None  # one choice is no multiple choice
    assert item_chance(counts, []) is None
    whole = task_chance(counts | {9: 1})  # the curves: every item with ≥ 2 choices
    assert whole is not None and float(whole.mean()) == pytest.approx(0.375)


def test_two_guessers_are_at_chance_even_where_their_difference_excludes_zero() -> None:
    """3 choices: 30% and 36% of 300 items are both within chance; the candidate solves every item the reference
    does and 18 more, so the paired Δ (+0.06) is tight and excludes 0. The row is at chance all the same."""
    chance = np.full(ITEMS, 1 / 3)
    reference, candidate = solved(90), solved(108)
    assert judged(reference, candidate, chance) is True
    delta = seed_vs_chance(candidate, reference)  # the Δ's paired bootstrap: candidate − reference
    assert delta.excludes_zero and delta.low > 0


def test_rows_above_or_below_chance_are_not_at_chance() -> None:
    chance = np.full(ITEMS, 1 / 3)
    at_chance, above, below = solved(100), solved(240), solved(20)
    assert judged(above, above, chance) is False  # both learned the task
    assert judged(at_chance, above, chance) is False  # one learned it, the other did not: a real difference
    assert judged(above, at_chance, chance) is False
    assert judged(below, at_chance, chance) is False  # worse than guessing is distinguishable from guessing


def test_mixed_choice_counts_judge_against_each_items_own_chance() -> None:
    """Items with 2 choices and items with 4: a model at 0.375 is a guesser (chance 0.375); against 1/4, the chance
    of the 4-choice items alone, it would look far above chance."""
    chance = np.where(np.arange(ITEMS) % 2 == 0, 0.5, 0.25)
    guesser = solved(112)  # 0.373
    assert judged(guesser, guesser, chance) is True
    assert judged(guesser, guesser, np.full(ITEMS, 0.25)) is False


def test_a_side_without_an_interval_is_not_judged() -> None:
    nan = Estimate(0.0, math.nan, math.nan, 0, "items", "paired bootstrap")
    ok = Estimate(0.01, -0.02, 0.04, 300, "items", "paired bootstrap")
    assert differs_from_chance([nan]) is None and differs_from_chance([]) is None
    assert row_at_chance([nan], [ok]) is None
    assert row_at_chance([ok], [ok]) is True


def test_across_seeds_a_side_differs_from_chance_only_where_both_intervals_exclude_zero() -> None:
    """Seeds above chance on their items, one by a lot and two barely: the t interval over three seeds is wide and
    contains 0, so the side is not shown to differ from chance; three seeds well above chance do differ."""
    chance = np.full(ITEMS, 1 / 3)
    scattered = [(solved(n, start=7 * i), chance) for i, n in enumerate((100, 102, 240))]
    intervals = seeds_vs_chance(scattered, resamples=2000, seed=0)
    assert [i.unit for i in intervals] == ["seeds×items", "seeds"]
    assert differs_from_chance(intervals) is False
    learned = [(solved(n, start=7 * i), chance) for i, n in enumerate((235, 240, 245))]
    assert differs_from_chance(seeds_vs_chance(learned, resamples=2000, seed=0)) is True
    assert row_at_chance(intervals, intervals) is True


def test_a_curve_point_is_at_chance_within_a_guessers_range() -> None:
    chance = np.full(ITEMS, 1 / 3)
    low, high = guesser_range(chance)
    half = 1.959964 * math.sqrt(ITEMS * (1 / 3) * (2 / 3)) / ITEMS
    assert (low, high) == pytest.approx((1 / 3 - half, 1 / 3 + half))

    def band(mean: float | None) -> dict[str, float | int | None]:
        return {"mean": mean, "low": None, "high": None, "n": 1}

    assert curve_at_chance(band(0.30), band(0.36), chance) is True  # one seed: judged all the same
    assert curve_at_chance(band(0.30), band(0.60), chance) is False
    assert curve_at_chance(band(0.30), band(None), chance) is None
    assert curve_at_chance(band(0.30), band(0.30), None) is None


def test_task_rows_flag_the_task_at_chance_and_never_bits_per_byte() -> None:
    tasks = ["guessing_mc", "learned_mc", "gold_bpb"]
    scores = {"guessing_mc": (solved(90), solved(108)), "learned_mc": (solved(90), solved(240))}
    results = {
        (c, t): accuracy_result(c, t, s[i]) for t, s in scores.items() for i, c in enumerate((REFERENCE, CANDIDATE))
    }
    for i, c in enumerate((REFERENCE, CANDIDATE)):
        samples = [
            {"doc_id": d, "filter": "none", "metrics": ["bits_per_byte"], "bits_per_byte": (-200.0 - i, 100.0)}
            for d in range(ITEMS)
        ]
        results[(c, "gold_bpb")] = result(c, "gold_bpb", {"bits_per_byte,none": 0.3 + 0.1 * i}, samples)
    three = {d: 3 for d in range(ITEMS)}
    choices = {"guessing_mc": three, "learned_mc": three, "gold_bpb": three}  # bpb: choices never make it chance
    settings = CompareSettings(tasks=tuple(tasks), bootstrap_resamples=1000)
    rows, _ = task_rows([PAIR], tasks, results, settings, choices)
    by_task = {r["task"]: r for r in rows}
    guessing, learned, bpb = by_task["guessing_mc"], by_task["learned_mc"], by_task["gold_bpb"]
    assert guessing["at_chance"] is True and guessing["chance"] == pytest.approx(1 / 3)
    assert guessing["excludes_zero"]  # the Δ alone would read as a finding: the flag is what keeps it from one
    assert learned["at_chance"] is False and learned["chance"] == pytest.approx(1 / 3)
    assert bpb["chance"] is None and bpb["at_chance"] is None
    # Without choice counts nothing is judged, and the Δ statistics are the same as with them.
    plain, _ = task_rows([PAIR], tasks, results, settings)
    assert all(r["chance"] is None and r["at_chance"] is None for r in plain)
    assert [(r["mean"], r["low"], r["high"]) for r in plain] == [(r["mean"], r["low"], r["high"]) for r in rows]


# ---- compare end to end: the flag in the JSON, the report's tables and legend; the one-seed caveat ---------------


@pytest.fixture
def cached_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every result must come from the cache: evaluating raises EvaluationBlocked."""
    block_evaluation(monkeypatch)


def guessing_study(root: Path, cache: Path, seeds: tuple[int, ...]) -> list[Path]:
    """AdamW and Nexus runs crossing 5.0 and 4.5 whose every checkpoint guesses TASK (3 choices, chance 1/3: 30% and
    36% of 300 items, Nexus solving AdamW's items and 18 more, so Δ's item CI excludes 0) and has learned OTHER_TASK
    (80% and 85%)."""
    runs = []
    for seed in seeds:
        for optimizer, losses in (("adamw", [5.6, 4.998, 4.8, 4.497, 4.3]), ("nexus", [5.5, 4.995, 4.75, 4.499, 4.35])):
            run = make_run(root, optimizer, seed, losses, targets=(5.0, 4.5), crossings={1: 5.0, 3: 4.5})
            runs.append(run)
            nexus = optimizer == "nexus"
            for ckpt in sorted(run.glob("ckpt-*")):
                write_result(cache, ckpt, TASK, solved(108 if nexus else 90, start=11 * seed))
                write_result(cache, ckpt, OTHER_TASK, solved(255 if nexus else 240, start=11 * seed))
    return runs


def compare_guessing(tmp_path: Path, seeds: tuple[int, ...]) -> tuple[CompareResults, str]:
    runs = guessing_study(tmp_path / "runs", tmp_path / "cache", seeds)
    settings = CompareSettings(tasks=(TASK, OTHER_TASK), bootstrap_resamples=1000)
    options = CompareOptions(cache_dir=tmp_path / "cache", out=tmp_path / "out", show=False, progress=False)
    results = compare(runs, settings, options)
    return results, (tmp_path / "out" / "report.md").read_text()


def table_rows(report: str, heading: str) -> list[dict[str, str]]:
    """The rows of the Markdown table under `## heading`, as header → cell."""
    lines = report.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0].splitlines()
    table = [line for line in lines if line.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in table[2:]]


def test_one_seed_report_flags_the_task_at_chance_and_says_what_one_seed_cannot_show(
    tmp_path: Path, cached_only: None
) -> None:
    results, report = compare_guessing(tmp_path, seeds=(0,))
    rows = {(r["target"], r["task"]): r for r in results["tasks"]}
    assert all(rows[(t, TASK)]["at_chance"] and rows[(t, TASK)]["excludes_zero"] for t in (5.0, 4.5))
    assert all(rows[(t, TASK)]["chance"] == pytest.approx(1 / 3) for t in (5.0, 4.5))
    assert not any(rows[(t, OTHER_TASK)]["at_chance"] for t in (5.0, 4.5))
    downstream = table_rows(report, "Downstream, conditional on the training seed")
    flagged = {r["task"]: r["items CI excludes 0"] for r in downstream}
    assert flagged == {TASK: "at chance", OTHER_TASK: "yes"}  # "yes" for TASK would read as a finding
    assert {r["chance"] for r in downstream} == {"0.3333"}
    overlap = {r["task"] for r in table_rows(report, "Solved-item overlap")}
    assert overlap == {f"{TASK} (at chance)", OTHER_TASK}
    assert "At chance: neither side's score is distinguishable from chance" in report
    # The one-seed caveat, in words beside the table, and the header that says its interval is over items.
    assert "One training seed per side" in report and "not that the optimizer causes the difference" in report
    assert "≥ 2 training seeds per side" in report and "| CI excludes 0 " not in report.split("## Solved")[0]
    # The rest of the one-seed report as it was: one OOD table, without a per-seed/mean split.
    assert "## Out-of-distribution loss\n" in report and "Out-of-distribution loss, per seed" not in report


def test_several_seeds_flag_the_headline_and_keep_their_report_without_the_one_seed_caveat(
    tmp_path: Path, cached_only: None
) -> None:
    results, report = compare_guessing(tmp_path, seeds=(0, 1))
    across = {(r["target"], r["task"]): r for r in results["tasks"] if r["seed"] == "all"}
    assert all(across[(t, TASK)]["at_chance"] is True for t in (5.0, 4.5))
    assert all(across[(t, OTHER_TASK)]["at_chance"] is False for t in (5.0, 4.5))
    headline = {r["task"]: r["both CIs exclude 0"] for r in table_rows(report, "Downstream across seeds (headline)")}
    assert headline[TASK] == "at chance" and headline[OTHER_TASK] in ("yes", "no")
    per_seed = table_rows(report, "Downstream per seed, conditional on the training seed")
    assert {r["CI excludes 0"] for r in per_seed if r["task"] == TASK} == {"at chance"}
    curves = results["loss_curves"]["deltas"]
    assert {d["at_chance"] for d in curves if d["kind"] == "task" and d["name"] == TASK} == {True}
    assert {d["at_chance"] for d in curves if d["kind"] == "task" and d["name"] == OTHER_TASK} == {False}
    curve_cells = {
        r["CI excludes 0"] for r in table_rows(report, "Downstream vs held-out loss (curves)") if r["task"] == TASK
    }
    assert curve_cells == {"at chance"}
    assert "One training seed per side" not in report and "items CI excludes 0" not in report


def test_results_written_before_the_chance_check_say_so_and_flag_nothing(tmp_path: Path, cached_only: None) -> None:
    results, _ = compare_guessing(tmp_path, seeds=(0,))
    old = copy.deepcopy(results)
    for row in old["tasks"]:
        del row["chance"], row["at_chance"]
    for delta in old["loss_curves"]["deltas"]:
        delta.pop("chance", None), delta.pop("at_chance", None)
    md = render_markdown(old, "old")
    assert "not recorded in these results" in md and "at chance" not in md
    assert "chance" not in table_rows(md, "Downstream, conditional on the training seed")[0]
