"""Disagreements: the items on which loss-matched checkpoints of two series (e.g. AdamW and Nexus) score differently,
both answers side by side (`nexus-eval compare --disagreements`).

For every pair and task: the primary metric's per-item scores of the two checkpoints (an interpolated side stands for
its nearer checkpoint, the one with the larger weight: answers cannot be interpolated), the items both were scored on
whose scores differ, and what each model answered there, read from the samples stored beside each eval result.
Items are listed largest difference first, then by doc_id (for 0/1 scores: by doc_id).

The Markdown (out/disagreements.md, leaderboards/NAME.disagreements.md) is generated from the eval samples, not from
the results JSON; like the report it has fixed formatting and no timestamps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from nexus_eval.comparison.match import Checkpoint, Pair, Side
from nexus_eval.comparison.report import num, target
from nexus_eval.display import console
from nexus_eval.errors import ComparisonError
from nexus_eval.evaluation import read_samples
from nexus_eval.evaluation.samples import answer_text, one_line, target_text
from nexus_eval.io import write_text_atomic
from nexus_eval.optimizer_registry import REGISTRY
from nexus_eval.schema import EvalResult, ItemSample
from nexus_eval.tasks import primary_metric

TERMINAL_ROWS = 20  # items per pair and task printed; the Markdown has them all
CELL = 48  # characters of a terminal cell


@dataclass(frozen=True)
class Disagreement:
    """One item the two checkpoints score differently."""

    doc_id: int
    target: str  # the gold answer as a reader wants it (the gold choice's text for multiple choice)
    reference_answer: str
    candidate_answer: str
    reference_score: float
    candidate_score: float


@dataclass(frozen=True)
class TaskDisagreements:
    """The disagreements of one pair on one task."""

    target_loss: float
    seed: str
    task: str
    metric: str  # "metric,filter": the task's primary metric
    higher_is_better: bool
    reference_series: str  # series labels, e.g. "adamw" and "nexus"
    candidate_series: str
    reference: str  # checkpoint label (run/ckpt-NNNNNN)
    candidate: str
    compared: int  # items both checkpoints were scored on
    items: tuple[Disagreement, ...]

    def better(self, side: str) -> int:
        """Items on which `side` ("reference" | "candidate") scores better than the other."""
        sign = 1 if self.higher_is_better else -1
        if side == "reference":
            return sum(sign * (d.reference_score - d.candidate_score) > 0 for d in self.items)
        return sum(sign * (d.candidate_score - d.reference_score) > 0 for d in self.items)


def nearer(side: Side) -> Checkpoint:
    """The checkpoint a side stands for: itself, or (interpolated) the one with the larger weight."""
    return side.checkpoints[int(np.argmax(side.weights))]


def _scores(result: EvalResult, metric: str) -> dict[int, float]:
    values = (result.get("item_scores") or {}).get(metric) or []
    return {d: float(v) for d, v in zip(result["doc_ids"], values, strict=False) if v is not None}


class _Samples:
    """Each result's samples, read once (a checkpoint may stand in several pairs)."""

    def __init__(self, cache_dir: Path):
        self.cache_dir = cache_dir
        self.read: dict[tuple[str, str], dict[int, ItemSample]] = {}

    def of(self, result: EvalResult) -> dict[int, ItemSample]:
        key = (result["checkpoint_hash"], result["task"])
        if key not in self.read:
            self.read[key] = {item["doc_id"]: item for item in read_samples(self.cache_dir, result)}
        return self.read[key]


def _pair_task(
    pair: Pair, task: str, results: Mapping[tuple[Path, str], EvalResult], samples: _Samples
) -> TaskDisagreements:
    a_ckpt, n_ckpt = nearer(pair.reference), nearer(pair.candidate)
    a_result, n_result = results.get((a_ckpt.path, task)), results.get((n_ckpt.path, task))
    if a_result is None or n_result is None:
        missing = a_ckpt if a_result is None else n_ckpt
        raise ComparisonError(f"{missing.path}: no eval result for task {task} to list disagreements from")
    metric = primary_metric(task, a_result)
    a_scores, n_scores = _scores(a_result, metric), _scores(n_result, metric)
    common = sorted(set(a_scores) & set(n_scores))
    differ = [d for d in common if a_scores[d] != n_scores[d]]
    differ.sort(key=lambda d: (-abs(n_scores[d] - a_scores[d]), d))
    a_items, n_items = (samples.of(a_result), samples.of(n_result)) if differ else ({}, {})
    items = tuple(
        Disagreement(
            doc_id=d,
            target=target_text(a_items[d]),
            reference_answer=answer_text(a_items[d], metric),
            candidate_answer=answer_text(n_items[d], metric),
            reference_score=a_scores[d],
            candidate_score=n_scores[d],
        )
        for d in differ
    )
    return TaskDisagreements(
        target_loss=pair.target,
        seed=pair.seed,
        task=task,
        metric=metric,
        higher_is_better=bool((a_result.get("higher_is_better") or {}).get(metric, True)),
        reference_series=a_ckpt.series,
        candidate_series=n_ckpt.series,
        reference=a_ckpt.label,
        candidate=n_ckpt.label,
        compared=len(common),
        items=items,
    )


