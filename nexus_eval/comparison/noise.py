"""Seed-to-seed noise of a comparison and the matching tolerance it implies.

- Held-out loss at fixed steps: per series, the eval steps every one of its seeds logged; at the first of them where
  the mean over seeds reaches each target, and at the last (the final step), the sample SD over seeds. The losses
  are the trainer's val_loss rows of each run's metrics.jsonl when the comparison is in nats/token and every run of
  the series has them, else the checkpoints' held-out losses in the comparison's unit (external series, bits per
  byte).
- Task scores at fixed losses: per series, task and target, the SD over seeds of each seed's score at the target,
  read off the straight line in held-out loss between its evaluated checkpoints around the target
  (curves.SeedCurve.at); a seed whose evaluated checkpoints do not bracket it (only the paired checkpoints were
  evaluated) contributes the score of its evaluated checkpoint nearest the target, within reach(tolerance) of it.
  Each row counts the seeds read either way.
- `--tolerance auto`: half the smallest positive loss SD above, computed from the runs alone before matching. A pair
  then differs in loss by less than the seeds of one series do at a fixed step, so "same loss" is finer than the
  noise; an explicit tolerance is kept, and the record says whether it lies below that SD.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nexus_eval.comparison.curves import seed_curves
from nexus_eval.comparison.match import Run, series_labels
from nexus_eval.comparison.series import UNIT_NAMES
from nexus_eval.comparison.settings import CompareSettings
from nexus_eval.comparison.stats import seed_sd
from nexus_eval.errors import ComparisonError
from nexus_eval.schema import LossNoiseRow, MetricPoint, ScoreNoiseRow, ToleranceRecord

# A seed's evaluated checkpoint nearest a target stands in for its score there only this close (or 2× the tolerance,
# if wider): a window for reading a score off few evaluated checkpoints, wider than a pair's (match.py).
MIN_REACH = 0.05
METRICS_FILE = "metrics.jsonl"  # the trainer's log (training.metrics_log), one MetricsRow per eval step
FROM_METRICS, FROM_CHECKPOINTS = "metrics.jsonl", "checkpoints"
AT_TARGET, AT_FINAL = "target", "final"


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of a run's metrics.jsonl (none when it has none); a line cut by a kill is skipped."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def logged_losses(run: Run) -> dict[int, float]:
    """step → val_loss (nats/token) of the run's metrics.jsonl; empty for an external series or a run without one."""
    if run.external:
        return {}
    found = {}
    for row in read_metrics(run.path):
        step, loss = row.get("step"), row.get("val_loss")
        if isinstance(step, int) and isinstance(loss, int | float) and np.isfinite(loss):
            found[step] = float(loss)  # a resumed run's rewritten step: the later line
    return found


def step_losses(runs: Sequence[Run], unit: str) -> tuple[list[dict[int, float]], str]:
    """step → held-out loss per run of one series, and where they come from: metrics.jsonl when the comparison is in
    nats/token and every run logged losses, else the checkpoints (in the comparison's unit)."""
    logged = [logged_losses(r) for r in runs] if unit == "nats" else []
    if logged and all(logged):
        return logged, FROM_METRICS
    return [{c.step: c.loss for c in r.checkpoints} for r in runs], FROM_CHECKPOINTS


def _loss_row(
    series: str, at: str, target: float | None, step: int | None, values: Sequence[float], n: int, source: str
) -> LossNoiseRow:
    return {
        "series": series,
        "at": at,
        "target": target,
        "step": step,
        "mean": float(np.mean(values)) if len(values) else None,
        "sd": seed_sd(values),
        "n": n,
        "source": source,
    }


def series_loss_noise(series: str, runs: Sequence[Run], targets: Sequence[float], unit: str) -> list[LossNoiseRow]:
    """One series' rows: at each target (the first shared step whose mean over seeds reaches it) and the final
    shared step."""
    tables, source = step_losses(runs, unit)
    shared = sorted(set.intersection(*(set(t) for t in tables))) if tables else []
    matrix = np.array([[t[s] for s in shared] for t in tables]).reshape(len(tables), len(shared))  # seeds × steps
    means = matrix.mean(axis=0) if shared else np.array([])

    def row(at: str, target: float | None, index: int | None) -> LossNoiseRow:
        if index is None:
            return _loss_row(series, at, target, None, [], len(runs), source)
        return _loss_row(series, at, target, shared[index], list(matrix[:, index]), len(runs), source)

    rows = [row(AT_TARGET, t, next((i for i, m in enumerate(means) if m <= t), None)) for t in targets]
    rows.append(row(AT_FINAL, None, len(shared) - 1 if shared else None))
    return rows


