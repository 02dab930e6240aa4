"""Execution settings change how a run computes, never what it trains: one process trains exactly what it trained
before distributed training existed, and physical batches (device_batch), activation checkpointing and compile give
the same losses as one forward per micro-batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nexus_eval.training import train
from tests.conftest import REPO_ROOT, TINY_RECIPE

# The checkout whose one-process results this one must reproduce bit for bit: the integration checkout beside this
# worktree, or NEXUS_EVAL_REFERENCE_CHECKOUT. Bit-identity holds on one machine only, so the reference is computed
# here, by that checkout's code, not stored.
REFERENCE = Path(os.environ.get("NEXUS_EVAL_REFERENCE_CHECKOUT", REPO_ROOT.parent / "main"))


MACHINE_COLUMNS = {"tokens_per_s", "mfu", "peak_memory_mib"}  # what the process and machine measure, not the run


def loss_rows(run: Path) -> list[dict]:
    """metrics.jsonl without the columns of speed and memory (a run in pytest's process has pytest's RSS)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in MACHINE_COLUMNS} for row in rows]


def recipe_with(tmp_path: Path, data_dir: Path, parallel: str) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(TINY_RECIPE.format(data=data_dir, lr=3e-3) + f"\n[parallel]\n{parallel}\n")
    return path


def assert_close_losses(got: Path, want: Path, atol: float) -> None:
    got_rows, want_rows = loss_rows(got), loss_rows(want)
    assert [r["step"] for r in got_rows] == [r["step"] for r in want_rows]
    for g, w in zip(got_rows, want_rows, strict=True):
        assert abs(g["train_loss"] - w["train_loss"]) <= atol, (g["step"], g["train_loss"], w["train_loss"])
        assert abs(g["val_loss"] - w["val_loss"]) <= atol, (g["step"], g["val_loss"], w["val_loss"])


@pytest.mark.slow
@pytest.mark.skipif(
    not (REFERENCE / "nexus_eval").is_dir() or REFERENCE.resolve() == REPO_ROOT.resolve(),
    reason=f"no reference checkout at {REFERENCE}",
)
@pytest.mark.parametrize("optimizer", ["adamw", "nexus"])
def test_one_process_trains_bit_for_bit_what_the_reference_checkout_trains(
    optimizer: str, tiny_data_dir: Path, tmp_path: Path
) -> None:
    # Both checkouts train in a child process with the same environment (one thread): the float sums of a run depend
    # on the thread count, so a run in pytest's own process is not comparable with the reference's child.
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(TINY_RECIPE.format(data=tiny_data_dir, lr=3e-3))
    rows = {}
    for name, checkout in (("this", REPO_ROOT), ("reference", REFERENCE)):
        env = {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        out = tmp_path / name
        args = ["train", str(recipe), "--optimizer", optimizer, "--out", str(out), "--quiet"]
        done = subprocess.run(
            [sys.executable, "-m", "nexus_eval.cli", *args], env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, f"{checkout}: {done.stderr[-3000:]}"
        rows[name] = loss_rows(out / f"t-{optimizer}-s0")
    assert rows["this"] == rows["reference"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("optimizer", "parallel"),
    [
        ("adamw", "device_batch = 2"),
        ("nexus", "device_batch = 2"),
        ("nexus", "device_batch = 1\nactivation_checkpointing = true"),
    ],
)
def test_physical_batches_give_the_losses_of_whole_micro_batches(
    optimizer: str, parallel: str, tiny_runs: dict[str, Path], tiny_data_dir: Path, tmp_path: Path
) -> None:
    recipe = recipe_with(tmp_path, tiny_data_dir, parallel)  # micro_batch 4: 2 or 4 backward passes per micro-batch
    run = train(recipe, optimizer, seed=0, out=tmp_path / "runs", progress=False)
    assert_close_losses(run, tiny_runs[optimizer], atol=1e-5)
    execution = json.loads((run / "run.json").read_text())["execution"]
    assert execution["device_batch"] == int(parallel.split("\n")[0].split("=")[1])
    assert execution["activation_checkpointing"] == ("activation_checkpointing" in parallel)


@pytest.mark.slow
def test_compiled_layers_train_the_same_run(tiny_runs: dict[str, Path], tiny_data_dir: Path, tmp_path: Path) -> None:
    """torch.compile of each decoder layer (the CUDA default) on the CPU: the same losses, up to kernel rounding."""
    recipe = recipe_with(tmp_path, tiny_data_dir, "compile = true")
    run = train(recipe, "nexus", seed=0, out=tmp_path / "runs", progress=False)
    assert_close_losses(run, tiny_runs["nexus"], atol=1e-4)
    assert json.loads((run / "run.json").read_text())["execution"]["compile"] is True
