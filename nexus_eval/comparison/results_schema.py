"""Compare results written before series (schema 1 and 2) read as schema 3, so that every reader (report, plots,
leaderboard, reproduce) knows one format.

Schema 3 names series: every pair, task, OOD, overlap and geometry row says which series it compares with the
reference (`series`), its sides are "reference" and "candidate", and the settings record the reference, the series
and the loss unit. A file of schema ≤ 2 compared AdamW (the reference) with Nexus in nats/token: it is upgraded to
exactly that, in memory; the file itself is left as it is.
"""

from __future__ import annotations

import copy
from typing import Any

from nexus_eval.optimizer_registry import BASELINE, CANDIDATE
from nexus_eval.schema import COMPARE_RESULTS_SCHEMA, CompareResults

SIDES = {BASELINE: "reference", CANDIDATE: "candidate"}


def _renamed(row: dict[str, Any], prefix: bool = False) -> dict[str, Any]:
    """A row with its adamw/nexus keys (or adamw_*/nexus_* keys) renamed to reference/candidate, and its series."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        for old, new in SIDES.items():
            if key == old or (prefix and key.startswith(f"{old}_")):
                key = new + key[len(old) :]
                break
        out[key] = value
    out.setdefault("series", CANDIDATE)
    return out


def upgraded(results: dict[str, Any]) -> CompareResults:
    """Schema-3 results: `results` itself when it is schema 3, else an upgraded copy."""
    if results.get("schema") == COMPARE_RESULTS_SCHEMA:
        return results  # type: ignore[return-value]
    old = copy.deepcopy(results)
    settings = {**old["settings"], "reference": BASELINE, "series": [BASELINE, CANDIDATE], "loss_unit": "nats"}
    runs = [{**r, "series": r.get("optimizer"), "external": False} for r in old["runs"]]
    return {  # type: ignore[return-value]
        **old,
        "schema": COMPARE_RESULTS_SCHEMA,
        "settings": settings,
        "runs": runs,
        "pairs": [_renamed(p) for p in old["pairs"]],
        "unmatched": [{**u, "series": CANDIDATE} for u in old["unmatched"]],
        "tasks": [_renamed(r) for r in old["tasks"]],
        "ood": [_renamed(r) for r in old["ood"]],
        "overlap": [{**r, "series": CANDIDATE} for r in old["overlap"]],
        "geometry": [_renamed(r, prefix=True) for r in old.get("geometry") or []],
        "points": [
            {**{k: v for k, v in p.items() if k != "optimizer"}, "series": p.get("optimizer")} for p in old["points"]
        ],
        "curves": [
            {**{k: v for k, v in c.items() if k != "optimizer"}, "series": c.get("optimizer")} for c in old["curves"]
        ],
    }
