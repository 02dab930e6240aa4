"""Leaderboards: generated from their JSON, `check` catches hand edits and strays, `refresh` restores them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nexus_eval.cli import app
from nexus_eval.comparison import CompareOptions, CompareSettings, compare
from nexus_eval.comparison.leaderboard import check, refresh, render, write_leaderboard
from nexus_eval.errors import NexusError
from tests.comparison.synthetic_runs import TASK, block_evaluation, make_study


@pytest.fixture()
def board(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """leaderboards/demo.{json,md,png} written by compare --leaderboard demo from cached synthetic results."""
    block_evaluation(monkeypatch)
    runs = make_study(tmp_path / "runs", tmp_path / "cache", seeds=(0, 1), bonus=0.7)
    directory = tmp_path / "leaderboards"
    compare(
        runs,
        CompareSettings(tasks=(TASK,), bootstrap_resamples=1000),
        CompareOptions(
            cache_dir=tmp_path / "cache", out=tmp_path / "out", leaderboard="demo", leaderboard_dir=directory,
            show=False, progress=False,
        ),
    )  # fmt: skip
    return directory


def test_compare_writes_a_consistent_generated_leaderboard(board: Path) -> None:
    md = (board / "demo.md").read_text()
    assert md.splitlines()[2].startswith("> Generated from `demo.json` by `nexus-eval leaderboard refresh`")
    assert (board / "demo.png").read_bytes()[:4] == b"\x89PNG"
    assert md == render("demo", json.loads((board / "demo.json").read_text()))
    assert not re.search(r"\d{4}-\d{2}-\d{2}", md)  # no dates or timestamps that change run to run
    assert check(board) == []


def test_check_detects_a_hand_edit_and_refresh_restores(board: Path) -> None:
    md = board / "demo.md"
    original = md.read_text()
    md.write_text(original.replace("| yes", "| no ", 1) if "| yes" in original else original + "edited\n")
    (problem,) = check(board)
    assert "demo.md" in problem and "refresh" in problem
    runner = CliRunner()
    result = runner.invoke(app, ["leaderboard", "check", "--dir", str(board)])
    assert result.exit_code == 1 and "demo.md" in result.output
    assert runner.invoke(app, ["leaderboard", "refresh", "--dir", str(board)]).exit_code == 0
    assert md.read_text() == original and check(board) == []
    assert runner.invoke(app, ["leaderboard", "check", "--dir", str(board)]).exit_code == 0


def test_a_markdown_without_json_or_a_json_without_markdown_is_reported(board: Path) -> None:
    (board / "stray.md").write_text("# hand-written\n")
    (board / "demo.md").unlink()
    problems = check(board)
    assert any("stray.md" in p and "no stray.json" in p for p in problems)
    assert any("demo.md: missing" in p for p in problems)
    refresh(board)
    assert [p for p in check(board) if "demo" in p] == []


def test_malformed_results_json_is_a_one_line_error(board: Path) -> None:
    bad = board / "broken.json"
    bad.write_text('{"schema": 1, "kind": "nexus-eval-compare"')
    with pytest.raises(NexusError, match="broken.json"):
        check(board)
    bad.write_text(json.dumps({"schema": 1, "kind": "nexus-eval-compare", "settings": {}}))
    result = CliRunner().invoke(app, ["leaderboard", "refresh", "--dir", str(board)])
    assert result.exit_code == 2 and "broken.json" in result.output and result.output.strip().count("\n") == 0


def test_bad_leaderboard_name(board: Path) -> None:
    results = json.loads((board / "demo.json").read_text())
    with pytest.raises(NexusError, match="--leaderboard"):
        write_leaderboard(results, "../escape", board)


@pytest.mark.parametrize("name", ["../escape", "/abs/board", "demo\n", ".hidden", "a/b", ""])
def test_a_bad_leaderboard_name_is_refused_before_anything_runs(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name is checked first: no evaluation, no report, nothing written outside the leaderboards directory."""
    block_evaluation(monkeypatch)
    runs = make_study(tmp_path / "runs", tmp_path / "cache", seeds=(0,), bonus=0.7)
    options = CompareOptions(cache_dir=tmp_path / "cache", out=tmp_path / "out", leaderboard=name,
                             leaderboard_dir=tmp_path / "boards", show=False, progress=False)  # fmt: skip
    with pytest.raises(NexusError, match="--leaderboard"):
        compare(runs, CompareSettings(tasks=(TASK,), bootstrap_resamples=1000), options)
    assert not (tmp_path / "out").exists() and not (tmp_path / "boards").exists()
    assert not (tmp_path / "escape.json").exists()
