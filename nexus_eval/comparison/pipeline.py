"""compare(): series → loss-matched pairs → eval results → paired statistics → tables, plots, results JSON.

Series (external.compared_runs) are the harness's runs and checkpoint series of any origin, all with held-out loss in
one unit on one held-out set; each series but the reference is matched against the reference (match.py).

Eval results come only through the evaluation stage (nexus_eval.evaluation): `cached_results` for every checkpoint
of the runs, then `evaluate_series` (one engine, or one worker per `--devices` device) for the paired checkpoints the
cache lacks. The cache key there is the whole of what a result depends on (checkpoint content, task version and
definition, backend, few-shot, limit, eval seed), so a result for another task definition or eval seed never enters a
comparison.

The results JSON (out/results.json, and leaderboards/<name>.json) holds everything the Markdown and the plots are
drawn from, so both can be rebuilt from it alone (nexus_eval.comparison.leaderboard).

Downstream Δ rows: per seed, the point estimate and its CI are the mean per-item difference (candidate − reference,
e.g. Nexus − AdamW) over the items both checkpoints were scored on (a CI conditional on that training seed); over
several seeds, the mean of the per-seed differences with a hierarchical bootstrap CI over seeds and items (and the t
interval over seeds beside it). The reference/candidate columns are lm-eval's aggregate metric. Ratio metrics are
aggregated over the corpus as lm-eval does: bits per byte as the byte-weighted mean of the items, word and byte
perplexity as exp of the total negative log-likelihood over the total words/bytes (stats.SeedItems); each bootstrap
resample recomputes that ratio. Every row draws its own resamples (stats.stream_seed of the bootstrap_seed setting
and the row's series, task, target and seed), reproducible run to run.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from nexus_eval.checkpoints import content_hash
from nexus_eval.comparison.chance import (
    curve_at_chance,
    has_chance,
    item_chance,
    row_at_chance,
    seed_vs_chance,
    seeds_vs_chance,
    task_chance,
)
from nexus_eval.comparison.curves import TASK as TASK_CURVE
from nexus_eval.comparison.curves import loss_curves, ood_points
from nexus_eval.comparison.disagreements import find_disagreements, print_disagreements, write_disagreements
from nexus_eval.comparison.external import compared_runs
from nexus_eval.comparison.geometry_seeds import geometry_over_seeds
from nexus_eval.comparison.guards import check_runs, warn_mismatches
from nexus_eval.comparison.leaderboard import check_name, disagreements_path, write_leaderboard
from nexus_eval.comparison.lr_sweep import check_chosen_lrs, read_lr_sweep
from nexus_eval.comparison.match import (
    Checkpoint,
    Pair,
    Run,
    Side,
    Unmatched,
    chosen_targets,
    match,
    seed_groups,
    series_labels,
)
from nexus_eval.comparison.noise import loss_noise, read_metrics, score_method, score_noise, tolerance_record
from nexus_eval.comparison.provenance import run_provenance
from nexus_eval.comparison.report import ALL_SEEDS, print_report, write_report
from nexus_eval.comparison.settings import CompareOptions, CompareSettings
from nexus_eval.comparison.stats import (
    SeedItems,
    both_exclude_zero,
    hierarchical_bootstrap,
    is_binary,
    item_overlap,
    paired_bootstrap,
    seed_mean_ci,
    stream_seed,
)
from nexus_eval.display import console
from nexus_eval.errors import ComparisonError, EvalError
from nexus_eval.evaluation import EvalSettings, cached_results, checked_devices, evaluate_series, read_samples
from nexus_eval.evaluation.runner import PERPLEXITY_METRICS
from nexus_eval.io import finite_json, write_json_atomic
from nexus_eval.schema import (
    COMPARE_RESULTS_KIND,
    COMPARE_RESULTS_SCHEMA,
    CompareResults,
    CurvePoint,
    EvalResult,
    LossCurves,
    LossNoiseRow,
    MetricPoint,
    NoiseRecord,
    OodRow,
    OverlapRow,
    PairRow,
    RunCurve,
    RunRow,
    TaskRow,
    ToleranceRecord,
    UnmatchedRow,
)
from nexus_eval.tasks import primary_metric, read_task_yaml
from nexus_eval.tasks import resolve_tasks as suite_tasks

# (checkpoint path, task name) → its eval result
Results = dict[tuple[Path, str], EvalResult]
# task name → doc_id → number of choices of its multiple-choice items (chance is 1/that)
Choices = Mapping[str, Mapping[int, int]]


# ---- eval results: through the evaluation stage only ----------------------------------------------------------


def requested_tasks(suite: str | None, tasks: tuple[str, ...] | None) -> list[str]:
    """--tasks as given (the evaluation stage validates them), else the suite's tasks from the registry."""
    if tasks:
        return list(dict.fromkeys(tasks))
    return list(suite_tasks(None, suite))


