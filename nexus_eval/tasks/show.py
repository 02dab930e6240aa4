"""What `nexus-eval tasks list|prepare|generate` print: rich tables over the task registry."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from nexus_eval.display import console
from nexus_eval.errors import EvalError
from nexus_eval.tasks import registry as tasks
from nexus_eval.tasks.materialize import prepare
from nexus_eval.tasks.pairs import ITEMS_PER_FAMILY
from nexus_eval.tasks.synthetic import generate


def show_tasks(suite: str | None) -> None:
    names = tasks.resolve_tasks(suite=suite or "all")
    table = Table(title=f"suite {suite or 'all'}")
    for column in ("task", "suites", "version", "output", "primary metric", "status"):
        table.add_column(column, overflow="fold")
    for name in names:
        info = tasks.task_info(name)
        suites = ", ".join(s for s, members in tasks.SUITES.items() if name in members and s != "all")
        status = tasks.missing_data(name)
        table.add_row(name, suites, str(info["version"]), info["output_type"], info["primary_metric"],
                      "ready" if status is None else "needs `nexus-eval tasks prepare`")  # fmt: skip
    console().print(table)


def prepare_and_show(gsm8k_dir: Path | None, data_dir: Path | None, pair_items: int | None = None) -> None:
    if pair_items is not None and data_dir is None:
        raise EvalError("--pair-items: needs --data DIR (the build the minimal pairs are drawn from)")
    if pair_items is not None and pair_items < 1:
        raise EvalError(f"--pair-items {pair_items}: must be at least 1")
    items = ITEMS_PER_FAMILY if pair_items is None else pair_items
    summary = prepare(gsm8k_dir=gsm8k_dir, data_dir=data_dir, pair_items=items)
    tasks.refresh()
    table = Table(title="prepared task data")
    for column in ("data", "splits", "source"):
        table.add_column(column, overflow="fold")
    for name, entry in summary.items():
        splits = ", ".join(f"{split} {n}" for split, n in entry["splits"].items()) or "-"
        table.add_row(name, splits, entry["source"])
    console().print(table)


def generate_and_show(tasks_dir: Path) -> None:
    for path in generate(tasks_dir):
        console().print(str(path))
