"""What `nexus-eval samples` prints: the per-item samples of one cached result (a table, one item, or JSON).

It only reads the cache (runner.cache_slots, the one place results are looked up): a result that is not cached is an
error, never an evaluation, that names the settings the task is cached with for that checkpoint (e.g. `eval --limit
5` was run and `samples` was asked without --limit) and the `nexus-eval eval` command computing the one asked for.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from rich.console import Console
from rich.table import Table

from nexus_eval.checkpoints import resolve_checkpoints
from nexus_eval.display import checkpoint_label, console
from nexus_eval.errors import EvalError
from nexus_eval.evaluation.cache import cached_under_other_settings, read_samples
from nexus_eval.evaluation.runner import DEFAULT_SEED, EvalSettings, cache_slots, checkpoint_hash
from nexus_eval.evaluation.samples import (
    answer_text,
    best_choice,
    filtered_answer,
    gold_index,
    one_line,
    target_text,
)
from nexus_eval.schema import EvalKey, EvalResult, ItemSample
from nexus_eval.tasks import primary_metric

CELL = 60  # characters of text per table cell


def eval_command(ckpt: Path, settings: EvalSettings) -> str:
    """The `nexus-eval eval` command that computes (and caches) the result these settings look up."""
    words = ["nexus-eval", "eval", str(ckpt), "--tasks", ",".join(settings.tasks or ())]
    defaults = EvalSettings()
    flags = {
        "--backend": settings.backend if settings.backend != defaults.backend else None,
        "--limit": settings.limit,
        "--num-fewshot": settings.num_fewshot,
        "--seed": settings.seed if settings.seed != DEFAULT_SEED else None,
        "--cache": settings.cache_dir if settings.cache_dir != defaults.cache_dir else None,
    }
    for flag, value in flags.items():
        if value is not None:
            words += [flag, str(value)]
    return shlex.join(words)


# The key fields `samples` selects a result by, and its flags for them.
SAMPLES_FLAGS = {"backend": "--backend", "limit": "--limit", "num_fewshot": "--num-fewshot", "seed": "--seed"}


def settings_named(other: EvalKey, wanted: EvalKey) -> str:
    """How a cached result's settings differ from those asked for, as flags: "--limit 5", "no --limit",
    "--device cuda" (the backend settings of `eval`), "another definition of the task"."""
    found, asked = dict(other), dict(wanted)
    differ = [
        f"{flag} {found[field]}" if found[field] is not None else f"no {flag}"
        for field, flag in SAMPLES_FLAGS.items()
        if found[field] != asked[field]
    ]
    engine, default = found.get("engine") or {}, asked.get("engine") or {}
    for name in sorted(set(engine) | set(default)):
        if engine.get(name) != default.get(name):
            value = engine.get(name)
            if isinstance(value, dict):  # --model-args
                value = ",".join(f"{k}={v}" for k, v in value.items())
            flag = f"--{name.replace('_', '-')}"
            differ.append(f"{flag} {value}" if value is not None else f"no {flag}")
    if (found["task_version"], found["yaml_hash"]) != (asked["task_version"], asked["yaml_hash"]):
        differ.append("another definition of the task")
    return " ".join(differ)


def cached_samples(ckpt: Path, settings: EvalSettings) -> tuple[EvalResult, list[ItemSample]]:
    """The cached result of one checkpoint for the one task of `settings`, and its samples; evaluates nothing."""
    if not settings.tasks or len(settings.tasks) != 1:
        raise EvalError("samples: give one task (--task)")
    settings.check()
    found = resolve_checkpoints([ckpt])
    if len(found) != 1:
        raise EvalError(f"{ckpt}: a run directory of {len(found)} checkpoints; give one of them, e.g. {found[-1]}")
    (slot,) = cache_slots(checkpoint_hash(found[0], None), settings.task_specs(), settings)
    if slot.result is None:
        other_keys = cached_under_other_settings(settings.cache_dir, slot.key)
        others = [settings_named(other, slot.key) for other in other_keys]
        cached = f"cached with {'; with '.join(others)} only; " if others else ""
        raise EvalError(
            f"{ckpt}: no cached result for task {slot.spec.name} with these settings in {settings.cache_dir}; "
            f"{cached}run `{eval_command(ckpt, settings)}` first"
        )
    result = slot.cached_for(found[0])
    return result, read_samples(settings.cache_dir, result)


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def samples_table(result: EvalResult, items: list[ItemSample]) -> Table:
    metric = primary_metric(result["task"], result)
    table = Table(
        title=f"{checkpoint_label(result['checkpoint'])} · {result['task']} · {len(items)} items",
        caption=f"score: {metric}; `--item DOC_ID` shows one item in full",
    )
    for column in ("doc id", "target", "answer", "score", "best choice LL"):
        table.add_column(column, justify="right" if column in ("doc id", "score", "best choice LL") else "left")
    for item in items:
        best = best_choice(item)
        loglik = item["choices"][best]["loglikelihood"] if best is not None else None
        table.add_row(
            str(item["doc_id"]),
            one_line(target_text(item), CELL),
            one_line(answer_text(item, metric), CELL),
            _score(item["scores"].get(metric)),
            "-" if loglik is None else f"{loglik:.3f}",
        )
    return table


def item_view(result: EvalResult, item: ItemSample) -> list[Table]:
    """One item in full: prompt, target, responses and filtered answers, scores, and each choice's log-likelihood."""
    fields = Table(title=f"{result['task']} item {item['doc_id']} ({item['output_type']})", show_header=False)
    fields.add_column("field", style="bold")
    fields.add_column("value", overflow="fold")
    fields.add_row("prompt", item["prompt"])
    fields.add_row("target", target_text(item))
    if item["output_type"] == "generate_until":
        texts = [text for request in item["resps"] for text in (request if isinstance(request, list) else [request])]
        for index, text in enumerate(texts):
            fields.add_row(f"response {index}" if len(texts) > 1 else "response", str(text))
    if not item["choices"]:  # with scored choices, the choices table below says it all
        for name in item["filtered_resps"]:
            answer = filtered_answer(item, f",{name}")
            fields.add_row(f"answer ({name})", json.dumps(answer, ensure_ascii=False))
    for metric, score in item["scores"].items():
        fields.add_row(metric, _score(score))
    if not item["choices"]:
        return [fields]
    best = best_choice(item)
    choices = Table(title="choices (log-likelihood of each continuation)")
    for column in ("#", "continuation", "log-likelihood", "greedy", ""):
        choices.add_column(column, overflow="fold")
    gold = gold_index(item) if item["output_type"] == "multiple_choice" else None
    for index, choice in enumerate(item["choices"]):
        mark = " ".join(m for m, on in (("← best", index == best), ("gold", index == gold)) if on)
        loglik = choice["loglikelihood"]
        choices.add_row(
            str(index),
            choice["text"],
            "-" if loglik is None else f"{loglik:.4f}",
            str(choice["is_greedy"]).lower(),
            mark,
        )
    return [fields, choices]


def show_samples(
    ckpt: Path, settings: EvalSettings, item: int | None = None, as_json: bool = False, shown: Console | None = None
) -> list[ItemSample]:
    """The `samples` command: a table of every item, or one item in full (--item); JSON records with --json."""
    result, items = cached_samples(ckpt, settings)
    if item is not None:
        items = [i for i in items if i["doc_id"] == item]
        if not items:
            raise EvalError(f"--item {item}: no such doc_id in {result['task']} (doc_ids {_span(result['doc_ids'])})")
    if as_json:
        print(json.dumps(items[0] if item is not None else items, indent=2, sort_keys=True, ensure_ascii=False))
        return items
    out = shown or console()
    for table in item_view(result, items[0]) if item is not None else [samples_table(result, items)]:
        out.print(table)
    return items


def _span(doc_ids: list[int]) -> str:
    return f"{doc_ids[0]}…{doc_ids[-1]}" if doc_ids else "none"
