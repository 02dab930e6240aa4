"""`nexus-eval loss`: held-out and OOD loss of any checkpoint, measured on the harness's own data, cached.

Two units:
- nats per token on the trainer's fixed held-out windows (nexus_eval.training.heldout), when the checkpoint shares
  the data build's tokenizer: the loss matching uses;
- bits per byte on the raw val/OOD documents: comparable across tokenizers, for external models.

A measurement is cached per checkpoint content and data build (results/loss/<hash16>.<key16>.json, schema
MeasuredLoss), validated on read like the eval cache: a file that does not parse, lacks a field or is for another key
is measured again. A harness checkpoint needs no measurement for nats/token: its nexus.json holds the trainer's
held-out loss on the same windows (`checkpoint_loss`).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from nexus_eval.checkpoints import check_weight_files, content_hash, gguf_file, is_checkpoint, load_model, read_meta
from nexus_eval.data import load_manifest, read_docs
from nexus_eval.errors import CheckpointError, DataError, EvalError
from nexus_eval.io import finite_json, record_problems, write_json_atomic
from nexus_eval.schema import MEASURED_LOSS_SCHEMA, LossKey, MeasuredLoss
from nexus_eval.training.heldout import HeldOut, model_device

# Bump when what is measured changes (windows, documents, formula): older cache files then no longer match.
LOSS_VERSION = 2  # 2: the key holds max_context and mixture (one held-out set for every series of a comparison)
DEFAULT_LOSS_CACHE = Path("results/loss")
MAX_CONTEXT = 512

LossUnit = Literal["nats", "bpb"]
LossSource = Literal["nexus.json", "cache", "measured"]


@dataclass(frozen=True)
class LossLookup:
    """A measured loss and where it came from: the cache, or measured now (and cached)."""

    record: MeasuredLoss
    source: LossSource


@dataclass(frozen=True)
class LossValue:
    """One checkpoint's held-out loss in one unit, and where it came from."""

    value: float | None  # None: not finite (a diverged model)
    unit: LossUnit
    source: LossSource


# ---- measuring ---------------------------------------------------------------------------------------------------


TOKENS_PER_FORWARD = 2048  # windows scored together: a few per forward, logits of 2048 × vocab floats at most


@torch.no_grad()
def document_bits(model: Any, tokenizer: Any, texts: list[str], context: int) -> tuple[float, int]:
    """(Σ NLL in bits, Σ UTF-8 bytes) over documents, each scored in non-overlapping windows of `context` tokens.
    Windows of one length (every full one) are scored several per forward: one per forward cost a model call per
    `context` tokens, most of the time on a small model."""
    device = model_device(model)
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    by_length: dict[int, list[torch.Tensor]] = {}
    n_bytes = 0
    for text in texts:
        ids = torch.tensor([bos, *tokenizer(text, add_special_tokens=False)["input_ids"]], dtype=torch.long)
        for start in range(0, len(ids) - 1, context):
            window = ids[start : start + context + 1]
            if len(window) >= 2:
                by_length.setdefault(len(window), []).append(window)
        n_bytes += len(text.encode("utf-8"))
    nll_nats = 0.0
    for length, windows in sorted(by_length.items()):
        rows = max(1, TOKENS_PER_FORWARD // length)
        for first in range(0, len(windows), rows):
            batch = torch.stack(windows[first : first + rows]).to(device)
            logits = model(batch[:, :-1]).logits.float()
            nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="sum")
            nll_nats += float(nll)
    return nll_nats / math.log(2), n_bytes


def document_bits_per_byte(model: Any, tokenizer: Any, texts: list[str], context: int) -> float:
    """Σ NLL (bits) over Σ UTF-8 bytes of the documents."""
    bits, n_bytes = document_bits(model, tokenizer, texts, context)
    return bits / max(1, n_bytes)


def _tokenizer_vocab(tokenizer_json: Path) -> dict[str, int]:
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(tokenizer_json)).get_vocab(with_added_tokens=True)
    except Exception as e:  # tokenizers raises its own untyped Exception for a malformed file
        raise EvalError(f"{tokenizer_json}: unreadable tokenizer ({str(e).splitlines()[0]})") from None


_DATA_VOCAB: dict[str, dict[str, int]] = {}  # data tokenizer.json (resolved) → vocab, read once per process


