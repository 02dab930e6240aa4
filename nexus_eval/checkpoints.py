"""Checkpoints: Hugging Face model directories plus `nexus.json`, written atomically, found and loaded by path.

The checkpoint format is the contract between stages (training writes it; evaluation, geometry and comparison read
it), so it lives beside the other shared modules rather than inside one stage. The trainer's resume logic lives in
nexus_eval.training.

A checkpoint directory holds what `AutoModelForCausalLM.from_pretrained` and vLLM read (config.json,
model.safetensors, tokenizer files) and `nexus.json` (run id, optimizer, seed, step, tokens seen, held-out and OOD
loss, recipe and data hashes, code version). The trainer's state for resuming lives in `optimizer/state.pt`, a
subdirectory so that weight loaders never mistake it for weights.

External checkpoints are any HF model directory (no nexus.json), or a GGUF file / a directory holding one. A GGUF
file becomes an HF directory that vLLM loads too with `nexus-eval checkpoints import-gguf` (checkpoints_gguf.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from nexus_eval.errors import CheckpointError
from nexus_eval.io import dump_json
from nexus_eval.schema import CheckpointMeta

META_FILE = "nexus.json"
IMPORT_FILE = "gguf_import.json"  # where an imported checkpoint came from (nexus_eval.checkpoints_gguf)
STATE_FILE = "optimizer/state.pt"
CKPT_PREFIX = "ckpt-"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
# Files that determine what a model computes: the content hash (eval cache key) covers exactly these.
CONTENT_SUFFIXES = (".json", ".safetensors", ".bin", ".model", ".gguf", ".txt")


def checkpoint_name(step: int) -> str:
    return f"{CKPT_PREFIX}{step:06d}"


def gguf_file(path: Path) -> Path | None:
    """The GGUF file a path stands for: the file itself, or the single .gguf inside a directory."""
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir():
        found = sorted(path.glob("*.gguf"))
        if len(found) == 1 and not (path / "config.json").exists():
            return found[0]
    return None


def is_checkpoint(path: Path) -> bool:
    return (path.is_dir() and (path / "config.json").exists()) or gguf_file(path) is not None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (half-written temp dirs are never named ckpt-*)."""
    return sorted(p for p in run_dir.glob(f"{CKPT_PREFIX}*") if p.is_dir() and (p / META_FILE).exists())


def resolve_checkpoints(paths: list[Path]) -> list[Path]:
    """Expand run directories into their checkpoints; keep checkpoint paths as they are."""
    found: list[Path] = []
    for path in paths:
        if not path.exists():
            raise CheckpointError(f"{path}: no such checkpoint or run directory")
        if is_checkpoint(path):
            found.append(path)
        elif ckpts := list_checkpoints(path):
            found.extend(ckpts)
        else:
            raise CheckpointError(
                f"{path}: not a checkpoint (no config.json or .gguf) and not a run directory (no ckpt-*)"
            )
    return found


def read_meta(ckpt: Path) -> CheckpointMeta | dict[str, Any]:
    """nexus.json of one of our checkpoints; {} for an external model."""
    meta_path = ckpt / META_FILE
    if not meta_path.exists():
        return {}
    try:
        return json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{meta_path}: corrupt checkpoint metadata ({e})") from None


def content_hash(ckpt: Path) -> str:
    """sha256 over the files that define the model (weights, config, tokenizer), not metadata (nexus.json,
    gguf_import.json) or optimizer state."""
    digest = hashlib.sha256()
    if (gguf := gguf_file(ckpt)) is not None:
        files = [gguf]
    else:
        files = sorted(
            p
            for p in ckpt.iterdir()
            if p.is_file() and p.suffix in CONTENT_SUFFIXES and p.name not in (META_FILE, IMPORT_FILE)
        )
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def check_weight_files(ckpt: Path) -> None:
    """CheckpointError naming the file when a safetensors weight file of `ckpt` is truncated or corrupt: its header
    must parse and cover the whole file. Reads the headers only; every loader calls it first, because the loaders'
    own errors for such a file are tracebacks."""
    from safetensors import SafetensorError, safe_open

    for path in sorted(ckpt.glob("*.safetensors")) if ckpt.is_dir() else []:
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path}: unreadable weights ({e}): the checkpoint is truncated or corrupt") from None


def non_finite_weights(ckpt: Path) -> list[str]:
    """Names of the tensors in a checkpoint's safetensors files that hold NaN or inf (a diverged run's weights).
    Other formats (GGUF, .bin) are not read here."""
    import torch
    from safetensors import safe_open

    check_weight_files(ckpt)
    bad = []
    for path in sorted(ckpt.glob("*.safetensors")) if ckpt.is_dir() else []:
        with safe_open(str(path), framework="pt") as weights:
            for name in weights.keys():  # safe_open is not a mapping: keys() it is
                tensor = weights.get_tensor(name)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    bad.append(name)
    return bad


def save_checkpoint(ckpt: Path, model: Any, tokenizer: Any, meta: CheckpointMeta, state: dict[str, Any] | None) -> Path:
    """Write the checkpoint into a temp dir, then rename it into place: a killed run leaves no half checkpoint."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per shard write would break our own progress display
    tmp = ckpt.with_name(f".{ckpt.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if state is not None:
        (tmp / STATE_FILE).parent.mkdir()
        torch.save(state, tmp / STATE_FILE)
    (tmp / META_FILE).write_text(dump_json(meta))
    if ckpt.exists():
        shutil.rmtree(ckpt)
    os.replace(tmp, ckpt)
    return ckpt


def load_model(ckpt: Path, dtype: str = "float32") -> tuple[Any, Any]:
    """(model, tokenizer) of our or an external checkpoint, with checks that name the file at fault."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # transformers' "Loading weights" bar would break our own progress display
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    gguf = gguf_file(ckpt)
    if gguf is None and not (ckpt / "config.json").exists():
        raise CheckpointError(f"{ckpt}: not a checkpoint (no config.json or .gguf file)")
    if gguf is None and not any((ckpt / name).exists() for name in TOKENIZER_FILES):
        raise CheckpointError(f"{ckpt}: checkpoint has no tokenizer ({' / '.join(TOKENIZER_FILES)})")
    check_weight_files(ckpt)
    kwargs: dict[str, Any] = {"gguf_file": gguf.name} if gguf is not None else {}
    where = gguf.parent if gguf is not None else ckpt
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=getattr(torch, dtype), **kwargs)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{ckpt}: cannot load checkpoint ({str(e).splitlines()[0]})") from None
    vocab = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > vocab:
        raise CheckpointError(f"{ckpt}: tokenizer has {len(tokenizer)} tokens but the model's vocabulary is {vocab}")
    model.eval()
    return model, tokenizer


__all__ = [
    "CKPT_PREFIX",
    "IMPORT_FILE",
    "META_FILE",
    "STATE_FILE",
    "TOKENIZER_FILES",
    "check_weight_files",
    "checkpoint_name",
    "content_hash",
    "gguf_file",
    "is_checkpoint",
    "list_checkpoints",
    "load_model",
    "non_finite_weights",
    "read_meta",
    "resolve_checkpoints",
    "save_checkpoint",
]