def task_name(task: str) -> str:
    """The name a result carries: a task given as a YAML path is the task that YAML defines."""
    return read_task_yaml(Path(task))["task"] if task.endswith((".yaml", ".yml")) else task


def gather_results(
    runs: list[Run],
    pairs: list[Pair],
    tasks: list[str],
    names: list[str],
    settings: CompareSettings,
    options: CompareOptions,
) -> Results:
    """(checkpoint, task name) → result for every checkpoint of the runs the cache holds results for, after
    evaluating the tasks (names: what their results are called) the paired checkpoints lack (with
    options.evaluate_all, every checkpoint).

    Without evaluate_all, checkpoints outside the pairs are never evaluated: their cached results only add points to
    the metric-vs-loss plot and the curves."""
    ckpts = [c for r in runs for c in r.checkpoints]
    hashes = {c.path: content_hash(c.path) for c in ckpts}
    query = EvalSettings(
        tasks=tuple(tasks),
        backend=settings.backend,
        limit=settings.limit,
        num_fewshot=settings.num_fewshot,
        batch_size=options.batch_size,
        device=options.device,
        model_args=options.model_args,
        cache_dir=options.cache_dir,
    )
    if options.devices is not None:  # a bad --devices is refused even when the cache holds every result
        checked_devices(options.devices, query)
    found = {(r["checkpoint_hash"], r["task"]): r for r in cached_results([c.path for c in ckpts], query, hashes)}
    if options.evaluate_all:
        wanted = {c.path: c for c in ckpts}
    else:
        wanted = {c.path: c for p in pairs for side in (p.reference, p.candidate) for c in side.checkpoints}
    needed = [wanted[path] for path in sorted(wanted, key=str)]

    def lacking() -> list[Checkpoint]:
        return [c for c in needed if any((hashes[c.path], t) not in found for t in names)]

    if missing := lacking():
        fresh = evaluate_series([c.path for c in missing], query, options.progress, hashes, options.devices)
        found.update({(r["checkpoint_hash"], r["task"]): r for r, _ in fresh})
        if missing := lacking():
            raise ComparisonError(f"{missing[0].path}: evaluation returned no result for some of the tasks {tasks}")
    return {(c.path, t): found[(hashes[c.path], t)] for c in ckpts for t in names if (hashes[c.path], t) in found}


def choice_counts(pairs: list[Pair], tasks: list[str], results: Results, cache_dir: Path) -> dict[str, dict[int, int]]:
    """task → doc_id → number of choices, for the tasks whose primary metric has a chance level (chance.has_chance),
    read from the samples stored beside one eval result of the task: the choices belong to the task's items, the same
    for every checkpoint. A task whose samples cannot be read gets no entry: its rows are then not judged (chance —)
    rather than the comparison failing over a check it can do without."""
    counts: dict[str, dict[int, int]] = {}
    for task in tasks:
        found = next(
            (results[(c.path, task)] for p in pairs for c in p.reference.checkpoints if (c.path, task) in results),
            None,
        )
        if found is None or not has_chance(primary_metric(task, found)):
            continue
        try:
            samples = read_samples(cache_dir, found)
        except EvalError:
            continue
        counts[task] = {s["doc_id"]: len(s["choices"]) for s in samples if s.get("output_type") == "multiple_choice"}
    return counts


