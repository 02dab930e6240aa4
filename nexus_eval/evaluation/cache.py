"""The eval results cache: one JSON per (checkpoint content, task definition, backend, settings), validated on read,
and beside it the per-item samples (schema.ItemSample, gzip JSON lines: `<result stem>.samples.jsonl.gz`).

The only module that reads or writes result and sample files: the runner looks results up through `cache_slots`
(runner.py), comparison, leaderboard and bench go through the runner (`evaluate`, `cached_results`), and every reader
of samples calls `read_samples`.

A file is trusted only if it parses, carries the expected key fields, every per-item list is aligned with its doc_ids
and its samples file is complete (gzip intact, one line per doc_id); anything else (a truncated write from another
tool, a hand edit, an older schema, deleted samples) is recomputed. The samples are written before the result, so a
valid result implies its samples.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from pathlib import Path
from typing import Any

from nexus_eval.errors import EvalError
from nexus_eval.io import SAFE_NAME_RULE, atomic_path, finite_json, is_safe_name, record_problems, write_json_atomic
from nexus_eval.schema import EVAL_RESULT_SCHEMA, EvalKey, EvalResult, ItemSample

SCHEMA = EVAL_RESULT_SCHEMA
KEY_FIELDS = ("checkpoint_hash", "task", "task_version", "yaml_hash", "backend", "num_fewshot", "limit", "seed")
DICT_FIELDS = ("metrics", "stderr", "higher_is_better", "item_scores", "provenance")
SAMPLES_SUFFIX = ".samples.jsonl.gz"


def cache_key(
    checkpoint_hash: str,
    task: str,
    task_version: Any,
    yaml_hash: str,
    backend: str,
    num_fewshot: int | None,
    limit: int | None,
    seed: int,
    engine: dict[str, Any] | None = None,
) -> EvalKey:
    """engine: the backend settings that differ from its defaults (BackendSpec.key); absent from the key when empty,
    so results cached before those settings existed keep their key."""
    values = (checkpoint_hash, task, task_version, yaml_hash, backend, num_fewshot, limit, seed)
    key = EvalKey(**dict(zip(KEY_FIELDS, values, strict=True)))
    if engine:
        key["engine"] = engine
    return key


def lock_path(cache_dir: Path, checkpoint_hash: str) -> Path:
    """The lock file of one checkpoint's cache entries: cache_dir/<checkpoint hash>.lock, beside their directory."""
    return cache_dir / f"{checkpoint_hash[:16]}.lock"


def remove_partial(cache_dir: Path, checkpoint_hash: str) -> None:
    """Delete the temp files a killed writer left in one checkpoint's cache dir (io.temp_path names them
    `.<name>.<pid>.tmp<suffix>`). Call it holding that checkpoint's lock: no live process writes there then."""
    for stale in (cache_dir / checkpoint_hash[:16]).glob(".*.tmp*"):
        stale.unlink(missing_ok=True)


def _stem(key: EvalKey) -> str:
    """<task>.<backend>.<hash of the whole key>: the name of a result file without its suffix."""
    if not is_safe_name(key["task"]) or not is_safe_name(key["backend"]):  # the names become the file name
        raise EvalError(f"task {key['task']!r} / backend {key['backend']!r}: {SAFE_NAME_RULE}")
    key_hash = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{key['task']}.{key['backend']}.{key_hash}"


def cache_path(cache_dir: Path, key: EvalKey) -> Path:
    """cache_dir/<checkpoint hash>/<task>.<backend>.<hash of the whole key>.json"""
    return cache_dir / key["checkpoint_hash"][:16] / f"{_stem(key)}.json"


def samples_name(key: EvalKey) -> str:
    """The file name of a result's samples, beside the result (EvalResult.samples)."""
    return f"{_stem(key)}{SAMPLES_SUFFIX}"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_score(value: Any) -> bool:
    return value is None or _is_number(value)


