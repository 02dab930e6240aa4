"""`nexus-eval samples`: the per-item samples stored beside a cached eval result."""

from __future__ import annotations

from pathlib import Path

import typer

from nexus_eval.cli.options import AsJson, Backend, EvalCache, one_line_errors


@one_line_errors
def samples_command(
    checkpoint: Path = typer.Argument(..., help="The evaluated checkpoint (or HF model dir / GGUF)"),
    task: str = typer.Option(..., "--task", help="Task name (or task YAML path) of the cached result"),
    item: int | None = typer.Option(None, "--item", help="Show this doc_id in full (prompt, response, choices)"),
    backend: Backend = "hf",
    limit: int | None = typer.Option(None, "--limit", help="The --limit the result was evaluated with"),
    num_fewshot: int | None = typer.Option(None, "--num-fewshot", help="The --num-fewshot it was evaluated with"),
    cache: EvalCache = Path("results/eval"),
    seed: int = typer.Option(1234, "--seed", help="The eval seed the result was computed with"),
    as_json: AsJson = False,
) -> None:
    """Per-item samples of a cached result: target, answer, score (and choice log-likelihoods); evaluates nothing."""
    from nexus_eval.evaluation import EvalSettings
    from nexus_eval.evaluation.show_samples import show_samples

    settings = EvalSettings(
        tasks=(task,), backend=backend, limit=limit, num_fewshot=num_fewshot, cache_dir=cache, seed=seed
    )
    show_samples(checkpoint, settings, item=item, as_json=as_json)
