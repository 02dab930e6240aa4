"""PNG figures drawn from a compare results dict (matplotlib, Agg backend: no display needed).

- metric vs held-out loss, one line per series and seed, one panel per task (the paper's central figure);
- training curves: held-out loss vs tokens per run;
- gradient cosine (mean off-diagonal across sources) vs held-out loss, when the runs logged it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nexus_eval.comparison.series import UNIT_NAMES
from nexus_eval.io import atomic_path
from nexus_eval.schema import CompareResults

COLORS = {"adamw": "tab:blue", "nexus": "tab:red"}  # the harness's two optimizers; other series: the cycle below
CYCLE = ("tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
PNG_METADATA = {"Software": None}  # no library version in the file: same data, same bytes


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


def color(series: str, order: list[str]) -> str:
    if series in COLORS:
        return COLORS[series]
    others = [s for s in order if s not in COLORS]
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
    rows = (len(panels) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    for ax, (_, lines, xlabel, ylabel, title, invert) in zip(axes.flat, panels, strict=False):
        _draw(ax, lines, xlabel, ylabel, title, invert)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:  # the temp name keeps ".png": savefig picks the format from it
            fig.savefig(tmp, dpi=110, metadata=PNG_METADATA)
    finally:
        plt.close(fig)


def write_figures(results: CompareResults, out: Path) -> list[str]:
    """metric_vs_loss.png, training_loss.png and (if logged) grad_cosine.png in `out`; returns the file names."""
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
    return written


def write_overview(results: CompareResults, path: Path) -> None:
    """One PNG with every panel (metrics vs loss, training curves, gradient cosine): the leaderboard figure."""
    panels = metric_panels(results) + [training_panel(results)]
    if (cosine := cosine_panel(results)) is not None:
        panels.append(cosine)
    _save(_pyplot(), panels, path, min(3, len(panels)))