def problems(result: Any, key: EvalKey) -> list[str]:
    """Why a stored result cannot be used for this key (empty when it can)."""
    found = record_problems(result, key, SCHEMA, ("checkpoint", "lm_eval_version", "created"))
    if not isinstance(result, dict):
        return found
    if any(not isinstance(result.get(field), dict) for field in DICT_FIELDS):
        return [*found, "metrics/stderr/higher_is_better/item_scores/provenance missing"]
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
    if result.get("samples") != samples_name(key):
        found.append(f"samples {result.get('samples')!r} is not {samples_name(key)!r}")
    return found


def _line_count(path: Path) -> int | None:
    """Lines of a gzip file, read through (the gzip CRC catches a damaged file); None when unreadable."""
    try:
        with gzip.open(path, "rb") as stream:
            return sum(1 for _ in stream)
    except (OSError, EOFError, zlib.error):
        return None


def read_cached(path: Path, key: EvalKey) -> EvalResult | None:
    """The stored result, or None when there is none, it is corrupt, partial or for another key, or its samples file
    is missing or incomplete (so that the caller recomputes both)."""
    try:
        result = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if problems(result, key) or _line_count(path.parent / result["samples"]) != len(result["doc_ids"]):
        return None
    return result


def cached_under_other_settings(cache_dir: Path, key: EvalKey) -> list[EvalKey]:
    """The keys of the usable results this cache holds for the checkpoint and task of `key` under other settings
    (another --limit, backend, seed, ...; an older definition of the task): what a lookup of `key` that missed can
    name. Files that do not validate under their own key are left out, as a lookup would leave them."""
    found = []
    for path in sorted((cache_dir / key["checkpoint_hash"][:16]).glob("*.json")):
        try:
            result = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if not isinstance(result, dict) or result.get("task") != key["task"]:
            continue
        other = cache_key(*(result.get(field) for field in KEY_FIELDS), result.get("engine"))
        if other == key or other["checkpoint_hash"] != key["checkpoint_hash"] or not is_safe_name(other["backend"]):
            continue
        if path == cache_path(cache_dir, other) and read_cached(path, other) is not None:
            found.append(other)
    return found


def _sample_line(item: ItemSample) -> str:
    # default=str: a task's target may be any value its doc_to_target returns; the file must still be written
    return json.dumps(finite_json(item), sort_keys=True, ensure_ascii=False, default=str) + "\n"


def write_result(path: Path, result: EvalResult, samples: list[ItemSample]) -> None:
    """The samples (gzip JSON lines, in doc_ids order), then the result that names them; each written atomically."""
    if [item["doc_id"] for item in samples] != result["doc_ids"]:
        raise EvalError(f"{path}: samples are not one per doc_id of the result, in order")
    with atomic_path(path.parent / result["samples"]) as tmp, tmp.open("wb") as raw:
        # mtime 0 and no file name in the header: the same samples give the same bytes
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as stream:
            stream.writelines(_sample_line(item).encode("utf-8") for item in samples)
    write_json_atomic(path, finite_json(result))


def read_samples(cache_dir: Path, result: EvalResult) -> list[ItemSample]:
    """The per-item samples of a cached result (one per doc_id, in its order); EvalError naming the file when they
    are missing or damaged."""
    key = cache_key(*(result[field] for field in KEY_FIELDS), result.get("engine"))
    path = cache_path(cache_dir, key).parent / samples_name(key)
    try:
        with gzip.open(path, "rt", encoding="utf-8") as stream:
            items = [json.loads(line) for line in stream]
    except FileNotFoundError:
        raise EvalError(f"{path}: samples of {result['task']} missing; evaluate again with `nexus-eval eval`") from None
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EvalError(f"{path}: unreadable samples ({type(e).__name__}: {e})") from None
    if [item.get("doc_id") if isinstance(item, dict) else None for item in items] != result["doc_ids"]:
        raise EvalError(f"{path}: samples do not match the doc_ids of their result")
    return items
