"""Paired statistics for loss-matched comparisons (numpy only).

- paired_bootstrap: the mean per-item difference (candidate − baseline) on the same items, with a percentile
  bootstrap CI; items are resampled with replacement, all resamples drawn at once from a fixed seed (reproducible).
- seed_mean_ci: mean over seeds of per-seed differences with a Student-t CI (n − 1 degrees of freedom).
- hierarchical_bootstrap: the across-seed difference with a two-stage bootstrap CI (seeds with replacement, then items
  within each chosen seed), so the interval carries both the seed-to-seed and the item-to-item variance.
- item_overlap: of the items the baseline solves, the share the candidate keeps, and what each alone solves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from nexus_eval.schema import EstimateFields, SeedBand

BOOTSTRAP_SEED = 0
RESAMPLES = 10_000
LEVEL = 0.95
HIERARCHICAL_UNIT = "seeds×items"  # Estimate.unit of the two-stage bootstrap (n counts its seeds)
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
    """A difference with its CI; low/high are NaN when n is too small for an interval.

    items: for an estimate over seeds × items, the paired items summed over its seeds (n counts the seeds)."""

    mean: float
    low: float
    high: float
    n: int
    unit: str  # "items", "seeds" or "seeds×items"
    method: str
    items: int | None = None

    @property
    def excludes_zero(self) -> bool:
        return bool(self.low > 0 or self.high < 0)

    def to_dict(self) -> EstimateFields:
        fields = {k: v for k, v in asdict(self).items() if not (k == "items" and v is None)}
        return EstimateFields(**fields, excludes_zero=self.excludes_zero)


@dataclass(frozen=True)
class SeedItems:
    """One training seed's paired item scores (and ratio weights, e.g. bytes per document, when the metric has them)."""

    baseline: np.ndarray
    candidate: np.ndarray
    weights: np.ndarray | None = None


def _as_pairs(baseline: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    a = np.asarray(baseline, dtype=np.float64)
    b = np.asarray(candidate, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores need equal 1-D shapes, got {a.shape} and {b.shape}")
    return b - a


def _checked_weights(weights: np.ndarray | None, diff: np.ndarray) -> np.ndarray | None:
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    if w is not None and (w.shape != diff.shape or not np.all(w > 0)):
        raise ValueError("item weights must be positive and aligned with the items")
    return w


def _weighted_mean(values: np.ndarray, weights: np.ndarray | None) -> float:
    return float(values.mean()) if weights is None else float((weights * values).sum() / weights.sum())


def bootstrap_means(
    values: np.ndarray, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED, weights: np.ndarray | None = None
) -> np.ndarray:
    """(Weighted) means of `resamples` resamples with replacement of `values`, vectorised in chunks."""
    return _resampled_means(values, weights, resamples, np.random.default_rng(seed))


def _resampled_means(
    values: np.ndarray, weights: np.ndarray | None, resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """bootstrap_means drawing from a given generator (the two-stage bootstrap shares one across seeds)."""
    n = len(values)
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
    w = _checked_weights(weights, diff)
    means = bootstrap_means(diff, resamples, seed, w)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    mean = _weighted_mean(diff, w)
    kind = "paired bootstrap" if w is None else "weighted paired bootstrap"
    return Estimate(mean, float(low), float(high), n, "items", f"{kind} ×{resamples}")


def hierarchical_bootstrap(
    seeds: Sequence[SeedItems],
    resamples: int = RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = LEVEL,
) -> Estimate:
    """Mean over training seeds of each seed's (weighted) mean item difference, with a two-stage percentile CI.

    Each resample draws as many seeds as there are, with replacement, then resamples the items of every drawn seed
    (a seed drawn twice gets two independent item resamples); its statistic is the mean of those per-seed means. The
    interval so carries the between-seed variance that an item bootstrap of one seed leaves out. With fewer than two
    seeds there is no across-seed interval (low/high NaN). n = seeds; items = paired items over all seeds."""
    diffs = [_as_pairs(s.baseline, s.candidate) for s in seeds]
    if any(len(d) == 0 for d in diffs):
        raise ValueError("every seed of a hierarchical bootstrap needs paired items")
    weights = [_checked_weights(s.weights, d) for s, d in zip(seeds, diffs, strict=True)]
    weighted = any(w is not None for w in weights)
    kind = "weighted hierarchical bootstrap" if weighted else "hierarchical bootstrap"
    method = f"{kind} (seeds, then items within seed) ×{resamples}"
    n_seeds, n_items = len(diffs), sum(len(d) for d in diffs)
    if n_seeds == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, HIERARCHICAL_UNIT, method, 0)
    mean = float(np.mean([_weighted_mean(d, w) for d, w in zip(diffs, weights, strict=True)]))
    if n_seeds == 1:
        return Estimate(mean, math.nan, math.nan, 1, HIERARCHICAL_UNIT, method, n_items)
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n_seeds, size=(resamples, n_seeds))  # stage 1: which seeds each resample holds
    seed_means = np.empty(drawn.shape)
    for index, (d, w) in enumerate(zip(diffs, weights, strict=True)):
        slots = drawn == index  # stage 2: an independent item resample for every slot this seed was drawn into
        seed_means[slots] = _resampled_means(d, w, int(slots.sum()), rng)
    alpha = (1 - level) / 2
    low, high = np.quantile(seed_means.mean(axis=1), [alpha, 1 - alpha])
    return Estimate(mean, float(low), float(high), n_seeds, HIERARCHICAL_UNIT, method, n_items)


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


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def seed_band(values: Sequence[float]) -> SeedBand:
    """Mean over seeds with its 95% Student-t interval (seed_mean_ci); None where there are too few seeds."""
    est = seed_mean_ci(np.asarray(values, dtype=np.float64))
    return {
        "mean": _finite_or_none(est.mean),
        "low": _finite_or_none(est.low),
        "high": _finite_or_none(est.high),
        "n": est.n,
    }


def seed_sd(values: Sequence[float]) -> float | None:
    """Sample standard deviation over seeds (n − 1 degrees of freedom); None with fewer than two."""
    return float(np.std(np.asarray(values, dtype=np.float64), ddof=1)) if len(values) >= 2 else None


def both_exclude_zero(first: Estimate, second: Estimate) -> bool:
    """Both intervals exclude zero, on the same side: the claim an across-seed row makes. With the few seeds of a
    study a percentile bootstrap over seeds is too narrow (it cannot reach past the extreme seeds, and it uses normal
    rather than t quantiles): in simulation with 3 seeds and no true effect it excludes zero in 15-25% of studies,
    the t interval in about 5%."""
    return bool((first.low > 0 and second.low > 0) or (first.high < 0 and second.high < 0))


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
