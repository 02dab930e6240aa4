"""The lr sweep of `make optimizers`: scripts/lr_sweep.py chooses each optimizer's lr from its sweep runs (a diverged
lr loses, a hole in the sweep is an error), and `compare --lr-sweep` checks that every run trained at its optimizer's
chosen lr, keeps the sweep in results.json and the leaderboard, and shows it as a table."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from nexus_eval.comparison import CompareOptions, CompareSettings, compare
from nexus_eval.comparison.leaderboard import refresh
from nexus_eval.errors import ComparisonError
from tests.comparison.synthetic_runs import TASK, block_evaluation
from tests.comparison.test_compare_variants import set_optim, variant_runs
from tests.conftest import REPO_ROOT

spec = importlib.util.spec_from_file_location("lr_sweep_script", REPO_ROOT / "scripts" / "lr_sweep.py")
assert spec is not None and spec.loader is not None
lr_sweep_script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lr_sweep_script)

LRS = ["0.0015", "0.003", "0.006"]
# optimizer → lr → final held-out loss per seed (None: the run diverged)
LOSSES = {
    "adamw": {"0.0015": [5.0, 5.1], "0.003": [4.8, 4.9], "0.006": [4.9, 5.0]},
    "nexus:muon": {"0.0015": [5.2, 5.2], "0.003": [4.9, 4.9], "0.006": [None, 4.6]},
    "muon": {"0.0015": [5.3, 5.3], "0.003": [5.0, 5.0], "0.006": [4.7, 4.7]},
}


def sweep_runs(root: Path) -> Path:
    for opt, by_lr in LOSSES.items():
        for lr, losses in by_lr.items():
            for seed, loss in enumerate(losses):
                run = root / f"lr{lr}" / f"study-{opt.replace(':', '+')}-s{seed}"
                run.mkdir(parents=True)
                if loss is None:
                    (run.parent / f"{run.name}.failed").write_text("stopped")
                    continue
                rows = [{"step": 50, "val_loss": loss + 1}, {"step": 100, "val_loss": loss}]
                (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def run_script(root: Path, out: Path, *optimizers: str) -> int:
    args = ["--runs", str(root), "--optimizers", *optimizers, "--lrs", *LRS, "--seeds", "0", "1", "--out", str(out)]
    try:
        return lr_sweep_script.main(args)
    except SystemExit as e:
        return int(e.code or 0)


def test_the_sweep_chooses_the_lowest_mean_loss_and_a_diverged_lr_loses(tmp_path: Path) -> None:
    root = sweep_runs(tmp_path / "sweep")
    assert run_script(root, tmp_path / "sweep.json", *LOSSES) == 0
    sweep = json.loads((tmp_path / "sweep.json").read_text())
    assert sweep["chosen"] == {"adamw": 0.003, "nexus:muon": 0.003, "muon": 0.006}
    assert sweep["mean"]["nexus:muon"]["0.006"] is None  # one seed diverged: its mean is no loss at all
    assert sweep["mean"]["adamw"]["0.003"] == pytest.approx(4.85) and sweep["steps"] == 100


def test_a_hole_in_the_sweep_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = sweep_runs(tmp_path / "sweep")
    (root / "lr0.003" / "study-muon-s1" / "metrics.jsonl").unlink()
    assert run_script(root, tmp_path / "sweep.json", *LOSSES) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "study-muon-s1/metrics.jsonl" in err
    assert not (tmp_path / "sweep.json").exists()


def sweep_record(chosen: dict[str, float]) -> dict:
    mean = {o: {lr: (None if o == "nexus:muon" and lr == "0.006" else 4.0) for lr in LRS} for o in chosen}
    return {"optimizers": list(chosen), "lrs": [float(x) for x in LRS], "seeds": [0, 1], "steps": 100,
            "metric": "held-out mixture loss", "mean": mean, "chosen": chosen}  # fmt: skip


def test_compare_keeps_the_sweep_and_checks_every_runs_lr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    block_evaluation(monkeypatch)
    runs = variant_runs(tmp_path / "runs", tmp_path / "cache", ("adamw", "muon"))
    set_optim(runs[1], lr=0.006)
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(sweep_record({"adamw": 0.003, "muon": 0.006})))
    board = tmp_path / "leaderboards"
    settings = CompareSettings(tasks=(TASK,), bootstrap_resamples=200, allow_mismatch=("optim.lr",))

    def options(out: str, sweep: Path) -> CompareOptions:
        return CompareOptions(cache_dir=tmp_path / "cache", out=tmp_path / out, show=False, progress=False,
                              lr_sweep=sweep, leaderboard="optimizers", leaderboard_dir=board)  # fmt: skip

    results = compare(runs, settings, options("out", path))
    assert results["lr_sweep"]["chosen"] == {"adamw": 0.003, "muon": 0.006}
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Learning rates" in report and "| Muon " in report and "**4.0000**" in report
    assert "at the grid's edge" in report  # 0.006 is the largest lr tried
    written = (board / "optimizers.md").read_text()
    assert "## Learning rates" in written
    (board / "optimizers.md").unlink()
    refresh(board)  # the table comes back from the JSON alone
    assert (board / "optimizers.md").read_text() == written

    path.write_text(json.dumps(sweep_record({"adamw": 0.003, "muon": 0.003})))  # muon's run is not at its lr
    with pytest.raises(ComparisonError, match=r"run tiny-muon-s0 trained at optim.lr 0.006, but the lr sweep chose"):
        compare(runs, settings, options("refused", path))
    assert not (tmp_path / "refused").exists()
    broken = sweep_record({"adamw": 0.003, "muon": 0.006})
    broken["chosen"]["muon"] = 0.01
    path.write_text(json.dumps(broken))
    with pytest.raises(ComparisonError, match=r"--lr-sweep .*'chosen' of muon must be one of 'lrs'"):
        compare(runs, settings, options("refused", path))
    assert math.isfinite(results["lr_sweep"]["lrs"][0])
