"""PNG figures drawn from a compare results dict (matplotlib, Agg backend: no display needed).

- metric vs held-out loss, one line per series and seed, one panel per task (the paper's central figure);
- training curves: held-out loss vs tokens per run;
- gradient cosine (mean off-diagonal across sources) vs held-out loss, when the runs logged it;
- the curves (comparison.curves): per task and OOD domain, each series' mean over seeds with its 95% t band at the
  grid of held-out losses, over every checkpoint of every seed as faint dots.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nexus_eval.comparison.series import UNIT_NAMES
from nexus_eval.io import atomic_path
from nexus_eval.optimizer_registry import REGISTRY
from nexus_eval.schema import CompareResults, CurveBand

CYCLE = ("tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
PNG_METADATA = {"Software": None}  # no library version in the file: same data, same bytes
CURVES_FIGURE = "loss_curves.png"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _lines(points: Sequence[Mapping[str, Any]], x: str, y: str) -> dict[tuple[str, Any], tuple[list, list]]:
    """(series, seed) → (xs, ys) sorted by x, skipping missing values."""
    lines: dict[tuple[str, Any], tuple[list, list]] = {}
    for p in points:
        if p.get(x) is None or p.get(y) is None:
            continue
        xs, ys = lines.setdefault((p["series"], p.get("seed")), ([], []))
        xs.append(p[x])
        ys.append(p[y])
    ordered = {}
    for key in sorted(lines, key=str):
        xs, ys = lines[key]
        order = sorted(range(len(xs)), key=xs.__getitem__)
        ordered[key] = ([xs[i] for i in order], [ys[i] for i in order])
    return ordered


def registered_color(series: str) -> str | None:
    """The colour a registered optimizer's series always has (AdamW blue, Nexus red), or None."""
    entry = REGISTRY.resolve(series)
    return entry.color if entry is not None else None


def color(series: str, order: list[str]) -> str:
    """A series' colour: its registered one, else the next of the cycle among the series without one."""
    if (fixed := registered_color(series)) is not None:
        return fixed
    others = [s for s in order if registered_color(s) is None]
    return CYCLE[others.index(series) % len(CYCLE)] if series in others else "gray"


def _draw(ax: Any, lines: dict, xlabel: str, ylabel: str, title: str, invert_x: bool = False) -> None:
    labelled: set[str] = set()
    order = list(dict.fromkeys(series for series, _ in lines))
    for (series, _seed), (xs, ys) in lines.items():
        label = series if series not in labelled else None
        labelled.add(series)
        ax.plot(xs, ys, marker="o", ms=3, lw=1.2, color=color(series, order), label=label, alpha=0.85)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if invert_x:
        ax.invert_xaxis()  # training lowers the loss: progress reads left to right
    if labelled:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def loss_axis(results: CompareResults) -> str:
    return f"held-out loss ({UNIT_NAMES[results['settings'].get('loss_unit', 'nats')]})"


def metric_panels(results: CompareResults) -> list[tuple[str, dict, str, str, str, bool]]:
    panels = []
    for task in results["settings"]["tasks"]:
        pts = [p for p in results["points"] if p["task"] == task]
        if pts:
            metric = pts[0]["metric"]
            panels.append((task, _lines(pts, "loss", "value"), loss_axis(results), metric, task, True))
    return panels


def curve_points(results: CompareResults) -> list[dict[str, Any]]:
    return [{"series": c["series"], "seed": c["seed"], **p} for c in results.get("curves", []) for p in c["points"]]


def training_panel(results: CompareResults) -> tuple[str, dict, str, str, str, bool]:
    # The trainer's own log: nats/token whatever the comparison's unit (external series have no curve).
    lines = _lines(curve_points(results), "tokens", "val_loss")
    return ("training", lines, "tokens", "held-out loss (nats/token)", "training curves", False)


def cosine_panel(results: CompareResults) -> tuple[str, dict, str, str, str, bool] | None:
    lines = _lines(curve_points(results), "val_loss", "grad_cos")
    if not lines:
        return None
    return (
        "grad_cosine",
        lines,
        "held-out loss (nats/token)",
        "mean gradient cosine across sources",
        "gradient cosine",
        True,
    )


def _save(plt: Any, panels: list, path: Path, columns: int) -> None:
    fig, axes = _grid(plt, len(panels), columns)
    for ax, (_, lines, xlabel, ylabel, title, invert) in zip(axes, panels, strict=True):
        _draw(ax, lines, xlabel, ylabel, title, invert)
    _write(plt, fig, path)


