"""Tables of a compare results dict: pandas DataFrames → Markdown (file) and rich (terminal).

Formatting is fixed (4 decimals, signed differences, no timestamps), so the same results give the same Markdown byte
for byte: leaderboards are checked against their JSON that way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from rich.table import Table

from nexus_eval.comparison.chance import RULE as CHANCE_RULE
from nexus_eval.comparison.curves import OOD, TASK
from nexus_eval.comparison.geometry_seeds import MEASURES
from nexus_eval.comparison.lr_sweep import lr_sweep_frame, lr_sweep_note
from nexus_eval.comparison.plots import CURVES_FIGURE, write_figures
from nexus_eval.comparison.provenance import differing_fields
from nexus_eval.comparison.series import UNIT_NAMES
from nexus_eval.comparison.stats import HIERARCHICAL_UNIT
from nexus_eval.display import console
from nexus_eval.io import write_text_atomic
from nexus_eval.optimizer_registry import BASELINE, CANDIDATE, REGISTRY
from nexus_eval.schema import (
    CompareResults,
    CurveDelta,
    Environment,
    EvalSettingsProvenance,
    OodRow,
    RunRow,
    SeedBand,
    TaskRow,
)

ALL_SEEDS = "all"
CONDITIONAL = "conditional on the training seed (item bootstrap; does not include seed-to-seed variance)"
AT_CHANCE = "at chance"  # in place of yes/no in a "CI excludes 0" cell: a Δ between two guessers is no finding
ONE_SEED_EXCLUDES = "items CI excludes 0"  # the one-seed header: the interval is over items, not training seeds
ONE_SEED_CAVEAT = (
    "**One training seed per side:** this CI is over evaluation items only and leaves out seed-to-seed variation, so "
    "a CI that excludes 0 says these two checkpoints differ on these items, not that the optimizer causes the "
    "difference. That needs ≥ 2 training seeds per side, compared across seeds."
)


def num(x: Any, digits: int = 4) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def signed(x: Any, digits: int = 4) -> str:
    return "—" if x is None else f"{x:+.{digits}f}"


def interval(low: Any, high: Any) -> str:
    return "—" if low is None or high is None else f"[{low:+.4f}, {high:+.4f}]"


def span(low: Any, high: Any, digits: int = 4) -> str:
    """An interval of values (not of differences): unsigned."""
    return "—" if low is None or high is None else f"[{low:.{digits}f}, {high:.{digits}f}]"


def band_cell(band: SeedBand, digits: int = 4) -> str:
    """A mean over seeds and its t interval in one cell: `0.4120 [0.3900, 0.4340]`."""
    if band.get("mean") is None:
        return "—"
    shown = num(band["mean"], digits)
    return shown if band.get("low") is None else f"{shown} {span(band['low'], band['high'], digits)}"


def band_excludes(band: SeedBand) -> str:
    low, high = band.get("low"), band.get("high")
    return "—" if low is None or high is None else ("yes" if low > 0 or high < 0 else "no")


def ci(row: TaskRow | OodRow) -> str:
    return interval(row.get("low"), row.get("high"))


def hierarchical_ci(row: TaskRow) -> str:
    return ci(row) if row.get("unit") == HIERARCHICAL_UNIT else "—"


def t_ci(row: TaskRow) -> str:
    """The t interval over seeds: beside the hierarchical CI, or the row's own CI (results written before the
    hierarchical bootstrap, or a seed without item scores)."""
    if "t_low" in row:
        return interval(row.get("t_low"), row.get("t_high"))
    return ci(row) if row.get("unit") == "seeds" else "—"


def seeds_n(row: TaskRow) -> str:
    seeds = f"{row.get('t_n', row['n'])} seeds"
    return f"{seeds}, {row['items']} items" if row.get("items") else seeds


def excludes(row: TaskRow | OodRow) -> str:
    if row.get("at_chance"):
        return AT_CHANCE
    if row.get("low") is None:
        return "—"
    return "yes" if row.get("excludes_zero") else "no"


def chance_recorded(results: CompareResults) -> bool:
    """Whether the results were written with the chance check (older ones lack the field on every task row)."""
    return any("chance" in r for r in results["tasks"])


def chance_note(results: CompareResults) -> str:
    if chance_recorded(results):
        known = " Column chance: 1/number of choices, mean over the row's items (—: no chance level or unknown)."
        return f"{known} {CHANCE_RULE}"
    return " Chance level: not recorded in these results (written before the chance check), so no row is flagged."


def target(x: float) -> str:
    return f"{x:g}"


EXTERNAL_MARK = " †"


@dataclass(frozen=True)
class Names:
    """The two series one group of tables compares, as the tables name them (an external series marked †)."""

    series: str  # the candidate's label: the rows of this group
    reference: str
    candidate: str


def _external(results: CompareResults) -> set[str]:
    return {r["series"] for r in results["runs"] if r.get("external")}


def display_name(results: CompareResults, label: str) -> str:
    """The harness's own series (labelled by their optimizer) by their registered display name, any other label as
    it is; an external series marked †."""
    return REGISTRY.display_name(label) + (EXTERNAL_MARK if label in _external(results) else "")


def candidates(results: CompareResults) -> list[Names]:
    """Every series compared with the reference, in order, with the names its tables use."""
    settings = results["settings"]
    reference = display_name(results, settings["reference"])
    return [Names(label, reference, display_name(results, label)) for label in settings["series"][1:]]


def _of(rows: list[Any], names: Names) -> list[Any]:
    return [r for r in rows if r.get("series") == names.series]


def pairs_frame(results: CompareResults, names: Names) -> pd.DataFrame:
    rows = [
        {
            "target loss": target(p["target"]),
            "seed": p["seed"],
            f"{names.reference} checkpoint": p["reference"]["checkpoint"],
            f"{names.reference} loss": num(p["reference"]["loss"]),
            f"{names.candidate} checkpoint": p["candidate"]["checkpoint"],
            f"{names.candidate} loss": num(p["candidate"]["loss"]),
            "Δloss": signed(p["delta_loss"]),
        }
        for p in _of(results["pairs"], names)
    ]
    return pd.DataFrame(rows)


def pair_losses(results: CompareResults, names: Names) -> dict[tuple[float, str], tuple[float, float]]:
    """(target, seed) → the reference's and the candidate's held-out loss of the pair a row at that target was
    measured on; under ALL_SEEDS the means over the seeds' pairs. A row then shows where its two sides stand, not
    only the target they are reported under."""
    found: dict[tuple[float, str], tuple[float, float]] = {}
    by_target: dict[float, list[tuple[float, float]]] = {}
    for p in _of(results["pairs"], names):
        losses = (float(p["reference"]["loss"]), float(p["candidate"]["loss"]))
        found[(p["target"], p["seed"])] = losses
        by_target.setdefault(p["target"], []).append(losses)
    for target, pairs in by_target.items():
        found[(target, ALL_SEEDS)] = (sum(a for a, _ in pairs) / len(pairs), sum(n for _, n in pairs) / len(pairs))
    return found


def _loss_columns(
    row: TaskRow | OodRow, names: Names, losses: dict[tuple[float, str], tuple[float, float]]
) -> dict[str, str]:
    reference, candidate = losses.get((row["target"], row["seed"]), (None, None))
    return {f"{names.reference} loss": num(reference), f"{names.candidate} loss": num(candidate)}


def _delta_columns(row: TaskRow | OodRow, names: Names, excludes_header: str = "CI excludes 0") -> dict[str, str]:
    return {
        names.reference: num(row["reference"]),
        names.candidate: num(row["candidate"]),
        f"Δ ({names.candidate} − {names.reference})": signed(row["mean"]),
        "95% CI": ci(row),
        "n": f"{row['n']} {row['unit']}",
        excludes_header: excludes(row),
    }


def _task_columns(row: TaskRow, with_chance: bool) -> dict[str, str]:
    columns = {
        "task": row["task"],
        "metric": row["metric"] + ("" if row["higher_is_better"] else " (↓ better)"),
    }
    if with_chance:  # results written before the chance check have no column rather than one of dashes
        columns["chance"] = num(row.get("chance"))
    return columns


def several_seeds(results: CompareResults, names: Names) -> bool:
    """Whether this series was compared over two or more training seeds (it then has across-seed rows)."""
    return any(r["seed"] == ALL_SEEDS for r in _of(results["tasks"], names))


def headline_frame(results: CompareResults, names: Names) -> pd.DataFrame:
    """The across-seed rows: Δ with its hierarchical (seeds × items) CI and the t interval over seeds, beside the
    target the mean held-out loss of each side's pairs over the seeds."""
    losses = pair_losses(results, names)
    rows = [
        {
            "target loss": target(r["target"]),
            **_loss_columns(r, names, losses),
            **_task_columns(r, chance_recorded(results)),
            names.reference: num(r["reference"]),
            names.candidate: num(r["candidate"]),
            f"Δ ({names.candidate} − {names.reference})": signed(r["mean"]),
            "95% CI, seeds × items": hierarchical_ci(r),
            "95% CI, t over seeds": t_ci(r),
            "n": seeds_n(r),
            "both CIs exclude 0": excludes(r),
        }
        for r in _of(results["tasks"], names)
        if r["seed"] == ALL_SEEDS
    ]
    return pd.DataFrame(rows)


