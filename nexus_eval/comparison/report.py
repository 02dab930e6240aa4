"""Tables of a compare results dict: pandas DataFrames → Markdown (file) and rich (terminal).

Formatting is fixed (4 decimals, signed differences, no timestamps), so the same results give the same Markdown byte
for byte: leaderboards are checked against their JSON that way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from rich.table import Table

from nexus_eval.comparison.plots import write_figures
from nexus_eval.display import console
from nexus_eval.io import write_text_atomic
from nexus_eval.schema import CompareResults, OodRow, TaskRow

ALL_SEEDS = "all"


def num(x: Any, digits: int = 4) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def signed(x: Any, digits: int = 4) -> str:
    return "—" if x is None else f"{x:+.{digits}f}"


def ci(row: TaskRow | OodRow) -> str:
    if row.get("low") is None or row.get("high") is None:
        return "—"
    return f"[{row['low']:+.4f}, {row['high']:+.4f}]"


def excludes(row: TaskRow | OodRow) -> str:
    if row.get("low") is None:
        return "—"
    return "yes" if row.get("excludes_zero") else "no"


def target(x: float) -> str:
    return f"{x:g}"


def pairs_frame(results: CompareResults) -> pd.DataFrame:
    rows = [
        {
            "target loss": target(p["target"]),
            "seed": p["seed"],
            "AdamW checkpoint": p["adamw"]["checkpoint"],
            "AdamW loss": num(p["adamw"]["loss"]),
            "Nexus checkpoint": p["nexus"]["checkpoint"],
            "Nexus loss": num(p["nexus"]["loss"]),
            "Δloss": signed(p["delta_loss"]),
        }
        for p in results["pairs"]
    ]
    return pd.DataFrame(rows)


def _delta_columns(row: TaskRow | OodRow) -> dict[str, str]:
    return {
        "AdamW": num(row["adamw"]),
        "Nexus": num(row["nexus"]),
        "Δ (Nexus − AdamW)": signed(row["mean"]),
        "95% CI": ci(row),
        "n": f"{row['n']} {row['unit']}",
        "CI excludes 0": excludes(row),
    }


def tasks_frame(results: CompareResults, seeds: str) -> pd.DataFrame:
    """seeds="all": the mean-over-seeds rows (if several seeds), else the per-seed rows."""
    keep = [r for r in results["tasks"] if (r["seed"] == ALL_SEEDS) == (seeds == ALL_SEEDS)]
    rows = [
        {
            "target loss": target(r["target"]),
            "seed": r["seed"],
            "task": r["task"],
            "metric": r["metric"] + ("" if r["higher_is_better"] else " (↓ better)"),
            **_delta_columns(r),
        }
        for r in keep
    ]
    return pd.DataFrame(rows)


def overlap_frame(results: CompareResults) -> pd.DataFrame:
    rows = [
        {
            "target loss": target(r["target"]),
            "seed": r["seed"],
            "task": r["task"],
            "AdamW solves": r["baseline_solved"],
            "Nexus keeps (of those)": "—" if r["kept"] is None else f"{r['kept']:.1%}",
            "only AdamW": r["only_baseline"],
            "only Nexus": r["only_candidate"],
            "Nexus solves": r["candidate_solved"],
            "items": r["n"],
        }
        for r in results["overlap"]
    ]
    return pd.DataFrame(rows)


def ood_frame(results: CompareResults, seeds: str) -> pd.DataFrame:
    keep = [r for r in results["ood"] if (r["seed"] == ALL_SEEDS) == (seeds == ALL_SEEDS)]
    rows = [
        {"target loss": target(r["target"]), "seed": r["seed"], "domain": r["domain"], **_delta_columns(r)}
        for r in keep
    ]
    return pd.DataFrame(rows)


def geometry_frame(results: CompareResults) -> pd.DataFrame:
    rows = [
        {
            "target loss": target(r["target"]),
            "seed": r["seed"],
            "AdamW grad cos": num(r.get("adamw_grad_cos")),
            "Nexus grad cos": num(r.get("nexus_grad_cos")),
            "AdamW minima MSD": num(r.get("adamw_minima_msd"), 6),
            "Nexus minima MSD": num(r.get("nexus_minima_msd"), 6),
        }
        for r in results.get("geometry", [])
    ]
    return pd.DataFrame(rows)


def sections(results: CompareResults) -> list[tuple[str, pd.DataFrame, str]]:
    """(heading, table, note under it) in report order; empty tables are left out."""
    several_seeds = any(r["seed"] == ALL_SEEDS for r in results["tasks"])
    mode = results["settings"]["mode"]
    pair_note = (
        "Both sides interpolated linearly in held-out loss between the checkpoints around each run's first crossing."
        if mode == "interpolate"
        else f"Pairs differ by at most {results['settings']['tolerance']:g} nats/token in held-out mixture loss "
        "(measured by the harness, nexus.json heldout_loss)."
    )
    boot = f"paired bootstrap over items, {results['settings']['bootstrap_resamples']} resamples"
    out = [("Loss-matched pairs", pairs_frame(results), pair_note)]
    if several_seeds:
        out.append(("Downstream, mean over seeds", tasks_frame(results, ALL_SEEDS), "95% CI: Student t over seeds."))
        out.append(("Downstream, per seed", tasks_frame(results, "per-seed"), f"95% CI: {boot}."))
    else:
        out.append(("Downstream", tasks_frame(results, "per-seed"), f"95% CI: {boot}."))
    out.append(
        (
            "Solved-item overlap",
            overlap_frame(results),
            "Of the items AdamW solves, the share Nexus also solves; items only one of them solves.",
        )
    )
    ood_note = "Loss in nats/token on held-out domains never trained on (each checkpoint's nexus.json)"
    if several_seeds:
        out.append(("Out-of-distribution loss, mean over seeds", ood_frame(results, ALL_SEEDS), ood_note + "; t CI."))
        out.append(("Out-of-distribution loss, per seed", ood_frame(results, "per-seed"), ood_note + "."))
    else:
        out.append(("Out-of-distribution loss", ood_frame(results, "per-seed"), ood_note + "; one seed: no CI."))
    out.append(("Geometry", geometry_frame(results), "Mean off-diagonal gradient cosine; per-source minima MSD."))
    return [(h, t, n) for h, t, n in out if not t.empty]


def to_markdown(frame: pd.DataFrame) -> str:
    # Numbers are pre-formatted strings: no re-parsing, so alignment and digits never depend on the values.
    return frame.to_markdown(index=False, disable_numparse=True)


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


def render_markdown(
    results: CompareResults, title: str, preamble: str = "", figures: list[tuple[str, str]] | None = None
) -> str:
    s = results["settings"]
    what = f"suite `{s['suite']}`" if s.get("suite") else "tasks " + ", ".join(f"`{t}`" for t in s["tasks"])
    limit = f", limit {s['limit']}" if s.get("limit") is not None else ""
    shots = f", {s['num_fewshot']}-shot" if s.get("num_fewshot") is not None else ""
    runs = ", ".join(f"`{r['run_id']}`" for r in results["runs"])
    lines = [f"# {title}", ""]
    if preamble:
        lines += [preamble, ""]
    lines += [f"Runs: {runs}. Evaluated: {what}, backend `{s['backend']}`{limit}{shots}. Mode: {s['mode']}.", ""]
    lines += mismatch_warning(results)
    for heading, frame, note in sections(results):
        lines += [f"## {heading}", "", note, "", to_markdown(frame), ""]
        if heading == "Loss-matched pairs" and results["unmatched"]:
            lines += ["Targets without a pair:", ""]
            lines += [f"- {target(u['target'])} (seed {u['seed']}): {u['reason']}" for u in results["unmatched"]]
            lines += [""]
    for caption, name in figures or []:
        lines += [f"![{caption}]({name})", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


FIGURE_CAPTIONS = {
    "metric_vs_loss.png": "downstream metric vs held-out loss",
    "training_loss.png": "training curves",
    "grad_cosine.png": "gradient cosine vs held-out loss",
}


def write_report(results: CompareResults, out: Path) -> Path:
    """out/report.md plus the PNG figures it links."""
    names = write_figures(results, out)
    figures = [(FIGURE_CAPTIONS[n], n) for n in names]
    path = out / "report.md"
    write_text_atomic(path, render_markdown(results, "AdamW vs Nexus at equal held-out loss", figures=figures))
    return path


def print_report(results: CompareResults, out: Path) -> None:
    shown = console()  # logs and pipes get a wide one: the tables are not folded into 80 columns
    for heading, frame, note in sections(results):
        table = Table(title=heading, caption=note, show_lines=False)
        for column in frame.columns:
            table.add_column(str(column), overflow="fold")
        for row in frame.itertuples(index=False):
            table.add_row(*(str(v) for v in row))
        shown.print(table)
    for u in results["unmatched"]:
        shown.print(f"[yellow]no pair at target {target(u['target'])} (seed {u['seed']}):[/] {u['reason']}")
    shown.print(f"written: {out / 'report.md'}, {out / 'results.json'} and figures in {out}")
