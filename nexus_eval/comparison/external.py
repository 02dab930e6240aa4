"""The series of a comparison as runs: harness run directories, and checkpoint series of any other origin with their
held-out loss measured by the harness on the same data (same loss, different downstream, for any series).

`compared_runs` turns the command line's series (`[LABEL=]PATH`, `--series-file`) into match.Run objects, all in one
loss unit:
- nats/token when every checkpoint has the data build's tokenizer, else bits per byte on the same held-out bytes
  (`--loss-unit` overrides; series.loss_unit);
- one held-out set for every series (HeldOutSpec): the reference's recipe settings when the reference is a run of
  this harness (its mixture, windows and context), else every source alike, 16 windows, and the shortest context
  among the series' models;
- a harness checkpoint's nexus.json loss is used as it stands only where it was measured on that very set (nats/token,
  same data build, same recipe held-out settings); everything else is measured once and cached per checkpoint content
  and held-out set (evaluation.loss.measured_loss), so a later command reads it back without loading a model.

Harness-only comparisons in nats/token (AdamW vs Nexus) read nothing but the runs' files, as before series existed.
For an external series the harness records what it could check (tokenizer, parameters, architecture, context) and
what it could not (ExternalChecks), and the report marks its rows.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nexus_eval.checkpoints import gguf_file, list_checkpoints, read_meta
from nexus_eval.comparison.match import Checkpoint, Run, check_two_series, choose_reference, load_run
from nexus_eval.comparison.series import (
    Series,
    SeriesCheckpoint,
    load_series_file,
    loss_unit,
    series_from_path,
    split_spec,
)
from nexus_eval.data import load_manifest, train_source_names
from nexus_eval.display import checkpoint_label, progress_bar
from nexus_eval.errors import ComparisonError
from nexus_eval.evaluation.loss import DEFAULT_LOSS_CACHE, MAX_CONTEXT, LossUnit, measured_loss
from nexus_eval.schema import ExternalChecks

DEFAULT_WINDOWS = 16
DEFAULT_DOCS = 20
# What the harness cannot know about a model it did not train: said in every external series' report row.
UNCHECKED = ("training data", "decontamination against the evaluation tasks", "training recipe and seed")
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


@dataclass(frozen=True)
class HeldOutSpec:
    """The held-out set every loss of one comparison is measured on (besides the data build)."""

    windows: int = DEFAULT_WINDOWS
    docs: int = DEFAULT_DOCS
    max_context: int = MAX_CONTEXT
    mixture: dict[str, float] | None = field(default=None, hash=False)


@dataclass(frozen=True)
class ComparedRuns:
    runs: list[Run]
    unit: LossUnit
    unit_chosen_by: str  # why this unit: "--loss-unit", "same tokenizer" or "tokenizers differ"
    heldout: HeldOutSpec | None  # None: every loss read from the harness runs' nexus.json
    reference: str  # the series every other is matched against


# ---- what the command line names -------------------------------------------------------------------------------


def _run_dirs(path: Path) -> list[Path]:
    """A harness run directory, or the run directories a directory holds (e.g. runs/); [] for anything else."""
    if not path.is_dir():
        return []
    if list_checkpoints(path):
        return [path]
    return sorted(p for p in path.iterdir() if p.is_dir() and list_checkpoints(p))


def gather(specs: list[str], series_files: list[Path]) -> tuple[list[Run], list[Series]]:
    """The harness runs (loaded, in nats/token from nexus.json) and the other series the arguments name. Labels:
    runs sharing one (an optimizer, or a LABEL= over a directory of runs) form one series, one run per seed; any
    other series' label must be its own (a ComparisonError naming both paths)."""
    runs: list[Run] = []
    others: list[Series] = []
    for spec in specs:
        label, path = split_spec(spec)
        if found := _run_dirs(path):
            runs += [load_run(p, label) for p in found]
        else:
            others.append(series_from_path(path, label))
    for file in series_files:
        others += load_series_file(file)
    if not runs and not others:
        raise ComparisonError("compare: no series given ([LABEL=]PATH arguments or --series-file)")
    taken: dict[str, Path] = {r.label: r.path for r in runs}
    for series in others:
        if series.label in taken:
            raise ComparisonError(
                f"series {series.label}: {series.path}: label already names {taken[series.label]} (give LABEL=PATH)"
            )
        taken[series.label] = series.path
    return runs, others


def as_series(run: Run) -> Series:
    """A harness run seen as a series (for the unit choice: its checkpoints' tokenizers)."""
    checkpoints = tuple(SeriesCheckpoint(c.path, c.step, c.tokens, external=False) for c in run.checkpoints)
    return Series(run.label, run.path, "run", checkpoints)


