"""nexus-eval command line: parses flags and calls one pipeline function per command. No logic lives here.

Every NexusError (bad input the user must fix) becomes a one-line `error: ...` and exit code 2.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import typer

from nexus_eval.errors import NexusError

# No hub: every tokenizer, model and dataset comes from the repo, a package or a local build.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
data_app = typer.Typer(no_args_is_help=True, help="Build the offline multi-source training data.")
tasks_app = typer.Typer(no_args_is_help=True, help="lm-eval tasks shipped in tasks/.")
leaderboard_app = typer.Typer(no_args_is_help=True, help="Generated leaderboards in leaderboards/.")
app.add_typer(data_app, name="data")
app.add_typer(tasks_app, name="tasks")
app.add_typer(leaderboard_app, name="leaderboard")


def one_line_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn NexusError into `error: message` on stderr and exit 2, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NexusError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None

    return wrapper


# ---- data ------------------------------------------------------------------------------------------------


# ---- train -----------------------------------------------------------------------------------------------


@app.command("train")
@one_line_errors
def train_command(
    recipe: Path = typer.Argument(..., help="Training recipe, e.g. train/tiny.toml"),
    optimizer: str = typer.Option(..., "--optimizer", help="adamw or nexus"),
    seed: int = typer.Option(0, "--seed", help="Seeds the initial weights and the micro-batch sequence"),
    out: Path = typer.Option(Path("runs"), "--out", help="Parent of the run directory"),
    data: Path | None = typer.Option(None, "--data", help="Data dir (default: the recipe's data.dir)"),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run's newest checkpoint, exactly"),
    steps: int | None = typer.Option(None, "--steps", help="Override the recipe's train.steps"),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar"),
) -> None:
    """Train RECIPE with one optimizer and seed; writes runs/<recipe>-<optimizer>-s<seed>/ckpt-*."""
    from nexus_eval.train import train

    run_dir = train(recipe, optimizer, seed, out, data, resume, steps, progress=not quiet)
    typer.echo(f"run: {run_dir}")


# ---- loss ------------------------------------------------------------------------------------------------


@app.command("loss")
@one_line_errors
def loss_command(
    checkpoint: Path = typer.Argument(..., help="Our checkpoint, an HF model dir, or a GGUF file/dir"),
    data: Path = typer.Option(Path("data"), "--data", help="Data dir whose val/OOD splits are scored"),
    windows: int = typer.Option(16, "--windows", help="Held-out windows per source (same-tokenizer nats/token)"),
    docs: int = typer.Option(20, "--docs", help="Documents per source/domain for bits per byte"),
) -> None:
    """Held-out and OOD loss of any checkpoint, measured on the harness's own data (nats/token and bits/byte)."""
    import json

    from nexus_eval.heldout import measure_checkpoint

    if windows <= 0 or docs <= 0:
        raise NexusError("--windows and --docs must be positive")
    typer.echo(json.dumps(measure_checkpoint(checkpoint, data, windows, docs), indent=2, sort_keys=True))


# ---- tasks + eval ----------------------------------------------------------------------------------------


# ---- geometry --------------------------------------------------------------------------------------------


# ---- compare + leaderboard -------------------------------------------------------------------------------


if __name__ == "__main__":  # vLLM spawns processes: keep the guard
    sys.exit(app())
