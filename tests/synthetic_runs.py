"""Synthetic but format-true run dirs and eval-cache results for the compare/report/leaderboard tests.

A run dir has run.json, metrics.jsonl and ckpt-* dirs with config.json (distinct per checkpoint, so content hashes
differ) and nexus.json; eval results are written into a cache dir in the eval helper's format, keyed by the real
content hash, so compare() finds them and never has to evaluate.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nexus_eval.checkpoints import checkpoint_name, content_hash

DATA_HASH = "data-0"
OOD_DOMAINS = ("legal", "poetry")


def make_run(
    root: Path,
    optimizer: str,
    seed: int | None,
    losses: list[float],
    targets: tuple[float, ...] = (),
    crossings: dict[int, float] | None = None,
    ood_offset: float = 0.5,
    steps: list[int] | None = None,
) -> Path:
    """A run whose i-th checkpoint has held-out loss losses[i]; crossings: checkpoint index → target_loss."""
    run_id = f"tiny-{optimizer}-s{seed}"
    run_dir = root / run_id
    run_dir.mkdir(parents=True)
    recipe = {"name": "tiny", "train": {"target_losses": list(targets)}}
    info = {"run_id": run_id, "optimizer": optimizer, "seed": seed, "recipe": recipe, "data_hash": DATA_HASH}
    (run_dir / "run.json").write_text(json.dumps(info))
    steps = steps or [10 * (i + 1) for i in range(len(losses))]
    rows = []
    for i, (step, loss) in enumerate(zip(steps, losses, strict=True)):
        ckpt = run_dir / checkpoint_name(step)
        ckpt.mkdir()
        (ckpt / "config.json").write_text(json.dumps({"model_type": "llama", "id": f"{run_id}-{step}"}))
        ood = {d: loss + ood_offset + 0.1 * k for k, d in enumerate(OOD_DOMAINS)}
        meta = {
            **info,
            "step": step,
            "tokens_seen": step * 1000,
            "heldout_loss": loss,
            "heldout_loss_per_source": {"text": loss, "math": loss, "code": loss},
            "ood_loss": ood,
            "target_loss": (crossings or {}).get(i),
        }
        (ckpt / "nexus.json").write_text(json.dumps(meta))
        cosine = {"sources": ["code", "math", "text"], "matrix": [], "mean_offdiag": 0.2 + 0.01 * i}
        rows.append({"step": step, "tokens": step * 1000, "train_loss": loss, "val_loss": loss, "grad_cosine": cosine})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run_dir


def write_result(
    cache: Path,
    ckpt: Path,
    task: str,
    scores: np.ndarray,
    metric: str = "acc,none",
    doc_ids: list[int] | None = None,
    backend: str = "hf",
    limit: int | None = None,
) -> Path:
    """One eval result JSON (common.md format) for ckpt × task with the given per-item scores."""
    digest = content_hash(ckpt)
    doc_ids = list(range(len(scores))) if doc_ids is None else doc_ids
    mean = float(np.mean(scores))
    result = {
        "schema": 1,
        "checkpoint": str(ckpt),
        "checkpoint_hash": digest,
        "task": task,
        "task_version": 1.0,
        "yaml_hash": "y0",
        "backend": backend,
        "num_fewshot": None,
        "limit": limit,
        "seed": 0,
        "metrics": {metric: mean},
        "stderr": {metric: float(np.std(scores) / np.sqrt(len(scores)))},
        "higher_is_better": {metric: True},
        "doc_ids": doc_ids,
        "item_scores": {metric: [float(s) for s in scores]},
        "n": len(scores),
        "lm_eval_version": "0.4.13",
        "created": "2025-01-01T00:00:00",
    }
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{digest[:16]}-{task}-{backend}.json"
    path.write_text(json.dumps(result))
    return path


def solved_items(loss: float, difficulty: np.ndarray, bonus: float, rng: np.random.Generator) -> np.ndarray:
    """0/1 item scores of a model at `loss`: easier items and lower loss solve more; `bonus` shifts the odds."""
    logit = 3.0 * (5.0 - loss) - difficulty + bonus
    return (rng.random(len(difficulty)) < 1 / (1 + np.exp(-logit))).astype(float)


def make_study(
    root: Path,
    cache: Path,
    seeds: tuple[int, ...] = (0,),
    bonus: float = 0.0,
    tasks: tuple[str, ...] = ("arith_mc",),
    items: int = 150,
) -> list[Path]:
    """AdamW and Nexus runs (per seed) that both cross targets 5.0 and 4.5 within 0.005 nats, with cached results."""
    run_dirs = []
    difficulty = np.random.default_rng(123).normal(0.0, 1.5, items)
    adamw_losses = [5.6, 4.998, 4.8, 4.497, 4.3]
    nexus_losses = [5.5, 4.995, 4.75, 4.499, 4.35]
    for seed in seeds:
        for optimizer, losses in (("adamw", adamw_losses), ("nexus", nexus_losses)):
            jitter = 0.001 * seed
            run = make_run(
                root,
                optimizer,
                seed,
                [x - jitter for x in losses],
                targets=(5.0, 4.5),
                crossings={1: 5.0, 3: 4.5},
                ood_offset=0.5 if optimizer == "adamw" else 0.45,
            )
            run_dirs.append(run)
            rng = np.random.default_rng([seed, optimizer == "nexus"])
            for ckpt in sorted(run.glob("ckpt-*")):
                loss = json.loads((ckpt / "nexus.json").read_text())["heldout_loss"]
                for task in tasks:
                    extra = bonus if optimizer == "nexus" else 0.0
                    write_result(cache, ckpt, task, solved_items(loss, difficulty, extra, rng))
    return run_dirs