def tasks_frame(results: CompareResults, names: Names) -> pd.DataFrame:
    """The per-seed rows: paired item bootstrap, conditional on each training seed, beside the target each side's
    own held-out loss in the pair. With one seed the last column says its interval is over items only."""
    losses = pair_losses(results, names)
    header = "CI excludes 0" if several_seeds(results, names) else ONE_SEED_EXCLUDES
    rows = [
        {
            "target loss": target(r["target"]),
            "seed": r["seed"],
            **_loss_columns(r, names, losses),
            **_task_columns(r, chance_recorded(results)),
            **_delta_columns(r, names, header),
        }
        for r in _of(results["tasks"], names)
        if r["seed"] != ALL_SEEDS
    ]
    return pd.DataFrame(rows)


def overlap_frame(results: CompareResults, names: Names) -> pd.DataFrame:
    ref, cand = names.reference, names.candidate
    flagged = {(t["target"], t["seed"], t["task"]) for t in _of(results["tasks"], names) if t.get("at_chance")}
    rows = [
        {
            "target loss": target(r["target"]),
            "seed": r["seed"],
            # Items two guessers happen to solve are noise, whatever their overlap: the row says so.
            "task": r["task"] + (f" ({AT_CHANCE})" if (r["target"], r["seed"], r["task"]) in flagged else ""),
            f"{ref} solves": r["baseline_solved"],
            f"{cand} keeps (of those)": "—" if r["kept"] is None else f"{r['kept']:.1%}",
            f"only {ref}": r["only_baseline"],
            f"only {cand}": r["only_candidate"],
            f"{cand} solves": r["candidate_solved"],
            "items": r["n"],
        }
        for r in _of(results["overlap"], names)
    ]
    return pd.DataFrame(rows)