# ---- the held-out set ----------------------------------------------------------------------------------------------


def model_context(ckpt: Path) -> int | None:
    """The longest context a checkpoint's config.json declares; None for a GGUF file or a config without one."""
    try:
        config = json.loads((ckpt / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, NotADirectoryError):
        return None
    values = [config.get(k) for k in CONTEXT_KEYS]
    found = [v for v in values if isinstance(v, int) and not isinstance(v, bool) and v > 1]
    return found[0] if found else None


def heldout_spec(checkpoints: list[Path], reference_recipe: dict[str, Any] | None, sources: list[str]) -> HeldOutSpec:
    """The reference's held-out settings when it is a harness series (its recipe: mixture, eval windows, context),
    else every source alike and 16 windows; the context never longer than the shortest model's among `checkpoints`."""
    known = [c for c in (model_context(p) for p in checkpoints) if c is not None]
    max_context = min([MAX_CONTEXT, *known])
    mixture = {s: 1.0 for s in sources}
    windows = DEFAULT_WINDOWS
    if reference_recipe:
        recorded_mixture = (reference_recipe.get("data") or {}).get("mixture")
        recorded_windows = (reference_recipe.get("train") or {}).get("eval_windows")
        context = (reference_recipe.get("model") or {}).get("context")
        if isinstance(context, int):
            max_context = min(max_context, context)
        if isinstance(recorded_windows, int) and recorded_windows > 0:
            windows = recorded_windows
        if isinstance(recorded_mixture, dict) and recorded_mixture:
            mixture = dict(recorded_mixture)
    return HeldOutSpec(windows=windows, max_context=max_context, mixture=mixture)


def series_heldout_spec(series: list[Series], data_dir: Path) -> HeldOutSpec:
    """heldout_spec for `series show`: the first series is the reference, as in `compare` without --reference."""
    first = series[0]
    recipe = read_meta(first.checkpoints[-1].path).get("recipe") if first.origin == "run" else None
    newest = [s.checkpoints[-1].path for s in series]
    return heldout_spec(
        newest, recipe if isinstance(recipe, dict) else None, train_source_names(load_manifest(data_dir))
    )


def recorded_on(recipe: dict[str, Any], recorded_data_hash: Any, spec: HeldOutSpec, data_hash: str) -> bool:
    """Whether a harness run's nexus.json losses (recipe, data hash as recorded) were measured on exactly this
    held-out set (the trainer's windows)."""
    return (
        recorded_data_hash == data_hash
        and (recipe.get("train") or {}).get("eval_windows") == spec.windows
        and (recipe.get("model") or {}).get("context") == spec.max_context
        and (recipe.get("data") or {}).get("mixture") == spec.mixture
    )


# ---- measuring ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PointLoss:
    loss: float | None
    ood: dict[str, float]


def measured_point(ckpt: Path, data_dir: Path, unit: LossUnit, spec: HeldOutSpec, cache_dir: Path) -> PointLoss:
    lookup = measured_loss(ckpt, data_dir, spec.windows, spec.docs, cache_dir, spec.max_context, spec.mixture)
    record = lookup.record
    if unit == "nats":
        return PointLoss(record["val_loss"], {d: v for d, v in record["ood_loss"].items() if v is not None})
    return PointLoss(record["bits_per_byte"], {d: v for d, v in record["ood_bits_per_byte"].items() if v is not None})


def _finite(label: str, ckpt: Path, value: float | None) -> float:
    if value is None or not math.isfinite(value):
        raise ComparisonError(f"series {label}: {ckpt}: held-out loss is not finite (a diverged model)")
    return float(value)


def remeasured(run: Run, data_dir: Path, unit: LossUnit, spec: HeldOutSpec, cache_dir: Path, bar: Any) -> Run:
    """A harness run with every checkpoint's loss measured on `spec` in `unit`. Its recipe's target losses were
    crossed in the trainer's nats/token: in bits per byte they mean nothing, so they are dropped."""
    checkpoints = []
    for c in run.checkpoints:
        bar.update(info=f"{run.label} {checkpoint_label(c.path)}")
        point = measured_point(c.path, data_dir, unit, spec, cache_dir)
        checkpoints.append(
            replace(c, loss=_finite(run.label, c.path, point.loss), ood_loss=point.ood, target_loss=None)
        )
        bar.advance()
    targets = run.targets if unit == "nats" else ()
    return replace(run, checkpoints=tuple(checkpoints), targets=targets)


def external_run(series: Series, data_dir: Path, unit: LossUnit, spec: HeldOutSpec, cache_dir: Path, bar: Any) -> Run:
    """An external series as a run of one unknown seed, its losses measured on `spec` in `unit`."""
    checkpoints = []
    for i, c in enumerate(series.checkpoints):
        bar.update(info=f"{series.label} {checkpoint_label(c.path)}")
        point = measured_point(c.path, data_dir, unit, spec, cache_dir)
        checkpoints.append(
            Checkpoint(
                path=c.path,
                run_id=series.label,
                series=series.label,
                seed=None,
                step=c.step if c.step is not None else i,
                tokens=c.tokens or 0,
                loss=_finite(series.label, c.path, point.loss),
                target_loss=None,
                ood_loss=point.ood,
            )
        )
        bar.advance()
    info: dict[str, Any] = {"checks": external_checks(series, data_dir)}
    return Run(series.path, series.label, series.label, None, None, None, (), tuple(checkpoints), info, external=True)


# ---- what can be checked about an external series -------------------------------------------------------------


def safetensors_parameters(ckpt: Path) -> int | None:
    """Parameter count from the safetensors headers (no weights read); None without safetensors files."""
    files = sorted(ckpt.glob("*.safetensors")) if ckpt.is_dir() else []
    if not files:
        return None
    total = 0
    for path in files:
        with path.open("rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        for name, entry in header.items():
            if name != "__metadata__":
                total += math.prod(entry.get("shape") or [1])
    return total


def architecture(ckpt: Path) -> str | None:
    try:
        config = json.loads((ckpt / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, NotADirectoryError):
        return "gguf" if gguf_file(ckpt) is not None else None
    layers = config.get("num_hidden_layers") or config.get("n_layer")
    hidden = config.get("hidden_size") or config.get("n_embd")
    kind = config.get("model_type") or "unknown"
    return f"{kind}, {layers} layers, hidden {hidden}" if layers and hidden else str(kind)


def external_checks(series: Series, data_dir: Path) -> ExternalChecks:
    """What the harness checked about an external series (its newest checkpoint), and what it could not."""
    from nexus_eval.evaluation.loss import shares_data_tokenizer

    newest = series.checkpoints[-1].path
    return {
        "origin": series.origin,
        "tokenizer": "data build's" if shares_data_tokenizer(newest, data_dir) else "its own",
        "parameters": safetensors_parameters(newest),
        "architecture": architecture(newest),
        "context": model_context(newest),
        "not_checked": list(UNCHECKED),
    }


# ---- the entry point ------------------------------------------------------------------------------------------------


def compared_runs(
    specs: list[str],
    series_files: list[Path],
    data_dir: Path,
    reference: str | None = None,
    unit_override: str | None = None,
    cache_dir: Path = DEFAULT_LOSS_CACHE,
    progress: bool = True,
) -> ComparedRuns:
    """Every run of the comparison in one loss unit on one held-out set (see the module docstring)."""
    runs, others = gather(specs, series_files)
    labels = list(dict.fromkeys([r.label for r in runs] + [s.label for s in others]))
    if others:  # before any checkpoint is measured (harness runs alone are checked when they are grouped)
        check_two_series(labels, [r.path for r in runs] + [s.path for s in others])
    ref = choose_reference(labels, not others, reference)
    if not others and unit_override in (None, "auto", "nats"):
        why = "--loss-unit" if unit_override == "nats" else "same tokenizer"
        return ComparedRuns(runs, "nats", why, None, ref)
    manifest = load_manifest(data_dir)
    unit = loss_unit([as_series(r) for r in runs] + others, data_dir, unit_override)
    why = (
        "--loss-unit"
        if unit_override in ("nats", "bpb")
        else ("same tokenizer" if unit == "nats" else "tokenizers differ")
    )
    reference_runs = [r for r in runs if r.label == ref]
    recipe = reference_runs[0].info.get("recipe") if reference_runs else None
    newest = [r.checkpoints[-1].path for r in runs] + [s.checkpoints[-1].path for s in others]
    spec = heldout_spec(newest, recipe if isinstance(recipe, dict) else None, train_source_names(manifest))
    to_measure = [
        r
        for r in runs
        if unit == "bpb" or not recorded_on(r.info.get("recipe") or {}, r.data_hash, spec, manifest["hash"])
    ]
    total = sum(len(r.checkpoints) for r in to_measure) + sum(len(s.checkpoints) for s in others)
    with progress_bar("held-out loss", total, enabled=progress and total > 0) as bar:
        measured = {id(r): remeasured(r, data_dir, unit, spec, cache_dir, bar) for r in to_measure}
        compared = [measured.get(id(r), r) for r in runs]
        compared += [external_run(s, data_dir, unit, spec, cache_dir, bar) for s in others]
    return ComparedRuns(compared, unit, why, spec, ref)
