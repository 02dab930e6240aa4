"""nexus-eval command line: parses flags and calls one pipeline function per command. No logic lives here.

Every NexusError (bad input the user must fix) becomes a one-line `error: ...` and exit code 2.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
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


@data_app.command("build")
@one_line_errors
def data_build_command(
    out: Path = typer.Option(Path("data"), "--out", help="Data dir to (re)build; replaced atomically at the end"),
    vocab_size: int = typer.Option(4096, "--vocab-size", help="Byte-level BPE vocabulary size (≤ 65536)"),
    source: list[str] = typer.Option([], "--source", help="NAME=DIR: extra training source (UTF-8 files in DIR)"),
    ood: list[str] = typer.Option([], "--ood", help="NAME=DIR: extra OOD domain, never trained on"),
    gsm8k_dir: Path = typer.Option(Path("../shared/data/gsm8k"), "--gsm8k-dir", help="Dir with GSM8k train.jsonl"),
    max_chars_per_source: int = typer.Option(12_000_000, "--max-chars-per-source", help="Cap per training source"),
    max_chars_per_ood: int = typer.Option(1_200_000, "--max-chars-per-ood", help="Cap per OOD domain"),
    val_fraction: float = typer.Option(0.08, "--val-fraction", help="Share of documents (by hash) held out"),
    math_generated: int = typer.Option(40_000, "--math-generated", help="Generated math problems (before dedupe)"),
    seed: int = typer.Option(0, "--seed", help="Seed of the math problem generator"),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars"),
) -> None:
    """Build tokenizer, token streams and manifest from the offline sources (text, math, code + OOD domains)."""
    from nexus_eval.data.info import build_and_show

    build_and_show(
        out,
        source,
        ood,
        vocab_size=vocab_size,
        gsm8k_dir=gsm8k_dir,
        max_chars_per_source=max_chars_per_source,
        max_chars_per_ood=max_chars_per_ood,
        val_fraction=val_fraction,
        math_generated=math_generated,
        seed=seed,
        progress=not quiet,
    )


@data_app.command("info")
@one_line_errors
def data_info_command(
    data: Path = typer.Option(Path("data"), "--data", help="Data dir built by `nexus-eval data build`"),
) -> None:
    """Summarize a data build: documents, characters and tokens per source and split, vocab, hash."""
    from nexus_eval.data.info import show_manifest

    show_manifest(data)


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


@tasks_app.command("list")
@one_line_errors
def tasks_list_command(
    suite: str | None = typer.Option(None, "--suite", help="reasoning, reasoning-real, gsm8k, ood or all (default)"),
) -> None:
    """Tasks of a suite with version, primary metric and whether their data is ready."""
    from nexus_eval.taskshow import show_tasks

    show_tasks(suite)


@tasks_app.command("prepare")
@one_line_errors
def tasks_prepare_command(
    gsm8k_dir: Path | None = typer.Option(
        None, "--gsm8k-dir", help="Dir with GSM8k test.jsonl (+ train.jsonl); default ../shared/data/gsm8k"
    ),
    data: Path | None = typer.Option(None, "--data", help="Data dir whose OOD domains become ood_<domain> tasks"),
) -> None:
    """Materialize the real benchmark data (tasks/data/) and the OOD task YAMLs (tasks/generated/), both gitignored."""
    from nexus_eval.taskshow import prepare_and_show

    prepare_and_show(gsm8k_dir, data)


@tasks_app.command("generate")
@one_line_errors
def tasks_generate_command(
    out: Path = typer.Option(Path("tasks"), "--out", help="Tasks dir to (re)write the synthetic suites into"),
) -> None:
    """Regenerate the committed synthetic suites (seeded: byte-identical unless a generator changed)."""
    from nexus_eval.taskshow import generate_and_show

    generate_and_show(out)


@app.command("eval")
@one_line_errors
def eval_command(
    paths: list[Path] = typer.Argument(..., help="Run dirs (all checkpoints), checkpoints, HF model dirs or GGUF"),
    tasks: str | None = typer.Option(None, "--tasks", help="Comma-separated task names (or task YAML paths)"),
    suite: str | None = typer.Option(None, "--suite", help="Task suite (default: reasoning); see `tasks list`"),
    backend: str = typer.Option("hf", "--backend", help="hf (transformers, CPU) or vllm"),
    limit: int | None = typer.Option(None, "--limit", help="First N items per task (a smoke test, not a result)"),
    num_fewshot: int | None = typer.Option(None, "--num-fewshot", help="Override the tasks' few-shot count"),
    batch_size: int = typer.Option(8, "--batch-size", help="Batch size of the hf backend (vllm batches itself)"),
    cache: Path = typer.Option(Path("results/eval"), "--cache", help="Cache dir of result JSONs"),
    seed: int = typer.Option(1234, "--seed", help="Seeds lm-eval's few-shot sampling, numpy and torch"),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar"),
    as_json: bool = typer.Option(False, "--json", help="Print the result dicts as JSON instead of a table"),
) -> None:
    """Evaluate checkpoints on lm-eval tasks (cached per checkpoint content, task and settings)."""
    from nexus_eval.evalshow import evaluate_and_show

    evaluate_and_show(
        paths,
        as_json=as_json,
        progress=not quiet,
        tasks=[t.strip() for t in tasks.split(",") if t.strip()] if tasks is not None else None,
        suite=suite,
        backend=backend,
        limit=limit,
        num_fewshot=num_fewshot,
        batch_size=batch_size,
        cache_dir=cache,
        seed=seed,
    )


# ---- geometry --------------------------------------------------------------------------------------------


@app.command("geometry")
@one_line_errors
def geometry_command(
    paths: list[Path] = typer.Argument(..., help="Checkpoints or run directories (all their checkpoints)"),
    data: Path = typer.Option(Path("data"), "--data", help="Data dir: val split measured, train split fine-tuned on"),
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
    as_json: bool = typer.Option(False, "--json", help="Print the result dicts as JSON instead of a table"),
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
        sources=[s for s in sources.split(",") if s] if sources else None,
        seed=seed,
        cache_dir=cache,
        refresh=refresh,
    )


# ---- compare + leaderboard -------------------------------------------------------------------------------


def _float_list(text: str | None, flag: str) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise NexusError(f"{flag}: expected comma-separated numbers, got {text!r}") from None


@app.command("compare")
@one_line_errors
def compare_command(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories (or a directory of runs, e.g. runs/)"),
    match_loss: bool = typer.Option(False, "--match-loss", help="Pair AdamW/Nexus checkpoints of equal held-out loss"),
    tolerance: float = typer.Option(0.01, "--tolerance", help="Largest |Δloss| of a pair, nats/token"),
    targets: str | None = typer.Option(None, "--targets", help="Target losses, e.g. 3.2,3.0 (default: the recipes')"),
    interpolate: bool = typer.Option(False, "--interpolate", help="Interpolate metrics linearly in loss at targets"),
    suite: str = typer.Option("reasoning", "--suite", help="Task suite to evaluate"),
    tasks: str | None = typer.Option(None, "--tasks", help="Comma-separated tasks (instead of --suite)"),
    backend: str = typer.Option("hf", "--backend", help="hf or vllm"),
    limit: int | None = typer.Option(None, "--limit", help="First N items per task"),
    num_fewshot: int | None = typer.Option(None, "--num-fewshot", help="Override the tasks' few-shot count"),
    batch_size: int = typer.Option(8, "--batch-size", help="Evaluation batch size"),
    cache: Path = typer.Option(Path("results/eval"), "--cache", help="Eval results cache dir"),
    out: Path = typer.Option(Path("reports/compare"), "--out", help="Dir for report.md, results.json and PNGs"),
    leaderboard: str | None = typer.Option(None, "--leaderboard", help="Also write leaderboards/NAME.{json,md,png}"),
    geometry: bool = typer.Option(False, "--geometry", help="Add gradient-cosine / minima columns per pair (slow)"),
    data: Path = typer.Option(Path("data"), "--data", help="Data dir for --geometry"),
    resamples: int = typer.Option(10_000, "--resamples", help="Bootstrap resamples"),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars"),
) -> None:
    """Loss-matched AdamW vs Nexus: pairs, evaluation of what is missing, paired bootstrap CIs, tables and plots."""
    from nexus_eval.compare import compare

    compare(
        run_dirs,
        match_loss=match_loss,
        tolerance=tolerance,
        targets=_float_list(targets, "--targets"),
        interpolate=interpolate,
        suite=suite,
        tasks=[t.strip() for t in tasks.split(",") if t.strip()] if tasks else None,
        backend=backend,
        limit=limit,
        out=out,
        num_fewshot=num_fewshot,
        batch_size=batch_size,
        cache_dir=cache,
        leaderboard=leaderboard,
        with_geometry=geometry,
        data_dir=data,
        bootstrap_resamples=resamples,
        progress=not quiet,
    )


@leaderboard_app.command("refresh")
@one_line_errors
def leaderboard_refresh_command(
    directory: Path = typer.Option(Path("leaderboards"), "--dir", help="Leaderboards directory"),
) -> None:
    """Rebuild every leaderboards/NAME.md and .png from its NAME.json."""
    from nexus_eval.leaderboard import refresh

    for path in refresh(directory):
        typer.echo(f"wrote {path}")


@leaderboard_app.command("check")
@one_line_errors
def leaderboard_check_command(
    directory: Path = typer.Option(Path("leaderboards"), "--dir", help="Leaderboards directory"),
) -> None:
    """Exit 1 if any leaderboards/NAME.md differs from what its NAME.json produces."""
    from nexus_eval.leaderboard import check

    problems = check(directory)
    for line in problems:
        typer.echo(f"stale: {line}", err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"leaderboards in {directory} match their JSON")


if __name__ == "__main__":  # vLLM spawns processes: keep the guard
    sys.exit(app())
