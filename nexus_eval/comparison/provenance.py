"""Provenance of a comparison's runs: what each run row of a results JSON records about how it was made, and what
differs between runs (the leaderboard's footer) or between two records of one run (`leaderboard reproduce`).

Training provenance comes from the run's files (run.json, the newest checkpoint's nexus.json), evaluation provenance
from the eval results the comparison used; nothing is measured here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

from nexus_eval.checkpoints import TOKENIZER_FILES, read_meta
from nexus_eval.comparison.match import Run
from nexus_eval.provenance import differences, files_hash
from nexus_eval.schema import (
    CheckpointMeta,
    Environment,
    EvalResult,
    EvalSettingsProvenance,
    RunInfo,
    RunProvenance,
    RunRow,
)

# The tokenizer files a checkpoint holds besides TOKENIZER_FILES (special tokens, chat template).
TOKENIZER_EXTRAS = ("tokenizer_config.json", "special_tokens_map.json")


def checkpoint_tokenizer_hash(ckpt: Path) -> str | None:
    """sha256 of the tokenizer files a checkpoint holds: defined for any checkpoint, ours or external (training's
    run.json tokenizer_hash is of the data build's files instead)."""
    return files_hash([ckpt / name for name in (*TOKENIZER_FILES, *TOKENIZER_EXTRAS)])


def evaluation_provenance(results: list[EvalResult]) -> list[EvalSettingsProvenance]:
    """The distinct evaluation settings and environments among `results`, each with the task YAML hashes it used."""
    groups: dict[str, EvalSettingsProvenance] = {}
    for result in sorted(results, key=lambda r: (r["task"], r["checkpoint"])):
        recorded = result.get("provenance")
        if not isinstance(recorded, dict):  # an eval result of schema 1: nothing recorded
            continue
        entry: EvalSettingsProvenance = {
            "backend": result["backend"],
            "dtype": recorded["dtype"],
            "batch_size": recorded["batch_size"],
            "model_args": recorded["model_args"],
            "task_yaml_hashes": {},
            "environment": recorded["environment"],
        }
        key = json.dumps({**entry, "task_yaml_hashes": None}, sort_keys=True)
        groups.setdefault(key, entry)["task_yaml_hashes"][result["task"]] = result["yaml_hash"]
    return list(groups.values())


def run_provenance(run: Run, results: list[EvalResult]) -> RunProvenance:
    """One run's provenance: its training record (newest checkpoint, else run.json) and the evaluation behind
    `results` (the eval results of its checkpoints that the comparison used)."""
    info = cast(RunInfo, run.info)  # run.json as match.load_run read it (else the newest nexus.json)
    newest = run.checkpoints[-1].path
    meta = cast(CheckpointMeta, read_meta(newest))
    training = cast(Environment | None, meta.get("environment") or info.get("environment"))
    return {
        "data_hash": meta.get("data_hash") or info.get("data_hash"),
        "data_build": meta.get("data_build") or info.get("data_build"),
        "recipe_hash": meta.get("recipe_hash") or info.get("recipe_hash"),
        "recipe": meta.get("recipe") or info.get("recipe"),
        "tokenizer_hash": checkpoint_tokenizer_hash(newest),
        "code_version": meta.get("code_version") or info.get("code_version"),
        "training": training,
        "evaluation": evaluation_provenance(results),
    }


def comparable(provenance: RunProvenance) -> dict[str, Any]:
    """A provenance as compared field by field: evaluation entries by their content (a list has no field names)."""
    record: dict[str, Any] = dict(provenance)
    record["evaluation"] = sorted(json.dumps(e, sort_keys=True) for e in provenance.get("evaluation") or [])
    return record


def differing_fields(rows: list[RunRow]) -> dict[str, dict[str, Any]]:
    """Dotted provenance field → {run_id: value} for the fields whose values differ between the runs."""
    recorded = [(r["run_id"], comparable(r["provenance"])) for r in rows if "provenance" in r]
    if len(recorded) < 2:
        return {}
    first = recorded[0][1]
    fields: set[str] = set()
    for _, other in recorded[1:]:
        fields |= set(differences(first, other))
    return {name: {run_id: _value(record, name) for run_id, record in recorded} for name in sorted(fields)}


def _value(record: dict[str, Any], dotted: str) -> Any:
    value: Any = record
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value