# ---- statistics over pairs ------------------------------------------------------------------------------------


def is_perplexity(metric: str) -> bool:
    """Whether a "metric,filter" key is a corpus perplexity (word or byte): exp of the corpus ratio, as lm-eval."""
    return metric.partition(",")[0] in PERPLEXITY_METRICS


def _item_map(result: EvalResult, metric: str, field: str = "item_scores") -> dict[int, float] | None:
    """doc_id → per-item score (or ratio weight, field="item_weights"); items without a value are left out. A
    perplexity's item scores come as their logs, the negative log-likelihood per unit, which is what its corpus
    figure averages (stats.SeedItems.exponentiate) and what an interpolated side interpolates."""
    values = (result.get(field) or {}).get(metric)
    if values is None:
        return None
    doc_ids = result.get("doc_ids") or []
    if len(doc_ids) != len(values):
        raise ComparisonError(
            f"eval result {result.get('checkpoint')} / {result.get('task')}: doc_ids and {field} differ"
        )
    value = math.log if field == "item_scores" and is_perplexity(metric) else float
    return {int(d): value(float(v)) for d, v in zip(doc_ids, values, strict=True) if v is not None}


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _side_metric(side: Side, task: str, metric: str, results: Results) -> tuple[float, dict[int, float] | None]:
    """Aggregate metric and per-item scores (doc_id → score) of one side of a pair; an interpolated side weighs
    its two checkpoints item by item on the documents both were scored on."""
    found = [results[(c.path, task)] for c in side.checkpoints]
    for r in found:
        if metric not in r.get("metrics", {}):
            raise ComparisonError(f"eval result {r.get('checkpoint')} / {task}: no metric {metric!r}")
    value = sum(w * _number(r["metrics"][metric]) for w, r in zip(side.weights, found, strict=True))
    maps = [_item_map(r, metric) for r in found]
    if any(m is None for m in maps):
        return value, None
    common = set(maps[0]).intersection(*maps[1:])
    return value, {d: sum(w * m[d] for w, m in zip(side.weights, maps, strict=True)) for d in common}


def seed_chance(
    reference: np.ndarray, candidate: np.ndarray, chance: np.ndarray, settings: CompareSettings, keys: tuple[Any, ...]
) -> dict[str, Any]:
    """chance and at_chance of one seed's row: each side's score − chance with its item bootstrap (chance.py)."""
    sides = []
    for scores, side in ((reference, "reference"), (candidate, "candidate")):
        # Each side its own resamples, apart from the Δ's: the keys are the row's (`keys`) and "chance", the side.
        seed = stream_seed(settings.bootstrap_seed, *keys, "chance", side)
        sides.append([seed_vs_chance(scores, chance, settings.bootstrap_resamples, seed, settings.level)])
    return {"chance": float(chance.mean()), "at_chance": row_at_chance(*sides)}


