"""`nexus-eval compare` and `nexus-eval leaderboard refresh|check`."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from nexus_eval.cli.options import (
    Backend,
    BatchSize,
    DataDir,
    Device,
    Devices,
    EvalCache,
    LeaderboardDir,
    Limit,
    ModelArgs,
    NumFewshot,
    Quiet,
    Suite,
    Tasks,
    batch_size_value,
    comma_list,
    float_list,
    one_line_errors,
)
from nexus_eval.errors import ComparisonError

leaderboard_app = typer.Typer(no_args_is_help=True, help="Generated leaderboards in leaderboards/.")
DEFAULT_TOLERANCE = 0.01


def tolerance_value(text: str) -> tuple[float, bool]:
    """--tolerance: (a number ≥ 0, False), or "auto" → (the default, True): the comparison derives the number."""
    if text.strip().lower() == "auto":
        return DEFAULT_TOLERANCE, True
    try:
        value = float(text)
    except ValueError:
        raise ComparisonError(f"--tolerance {text}: expected a number ≥ 0 or auto") from None
    if not math.isfinite(value) or value < 0:
        raise ComparisonError(f"--tolerance {text}: expected a number ≥ 0 or auto")
    return value, False


@one_line_errors
def compare_command(
    series: list[str] | None = typer.Argument(
        None,
        help="Series as [LABEL=]PATH: run directories (or a directory of runs, e.g. runs/; labelled by optimizer), "
        "a directory of Hugging Face checkpoints, a GGUF file or directory",
    ),
    more_series: list[str] | None = typer.Option(None, "--series", help="One more series, LABEL=PATH (repeatable)"),
    series_file: list[Path] | None = typer.Option(
        None, "--series-file", help="TOML file of [[series]] (label, checkpoints; repeatable)"
    ),
    reference: str | None = typer.Option(
        None, "--reference", help="Series label every other series is matched against (default: adamw, else the first)"
    ),
    loss_unit: str = typer.Option(
        "auto",
        "--loss-unit",
        help="auto (nats/token when every series has the data's tokenizer, else bpb) | nats | bpb",
    ),
    match_loss: bool = typer.Option(False, "--match-loss", help="Pair checkpoints of equal held-out loss"),
    tolerance: str = typer.Option(
        "0.01",
        "--tolerance",
        help="Largest |Δloss| of a pair, in the loss unit; auto: half the smallest seed SD of held-out loss at a "
        "fixed step (measured from the runs before matching)",
    ),
    targets: str | None = typer.Option(None, "--targets", help="Target losses, e.g. 3.2,3.0 (default: the recipes')"),
    interpolate: bool = typer.Option(False, "--interpolate", help="Interpolate metrics linearly in loss at targets"),
    curve_points: int = typer.Option(
        8, "--curve-points", help="Curves: grid points over the held-out loss range every seed covers"
    ),
    curve_losses: str | None = typer.Option(
        None, "--curve-losses", help="Curves: the grid of held-out losses, e.g. 5.6,5.4,5.2 (instead of --curve-points)"
    ),
    evaluate_all: bool = typer.Option(
        False, "--evaluate-all", help="Evaluate every checkpoint of the runs (the curves), not only the paired ones"
    ),
    suite: Suite = "reasoning",
    tasks: Tasks = None,
    backend: Backend = "hf",
    limit: Limit = None,
    num_fewshot: NumFewshot = None,
    batch_size: BatchSize = None,
    device: Device = None,
    devices: Devices = None,
    model_args: ModelArgs = None,
    cache: EvalCache = Path("results/eval"),
    out: Path = typer.Option(Path("reports/compare"), "--out", help="Dir for report.md, results.json and PNGs"),
    leaderboard: str | None = typer.Option(None, "--leaderboard", help="Also write leaderboards/NAME.{json,md,png}"),
    geometry: bool = typer.Option(False, "--geometry", help="Add gradient-cosine / minima columns per pair (slow)"),
    disagreements: bool = typer.Option(
        False, "--disagreements", help="List the items each pair scores differently (out/disagreements.md)"
    ),
    task: str | None = typer.Option(None, "--task", help="With --disagreements: only this one of the tasks"),
    data: DataDir = Path("data"),
    loss_cache: Path = typer.Option(Path("results/loss"), "--loss-cache", help="Cache of measured held-out losses"),
    resamples: int = typer.Option(10_000, "--resamples", help="Bootstrap resamples"),
    allow_mismatch: list[str] | None = typer.Option(
        None,
        "--allow-mismatch",
        help="Pair runs that differ in FIELD anyway (e.g. optim.lr, data_hash; repeatable or comma list); "
        "the report keeps a warning",
    ),
    lr_sweep: Path | None = typer.Option(
        None,
        "--lr-sweep",
        help="JSON of the lr sweep that chose each optimizer's lr (scripts/lr_sweep.py): checked against the runs, "
        "kept in the results and shown",
    ),
    quiet: Quiet = False,
) -> None:
    """Compare series at equal held-out loss (AdamW vs Nexus, or any checkpoints): pairs, bootstrap CIs, plots.

    Pairs checkpoints at matched loss, evaluates what the cache lacks, and writes paired bootstrap CIs, tables, plots.
    Held-out loss is the harness's own, measured on --data, for every series."""
    from nexus_eval.comparison import CompareOptions, CompareSettings, compare
    from nexus_eval.evaluation import parse_model_args

    if not match_loss and not interpolate:
        raise ComparisonError("compare: pass --match-loss (or --interpolate): unmatched comparisons are not supported")
    chosen_targets = float_list(targets, "--targets")
    chosen_tolerance, tolerance_auto = tolerance_value(tolerance)
    grid = float_list(curve_losses, "--curve-losses")
    chosen_tasks = comma_list(tasks)
    settings = CompareSettings(
        mode="interpolate" if interpolate else "match-loss",
        tolerance=chosen_tolerance,
        tolerance_auto=tolerance_auto,
        curve_points=curve_points,
        curve_losses=tuple(grid) if grid else None,
        targets=tuple(chosen_targets) if chosen_targets else None,
        suite=suite,
        tasks=tuple(chosen_tasks) if chosen_tasks else None,
        backend=backend,
        limit=limit,
        num_fewshot=num_fewshot,
        bootstrap_resamples=resamples,
        allow_mismatch=tuple(f for given in allow_mismatch or [] for f in comma_list(given) or []),
        reference=reference,
        loss_unit=loss_unit,
    )
    options = CompareOptions(
        batch_size=batch_size_value(batch_size),
        device=device,
        devices=devices,
        model_args=parse_model_args(model_args),
        cache_dir=cache,
        out=out,
        leaderboard=leaderboard,
        lr_sweep=lr_sweep,
        geometry_data_dir=data if geometry else None,
        disagreements=disagreements,
        disagreement_task=task,
        progress=not quiet,
        data_dir=data,
        loss_cache_dir=loss_cache,
        evaluate_all=evaluate_all,
    )
    compare([*(series or []), *(more_series or [])], settings, options, list(series_file or []))


