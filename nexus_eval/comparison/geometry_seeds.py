"""Geometry at the matched pairs over seeds: for each target and series, the mean and 95% t
interval over seeds of each side's mean off-diagonal gradient cosine and per-source minima MSD, and of their
difference (candidate − reference, seed by seed), from the per-pair geometry rows (pipeline.geometry_rows)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from nexus_eval.comparison.stats import seed_band
from nexus_eval.schema import GeometrySeedRow

MEASURES = {"grad_cos": "grad cos", "minima_msd": "minima MSD"}  # row key suffix → how tables name it


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def geometry_over_seeds(rows: Sequence[dict[str, Any]]) -> list[GeometrySeedRow]:
    """One row per (target, series, measure) whose pairs span two or more seeds, in the order of the pair rows."""
    groups: dict[tuple[float, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["target"], row["series"])].append(row)
    found: list[GeometrySeedRow] = []
    for (target, series), group in groups.items():
        if len({r["seed"] for r in group}) < 2:
            continue
        for measure in MEASURES:
            sides = [(_number(r.get(f"reference_{measure}")), _number(r.get(f"candidate_{measure}"))) for r in group]
            found.append(
                {
                    "target": target,
                    "series": series,
                    "measure": measure,
                    "reference": seed_band([a for a, _ in sides if a is not None]),
                    "candidate": seed_band([b for _, b in sides if b is not None]),
                    "delta": seed_band([b - a for a, b in sides if a is not None and b is not None]),
                }
            )
    return found