def task_rows(
    pairs: list[Pair], tasks: list[str], results: Results, settings: CompareSettings, choices: Choices | None = None
) -> tuple[list[TaskRow], list[OverlapRow]]:
    """Per pair and task the paired item difference with its bootstrap CI, conditional on that training seed (and the
    solved-item overlap of 0/1 scores); over several seeds, the across-seed row (across_seeds). With the tasks'
    choice counts (choice_counts), accuracy rows of multiple-choice tasks say their chance level and whether both
    sides are indistinguishable from it (chance.py); other rows carry chance and at_chance None."""
    rows: list[TaskRow] = []
    overlap: list[OverlapRow] = []
    per_seed: dict[tuple[str, float, str], list[SeedRow]] = defaultdict(list)
    for p in pairs:
        for task in tasks:
            first = results[(p.reference.checkpoints[0].path, task)]
            metric = primary_metric(task, first)
            higher = bool((first.get("higher_is_better") or {}).get(metric, True))
            a_val, a_items = _side_metric(p.reference, task, metric, results)
            n_val, n_items = _side_metric(p.candidate, task, metric, results)
            row: dict[str, Any] = {
                "target": p.target,
                "seed": p.seed,
                "series": p.series,
                "task": task,
                "metric": metric,
                "higher_is_better": higher,
                "reference": a_val,
                "candidate": n_val,
            }
            items: SeedItems | None = None
            chance: np.ndarray | None = None
            row.update(chance=None, at_chance=None)
            if a_items is not None and n_items is not None:
                # Ratio metrics (bits per byte, perplexities) weigh items by their length, as lm-eval aggregates.
                weights = _item_map(first, metric, "item_weights")
                docs = sorted(set(a_items) & set(n_items) & (set(weights) if weights is not None else set(a_items)))
                a = np.array([a_items[d] for d in docs])
                b = np.array([n_items[d] for d in docs])
                w = np.array([weights[d] for d in docs]) if weights is not None else None
                exponentiate = is_perplexity(metric) and w is not None
                # Every row its own resamples: rows of equal size sharing indices would err together.
                seed = stream_seed(settings.bootstrap_seed, p.series, task, p.target, p.seed)
                est = paired_bootstrap(
                    a, b, resamples=settings.bootstrap_resamples, seed=seed, level=settings.level, weights=w,
                    exponentiate=exponentiate,
                )  # fmt: skip
                row.update(est.to_dict())
                items = SeedItems(a, b, w, exponentiate) if docs else None
                if has_chance(metric) and (known := (choices or {}).get(task)) is not None:
                    chance = item_chance(known, docs)
                if chance is not None:
                    row.update(seed_chance(a, b, chance, settings, (p.series, task, p.target, p.seed)))
                if docs and is_binary(a) and is_binary(b):
                    overlap.append(
                        {"target": p.target, "seed": p.seed, "series": p.series, "task": task, **item_overlap(a, b)}
                    )
            else:
                row.update(mean=n_val - a_val, low=math.nan, high=math.nan, n=0, unit="items", method="no item scores")
                row["excludes_zero"] = False
            rows.append(row)
            per_seed[(p.series, p.target, task)].append((row, items, chance))
    several = several_seeds(pairs)
    rows += [across_seeds(*key, group, settings) for key, group in per_seed.items() if key[0] in several]
    return rows, overlap


def several_seeds(pairs: list[Pair]) -> set[str]:
    """The series whose pairs span two or more training seeds: they get across-seed rows."""
    seeds: dict[str, set[str]] = defaultdict(set)
    for p in pairs:
        seeds[p.series].add(p.seed)
    return {series for series, found in seeds.items() if len(found) > 1}


# One seed's row, its paired items (None without item scores) and their chance levels (None: not judged).
SeedRow = tuple[TaskRow, SeedItems | None, np.ndarray | None]


def across_chance(
    series: str, target: float, task: str, group: list[SeedRow], settings: CompareSettings
) -> dict[str, Any]:
    """chance and at_chance of an across-seed row: each side's score − chance over seeds and items (both the
    hierarchical and the t interval, as for Δ); None when a seed lacks item scores or chance levels."""
    judged = [(items, chance) for _, items, chance in group if items is not None and chance is not None]
    if len(judged) != len(group) or not judged:
        return {"chance": None, "at_chance": None}
    sides = []
    for side in ("reference", "candidate"):
        seed = stream_seed(settings.bootstrap_seed, series, task, target, ALL_SEEDS, "chance", side)
        per_seed = [(items.baseline if side == "reference" else items.candidate, chance) for items, chance in judged]
        sides.append(seeds_vs_chance(per_seed, settings.bootstrap_resamples, seed, settings.level))
    chance = float(np.mean([float(np.mean(chance)) for _, chance in judged]))
    return {"chance": chance, "at_chance": row_at_chance(*sides)}


