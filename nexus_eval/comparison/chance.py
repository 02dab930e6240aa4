"""Whether a multiple-choice task's accuracy is indistinguishable from chance (pure computation; no I/O).

Chance for an item with n choices is 1/n (a guesser that picks uniformly); a task's chance is the mean of 1/n over
its items, since items may offer different numbers of choices. Only accuracy metrics (`acc`, `acc_norm`) of
multiple-choice items have such a chance level: bits per byte, perplexity, generated answers and other metrics are
never judged (their rows carry chance None).

The rule, the same one the report states in its legend and docs/comparison.md say:
- a side (one series' score on the task) *differs from chance* when every 95% interval of its score − chance excludes
  0, on the same side. Per seed the interval is the item bootstrap of (score − 1/n) over the paired items; across
  seeds it is both the hierarchical bootstrap (seeds, then items) and the Student-t interval over the per-seed means,
  the pair of intervals an across-seed Δ needs to claim an effect (stats.both_exclude_zero);
- a row is *at chance* when neither side differs from chance. Its Δ then compares two guessers, so whatever its CI
  says, it is no finding. A row where one side is above chance and the other is not is not at chance: that is a
  difference (one learned the task, the other did not).
A side without an interval (too few items or seeds) cannot be judged: the row is then not flagged (at_chance None).
The curves (score against held-out loss) keep whole-task scores, not items: a curve point is at chance when both
sides' mean score lies within a uniform guesser's 95% range on the task's items (curve_at_chance).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from nexus_eval.comparison.stats import (
    LEVEL,
    RESAMPLES,
    Estimate,
    Seed,
    SeedItems,
    hierarchical_bootstrap,
    paired_bootstrap,
    seed_mean_ci,
)
from nexus_eval.schema import SeedBand

CHANCE_METRICS = frozenset({"acc", "acc_norm"})  # "metric,filter" base names whose chance level is 1/n_choices
RULE = (
    "At chance: neither side's score is distinguishable from chance (1/number of choices, mean over the items). A "
    "side differs from chance only where its 95% interval of score − chance excludes 0 (per seed: item bootstrap; "
    "across seeds: both the seeds × items bootstrap and the t interval over seeds, as for Δ). An at-chance row's Δ "
    "compares two guessers and is no finding: its CI column reads “at chance” in place of yes/no. Bits per byte, "
    "perplexity and generated answers have no chance level and are never flagged."
)


def has_chance(metric: str) -> bool:
    """Whether a "metric,filter" key is an accuracy, the one kind of metric whose chance level is 1/n_choices."""
    return metric.partition(",")[0] in CHANCE_METRICS


def task_chance(choices: Mapping[int, int]) -> np.ndarray | None:
    """1/n_choices of every item of a task with a known choice count (the curves, whose points are whole-task
    scores); None when there are none."""
    counts = [c for c in choices.values() if c >= 2]
    return 1.0 / np.asarray(counts, dtype=np.float64) if counts else None


def item_chance(choices: Mapping[int, int], docs: Sequence[int]) -> np.ndarray | None:
    """1/n_choices of every doc (in order); None when one of them has no known choice count (or fewer than 2)."""
    counts = [choices.get(d) for d in docs]
    if not counts or any(c is None or c < 2 for c in counts):
        return None
    return 1.0 / np.asarray(counts, dtype=np.float64)


def _judged(interval: Estimate) -> bool:
    return math.isfinite(interval.low) and math.isfinite(interval.high)


def differs_from_chance(intervals: Sequence[Estimate]) -> bool | None:
    """Whether every interval of (score − chance) excludes 0 on the same side; None if one has no interval."""
    if not intervals or not all(_judged(i) for i in intervals):
        return None
    return all(i.low > 0 for i in intervals) or all(i.high < 0 for i in intervals)


def row_at_chance(reference: Sequence[Estimate], candidate: Sequence[Estimate]) -> bool | None:
    """At chance: neither side differs from chance (the module's rule); None when a side cannot be judged."""
    sides = [differs_from_chance(reference), differs_from_chance(candidate)]
    if None in sides:
        return None
    return not any(sides)


def seed_vs_chance(
    scores: np.ndarray, chance: np.ndarray, resamples: int = RESAMPLES, seed: Seed = 0, level: float = LEVEL
) -> Estimate:
    """One side's mean (score − chance) over the items of one seed, with its item-bootstrap interval."""
    return paired_bootstrap(chance, scores, resamples=resamples, seed=seed, level=level)


def seeds_vs_chance(
    per_seed: Sequence[tuple[np.ndarray, np.ndarray]],
    resamples: int = RESAMPLES,
    seed: Seed = 0,
    level: float = LEVEL,
) -> list[Estimate]:
    """One side's mean (score − chance) over seeds, given (scores, chance) per seed: the hierarchical bootstrap
    interval and the t interval over the per-seed means (both must exclude 0 for the side to differ from chance)."""
    items = [SeedItems(chance, scores) for scores, chance in per_seed]
    hierarchical = hierarchical_bootstrap(items, resamples=resamples, seed=seed, level=level)
    t = seed_mean_ci(np.array([float(np.mean(scores - chance)) for scores, chance in per_seed]))
    return [hierarchical, t]


def guesser_range(chance: np.ndarray, z: float = 1.959964) -> tuple[float, float]:
    """The 95% range of a uniform guesser's accuracy over items with these chance levels: its mean ± z·SD, the SD of a
    sum of independent Bernoulli(c_i) over n items being √(Σ c_i(1 − c_i)) / n."""
    c = np.asarray(chance, dtype=np.float64)
    mean, sd = float(c.mean()), math.sqrt(float(np.sum(c * (1 - c)))) / len(c)
    return mean - z * sd, mean + z * sd


def curve_at_chance(reference: SeedBand, candidate: SeedBand, chance: np.ndarray | None) -> bool | None:
    """A curve point is at chance when both sides' mean score over seeds lies within a guesser's 95% range on the
    task's items (guesser_range). The curves keep whole-task scores, not items, so the item bootstrap of the rows is
    not available here; and their t band over seeds alone would call two seeds that both score 0.30 on a 3-choice
    task "not chance" (a band of width 0), whatever the item noise. None without a chance level or a mean."""
    if chance is None or len(chance) == 0:
        return None
    means = (reference.get("mean"), candidate.get("mean"))
    if any(m is None for m in means):
        return None
    low, high = guesser_range(chance)
    return all(low <= m <= high for m in means)  # type: ignore[operator]
