"""geometry(): load a checkpoint, cut held-out micro-batches per source, measure, cache the JSON."""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from nexus_eval.checkpoints import content_hash, load_model, read_meta, write_json_atomic
from nexus_eval.errors import NexusError
from nexus_eval.geometry.batches import source_batches, training_sources
from nexus_eval.geometry.gradients import gradient_cosines
from nexus_eval.geometry.minima import OPTIMIZERS, minima_closeness

SCHEMA = 1
# Bump when a change to the measurement changes its numbers: old cache entries then stop matching.
MEASUREMENT_VERSION = 1


def _data_fingerprint(data_dir: Path) -> str:
    """The data build's content hash (covers every file's sha256): a rebuilt data dir gets new cache keys."""
    from nexus_eval.data import load_manifest

    return str(load_manifest(data_dir).get("hash"))


def _check_settings(
    n_batches: int, batch_size: int, finetune_steps: int, lr: float, optimizer: str, iters: int
) -> None:
    for flag, value in (("--batches", n_batches), ("--batch-size", batch_size), ("--finetune-steps", finetune_steps)):
        if value < 1:
            raise NexusError(f"{flag} must be at least 1 (got {value})")
    if lr <= 0:
        raise NexusError(f"--finetune-lr must be positive (got {lr})")
    if optimizer not in OPTIMIZERS:
        raise NexusError(f"--finetune-optimizer must be one of {', '.join(OPTIMIZERS)} (got {optimizer!r})")
    if iters < 0:
        raise NexusError(f"--hessian-iters must be >= 0 (got {iters})")


def geometry(
    ckpt: Path,
    data_dir: Path,
    n_batches: int = 8,
    finetune_steps: int = 50,
    seed: int = 0,
    cache_dir: Path = Path("results/geometry"),
    batch_size: int = 8,
    context: int | None = None,
    finetune_lr: float = 1e-3,
    finetune_optimizer: str = "adamw",
    hessian_iters: int = 10,
    sources: list[str] | None = None,
    device: str | None = None,
    refresh: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Gradient similarity and closeness of per-source minima of one checkpoint (cached by content hash + settings).

    Measurement micro-batches: n_batches × batch_size windows of `context` tokens (default: the model's
    max_position_embeddings) per source from the val split; fine-tune micro-batches: finetune_steps of them per
    source from the train split. Keys of the returned dict (all JSON):
      checkpoint, checkpoint_hash, step, run_optimizer, heldout_loss (from nexus.json; None for external models),
      sources, grad_cos_matrix, grad_cos_mean_offdiag, grad_norms, grad_G, hessian_lambda, theorem_cos_term,
      theorem_rhs (see nexus_eval.geometry.gradients), minima_sq_dist, minima_msd, minima_pairwise,
      minima_pairwise_mean, cross_loss, base_loss, finetune (see nexus_eval.geometry.minima),
      settings, seconds, created, schema.
    """
    _check_settings(n_batches, batch_size, finetune_steps, finetune_lr, finetune_optimizer, hessian_iters)
    if not data_dir.is_dir():
        raise NexusError(f"{data_dir}: no such data directory (--data)")
    all_sources = training_sources(data_dir)
    chosen = sorted(sources or all_sources)
    if unknown := [s for s in chosen if s not in all_sources]:
        raise NexusError(
            f"--sources: {', '.join(unknown)} not in {data_dir / 'manifest.json'} ({', '.join(all_sources)})"
        )
    if len(chosen) < 2:
        raise NexusError(f"--sources: geometry compares sources, need at least two (got {', '.join(chosen)})")

    ckpt_hash = content_hash(ckpt)
    config = json.loads((ckpt / "config.json").read_text()) if (ckpt / "config.json").exists() else {}
    context = context or config.get("max_position_embeddings")
    if not context or context < 2:
        raise NexusError(f"{ckpt}: no max_position_embeddings in config.json; pass --context")
    settings = {
        "n_batches": n_batches,
        "batch_size": batch_size,
        "context": context,
        "finetune_steps": finetune_steps,
        "finetune_lr": finetune_lr,
        "finetune_optimizer": finetune_optimizer,
        "hessian_iters": hessian_iters,
        "seed": seed,
        "sources": chosen,
        "data": _data_fingerprint(data_dir),
        "version": MEASUREMENT_VERSION,
    }
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    cache_file = cache_dir / f"{ckpt_hash[:16]}-{key[:16]}.json"
    if cache_file.exists() and not refresh:
        try:
            return json.loads(cache_file.read_text())
        except json.JSONDecodeError:
            pass  # a corrupt entry is measured again and overwritten

    started = time.perf_counter()
    torch.manual_seed(seed)
    model, _ = load_model(ckpt)
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    vocab = model.get_input_embeddings().weight.shape[0]
    heldout = {s: source_batches(data_dir, "val", s, n_batches, batch_size, context, seed, vocab) for s in chosen}
    finetune = {
        s: source_batches(data_dir, "train", s, finetune_steps, batch_size, context, seed, vocab) for s in chosen
    }

    n = len(chosen)
    total = n * n_batches + 2 * n * hessian_iters + n * n_batches + n * finetune_steps + n * n * n_batches
    bar = _progress_bar() if progress else nullcontext()
    with bar as shown:
        advance = None
        if shown is not None:
            task = shown.add_task(f"geometry {ckpt.name}", total=total)

            def advance() -> None:
                shown.advance(task)

        grads = gradient_cosines(model, heldout, hessian_iters, seed, advance=advance)
        minima = minima_closeness(
            model,
            finetune,
            finetune_steps,
            finetune_lr,
            finetune_optimizer,
            eval_batches_by_source=heldout,
            advance=advance,
        )
    meta = read_meta(ckpt)
    result = {
        "schema": SCHEMA,
        "checkpoint": str(ckpt),
        "checkpoint_hash": ckpt_hash,
        "step": meta.get("step"),
        "run_optimizer": meta.get("optimizer"),
        "heldout_loss": meta.get("heldout_loss"),
        **grads,
        **minima,
        "settings": settings,
        "seconds": round(time.perf_counter() - started, 2),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(cache_file, result)
    return result


def _progress_bar():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