def _grid(plt: Any, panels: int, columns: int) -> tuple[Any, list[Any]]:
    """A figure of `panels` axes in rows of `columns`, the unused ones hidden."""
    rows = (panels + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    for ax in list(axes.flat)[panels:]:
        ax.set_visible(False)
    return fig, list(axes.flat)[:panels]


def _write(plt: Any, fig: Any, path: Path) -> None:
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:  # the temp name keeps ".png": savefig picks the format from it
            fig.savefig(tmp, dpi=110, metadata=PNG_METADATA)
    finally:
        plt.close(fig)


def _nan(value: Any) -> float:
    return float("nan") if value is None else float(value)


def curve_panels(results: CompareResults) -> list[tuple[tuple[str, str], list[CurveBand]]]:
    """(kind, name) → the bands of every series, in the order the comparison lists tasks and domains."""
    panels: dict[tuple[str, str], list[CurveBand]] = {}
    for band in (results.get("loss_curves") or {}).get("bands") or []:
        if band["points"]:
            panels.setdefault((band["kind"], band["name"]), []).append(band)
    return list(panels.items())


def raw_points(results: CompareResults, kind: str, name: str) -> list[Mapping[str, Any]]:
    """The checkpoints behind one panel: a task's metric points, or an OOD domain's losses."""
    if kind == "ood":
        return [p for p in (results.get("loss_curves") or {}).get("ood_points") or [] if p["domain"] == name]
    return [p for p in results["points"] if p["task"] == name]


def _draw_bands(ax: Any, results: CompareResults, kind: str, name: str, bands: list[CurveBand]) -> None:
    order = list(results["settings"]["series"])
    for band in bands:
        shade = color(band["series"], order)
        dots = [p for p in raw_points(results, kind, name) if p["series"] == band["series"]]
        ax.scatter([p["loss"] for p in dots], [p["value"] for p in dots], s=8, color=shade, alpha=0.3, lw=0)
        xs = [p["loss"] for p in band["points"]]
        mean = [_nan(p["mean"]) for p in band["points"]]
        ax.fill_between(xs, [_nan(p["low"]) for p in band["points"]], [_nan(p["high"]) for p in band["points"]],
                        color=shade, alpha=0.2, lw=0)  # fmt: skip
        ax.plot(xs, mean, color=shade, lw=1.6, marker="o", ms=3, label=band["series"])
    ax.set_xlabel(loss_axis(results))
    unit = UNIT_NAMES[results["settings"].get("loss_unit", "nats")]
    ax.set_ylabel(f"OOD loss ({unit})" if kind == "ood" else bands[0]["metric"])
    ax.set_title(f"OOD: {name}" if kind == "ood" else name, fontsize=10)
    ax.invert_xaxis()  # training lowers the loss: progress reads left to right
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def write_loss_curves(results: CompareResults, path: Path) -> bool:
    """One panel per task and OOD domain: each series' mean line and 95% t band over seeds at the grid of held-out
    losses, the checkpoints as faint dots; False (nothing written) when the results have no curves."""
    panels = curve_panels(results)
    if not panels:
        return False
    plt = _pyplot()
    fig, axes = _grid(plt, len(panels), min(3, len(panels)))
    for ax, ((kind, name), bands) in zip(axes, panels, strict=True):
        _draw_bands(ax, results, kind, name, bands)
    _write(plt, fig, path)
    return True


def write_figures(results: CompareResults, out: Path) -> list[str]:
    """metric_vs_loss.png, training_loss.png, (if logged) grad_cosine.png and (if computed) loss_curves.png in `out`;
    returns the file names."""
    plt = _pyplot()
    written = []
    if panels := metric_panels(results):
        _save(plt, panels, out / "metric_vs_loss.png", min(3, len(panels)))
        written.append("metric_vs_loss.png")
    _save(plt, [training_panel(results)], out / "training_loss.png", 1)
    written.append("training_loss.png")
    if (cosine := cosine_panel(results)) is not None:
        _save(plt, [cosine], out / "grad_cosine.png", 1)
        written.append("grad_cosine.png")
    if write_loss_curves(results, out / CURVES_FIGURE):
        written.append(CURVES_FIGURE)
    return written


def write_overview(results: CompareResults, path: Path) -> None:
    """One PNG with every panel (metrics vs loss, training curves, gradient cosine): the leaderboard figure."""
    panels = metric_panels(results) + [training_panel(results)]
    if (cosine := cosine_panel(results)) is not None:
        panels.append(cosine)
    _save(_pyplot(), panels, path, min(3, len(panels)))
