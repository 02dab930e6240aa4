"""Checkpoint series of any origin: what `compare` pairs and `series show` lists.

A series is an ordered list of checkpoints of one training run, labelled. It comes from
- a run directory of this harness (ckpt-*/nexus.json), labelled by its optimizer unless LABEL= is given;
- a directory of Hugging Face checkpoint directories (the transformers Trainer's checkpoint-N, torchtitan,
  OLMo-core or nanoGPT exports), or a single HF model directory;
- GGUF files: one file, or a directory of them;
- an entry of a series file (TOML `[[series]]` with `label`, `checkpoints`, and optionally `step`/`tokens`/`revision`
  per checkpoint).

Checkpoints are ordered by step when every one has a step, else by tokens when every one has a token count, else by
name (numbers in names compared as numbers). The step of a checkpoint comes from its nexus.json, the Trainer's
trainer_state.json (`global_step`), or a step-like directory name (checkpoint-500, step1000, ckpt-000120).
Bad input (a missing path, an empty series, a checkpoint without weights, two series with one label) is a
ComparisonError naming the series and the path.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from nexus_eval.checkpoints import check_weight_files, is_checkpoint, list_checkpoints, read_meta
from nexus_eval.errors import CheckpointError, ComparisonError
from nexus_eval.io import SAFE_NAME_RULE, is_safe_name

Origin = Literal["run", "hf", "gguf", "file"]
TRAINER_STATE = "trainer_state.json"
# Weight files of an HF checkpoint (the Trainer's training_args.bin / optimizer.pt beside them are not weights).
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.bin")
# A step in a checkpoint's directory name: checkpoint-500, ckpt-000120, step1000, global_step_20, iter_0004000.
STEP_IN_NAME = re.compile(r"(?:checkpoint|ckpt|step|iter)[-_]?(\d+)$", re.IGNORECASE)


@dataclass(frozen=True)
class SeriesCheckpoint:
    """One checkpoint of a series: an HF model directory or a GGUF file."""

    path: Path
    step: int | None = None
    tokens: int | None = None
    external: bool = True  # no nexus.json: its held-out loss must be measured (evaluation.loss)


@dataclass(frozen=True)
class Series:
    """An ordered list of checkpoints of one training run, and where they came from."""

    label: str
    path: Path  # the run / checkpoint directory, the GGUF file, or the series file
    origin: Origin
    checkpoints: tuple[SeriesCheckpoint, ...]

    @property
    def external(self) -> bool:
        """Whether any checkpoint lacks nexus.json (its loss is measured by the harness, not recorded)."""
        return any(c.external for c in self.checkpoints)


# ---- one checkpoint ------------------------------------------------------------------------------------------------


def _int_field(data: Any, field: str) -> int | None:
    value = data.get(field) if isinstance(data, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _trainer_state(ckpt: Path) -> dict[str, Any]:
    try:
        state = json.loads((ckpt / TRAINER_STATE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}  # no or unreadable trainer state: the step comes from the name, or order by name
    return state if isinstance(state, dict) else {}


def step_from_name(name: str) -> int | None:
    match = STEP_IN_NAME.search(Path(name).stem if name.endswith(".gguf") else name)
    return int(match.group(1)) if match else None


def describe_checkpoint(ckpt: Path) -> SeriesCheckpoint:
    """A checkpoint with the step and token count it records (nexus.json, trainer_state.json) or its name implies."""
    if ckpt.is_file():  # a GGUF file records neither
        return SeriesCheckpoint(ckpt, step_from_name(ckpt.name), None, external=True)
    try:
        meta = read_meta(ckpt)
    except CheckpointError:
        meta = {}  # a corrupt nexus.json: treated as an external model's directory
    if meta:
        return SeriesCheckpoint(ckpt, _int_field(meta, "step"), _int_field(meta, "tokens_seen"), external=False)
    state = _trainer_state(ckpt)
    step = _int_field(state, "global_step")
    tokens = _int_field(state, "num_input_tokens_seen") or None  # 0: the Trainer did not count them
    return SeriesCheckpoint(ckpt, step if step is not None else step_from_name(ckpt.name), tokens, external=True)


def has_weights(ckpt: Path) -> bool:
    return ckpt.is_file() or any(any(ckpt.glob(pattern)) for pattern in WEIGHT_PATTERNS)


def check_checkpoint(label: str, ckpt: Path) -> None:
    """ComparisonError naming the series and the checkpoint when it has no weights, unreadable ones, or no
    config.json."""
    if not has_weights(ckpt):
        raise ComparisonError(f"series {label}: {ckpt}: checkpoint without weights ({', '.join(WEIGHT_PATTERNS)})")
    if not is_checkpoint(ckpt):
        raise ComparisonError(f"series {label}: {ckpt}: not a Hugging Face checkpoint (no config.json)")
    try:
        check_weight_files(ckpt)
    except CheckpointError as e:
        raise ComparisonError(f"series {label}: {e}") from None


# ---- ordering ------------------------------------------------------------------------------------------------------


def natural_key(name: str) -> list[Any]:
    """checkpoint-2 before checkpoint-10: digits compared as numbers."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name) if part]