def loss_noise(runs: Sequence[Run], targets: Sequence[float], unit: str) -> list[LossNoiseRow]:
    """The held-out loss rows of every series (in the order their first run appears), targets highest first."""
    ordered = sorted(targets, reverse=True)
    rows: list[LossNoiseRow] = []
    for label in series_labels(list(runs)):
        own = sorted((r for r in runs if r.label == label), key=lambda r: (r.seed is None, r.seed or 0, r.run_id))
        rows += series_loss_noise(label, own, ordered, unit)
    return rows


def smallest_sd(rows: Sequence[LossNoiseRow]) -> LossNoiseRow | None:
    """The row with the smallest positive seed SD (ties: the first)."""
    found = [r for r in rows if r["sd"] is not None and r["sd"] > 0]
    return min(found, key=lambda r: r["sd"] or 0.0) if found else None


def where(row: LossNoiseRow) -> str:
    """Which step of which series a loss row stands for, in words."""
    if row["at"] == AT_FINAL:
        return f"{row['series']} at its final step {row['step']}, {row['n']} seeds"
    first = f"the first where the mean over {row['n']} seeds reaches {row['target']:g}"
    return f"{row['series']} at step {row['step']}, {first}"


def tolerance_record(rows: Sequence[LossNoiseRow], settings: CompareSettings, unit: str) -> ToleranceRecord:
    """The tolerance the pairs are matched with and how it was chosen; `--tolerance auto` derives it here (a
    ComparisonError when no series has two seeds sharing an eval step)."""
    found = smallest_sd(rows)
    unit_name = UNIT_NAMES.get(unit, unit)
    record: ToleranceRecord = {
        "value": None,
        "auto": settings.tolerance_auto,
        "smallest_sd": found["sd"] if found else None,
        "series": found["series"] if found else None,
        "at": found["at"] if found else None,
        "step": found["step"] if found else None,
        "derivation": "",
    }
    measured = ""
    if found is not None:
        measured = f"the smallest seed SD of held-out loss above, {found['sd']:.4g} {unit_name} ({where(found)})"
    if settings.interpolate:
        record["derivation"] = "--interpolate: both sides sit at the target, no tolerance."
        return record
    if settings.tolerance_auto:
        if found is None:
            raise ComparisonError(
                "--tolerance auto: no seed SD of held-out loss to derive it from (needs a series with two or more "
                "seeds that share an eval step); give --tolerance NUMBER"
            )
        value = float(found["sd"] or 0.0) / 2
        record["value"] = value
        record["derivation"] = f"--tolerance auto: {value:.4g} {unit_name} = ½ × {measured}."
        return record
    value = settings.tolerance
    record["value"] = value
    if found is None:
        record["derivation"] = f"--tolerance {value:g} {unit_name} as given; no seed SD of held-out loss measured."
    else:
        side = "below" if value < float(found["sd"] or 0.0) else "NOT below"
        record["derivation"] = f"--tolerance {value:g} {unit_name} as given: {side} {measured}."
    return record


def reach(tolerance: float) -> float:
    return max(MIN_REACH, 2 * tolerance)


def score_method(tolerance: float) -> str:
    return (
        "Each seed's score at the target is read off the straight line in held-out loss between its evaluated "
        "checkpoints around it (interpolated); a seed whose evaluated checkpoints do not bracket the target gives the "
        f"score of its evaluated checkpoint nearest it, within {reach(tolerance):g} (nearest)."
    )


def score_noise(
    points: Sequence[MetricPoint],
    tasks: Sequence[str],
    targets: Sequence[float],
    series: Sequence[str],
    tolerance: float,
) -> list[ScoreNoiseRow]:
    """Per series, target and task: mean and SD over seeds of each seed's score at the target (score_method)."""
    rows: list[ScoreNoiseRow] = []
    for label in series:
        for target in sorted(targets, reverse=True):
            for task in tasks:
                own = [p for p in points if p["task"] == task and p["series"] == label]
                if not own:
                    continue
                curves = seed_curves(own).get(label, {})
                inside = [v for c in curves.values() if (v := c.at(target)) is not None]
                outside = [
                    v
                    for c in curves.values()
                    if c.at(target) is None and (v := c.nearest(target, reach(tolerance))) is not None
                ]
                values = inside + outside
                rows.append(
                    {
                        "series": label,
                        "target": target,
                        "task": task,
                        "metric": own[0]["metric"],
                        "mean": float(np.mean(values)) if values else None,
                        "sd": seed_sd(values),
                        "n": len(values),
                        "interpolated": len(inside),
                        "nearest": len(outside),
                    }
                )
    return rows
