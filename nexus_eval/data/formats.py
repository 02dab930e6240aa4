"""User corpora in the common formats, read as a stream of documents (never the whole corpus in memory).

A source's `path` is a directory of text files (one document per file), a `datasets.save_to_disk` directory, or a
file / glob of `.jsonl`, `.jsonl.gz`, `.jsonl.zst`, `.parquet` and `.arrow` files; `dataset` names a Hugging Face
dataset resolved from the local cache only. A row becomes a document through `field` (one column) or a template
such as "{problem}\\n{solution}" (Python format syntax over the row's columns).
Every error names the source and the file (and row) at fault.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
import string
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from nexus_eval.data.sources import Part, text_dir_part
from nexus_eval.errors import DataError

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
TABLE_SUFFIXES = (".parquet", ".arrow")
KNOWN_SUFFIXES = JSONL_SUFFIXES + TABLE_SUFFIXES
ROWS_PER_BATCH = 1024  # parquet/arrow record batches: a few MB of text at a time


class Renderer:
    """Turns a row (a mapping of columns) into a document: one column, or a template over several."""

    def __init__(self, label: str, field: str) -> None:
        self.label, self.field = label, field
        self.is_template = "{" in field
        try:
            names = [name for _, name, _, _ in string.Formatter().parse(field) if name]
        except ValueError as e:
            raise DataError(f"{label}: template {field!r} is not a valid format string ({e})") from None
        self.columns = sorted({name.split(".")[0].split("[")[0] for name in names}) if self.is_template else [field]
        if not self.columns:
            raise DataError(f"{label}: template {field!r} names no field")

    def __call__(self, row: Any, where: str) -> str | None:
        """The document of `row` (None for a null text), or a DataError naming `where` (file and row)."""
        if not isinstance(row, dict):
            raise DataError(f"{self.label}: {where}: a row is {type(row).__name__}, not an object with fields")
        missing = [c for c in self.columns if c not in row]
        if missing:
            have = ", ".join(list(row)[:10])
            raise DataError(f"{self.label}: {where}: no field {missing[0]!r} (have: {have})")
        if self.is_template:
            return self.field.format_map(row)
        value = row[self.field]
        if value is None:
            return None
        if not isinstance(value, str):
            raise DataError(f"{self.label}: {where}: field {self.field!r} is {type(value).__name__}, not text")
        return value


def user_part(label: str, path: str, field: str | None) -> Part:
    """The Part reading `path` (see the module doc); `label` ("--source NAME=..." or "source NAME") opens errors."""
    location = Path(path).expanduser()
    if location.is_dir():
        if _is_saved_dataset(location):
            return _saved_dataset_part(label, location, Renderer(label, field or "text"))
        if field:
            raise DataError(f"{label}: {location} is a directory of text files, which have no field {field!r}")
        return text_dir_part(label, location)
    files = sorted(glob.glob(str(location), recursive=True)) if glob.has_magic(str(location)) else [str(location)]
    files = [f for f in files if Path(f).is_file()]
    if not files:
        raise DataError(f"{label}: {path} does not exist (no file, directory or glob match)")
    for file in files:
        if not file.endswith(KNOWN_SUFFIXES):
            raise DataError(
                f"{label}: {file}: unknown format (expected a directory of text files, a save_to_disk directory, "
                f"or {', '.join(KNOWN_SUFFIXES)} files)"
            )
    renderer = Renderer(label, field or "text")
    origin = {
        "kind": "files",
        "path": str(location.resolve()) if not glob.has_magic(str(location)) else str(location),
        "what": f"user files, {'template' if renderer.is_template else 'field'} {renderer.field!r}",
        "files": len(files),
        "license": "user",
    }
    return Part(origin, lambda: _files_docs(label, [Path(f) for f in files], renderer))


def dataset_part(label: str, name: str, config: str | None, split: str, data_files: Any, field: str | None) -> Part:
    """A Hugging Face dataset by name, resolved offline from the local cache (memory-mapped, streamed row by row)."""
    renderer = Renderer(label, field or "text")
    origin = {
        "kind": "dataset",
        "dataset": name,
        "config": config,
        "split": split,
        "what": f"datasets.load_dataset, {'template' if renderer.is_template else 'field'} {renderer.field!r}",
        "license": "see the dataset card",
    }
    dataset = _load_cached_dataset(label, name, config, split, data_files)
    missing = [c for c in renderer.columns if c not in dataset.column_names]
    if missing:
        raise DataError(f"{label}: dataset {name}: no field {missing[0]!r} (have: {', '.join(dataset.column_names)})")

    def docs() -> Iterator[str]:
        for index, row in enumerate(dataset):
            if (text := renderer(row, f"dataset {name} row {index}")) is not None:
                yield text

    return Part(origin, docs)


def _load_cached_dataset(label: str, name: str, config: str | None, split: str, data_files: Any) -> Any:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets

    try:
        return datasets.load_dataset(name, config, split=split, data_files=data_files)
    except Exception as e:  # datasets raises many kinds (ConnectionError, FileNotFoundError, ValueError, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            f"{label}: dataset {name!r} (config {config}, split {split}) cannot be loaded offline from the local "
            f"cache ({first}); download it once with datasets.load_dataset on a machine with network, or give a path"
        ) from None


# ---- readers -----------------------------------------------------------------------------------------------------


def _files_docs(label: str, files: list[Path], renderer: Renderer) -> Iterator[str]:
    for file in files:
        rows = _jsonl_rows(label, file) if file.name.endswith(JSONL_SUFFIXES) else _table_rows(label, file)
        for where, row in rows:
            if (text := renderer(row, where)) is not None:
                yield text


def _open_text(file: Path) -> IO[str]:
    if file.name.endswith(".gz"):
        raw: IO[bytes] = gzip.open(file, "rb")
    elif file.name.endswith(".zst"):
        import zstandard

        raw = zstandard.ZstdDecompressor().stream_reader(file.open("rb"), closefd=True)
    else:
        raw = file.open("rb")
    return io.TextIOWrapper(io.BufferedReader(raw) if file.name.endswith(".zst") else raw, encoding="utf-8")


def _jsonl_rows(label: str, file: Path) -> Iterator[tuple[str, Any]]:
    line_number = 0
    try:
        with _open_text(file) as lines:
            for line_number, line in enumerate(lines, 1):
                if line.strip():
                    yield f"{file}:{line_number}", json.loads(line)
    except UnicodeDecodeError as e:
        raise DataError(f"{label}: {file}: not UTF-8 after line {line_number} ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{label}: {file}:{line_number + 1}: not a JSON line ({e.msg})") from None
    except (OSError, EOFError) as e:  # a corrupt .gz / .zst
        raise DataError(f"{label}: {file}: cannot be read ({e})") from None


def _table_rows(label: str, file: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow as pa

    row = 0
    try:
        for batch in _record_batches(file):
            for values in batch.to_pylist():
                yield f"{file} row {row}", values
                row += 1
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{label}: {file}: not a readable {file.suffix[1:]} file ({e})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{label}: {file}: not UTF-8 text near row {row} ({e.reason})") from None


def _record_batches(file: Path) -> Iterable[Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if file.suffix == ".parquet":
        yield from pq.ParquetFile(file).iter_batches(batch_size=ROWS_PER_BATCH)
        return
    with pa.memory_map(str(file)) as source:  # datasets writes the IPC stream format; others the file format
        try:
            reader = pa.ipc.open_stream(source)
        except pa.ArrowInvalid:
            source.seek(0)
            reader = pa.ipc.open_file(source)
            yield from (reader.get_batch(i) for i in range(reader.num_record_batches))
            return
        yield from reader


def _is_saved_dataset(directory: Path) -> bool:
    return (directory / "state.json").is_file() or (directory / "dataset_dict.json").is_file()


def _saved_dataset_part(label: str, directory: Path, renderer: Renderer) -> Part:
    """A `Dataset.save_to_disk` directory (or a DatasetDict's "train" split), read as its arrow files in order."""
    if (directory / "dataset_dict.json").is_file():
        splits = json.loads((directory / "dataset_dict.json").read_text()).get("splits", [])
        if "train" not in splits:
            raise DataError(f"{label}: {directory} is a DatasetDict without a train split (has: {splits})")
        directory = directory / "train"
    try:
        state = json.loads((directory / "state.json").read_text())
        files = [directory / entry["filename"] for entry in state["_data_files"]]
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise DataError(f"{label}: {directory}/state.json: not a datasets save_to_disk state ({e})") from None
    origin = {
        "kind": "saved_dataset",
        "path": str(directory.resolve()),
        "what": f"datasets save_to_disk, {'template' if renderer.is_template else 'field'} {renderer.field!r}",
        "files": len(files),
        "license": "user",
    }
    return Part(origin, lambda: _files_docs(label, files, renderer))