def ood_frame(results: CompareResults, names: Names, seeds: str) -> pd.DataFrame:
    keep = [r for r in _of(results["ood"], names) if (r["seed"] == ALL_SEEDS) == (seeds == ALL_SEEDS)]
    rows = [
        {"target loss": target(r["target"]), "seed": r["seed"], "domain": r["domain"], **_delta_columns(r, names)}
        for r in keep
    ]
    return pd.DataFrame(rows)


def geometry_frame(results: CompareResults, names: Names) -> pd.DataFrame:
    ref, cand = names.reference, names.candidate
    rows = [
        {
            "target loss": target(r["target"]),
            "seed": r["seed"],
            f"{ref} grad cos": num(r.get("reference_grad_cos")),
            f"{cand} grad cos": num(r.get("candidate_grad_cos")),
            f"{ref} minima MSD": num(r.get("reference_minima_msd"), 6),
            f"{cand} minima MSD": num(r.get("candidate_minima_msd"), 6),
        }
        for r in _of(results.get("geometry", []), names)
    ]
    return pd.DataFrame(rows)


def geometry_seeds_frame(results: CompareResults, names: Names) -> pd.DataFrame:
    """Each geometry measure at each target: both sides' mean over seeds [t CI] and their per-seed difference."""
    rows = []
    for r in _of(results.get("geometry_seeds") or [], names):
        digits = 6 if r["measure"] == "minima_msd" else 4
        rows.append(
            {
                "target loss": target(r["target"]),
                "measure": MEASURES.get(r["measure"], r["measure"]),
                names.reference: band_cell(r["reference"], digits),
                names.candidate: band_cell(r["candidate"], digits),
                f"Δ ({names.candidate} − {names.reference})": signed(r["delta"]["mean"], digits),
                "Δ 95% CI, t over seeds": interval(r["delta"]["low"], r["delta"]["high"]),
                "n": f"{r['delta']['n']} seeds",
                "CI excludes 0": band_excludes(r["delta"]),
            }
        )
    return pd.DataFrame(rows)


