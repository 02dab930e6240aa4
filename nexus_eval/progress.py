"""Rich progress displays for the long stages (training steps; evaluation uses its own)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class TrainingBar:
    def __init__(self, progress: Progress | None, task: int | None):
        self.progress, self.task = progress, task
        self.started = time.perf_counter()
        self.tokens = 0

    def update(self, step: int, train_loss: float, val_loss: float, tokens: int) -> None:
        self.tokens += tokens
        if self.progress is None or self.task is None:
            return
        rate = self.tokens / max(1e-9, time.perf_counter() - self.started)
        val = f"{val_loss:.3f}" if val_loss != float("inf") else "-"
        self.progress.update(self.task, completed=step, info=f"loss {train_loss:.3f} val {val} {rate:,.0f} tok/s")


@contextmanager
def training_progress(name: str, total: int, done: int, enabled: bool = True) -> Iterator[TrainingBar]:
    if not enabled:
        yield TrainingBar(None, None)
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(name, total=total, completed=done, info="")
        yield TrainingBar(progress, task)
