"""The `nexus-eval` application: one Typer app, each command group from its own module (cli/<group>.py).

Commands only parse flags and call one function of a stage; no logic lives in the CLI. Every NexusError becomes a
one-line `error: ...` on stderr and the error's exit code (options.one_line_errors).
"""

from __future__ import annotations

import os

import click
import typer
from typer.core import TyperGroup

from nexus_eval.cli import checkpoints, compare, data, evaluate, geometry, optim, samples, series, tasks, train

# No hub: every tokenizer, model and dataset comes from the repo, a package or a local build.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


# The pipeline's order, in which `--help` lists the commands (Typer's own: single commands first, then groups)
PIPELINE = ("data", "train", "optim", "loss", "tasks", "eval", "samples", "checkpoints", "series", "geometry")
PIPELINE += ("compare", "leaderboard")


class PipelineOrder(TyperGroup):
    def list_commands(self, ctx: click.Context) -> list[str]:
        rank = {name: i for i, name in enumerate(PIPELINE)}
        return sorted(self.commands, key=lambda name: rank.get(name, len(rank)))


app = typer.Typer(
    cls=PipelineOrder,
    add_completion=False,
    no_args_is_help=True,
    help="nexus-eval: same pretraining loss, different downstream? AdamW vs Nexus, loss-matched, through lm-eval.",
)
app.add_typer(data.app, name="data")
app.command("train")(train.train_command)
app.add_typer(optim.app, name="optim")
app.command("loss")(evaluate.loss_command)
app.add_typer(tasks.app, name="tasks")
app.command("eval")(evaluate.eval_command)
app.add_typer(checkpoints.app, name="checkpoints")
app.command("samples")(samples.samples_command)
app.command("geometry")(geometry.geometry_command)
app.add_typer(series.app, name="series")
app.command("compare")(compare.compare_command)
app.add_typer(compare.leaderboard_app, name="leaderboard")
