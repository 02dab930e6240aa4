"""`nexus-eval eval --check-batch-invariance`: do this harness's scores move with the batch size?

lm-eval users report scores that change with --batch-size (padding and kernel shapes change the floating-point sums).
Here every checkpoint × task is evaluated twice, nothing cached: at batch size 1 and at the batch size asked for
(hf: --batch-size, default 8; vllm: one request at a time vs every request at once). Per task it reports the largest
per-item log-likelihood difference, the greedy generations that differ, and the primary metric both ways.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from nexus_eval.checkpoints import content_hash
from nexus_eval.display import checkpoint_label, console, progress_bar
from nexus_eval.errors import EvalError
from nexus_eval.evaluation.engine import Engine
from nexus_eval.evaluation.runner import (
    EvalSettings,
    cache_slots,
    checked_inputs,
    make_task_manager,
    quiet_libraries,
    run_slots,
)
from nexus_eval.schema import EvalResult, ItemSample
from nexus_eval.tasks import primary_metric

# Per-item log-likelihoods closer than this count as equal (float32 sums in another order differ around 1e-6).
LOGLIK_TOLERANCE = 1e-4


@dataclass(frozen=True)
class InvarianceRow:
    """One checkpoint × task evaluated at batch size 1 and at `batch_size`."""

    checkpoint: str
    task: str
    batch_size: int | str
    items: int
    logliks: int  # per-item log-likelihoods compared (choices, rolling texts, gold continuations)
    loglik_max_abs_diff: float | None  # None: the task has none (generation only)
    logliks_over_tolerance: int
    generations: int  # greedy generations compared
    generations_differ: int
    metric: str
    score_batch_1: float | None
    score_batch_n: float | None

    @property
    def invariant(self) -> bool:
        return self.logliks_over_tolerance == 0 and self.generations_differ == 0


def responses(item: ItemSample) -> tuple[list[float], list[str]]:
    """The numbers (log-likelihoods) and texts (generations) of an item's raw responses, in order."""
    numbers: list[float] = []
    texts: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, bool):  # is_greedy
            return
        if isinstance(value, int | float):
            numbers.append(float(value))
        elif isinstance(value, str):
            texts.append(value)
        elif isinstance(value, list | tuple):
            for part in value:
                walk(part)

    walk(item["resps"])
    return numbers, texts


def compare_items(one: list[ItemSample], many: list[ItemSample]) -> tuple[int, float | None, int, int, int]:
    """(log-likelihoods compared, largest |difference|, how many differ by more than LOGLIK_TOLERANCE, generations
    compared, generations that differ) between the same items evaluated two ways."""
    if [item["doc_id"] for item in one] != [item["doc_id"] for item in many]:
        raise EvalError("batch-invariance check: the two evaluations scored different items")
    compared, over, generations, differ = 0, 0, 0, 0
    largest: float | None = None
    for a, b in zip(one, many, strict=True):
        numbers_a, texts_a = responses(a)
        numbers_b, texts_b = responses(b)
        for x, y in zip(numbers_a, numbers_b, strict=True):
            gap = abs(x - y) if math.isfinite(x) and math.isfinite(y) else (0.0 if x == y else math.inf)
            largest = gap if largest is None else max(largest, gap)
            compared += 1
            over += gap > LOGLIK_TOLERANCE
        generations += len(texts_a)
        differ += texts_a != texts_b
    return compared, largest, over, generations, differ


def _evaluate_all(
    ckpts: list[Path], settings: EvalSettings, specs: list, hashes: dict[Path, str], bar: Any
) -> dict[tuple[Path, str], tuple[EvalResult, list[ItemSample]]]:
    found = {}
    task_manager = make_task_manager(specs)
    with Engine(settings.backend_spec(), settings.timeout) as engine:
        for ckpt in ckpts:
            bar.describe(f"{checkpoint_label(ckpt)}: batch size {settings.backend_spec().resolved_batch_size}")
            engine.load(ckpt)
            slots = cache_slots(hashes[ckpt], specs, settings)
            for slot, result, samples in run_slots(engine, ckpt, slots, settings, task_manager):
                found[(ckpt, slot.spec.name)] = (result, samples)
                bar.advance()
    return found


def check_batch_invariance(
    checkpoints: list[Path], settings: EvalSettings, progress: bool = True
) -> list[InvarianceRow]:
    """Every checkpoint × task at batch size 1 and at the settings' batch size; one row each. Nothing is cached."""
    ckpts, specs = checked_inputs(checkpoints, settings)
    batch_n = settings.backend_spec().resolved_batch_size
    if batch_n == 1:
        raise EvalError("--check-batch-invariance compares batch size 1 with --batch-size: give one larger than 1")
    single = dataclasses.replace(settings, batch_size=1)
    hashes = {ckpt: content_hash(ckpt) for ckpt in ckpts}
    with quiet_libraries(), progress_bar("batch invariance", 2 * len(ckpts) * len(specs), enabled=progress) as bar:
        at_one = _evaluate_all(ckpts, single, specs, hashes, bar)
        at_n = _evaluate_all(ckpts, settings, specs, hashes, bar)
    rows = []
    for (ckpt, task), (result_1, samples_1) in at_one.items():
        result_n, samples_n = at_n[(ckpt, task)]
        logliks, largest, over, generations, differ = compare_items(samples_1, samples_n)
        metric = primary_metric(task, result_1)
        rows.append(InvarianceRow(
            str(ckpt), task, batch_n, len(samples_1), logliks, largest, over, generations, differ, metric,
            result_1["metrics"].get(metric), result_n["metrics"].get(metric),
        ))  # fmt: skip
    return rows


def _number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def check_and_show(paths: list[Path], settings: EvalSettings, as_json: bool = False, progress: bool = True) -> None:
    """The command: the check, then a table (or JSON) and a one-line verdict."""
    rows = check_batch_invariance(paths, settings, progress=progress and not as_json)
    if as_json:
        print(json.dumps([{**dataclasses.asdict(row), "invariant": row.invariant} for row in rows], indent=2))
        return
    batch_n = rows[0].batch_size if rows else "?"
    table = Table(
        title=f"batch invariance: batch size 1 vs {batch_n} (log-likelihoods equal within {LOGLIK_TOLERANCE:g})"
    )
    columns = ("checkpoint", "task", "items", "max |Δ loglik|", "logliks > tol", "generations differ", "metric",
               "batch 1", f"batch {batch_n}")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column in ("checkpoint", "task", "metric") else "right")
    for row in rows:
        table.add_row(
            checkpoint_label(row.checkpoint), row.task, str(row.items), _number(row.loglik_max_abs_diff, 6),
            f"{row.logliks_over_tolerance}/{row.logliks}", f"{row.generations_differ}/{row.generations}", row.metric,
            _number(row.score_batch_1), _number(row.score_batch_n),
        )  # fmt: skip
    shown = console()
    shown.print(table)
    moved = [row for row in rows if not row.invariant]
    if moved:
        shown.print(f"{len(moved)} of {len(rows)} checkpoint × task results move with the batch size")
    else:
        shown.print(f"all {len(rows)} checkpoint × task results are batch-invariant")
