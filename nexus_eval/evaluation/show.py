"""What `nexus-eval eval` prints: a summary table of the results (primary metric per task), or the JSON."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from nexus_eval.display import checkpoint_label, console
from nexus_eval.evaluation.devices import evaluate_series
from nexus_eval.evaluation.runner import EvalSettings
from nexus_eval.schema import EvalResult
from nexus_eval.tasks import primary_metric


def _format(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def show_results(rows: list[tuple[EvalResult, bool]], shown: Console | None = None) -> None:
    table = Table(title="evaluation (primary metric per task)")
    for column in ("checkpoint", "task", "backend", "metric", "value", "± stderr", "n", "source"):
        table.add_column(column, justify="right" if column in ("value", "± stderr", "n") else "left")
    for result, cached in rows:
        metric = primary_metric(result["task"], result)
        arrow = "↑" if result["higher_is_better"][metric] else "↓"
        table.add_row(
            checkpoint_label(result["checkpoint"]),
            result["task"],
            result["backend"],
            f"{metric} {arrow}",
            _format(result["metrics"][metric]),
            _format(result["stderr"][metric]),
            str(result["n"]),
            "cache" if cached else "computed",
        )
    (shown or console()).print(table)


def evaluate_and_show(
    paths: list[Path],
    settings: EvalSettings,
    as_json: bool = False,
    progress: bool = True,
    devices: str | None = None,
) -> list[EvalResult]:
    """The `eval` command: evaluate (spread over `devices` when given: devices.py), then a summary table or the
    JSON."""
    rows = evaluate_series(paths, settings, progress=progress and not as_json, devices=devices)
    if as_json:  # each result with where it came from: "computed" now (and cached) or read from the "cache"
        listed = [{**result, "source": "cache" if cached else "computed"} for result, cached in rows]
        print(json.dumps(listed, indent=2, sort_keys=True))
    else:
        show_results(rows)
    return [result for result, _ in rows]