@leaderboard_app.command("refresh")
@one_line_errors
def leaderboard_refresh_command(directory: LeaderboardDir = Path("leaderboards")) -> None:
    """Rebuild every leaderboards/NAME.md and .png from its NAME.json."""
    from nexus_eval.comparison.leaderboard import refresh

    for path in refresh(directory):
        typer.echo(f"wrote {path}")


@leaderboard_app.command("check")
@one_line_errors
def leaderboard_check_command(directory: LeaderboardDir = Path("leaderboards")) -> None:
    """Exit 1 if any leaderboards/NAME.md differs from what its NAME.json produces."""
    from nexus_eval.comparison.leaderboard import check

    problems = check(directory)
    for line in problems:
        typer.echo(f"stale: {line}", err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"leaderboards in {directory} match their JSON")


@leaderboard_app.command("reproduce")
@one_line_errors
def leaderboard_reproduce_command(
    name: str = typer.Argument(..., help="Leaderboard name: leaderboards/NAME.json"),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Scratch dir for data/, runs/, results/eval/, reports/ (default build/reproduce-NAME); "
        "what is already there is reused",
    ),
    directory: LeaderboardDir = Path("leaderboards"),
    quiet: Quiet = False,
) -> None:
    """Redo what NAME.json records (data, training, evaluation, comparison); exit 1 only on nondeterminism.

    Prints committed vs reproduced numbers and the provenance fields that differ.
    Exit 1 only when numbers differ while every provenance field is the same."""
    from nexus_eval.comparison.reproduce import NOT_DETERMINISTIC, print_reproduction, reproduce

    rep = reproduce(name, out or Path("build") / f"reproduce-{name}", directory, progress=not quiet)
    print_reproduction(rep)
    if rep.verdict == NOT_DETERMINISTIC:
        typer.echo(f"error: leaderboard {name}: numbers differ with identical provenance (nondeterminism)", err=True)
        raise typer.Exit(1)
