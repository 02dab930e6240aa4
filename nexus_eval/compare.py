"""compare(): runs → loss-matched pairs → evaluation (cache first) → paired statistics → tables, plots, results JSON.

The results JSON (out/results.json, and leaderboards/<name>.json) holds everything the Markdown and the plots are
drawn from, so both can be rebuilt from it alone (nexus_eval.leaderboard).

Downstream Δ rows: the point estimate and its CI are the mean per-item difference (Nexus − AdamW) over the items both
checkpoints were scored on; the AdamW/Nexus columns are lm-eval's aggregate metric (the same number for accuracy and
exact match; for bits-per-byte lm-eval weights documents by length, so the two can differ slightly).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from nexus_eval.checkpoints import content_hash, write_json_atomic
from nexus_eval.errors import NexusError
from nexus_eval.match import BASELINE, CANDIDATE, Checkpoint, Pair, Run, Side, Unmatched, load_runs, match
from nexus_eval.report import ALL_SEEDS
from nexus_eval.stats import RESAMPLES, is_binary, item_overlap, paired_bootstrap, seed_mean_ci

RESULTS_SCHEMA = 1
RESULTS_KIND = "nexus-eval-compare"


# ---- eval results: cache first, evaluate() only for what is missing -----------------------------------------


def _cache_entries(cache_dir: Path) -> list[dict[str, Any]]:
    entries = []
    for path in sorted(cache_dir.rglob("*.json")) if cache_dir.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # a half-written or foreign file is not a result
        if isinstance(data, dict) and data.get("schema") == 1 and "checkpoint_hash" in data and "task" in data:
            entries.append(data)
    return entries


def current_task_hashes(tasks: list[str]) -> dict[str, str]:
    """task → hash of its YAML and data now (nexus_eval.tasks.task_info), for tasks the registry knows: a cached
    result for an older definition of the task is then not used. Unknown names (e.g. a task YAML path) get none."""
    try:
        from nexus_eval.tasks import task_info
    except ImportError:
        return {}
    hashes = {}
    for task in tasks:
        try:
            hashes[task] = task_info(task)["yaml_hash"]
        except (NexusError, OSError, KeyError):
            continue
    return hashes


def _pick(
    entries: list[dict[str, Any]], backend: str, limit: int | None, num_fewshot: int | None, yaml_hash: str | None
) -> dict | None:
    """The cached result for exactly these settings (newest if several, e.g. different eval seeds)."""
    fit = [
        e
        for e in entries
        if e.get("backend") == backend
        and e.get("limit") == limit
        and e.get("num_fewshot") == num_fewshot
        and (yaml_hash is None or e.get("yaml_hash") == yaml_hash)
    ]
    return max(fit, key=lambda e: str(e.get("created", ""))) if fit else None


def _index(entries: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    index: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for e in entries:
        index[(e["checkpoint_hash"], e["task"])].append(e)
    return index


def collect_results(
    ckpts: list[Checkpoint],
    tasks: list[str],
    backend: str,
    limit: int | None,
    num_fewshot: int | None,
    cache_dir: Path,
    batch_size: int,
    progress: bool,
    hashes: dict[Path, str],
) -> dict[tuple[Path, str], dict[str, Any]]:
    """(checkpoint path, task) → eval result, evaluating through nexus_eval.evaluate only what the cache lacks."""
    index = _index(_cache_entries(cache_dir))
    yaml_hashes = current_task_hashes(tasks)

    def lookup() -> tuple[dict[tuple[Path, str], dict[str, Any]], list[Checkpoint]]:
        found, missing = {}, []
        for c in ckpts:
            for task in tasks:
                hit = _pick(index.get((hashes[c.path], task), []), backend, limit, num_fewshot, yaml_hashes.get(task))
                if hit is None:
                    missing.append(c)
                else:
                    found[(c.path, task)] = hit
        return found, list(dict.fromkeys(missing))

    found, missing = lookup()
    if missing:
        from nexus_eval.evaluate import evaluate

        fresh = evaluate(
            [c.path for c in missing],
            tasks=tasks,
            backend=backend,
            limit=limit,
            num_fewshot=num_fewshot,
            batch_size=batch_size,
            cache_dir=cache_dir,
            progress=progress,
        )
        for e in fresh:
            index[(e["checkpoint_hash"], e["task"])].append(e)
        found, missing = lookup()
        if missing:
            raise NexusError(f"{missing[0].path}: evaluation returned no result for some of the tasks {tasks}")
    return found


def resolve_tasks(suite: str | None, tasks: list[str] | None) -> list[str]:
    """--tasks as given (the evaluator validates them when it runs), else the suite's tasks from the registry."""
    if tasks:
        return list(dict.fromkeys(tasks))
    from nexus_eval.tasks import resolve_tasks as suite_tasks

    return list(suite_tasks(None, suite))