def curve_metric(row: CurveDelta, unit: str) -> str:
    if row["kind"] == OOD:
        return f"OOD loss, {unit} (↓ better)"
    return row["metric"] + ("" if row["higher_is_better"] else " (↓ better)")


def curves_frame(results: CompareResults, names: Names, kind: str) -> pd.DataFrame:
    """At every grid loss of every task (or OOD domain): both series' mean [t CI] over seeds and Δ per seed."""
    curves = results.get("loss_curves") or {}
    unit = UNIT_NAMES[results["settings"].get("loss_unit", "nats")]
    found = [r for r in _of(curves.get("deltas") or [], names) if r["kind"] == kind]
    with_chance = any("chance" in r for r in found)
    rows = [
        {
            "task" if kind == TASK else "OOD domain": r["name"],
            "metric": curve_metric(r, unit),
            **({"chance": num(r.get("chance"))} if with_chance else {}),
            "held-out loss": num(r["loss"]),
            names.reference: band_cell(r["reference"]),
            names.candidate: band_cell(r["candidate"]),
            f"Δ ({names.candidate} − {names.reference})": signed(r["delta"]["mean"]),
            "Δ 95% CI, t over seeds": interval(r["delta"]["low"], r["delta"]["high"]),
            "n": f"{r['delta']['n']} seeds",
            "CI excludes 0": AT_CHANCE if r.get("at_chance") else band_excludes(r["delta"]),
        }
        for r in found
    ]
    return pd.DataFrame(rows)


CURVES_HEADINGS = ("Downstream vs held-out loss (curves)", "OOD loss vs held-out loss (curves)")


def curves_note(results: CompareResults, kind: str) -> str:
    method = (results.get("loss_curves") or {}).get("method", "")
    what = (
        "Each task's score against held-out loss, over every evaluated checkpoint of every seed."
        if kind == TASK
        else "Each OOD domain's loss against held-out loss, over every checkpoint of every seed."
    )
    chance = (
        " chance: 1/number of choices, mean over the task's items. At chance: both sides' mean score lies within "
        "the 95% range of a uniform guesser's accuracy on those items (chance ± 1.96·√(Σ c(1 − c))/n); the Δ of "
        "such a point is no finding."
        if kind == TASK and any("chance" in r for r in (results.get("loss_curves") or {}).get("deltas") or [])
        else ""
    )
    return f"{what} {method} Cells: mean over seeds [95% t CI].{chance}"


def headline_note(resamples: int) -> str:
    return (
        "Δ: mean over training seeds of each seed's paired item difference. 95% CI, seeds × items (the headline): "
        f"hierarchical bootstrap, {resamples} resamples of the seeds with replacement and, within each drawn seed, "
        "of its items, so it includes the seed-to-seed variance. 95% CI, t over seeds: Student t over the per-seed "
        "Δ (n − 1 degrees of freedom). An effect is claimed only where both exclude 0: with a handful of seeds the "
        "bootstrap over seeds alone is too narrow. Where the seeds × items CI is absent (a seed without item scores, "
        "or results written before it), the t interval decides."
    )


def measured_by_harness(results: CompareResults) -> bool:
    """Whether the losses were measured by the comparison (external series or bits per byte), not read from the
    trainer's nexus.json."""
    return bool(_external(results)) or results["settings"].get("loss_unit", "nats") != "nats"


