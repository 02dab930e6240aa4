"""`nexus-eval tasks list|prepare|generate`."""

from __future__ import annotations

from pathlib import Path

import typer

from nexus_eval.cli.options import one_line_errors

app = typer.Typer(no_args_is_help=True, help="lm-eval tasks shipped in tasks/.")


@app.command("list")
@one_line_errors
def tasks_list_command(
    suite: str | None = typer.Option(
        None, "--suite", help="reasoning, reasoning-real, gsm8k, ood, pairs or all (default)"
    ),
) -> None:
    """Tasks of a suite with version, primary metric and whether their data is ready."""
    from nexus_eval.tasks.show import show_tasks

    show_tasks(suite)


@app.command("prepare")
@one_line_errors
def tasks_prepare_command(
    gsm8k_dir: Path | None = typer.Option(
        None, "--gsm8k-dir", help="Dir with GSM8k test.jsonl (+ train.jsonl); default ../shared/data/gsm8k"
    ),
    data: Path | None = typer.Option(
        None, "--data", help="Data dir whose OOD domains become ood_<domain> tasks and whose val/OOD text pairs_* tasks"
    ),
    pair_items: int | None = typer.Option(
        None, "--pair-items", help="Items per minimal-pair task (with --data; default 300)"
    ),
) -> None:
    """Materialize the real benchmark data and, with --data, the OOD and minimal-pair tasks (all gitignored).

    Benchmark data goes to tasks/data/, the tasks generated from a data build to tasks/generated/."""
    from nexus_eval.tasks.show import prepare_and_show

    prepare_and_show(gsm8k_dir, data, pair_items)


@app.command("generate")
@one_line_errors
def tasks_generate_command(
    out: Path = typer.Option(Path("tasks"), "--out", help="Tasks dir to (re)write the synthetic suites into"),
) -> None:
    """Regenerate the committed synthetic suites (seeded: byte-identical unless a generator changed)."""
    from nexus_eval.tasks.show import generate_and_show

    generate_and_show(out)
