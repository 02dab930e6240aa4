"""A training run killed with SIGKILL (no cleanup runs) in the middle of a checkpoint write, or right after a metrics
row, resumes with --resume to exactly the uninterrupted run: the same checkpoints with the same weights, the same loss
curve in metrics.jsonl, and no half-written .ckpt-*.tmp directory left behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nexus_eval.training import train as train_in_process
from nexus_eval.training.checkpointer import Checkpointer
from nexus_eval.training.metrics_log import MEASURED_KEYS
from tests.conftest import write_recipe
from tests.processes import cli_process, kill_when

TIMEOUT_S = 180


def writing_a_later_checkpoint(seen: dict[str, tuple[int, int]]) -> bool:
    """A checkpoint after the first is being written: its temp dir exists (save_checkpoint renames it into place
    when complete)."""
    return "ckpt-000002" in seen and any(name.startswith(".ckpt-") and name.endswith(".tmp") for name in seen)


def metrics_row_after(size: int):
    def appended(seen: dict[str, tuple[int, int]]) -> bool:
        """metrics.jsonl grew: an eval row was appended (step 4: no checkpoint at that step)."""
        return seen.get("metrics.jsonl", (0, 0))[0] > size

    return appended


def loss_curve(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the columns that measure the machine (tokens/s, MFU, peak memory)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in MEASURED_KEYS} for row in rows]


def train(recipe: Path, optimizer: str, out: Path, resume: bool):
    args = ["train", str(recipe), "--optimizer", optimizer, "--out", str(out), "--quiet"]
    return cli_process(*args, *(["--resume"] if resume else []), cwd=out.parent)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adamw", "nexus"])
def test_sigkill_at_any_moment_resumes_to_the_uninterrupted_run(
    optimizer: str, tiny_runs: dict[str, Path], tiny_data_dir: Path, tmp_path: Path
) -> None:
    recipe = write_recipe(tmp_path, tiny_data_dir)  # TINY_RECIPE: checkpoints at steps 2 (target), 3 and 6
    # keep_state "latest" (the default) also prunes older optimizer state as it goes: kills land there too
    recipe.write_text(recipe.read_text().replace('keep_state = "all"', 'keep_state = "latest"'))
    out = tmp_path / "runs"
    run = out / f"t-{optimizer}-s0"

    # 1. killed while step 3's checkpoint is half-written: resumes from step 2; the temp dir stays until then
    seen = kill_when(train(recipe, optimizer, out, resume=False), run, writing_a_later_checkpoint, TIMEOUT_S)
    written = [c.name for c in Checkpointer(run).checkpoints()]
    partial = [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    # (the write may complete in the instant between seeing its temp dir and the kill: then step 3 is there)
    assert (written == ["ckpt-000002"] and partial) or written == ["ckpt-000002", "ckpt-000003"], seen
    # 2. killed right after step 4's metrics row, which lies beyond the newest checkpoint (step 3)
    size = (run / "metrics.jsonl").stat().st_size
    kill_when(train(recipe, optimizer, out, resume=True), run, metrics_row_after(size), TIMEOUT_S)
    assert [c.name for c in Checkpointer(run).checkpoints()] == ["ckpt-000002", "ckpt-000003"]
    # 3. resumed to the end
    finished = train(recipe, optimizer, out, resume=True)
    stdout, stderr = finished.communicate(timeout=TIMEOUT_S)
    assert finished.returncode == 0, stderr[-3000:]

    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]  # the interrupted writes were removed
    reference = tiny_runs[optimizer]
    names = [c.name for c in Checkpointer(reference).checkpoints()]
    assert [c.name for c in Checkpointer(run).checkpoints()] == names == ["ckpt-000002", "ckpt-000003", "ckpt-000006"]
    for name in names:
        want, got = load_file(reference / name / "model.safetensors"), load_file(run / name / "model.safetensors")
        assert want.keys() == got.keys()
        assert all(torch.equal(want[k], got[k]) for k in want), name
    assert loss_curve(run) == loss_curve(reference)


def test_resume_removes_the_temp_dirs_of_interrupted_checkpoint_writes(
    tiny_runs: dict[str, Path], tiny_data_dir: Path, tmp_path: Path
) -> None:
    run = Path(shutil.copytree(tiny_runs["adamw"], tmp_path / "runs" / tiny_runs["adamw"].name))
    partial = run / ".ckpt-000009.12345.tmp"  # what a kill during save_checkpoint leaves
    (partial / "optimizer").mkdir(parents=True)
    (partial / "model.safetensors").write_bytes(b"half")
    recipe = write_recipe(tmp_path, tiny_data_dir)
    train_in_process(recipe, "adamw", seed=0, out=tmp_path / "runs", resume=True, progress=False)  # already done
    assert not partial.exists()
    assert [c.name for c in Checkpointer(run).checkpoints()] == ["ckpt-000002", "ckpt-000003", "ckpt-000006"]