def pair_note(results: CompareResults) -> str:
    settings = results["settings"]
    if settings["mode"] == "interpolate":
        return (
            "Both sides interpolated linearly in held-out loss between the checkpoints around each run's first "
            "crossing."
        )
    unit = UNIT_NAMES[settings.get("loss_unit", "nats")]
    auto = (
        " The tolerance is half the smallest seed SD of held-out loss (`--tolerance auto`, see Noise)."
        if settings.get("tolerance_auto")
        else ""
    )
    if not measured_by_harness(results):
        return (
            f"Pairs differ by at most {settings['tolerance']:g} {unit} in held-out mixture loss "
            f"(measured by the harness, nexus.json heldout_loss).{auto}"
        )
    return (
        f"Pairs differ by at most {settings['tolerance']:g} {unit} in held-out loss, measured by the harness on the "
        f"same held-out data for every series.{auto}"
    )


def ood_note(results: CompareResults) -> str:
    unit = UNIT_NAMES[results["settings"].get("loss_unit", "nats")]
    if not measured_by_harness(results):
        return f"Loss in {unit} on held-out domains never trained on (each checkpoint's nexus.json)"
    return f"Loss in {unit} on held-out domains never trained on (measured by the harness)"


def series_sections(results: CompareResults, names: Names, prefix: str) -> list[tuple[str, pd.DataFrame, str]]:
    """The tables of one series against the reference, in report order (headings start with `prefix`)."""
    several = several_seeds(results, names)
    resamples = results["settings"]["bootstrap_resamples"]
    per_seed_note = f"95% CI: paired bootstrap over items, {resamples} resamples; {CONDITIONAL}."
    out = [("Loss-matched pairs", pairs_frame(results, names), pair_note(results))]
    if several:
        headline = headline_note(resamples) + chance_note(results)
        out.append(("Downstream across seeds (headline)", headline_frame(results, names), headline))
        heading = "Downstream per seed, conditional on the training seed"
        per_seed_note += " The effect across seeds is the table above."
        if chance_recorded(results):
            per_seed_note += f" “{AT_CHANCE}”: as above, with this seed's item bootstrap."
    else:
        heading = "Downstream, conditional on the training seed"
        per_seed_note += f" {ONE_SEED_CAVEAT}" + chance_note(results)
    out.append((heading, tasks_frame(results, names), per_seed_note))
    overlap_note = (
        f"Of the items {names.reference} solves, the share {names.candidate} also solves; items only one of them "
        f"solves. ({AT_CHANCE}): the task's Downstream row is at chance, so its overlap is that of two guessers."
        if chance_recorded(results)
        else f"Of the items {names.reference} solves, the share {names.candidate} also solves; items only one of "
        "them solves."
    )
    out.append(("Solved-item overlap", overlap_frame(results, names), overlap_note))
    note = ood_note(results)
    if several:
        ood_ci = "; 95% CI: Student t over seeds (one loss per checkpoint: no items to resample, so no item bootstrap)."
        out.append(("Out-of-distribution loss, mean over seeds", ood_frame(results, names, ALL_SEEDS), note + ood_ci))
        out.append(("Out-of-distribution loss, per seed", ood_frame(results, names, "per-seed"), note + "."))
    else:
        out.append(("Out-of-distribution loss", ood_frame(results, names, "per-seed"), note + "; one seed: no CI."))
    for kind, heading in zip((TASK, OOD), CURVES_HEADINGS, strict=True):
        out.append((heading, curves_frame(results, names, kind), curves_note(results, kind)))
    seeds_note = (
        "At the matched pairs: mean over seeds [95% t CI] of each side's mean off-diagonal gradient cosine across "
        "sources and per-source minima MSD; Δ per seed, then mean and t interval over seeds."
    )
    out.append(("Geometry across seeds", geometry_seeds_frame(results, names), seeds_note))
    geometry_note = "Mean off-diagonal gradient cosine; per-source minima MSD."
    out.append(("Geometry", geometry_frame(results, names), geometry_note))
    return [(prefix + h, t, n) for h, t, n in out if not t.empty or h == "Loss-matched pairs"]


