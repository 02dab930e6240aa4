"""`nexus-eval train`."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from nexus_eval.cli.options import Quiet, one_line_errors
from nexus_eval.optimizer_registry import BASELINE, CANDIDATE, REGISTRY


def optimizer_help() -> str:
    """--optimizer's help: the registered optimizers, the compared pair first."""
    others = [name for name in REGISTRY.names() if name not in (BASELINE, CANDIDATE)]
    return (
        f"{BASELINE} or {CANDIDATE}; also {', '.join(others)}; nexus:OUTER (Nexus around OUTER, e.g. nexus:muon); "
        "package.module:factory (your own: docs/training.md, 'Any optimizer')"
    )


@contextmanager
def in_training_evaluation(tasks: tuple[str, ...], cache: Path) -> Iterator[Callable[[Path], object] | None]:
    """The recipe's [train] eval_tasks evaluated at each checkpoint (hf backend, `eval`'s defaults, cached in
    `cache`), by the main process only; None when the recipe names none."""
    if not tasks or int(os.environ.get("RANK", "0")) != 0:
        yield None
        return
    from nexus_eval.evaluation import EvalSettings
    from nexus_eval.evaluation.runner import checkpoint_evaluator

    with checkpoint_evaluator(EvalSettings(tasks=tasks, cache_dir=cache)) as evaluate_checkpoint:
        yield evaluate_checkpoint


@one_line_errors
def train_command(
    recipe: Path = typer.Argument(..., help="Training recipe, e.g. train/tiny.toml"),
    optimizer: str = typer.Option(
        ...,
        "--optimizer",
        help=optimizer_help(),
    ),
    seed: int = typer.Option(0, "--seed", help="Seeds the initial weights and the micro-batch sequence"),
    out: Path = typer.Option(Path("runs"), "--out", help="Parent of the run directory"),
    data: Path | None = typer.Option(None, "--data", help="Data dir (default: the recipe's data.dir)"),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run's newest checkpoint, exactly"),
    steps: int | None = typer.Option(None, "--steps", help="Override the recipe's train.steps"),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print parameters, per-rank memory, FLOPs, tokens, epochs and time; train nothing"
    ),
    nproc: int = typer.Option(1, "--nproc", help="--dry-run: ranks (GPUs) the run is planned on"),
    peak_tflops: str | None = typer.Option(
        None,
        "--peak-tflops",
        help="One device's peak: TFLOP/s or a GPU name (h100-sxm, a100, l4, ...), for the MFU and --dry-run's time",
    ),
    allow_repeat: bool = typer.Option(
        False, "--allow-repeat", help="Train even when the token budget reads a source more than once"
    ),
    device: str | None = typer.Option(
        None, "--device", help="auto | cpu | cuda | mps (default: the recipe's parallel.device, auto: cuda if any)"
    ),
    strategy: str | None = typer.Option(
        None,
        "--strategy",
        help="auto | none | ddp | fsdp (default: parallel.strategy; auto: ddp under torchrun); with --dry-run, planned",
    ),
    eval_cache: Path = typer.Option(
        Path("results/eval"), "--eval-cache", help="Where [train] eval_tasks results go (eval's --cache)"
    ),
    report_to: str = typer.Option(
        "auto",
        "--report-to",
        help="Curves besides metrics.jsonl: tensorboard, wandb (offline), a comma list of them, all, none, or auto: "
        "tensorboard when installed (docs/training.md, Training curves)",
    ),
    quiet: Quiet = False,
) -> None:
    """Train RECIPE with one optimizer and seed; writes runs/<recipe>-<optimizer>-s<seed>/ckpt-* (":" as "+")."""
    from nexus_eval.data import load_manifest
    from nexus_eval.errors import RecipeError
    from nexus_eval.training import train
    from nexus_eval.training.budget import check_epochs
    from nexus_eval.training.flops import parse_peak
    from nexus_eval.training.optimizer import check_optimizer
    from nexus_eval.training.recipe import load_recipe
    from nexus_eval.training.trackers import resolve_report_to

    REGISTRY.chosen(optimizer)  # an unknown name: one line naming the forms a name can have
    if not dry_run and nproc != 1:  # the run's ranks are torchrun's to start
        raise RecipeError(
            '--nproc: plans a --dry-run only; launch the run itself with torchrun (docs/training.md, "Several GPUs")'
        )
    plan = load_recipe(recipe)
    check_optimizer(plan.optim, optimizer, strategy or plan.parallel.strategy)  # its module, table; Muon under FSDP
    if steps is not None and steps > 0:
        plan = plan.with_steps(steps)  # the budget checked is the one trained (train() refuses steps <= 0)
    data_dir = data or Path(plan.data.dir)
    if dry_run:
        from nexus_eval.training.dry_run import describe
        from nexus_eval.training.dry_run import dry_run as plan_run

        planned = strategy if strategy is not None else plan.parallel.strategy
        planned = None if planned == "auto" else planned  # auto: ddp on several ranks, none on one
        for line in describe(plan_run(plan, optimizer, data_dir, nproc, planned, peak_tflops)):
            typer.echo(line)
        return
    peak_flops = parse_peak(peak_tflops)[0] if peak_tflops is not None else None
    trackers = resolve_report_to(report_to)  # a tracker asked for but not installed: refused before training
    if (data_dir / "manifest.json").is_file():  # a missing build is train()'s one-line error
        check_epochs(plan, load_manifest(data_dir), data_dir, allow_repeat)
    with in_training_evaluation(plan.train.eval_tasks, eval_cache) as on_checkpoint:
        run_dir = train(
            recipe,
            optimizer,
            seed,
            out,
            data,
            resume,
            steps,
            progress=not quiet,
            device=device,
            strategy=strategy,
            peak_flops=peak_flops,
            on_checkpoint=on_checkpoint,
            report_to=trackers,
        )
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun: one line, not one per process
        typer.echo(f"run: {run_dir}")
