"""The terminal: one console factory and one progress display that every long step uses (data build, training,
evaluation, geometry). Progress goes to stderr, so stdout stays clean for results (`--json`, tables, paths).

Stages never import the CLI: they take `progress: bool` and open a display here; a disabled display costs nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

WIDE = 160  # columns of a console that is not a terminal (logs, pipes): tables stay unfolded


def console(stderr: bool = False) -> Console:
    """A rich console; when output is not a terminal, a wide one, so that names in tables are not folded."""
    shown = Console(stderr=stderr)
    return shown if shown.is_terminal else Console(stderr=stderr, width=WIDE)


def checkpoint_label(ckpt: Path | str) -> str:
    """run/ckpt-000120 for our checkpoints, the directory or file name for external models."""
    path = Path(ckpt)
    return f"{path.parent.name}/{path.name}" if path.name.startswith("ckpt-") else path.name


@contextmanager
def progress_display(enabled: bool = True) -> Iterator[Progress]:
    """The one progress display: description, bar, percent, a free `info` field, elapsed and remaining time.

    Several bars may share it (`add_task(description, total=..., info="")`); disabled, it draws nothing."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console(stderr=True), disable=not enabled, transient=False) as progress:
        yield progress


class ProgressBar:
    """One bar of a progress display: what a long loop updates as it goes."""

    def __init__(self, progress: Progress, task: TaskID, total: int, counts: bool):
        self.progress, self.task, self.total, self.counts = progress, task, total, counts
        self.completed = 0

    def update(self, completed: int | None = None, description: str | None = None, info: str | None = None) -> None:
        if completed is not None:
            self.completed = completed
        text = info or ""
        if self.counts:
            text = f"{self.completed}/{self.total} {text}".rstrip()
        self.progress.update(self.task, completed=self.completed, description=description, info=text)

    def advance(self, amount: int = 1) -> None:
        self.update(self.completed + amount)

    def describe(self, description: str) -> None:
        self.progress.update(self.task, description=description)


@contextmanager
def progress_bar(
    description: str, total: int, completed: int = 0, enabled: bool = True, counts: bool = True
) -> Iterator[ProgressBar]:
    """A display with a single bar; `counts` shows "done/total" before the info text."""
    with progress_display(enabled) as progress:
        bar = ProgressBar(progress, progress.add_task(description, total=total, info=""), total, counts)
        bar.update(completed)
        yield bar
