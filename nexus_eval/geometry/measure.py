"""geometry(): load a checkpoint, cut held-out micro-batches per source, measure, cache the JSON.

The phases, in order: check the settings, look the result up in the cache (keyed by the checkpoint's content hash
and the hash of its GeometrySettings), load the model and cut its micro-batches, measure with a progress bar,
assemble the result and write it to the cache.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nexus_eval.checkpoints import content_hash, load_model, read_meta
from nexus_eval.display import checkpoint_label, progress_bar
from nexus_eval.errors import CheckpointError, DataError, NexusError
from nexus_eval.geometry.batches import source_batches, training_sources
from nexus_eval.geometry.gradients import gradient_cosines
from nexus_eval.geometry.losses import BatchesBySource
from nexus_eval.geometry.minima import FINETUNE_OPTIMIZERS, minima_closeness
from nexus_eval.io import write_json_atomic
from nexus_eval.provenance import environment

SCHEMA = 1
# Bump when a change to the measurement changes its numbers: old cache entries then stop matching.
MEASUREMENT_VERSION = 1


@dataclass(frozen=True)
class GeometrySettings:
    """Everything that decides the numbers of a measurement (besides the checkpoint itself).

    `record()` is the result's "settings" entry and its hash is the cache key: field names and order are part of the
    cache format, so existing cache entries stay valid only while they do not change.
    """

    n_batches: int
    batch_size: int
    context: int
    finetune_steps: int
    finetune_lr: float
    finetune_optimizer: str
    hessian_iters: int
    seed: int
    sources: tuple[str, ...]
    data: str  # the data build's content hash
    version: int = MEASUREMENT_VERSION

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "sources": list(self.sources)}

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.record(), sort_keys=True).encode()).hexdigest()

    def work_units(self) -> int:
        """Forward/backward passes of one measurement: the progress bar's total.

        gradients n·N, Hessian power iteration 2·n·iters, base losses n·N, fine-tunes n·steps, cross losses n²·N."""
        n, batches = len(self.sources), self.n_batches
        return n * batches + 2 * n * self.hessian_iters + n * batches + n * self.finetune_steps + n * n * batches


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
    chosen = _chosen_sources(data_dir, sources)
    ckpt_hash = content_hash(ckpt)
    settings = GeometrySettings(
        n_batches=n_batches,
        batch_size=batch_size,
        context=_context(ckpt, context),
        finetune_steps=finetune_steps,
        finetune_lr=finetune_lr,
        finetune_optimizer=finetune_optimizer,
        hessian_iters=hessian_iters,
        seed=seed,
        sources=tuple(chosen),
        data=_data_fingerprint(data_dir),
    )
    cache_file = cache_dir / f"{ckpt_hash[:16]}-{settings.key()[:16]}.json"
    if not refresh and (cached := _read_cache(cache_file)) is not None:
        return cached

    started = time.perf_counter()
    model = _load(ckpt, settings.seed, device)
    heldout, finetune = _micro_batches(data_dir, settings, vocab=model.get_input_embeddings().weight.shape[0])
    measured = _measure(model, heldout, finetune, settings, checkpoint_label(ckpt), progress)
    seconds = time.perf_counter() - started
    result = _result(ckpt, ckpt_hash, settings, measured, seconds, str(next(model.parameters()).device))
    write_json_atomic(cache_file, result)
    return result


# ---- settings and cache ----------------------------------------------------------------------------------------


def _check_settings(
    n_batches: int, batch_size: int, finetune_steps: int, lr: float, optimizer: str, iters: int
) -> None:
    for flag, value in (("--batches", n_batches), ("--batch-size", batch_size), ("--finetune-steps", finetune_steps)):
        if value < 1:
            raise NexusError(f"{flag} must be at least 1 (got {value})")
    if lr <= 0:
        raise NexusError(f"--finetune-lr must be positive (got {lr})")
    if optimizer not in FINETUNE_OPTIMIZERS:
        raise NexusError(f"--finetune-optimizer must be one of {', '.join(FINETUNE_OPTIMIZERS)} (got {optimizer!r})")
    if iters < 0:
        raise NexusError(f"--hessian-iters must be >= 0 (got {iters})")


def _chosen_sources(data_dir: Path, sources: list[str] | None) -> list[str]:
    """The sources to compare (sorted; default: every training source of the data build), at least two."""
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: no such data directory (--data)")
    all_sources = training_sources(data_dir)
    chosen = sorted(sources or all_sources)
    if unknown := [s for s in chosen if s not in all_sources]:
        raise NexusError(
            f"--sources: {', '.join(unknown)} not in {data_dir / 'manifest.json'} ({', '.join(all_sources)})"
        )
    if len(chosen) < 2:
        raise NexusError(f"--sources: geometry compares sources, need at least two (got {', '.join(chosen)})")
    return chosen


def _context(ckpt: Path, context: int | None) -> int:
    """The window length: `context` when given, else the checkpoint's max_position_embeddings."""
    config = json.loads((ckpt / "config.json").read_text()) if (ckpt / "config.json").exists() else {}
    trained = config.get("max_position_embeddings")
    if context is not None and (context < 2 or (trained and context > trained)):
        limit = f" and at most {ckpt}'s {trained} (max_position_embeddings in config.json)" if trained else ""
        raise NexusError(f"--context {context}: must be at least 2{limit}")
    context = context or trained
    if not context or context < 2:
        raise CheckpointError(f"{ckpt}: no max_position_embeddings in config.json; pass --context")
    return context