def loss_noise_frame(results: CompareResults) -> pd.DataFrame:
    rows = [
        {
            "series": display_name(results, r["series"]),
            "at": f"target {target(r['target'])}" if r["at"] == "target" else "final",
            "step": "—" if r["step"] is None else str(r["step"]),
            "mean held-out loss": num(r["mean"]),
            "seed SD": num(r["sd"]),
            "n": f"{r['n']} seeds",
            "from": r["source"],
        }
        for r in results["noise"]["loss"]
    ]
    return pd.DataFrame(rows)


def score_noise_frame(results: CompareResults) -> pd.DataFrame:
    rows = [
        {
            "series": display_name(results, r["series"]),
            "target loss": target(r["target"]),
            "task": r["task"],
            "metric": r["metric"],
            "mean": num(r["mean"]),
            "seed SD": num(r["sd"]),
            "n": f"{r['n']} seeds",
            "read": f"{r['interpolated']} interpolated, {r['nearest']} nearest",
        }
        for r in results["noise"]["scores"]
    ]
    return pd.DataFrame(rows)


def noise_sections(results: CompareResults) -> list[tuple[str, pd.DataFrame, str]]:
    """The seed-to-seed SDs of held-out loss and of task scores, and how the tolerance was chosen; none for results
    written before them."""
    noise = results.get("noise")
    if not noise:
        return []
    unit = UNIT_NAMES[results["settings"].get("loss_unit", "nats")]
    loss_note = (
        f"Sample SD over training seeds (n − 1) of held-out loss ({unit}) at one eval step every seed of the series "
        "logged: the first where their mean reaches the target, and the last. Matching tolerance: "
        f"{noise['tolerance']['derivation']}"
    )
    score_note = f"Sample SD over training seeds of each task's score at the target loss. {noise['score_method']}"
    found = [
        ("Noise: held-out loss across seeds at fixed steps", loss_noise_frame(results), loss_note),
        ("Noise: task scores across seeds at fixed losses", score_noise_frame(results), score_note),
    ]
    return [(h, t, n) for h, t, n in found if not t.empty or h.startswith("Noise: held-out")]


def sections(results: CompareResults) -> list[tuple[Names, list[tuple[str, pd.DataFrame, str]]]]:
    """Per series compared with the reference: (its names, [(heading, table, note under it)] in report order). Empty
    tables are left out, except the pairs table, which the series' unmatched targets follow."""
    groups = candidates(results)
    return [
        (names, series_sections(results, names, f"{names.candidate} vs {names.reference}: " if len(groups) > 1 else ""))
        for names in groups
    ]


def external_lines(results: CompareResults) -> list[str]:
    """For each series not trained by this harness: what the harness checked, and what it could not."""
    rows = [r for r in results["runs"] if r.get("external") and r.get("checks")]
    if not rows:
        return []
    lines = [
        "## External series",
        "",
        f"Series marked{EXTERNAL_MARK} were not trained by this harness. Their held-out loss was measured by the "
        "harness on the same held-out data as every other series; the fairness guards on recipe and data that "
        "hold between the harness's own runs cannot apply to them.",
        "",
    ]
    for r in rows:
        c = r["checks"]
        params = f"{c['parameters']:,}" if c.get("parameters") else "unknown"
        lines.append(
            f"- `{r['series']}` ({c['origin']}, {r['checkpoints']} checkpoints): checked: tokenizer "
            f"{c['tokenizer']}, {params} parameters, architecture {c.get('architecture') or 'unknown'}, context "
            f"{c.get('context') or 'unknown'}; not checked: {', '.join(c['not_checked'])}."
        )
    return [*lines, ""]


def to_markdown(frame: pd.DataFrame) -> str:
    # Numbers are pre-formatted strings: no re-parsing, so alignment and digits never depend on the values.
    return frame.to_markdown(index=False, disable_numparse=True)


def short(value: Any, length: int = 8) -> str:
    return "—" if not value else str(value)[:length]


def environment_label(env: Environment | None) -> str:
    """CPU (instruction set, threads) or GPU × count, and the torch version: what moves float results most."""
    if not env:
        return "—"
    device = env.get("device") or {}
    where = (
        f"{device.get('gpu')} × {device.get('gpu_count')}"
        if device.get("gpu")
        else f"{device.get('cpu')} ({device.get('cpu_capability')}, {device.get('threads')} threads)"
    )
    world = f", world size {env.get('world_size')}" if env.get("world_size", 1) != 1 else ""
    return f"{where}{world}; torch {(env.get('libraries') or {}).get('torch')}"


