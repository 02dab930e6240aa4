"""`nexus-eval series show`: each series' checkpoints in order, with step, tokens and held-out loss in one unit.

The loss of a harness checkpoint in nats/token is its nexus.json record; any other is measured on the data build
once and cached (evaluation.loss.measured_loss), so a later command reads it back without loading the model.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TypedDict

from rich.table import Table

from nexus_eval.checkpoints import read_meta
from nexus_eval.comparison.external import recorded_on, series_heldout_spec
from nexus_eval.comparison.series import UNIT_NAMES, Series, collect_series, loss_unit
from nexus_eval.data import load_manifest
from nexus_eval.display import checkpoint_label, console, progress_bar
from nexus_eval.evaluation.loss import DEFAULT_LOSS_CACHE, LossUnit, checkpoint_loss

UNIT_WHY = {
    "nats": "every checkpoint has the data build's tokenizer",
    "bpb": "not every checkpoint has the data build's tokenizer: bits per byte on the same held-out bytes",
}


class SeriesPoint(TypedDict):
    checkpoint: str
    step: int | None
    tokens: int | None
    loss: float | None  # in SeriesTable.unit; None: not finite
    source: str  # "nexus.json" | "cache" | "measured"


class SeriesRow(TypedDict):
    label: str
    path: str
    origin: str  # "run" | "hf" | "gguf" | "file"
    external: bool
    checkpoints: list[SeriesPoint]


class SeriesTable(TypedDict):
    unit: str  # "nats" | "bpb"
    data_hash: str
    series: list[SeriesRow]


def series_losses(
    series_list: list[Series],
    data_dir: Path,
    unit: LossUnit,
    windows: int | None = None,
    docs: int = 20,
    cache_dir: Path = DEFAULT_LOSS_CACHE,
    progress: bool = True,
) -> SeriesTable:
    """Every checkpoint's loss in `unit` on the held-out set `compare` would use with the first series as reference
    (external.series_heldout_spec; `windows` overrides its windows), measuring (with a progress bar) what neither
    nexus.json nor the cache has."""
    spec = series_heldout_spec(series_list, data_dir)
    if windows is not None:
        spec = replace(spec, windows=windows)
    data_hash = load_manifest(data_dir)["hash"]
    rows: list[SeriesRow] = []
    total = sum(len(s.checkpoints) for s in series_list)
    with progress_bar("loss", total, enabled=progress) as bar:
        for series in series_list:
            points: list[SeriesPoint] = []
            for ckpt in series.checkpoints:
                bar.update(info=f"{series.label} {checkpoint_label(ckpt.path)}")
                meta = read_meta(ckpt.path)
                trusted = not ckpt.external and recorded_on(
                    meta.get("recipe") or {}, meta.get("data_hash"), spec, data_hash
                )
                loss = checkpoint_loss(
                    ckpt.path, data_dir, unit, spec.windows, docs, cache_dir, trusted, spec.max_context, spec.mixture
                )
                points.append(
                    SeriesPoint(
                        checkpoint=str(ckpt.path),
                        step=ckpt.step,
                        tokens=ckpt.tokens,
                        loss=loss.value,
                        source=loss.source,
                    )
                )
                bar.advance()
            rows.append(
                SeriesRow(
                    label=series.label,
                    path=str(series.path),
                    origin=series.origin,
                    external=series.external,
                    checkpoints=points,
                )
            )
    return SeriesTable(unit=unit, data_hash=load_manifest(data_dir)["hash"], series=rows)


def _cell(value: int | float | None, digits: int | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if digits is not None else f"{value:,}"


def render_series(table: SeriesTable) -> Table:
    shown = Table(title=f"Checkpoint series — held-out loss in {UNIT_NAMES[table['unit']]}")
    for column in ("series", "origin", "checkpoint", "step", "tokens", f"loss ({UNIT_NAMES[table['unit']]})", "from"):
        shown.add_column(column, justify="right" if column in ("step", "tokens") or "loss" in column else "left")
    for row in table["series"]:
        for i, point in enumerate(row["checkpoints"]):
            shown.add_row(
                row["label"] if i == 0 else "",
                row["origin"] if i == 0 else "",
                checkpoint_label(point["checkpoint"]),
                _cell(point["step"]),
                _cell(point["tokens"]),
                _cell(point["loss"], 4),
                point["source"],
            )
    return shown


def show_series(
    specs: list[str],
    series_files: list[Path],
    data_dir: Path,
    unit_override: str | None = None,
    windows: int | None = None,
    docs: int = 20,
    cache_dir: Path = DEFAULT_LOSS_CACHE,
    as_json: bool = False,
    progress: bool = True,
) -> SeriesTable:
    """`series show`: load the series, choose the unit (printed, on stderr with --json), list the losses."""
    series_list = collect_series(specs, series_files)
    unit = loss_unit(series_list, data_dir, unit_override)
    why = "chosen with --loss-unit" if unit_override in ("nats", "bpb") else UNIT_WHY[unit]
    console(stderr=as_json).print(f"loss unit: {UNIT_NAMES[unit]} ({why})")
    table = series_losses(series_list, data_dir, unit, windows, docs, cache_dir, progress)
    if as_json:
        print(json.dumps(table, indent=2, sort_keys=True))
    else:
        console().print(render_series(table))
    return table
