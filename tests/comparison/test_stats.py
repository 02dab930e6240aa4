"""Paired bootstrap, seed and hierarchical CIs: coverage near nominal, effect detection, seed variance,
reproducibility, weights, overlap counts."""

from __future__ import annotations

import numpy as np
import pytest

from nexus_eval.comparison.stats import (
    HIERARCHICAL_UNIT,
    SeedItems,
    bootstrap_means,
    both_exclude_zero,
    hierarchical_bootstrap,
    item_overlap,
    paired_bootstrap,
    seed_mean_ci,
    stream_seed,
    t_quantile_975,
)

STREAM_0_ARITH_5 = 1252061755  # the first draw of stream_seed(0, "arith_mc", 5.0), as recorded when it was written


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


def test_ten_thousand_resamples_at_gsm8k_size_give_an_interval_around_the_mean() -> None:
    """The study's size (its timing is bench/stats_bench.py's)."""
    base, other = paired_items(np.random.default_rng(0), 1319, 0.3, 0.32)  # GSM8k test size
    est = paired_bootstrap(base, other, resamples=10_000)
    mean = float(np.mean(other - base))
    assert est.low < mean < est.high and est.high - est.low < 0.1


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


@pytest.mark.parametrize(
    ("df", "quantile"),
    [(1, 12.7062047), (2, 4.3026527), (5, 2.5705818), (30, 2.0422725), (31, 2.0395134), (60, 2.0002978),
     (120, 1.9799304), (1000, 1.9623391)],
)  # fmt: skip
def test_t_quantile_is_exact_for_every_degree_of_freedom(df: int, quantile: float) -> None:
    """Above 30 degrees of freedom too: the normal quantile there is about 4% narrower at 31, 2% at 60."""
    assert t_quantile_975(df) == pytest.approx(quantile, abs=1e-6)


def test_every_stream_draws_its_own_resamples_reproducibly() -> None:
    """Two tasks (or targets) of equal size must not share resample indices; the same one must, run to run."""

    def indices(seed: np.random.SeedSequence) -> np.ndarray:
        return np.random.default_rng(seed).integers(0, 100, size=(20, 100))

    first, again = stream_seed(0, "arith_mc", 5.0), stream_seed(0, "arith_mc", 5.0)
    assert np.array_equal(indices(first), indices(again))
    for other in (stream_seed(0, "logic_mc", 5.0), stream_seed(0, "arith_mc", 4.5), stream_seed(1, "arith_mc", 5.0)):
        assert not np.array_equal(indices(first), indices(other))
    # A stable digest, not Python's per-process hash(): the stream is the same in every process.
    assert np.random.default_rng(stream_seed(0, "arith_mc", 5.0)).integers(0, 2**31) == STREAM_0_ARITH_5


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


def seeds_with_spread(
    seed_effects: tuple[float, ...], items: int = 300, item_sd: float = 0.05, rng_seed: int = 0
) -> list[SeedItems]:
    """Paired scores per training seed whose differences centre on that seed's effect, tight within the seed."""
    rng = np.random.default_rng(rng_seed)
    out = []
    for effect in seed_effects:
        base = rng.normal(2.3, 0.3, items)
        out.append(SeedItems(base, base + effect + rng.normal(0.0, item_sd, items)))
    return out


def test_hierarchical_ci_carries_the_seed_to_seed_variance() -> None:
    """The study's arith_gold_bpb at 5.0: per-seed item CIs exclude zero with opposite signs, the across-seed
    interval must not."""
    seeds = seeds_with_spread((0.116, 0.027, -0.372))
    per_seed = [paired_bootstrap(s.baseline, s.candidate, resamples=2000) for s in seeds]
    assert all(e.excludes_zero for e in per_seed)
    assert {e.low > 0 for e in per_seed} == {True, False}  # opposite signs
    est = hierarchical_bootstrap(seeds, resamples=4000)
    t_est = seed_mean_ci(np.array([e.mean for e in per_seed]))
    assert est.low < 0 < est.high and not est.excludes_zero
    assert est.mean == pytest.approx(np.mean([e.mean for e in per_seed]))
    assert (est.n, est.items, est.unit) == (3, 900, HIERARCHICAL_UNIT)
    width, t_width = est.high - est.low, t_est.high - t_est.low
    assert width > 10 * max(e.high - e.low for e in per_seed)  # far wider than any seed's item CI
    assert width > 0.1 * t_width  # and of the t interval's order of magnitude
    assert est.to_dict()["items"] == 900 and "items" not in per_seed[0].to_dict()


def test_hierarchical_ci_finds_an_effect_every_seed_shares() -> None:
    seeds = seeds_with_spread((0.10, 0.12, 0.11, 0.09, 0.13))
    est = hierarchical_bootstrap(seeds, resamples=2000)
    assert est.excludes_zero and 0.09 < est.low < est.mean < est.high < 0.13


