"""`compare --disagreements` on synthetic runs with cached results and fake samples: the listed items are exactly
those the matched checkpoints score differently, with both answers; Markdown beside the report and the leaderboard,
a capped terminal table, --task, interpolated sides."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from nexus_eval.cli import app
from nexus_eval.comparison import CompareOptions, CompareSettings, compare
from nexus_eval.comparison.disagreements import find_disagreements, print_disagreements
from nexus_eval.comparison.leaderboard import check
from nexus_eval.comparison.match import load_runs, match
from nexus_eval.comparison.pipeline import gather_results
from nexus_eval.errors import ComparisonError
from nexus_eval.evaluation import EvalSettings, cached_results
from tests.comparison.synthetic_runs import (
    CHOICES,
    OTHER_TASK,
    TASK,
    block_evaluation,
    fake_answer,
    make_run,
    make_study,
    write_result,
)

ITEMS = 60


@pytest.fixture(autouse=True)
def no_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    block_evaluation(monkeypatch)


def options(tmp_path: Path, **kwargs: object) -> CompareOptions:
    chosen = {"cache_dir": tmp_path / "cache", "out": tmp_path / "out", "show": False, "progress": False}
    return CompareOptions(**(chosen | {"disagreements": True} | kwargs))


def settings(*tasks: str, **kwargs: object) -> CompareSettings:
    return CompareSettings(**({"tasks": tasks, "bootstrap_resamples": 1000} | kwargs))


def item_scores(cache: Path, ckpt: Path, task: str) -> dict[int, float]:
    (result,) = cached_results([ckpt], EvalSettings(tasks=(task,), cache_dir=cache))
    metric = next(iter(result["item_scores"]))
    return dict(zip(result["doc_ids"], result["item_scores"][metric], strict=True))


def sections(markdown: str) -> dict[str, list[list[str]]]:
    """Heading → the table rows under it (cells), from a disagreements Markdown."""
    found: dict[str, list[list[str]]] = {}
    for block in markdown.split("\n## ")[1:]:
        heading, _, body = block.partition("\n")
        rows = [line for line in body.splitlines() if line.startswith("| ") and not line.startswith("| doc id")]
        found[heading] = [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows]
    return found


def test_listed_items_are_exactly_those_scored_differently_with_both_answers(tmp_path: Path) -> None:
    runs = make_study(tmp_path / "runs", tmp_path / "cache", bonus=0.7, items=ITEMS)
    compare(runs, settings(TASK), options(tmp_path))
    tables = sections((tmp_path / "out" / "disagreements.md").read_text())
    assert list(tables) == [f"target 5, seed 0: {TASK} (acc,none)", f"target 4.5, seed 0: {TASK} (acc,none)"]
    for heading, rows, step in zip(tables, tables.values(), ("ckpt-000020", "ckpt-000040"), strict=True):
        adamw = item_scores(tmp_path / "cache", runs[0] / step, TASK)
        nexus = item_scores(tmp_path / "cache", runs[1] / step, TASK)
        differ = [d for d in adamw if adamw[d] != nexus[d]]
        assert 0 < len(differ) < ITEMS, heading  # the study has both agreements and disagreements
        assert [int(row[0]) for row in rows] == differ, heading  # 0/1 scores: all differ by 1, so by doc_id
        for doc_id, target, a_answer, a_score, n_answer, n_score in rows:
            d = int(doc_id)
            gold = d % CHOICES
            assert target == f"({gold}) {fake_answer(d, gold).strip()}"
            assert (float(a_score), float(n_score)) == (adamw[d], nexus[d])
            assert (a_answer == target) == (adamw[d] == 1.0) and (n_answer == target) == (nexus[d] == 1.0)
            assert a_answer != n_answer
    summary = f"AdamW `tiny-adamw-s0/ckpt-000020` vs Nexus `tiny-nexus-s0/ckpt-000020`: {len(tables[heading])}"
    assert summary.replace("000020", "000040") in (tmp_path / "out" / "disagreements.md").read_text()


def test_continuous_scores_list_every_difference_largest_first(tmp_path: Path) -> None:
    """bits per byte: items with equal scores are left out, the rest ordered by |Δ| then doc_id."""
    adamw_run = make_run(tmp_path / "runs", "adamw", 0, [5.0], targets=(5.0,), crossings={0: 5.0})
    nexus_run = make_run(tmp_path / "runs", "nexus", 0, [5.002], targets=(5.0,), crossings={0: 5.0})
    adamw = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    nexus = np.array([1.0, 2.5, 2.0, 4.0, 4.5, 3.0])  # Δ: 0, +.5, −1, 0, −.5, −3
    metric = "bits_per_byte,none"
    for run, scores in ((adamw_run, adamw), (nexus_run, nexus)):
        write_result(tmp_path / "cache", run / "ckpt-000010", "arith_gold_bpb", scores, metric=metric)
    runs = load_runs([adamw_run, nexus_run])
    pairs, _ = match(runs)
    results = gather_results(runs, pairs, ["arith_gold_bpb"], ["arith_gold_bpb"], settings(), options(tmp_path))
    (group,) = find_disagreements(pairs, ["arith_gold_bpb"], results, tmp_path / "cache")
    assert [d.doc_id for d in group.items] == [5, 2, 1, 4] and group.compared == 6 and group.metric == metric
    assert group.better("reference") == 3 and group.better("candidate") == 1  # the fake result says higher is better


def test_markdown_beside_the_leaderboard_and_check_accepts_it(tmp_path: Path) -> None:
    runs = make_study(tmp_path / "runs", tmp_path / "cache", bonus=0.7, items=ITEMS)
    board = tmp_path / "leaderboards"
    compare(runs, settings(TASK), options(tmp_path, leaderboard="demo", leaderboard_dir=board))
    beside = (board / "demo.disagreements.md").read_text()
    assert "> Generated from the eval samples" in beside and "--disagreements" in beside
    assert sections(beside) == sections((tmp_path / "out" / "disagreements.md").read_text())
    assert not re.search(r"\d{4}-\d{2}-\d{2}", beside)
    assert check(board) == []  # generated from samples, not from the JSON: accepted, not compared
    (board / "demo.disagreements.md").write_text("edited\n")
    assert check(board) == []
    (board / "stray.disagreements.md").write_text("# hand-written\n")
    (problem,) = check(board)
    assert "stray.disagreements.md" in problem and "no stray.json" in problem


def test_task_selects_one_task_and_bad_task_flags_fail_early(tmp_path: Path) -> None:
    runs = make_study(tmp_path / "runs", tmp_path / "cache", bonus=0.7, tasks=(TASK, OTHER_TASK), items=ITEMS)
    compare(runs, settings(TASK, OTHER_TASK), options(tmp_path, disagreement_task=OTHER_TASK))
    tables = sections((tmp_path / "out" / "disagreements.md").read_text())
    assert [heading.split(": ")[1].split(" ")[0] for heading in tables] == [OTHER_TASK, OTHER_TASK]
    for bad, message in (({"disagreement_task": "arc_easy"}, "not among"), ({"disagreements": False}, "only with")):
        out = tmp_path / "bad"
        with pytest.raises(ComparisonError, match=f"--task .*{message}"):
            compare(runs, settings(TASK), options(tmp_path, out=out, **({"disagreement_task": TASK} | bad)))
        assert not out.exists()


def test_cli_prints_a_capped_table_per_pair_and_task(tmp_path: Path) -> None:
    runs = make_study(tmp_path / "runs", tmp_path / "cache", bonus=0.7, items=150)
    args = ["compare", *map(str, runs), "--match-loss", "--tasks", TASK, "--cache", str(tmp_path / "cache")]
    args += ["--out", str(tmp_path / "out"), "--resamples", "1000", "--quiet", "--disagreements", "--task", TASK]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.count("disagreements · target") == 2
    total = sum(len(rows) for rows in sections((tmp_path / "out" / "disagreements.md").read_text()).values())
    more = [int(n) for n in re.findall(r"(\d+) more in", result.stdout)]
    assert total > 40 and sum(more) == total - 2 * 20  # 20 rows per table, the rest counted
    bad = CliRunner().invoke(app, [*args[:-1], "no_such_task"])
    assert bad.exit_code == 2 and bad.stderr.strip().count("\n") == 0 and "--task no_such_task" in bad.stderr


def test_interpolated_sides_show_their_nearer_checkpoint(tmp_path: Path) -> None:
    runs = make_study(tmp_path / "runs", tmp_path / "cache", bonus=0.7, items=ITEMS)
    loaded = load_runs(runs)
    pairs, _ = match(loaded, targets=[4.85], interpolate=True)  # AdamW weight .75 and Nexus .59 on ckpt-000030
    chosen = settings(TASK, mode="interpolate", targets=(4.85,))
    results = gather_results(loaded, pairs, [TASK], [TASK], chosen, options(tmp_path))
    (group,) = find_disagreements(pairs, [TASK], results, tmp_path / "cache")
    assert (group.reference, group.candidate) == ("tiny-adamw-s0/ckpt-000030", "tiny-nexus-s0/ckpt-000030")
    adamw = item_scores(tmp_path / "cache", runs[0] / "ckpt-000030", TASK)
    nexus = item_scores(tmp_path / "cache", runs[1] / "ckpt-000030", TASK)
    assert [d.doc_id for d in group.items] == [d for d in adamw if adamw[d] != nexus[d]]
    shown = Console(record=True, width=200)
    print_disagreements([group], tmp_path / "d.md", shown, rows=3)
    text = shown.export_text()
    assert f"{len(group.items) - 3} more in" in text and text.count("(") >= 3
