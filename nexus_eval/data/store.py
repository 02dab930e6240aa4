"""Read a finished data build: manifest, tokenizer, token memmaps and raw validation/OOD documents."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nexus_eval.errors import DataError
from nexus_eval.io import sha256_file

if TYPE_CHECKING:  # transformers takes a second to import: only load_tokenizer needs it
    from transformers import PreTrainedTokenizerFast

SPLITS = ("train", "val", "ood")
# The names `data build` gives sources and OOD domains (spec.py checks every name it is given against it): they become
# file names, task names and lines of task YAML, so a manifest from elsewhere is held to the same rule when read.
NAME_PATTERN = r"[a-z][a-z0-9_]{0,31}"
NAME_RULE = "[a-z][a-z0-9_]*, ≤ 32 characters"
# What every reader of a manifest relies on (data build writes them all): checked once, where the manifest is read.
MANIFEST_KEYS = {
    "version": int,
    "vocab_size": int,
    "eos_id": int,
    "tokenizer_dir": str,
    "sources": dict,
    "ood": dict,
    "files": dict,
    "hash": str,
}
TOKEN_DTYPES = ("uint16", "uint32")  # manifest "token_dtype"; a build from before the key stored uint16


def load_manifest(data_dir: Path) -> dict:
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        raise DataError(f"{path} missing: run `nexus-eval data build`")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e}); rebuild with `nexus-eval data build`") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{path}: not a data build manifest (a JSON object); rebuild with `nexus-eval data build`")
    for key, kind in MANIFEST_KEYS.items():
        if not isinstance(manifest.get(key), kind):
            raise DataError(
                f"{path}: not a data build manifest (key {key!r} missing or not of type {kind.__name__}); "
                "rebuild with `nexus-eval data build`"
            )
    for group, kind in (("sources", "training source"), ("ood", "OOD domain")):
        if bad := next((name for name in manifest[group] if not re.fullmatch(NAME_PATTERN, name)), None):
            raise DataError(
                f"{path}: {kind} name {bad!r} is not one `nexus-eval data build` writes ({NAME_RULE}); "
                "refused: names become file and task names"
            )
    return manifest


def train_source_names(manifest: dict) -> list[str]:
    """Training sources in build order (text, math, code, then any --source)."""
    return list(manifest["sources"])


def ood_names(manifest: dict) -> list[str]:
    return list(manifest["ood"])


def _entry(data_dir: Path, split: str, name: str) -> dict:
    if split not in SPLITS:
        raise DataError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    manifest = load_manifest(data_dir)
    group = manifest["ood"] if split == "ood" else manifest["sources"]
    if name not in group:
        kind = "OOD domain" if split == "ood" else "training source"
        raise DataError(f"{name!r} is not a {kind} of {data_dir}/manifest.json (have: {', '.join(group)})")
    return group[name]


# Files whose sha256 matched the manifest in this process: (resolved path, size, mtime) → checked. Hashing reads the
# whole file (≈ 1 s per GB): nothing at demo size (a few MB), seconds per process for a multi-GB build, paid once per
# file and process; a file changed since (new size or mtime) is hashed again.
_VERIFIED: set[tuple[str, int, int]] = set()


def verified_file(data_dir: Path, relative: str) -> Path:
    """data_dir/relative after checking it against manifest.json: present, and its sha256 the one the build
    recorded (once per process and file). A file truncated, replaced or edited since the build would otherwise train
    or measure silently under the intact build's data hash."""
    manifest = load_manifest(data_dir)
    path = Path(data_dir) / relative
    if not path.is_file():
        raise DataError(f"{path} missing: rebuild with `nexus-eval data build`")
    expected = manifest["files"].get(relative)
    if expected is None:
        raise DataError(f"{path}: not listed in {data_dir}/manifest.json; rebuild with `nexus-eval data build`")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _VERIFIED:
        if sha256_file(path) != expected:
            raise DataError(
                f"{path}: content differs from its sha256 in {data_dir}/manifest.json (changed or corrupted since "
                "the build); rebuild with `nexus-eval data build`"
            )
        _VERIFIED.add(key)
    return path


