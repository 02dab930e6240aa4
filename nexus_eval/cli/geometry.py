"""`nexus-eval geometry`."""

from __future__ import annotations

from pathlib import Path

import typer

from nexus_eval.cli.options import AsJson, DataDir, comma_list, one_line_errors


@one_line_errors
def geometry_command(
    paths: list[Path] = typer.Argument(..., help="Checkpoints or run directories (all their checkpoints)"),
    data: DataDir = Path("data"),
    batches: int = typer.Option(8, "--batches", help="Held-out micro-batches per source for gradients and losses"),
    batch_size: int = typer.Option(8, "--batch-size", help="Sequences per micro-batch"),
    context: int | None = typer.Option(None, "--context", help="Tokens per sequence (default: the model's maximum)"),
    finetune_steps: int = typer.Option(50, "--finetune-steps", help="Per-source fine-tune steps (closeness of minima)"),
    finetune_lr: float = typer.Option(1e-3, "--finetune-lr", help="Fine-tune peak lr (decays linearly to 0)"),
    finetune_optimizer: str = typer.Option("adamw", "--finetune-optimizer", help="adamw or sgd"),
    hessian_iters: int = typer.Option(10, "--hessian-iters", help="Power iterations for λ (0: cosine term only)"),
    sources: str | None = typer.Option(None, "--sources", help="Comma-separated subset of the training sources"),
    seed: int = typer.Option(0, "--seed", help="Seeds the micro-batch offsets and the power-iteration start"),
    cache: Path = typer.Option(Path("results/geometry"), "--cache", help="Cache dir of result JSONs"),
    refresh: bool = typer.Option(False, "--refresh", help="Measure again even when cached"),
    as_json: AsJson = False,
) -> None:
    """Gradient cosines across sources and closeness of per-source minima of each checkpoint (cached)."""
    from nexus_eval.geometry.table import measure_and_show

    measure_and_show(
        paths,
        data,
        as_json,
        n_batches=batches,
        batch_size=batch_size,
        context=context,
        finetune_steps=finetune_steps,
        finetune_lr=finetune_lr,
        finetune_optimizer=finetune_optimizer,
        hessian_iters=hessian_iters,
        sources=comma_list(sources) or None,
        seed=seed,
        cache_dir=cache,
        refresh=refresh,
    )