def primary_metric(task: str, result: dict[str, Any]) -> str:
    """The task's comparison metric (nexus_eval.tasks.PRIMARY_METRIC), else the first metric with item scores."""
    try:
        from nexus_eval.tasks import PRIMARY_METRIC
    except ImportError:
        PRIMARY_METRIC = {}  # noqa: N806 (tasks module not present: fall back to the result's own metrics)
    metric = PRIMARY_METRIC.get(task)
    if metric in result.get("metrics", {}):
        return metric
    keys = sorted(k for k in result.get("metrics", {}) if k in result.get("item_scores", {})) or sorted(
        result.get("metrics", {})
    )
    if not keys:
        raise NexusError(f"eval result for {result.get('checkpoint')} / {task} has no metrics")
    return keys[0]


# ---- statistics over pairs ------------------------------------------------------------------------------------


def _clean(x: Any) -> Any:
    """NaN/inf → None, numpy scalars → Python: strict, stable JSON."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _item_map(result: dict[str, Any], metric: str, field: str = "item_scores") -> dict[int, float] | None:
    """doc_id → per-item score (or ratio weight, field="item_weights"); items without a value are left out."""
    values = (result.get(field) or {}).get(metric)
    if values is None:
        return None
    doc_ids = result.get("doc_ids") or []
    if len(doc_ids) != len(values):
        raise NexusError(f"eval result {result.get('checkpoint')} / {result.get('task')}: doc_ids and {field} differ")
    return {int(d): float(v) for d, v in zip(doc_ids, values, strict=True) if v is not None}


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _side_metric(side: Side, task: str, metric: str, results: dict) -> tuple[float, dict[int, float] | None]:
    """Aggregate metric and per-item scores (doc_id → score) of one side of a pair; an interpolated side weighs
    its two checkpoints item by item on the documents both were scored on."""
    found = [results[(c.path, task)] for c in side.checkpoints]
    for r in found:
        if metric not in r.get("metrics", {}):
            raise NexusError(f"eval result {r.get('checkpoint')} / {task}: no metric {metric!r}")
    value = sum(w * _number(r["metrics"][metric]) for w, r in zip(side.weights, found, strict=True))
    maps = [_item_map(r, metric) for r in found]
    if any(m is None for m in maps):
        return value, None
    common = set(maps[0]).intersection(*maps[1:])
    return value, {d: sum(w * m[d] for w, m in zip(side.weights, maps, strict=True)) for d in common}


def task_rows(pairs: list[Pair], tasks: list[str], results: dict, resamples: int, seed: int) -> tuple[list, list]:
    rows, overlap = [], []
    per_seed: dict[tuple[float, str], list[dict[str, Any]]] = defaultdict(list)
    for p in pairs:
        for task in tasks:
            first = results[(p.adamw.checkpoints[0].path, task)]
            metric = primary_metric(task, first)
            higher = bool((first.get("higher_is_better") or {}).get(metric, True))
            a_val, a_items = _side_metric(p.adamw, task, metric, results)
            n_val, n_items = _side_metric(p.nexus, task, metric, results)
            row: dict[str, Any] = {
                "target": p.target,
                "seed": p.seed,
                "task": task,
                "metric": metric,
                "higher_is_better": higher,
                "adamw": a_val,
                "nexus": n_val,
            }
            if a_items is not None and n_items is not None:
                # Ratio metrics (bits per byte, perplexities) weigh items by their length, as lm-eval aggregates.
                weights = _item_map(first, metric, "item_weights")
                docs = sorted(set(a_items) & set(n_items) & (set(weights) if weights is not None else set(a_items)))
                a = np.array([a_items[d] for d in docs])
                b = np.array([n_items[d] for d in docs])
                w = np.array([weights[d] for d in docs]) if weights is not None else None
                est = paired_bootstrap(a, b, resamples=resamples, seed=seed, weights=w)
                row.update(est.to_dict())
                if docs and is_binary(a) and is_binary(b):
                    overlap.append({"target": p.target, "seed": p.seed, "task": task, **item_overlap(a, b)})
            else:
                row.update(mean=n_val - a_val, low=math.nan, high=math.nan, n=0, unit="items", method="no item scores")
                row["excludes_zero"] = False
            rows.append(row)
            per_seed[(p.target, task)].append(row)
    seeds = {p.seed for p in pairs}
    if len(seeds) > 1:
        for (target, task), group in per_seed.items():
            est = seed_mean_ci(np.array([r["mean"] for r in group]))
            rows.append(
                {
                    "target": target,
                    "seed": ALL_SEEDS,
                    "task": task,
                    "metric": group[0]["metric"],
                    "higher_is_better": group[0]["higher_is_better"],
                    "adamw": float(np.mean([r["adamw"] for r in group])),
                    "nexus": float(np.mean([r["nexus"] for r in group])),
                    **est.to_dict(),
                }
            )
    return rows, overlap


def _side_ood(side: Side) -> dict[str, float]:
    domains = set.intersection(*(set(c.ood_loss) for c in side.checkpoints))
    return {d: sum(w * c.ood_loss[d] for c, w in zip(side.checkpoints, side.weights, strict=True)) for d in domains}


def ood_rows(pairs: list[Pair]) -> list[dict[str, Any]]:
    """OOD loss per domain (nats/token, from nexus.json), Δ per pair; over seeds mean with a t CI."""
    rows = []
    by_key: dict[tuple[float, str], list[dict[str, Any]]] = defaultdict(list)
    for p in pairs:
        a, n = _side_ood(p.adamw), _side_ood(p.nexus)
        for domain in sorted(set(a) & set(n)):
            row = {"target": p.target, "seed": p.seed, "domain": domain, "adamw": a[domain], "nexus": n[domain]}
            # One checkpoint pair: a difference without an interval (per-window losses are not stored).
            row.update(mean=n[domain] - a[domain], low=None, high=None, n=1, unit="pair", method="single pair")
            row["excludes_zero"] = False
            rows.append(row)
            by_key[(p.target, domain)].append(row)
    if len({p.seed for p in pairs}) > 1:
        for (target, domain), group in by_key.items():
            est = seed_mean_ci(np.array([r["mean"] for r in group]))
            a_mean = float(np.mean([r["adamw"] for r in group]))
            n_mean = float(np.mean([r["nexus"] for r in group]))
            rows.append({"target": target, "seed": ALL_SEEDS, "domain": domain, "adamw": a_mean, "nexus": n_mean})
            rows[-1].update(est.to_dict())
    return rows


def geometry_rows(pairs: list[Pair], data_dir: Path) -> list[dict[str, Any]]:
    from nexus_eval.geometry import geometry

    rows = []
    for p in pairs:
        row: dict[str, Any] = {"target": p.target, "seed": p.seed}
        for name, side in ((BASELINE, p.adamw), (CANDIDATE, p.nexus)):
            ckpt = side.checkpoints[int(np.argmax(side.weights))]  # interpolated: the nearer checkpoint
            g = geometry(ckpt.path, data_dir)
            row[f"{name}_grad_cos"] = g.get("grad_cos_mean_offdiag")
            row[f"{name}_minima_msd"] = g.get("minima_msd")
        rows.append(row)
    return rows


def run_curves(runs: list[Run]) -> list[dict[str, Any]]:
    """val_loss (and mean off-diagonal gradient cosine) vs tokens from each run's metrics.jsonl, for the plots."""
    curves = []
    for run in sorted(runs, key=lambda r: r.run_id):
        points = []
        path = run.path / "metrics.jsonl"
        for line in path.read_text().splitlines() if path.exists() else []:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            cos = (row.get("grad_cosine") or {}).get("mean_offdiag")
            points.append({"tokens": row.get("tokens"), "val_loss": row.get("val_loss"), "grad_cos": cos})
        curves.append({"run_id": run.run_id, "optimizer": run.optimizer, "seed": run.seed, "points": points})
    return curves