def token_dtype_of(data_dir: Path) -> np.dtype:
    """The dtype the build stored its token ids in (uint16 or uint32, from the vocabulary size)."""
    name = load_manifest(data_dir).get("token_dtype", "uint16")
    if name not in TOKEN_DTYPES:
        raise DataError(f"{data_dir}/manifest.json: token_dtype {name!r} is not one of {', '.join(TOKEN_DTYPES)}")
    return np.dtype(name)


def open_tokens(data_dir: Path, split: str, name: str) -> np.memmap | ShardedTokens:
    """Read-only token stream of one source/domain (uint16 or uint32, as the manifest records); documents are
    separated by the eos id. One shard: a np.memmap; several: a ShardedTokens view over their memmaps.

    Each shard's size is checked against the manifest's token count on every open (a truncated file, even to an odd
    number of bytes, is a DataError naming it), its content against the manifest's sha256 once per process."""
    entry = _entry(data_dir, split, name)
    dtype = token_dtype_of(data_dir)
    shards = (entry.get("shards") or {}).get(split) or [
        {"file": entry["files"][split], "tokens": entry["tokens"][split]}
    ]
    maps = [_open_shard(data_dir, shard["file"], int(shard["tokens"]), dtype) for shard in shards]
    return maps[0] if len(maps) == 1 else ShardedTokens(maps)


def _open_shard(data_dir: Path, relative: str, tokens: int, dtype: np.dtype) -> np.memmap:
    path = Path(data_dir) / relative
    if not path.is_file():
        raise DataError(f"{path} missing: rebuild with `nexus-eval data build`")
    if (size := path.stat().st_size) != tokens * dtype.itemsize:
        raise DataError(
            f"{path}: {size} bytes, but {data_dir}/manifest.json lists {tokens} {dtype.name} tokens "
            f"({tokens * dtype.itemsize} bytes): truncated or replaced since the build; "
            "rebuild with `nexus-eval data build`"
        )
    verified_file(data_dir, relative)
    if tokens == 0:  # np.memmap refuses an empty file
        return np.zeros(0, dtype=dtype)  # type: ignore[return-value]
    return np.memmap(path, dtype=dtype, mode="r")


class ShardedTokens:
    """The shards of one token stream read as one sequence: len() and [a:b] (step 1) give a numpy array, reading
    only the shards the slice covers; np.asarray() reads the whole stream."""

    def __init__(self, shards: list[np.ndarray]) -> None:
        self.shards = shards
        self.starts = np.cumsum([0] + [len(s) for s in shards])
        self.dtype = shards[0].dtype

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, key: slice | int) -> np.ndarray | np.integer:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise IndexError("ShardedTokens takes slices with step 1 only")
            return self._range(start, max(start, stop))
        index = int(key) + (len(self) if int(key) < 0 else 0)
        if not 0 <= index < len(self):
            raise IndexError(f"token index {key} out of range for {len(self)} tokens")
        shard = int(np.searchsorted(self.starts, index, side="right")) - 1
        return self.shards[shard][index - self.starts[shard]]

    def _range(self, start: int, stop: int) -> np.ndarray:
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        parts = []
        shard = first
        while start < stop and shard < len(self.shards):
            offset = int(self.starts[shard])
            end = min(stop, int(self.starts[shard + 1]))
            parts.append(np.asarray(self.shards[shard][start - offset : end - offset]))
            start, shard = end, shard + 1
        return np.concatenate(parts) if parts else np.zeros(0, dtype=self.dtype)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self._range(0, len(self))
        return whole if dtype is None else whole.astype(dtype)


def read_docs(data_dir: Path, split: str, name: str) -> list[str]:
    """Raw text documents of a val or OOD split (the .jsonl written beside the tokens), checked like the tokens."""
    if split == "train":
        raise DataError("raw documents are kept for the val and ood splits only, not train")
    path = verified_file(data_dir, _entry(data_dir, split, name)["files"][f"{split}_jsonl"])
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line]


def load_tokenizer(data_dir: Path) -> PreTrainedTokenizerFast:
    manifest = load_manifest(data_dir)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = Path(data_dir) / manifest["tokenizer_dir"]
    if not (path / "tokenizer.json").is_file():
        raise DataError(f"{path}/tokenizer.json missing: rebuild with `nexus-eval data build`")
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(path))
