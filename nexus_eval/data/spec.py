"""Data specs: which corpora a build reads, from `--source/--ood NAME=PATH[:FIELD]` or a TOML file (`--spec`).

A TOML spec is the `[data]` table of a file of its own (recipes' `[data]` keys other than these are ignored here, but
the recipe loader refuses `sources`/`tokenizer` in a recipe today). It looks like:

    [data]
    builtin = false              # also read the built-in offline sources (default: true without sources, else false)
    tokenizer = "path/to/tokenizer-or-model-dir-or.gguf"   # optional; default: train a byte-level BPE
    max_tokens = 2_000_000_000   # optional total budget that `fraction` divides

    [data.sources.web]
    dataset = "HuggingFaceFW/fineweb-edu"   # or path = "corpus/*.jsonl.zst"
    config = "sample-10BT"
    split = "train"
    field = "text"               # or a template: "{problem}\\n{solution}"
    fraction = 0.6               # or max_tokens = ..., or max_chars = ...
    role = "train"               # or "ood": a held-out domain, never trained on
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nexus_eval.data.formats import dataset_part, user_part
from nexus_eval.data.sources import Part
from nexus_eval.data.store import NAME_PATTERN, NAME_RULE  # a source name becomes a file name
from nexus_eval.errors import DataError

SOURCE_KEYS = {
    "path",
    "dataset",
    "config",
    "split",
    "data_files",
    "field",
    "template",
    "max_chars",
    "max_tokens",
    "fraction",
    "role",
}
DATA_KEYS = {"builtin", "tokenizer", "max_tokens", "sources"}


@dataclass(frozen=True)
class SourceSpec:
    """One user corpus: where its documents come from and how much of it a build takes."""

    name: str
    role: Literal["train", "ood"] = "train"
    path: str | None = None
    dataset: str | None = None
    config: str | None = None
    split: str = "train"
    data_files: Any = None
    field: str | None = None  # a column name, or a template with {column} placeholders
    max_chars: int | None = None
    max_tokens: int | None = None
    label: str = ""  # how errors name it: "--source NAME=PATH" or "spec.toml: source NAME"

    def part(self) -> Part:
        if self.dataset is not None:
            return dataset_part(self.label, self.dataset, self.config, self.split, self.data_files, self.field)
        assert self.path is not None
        return user_part(self.label, self.path, self.field)

    def params(self) -> dict[str, Any]:
        """What enters the manifest's params (and so its hash): how the documents were chosen, not where from."""
        chosen = {"role": self.role, "field": self.field, "max_chars": self.max_chars, "max_tokens": self.max_tokens}
        if self.dataset is not None:
            chosen |= {"dataset": self.dataset, "config": self.config, "split": self.split}
        return {k: v for k, v in chosen.items() if v is not None}


@dataclass(frozen=True)
class DataSpec:
    sources: list[SourceSpec] = field(default_factory=list)
    builtin: bool | None = None  # None: the built-in sources only when no source is given
    tokenizer: str | None = None


def parse_cli_source(flag: str, text: str) -> SourceSpec:
    """NAME=PATH[:FIELD] from --source / --ood (a FIELD is a column name; templates go in a TOML spec)."""
    name, sep, rest = text.partition("=")
    if not sep or not re.fullmatch(NAME_PATTERN, name) or not rest:
        raise DataError(f"{flag} {text!r}: expected NAME=PATH[:FIELD] with NAME matching {NAME_RULE}")
    path, colon, column = rest.rpartition(":")
    if not colon or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", column) or Path(rest).exists():
        path, column = rest, ""
    role: Literal["train", "ood"] = "ood" if flag == "--ood" else "train"
    return SourceSpec(name, role, path=path, field=column or None, label=f"{flag} {text}")


def load_spec(path: Path) -> DataSpec:
    """A TOML data spec: its `[data]` table (a recipe's, or a file's own)."""
    try:
        document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"--spec {path}: file not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise DataError(f"--spec {path}: not a readable TOML file ({e})") from None
    data = document.get("data")
    if not isinstance(data, dict):
        raise DataError(f"--spec {path}: no [data] table")
    return spec_from_table(str(path), data, Path(path).parent)


