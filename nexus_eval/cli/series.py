"""`nexus-eval series show`: checkpoint series of any origin (harness runs, HF checkpoint directories, GGUF files,
series files), in order, with their held-out loss measured on the data build in one unit."""

from __future__ import annotations

from pathlib import Path

import typer

from nexus_eval.cli.options import AsJson, DataDir, LossCache, Quiet, one_line_errors
from nexus_eval.errors import NexusError

app = typer.Typer(no_args_is_help=True, help="Checkpoint series of any origin: runs, HF checkpoints, GGUF files.")


@app.command("show")
@one_line_errors
def show_command(
    specs: list[str] = typer.Argument(
        None, help="[LABEL=]PATH: a harness run dir, a dir of HF checkpoint dirs, an HF model dir, GGUF file(s)"
    ),
    series_file: list[Path] = typer.Option(
        [], "--series-file", help="TOML file of \\[\\[series]] tables (label, checkpoints, step/tokens/revision)"
    ),
    data: DataDir = Path("data"),
    loss_unit: str = typer.Option(
        "auto", "--loss-unit", help="auto (nats/token when every tokenizer is the data's, else bits/byte), nats, bpb"
    ),
    windows: int | None = typer.Option(
        None, "--windows", help="Held-out windows per source (default: the first series' recipe's, else 16)"
    ),
    docs: int = typer.Option(20, "--docs", help="Documents per source/domain for bits per byte"),
    cache: LossCache = Path("results/loss"),
    quiet: Quiet = False,
    as_json: AsJson = False,
) -> None:
    """List each series' checkpoints in order (step, tokens) with their held-out loss in the chosen unit.

    A loss that neither nexus.json nor the loss cache holds is measured once and cached."""
    from nexus_eval.comparison.series_show import show_series

    if (windows is not None and windows <= 0) or docs <= 0:
        raise NexusError("--windows and --docs must be positive")
    show_series(
        list(specs or []),
        list(series_file),
        data,
        unit_override=loss_unit,
        windows=windows,
        docs=docs,
        cache_dir=cache,
        as_json=as_json,
        progress=not quiet,
    )