def shares_data_tokenizer(ckpt: Path, data_dir: Path) -> bool:
    """Whether a checkpoint's tokenizer is the data build's (same vocabulary and ids), read from tokenizer.json
    without loading the model. A GGUF file, or a checkpoint without tokenizer.json, counts as another tokenizer."""
    own = Path(ckpt) / "tokenizer.json"
    if gguf_file(Path(ckpt)) is not None or not own.is_file():
        return False
    data_json = Path(data_dir) / load_manifest(data_dir)["tokenizer_dir"] / "tokenizer.json"
    key = str(data_json.resolve())
    if key not in _DATA_VOCAB:
        if not data_json.is_file():
            raise DataError(f"{data_json} missing: rebuild with `nexus-eval data build`")
        _DATA_VOCAB[key] = _tokenizer_vocab(data_json)
    return _tokenizer_vocab(own) == _DATA_VOCAB[key]


def measure_checkpoint(
    ckpt: Path,
    data_dir: Path,
    windows: int = 16,
    docs: int = 20,
    max_context: int = MAX_CONTEXT,
    mixture: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Everything `nexus-eval loss` reports, measured now: nats/token where the checkpoint shares the data's
    tokenizer (over `mixture`, else its recipe's, else every source alike), and bits per byte always (over every
    source of the build, so that every checkpoint is scored on the same bytes). Windows and document chunks are
    min(the model's context, max_context) tokens long: a comparison passes one max_context for all its series, so
    that no model is scored with more context than another."""
    manifest = load_manifest(data_dir)
    same_tokenizer = shares_data_tokenizer(ckpt, data_dir)
    model, tokenizer = load_model(ckpt)
    own_context = int(getattr(model.config, "max_position_embeddings", max_context) or max_context)
    context = min(own_context, max_context)
    meta = read_meta(ckpt)
    recipe_mixture = meta.get("recipe", {}).get("data", {}).get("mixture")
    mixture = mixture or recipe_mixture or {s: 1.0 for s in manifest["sources"]}
    result: dict[str, Any] = {
        "checkpoint": str(ckpt),
        "data_hash": manifest["hash"],
        "context": context,
        "same_tokenizer": same_tokenizer,
        "val_loss": None,
        "val_loss_per_source": {},
        "ood_loss": {},
    }
    if same_tokenizer:
        result.update(HeldOut(data_dir, mixture, context, windows).measure(model))
    val = {
        s: document_bits(model, tokenizer, read_docs(data_dir, "val", s)[:docs], context) for s in manifest["sources"]
    }
    ood = {d: document_bits(model, tokenizer, read_docs(data_dir, "ood", d)[:docs], context) for d in manifest["ood"]}
    result["val_bits_per_byte"] = {s: bits / max(1, n) for s, (bits, n) in sorted(val.items())}
    result["ood_bits_per_byte"] = {d: bits / max(1, n) for d, (bits, n) in sorted(ood.items())}
    result["bits_per_byte"] = sum(b for b, _ in val.values()) / max(1, sum(n for _, n in val.values()))
    return finite_json(result)


# ---- the cache ---------------------------------------------------------------------------------------------------


def loss_key(
    checkpoint_hash: str,
    data_hash: str,
    windows: int,
    docs: int,
    max_context: int = MAX_CONTEXT,
    mixture: dict[str, float] | None = None,
) -> LossKey:
    return LossKey(
        checkpoint_hash=checkpoint_hash,
        data_hash=data_hash,
        windows=windows,
        docs=docs,
        max_context=max_context,
        mixture=dict(sorted(mixture.items())) if mixture else None,
        loss_version=LOSS_VERSION,
    )


def loss_cache_path(cache_dir: Path, key: LossKey) -> Path:
    """cache_dir/<checkpoint hash 16>.<hash of the whole key 16>.json"""
    key_hash = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{key['checkpoint_hash'][:16]}.{key_hash}.json"


def _is_loss(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _is_loss_dict(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and _is_loss(v) for k, v in value.items())


def loss_problems(record: Any, key: LossKey) -> list[str]:
    """Why a stored measurement cannot be used for this key (empty when it can)."""
    found = record_problems(record, key, MEASURED_LOSS_SCHEMA, ("checkpoint", "created"))
    if not isinstance(record, dict):
        return found
    if not isinstance(record.get("context"), int) or not isinstance(record.get("same_tokenizer"), bool):
        found.append("context / same_tokenizer missing")
    if not _is_loss(record.get("val_loss")) or not _is_loss(record.get("bits_per_byte", "")):
        found.append("val_loss / bits_per_byte not numbers")
    dicts = ("val_loss_per_source", "ood_loss", "val_bits_per_byte", "ood_bits_per_byte")
    found += [f"{f} not a dict of numbers" for f in dicts if not _is_loss_dict(record.get(f))]
    if record.get("same_tokenizer") is True and not record.get("val_loss_per_source"):
        found.append("same tokenizer but no nats/token losses")
    return found


def read_cached_loss(path: Path, key: LossKey) -> MeasuredLoss | None:
    """The stored measurement, or None when there is none or it is corrupt, partial or for another key."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return None if loss_problems(record, key) else record


def measured_loss(
    ckpt: Path,
    data_dir: Path,
    windows: int = 16,
    docs: int = 20,
    cache_dir: Path = DEFAULT_LOSS_CACHE,
    max_context: int = MAX_CONTEXT,
    mixture: dict[str, float] | None = None,
) -> LossLookup:
    """The checkpoint's MeasuredLoss on this data build: from the cache, else measured now and cached.

    No lock: two processes measuring one checkpoint at once both write the same record atomically (a measurement
    takes seconds to minutes), and a refused input leaves nothing behind, not even a lock file."""
    if windows <= 0 or docs <= 0 or max_context <= 1:
        raise EvalError(f"--windows {windows} / --docs {docs}: must be positive (context {max_context}: above 1)")
    data_hash = load_manifest(data_dir)["hash"]
    if not is_checkpoint(Path(ckpt)):  # before hashing: a missing path is one line, not a traceback
        raise CheckpointError(f"{ckpt}: not a checkpoint (no config.json or .gguf file)")
    check_weight_files(Path(ckpt))
    key = loss_key(content_hash(ckpt), data_hash, windows, docs, max_context, mixture)
    path = loss_cache_path(cache_dir, key)
    if (cached := read_cached_loss(path, key)) is not None:
        return LossLookup(cached, "cache")
    measured = measure_checkpoint(ckpt, data_dir, windows, docs, max_context, mixture)
    created = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    record: MeasuredLoss = {**measured, **key, "schema": MEASURED_LOSS_SCHEMA, "created": created}  # type: ignore[typeddict-item]
    if problems := loss_problems(record, key):  # a bug, not bad input: never cache what a reader would refuse
        raise EvalError(f"{ckpt}: measured loss is malformed ({'; '.join(problems)})")
    write_json_atomic(path, record)
    return LossLookup(record, "measured")


def trainer_loss(ckpt: Path, data_hash: str) -> float | None:
    """The nats/token held-out loss a harness checkpoint's nexus.json records for this data build, else None."""
    meta = read_meta(ckpt)
    value = meta.get("heldout_loss")
    if meta.get("data_hash") != data_hash or not isinstance(value, int | float) or isinstance(value, bool):
        return None
    return float(value) if math.isfinite(value) else None


def checkpoint_loss(
    ckpt: Path,
    data_dir: Path,
    unit: LossUnit,
    windows: int = 16,
    docs: int = 20,
    cache_dir: Path = DEFAULT_LOSS_CACHE,
    trust_recorded: bool = True,
    max_context: int = MAX_CONTEXT,
    mixture: dict[str, float] | None = None,
) -> LossValue:
    """One checkpoint's held-out loss in `unit`: nats/token from nexus.json where the trainer recorded it on this
    data build (no model load) and `trust_recorded` (the caller knows the trainer's held-out set is the one asked
    for), else from the measured (cached) loss."""
    if trust_recorded and unit == "nats":
        if (recorded := trainer_loss(ckpt, load_manifest(data_dir)["hash"])) is not None:
            return LossValue(recorded, unit, "nexus.json")
    lookup = measured_loss(ckpt, data_dir, windows, docs, cache_dir, max_context, mixture)
    if unit == "nats" and not lookup.record["same_tokenizer"]:
        raise EvalError(f"{ckpt}: its tokenizer is not the data build's, so no nats/token loss; use bits per byte")
    value = lookup.record["val_loss"] if unit == "nats" else lookup.record["bits_per_byte"]
    return LossValue(value, unit, lookup.source)
