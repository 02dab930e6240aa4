"""The terminal: one console factory and one progress display that every long step uses (data build, training,
evaluation, geometry). Progress goes to stderr, so stdout stays clean for results (`--json`, tables, paths).

Stages never import the CLI: they take `progress: bool` and open a display here. Bars are drawn only on a terminal;
in a log (stdout or stderr not a terminal, NO_COLOR or CI=true) the display prints one line per stage with its time
instead, and with `--quiet` (progress=False) nothing. In both cases the libraries' own progress bars (tqdm: lm-eval,
vLLM, datasets) and colours are switched off, so that a CI log holds no carriage returns or ANSI codes.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

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


def is_log_output() -> bool:
    """True when output goes to a log rather than a person: stdout or stderr not a terminal, NO_COLOR or CI=true."""
    if os.environ.get("NO_COLOR") or os.environ.get("CI", "").lower() in ("true", "1"):
        return True
    return not (sys.stdout.isatty() and sys.stderr.isatty())


_library_progress_off = False


def quiet_library_progress() -> None:
    """No tqdm bar and no colour from the libraries, in this process and in the ones it starts (vLLM's engine).

    Every tqdm bar of this process writes to os.devnull: lm-eval passes `disable=` explicitly (so TQDM_DISABLE alone
    would not do), and vLLM reads a bar's elapsed time for its speed figures (a disabled bar has none and vLLM divides
    by zero), so the bars still run, unseen. NO_COLOR is read by rich and by vLLM's log formatter."""
    global _library_progress_off
    _library_progress_off = True
    os.environ["NO_COLOR"] = "1"
    from tqdm import std

    if getattr(std.tqdm.__init__, "unseen", False):
        return
    original = std.tqdm.__init__

    @functools.wraps(original)
    def unseen_init(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["file"] = _devnull()
        original(self, *args, **kwargs)

    unseen_init.unseen = True  # type: ignore[attr-defined]
    std.tqdm.__init__ = unseen_init  # type: ignore[method-assign]


@functools.cache
def _devnull() -> TextIO:
    return open(os.devnull, "w")  # noqa: SIM115 (open for the life of the process)


def library_progress_off() -> bool:
    """Whether quiet_library_progress() ran: loaders that take a progress flag (vLLM's weights) pass it on."""
    return _library_progress_off


@dataclass
class _Stage:
    name: str
    total: float | None
    completed: float = 0
    description: str = ""
    started: float = field(default_factory=time.monotonic)
    stage_started: float = field(default_factory=time.monotonic)
    done: bool = False


def _count(amount: float) -> str:
    """A stage's count for a log line: whole numbers with thousands separators (12,000,000 characters read, not
    1.2e+07)."""
    return f"{int(amount):,}" if float(amount).is_integer() else f"{amount:,.1f}"


class LineProgress:
    """The display in a log: the part of rich's Progress interface our stages use, printing one line per stage
    (a task finished, or a bar's description changed) with the seconds it took. No carriage return, no colour."""

    def __init__(self, stream: TextIO | None):
        self.stream = stream  # None: print nothing (--quiet)
        self.tasks: list[_Stage] = []

    def _print(self, text: str) -> None:
        if self.stream is not None:
            print(text, file=self.stream, flush=True)

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> int:
        self.tasks.append(_Stage(description, total, description=description))
        return len(self.tasks) - 1

    def update(
        self,
        task: int,
        completed: float | None = None,
        advance: float | None = None,
        description: str | None = None,
        **fields: Any,
    ) -> None:
        stage = self.tasks[task]
        if description is not None and description != stage.description:
            if stage.description != stage.name:  # the stage that ends now (the task's name alone is not a stage)
                self._print(f"{stage.description}: {time.monotonic() - stage.stage_started:.1f} s")
            stage.description, stage.stage_started = description, time.monotonic()
        if completed is not None:
            stage.completed = completed
        if advance is not None:
            stage.completed += advance
        if stage.total is not None and stage.completed >= stage.total and not stage.done:
            self._finish(stage)

    def advance(self, task: int, advance: float = 1) -> None:
        self.update(task, advance=advance)

    def _finish(self, stage: _Stage) -> None:
        stage.done = True
        if stage.description != stage.name:
            self._print(f"{stage.description}: {time.monotonic() - stage.stage_started:.1f} s")
        count = _count(stage.completed) + (f"/{_count(stage.total)}" if stage.total is not None else "")
        self._print(f"{stage.name}: {count} done in {time.monotonic() - stage.started:.1f} s")

    def close(self) -> None:
        """Say where the unfinished tasks stopped."""
        for stage in self.tasks:
            if not stage.done:  # stopped early (an error, a signal): say where
                total = f"/{_count(stage.total)}" if stage.total is not None else ""
                elapsed = time.monotonic() - stage.started
                during = f" ({stage.description})" if stage.description != stage.name else ""
                self._print(f"{stage.name}: stopped at {_count(stage.completed)}{total}{during} after {elapsed:.1f} s")


@contextmanager
def progress_display(enabled: bool = True) -> Iterator[Any]:
    """The one progress display: description, bar, percent, a free `info` field, elapsed and remaining time.

    Several bars may share it (`add_task(description, total=..., info="")`). On a terminal: bars. In a log: one line
    per stage. `enabled=False` (--quiet): nothing. Bars from the libraries only on a terminal and when enabled."""
    if not enabled or is_log_output():
        quiet_library_progress()
        lines = LineProgress(sys.stderr if enabled else None)
        try:
            yield lines
        except KeyboardInterrupt:  # a signal (signals.py): say at which stage; other errors say it themselves
            lines.close()
            raise
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console(stderr=True), transient=False) as progress:
        yield progress


class ProgressBar:
    """One bar of a progress display: what a long loop updates as it goes."""

    def __init__(self, progress: Progress | LineProgress, task: TaskID | int, total: int, counts: bool):
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
