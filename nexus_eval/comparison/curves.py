"""Curves: each task's score, and each OOD domain's loss, against held-out loss over every checkpoint of every seed,
with a seed-level band at a grid of held-out losses (the paper's picture, as numbers).

A seed's curve is its checkpoints' (held-out loss, value) points sorted by loss (checkpoints at the same loss
averaged). Its value at a loss x is read off the straight line between the two points around x, and only inside the
range its points span: a seed is never extrapolated, so a grid point outside a seed's range leaves that seed out.
At each grid point a series' band is the mean over its seeds with the 95% Student-t interval over them
(stats.seed_band); the difference from the reference is taken seed by seed (seed s of the series minus seed s of the
reference, as the pairs are) and summarized the same way.

The default grid (per task or OOD domain): `points` losses evenly spaced over the range every seed of every series
covers, its ends rounded inward to 4 decimals. A grid given (--curve-losses) is used as it is.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nexus_eval.comparison.match import Run
from nexus_eval.comparison.stats import seed_band
from nexus_eval.schema import CurveBand, CurveBandPoint, CurveDelta, LossCurves, MetricPoint, OodPoint

TASK, OOD = "task", "ood"
OOD_METRIC = "ood_loss"
EDGE = 1e-9  # a grid point this close outside a seed's range still counts as inside (float rounding)
GRID_DECIMALS = 4


@dataclass(frozen=True)
class SeedCurve:
    """One seed's (held-out loss, value) points, ascending in loss, one value per loss."""

    losses: np.ndarray
    values: np.ndarray

    @classmethod
    def of(cls, points: Iterable[tuple[float, float]]) -> SeedCurve:
        by_loss: dict[float, list[float]] = defaultdict(list)
        for loss, value in points:
            by_loss[float(loss)].append(float(value))
        losses = sorted(by_loss)
        return cls(np.array(losses), np.array([float(np.mean(by_loss[x])) for x in losses]))

    @property
    def low(self) -> float:
        return float(self.losses[0])

    @property
    def high(self) -> float:
        return float(self.losses[-1])

    def at(self, loss: float) -> float | None:
        """The value at `loss`, linear between the points around it; None outside the points' range."""
        if not self.low - EDGE <= loss <= self.high + EDGE:
            return None
        return float(np.interp(loss, self.losses, self.values))

    def nearest(self, loss: float, within: float) -> float | None:
        """The value of the point nearest `loss`, if it lies within `within` of it."""
        index = int(np.argmin(np.abs(self.losses - loss)))
        return float(self.values[index]) if abs(self.losses[index] - loss) <= within + EDGE else None