def evaluation_label(entries: list[EvalSettingsProvenance]) -> str:
    if not entries:
        return "—"
    labels = []
    for e in entries:
        libs = (e.get("environment") or {}).get("libraries") or {}
        versions = f"lm_eval {libs.get('lm_eval')}, transformers {libs.get('transformers')}"
        if e["backend"] == "vllm":
            versions += f", vllm {libs.get('vllm')}"
        labels.append(f"{e.get('backend')} {e.get('dtype')} batch {e.get('batch_size')}, {versions}")
    return "; ".join(labels)


def provenance_frame(rows: list[RunRow]) -> pd.DataFrame:
    records = []
    for r in rows:
        p = r["provenance"]
        records.append(
            {
                "run": r["run_id"],
                "code": p.get("code_version") or "—",
                "data": short(p.get("data_hash")),
                "recipe": short(p.get("recipe_hash")),
                "tokenizer": short(p.get("tokenizer_hash")),
                "trained on": environment_label(p.get("training")),
                "evaluated with": evaluation_label(p.get("evaluation") or []),
            }
        )
    return pd.DataFrame(records)


def provenance_lines(results: CompareResults) -> list[str]:
    """The footer: one row per run, then the fields whose values differ between runs (each a warning)."""
    rows = [r for r in results["runs"] if "provenance" in r and not r.get("external")]  # external: external_lines
    lines = ["## Provenance", ""]
    if not rows:
        return [*lines, "No provenance recorded (results written before schema 2).", ""]
    lines += ["Hashes shortened to 8 characters; the full record of each run is in the JSON.", ""]
    lines += [to_markdown(provenance_frame(rows)), ""]
    differing = differing_fields(rows)
    if not differing:
        return [*lines, "All runs share data, recipe, tokenizer, code, libraries and device.", ""]
    lines += ["**Provenance differs between runs** (a difference here can move the numbers above):", ""]
    for field, values in differing.items():
        shown = "; ".join(f"{run}: {short(json.dumps(v, sort_keys=True), 60)}" for run, v in values.items())
        lines.append(f"- `{field}`: {shown}")
    return [*lines, ""]


def mismatch_value(value: Any) -> str:
    return "unrecorded" if value is None else json.dumps(value, sort_keys=True)


def mismatch_warning(results: CompareResults) -> list[str]:
    """A warning block listing the differences between runs that --allow-mismatch let through (none: no lines)."""
    allowed = results.get("allowed_mismatches") or []
    if not allowed:
        return []
    lines = [
        "> **Warning: these runs were not trained alike.** They differ in the fields below, and were paired anyway "
        "(`--allow-mismatch`): differences in the results may come from these, not only from the optimizer.",
        ">",
    ]
    for m in allowed:
        (a, b), (va, vb) = m["runs"], m["values"]
        lines.append(f"> - `{m['field']}`: `{a}` {mismatch_value(va)} vs `{b}` {mismatch_value(vb)}")
    return lines + [""]


def plain_optimizer_comparison(results: CompareResults) -> bool:
    """AdamW against Nexus, the harness's runs only, in nats/token: the report as it read before series."""
    s = results["settings"]
    return s["series"] == [BASELINE, CANDIDATE] and not measured_by_harness(results)


def series_line(results: CompareResults) -> str:
    s = results["settings"]
    others = ", ".join(f"`{label}`" for label in s["series"][1:])
    unit = UNIT_NAMES[s.get("loss_unit", "nats")]
    why = (
        "every series has the data build's tokenizer"
        if s.get("loss_unit", "nats") == "nats"
        else "bits per byte on the same held-out bytes, comparable across tokenizers"
    )
    return f"Series: {others} against the reference `{s['reference']}`. Held-out loss in {unit} ({why})."


