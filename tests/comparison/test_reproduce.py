"""`leaderboard reproduce` for real: a leaderboard made from trained tiny runs is rebuilt from its JSON alone (data
build, training, evaluation, comparison) in an empty directory and must come out equal; then a changed number with
identical provenance must fail, and a changed provenance field must be printed, not failed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nexus_eval.cli import app
from nexus_eval.comparison.reproduce import EQUAL, NOT_DETERMINISTIC, PROVENANCE_DIFFERS, reproduce

TASK = "arith_steps1_mc"


@pytest.fixture(scope="module")
def committed(tiny_runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """leaderboards/t.json from compare over the tiny runs (a real hf evaluation of the matched pair)."""
    root = tmp_path_factory.mktemp("committed")
    args = [str(tiny_runs["adamw"]), str(tiny_runs["nexus"]), "--match-loss", "--targets", "6", "--tolerance", "50"]
    args += ["--tasks", TASK, "--limit", "4", "--cache", str(root / "cache"), "--out", str(root / "report")]
    args += ["--leaderboard", "t", "--resamples", "200", "--quiet"]
    import os

    cwd = os.getcwd()
    os.chdir(root)  # --leaderboard writes leaderboards/ under the working directory
    try:
        result = CliRunner().invoke(app, ["compare", *args])
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    return root / "leaderboards"


@pytest.mark.slow
def test_a_leaderboard_reproduces_from_its_json_alone(committed: Path, tmp_path: Path) -> None:
    results = json.loads((committed / "t.json").read_text())
    provenance = results["runs"][0]["provenance"]
    assert provenance["data_build"]["params"]["vocab_size"] == 512 and provenance["recipe"]["name"] == "t"
    assert provenance["training"]["device"]["cpu_capability"] and provenance["evaluation"][0]["backend"] == "hf"
    assert "## Provenance" in (committed / "t.md").read_text()

    rep = reproduce("t", tmp_path / "scratch", committed, progress=False)  # from nothing: data, runs, evals
    assert (tmp_path / "scratch" / "data" / "manifest.json").is_file()
    assert sorted(p.name for p in (tmp_path / "scratch" / "runs").iterdir()) == ["t-adamw-s0", "t-nexus-s0"]
    assert len(rep.numbers) > 10 and rep.differing == [], [vars(n) for n in rep.differing]
    assert rep.verdict == EQUAL and not any(rep.provenance.values()), rep.provenance

    # A number that differs with identical provenance: the code was not deterministic → exit 1.
    shutil.copytree(tmp_path / "scratch", tmp_path / "again")
    tampered = tmp_path / "boards"
    tampered.mkdir()
    row = next(r for r in results["tasks"] if r["task"] == TASK)
    row["mean"] += 0.125
    (tampered / "t.json").write_text(json.dumps(results))
    rep = reproduce("t", tmp_path / "again", tampered, progress=False)
    reproduce_args = [
        "leaderboard",
        "reproduce",
        "t",
        "--dir",
        str(tampered),
        "--out",
        str(tmp_path / "again"),
        "--quiet",
    ]
    assert rep.verdict == NOT_DETERMINISTIC and [n.where.endswith("mean") for n in rep.differing] == [True]
    cli = CliRunner().invoke(app, reproduce_args)
    assert cli.exit_code == 1 and "nondeterminism" in cli.output

    # The same difference with another torch recorded: printed, named, exit 0.
    for r in results["runs"]:
        r["provenance"]["training"]["libraries"]["torch"] = "0.0.1"
    (tampered / "t.json").write_text(json.dumps(results))
    cli = CliRunner().invoke(app, reproduce_args)
    assert cli.exit_code == 0, cli.output
    assert "training.libraries.torch" in cli.output and PROVENANCE_DIFFERS in cli.output


def test_a_leaderboard_without_provenance_is_refused(tmp_path: Path) -> None:
    board = tmp_path / "boards"
    board.mkdir()
    old = Path(__file__).resolve().parents[2] / "leaderboards" / "study.json"
    results = json.loads(old.read_text())
    for row in results["runs"]:
        row.pop("provenance", None)
    (board / "old.json").write_text(json.dumps(results))
    cli = CliRunner().invoke(
        app, ["leaderboard", "reproduce", "old", "--dir", str(board), "--out", str(tmp_path / "o")]
    )
    assert cli.exit_code == 2 and "records no provenance" in cli.output and "Traceback" not in cli.output
    assert not (tmp_path / "o").exists()  # refused before anything was built


def test_a_data_build_with_another_hash_is_reported_not_refused(tiny_data_dir: Path) -> None:
    """Source texts come from system packages that differ between machines: another hash is provenance, not an
    error (the verdict then says which field differs)."""
    from nexus_eval.comparison.reproduce import rebuild_data
    from nexus_eval.data import load_manifest

    manifest = load_manifest(tiny_data_dir)
    recorded = {"hash": "0" * 64, "params": manifest["params"], "tokenizer_hash": None}
    assert rebuild_data(recorded, tiny_data_dir, progress=False) == manifest["hash"]
