"""Terminal display of evaluation: a rich progress bar over checkpoints × tasks and a summary table at the end."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


class EvalBar:
    def __init__(self, progress: Progress | None, task: Any = None):
        self.progress, self.task = progress, task

    def describe(self, ckpt: Path, what: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, description=f"{checkpoint_label(ckpt)}: {what}")

    def advance(self) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)


@contextmanager
def eval_progress(total: int, enabled: bool = True) -> Iterator[EvalBar]:
    if not enabled:
        yield EvalBar(None)
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as progress:
        yield EvalBar(progress, progress.add_task("eval", total=total))


def checkpoint_label(ckpt: Path | str) -> str:
    """run/ckpt-000120 for our checkpoints, the directory or file name for external models."""
    path = Path(ckpt)
    return f"{path.parent.name}/{path.name}" if path.name.startswith("ckpt-") else path.name


def primary_metric(result: dict[str, Any]) -> str:
    from nexus_eval.tasks import PRIMARY_METRIC

    wanted = PRIMARY_METRIC.get(result["task"])
    return wanted if wanted in result["metrics"] else sorted(result["metrics"])[0]


def _format(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def show_results(rows: list[tuple[dict[str, Any], bool]], console: Console | None = None) -> None:
    table = Table(title="evaluation (primary metric per task)")
    for column in ("checkpoint", "task", "backend", "metric", "value", "± stderr", "n", "source"):
        table.add_column(column, justify="right" if column in ("value", "± stderr", "n") else "left")
    for result, cached in rows:
        metric = primary_metric(result)
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
    console = console or Console()
    if not console.is_terminal:  # piped or captured: no terminal width to respect, keep names whole
        console = Console(width=160)
    console.print(table)


def evaluate_and_show(
    paths: list[Path], as_json: bool = False, progress: bool = True, **settings: Any
) -> list[dict[str, Any]]:
    """The `eval` command: evaluate (see evaluate.evaluate for settings), then a summary table or the JSON."""
    from nexus_eval.evaluate import evaluate_with_status

    rows = evaluate_with_status(paths, progress=progress and not as_json, **settings)
    if as_json:
        print(json.dumps([result for result, _ in rows], indent=2, sort_keys=True))
    else:
        show_results(rows)
    return [result for result, _ in rows]