def test_hierarchical_bootstrap_is_reproducible_and_seeded() -> None:
    seeds = seeds_with_spread((0.05, -0.02, 0.01), items=100, item_sd=0.2)
    first, again = hierarchical_bootstrap(seeds, 1000, seed=0), hierarchical_bootstrap(seeds, 1000, seed=0)
    assert first == again
    other = hierarchical_bootstrap(seeds, 1000, seed=1)
    assert (other.low, other.high) != (first.low, first.high) and other.mean == first.mean


def test_hierarchical_bootstrap_honours_ratio_weights() -> None:
    """Each seed's statistic is its weighted mean Σw·d / Σw, in the point estimate and in every resample."""
    d = np.r_[np.zeros(100), np.ones(100)]
    heavy_ones = np.r_[np.ones(100), np.full(100, 1000.0)]
    seeds = [SeedItems(np.zeros(200), d, heavy_ones), SeedItems(np.zeros(200), d, heavy_ones)]
    weighted = hierarchical_bootstrap(seeds, resamples=1000)
    assert weighted.mean == pytest.approx((heavy_ones * d).sum() / heavy_ones.sum())
    assert weighted.low > 0.95  # a resample holding any heavy item sits near 1, where an unweighted mean sits at ½
    assert "weighted" in weighted.method
    unweighted = hierarchical_bootstrap([SeedItems(s.baseline, s.candidate) for s in seeds], resamples=1000)
    assert unweighted.mean == 0.5 and unweighted.low < 0.5 < unweighted.high < 0.6
    # Identical seeds of identical items: every resample collapses onto the weighted mean.
    flat = [SeedItems(np.zeros(3), np.full(3, 0.2), np.array([1.0, 2.0, 3.0]))] * 2
    assert hierarchical_bootstrap(flat, resamples=200).low == pytest.approx(0.2)
    with pytest.raises(ValueError):
        hierarchical_bootstrap([SeedItems(np.zeros(2), np.ones(2), np.array([1.0, 0.0]))] * 2)


def test_no_across_seed_interval_from_fewer_than_two_seeds() -> None:
    (one,) = seeds_with_spread((0.3,))
    single = hierarchical_bootstrap([one])
    assert single.n == 1 and single.mean == pytest.approx(0.3, abs=0.01) and np.isnan(single.low)
    assert not single.excludes_zero
    assert hierarchical_bootstrap([]).n == 0
    with pytest.raises(ValueError):
        hierarchical_bootstrap([one, SeedItems(np.zeros(0), np.zeros(0))])  # a seed without items


def test_a_claim_over_few_seeds_needs_the_t_interval_too() -> None:
    """No true effect, seed-to-seed spread, 3 seeds: the bootstrap over seeds alone cannot reach past the extreme
    seeds and excludes zero far above its nominal 5%; requiring the t interval too brings the rate back down."""
    rng = np.random.default_rng(11)
    trials, bootstrap_only, both = 200, 0, 0
    for trial in range(trials):
        seeds = seeds_with_spread(tuple(rng.normal(0.0, 0.1, 3)), items=20, item_sd=0.01, rng_seed=trial)
        est = hierarchical_bootstrap(seeds, resamples=400, seed=trial)
        t_est = seed_mean_ci(np.array([s.candidate.mean() - s.baseline.mean() for s in seeds]))
        bootstrap_only += est.excludes_zero
        both += both_exclude_zero(est, t_est)
    assert bootstrap_only / trials > 0.12
    assert both / trials <= 0.09


def test_perplexity_is_the_corpus_ratio_exponentiated_in_the_estimate_and_every_resample() -> None:
    """exp(Σ nll / Σ units) per side, as lm-eval's weighted_perplexity; not the weighted mean of item perplexities."""
    rng = np.random.default_rng(9)
    words = rng.integers(5, 400, 150).astype(float)
    base, other = rng.normal(2.0, 0.6, 150), rng.normal(1.9, 0.6, 150)  # log perplexity per word of each item
    est = paired_bootstrap(base, other, resamples=500, seed=4, weights=words, exponentiate=True)
    corpus = np.exp((other * words).sum() / words.sum()) - np.exp((base * words).sum() / words.sum())
    assert est.mean == pytest.approx(corpus, rel=1e-12) and est.low < est.mean < est.high
    assert "corpus perplexity" in est.method
    idx = np.random.default_rng(4).integers(0, 150, size=(500, 150))  # the same resamples, aggregated by hand
    total = words[idx].sum(axis=1)
    by_hand = np.exp((other * words)[idx].sum(axis=1) / total) - np.exp((base * words)[idx].sum(axis=1) / total)
    assert (est.low, est.high) == pytest.approx(tuple(np.quantile(by_hand, [0.025, 0.975])), rel=1e-12)
    seeds = [SeedItems(base, other, words, exponentiate=True), SeedItems(base[:100], other[:100], words[:100], True)]
    across = hierarchical_bootstrap(seeds, resamples=300)
    assert across.mean == pytest.approx(np.mean([s.difference() for s in seeds]))
    assert across.mean == pytest.approx((corpus + seeds[1].difference()) / 2)
    with pytest.raises(ValueError, match="units"):
        paired_bootstrap(base, other, exponentiate=True)
