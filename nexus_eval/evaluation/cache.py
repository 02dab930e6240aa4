"""The eval results cache: one JSON per (checkpoint content, task definition, backend, settings), validated on read.

The only module that reads or writes result files: the runner looks results up through `cache_slots` (runner.py),
and comparison, leaderboard and bench go through the runner (`evaluate`, `cached_results`).

A file is trusted only if it parses, carries the expected key fields and every per-item list is aligned with its
doc_ids; anything else (a truncated write from another tool, a hand edit, an older schema) is recomputed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from nexus_eval.errors import EvalError
from nexus_eval.io import SAFE_NAME_RULE, finite_json, is_safe_name, write_json_atomic
from nexus_eval.schema import EVAL_RESULT_SCHEMA, EvalKey, EvalResult

SCHEMA = EVAL_RESULT_SCHEMA
KEY_FIELDS = ("checkpoint_hash", "task", "task_version", "yaml_hash", "backend", "num_fewshot", "limit", "seed")
DICT_FIELDS = ("metrics", "stderr", "higher_is_better", "item_scores")


def cache_key(
    checkpoint_hash: str,
    task: str,
    task_version: Any,
    yaml_hash: str,
    backend: str,
    num_fewshot: int | None,
    limit: int | None,
    seed: int,
) -> EvalKey:
    values = (checkpoint_hash, task, task_version, yaml_hash, backend, num_fewshot, limit, seed)
    return EvalKey(**dict(zip(KEY_FIELDS, values, strict=True)))


def lock_path(cache_dir: Path, checkpoint_hash: str) -> Path:
    """The lock file of one checkpoint's cache entries: cache_dir/<checkpoint hash>.lock, beside their directory."""
    return cache_dir / f"{checkpoint_hash[:16]}.lock"


def cache_path(cache_dir: Path, key: EvalKey) -> Path:
    """cache_dir/<checkpoint hash>/<task>.<backend>.<hash of the whole key>.json"""
    if not is_safe_name(key["task"]) or not is_safe_name(key["backend"]):  # the names become the file name
        raise EvalError(f"task {key['task']!r} / backend {key['backend']!r}: {SAFE_NAME_RULE}")
    key_hash = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return cache_dir / key["checkpoint_hash"][:16] / f"{key['task']}.{key['backend']}.{key_hash}.json"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_score(value: Any) -> bool:
    return value is None or _is_number(value)


def problems(result: Any, key: EvalKey) -> list[str]:
    """Why a stored result cannot be used for this key (empty when it can)."""
    if not isinstance(result, dict):
        return ["not a JSON object"]
    found = [f"{f} is {result.get(f)!r}, expected {key[f]!r}" for f in KEY_FIELDS if result.get(f) != key[f]]
    if result.get("schema") != SCHEMA:
        found.append(f"schema {result.get('schema')!r} is not {SCHEMA}")
    for field in ("checkpoint", "lm_eval_version", "created"):
        if not isinstance(result.get(field), str):
            found.append(f"{field} missing")
    if any(not isinstance(result.get(field), dict) for field in DICT_FIELDS):
        return [*found, "metrics/stderr/higher_is_better/item_scores missing"]
    metrics = result["metrics"]
    if not metrics or not all(_is_score(v) for v in metrics.values()):
        found.append("metrics empty or not numbers")
    if set(result["stderr"]) != set(metrics) or not all(_is_score(v) for v in result["stderr"].values()):
        found.append("stderr keys differ from metrics")
    if set(result["higher_is_better"]) != set(metrics):
        found.append("higher_is_better keys differ from metrics")
    doc_ids = result.get("doc_ids")
    if not isinstance(doc_ids, list) or not all(isinstance(i, int) for i in doc_ids):
        return [*found, "doc_ids missing"]
    if result.get("n") != len(doc_ids):
        found.append(f"n {result.get('n')!r} != {len(doc_ids)} doc_ids")
    lists = {**result["item_scores"], **result.get("item_weights", {})}
    for name, scores in lists.items():
        if not isinstance(scores, list) or len(scores) != len(doc_ids) or not all(_is_score(s) for s in scores):
            found.append(f"per-item {name!r} not aligned with doc_ids")
    if not result["item_scores"]:
        found.append("no per-item scores")
    return found


def read_cached(path: Path, key: EvalKey) -> EvalResult | None:
    """The stored result, or None when there is none or it is corrupt, partial or for another key."""
    try:
        result = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return None if problems(result, key) else result


def write_result(path: Path, result: EvalResult) -> None:
    write_json_atomic(path, finite_json(result))