def ordered(checkpoints: list[SeriesCheckpoint]) -> tuple[SeriesCheckpoint, ...]:
    """By step when every checkpoint has one, else by tokens when every one has them, else by name."""
    if all(c.step is not None for c in checkpoints):
        return tuple(sorted(checkpoints, key=lambda c: (c.step, c.tokens or 0, natural_key(c.path.name))))
    if all(c.tokens is not None for c in checkpoints):
        return tuple(sorted(checkpoints, key=lambda c: (c.tokens, natural_key(c.path.name))))
    return tuple(sorted(checkpoints, key=lambda c: natural_key(c.path.name)))


# ---- a series from a path ------------------------------------------------------------------------------------------


def _is_hf_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _gguf_files(path: Path) -> list[Path]:
    return sorted(p for p in path.glob("*.gguf") if p.is_file()) if path.is_dir() else []


def _checkpoint_dirs(path: Path) -> list[Path]:
    """The HF checkpoint directories directly inside `path`: those with a config.json or a step-like name."""
    return [p for p in sorted(path.iterdir()) if p.is_dir() and (_is_hf_dir(p) or step_from_name(p.name) is not None)]


def _found_checkpoints(path: Path) -> tuple[Origin, list[Path]]:
    """What a path holds: a harness run, checkpoint directories, GGUF files or one checkpoint. A directory holding
    both a model (config.json) and checkpoint directories (the Trainer's output_dir after save_model) is the series
    of its checkpoint directories; give the final model as its own checkpoint in a series file if it is wanted."""
    if ckpts := list_checkpoints(path) if path.is_dir() else []:
        return "run", ckpts
    if path.is_file():
        return "gguf", [path] if path.suffix == ".gguf" else []
    if found := _checkpoint_dirs(path):  # a Trainer output dir: its checkpoints, not the final model beside them
        return "hf", found
    if not _is_hf_dir(path) and (found := _gguf_files(path)):
        return "gguf", found
    if _is_hf_dir(path):  # one model: a series of one (a final export)
        return ("run" if (path / "nexus.json").is_file() else "hf"), [path]
    return "hf", []


def _default_label(path: Path, origin: Origin, checkpoints: tuple[SeriesCheckpoint, ...]) -> str:
    """A harness run is labelled by its optimizer (as `compare` pairs them today); anything else by its name."""
    if origin == "run":
        optimizer = read_meta(checkpoints[-1].path).get("optimizer")
        if isinstance(optimizer, str) and optimizer:
            return optimizer
    return path.stem if path.is_file() else path.name


def _check_label(label: str, where: Path) -> None:
    if not is_safe_name(label):
        raise ComparisonError(f"series {label!r}: {where}: bad label; {SAFE_NAME_RULE} (give LABEL=PATH)")


def series_from_path(path: Path, label: str | None = None) -> Series:
    """The series a run directory, a directory of HF checkpoints, a GGUF file/directory or one checkpoint holds."""
    shown = label or str(path)
    if not path.exists():
        raise ComparisonError(f"series {shown}: {path}: no such file or directory")
    origin, paths = _found_checkpoints(path)
    if not paths:
        raise ComparisonError(
            f"series {shown}: {path}: empty series (no ckpt-* run checkpoints, HF checkpoint directories with "
            "config.json, or .gguf files)"
        )
    for ckpt in paths:
        check_checkpoint(shown, ckpt)
    checkpoints = ordered([describe_checkpoint(p) for p in paths])
    label = label or _default_label(path, origin, checkpoints)
    _check_label(label, path)
    return Series(label, path, origin, checkpoints)


def split_spec(spec: str) -> tuple[str | None, Path]:
    """`LABEL=PATH` → (LABEL, PATH); a bare PATH (or an existing path that contains '=') → (None, PATH)."""
    label, sep, rest = spec.partition("=")
    if not sep or Path(spec).exists() or "/" in label:
        return None, Path(spec)
    if not label or not rest:
        raise ComparisonError(f"series {spec!r}: expected LABEL=PATH or PATH")
    return label, Path(rest)


def load_series(spec: str) -> Series:
    """A series from a command-line argument: `LABEL=PATH` or a bare PATH."""
    label, path = split_spec(spec)
    return series_from_path(path, label)


# ---- a series file -------------------------------------------------------------------------------------------------


def resolve_revision(path: Path, revision: str) -> Path:
    """The directory of one revision of a hub-style layout already on disk: PATH/<revision>, or the HF cache's
    models--org--name/snapshots/<commit> (named by the revision itself or through refs/<revision>)."""
    for candidate in (path / revision, path / "snapshots" / revision):
        if candidate.is_dir():
            return candidate
    ref = path / "refs" / revision
    if ref.is_file() and (commit := ref.read_text().strip()) and (path / "snapshots" / commit).is_dir():
        return path / "snapshots" / commit
    return path / revision  # absent: the caller names it