def across_seeds(series: str, target: float, task: str, group: list[SeedRow], settings: CompareSettings) -> TaskRow:
    """The ALL_SEEDS row of one target and task: Δ is the mean of the per-seed differences; its CI the hierarchical
    bootstrap over seeds and then items (the item CIs of single seeds leave out the seed-to-seed variance), with the
    Student-t interval over the per-seed differences beside it (t_low/t_high/t_n). excludes_zero claims an effect
    only when both intervals exclude zero (stats.both_exclude_zero: with few seeds the bootstrap alone is too narrow).
    When a seed lacks item scores there is nothing to resample within it, and the t interval is the row's CI."""
    rows = [row for row, _, _ in group]
    t_est = seed_mean_ci(np.array([r["mean"] for r in rows]))
    seeds = [items for _, items, _ in group if items is not None]
    if len(seeds) == len(group):
        seed = stream_seed(settings.bootstrap_seed, series, task, target, ALL_SEEDS)
        est = hierarchical_bootstrap(seeds, resamples=settings.bootstrap_resamples, seed=seed, level=settings.level)
    else:
        est = replace(t_est, method="t over seeds (a seed lacks item scores)")
    return {
        "target": target,
        "seed": ALL_SEEDS,
        "series": series,
        "task": task,
        "metric": rows[0]["metric"],
        "higher_is_better": rows[0]["higher_is_better"],
        "reference": float(np.mean([r["reference"] for r in rows])),
        "candidate": float(np.mean([r["candidate"] for r in rows])),
        **est.to_dict(),
        "excludes_zero": both_exclude_zero(est, t_est),
        "t_low": t_est.low,
        "t_high": t_est.high,
        "t_n": t_est.n,
        **across_chance(series, target, task, group, settings),
    }


def _side_ood(side: Side) -> dict[str, float]:
    domains = set.intersection(*(set(c.ood_loss) for c in side.checkpoints))
    return {d: sum(w * c.ood_loss[d] for c, w in zip(side.checkpoints, side.weights, strict=True)) for d in domains}


OOD_SEED_METHOD = "t over seeds (OOD loss has no items to resample)"


def ood_rows(pairs: list[Pair]) -> list[OodRow]:
    """OOD loss per domain (in the comparison's unit), Δ per pair; over seeds mean with a t CI."""
    rows: list[OodRow] = []
    by_key: dict[tuple[str, float, str], list[OodRow]] = defaultdict(list)
    for p in pairs:
        a, n = _side_ood(p.reference), _side_ood(p.candidate)
        for domain in sorted(set(a) & set(n)):
            # One checkpoint pair: a difference without an interval (per-window losses are not stored).
            row: OodRow = {
                "target": p.target,
                "seed": p.seed,
                "series": p.series,
                "domain": domain,
                "reference": a[domain],
                "candidate": n[domain],
                "mean": n[domain] - a[domain],
                "low": None,
                "high": None,
                "n": 1,
                "unit": "pair",
                "method": "single pair",
                "excludes_zero": False,
            }
            rows.append(row)
            by_key[(p.series, p.target, domain)].append(row)
    several = several_seeds(pairs)
    for (series, target, domain), group in by_key.items():
        if series not in several:
            continue
        # OOD losses are one number per checkpoint: no items to resample, so the CI is the t interval over seeds.
        est = replace(seed_mean_ci(np.array([r["mean"] for r in group])), method=OOD_SEED_METHOD)
        a_mean = float(np.mean([r["reference"] for r in group]))
        n_mean = float(np.mean([r["candidate"] for r in group]))
        rows.append(
            {
                "target": target,
                "seed": ALL_SEEDS,
                "series": series,
                "domain": domain,
                "reference": a_mean,
                "candidate": n_mean,
            }
            | est.to_dict()
        )
    return rows


