"""Read a finished data build: manifest, tokenizer, token memmaps and raw validation/OOD documents."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nexus_eval.errors import DataError

if TYPE_CHECKING:  # transformers takes a second to import: only load_tokenizer needs it
    from transformers import PreTrainedTokenizerFast

SPLITS = ("train", "val", "ood")


def load_manifest(data_dir: Path) -> dict:
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        raise DataError(f"{path} missing: run `nexus-eval data build`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e}); rebuild with `nexus-eval data build`") from None


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


def open_tokens(data_dir: Path, split: str, name: str) -> np.memmap:
    """Read-only uint16 token stream of one source/domain; documents are separated by the eos id."""
    path = Path(data_dir) / _entry(data_dir, split, name)["files"][split]
    if not path.is_file():
        raise DataError(f"{path} missing: rebuild with `nexus-eval data build`")
    return np.memmap(path, dtype=np.uint16, mode="r")


def read_docs(data_dir: Path, split: str, name: str) -> list[str]:
    """Raw text documents of a val or OOD split (the .jsonl written beside the tokens)."""
    if split == "train":
        raise DataError("raw documents are kept for the val and ood splits only, not train")
    path = Path(data_dir) / _entry(data_dir, split, name)["files"][f"{split}_jsonl"]
    if not path.is_file():
        raise DataError(f"{path} missing: rebuild with `nexus-eval data build`")
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line]


def load_tokenizer(data_dir: Path) -> PreTrainedTokenizerFast:
    manifest = load_manifest(data_dir)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = Path(data_dir) / manifest["tokenizer_dir"]
    if not (path / "tokenizer.json").is_file():
        raise DataError(f"{path}/tokenizer.json missing: rebuild with `nexus-eval data build`")
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(path))
