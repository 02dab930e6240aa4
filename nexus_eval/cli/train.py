"""`nexus-eval train`."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from nexus_eval.cli.options import Quiet, one_line_errors


@one_line_errors
def train_command(
    recipe: Path = typer.Argument(..., help="Training recipe, e.g. train/tiny.toml"),
    optimizer: str = typer.Option(..., "--optimizer", help="adamw or nexus"),
    seed: int = typer.Option(0, "--seed", help="Seeds the initial weights and the micro-batch sequence"),
    out: Path = typer.Option(Path("runs"), "--out", help="Parent of the run directory"),
    data: Path | None = typer.Option(None, "--data", help="Data dir (default: the recipe's data.dir)"),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run's newest checkpoint, exactly"),
    steps: int | None = typer.Option(None, "--steps", help="Override the recipe's train.steps"),
    device: str | None = typer.Option(
        None, "--device", help="auto | cpu | cuda | mps (default: the recipe's parallel.device, auto: cuda if any)"
    ),
    strategy: str | None = typer.Option(
        None, "--strategy", help="auto | none | ddp | fsdp under torchrun (default: parallel.strategy, auto: ddp)"
    ),
    quiet: Quiet = False,
) -> None:
    """Train RECIPE with one optimizer and seed; writes runs/<recipe>-<optimizer>-s<seed>/ckpt-*."""
    from nexus_eval.training import train

    run_dir = train(
        recipe, optimizer, seed, out, data, resume, steps, progress=not quiet, device=device, strategy=strategy
    )
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun: one line, not one per process
        typer.echo(f"run: {run_dir}")