def geometry_rows(pairs: list[Pair], data_dir: Path) -> list[dict[str, Any]]:
    """Mean off-diagonal gradient cosine and per-source minima MSD of each side (nexus_eval.geometry, cached)."""
    from nexus_eval.geometry import geometry  # torch: only when geometry columns are asked for

    rows = []
    for p in pairs:
        row: dict[str, Any] = {"target": p.target, "seed": p.seed, "series": p.series}
        for name, side in p.sides():
            ckpt = side.checkpoints[int(np.argmax(side.weights))]  # interpolated: the nearer checkpoint
            g = geometry(ckpt.path, data_dir)
            row[f"{name}_grad_cos"] = g.get("grad_cos_mean_offdiag")
            row[f"{name}_minima_msd"] = g.get("minima_msd")
            # what measured it (None: a cache entry from before geometry results recorded their environment)
            row[f"{name}_measured_with"] = (g.get("environment") or {}).get("code")
        rows.append(row)
    return rows


def run_curves(runs: list[Run]) -> list[RunCurve]:
    """val_loss (and mean off-diagonal gradient cosine) vs tokens from each run's metrics.jsonl, for the plots."""
    curves: list[RunCurve] = []
    for run in sorted(runs, key=lambda r: r.run_id):
        points: list[CurvePoint] = []
        for row in read_metrics(run.path) if run.path.is_dir() else []:
            cos = (row.get("grad_cosine") or {}).get("mean_offdiag")
            points.append({"tokens": row.get("tokens"), "val_loss": row.get("val_loss"), "grad_cos": cos})
        curves.append({"run_id": run.run_id, "series": run.label, "seed": run.seed, "points": points})
    return curves


def metric_points(runs: list[Run], tasks: list[str], results: Results, metrics: dict[str, str]) -> list[MetricPoint]:
    """Every checkpoint of the runs with a result (matched or not): metric vs held-out loss, for the plots."""
    points: list[MetricPoint] = []
    for run in sorted(runs, key=lambda r: r.run_id):
        for c in run.checkpoints:
            for task in tasks:
                hit = results.get((c.path, task))
                if hit is None or task not in metrics or metrics[task] not in hit["metrics"]:
                    continue
                value = float(hit["metrics"][metrics[task]])
                point: MetricPoint = {
                    "series": c.series,
                    "seed": c.seed,
                    "run_id": c.run_id,
                    "checkpoint": c.label,
                    "loss": c.loss,
                    "task": task,
                    "metric": metrics[task],
                    "value": value,
                }
                points.append(point)
    return points


# ---- disagreements ----------------------------------------------------------------------------------------------


def disagreement_tasks(tasks: list[str], names: list[str], options: CompareOptions) -> list[str]:
    """The task names to list disagreements for: --task (given as a name or as one of the --tasks), else all."""
    if options.disagreement_task is None:
        return names
    if not options.disagreements:
        raise ComparisonError(f"--task {options.disagreement_task}: only with --disagreements")
    chosen = options.disagreement_task
    for given, name in zip(tasks, names, strict=True):
        if chosen in (given, name):
            return [name]
    raise ComparisonError(f"--task {chosen}: not among the compared tasks ({', '.join(names)})")


def write_all_disagreements(pairs: list[Pair], tasks: list[str], results: Results, options: CompareOptions) -> None:
    """out/disagreements.md (and leaderboards/NAME.disagreements.md), printed unless options.show is off."""
    found = find_disagreements(pairs, tasks, results, options.cache_dir)
    labels = list(dict.fromkeys(p.series for p in pairs))
    reference = pairs[0].reference.checkpoints[0].series if pairs else ""
    heading = f"Disagreements: {' and '.join(labels)} against {reference}"
    path = write_disagreements(found, options.out / "disagreements.md", heading)
    if options.leaderboard is not None:
        name = options.leaderboard
        preamble = (
            f"> Generated from the eval samples of the pairs in `{name}.json` by `nexus-eval compare --leaderboard "
            f"{name} --disagreements`; `nexus-eval leaderboard check` does not compare it with the JSON."
        )
        title = f"Leaderboard: {name} — disagreements"
        write_disagreements(found, disagreements_path(name, options.leaderboard_dir), title, preamble)
    if options.show:
        print_disagreements(found, path)


