"""Files that are either complete or absent: every write of a result, table, figure or log goes through here.

A writer writes a temp file beside the target and renames it over the target (atomic on POSIX), so a killed process
never leaves a half-written file that a later run would trust.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import yaml

# A name that becomes a file or directory name inside a directory we own (run, leaderboard, task result): letters,
# digits, '.', '_' and '-', not starting with a dot, so that it can neither climb out ("..", "/") nor hide.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
SAFE_NAME_RULE = "use letters, digits, '.', '_' or '-', starting with a letter or digit"


def is_safe_name(name: str) -> bool:
    return SAFE_NAME.fullmatch(name) is not None


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks (data shards and GGUF files run to gigabytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def temp_path(path: Path) -> Path:
    """A hidden sibling of `path` unique to this process; keeps the suffix (savefig infers the format from it)."""
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path to write; on success rename it over `path`, on failure remove it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the lock file `path` (created if missing, never removed) while the block runs.

    Processes doing the same work take turns: the second waits, then finds the first one's result. fcntl.flock
    locks belong to the open file, so the kernel releases them when the holder exits or is killed: a killed
    process never leaves a stale lock. Advisory: only code that takes the same lock waits."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def dump_json(obj: Any) -> str:
    """The one JSON layout of every file we write: sorted keys, 2-space indent, trailing newline."""
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


class Quoted(str):
    """A string dump_yaml writes in double quotes (a template, a path), as the task YAMLs written by hand do."""


class _TaskDumper(yaml.SafeDumper):
    """safe_dump in the layout of the task YAMLs in tasks/: a list indented under its key."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        return super().increase_indent(flow, False)


_TaskDumper.add_representer(Quoted, lambda dumper, s: dumper.represent_scalar("tag:yaml.org,2002:str", s, style='"'))


def dump_yaml(config: Mapping[str, Any], comments: list[str]) -> str:
    """A task YAML we write: `comments` as the leading `# ` lines, then `config` in the order given. A YAML library
    writes it, not string formatting: a string from a received file (a path, a name) stays one quoted scalar, so it
    cannot add a key or a `!function` tag. A comment stays on its line (line breaks and other whitespace in it become
    spaces)."""
    header = "".join(f"# {' '.join(line.split())}\n" for line in comments)
    body = yaml.dump(dict(config), Dumper=_TaskDumper, sort_keys=False, allow_unicode=True, width=1 << 16)
    return header + body


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, dump_json(obj))


def finite_json(value: Any) -> Any:
    """NaN/inf → None and numpy scalars → Python numbers, recursively: strict JSON that any reader accepts."""
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def record_problems(record: Any, key: Mapping[str, Any], schema: int, strings: tuple[str, ...] = ()) -> list[str]:
    """Why a stored JSON record cannot stand for `key`: not an object, a key field that differs, another schema
    version, a string field missing. Caches validate what they read with this first, then their own fields."""
    if not isinstance(record, dict):
        return ["not a JSON object"]
    found = [f"{f} is {record.get(f)!r}, expected {v!r}" for f, v in key.items() if record.get(f) != v]
    if record.get("schema") != schema:
        found.append(f"schema {record.get('schema')!r} is not {schema}")
    return found + [f"{f} missing" for f in strings if not isinstance(record.get(f), str)]


def read_json_object(path: Path, error: Callable[[str], Exception], what: str = "") -> dict[str, Any]:
    """The JSON object in `path`; otherwise error("<what><path>: ...") naming the file and what is wrong."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{what}{path}: unreadable JSON ({e})") from None
    if not isinstance(data, dict):
        raise error(f"{what}{path}: expected a JSON object")
    return data