def spec_from_table(where: str, data: dict[str, Any], base: Path) -> DataSpec:
    """Check a `[data]` table; relative paths are read from `base` (the spec file's folder)."""
    data = {k: v for k, v in data.items() if k in DATA_KEYS}  # a recipe's [data] also holds dir/mixture
    builtin = data.get("builtin")
    if builtin is not None and not isinstance(builtin, bool):
        raise DataError(f"{where}: [data] builtin must be true or false")
    total = _positive_int(where, "[data] max_tokens", data.get("max_tokens"))
    tables = data.get("sources", {})
    if not isinstance(tables, dict):
        raise DataError(f"{where}: [data.sources] must be a table of [data.sources.NAME] tables")
    sources = [_source(where, name, table, total, base) for name, table in tables.items()]
    tokenizer = data.get("tokenizer")
    if tokenizer is not None and not isinstance(tokenizer, str):
        raise DataError(f"{where}: [data] tokenizer must be a path")
    if tokenizer is not None and not Path(tokenizer).is_absolute() and (base / tokenizer).exists():
        tokenizer = str(base / tokenizer)
    return DataSpec(sources, builtin, tokenizer)


def _source(where: str, name: str, table: Any, total: int | None, base: Path) -> SourceSpec:
    label = f"{where}: source {name}"
    if not re.fullmatch(NAME_PATTERN, name):
        raise DataError(f"{label}: the name must match {NAME_RULE}")
    if not isinstance(table, dict):
        raise DataError(f"{label}: expected a [data.sources.{name}] table")
    if unknown := sorted(set(table) - SOURCE_KEYS):
        raise DataError(f"{label}: unknown key {unknown[0]!r} (known: {', '.join(sorted(SOURCE_KEYS))})")
    if ("path" in table) == ("dataset" in table):
        raise DataError(f"{label}: give exactly one of path or dataset")
    if "field" in table and "template" in table:
        raise DataError(f"{label}: give field or template, not both")
    role = table.get("role", "train")
    if role not in ("train", "ood"):
        raise DataError(f"{label}: role {role!r} must be train or ood")
    for key in ("path", "dataset", "config", "split", "field", "template"):
        if key in table and not isinstance(table[key], str):
            raise DataError(f"{label}: {key} must be a string")
    max_tokens = _positive_int(label, "max_tokens", table.get("max_tokens"))
    if (fraction := table.get("fraction")) is not None:
        if total is None or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
            raise DataError(f"{label}: fraction needs [data] max_tokens and a value in (0, 1]")
        max_tokens = int(fraction * total)
    path = table.get("path")
    if path is not None and not Path(path).expanduser().is_absolute():
        path = str(base / path)
    data_files = table.get("data_files")
    if data_files is not None and not isinstance(data_files, str | list | dict):
        raise DataError(f"{label}: data_files must be a path, a list of paths, or a table of split → paths")
    data_files = _beside(data_files, base)
    return SourceSpec(
        name,
        role,
        path=path,
        dataset=table.get("dataset"),
        config=table.get("config"),
        split=table.get("split", "train"),
        data_files=data_files,
        field=table.get("template", table.get("field")),
        max_chars=_positive_int(label, "max_chars", table.get("max_chars")),
        max_tokens=max_tokens,
        label=label,
    )


def _beside(data_files: Any, base: Path) -> Any:
    """Relative data_files that exist next to the spec file are read from there (else as `datasets` sees them)."""
    if isinstance(data_files, str):
        return (
            str(base / data_files)
            if not Path(data_files).is_absolute() and (base / data_files).exists()
            else data_files
        )
    if isinstance(data_files, list):
        return [_beside(f, base) for f in data_files]
    if isinstance(data_files, dict):
        return {k: _beside(v, base) for k, v in data_files.items()}
    return data_files


def _positive_int(label: str, key: str, value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise DataError(f"{label}: {key} must be a positive integer")
    return value