Curves = dict[str, dict[Any, SeedCurve]]  # series → seed → curve


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def seed_curves(points: Iterable[Mapping[str, Any]]) -> Curves:
    """series → seed → curve, from points with series, seed, loss and value (points without a finite value are
    left out)."""
    raw: dict[str, dict[Any, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for p in points:
        if _finite(p.get("loss")) and _finite(p.get("value")):
            raw[p["series"]][p.get("seed")].append((p["loss"], p["value"]))
    return {
        series: {seed: SeedCurve.of(seeds[seed]) for seed in sorted(seeds, key=str)} for series, seeds in raw.items()
    }


def common_range(curves: Curves) -> tuple[float, float] | None:
    """(low, high): the held-out losses every seed of every series spans; None when they share no interval."""
    found = [c for seeds in curves.values() for c in seeds.values()]
    if not found:
        return None
    low, high = max(c.low for c in found), min(c.high for c in found)
    return (low, high) if low < high else None


def default_grid(span: tuple[float, float] | None, points: int) -> list[float]:
    """`points` losses from high to low over `span`, ends rounded inward to GRID_DECIMALS (so still inside it)."""
    if span is None:
        return []
    scale = 10**GRID_DECIMALS
    top, bottom = math.floor(span[1] * scale) / scale, math.ceil(span[0] * scale) / scale
    if bottom >= top:
        return []
    return [round(float(x), GRID_DECIMALS) for x in np.linspace(top, bottom, points)]


def chosen_grid(curves: Curves, points: int, given: Sequence[float] | None) -> list[float]:
    return sorted(set(given), reverse=True) if given else default_grid(common_range(curves), points)


def values_at(seeds: Mapping[Any, SeedCurve], loss: float) -> list[float]:
    return [v for curve in seeds.values() if (v := curve.at(loss)) is not None]


def paired_seeds(reference: Mapping[Any, SeedCurve], candidate: Mapping[Any, SeedCurve]) -> list[tuple[SeedCurve, ...]]:
    """The (reference, candidate) curves of each seed both have; a series of one run without a shared seed (an
    external one) against a reference of one run is one pair, as match.seed_groups pairs them."""
    common = [s for s in reference if s in candidate]
    if common:
        return [(reference[s], candidate[s]) for s in common]
    if len(reference) == 1 and len(candidate) == 1:
        return [(next(iter(reference.values())), next(iter(candidate.values())))]
    return []


def deltas_at(pairs: list[tuple[SeedCurve, ...]], loss: float) -> list[float]:
    found = []
    for reference, candidate in pairs:
        a, b = reference.at(loss), candidate.at(loss)
        if a is not None and b is not None:
            found.append(b - a)
    return found


@dataclass(frozen=True)
class Family:
    """What one panel of curves shows: a task's metric, or an OOD domain's loss."""

    kind: str  # TASK | OOD
    name: str
    metric: str
    higher_is_better: bool

    def fields(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "metric": self.metric, "higher_is_better": self.higher_is_better}


def family_curves(
    family: Family, curves: Curves, series: Sequence[str], grid: Sequence[float]
) -> tuple[list[CurveBand], list[CurveDelta]]:
    """The band of every series with curves, and each series' grid rows against the reference (series[0])."""
    bands: list[CurveBand] = []
    for label in (s for s in series if s in curves):
        points: list[CurveBandPoint] = [{"loss": x, **seed_band(values_at(curves[label], x))} for x in grid]
        bands.append({**family.fields(), "series": label, "points": points})  # type: ignore[typeddict-item]
    deltas: list[CurveDelta] = []
    reference = series[0] if series else None
    if reference not in curves:
        return bands, deltas
    for label in (s for s in series[1:] if s in curves):
        pairs = paired_seeds(curves[reference], curves[label])
        for x in grid:
            row = {
                **family.fields(),
                "series": label,
                "loss": x,
                "reference": seed_band(values_at(curves[reference], x)),
                "candidate": seed_band(values_at(curves[label], x)),
                "delta": seed_band(deltas_at(pairs, x)),
            }
            deltas.append(row)  # type: ignore[arg-type]
    return bands, deltas


def ood_points(runs: list[Run]) -> list[OodPoint]:
    """Every checkpoint's loss on each OOD domain at its held-out loss (both in the comparison's unit)."""
    points: list[OodPoint] = []
    for run in sorted(runs, key=lambda r: r.run_id):
        for c in run.checkpoints:
            for domain in sorted(c.ood_loss):
                value = c.ood_loss[domain]
                point: OodPoint = {
                    "series": c.series,
                    "seed": c.seed,
                    "run_id": c.run_id,
                    "checkpoint": c.label,
                    "loss": c.loss,
                    "domain": domain,
                    "value": value,
                }
                points.append(point)
    return points


def curves_method(points: int, given: Sequence[float] | None) -> str:
    grid = (
        f"the held-out losses given ({', '.join(f'{x:g}' for x in sorted(set(given), reverse=True))})"
        if given
        else f"{points} held-out losses evenly spaced over the range every seed of every series covers"
    )
    return (
        f"Grid: {grid}. Each seed's value at a grid loss is interpolated linearly in held-out loss between its "
        "checkpoints around it (never extrapolated: a seed whose checkpoints do not span it is left out there). "
        "Band: mean over seeds with a 95% Student-t interval over them; Δ: per seed (same training seed on both "
        "sides), then mean and t interval."
    )


def loss_curves(
    tasks: Sequence[str],
    task_points: Sequence[MetricPoint],
    ood: Sequence[OodPoint],
    series: Sequence[str],
    higher_is_better: Mapping[str, bool],
    points: int,
    given: Sequence[float] | None = None,
) -> LossCurves:
    """Bands and grid rows of every task (its primary metric's points) and every OOD domain, series[0] the
    reference."""
    families: list[tuple[Family, Curves]] = []
    for task in tasks:
        own = [p for p in task_points if p["task"] == task]
        if own:
            family = Family(TASK, task, own[0]["metric"], higher_is_better.get(task, True))
            families.append((family, seed_curves(own)))
    for domain in sorted({p["domain"] for p in ood}):
        family = Family(OOD, domain, OOD_METRIC, False)
        families.append((family, seed_curves(p for p in ood if p["domain"] == domain)))
    bands: list[CurveBand] = []
    deltas: list[CurveDelta] = []
    for family, curves in families:
        found_bands, found_deltas = family_curves(family, curves, series, chosen_grid(curves, points, given))
        bands += found_bands
        deltas += found_deltas
    return {"method": curves_method(points, given), "bands": bands, "deltas": deltas, "ood_points": list(ood)}
