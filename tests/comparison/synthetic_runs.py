"""Synthetic but format-true run dirs and eval-cache results for the compare/report/leaderboard tests.

A run dir has run.json, metrics.jsonl and ckpt-* dirs with config.json (distinct per checkpoint, so content hashes
differ) and nexus.json; eval results are written through nexus_eval.evaluation.cache under the key the evaluation
stage looks up (content hash, the registry task's version and YAML hash, backend, settings, eval seed), so compare()
finds them and never has to evaluate. Each result gets fake multiple-choice samples whose picked choice agrees with
its score (fake_samples). `block_evaluation` makes any attempt to evaluate raise EvaluationBlocked.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nexus_eval.checkpoints import checkpoint_name, content_hash
from nexus_eval.comparison import pipeline
from nexus_eval.evaluation import DEFAULT_SEED, runner
from nexus_eval.evaluation import cache as evalcache
from nexus_eval.provenance import environment
from nexus_eval.schema import ChoiceScore, ItemSample
from nexus_eval.tasks import task_info

DATA_HASH = "data-0"
OOD_DOMAINS = ("legal", "poetry")
TASK = "arith_steps1_mc"  # a registry task (compared on "acc,none"); the fakes' results stand in for its scores
OTHER_TASK = "compare_mc"


class EvaluationBlocked(Exception):
    """Raised instead of evaluating: these tests must get every result from the cache."""


def block_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any evaluation (nexus_eval.evaluation.evaluate and the CLI's) raises EvaluationBlocked."""

    def blocked(checkpoints: list[Path], *args: Any, **kwargs: Any) -> Any:
        raise EvaluationBlocked(f"evaluation attempted for {', '.join(map(str, checkpoints))}")

    monkeypatch.setattr(runner, "evaluate_with_status", blocked)
    monkeypatch.setattr(pipeline, "evaluate_series", blocked)  # compare's own entry to evaluation


@functools.cache
def task_key(task: str) -> tuple[Any, str]:
    """(version, yaml_hash) of a registry task, as the evaluation stage keys its results."""
    info = task_info(task)
    return info["version"], info["yaml_hash"]


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


CHOICES = 3


def fake_answer(doc_id: int, choice: int) -> str:
    return f" {doc_id * 10 + choice}"


def fake_samples(doc_ids: list[int], scores: list[float], metric: str) -> list[ItemSample]:
    """Multiple-choice items with gold choice doc_id % 3, whose most likely choice is the gold one exactly when the
    item's score is ≥ 0.5 (else the next one)."""
    items: list[ItemSample] = []
    for doc_id, score in zip(doc_ids, scores, strict=True):
        gold = doc_id % CHOICES
        picked = gold if score >= 0.5 else (gold + 1) % CHOICES
        choices: list[ChoiceScore] = [
            {
                "text": fake_answer(doc_id, k),
                "loglikelihood": -1.0 if k == picked else -5.0 - k,
                "is_greedy": k == picked,
            }
            for k in range(CHOICES)
        ]
        logged = [[c["loglikelihood"], c["is_greedy"]] for c in choices]
        items.append(
            {
                "doc_id": doc_id,
                "output_type": "multiple_choice",
                "prompt": f"Question {doc_id}?\nAnswer:",
                "target": gold,
                "resps": [[pair] for pair in logged],
                "filtered_resps": {metric.partition(",")[2]: logged},
                "choices": choices,
                "scores": {metric: float(score)},
            }
        )
    return items


def write_result(
    cache: Path,
    ckpt: Path,
    task: str,
    scores: np.ndarray,
    metric: str = "acc,none",
    doc_ids: list[int] | None = None,
    backend: str = "hf",
    limit: int | None = None,
    seed: int = DEFAULT_SEED,
    task_version: Any = None,
    yaml_hash: str | None = None,
    created: str = "2025-01-01T00:00:00",
) -> Path:
    """One eval result (schema.EvalResult) for ckpt × task with the given per-item scores, stored in the cache under
    its key, with fake samples beside it; task_version / yaml_hash default to the registry task's current ones (give
    others for a stale entry)."""
    version, current_hash = task_key(task)
    key = evalcache.cache_key(
        content_hash(ckpt),
        task,
        version if task_version is None else task_version,
        current_hash if yaml_hash is None else yaml_hash,
        backend,
        None,
        limit,
        seed,
    )
    doc_ids = list(range(len(scores))) if doc_ids is None else doc_ids
    mean = float(np.mean(scores))
    result = {
        "schema": evalcache.SCHEMA,
        "checkpoint": str(ckpt),
        **key,
        "metrics": {metric: mean},
        "stderr": {metric: float(np.std(scores) / np.sqrt(len(scores)))},
        "higher_is_better": {metric: True},
        "doc_ids": doc_ids,
        "item_scores": {metric: [float(s) for s in scores]},
        "n": len(scores),
        "lm_eval_version": "0.4.13",
        "created": created,
        "provenance": {
            "model_args": {"dtype": "float32", "device": "cpu", "batch_size": 8},
            "dtype": "float32",
            "batch_size": 8,
            "environment": environment(),
        },
        "samples": evalcache.samples_name(key),
    }
    path = evalcache.cache_path(cache, key)
    evalcache.write_result(path, result, fake_samples(doc_ids, result["item_scores"][metric], metric))
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
    tasks: tuple[str, ...] = (TASK,),
    items: int = 150,
    seed_spread: float = 0.001,
) -> list[Path]:
    """AdamW and Nexus runs (per seed) that both cross targets 5.0 and 4.5 within 0.005 nats, with cached results;
    seed s lowers every loss of both runs by seed_spread × s (the seed-to-seed noise of held-out loss)."""
    run_dirs = []
    difficulty = np.random.default_rng(123).normal(0.0, 1.5, items)
    adamw_losses = [5.6, 4.998, 4.8, 4.497, 4.3]
    nexus_losses = [5.5, 4.995, 4.75, 4.499, 4.35]
    for seed in seeds:
        for optimizer, losses in (("adamw", adamw_losses), ("nexus", nexus_losses)):
            jitter = seed_spread * seed
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
