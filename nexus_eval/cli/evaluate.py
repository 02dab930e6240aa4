"""`nexus-eval eval` and `nexus-eval loss`: downstream tasks and held-out loss of checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from nexus_eval.cli.options import (
    AsJson,
    Backend,
    BatchSize,
    DataDir,
    Device,
    Devices,
    EvalCache,
    Limit,
    LossCache,
    ModelArgs,
    NumFewshot,
    Quiet,
    Suite,
    Tasks,
    batch_size_value,
    comma_list,
    one_line_errors,
)
from nexus_eval.errors import NexusError


@one_line_errors
def eval_command(
    paths: list[Path] = typer.Argument(..., help="Run dirs (all checkpoints), checkpoints, HF model dirs or GGUF"),
    tasks: Tasks = None,
    suite: Suite = None,
    backend: Backend = "hf",
    limit: Limit = None,
    num_fewshot: NumFewshot = None,
    batch_size: BatchSize = None,
    device: Device = None,
    devices: Devices = None,
    model_args: ModelArgs = None,
    cache: EvalCache = Path("results/eval"),
    seed: int = typer.Option(1234, "--seed", help="Seeds lm-eval's few-shot sampling, numpy and torch"),
    quiet: Quiet = False,
    as_json: AsJson = False,
    timeout: float | None = typer.Option(
        None, "--timeout", help="Seconds one task may run; past it the engine counts as hung (exit 3)"
    ),
    check_batch_invariance: bool = typer.Option(
        False,
        "--check-batch-invariance",
        help="Evaluate at batch size 1 and at --batch-size (nothing cached) and report per-item differences",
    ),
) -> None:
    """Evaluate checkpoints on lm-eval tasks (default suite: reasoning), each result cached.

    Results are cached per checkpoint content, task and settings.
    A run's checkpoints share one loaded engine, their weights swapped in.
    --json prints the results, each with "source": "computed" or "cache".
    Exit 3: the evaluation engine died or hung."""
    from nexus_eval.errors import EvalError
    from nexus_eval.evaluation import EvalSettings, parse_model_args
    from nexus_eval.evaluation.show import evaluate_and_show

    chosen = comma_list(tasks)
    settings = EvalSettings(
        tasks=tuple(chosen) if chosen is not None else None,
        suite=suite,
        backend=backend,
        limit=limit,
        num_fewshot=num_fewshot,
        batch_size=batch_size_value(batch_size),
        cache_dir=cache,
        seed=seed,
        timeout=timeout,
        device=device,
        model_args=parse_model_args(model_args),
    )
    if check_batch_invariance:
        from nexus_eval.evaluation.invariance import check_and_show

        if devices is not None:
            raise EvalError(f"--devices {devices}: --check-batch-invariance runs on one device (--device)")

        check_and_show(paths, settings, as_json=as_json, progress=not quiet)
        return
    evaluate_and_show(paths, settings, as_json=as_json, progress=not quiet, devices=devices)


@one_line_errors
def loss_command(
    checkpoint: Path = typer.Argument(..., help="Our checkpoint, an HF model dir, or a GGUF file/dir"),
    data: DataDir = Path("data"),
    windows: int = typer.Option(16, "--windows", help="Held-out windows per source (same-tokenizer nats/token)"),
    docs: int = typer.Option(20, "--docs", help="Documents per source/domain for bits per byte"),
    cache: LossCache = Path("results/loss"),
) -> None:
    """Held-out and OOD loss of any checkpoint on the harness's own data (nats/token and bits/byte).

    Cached per checkpoint content and data build."""
    from nexus_eval.evaluation.loss import measured_loss

    if windows <= 0 or docs <= 0:
        raise NexusError("--windows and --docs must be positive")
    lookup = measured_loss(checkpoint, data, windows, docs, cache)
    typer.echo(f"loss of {checkpoint}: {lookup.source}", err=True)  # stderr: stdout stays the JSON
    typer.echo(json.dumps(lookup.record, indent=2, sort_keys=True))