# ---- the entry point ------------------------------------------------------------------------------------------


def run_row(run: Run, tasks: list[str], results: Results) -> RunRow:
    row: RunRow = {
        "run_id": run.run_id,
        "series": run.label,
        "optimizer": run.optimizer,
        "seed": run.seed,
        "checkpoints": len(run.checkpoints),
        "external": run.external,
        "provenance": run_provenance(
            run, [results[(c.path, t)] for c in run.checkpoints for t in tasks if (c.path, t) in results]
        ),
    }
    if run.external:
        row["checks"] = run.info["checks"]
    return row


def noise_record(
    runs: list[Run],
    points: list[MetricPoint],
    settings: CompareSettings,
    loss: list[LossNoiseRow] | None = None,
    tolerance: ToleranceRecord | None = None,
) -> NoiseRecord:
    """The noise section (comparison.noise); `loss` and `tolerance` as measured before matching, when they were."""
    targets = list(settings.targets or ())
    loss = loss if loss is not None else loss_noise(runs, targets, settings.loss_unit)
    return {
        "loss": loss,
        "scores": score_noise(points, list(settings.tasks or ()), targets, list(settings.series), settings.tolerance),
        "score_method": score_method(settings.tolerance),
        "tolerance": tolerance or tolerance_record(loss, settings, settings.loss_unit),
    }


def curve_chance(curves: LossCurves, metrics: dict[str, str], choices: Choices) -> None:
    """Mark each task curve point with the task's chance level (over all its items: a curve point is a whole-task
    score) and whether both sides' means lie within a guesser's range (chance.curve_at_chance), in place."""
    for delta in curves["deltas"]:
        if delta["kind"] != TASK_CURVE:
            continue
        known = choices.get(delta["name"])
        chance = task_chance(known) if known and has_chance(metrics.get(delta["name"], "")) else None
        delta["chance"] = None if chance is None else float(chance.mean())
        delta["at_chance"] = curve_at_chance(delta["reference"], delta["candidate"], chance)


def build_results(
    runs: list[Run],
    pairs: list[Pair],
    unmatched: list[Unmatched],
    results: Results,
    settings: CompareSettings,
    geometry: list[dict[str, Any]] | None = None,
    loss_noise_rows: list[LossNoiseRow] | None = None,
    tolerance: ToleranceRecord | None = None,
    choices: Choices | None = None,
) -> CompareResults:
    """The results JSON; `settings` as resolved by the comparison (their tasks are the result's task names);
    loss_noise_rows / tolerance: the noise measured before matching (else measured here); choices: each task's
    choice counts (choice_counts), for the chance check (without them no row is judged)."""
    tasks = list(settings.tasks or ())
    rows, overlap = task_rows(pairs, tasks, results, settings, choices)
    metrics = {r["task"]: r["metric"] for r in rows}
    points = metric_points(runs, tasks, results, metrics)
    higher = {r["task"]: r["higher_is_better"] for r in rows}
    curves = loss_curves(
        tasks, points, ood_points(runs), settings.series, higher, settings.curve_points, settings.curve_losses
    )
    curve_chance(curves, metrics, choices or {})
    order = {label: i for i, label in enumerate(settings.series)}
    run_rows = [run_row(r, tasks, results) for r in sorted(runs, key=lambda r: (order.get(r.label, 0), r.run_id))]
    pair_rows: list[PairRow] = [
        {
            "target": p.target,
            "seed": p.seed,
            "series": p.series,
            "reference": p.reference.summary(),
            "candidate": p.candidate.summary(),
            "delta_loss": p.delta_loss,
        }
        for p in pairs
    ]
    unmatched_rows: list[UnmatchedRow] = [
        {"target": u.target, "seed": u.seed, "series": u.series, "reason": u.reason} for u in unmatched
    ]
    report: CompareResults = {
        "schema": COMPARE_RESULTS_SCHEMA,
        "kind": COMPARE_RESULTS_KIND,
        "settings": settings.to_record(),
        "runs": run_rows,
        "pairs": pair_rows,
        "unmatched": unmatched_rows,
        "tasks": rows,
        "overlap": overlap,
        "ood": ood_rows(pairs),
        "geometry": geometry or [],
        "points": points,
        "curves": run_curves(runs),
        "noise": noise_record(runs, points, settings, loss_noise_rows, tolerance),
        "loss_curves": curves,
        "geometry_seeds": geometry_over_seeds(geometry or []),
    }
    return finite_json(report)