def metric_points(runs: list[Run], tasks: list[str], index: dict, metrics: dict[str, str], settings: dict) -> list:
    """Every checkpoint of the runs with a cached result (matched or not): metric vs held-out loss, for the plots."""
    points = []
    for run in sorted(runs, key=lambda r: r.run_id):
        for c in run.checkpoints:
            for task in tasks:
                hit = index.get((c.path, task))
                if hit is None or task not in metrics or metrics[task] not in hit["metrics"]:
                    continue
                value = float(hit["metrics"][metrics[task]])
                points.append(
                    {"optimizer": c.optimizer, "seed": c.seed, "run_id": c.run_id, "checkpoint": c.label}
                    | {"loss": c.loss, "task": task, "metric": metrics[task], "value": value}
                )
    return points


# ---- the entry point ------------------------------------------------------------------------------------------


def build_results(
    runs: list[Run],
    pairs: list[Pair],
    unmatched: list[Unmatched],
    results: dict,
    tasks: list[str],
    settings: dict[str, Any],
    cached_everywhere: dict,
    geometry: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    rows, overlap = task_rows(pairs, tasks, results, settings["bootstrap_resamples"], settings["bootstrap_seed"])
    metrics = {r["task"]: r["metric"] for r in rows}
    return _clean(
        {
            "schema": RESULTS_SCHEMA,
            "kind": RESULTS_KIND,
            "settings": settings,
            "runs": [
                {"run_id": r.run_id, "optimizer": r.optimizer, "seed": r.seed, "checkpoints": len(r.checkpoints)}
                for r in sorted(runs, key=lambda r: r.run_id)
            ],
            "pairs": [
                {"target": p.target, "seed": p.seed, "adamw": p.adamw.summary(), "nexus": p.nexus.summary()}
                | {"delta_loss": p.delta_loss}
                for p in pairs
            ],
            "unmatched": [{"target": u.target, "seed": u.seed, "reason": u.reason} for u in unmatched],
            "tasks": rows,
            "overlap": overlap,
            "ood": ood_rows(pairs),
            "geometry": geometry or [],
            "points": metric_points(runs, tasks, cached_everywhere, metrics, settings),
            "curves": run_curves(runs),
        }
    )


def compare(
    run_dirs: list[Path],
    match_loss: bool = True,
    tolerance: float = 0.01,
    targets: list[float] | None = None,
    interpolate: bool = False,
    suite: str | None = "reasoning",
    tasks: list[str] | None = None,
    backend: str = "hf",
    limit: int | None = None,
    out: Path = Path("reports/compare"),
    num_fewshot: int | None = None,
    batch_size: int = 8,
    cache_dir: Path = Path("results/eval"),
    leaderboard: str | None = None,
    leaderboard_dir: Path = Path("leaderboards"),
    with_geometry: bool = False,
    data_dir: Path = Path("data"),
    bootstrap_resamples: int = RESAMPLES,
    bootstrap_seed: int = 0,
    progress: bool = True,
    show: bool = True,
) -> dict[str, Any]:
    """Match, evaluate what is missing, compute paired statistics, write out/{results.json,report.md,*.png}
    (and leaderboards/<leaderboard>.{json,md,png}); returns the results dict."""
    from nexus_eval.report import print_report, write_report

    if not match_loss and not interpolate:
        raise NexusError("compare: pass --match-loss (or --interpolate): unmatched comparisons are not supported")
    if limit is not None and limit <= 0:
        raise NexusError(f"--limit must be positive (got {limit})")
    if bootstrap_resamples < 100:
        raise NexusError(f"bootstrap resamples must be ≥ 100 (got {bootstrap_resamples})")
    runs = load_runs(run_dirs)
    pairs, unmatched = match(runs, tolerance, targets, interpolate)
    task_names = resolve_tasks(suite, tasks)
    needed = sorted({c.path: c for p in pairs for s in (p.adamw, p.nexus) for c in s.checkpoints}.values(), key=str)
    all_ckpts = [c for r in runs for c in r.checkpoints]
    hashes = {c.path: content_hash(c.path) for c in all_ckpts}
    results = collect_results(needed, task_names, backend, limit, num_fewshot, cache_dir, batch_size, progress, hashes)
    # Unmatched checkpoints with results already in the cache still feed the metric-vs-loss plot (no evaluation).
    index = _index(_cache_entries(cache_dir))
    yaml_hashes = current_task_hashes(task_names)
    everywhere = {}
    for c in all_ckpts:
        for task in task_names:
            entries = index.get((hashes[c.path], task), [])
            hit = results.get((c.path, task)) or _pick(entries, backend, limit, num_fewshot, yaml_hashes.get(task))
            if hit is not None:
                everywhere[(c.path, task)] = hit
    settings = {
        "mode": "interpolate" if interpolate else "match-loss",
        "tolerance": None if interpolate else tolerance,
        "targets": sorted({p.target for p in pairs} | {u.target for u in unmatched}, reverse=True),
        "suite": None if tasks else suite,
        "tasks": task_names,
        "backend": backend,
        "limit": limit,
        "num_fewshot": num_fewshot,
        "bootstrap_resamples": bootstrap_resamples,
        "bootstrap_seed": bootstrap_seed,
        "level": 0.95,
    }
    geometry = geometry_rows(pairs, data_dir) if with_geometry else None
    report = build_results(runs, pairs, unmatched, results, task_names, settings, everywhere, geometry)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "results.json", report)
    write_report(report, out)
    if leaderboard is not None:
        from nexus_eval.leaderboard import write_leaderboard

        write_leaderboard(report, leaderboard, leaderboard_dir)
    if show:
        print_report(report, out)
    return report
