"""Paired statistics for loss-matched comparisons (numpy only).

- paired_bootstrap: the mean per-item difference (candidate − baseline) on the same items, with a percentile
  bootstrap CI; items are resampled with replacement, all resamples drawn at once from a fixed seed (reproducible).
- seed_mean_ci: mean over seeds of per-seed differences with a Student-t CI (n − 1 degrees of freedom).
- item_overlap: of the items the baseline solves, the share the candidate keeps, and what each alone solves.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from nexus_eval.schema import EstimateFields

BOOTSTRAP_SEED = 0
RESAMPLES = 10_000
LEVEL = 0.95
CHUNK_ELEMENTS = 4_000_000  # resample indices drawn per chunk: bounded memory for large item sets

# Two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom (the 95% CI of a mean over few seeds);
# beyond 30 the normal quantile is within 2% of t.
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
_Z975 = 1.959964


@dataclass(frozen=True)
class Estimate:
    """A difference with its CI; low/high are NaN when n is too small for an interval."""

    mean: float
    low: float
    high: float
    n: int
    unit: str  # "items" or "seeds"
    method: str

    @property
    def excludes_zero(self) -> bool:
        return bool(self.low > 0 or self.high < 0)

    def to_dict(self) -> EstimateFields:
        return EstimateFields(**asdict(self), excludes_zero=self.excludes_zero)


def _as_pairs(baseline: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    a = np.asarray(baseline, dtype=np.float64)
    b = np.asarray(candidate, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores need equal 1-D shapes, got {a.shape} and {b.shape}")
    return b - a


def bootstrap_means(
    values: np.ndarray, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED, weights: np.ndarray | None = None
) -> np.ndarray:
    """(Weighted) means of `resamples` resamples with replacement of `values`, vectorised in chunks."""
    n = len(values)
    rng = np.random.default_rng(seed)
    per_chunk = max(1, CHUNK_ELEMENTS // max(1, n))
    out = np.empty(resamples)
    for start in range(0, resamples, per_chunk):
        stop = min(resamples, start + per_chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        if weights is None:
            out[start:stop] = values[idx].mean(axis=1)
        else:
            out[start:stop] = (values * weights)[idx].sum(axis=1) / weights[idx].sum(axis=1)
    return out


def paired_bootstrap(
    baseline: np.ndarray,
    candidate: np.ndarray,
    resamples: int = RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = LEVEL,
    weights: np.ndarray | None = None,
) -> Estimate:
    """Mean of (candidate − baseline) over the same items with a percentile bootstrap CI over items.

    weights (e.g. bytes per document for bits per byte): the weighted mean Σw·d / Σw, resampled as a ratio, which is
    how lm-eval aggregates ratio metrics; the difference then equals the difference of the aggregates."""
    diff = _as_pairs(baseline, candidate)
    n = len(diff)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, "items", "paired bootstrap")
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    if w is not None and (w.shape != diff.shape or np.any(w <= 0)):
        raise ValueError("item weights must be positive and aligned with the items")
    means = bootstrap_means(diff, resamples, seed, w)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    mean = float(diff.mean()) if w is None else float((w * diff).sum() / w.sum())
    kind = "paired bootstrap" if w is None else "weighted paired bootstrap"
    return Estimate(mean, float(low), float(high), n, "items", f"{kind} ×{resamples}")


def t_quantile_975(df: int) -> float:
    return _T975[df - 1] if df <= len(_T975) else _Z975


def seed_mean_ci(differences: np.ndarray) -> Estimate:
    """Mean over seeds of per-seed differences, 95% Student-t CI; no interval from a single seed."""
    d = np.asarray(differences, dtype=np.float64)
    n = len(d)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, "seeds", "t over seeds")
    mean = float(d.mean())
    if n == 1:
        return Estimate(mean, math.nan, math.nan, 1, "seeds", "t over seeds")
    half = t_quantile_975(n - 1) * float(d.std(ddof=1)) / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n, "seeds", "t over seeds")


def is_binary(scores: np.ndarray) -> bool:
    s = np.asarray(scores)
    return bool(np.all((s == 0) | (s == 1)))


def item_overlap(baseline: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
    """Solved-item overlap for 0/1 scores: how many the baseline solves, the share of those the candidate also
    solves (kept), and the items only one of them solves."""
    a = np.asarray(baseline) >= 0.5
    b = np.asarray(candidate) >= 0.5
    solved = int(a.sum())
    both = int((a & b).sum())
    return {
        "n": int(len(a)),
        "baseline_solved": solved,
        "candidate_solved": int(b.sum()),
        "kept": both / solved if solved else math.nan,
        "only_baseline": int((a & ~b).sum()),
        "only_candidate": int((b & ~a).sum()),
    }