def _entry_checkpoint(label: str, base: Path, entry: Any, revision: Any, file: Path) -> SeriesCheckpoint:
    """One `checkpoints` entry of a series file: "PATH" or {path = "...", step = N, tokens = N, revision = "..."}."""
    fields = entry if isinstance(entry, dict) else {"path": entry}
    unknown = set(fields) - {"path", "step", "tokens", "revision"}
    if not isinstance(fields.get("path"), str) or unknown:
        raise ComparisonError(
            f"{file}: series {label}: checkpoint entry {entry!r} must be a path or "
            '{ path = "...", step = N, tokens = N, revision = "..." }'
        )
    for field in ("step", "tokens"):
        if field in fields and _int_field(fields, field) is None:
            raise ComparisonError(f"{file}: series {label}: {field} {fields[field]!r} must be a non-negative integer")
    revision = fields.get("revision", revision)
    if revision is not None and not isinstance(revision, str):
        raise ComparisonError(f"{file}: series {label}: revision {revision!r} must be a string")
    path = base / fields["path"]
    if revision is not None:
        path = resolve_revision(path, revision)
    if not path.exists():
        raise ComparisonError(f"series {label}: {path}: no such checkpoint (listed in {file})")
    check_checkpoint(label, path)
    found = describe_checkpoint(path)
    step = fields["step"] if "step" in fields else found.step
    return replace(found, step=step, tokens=fields["tokens"] if "tokens" in fields else found.tokens)


def _file_series(entry: Any, index: int, file: Path) -> Series:
    if not isinstance(entry, dict) or not isinstance(entry.get("label"), str):
        raise ComparisonError(f"{file}: [[series]] number {index + 1} has no label")
    label = entry["label"]
    _check_label(label, file)
    unknown = set(entry) - {"label", "checkpoints", "revision"}
    if unknown:
        raise ComparisonError(f"{file}: series {label}: unknown key(s) {', '.join(sorted(unknown))}")
    listed = entry.get("checkpoints")
    if not isinstance(listed, list) or not listed:
        raise ComparisonError(f"series {label}: {file}: empty series (`checkpoints` must be a non-empty list)")
    checkpoints = [_entry_checkpoint(label, file.parent, e, entry.get("revision"), file) for e in listed]
    paths = [c.path.resolve() for c in checkpoints]
    if len(set(paths)) != len(paths):
        twice = next(p for p in paths if paths.count(p) > 1)
        raise ComparisonError(f"series {label}: {twice}: listed twice in {file}")
    return Series(label, file, "file", ordered(checkpoints))


def load_series_file(path: Path) -> list[Series]:
    """The series of a TOML series file, relative paths taken from the file's directory:

    [[series]]
    label = "olmo"
    checkpoints = ["ckpts/step1000", { path = "ckpts/final", step = 2000, tokens = 4_000_000 }]
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ComparisonError(f"{path}: no such series file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ComparisonError(f"{path}: not a TOML series file ({e})") from None
    entries = data.get("series")
    if not isinstance(entries, list) or not entries or set(data) != {"series"}:
        raise ComparisonError(f"{path}: expected one or more [[series]] tables and nothing else")
    return [_file_series(entry, i, path) for i, entry in enumerate(entries)]


def collect_series(specs: list[str], series_files: list[Path] | None = None) -> list[Series]:
    """Every series of the command line (LABEL=PATH or PATH arguments, then series files), labels unique."""
    found = [load_series(spec) for spec in specs]
    for file in series_files or []:
        found.extend(load_series_file(file))
    if not found:
        raise ComparisonError("no series: give [LABEL=]PATH arguments or --series-file")
    seen: dict[str, Series] = {}
    for series in found:
        if (first := seen.setdefault(series.label, series)) is not series:
            raise ComparisonError(
                f"series {series.label}: {series.path}: label already names {first.path} (give LABEL=PATH)"
            )
    return found


# ---- the loss unit -------------------------------------------------------------------------------------------------

LOSS_UNITS = ("auto", "nats", "bpb")
UNIT_NAMES = {"nats": "nats/token", "bpb": "bits/byte"}


def loss_unit(series_list: list[Series], data_dir: Path, override: str | None = None) -> Literal["nats", "bpb"]:
    """The unit series are compared in: nats/token when every checkpoint has the data build's tokenizer (the
    trainer's own held-out loss), else bits per byte on the same held-out bytes. `override` ("nats" | "bpb"; None or
    "auto": choose) wins, but nats/token for a checkpoint with another tokenizer is refused."""
    from nexus_eval.evaluation.loss import shares_data_tokenizer  # loads torch: only when a unit is chosen

    if override not in (None, *LOSS_UNITS):
        raise ComparisonError(f"--loss-unit {override}: expected one of {', '.join(LOSS_UNITS)}")
    if override == "bpb":
        return "bpb"
    for series in series_list:
        for ckpt in series.checkpoints:
            if not shares_data_tokenizer(ckpt.path, data_dir):
                if override == "nats":
                    raise ComparisonError(
                        f"--loss-unit nats: series {series.label}: {ckpt.path}: its tokenizer is not the one of "
                        f"{data_dir}; nats/token are not comparable across tokenizers (use bpb or auto)"
                    )
                return "bpb"
    return "nats"