def compare(
    series: list[str] | list[Path],
    settings: CompareSettings,
    options: CompareOptions = CompareOptions(),
    series_files: list[Path] | None = None,
) -> CompareResults:
    """Match, evaluate what is missing, compute paired statistics, write out/{results.json,report.md,*.png}
    (and leaderboards/<leaderboard>.{json,md,png}; with options.disagreements also out/disagreements.md and
    leaderboards/<leaderboard>.disagreements.md); returns the results dict.

    series: `[LABEL=]PATH` specs (run directories, a directory of runs, HF checkpoint directories, GGUF files);
    series_files: TOML series files. Held-out losses the runs do not record are measured on options.data_dir."""
    if options.leaderboard is not None:
        check_name(options.leaderboard)  # before any evaluation: a bad name should not cost a run
    options.check()
    found = compared_runs(
        [str(s) for s in series],
        list(series_files or []),
        options.data_dir,
        settings.reference,
        settings.loss_unit,
        options.loss_cache_dir,
        options.progress,
    )
    runs = found.runs
    # Fairness guards for the harness's own runs, before any evaluation: unfair pairs cost nothing. External series
    # record no recipe or data: the report says what could be checked about them instead.
    allowed = check_runs([r for r in runs if not r.external], settings.allow_mismatch)
    sweep = read_lr_sweep(options.lr_sweep) if options.lr_sweep is not None else None
    if sweep is not None:
        check_chosen_lrs(runs, sweep)
    warn_mismatches(allowed)
    reference = found.reference
    # The noise of held-out loss comes from the runs alone, before matching: `--tolerance auto` is derived from it.
    targets = chosen_targets(seed_groups(runs, reference), settings.targets)
    loss_rows = loss_noise(runs, targets, found.unit)
    tolerance = tolerance_record(loss_rows, settings, found.unit)
    if settings.tolerance_auto:
        settings = replace(settings, tolerance=float(tolerance["value"] or 0.0))
        if options.show:
            console().print(tolerance["derivation"])
    pairs, unmatched = match(
        runs,
        settings.tolerance,
        list(settings.targets) if settings.targets else None,
        settings.interpolate,
        reference,
        found.unit,
    )
    tasks = requested_tasks(settings.suite, settings.tasks)
    names = [task_name(t) for t in tasks]
    listed = disagreement_tasks(tasks, names, options)  # a bad --task should not cost an evaluation either
    results = gather_results(runs, pairs, tasks, names, settings, options)
    labels = [reference] + [label for label in series_labels(runs) if label != reference]
    used = settings.resolved(
        targets=[p.target for p in pairs] + [u.target for u in unmatched],
        tasks=names,
        series=labels,
        loss_unit=found.unit,
    )
    geometry = geometry_rows(pairs, options.geometry_data_dir) if options.geometry_data_dir is not None else None
    choices = choice_counts(pairs, names, results, options.cache_dir)
    report = build_results(runs, pairs, unmatched, results, used, geometry, loss_rows, tolerance, choices)
    report["allowed_mismatches"] = [m.record() for m in allowed]
    if sweep is not None:
        report["lr_sweep"] = sweep
    options.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(options.out / "results.json", report)
    write_report(report, options.out)
    if options.leaderboard is not None:
        write_leaderboard(report, options.leaderboard, options.leaderboard_dir)
    if options.show:
        print_report(report, options.out)
    if options.disagreements:
        write_all_disagreements(pairs, listed, results, options)
    return report