def _data_fingerprint(data_dir: Path) -> str:
    """The data build's content hash (covers every file's sha256): a rebuilt data dir gets new cache keys."""
    from nexus_eval.data import load_manifest

    return str(load_manifest(data_dir).get("hash"))


def _read_cache(cache_file: Path) -> dict[str, Any] | None:
    """The cached result, or None when there is none (a corrupt entry is measured again and overwritten)."""
    if not cache_file.exists():
        return None
    try:
        return json.loads(cache_file.read_text())
    except json.JSONDecodeError:
        return None


# ---- model, micro-batches, measurement -------------------------------------------------------------------------


def _load(ckpt: Path, seed: int, device: str | None) -> nn.Module:
    torch.manual_seed(seed)
    model, _ = load_model(ckpt)
    return model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _micro_batches(data_dir: Path, settings: GeometrySettings, vocab: int) -> tuple[BatchesBySource, BatchesBySource]:
    """(held-out val micro-batches, fine-tune train micro-batches) per source."""
    s = settings

    def cut(split: str, count: int) -> BatchesBySource:
        return {
            source: source_batches(data_dir, split, source, count, s.batch_size, s.context, s.seed, vocab)
            for source in s.sources
        }

    return cut("val", s.n_batches), cut("train", s.finetune_steps)


def _measure(
    model: nn.Module,
    heldout: BatchesBySource,
    finetune: BatchesBySource,
    settings: GeometrySettings,
    label: str,
    progress: bool,
) -> dict[str, Any]:
    """Gradient cosines on the held-out micro-batches, then the per-source fine-tunes: one bar over both."""
    with progress_bar(f"geometry {label}", settings.work_units(), enabled=progress) as bar:
        advance = bar.advance if progress else None
        grads = gradient_cosines(model, heldout, settings.hessian_iters, settings.seed, advance=advance)
        minima = minima_closeness(
            model,
            finetune,
            settings.finetune_steps,
            settings.finetune_lr,
            settings.finetune_optimizer,
            eval_batches_by_source=heldout,
            advance=advance,
        )
    return {**grads, **minima}


def _result(
    ckpt: Path, ckpt_hash: str, settings: GeometrySettings, measured: dict[str, Any], seconds: float, device: str
) -> dict[str, Any]:
    meta = read_meta(ckpt)
    return {
        "schema": SCHEMA,
        "checkpoint": str(ckpt),
        "checkpoint_hash": ckpt_hash,
        "step": meta.get("step"),
        "run_optimizer": meta.get("optimizer"),
        "heldout_loss": meta.get("heldout_loss"),
        **measured,
        "settings": settings.record(),
        "seconds": round(seconds, 2),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "environment": environment(device),  # the code, libraries and device that measured it
    }
