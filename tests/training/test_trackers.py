"""Training curves beside metrics.jsonl (nexus_eval/training/trackers.py): TensorBoard event files hold the values
metrics.jsonl holds at the same steps, a resumed run shows no step twice, a machine without tensorboard trains
anyway with one line saying how to get the curves, and W&B writes an offline run under the run directory that a
resume continues under the same id."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nexus_eval.cli.app import app
from nexus_eval.errors import RecipeError
from nexus_eval.training import train
from nexus_eval.training.trackers import ReportTo, installed, resolve_report_to, scalars
from tests.conftest import write_recipe

needs_tensorboard = pytest.mark.skipif(not installed("tensorboard"), reason="pip install 'nexus-eval[tensorboard]'")
needs_wandb = pytest.mark.skipif(not installed("wandb"), reason="pip install 'nexus-eval[wandb]'")


def metrics_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag → [(step, value)] as TensorBoard shows them (its reader applies purge_step across event files)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})  # 0: keep every event
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_a_metrics_row_becomes_tags() -> None:
    row = {
        "step": 4,
        "tokens": 1536,
        "lr": 0.003,
        "train_loss": 6.1,
        "tokens_per_s": 900.0,
        "peak_memory_mib": 512.0,
        "val_loss": 6.0,
        "val_loss_per_source": {"text": 5.9, "math": 6.1},
        "ood_loss": {"fortunes": 6.5},
        "grad_cosine": {"sources": ["math", "text"], "matrix": [[1.0, 0.25], [0.25, 1.0]], "mean_offdiag": 0.25},
        "grad_norm": 1.5,  # a field added to the row later: shown without a change to the table
    }
    assert scalars(row) == {
        "train/tokens": 1536.0,
        "train/lr": 0.003,
        "train/loss": 6.1,
        "perf/tokens_per_s": 900.0,
        "perf/peak_memory_mib": 512.0,
        "heldout/mixture": 6.0,
        "heldout/text": 5.9,
        "heldout/math": 6.1,
        "ood/fortunes": 6.5,
        "grad_cosine/mean_offdiag": 0.25,
        "grad_cosine/math-text": 0.25,
        "train/grad_norm": 1.5,
    }


def test_report_to_values() -> None:
    assert resolve_report_to("none") == ReportTo()
    auto = resolve_report_to("auto")
    if installed("tensorboard"):
        assert auto == ReportTo(("tensorboard",))
        assert resolve_report_to(" TensorBoard, tensorboard") == ReportTo(("tensorboard",))
    else:
        assert not auto.trackers and "pip install 'nexus-eval[tensorboard]'" in (auto.hint or "")
    for bad in ("tensorbord", "", "auto,wandb", "tensorboard,mlflow"):
        with pytest.raises(RecipeError, match="^--report-to "):
            resolve_report_to(bad)


def test_a_bad_report_to_is_one_line_and_exit_2(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, tmp_path / "no-data")  # refused before the data is read
    result = CliRunner().invoke(app, ["train", str(recipe), "--optimizer", "adamw", "--report-to", "tensorbord"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: --report-to 'tensorbord': expected auto, none, all or a comma list of tensorboard, wandb"
    ]


@needs_tensorboard
def test_tensorboard_curves_match_metrics_and_a_resume_shows_no_step_twice(tiny_data_dir: Path, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, tiny_data_dir)  # 6 steps; metrics rows at 2, 4, 6; checkpoints at 2, 3, 6
    run = train(recipe, "adamw", out=tmp_path / "runs", progress=False, report_to=ReportTo(("tensorboard",)))
    rows = metrics_rows(run)
    assert [r["step"] for r in rows] == [2, 4, 6]
    curves = tensorboard_scalars(run)
    assert set(curves) == set(scalars(rows[0]))
    for tag, points in curves.items():
        assert [step for step, _ in points] == [2, 4, 6], tag
    at = {tag: dict(points) for tag, points in curves.items()}
    for row in rows:  # the same numbers (TensorBoard keeps float32)
        step = row["step"]
        assert at["train/loss"][step] == pytest.approx(row["train_loss"], rel=1e-6)
        assert at["train/lr"][step] == pytest.approx(row["lr"], rel=1e-6)
        assert at["train/tokens"][step] == row["tokens"]
        assert at["heldout/mixture"][step] == pytest.approx(row["val_loss"], rel=1e-6)
        for source, loss in row["val_loss_per_source"].items():
            assert at[f"heldout/{source}"][step] == pytest.approx(loss, rel=1e-6)
        for domain, loss in row["ood_loss"].items():
            assert at[f"ood/{domain}"][step] == pytest.approx(loss, rel=1e-6)
        assert at["grad_cosine/mean_offdiag"][step] == pytest.approx(row["grad_cosine"]["mean_offdiag"], rel=1e-5)

    # Killed after step 3's checkpoint, its event file already holding steps 4 and 6: the resumed run logs them again
    shutil.rmtree(run / "ckpt-000006")
    train(recipe, "adamw", out=tmp_path / "runs", resume=True, progress=False, report_to=ReportTo(("tensorboard",)))
    assert len(list((run / "tensorboard").iterdir())) == 2  # one event file per process
    again = tensorboard_scalars(run)
    assert set(again) == set(curves)
    for tag, points in again.items():
        assert [step for step, _ in points] == [2, 4, 6], tag  # purge_step hid the killed run's 4 and 6
    assert dict(again["train/loss"]) == pytest.approx(at["train/loss"], rel=1e-6)  # resume is exact
    assert [r["step"] for r in metrics_rows(run)] == [2, 4, 6]


def test_without_tensorboard_training_works_and_says_how_to_get_it(
    tiny_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules makes every import of the name fail, as on a machine without the package (torch's writer
    # too, which an earlier test of this process may have imported)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    recipe = write_recipe(tmp_path, tiny_data_dir)
    args = ["train", str(recipe), "--optimizer", "adamw", "--out", str(tmp_path / "runs"), "--steps", "2", "--quiet"]

    done = CliRunner().invoke(app, args)  # --report-to auto
    assert done.exit_code == 0, done.output[-3000:]
    assert done.stderr.strip().splitlines() == [
        "warning: no TensorBoard curves (pip install 'nexus-eval[tensorboard]' to get them; --report-to none)"
    ]
    run = tmp_path / "runs" / "t-adamw-s0"
    assert not (run / "tensorboard").exists() and [r["step"] for r in metrics_rows(run)] == [2]
    refused = CliRunner().invoke(app, [*args, "--report-to", "tensorboard"])  # asked for by name: refused at once
    assert refused.exit_code == 2
    assert refused.output.strip().splitlines() == [
        "error: --report-to tensorboard: the tensorboard package is not installed "
        "(pip install 'nexus-eval[tensorboard]')"
    ]


@needs_wandb
def test_wandb_writes_an_offline_run_in_the_run_dir_and_a_resume_continues_it(
    tiny_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wandb

    monkeypatch.delenv("WANDB_MODE", raising=False)  # the default: offline
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there: no network to reach
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))  # the run dir wins over wandb's own setting
    recipe = write_recipe(tmp_path, tiny_data_dir)
    report = ReportTo(("wandb",))
    try:
        run = train(recipe, "adamw", out=tmp_path / "runs", progress=False, report_to=report)
        run_id = (run / "wandb" / "run_id").read_text().strip()
        shutil.rmtree(run / "ckpt-000006")  # killed after step 3's checkpoint
        train(recipe, "adamw", out=tmp_path / "runs", resume=True, progress=False, report_to=report)
    finally:
        wandb.teardown()  # ends the wandb service this process started, which closes the runs' files
    assert (run / "wandb" / "run_id").read_text().strip() == run_id
    first, resumed = sorted((run / "wandb").glob("offline-run-*"))  # one per process, both of the run's id
    assert first.name.endswith(run_id) and resumed.name.endswith(run_id)
    history = (first / f"run-{run_id}.wandb").read_bytes()
    rows = metrics_rows(run)
    for tag in scalars(rows[0]):
        assert tag.encode() in history, tag
    assert json.dumps(rows[-1]["train_loss"]).encode() in history  # W&B stores values as JSON text
    assert b"optimizer_hparams" in history  # the config: run.json
    assert json.dumps(rows[-1]["train_loss"]).encode() in (resumed / f"run-{run_id}.wandb").read_bytes()
    assert not (tmp_path / "elsewhere").exists()