def render_markdown(
    results: CompareResults,
    title: str,
    preamble: str = "",
    figures: list[tuple[str, str]] | None = None,
    curves_figure: str | None = None,
) -> str:
    """The report; `figures` (caption, file) are linked at the end, `curves_figure` under the first curves table
    (at the end when there is none)."""
    s = results["settings"]
    what = f"suite `{s['suite']}`" if s.get("suite") else "tasks " + ", ".join(f"`{t}`" for t in s["tasks"])
    limit = f", limit {s['limit']}" if s.get("limit") is not None else ""
    shots = f", {s['num_fewshot']}-shot" if s.get("num_fewshot") is not None else ""
    runs = ", ".join(f"`{r['run_id']}`" for r in results["runs"])
    lines = [f"# {title}", ""]
    if preamble:
        lines += [preamble, ""]
    lines += [f"Runs: {runs}. Evaluated: {what}, backend `{s['backend']}`{limit}{shots}. Mode: {s['mode']}.", ""]
    if not plain_optimizer_comparison(results):
        lines += [series_line(results), ""]
    lines += mismatch_warning(results)
    if (sweep := results.get("lr_sweep")) is not None:
        lines += ["## Learning rates", "", lr_sweep_note(sweep), "", to_markdown(lr_sweep_frame(sweep)), ""]
    figures = list(figures or [])
    for names, found in sections(results):
        for heading, frame, note in found:
            table = to_markdown(frame) if not frame.empty else "No loss-matched pair."
            lines += [f"## {heading}", "", note, "", table, ""]
            if curves_figure and heading.endswith(CURVES_HEADINGS):
                lines += [f"![{CURVES_CAPTION}]({curves_figure})", ""]
                curves_figure = None
            unmatched = _of(results["unmatched"], names)
            if heading.endswith("Loss-matched pairs") and unmatched:
                lines += ["Targets without a pair:", ""]
                lines += [f"- {target(u['target'])} (seed {u['seed']}): {u['reason']}" for u in unmatched]
                lines += [""]
    for heading, frame, note in noise_sections(results):
        lines += [f"## {heading}", "", note, "", to_markdown(frame) if not frame.empty else "No series.", ""]
    if curves_figure:
        figures.append((CURVES_CAPTION, curves_figure))
    for caption, name in figures:
        lines += [f"![{caption}]({name})", ""]
    lines += external_lines(results)
    lines += provenance_lines(results)
    return "\n".join(lines).rstrip("\n") + "\n"


CURVES_CAPTION = "score and OOD loss vs held-out loss: mean and 95% t band over seeds"
FIGURE_CAPTIONS = {
    "metric_vs_loss.png": "downstream metric vs held-out loss",
    "training_loss.png": "training curves",
    "grad_cosine.png": "gradient cosine vs held-out loss",
}


def write_report(results: CompareResults, out: Path) -> Path:
    """out/report.md plus the PNG figures it links."""
    names = write_figures(results, out)
    figures = [(FIGURE_CAPTIONS[n], n) for n in names if n != CURVES_FIGURE]
    curves = CURVES_FIGURE if CURVES_FIGURE in names else None
    path = out / "report.md"
    title = " vs ".join(display_name(results, label) for label in results["settings"]["series"])
    markdown = render_markdown(results, f"{title} at equal held-out loss", figures=figures, curves_figure=curves)
    write_text_atomic(path, markdown)
    return path


def print_report(results: CompareResults, out: Path) -> None:
    shown = console()  # logs and pipes get a wide one: the tables are not folded into 80 columns
    if not plain_optimizer_comparison(results):
        shown.print(series_line(results))
    found_sections = [item for _, found in sections(results) for item in found] + noise_sections(results)
    for heading, frame, note in found_sections:
        table = Table(title=heading, caption=note, show_lines=False)
        for column in frame.columns:
            table.add_column(str(column), overflow="fold")
        for row in frame.itertuples(index=False):
            table.add_row(*(str(v) for v in row))
        shown.print(table)
    for u in results["unmatched"]:
        where = f"{u['series']}, seed {u['seed']}"
        shown.print(f"[yellow]no pair at target {target(u['target'])} ({where}):[/] {u['reason']}")
    shown.print(f"written: {out / 'report.md'}, {out / 'results.json'} and figures in {out}")