def find_disagreements(
    pairs: list[Pair], tasks: list[str], results: Mapping[tuple[Path, str], EvalResult], cache_dir: Path
) -> list[TaskDisagreements]:
    """Per pair (in order) and task: the items the pair's checkpoints score differently on the primary metric."""
    samples = _Samples(cache_dir)
    return [_pair_task(pair, task, results, samples) for pair in pairs for task in tasks]


# ---- Markdown and terminal ------------------------------------------------------------------------------------


def _names(group: TaskDisagreements) -> tuple[str, str]:
    """The two series as the report names them (AdamW, Nexus; other labels as they are)."""
    return REGISTRY.display_name(group.reference_series), REGISTRY.display_name(group.candidate_series)


def _summary(group: TaskDisagreements) -> str:
    ref, cand = _names(group)
    return (
        f"{ref} `{group.reference}` vs {cand} `{group.candidate}`: {len(group.items)} of {group.compared} items "
        f"differ ({ref} better on {group.better('reference')}, {cand} on {group.better('candidate')})"
    )


def _heading(group: TaskDisagreements) -> str:
    arrow = "" if group.higher_is_better else ", ↓ better"
    return f"target {target(group.target_loss)}, seed {group.seed}: {group.task} ({group.metric}{arrow})"


def _md_cell(text: str) -> str:
    return one_line(text).replace("|", "\\|")


def render_disagreements(groups: list[TaskDisagreements], title: str, preamble: str = "") -> str:
    lines = [f"# {title}", ""]
    if preamble:
        lines += [preamble, ""]
    lines += [
        "Items on which the loss-matched checkpoints score differently on each task's primary metric, largest "
        "difference first. Answer: the highest-likelihood choice (multiple choice), the filtered answer "
        "(generation), or the log-likelihood of the target (loglikelihood tasks). An interpolated side is shown by "
        "its nearer checkpoint. ⏎ marks a newline.",
        "",
    ]
    for group in groups:
        lines += [f"## {_heading(group)}", "", _summary(group) + ".", ""]
        if not group.items:
            continue
        ref, cand = _names(group)
        lines += [
            f"| doc id | target | {ref} answer | {ref} score | {cand} answer | {cand} score |",
            "|---:|---|---|---:|---|---:|",
        ]
        lines += [
            f"| {d.doc_id} | {_md_cell(d.target)} | {_md_cell(d.reference_answer)} | {num(d.reference_score)} "
            f"| {_md_cell(d.candidate_answer)} | {num(d.candidate_score)} |"
            for d in group.items
        ]
        lines += [""]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_disagreements(groups: list[TaskDisagreements], path: Path, title: str, preamble: str = "") -> Path:
    write_text_atomic(path, render_disagreements(groups, title, preamble))
    return path


def print_disagreements(
    groups: list[TaskDisagreements], written: Path, shown: Console | None = None, rows: int = TERMINAL_ROWS
) -> None:
    """One table per pair and task, its first `rows` items; the rest are counted (all are in the Markdown)."""
    out = shown or console()
    for group in groups:
        more = len(group.items) - rows
        caption = _summary(group) + (f"; {more} more in {written}" if more > 0 else "")
        table = Table(title=f"disagreements · {_heading(group)}", caption=caption)
        ref, cand = _names(group)
        for column, right in (
            ("doc id", True), ("target", False), (f"{ref} answer", False), (ref, True), (f"{cand} answer", False),
            (cand, True),
        ):  # fmt: skip
            table.add_column(column, justify="right" if right else "left")
        for d in group.items[:rows]:
            table.add_row(
                str(d.doc_id),
                one_line(d.target, CELL),
                one_line(d.reference_answer, CELL),
                num(d.reference_score),
                one_line(d.candidate_answer, CELL),
                num(d.candidate_score),
            )
        out.print(table)
    out.print(f"written: {written}")
