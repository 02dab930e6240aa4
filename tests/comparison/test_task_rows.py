"""task_rows on hand-made pairs and results: every row its own bootstrap resamples, and corpus perplexities."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from lm_eval.api.metrics import bits_per_byte, weighted_perplexity

from nexus_eval.comparison.match import Checkpoint, Pair, Side
from nexus_eval.comparison.pipeline import task_rows
from nexus_eval.comparison.settings import CompareSettings
from nexus_eval.evaluation.runner import per_item_scores

REFERENCE, CANDIDATE = Path("runs/tiny-adamw-s0/ckpt-000020"), Path("runs/tiny-nexus-s0/ckpt-000020")


def side(path: Path, loss: float) -> Side:
    ckpt = Checkpoint(path, path.parent.name, path.parent.name, 0, 20, 20_000, loss, None, {})
    return Side((ckpt,), (1.0,), loss)


PAIR = Pair(5.0, "0", "nexus", side(REFERENCE, 5.0), side(CANDIDATE, 5.001))


def result(checkpoint: Path, task: str, metrics: dict[str, float], samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The fields of an eval result task_rows reads, its item scores and weights as the runner keeps them."""
    doc_ids, item_scores, item_weights = per_item_scores(samples)
    return {
        "checkpoint": str(checkpoint),
        "task": task,
        "metrics": metrics,
        "higher_is_better": {name: not name.endswith(("perplexity,none", "bits_per_byte,none")) for name in metrics},
        "doc_ids": doc_ids,
        "item_scores": item_scores,
        "item_weights": item_weights,
    }


def accuracy_result(checkpoint: Path, task: str, scores: np.ndarray) -> dict[str, Any]:
    samples = [{"doc_id": i, "filter": "none", "metrics": ["acc"], "acc": float(s)} for i, s in enumerate(scores)]
    return result(checkpoint, task, {"acc,none": float(np.mean(scores))}, samples)


def test_two_tasks_of_equal_size_draw_different_resamples_and_the_same_ones_run_to_run() -> None:
    """Same items, same scores, two task names: one shared seed gave both the same CI (their errors moved together)."""
    rng = np.random.default_rng(2)
    reference, candidate = (rng.random(120) < 0.5).astype(float), (rng.random(120) < 0.6).astype(float)
    tasks = ["first_mc", "second_mc"]
    results = {
        (c, t): accuracy_result(c, t, s) for c, s in ((REFERENCE, reference), (CANDIDATE, candidate)) for t in tasks
    }
    settings = CompareSettings(tasks=tuple(tasks), bootstrap_resamples=500)
    rows, _ = task_rows([PAIR], tasks, results, settings)
    first, second = rows
    assert first["mean"] == second["mean"] and (first["low"], first["high"]) != (second["low"], second["high"])
    again, _ = task_rows([PAIR], tasks, results, settings)
    assert again == rows


def rolling_samples(logliks: np.ndarray, words: np.ndarray, nbytes: np.ndarray) -> list[dict[str, Any]]:
    """loglikelihood_rolling samples as lm-eval logs them: (log-likelihood, units) per document and metric."""
    metrics = ["word_perplexity", "byte_perplexity", "bits_per_byte"]
    return [
        {
            "doc_id": i,
            "filter": "none",
            "metrics": metrics,
            "word_perplexity": (float(ll), float(w)),
            "byte_perplexity": (float(ll), float(b)),
            "bits_per_byte": (float(ll), float(b)),
        }
        for i, (ll, w, b) in enumerate(zip(logliks, words, nbytes, strict=True))
    ]


@pytest.mark.parametrize("metric", ["word_perplexity", "byte_perplexity", "bits_per_byte"])
def test_ratio_metrics_are_lm_eval_corpus_figures(metric: str) -> None:
    """Δ is the difference of lm-eval's own corpus aggregates of the same items (weighted_perplexity, bits_per_byte),
    not a per-item average: only bits per byte, linear in the log-likelihood, agrees with one."""
    rng = np.random.default_rng(6)
    words = rng.integers(20, 600, 80).astype(float)
    nbytes = words * rng.uniform(4.0, 7.0, 80)
    logliks = {REFERENCE: -words * rng.gamma(9.0, 0.35, 80), CANDIDATE: -words * rng.gamma(9.0, 0.33, 80)}
    aggregate = {"word_perplexity": weighted_perplexity, "byte_perplexity": weighted_perplexity}.get(
        metric, bits_per_byte
    )
    units = nbytes if metric != "word_perplexity" else words
    corpus = {c: aggregate(list(zip(ll.tolist(), units.tolist(), strict=True))) for c, ll in logliks.items()}
    task = "wikitext_like"
    results = {
        (c, task): result(c, task, {f"{metric},none": corpus[c]}, rolling_samples(ll, words, nbytes))
        for c, ll in logliks.items()
    }
    (row,), _ = task_rows([PAIR], [task], results, CompareSettings(tasks=(task,), bootstrap_resamples=400))
    assert row["metric"] == f"{metric},none" and row["n"] == 80
    assert (row["reference"], row["candidate"]) == (corpus[REFERENCE], corpus[CANDIDATE])
    assert row["mean"] == pytest.approx(corpus[CANDIDATE] - corpus[REFERENCE], rel=1e-9)
    assert row["low"] < row["mean"] < row["high"] and math.isfinite(row["high"])
