"""Paired bootstrap and seed CIs: coverage near nominal, effect detection, reproducibility, overlap counts."""

from __future__ import annotations

import time

import numpy as np
import pytest

from nexus_eval.comparison.stats import bootstrap_means, item_overlap, paired_bootstrap, seed_mean_ci, t_quantile_975


def paired_items(rng: np.random.Generator, n: int, p_base: float, p_other: float) -> tuple[np.ndarray, np.ndarray]:
    """Correlated 0/1 scores on the same items with E[other − base] = p_other − p_base exactly."""
    u = rng.random(n)
    w = np.where(rng.random(n) < 0.7, u, rng.random(n))  # 70% of items share their difficulty draw
    return (w < p_base).astype(float), (u < p_other).astype(float)


def test_bootstrap_ci_covers_the_true_difference_at_about_the_nominal_rate() -> None:
    rng = np.random.default_rng(7)
    trials, covered = 300, 0
    for trial in range(trials):
        base, other = paired_items(rng, 120, 0.45, 0.55)
        est = paired_bootstrap(base, other, resamples=1000, seed=trial)
        covered += est.low <= 0.10 <= est.high
    assert 0.89 <= covered / trials <= 0.99, covered / trials  # nominal 0.95; percentile CIs run a little narrow


def test_ci_excludes_zero_for_a_clear_effect_and_includes_it_for_none() -> None:
    rng = np.random.default_rng(1)
    base, other = paired_items(rng, 800, 0.40, 0.55)
    clear = paired_bootstrap(base, other)
    assert clear.excludes_zero and clear.low > 0 and clear.n == 800 and clear.unit == "items"
    same = paired_bootstrap(base, rng.permutation(base))  # same accuracy, items shuffled
    assert same.mean == 0 and not same.excludes_zero and same.low < 0 < same.high
    worse = paired_bootstrap(other, base)
    assert worse.excludes_zero and worse.high < 0


def test_bootstrap_is_reproducible_and_seeded() -> None:
    base, other = paired_items(np.random.default_rng(3), 300, 0.5, 0.52)
    first, again = paired_bootstrap(base, other, seed=0), paired_bootstrap(base, other, seed=0)
    assert (first.low, first.high) == (again.low, again.high)
    diff = other - base
    assert np.array_equal(bootstrap_means(diff, 500, seed=0), bootstrap_means(diff, 500, seed=0))
    assert not np.array_equal(bootstrap_means(diff, 500, seed=0), bootstrap_means(diff, 500, seed=1))


def test_ten_thousand_resamples_are_fast() -> None:
    base, other = paired_items(np.random.default_rng(0), 1319, 0.3, 0.32)  # GSM8k test size
    start = time.perf_counter()
    paired_bootstrap(base, other, resamples=10_000)
    assert time.perf_counter() - start < 5.0


def test_paired_bootstrap_rejects_unpaired_shapes() -> None:
    with pytest.raises(ValueError):
        paired_bootstrap(np.zeros(3), np.zeros(4))


def test_seed_ci_is_the_student_t_interval() -> None:
    d = np.array([0.03, 0.04, 0.035])
    est = seed_mean_ci(d)
    half = t_quantile_975(2) * d.std(ddof=1) / np.sqrt(3)
    assert est.mean == pytest.approx(d.mean()) and est.high - est.mean == pytest.approx(half)
    assert est.n == 3 and est.unit == "seeds" and est.excludes_zero
    single = seed_mean_ci(np.array([0.3]))
    assert np.isnan(single.low) and not single.excludes_zero  # one seed: no interval, no claim


def test_item_overlap_counts() -> None:
    base = np.array([1, 1, 1, 0, 0, 1, 0], dtype=float)
    other = np.array([1, 0, 1, 1, 0, 1, 1], dtype=float)
    out = item_overlap(base, other)
    assert out == {
        "n": 7,
        "baseline_solved": 4,
        "candidate_solved": 5,
        "kept": 0.75,
        "only_baseline": 1,
        "only_candidate": 2,
    }


def test_weighted_items_give_the_difference_of_lm_eval_style_ratio_aggregates() -> None:
    rng = np.random.default_rng(5)
    nbytes = rng.integers(50, 400, 200).astype(float)
    base, other = rng.normal(1.2, 0.2, 200), rng.normal(1.1, 0.2, 200)
    est = paired_bootstrap(base, other, resamples=2000, weights=nbytes)
    aggregate = (other * nbytes).sum() / nbytes.sum() - (base * nbytes).sum() / nbytes.sum()
    assert est.mean == pytest.approx(aggregate) and est.low < est.mean < est.high and est.high < 0
    with pytest.raises(ValueError):
        paired_bootstrap(base, other, weights=np.zeros(200))
