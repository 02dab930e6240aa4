"""`nexus-eval data build`: sources → dedupe → hash split → BPE tokenizer → uint16 token streams + manifest.

Everything is written into a temporary sibling directory and renamed into place at the end, so a data dir is either
the old complete build or the new complete build. Same inputs and parameters give the same manifest hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from nexus_eval.data.collect import Collected, collect, in_val
from nexus_eval.data.contamination import NGRAM, NgramIndex
from nexus_eval.data.sources import Source, default_ood, default_sources, gsm8k_test_questions
from nexus_eval.data.spec import SourceSpec
from nexus_eval.data.store import sha256_file
from nexus_eval.data.tokenizer import (
    MAX_VOCAB,
    MIN_VOCAB,
    encode_stream,
    load_pretrained_tokenizer,
    token_dtype,
    train_tokenizer,
)
from nexus_eval.display import progress_display
from nexus_eval.errors import DataError

if TYPE_CHECKING:
    from rich.progress import Progress
    from transformers import PreTrainedTokenizerFast

MANIFEST_VERSION = 1
DEFAULT_GSM8K_DIR = Path("../shared/data/gsm8k")
DEFAULT_VOCAB_SIZE = 4096
DEFAULT_MAX_CHARS_PER_SOURCE = 12_000_000  # ≈ 3-4M tokens per training source at vocab 4096
DEFAULT_MAX_CHARS_PER_OOD = 1_200_000  # ≈ 300-400K tokens per OOD domain
DEFAULT_VAL_FRACTION = 0.08  # ≈ 200-300K validation tokens per default source
DEFAULT_MATH_GENERATED = 40_000  # with GSM8k train (3.7M chars) fills math to ≈ 3M tokens


def build_data(
    out_dir: Path,
    *,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    extra_sources: dict[str, Path] | None = None,
    extra_ood: dict[str, Path] | None = None,
    sources: list[SourceSpec] | None = None,
    builtin: bool | None = None,
    tokenizer: str | None = None,
    gsm8k_dir: Path = DEFAULT_GSM8K_DIR,
    max_chars_per_source: int = DEFAULT_MAX_CHARS_PER_SOURCE,
    max_chars_per_ood: int = DEFAULT_MAX_CHARS_PER_OOD,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    math_generated: int = DEFAULT_MATH_GENERATED,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Build the data dir at `out_dir` and return its manifest (also written as out_dir/manifest.json).

    `sources` (SourceSpecs from --source/--ood or a TOML spec) and `extra_sources`/`extra_ood` (NAME → directory of
    text files) add user corpora. `builtin` reads the built-in offline sources too; None means: unless `sources` is
    given (the CLI's --source/--ood add to the built-in ones, as they always did). `tokenizer` is a pretrained
    tokenizer's location (see load_pretrained_tokenizer); None trains a byte-level BPE of `vocab_size`."""
    _check_params(vocab_size, max_chars_per_source, max_chars_per_ood, val_fraction, math_generated)
    out_dir = Path(out_dir)
    _check_out(out_dir)
    user_specs = _dir_specs("--source", extra_sources, "train") + _dir_specs("--ood", extra_ood, "ood")
    user_specs += sources or []
    with_builtin = builtin if builtin is not None else not sources
    # The user's sources and tokenizer first: a typo is reported before the built-in sources are looked for.
    user_train = [(spec, Source(spec.name, [spec.part()])) for spec in user_specs if spec.role == "train"]
    user_ood = [(spec, Source(spec.name, [spec.part()])) for spec in user_specs if spec.role == "ood"]
    pretrained = load_pretrained_tokenizer(tokenizer) if tokenizer is not None else None
    builtin_train = default_sources(gsm8k_dir, math_generated, seed) if with_builtin else []
    builtin_ood = default_ood() if with_builtin else []
    train_sources = [(None, s) for s in builtin_train] + user_train
    ood_sources = [(None, s) for s in builtin_ood] + user_ood
    if not train_sources:
        raise DataError("no training source: give --source/--spec sources with role train, or keep the built-in ones")
    _check_unique_names([s for _, s in train_sources], [s for _, s in ood_sources])
    test = gsm8k_test_questions(gsm8k_dir)
    is_contaminated = NgramIndex(test[1]) if test else None
    user_names = {spec.name for spec, _ in user_train}
    caps = {s.name: (spec.max_chars if spec and spec.max_chars else max_chars_per_source) for spec, s in train_sources}
    caps |= {s.name: (spec.max_chars if spec and spec.max_chars else max_chars_per_ood) for spec, s in ood_sources}
    token_budgets = {spec.name: spec.max_tokens for spec, _ in user_train if spec.max_tokens}

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with progress_display(enabled=progress) as bar:
            seen: set[str] = set()
            collected, ood = [], []
            for _, source in train_sources:
                cap = caps[source.name]
                task = bar.add_task(f"read {source.name}", total=cap, info="")
                check = is_contaminated if source.name == "math" or source.name in user_names else None
                collected.append(collect(source, cap, seen, check, lambda n, t=task: bar.advance(t, n)))
                bar.update(task, completed=cap)
            for _, source in ood_sources:
                cap = caps[source.name]
                task = bar.add_task(f"read ood {source.name}", total=cap, info="")
                ood.append(collect(source, cap, seen, None, lambda n, t=task: bar.advance(t, n)))
                bar.update(task, completed=cap)
            for entry in collected + ood:
                if not entry.docs:
                    raise DataError(f"source {entry.name}: no documents read from {_origin_label(entry.origin)}")

            splits = {c.name: _split(c, val_fraction) for c in collected}
            if pretrained is None:
                train_docs = [text for c in collected for text in splits[c.name]["train"]]
                task = bar.add_task("train tokenizer", total=1, info="")
                tokenizer_used = train_tokenizer(iter(train_docs), vocab_size, len(train_docs))
                bar.update(task, completed=1)
            else:
                tokenizer_used = pretrained
            tokenizer_used.save_pretrained(tmp / "tokenizer")
            dtype = token_dtype(len(tokenizer_used))

            sources_entry, ood_entry = {}, {}
            for c in collected:
                budget = token_budgets.get(c.name)
                sources_entry[c.name] = _write_splits(tmp, tokenizer_used, c, splits[c.name], bar, dtype, budget)
            for c in ood:
                docs = {"ood": [text for _, text in c.docs]}
                ood_entry[c.name] = _write_splits(tmp, tokenizer_used, c, docs, bar, dtype, None)

        manifest = {
            "version": MANIFEST_VERSION,
            "params": {
                "vocab_size": vocab_size,
                "max_chars_per_source": max_chars_per_source,
                "max_chars_per_ood": max_chars_per_ood,
                "val_fraction": val_fraction,
                "math_generated": math_generated,
                "seed": seed,
            },
            "vocab_size": len(tokenizer_used),
            "eos_token": tokenizer_used.eos_token,
            "eos_id": tokenizer_used.eos_token_id,
            "pad_token": tokenizer_used.pad_token,
            "pad_id": tokenizer_used.pad_token_id,
            "token_dtype": dtype,
            "tokenizer_dir": "tokenizer",
            "tokenizer": {"kind": "pretrained", "location": str(Path(tokenizer).resolve())}
            if tokenizer is not None
            else {"kind": "bpe", "trained_on": "the train split of the training sources"},
            "user_sources": {spec.name: spec.params() | {"label": spec.label} for spec in user_specs},
            "sources": sources_entry,
            "ood": ood_entry,
            "contamination": {
                "reference": str(test[0].resolve()) if test else None,
                "reference_sha256": hashlib.sha256(test[0].read_bytes()).hexdigest() if test else None,
                "method": f"{NGRAM}-word n-gram overlap with GSM8k test questions; matching documents dropped",
                "checked_sources": [c.name for c in collected if c.name == "math" or c.name in user_names]
                if test
                else [],
                "dropped_docs": {c.name: c.contaminated for c in collected},
            },
            "duplicates_dropped": {c.name: c.duplicates for c in collected + ood},
            "files": {str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()},
        }
        if not with_builtin:  # a default build's params (and so its hash) stay as they were before this key
            manifest["params"]["builtin"] = False
        manifest["hash"] = content_hash(manifest)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def content_hash(manifest: dict) -> str:
    """sha256 over the build parameters and every written file's sha256: the same content gives the same hash,
    wherever the inputs were read from (absolute paths in the origins do not enter it)."""
    body = {"version": manifest["version"], "params": manifest["params"], "files": manifest["files"]}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _split(collected: Collected, val_fraction: float) -> dict[str, list[str]]:
    split: dict[str, list[str]] = {"train": [], "val": []}
    for digest, text in collected.docs:
        split["val" if in_val(digest, val_fraction) else "train"].append(text)
    if not split["train"] or not split["val"]:
        raise DataError(
            f"source {collected.name}: {len(collected.docs)} documents give an empty train or val split; "
            "raise --max-chars-per-source or --val-fraction"
        )
    return split


def _write_splits(
    tmp: Path,
    tokenizer: PreTrainedTokenizerFast,
    collected: Collected,
    splits: dict[str, list[str]],
    bar: Progress,
    dtype: str,
    train_budget: int | None,
) -> dict:
    entry: dict = {"origin": collected.origin, "docs": {}, "chars": {}, "tokens": {}, "files": {}}
    for split, docs in splits.items():
        (tmp / split).mkdir(parents=True, exist_ok=True)
        task = bar.add_task(f"tokenize {split}/{collected.name}", total=1, info="")
        bin_path = tmp / split / f"{collected.name}.bin"
        budget = train_budget if split == "train" else None
        entry["tokens"][split], written = encode_stream(tokenizer, docs, bin_path, dtype=dtype, max_tokens=budget)
        docs = docs[:written]  # a token budget stops at the document that reaches it
        entry["docs"][split] = len(docs)
        entry["chars"][split] = sum(len(d) for d in docs)
        entry["files"][split] = str(bin_path.relative_to(tmp))
        if split != "train":  # raw text for bits-per-byte and lm-eval loglikelihood_rolling
            jsonl = tmp / split / f"{collected.name}.jsonl"
            jsonl.write_text(
                "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8"
            )
            entry["files"][f"{split}_jsonl"] = str(jsonl.relative_to(tmp))
        bar.update(task, completed=1)
    return entry


def _origin_label(origins: list[dict]) -> str:
    return ", ".join(str(o.get("path") or o.get("dataset") or o.get("package") or o.get("kind")) for o in origins)


def _dir_specs(flag: str, directories: dict[str, Path] | None, role: str) -> list[SourceSpec]:
    """NAME → directory of text files (the older keyword form of --source/--ood) as SourceSpecs."""
    return [
        SourceSpec(name, role, path=str(path), label=f"{flag} {name}={path}")  # type: ignore[arg-type]
        for name, path in (directories or {}).items()
    ]


def _check_unique_names(train_sources: list[Source], ood_sources: list[Source]) -> None:
    names = [s.name for s in train_sources + ood_sources]
    for name in names:
        if names.count(name) > 1:
            raise DataError(f"--source/--ood {name}: the name is already used by another source or OOD domain")


def _check_out(out_dir: Path) -> None:
    """--out must be a directory we may replace: absent, empty, or an earlier data build."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out {out_dir}: is a file, not a directory; pick another path")
    if out_dir.exists() and not (out_dir / "manifest.json").is_file() and any(out_dir.iterdir()):
        raise DataError(f"--out {out_dir}: exists and is not a data build (no manifest.json); pick another directory")
    if out_dir.parent.exists() and not out_dir.parent.is_dir():
        raise DataError(f"--out {out_dir}: {out_dir.parent} is a file, not a directory")


def _check_params(vocab: int, max_source: int, max_ood: int, val_fraction: float, math_generated: int) -> None:
    if not MIN_VOCAB <= vocab <= MAX_VOCAB:  # checked here too: the tokenizer is trained after minutes of reading
        raise DataError(f"--vocab-size {vocab}: must be between {MIN_VOCAB} and {MAX_VOCAB} (uint16 token ids)")
    if max_source < 1000:
        raise DataError(f"--max-chars-per-source {max_source}: must be at least 1000")
    if max_ood < 1000:
        raise DataError(f"--max-chars-per-ood {max_ood}: must be at least 1000")
    if not 0 < val_fraction < 0.5:
        raise DataError(f"--val-fraction {val_fraction}: must be in (0, 0.5)")
    if math_generated < 0:
        raise DataError(f"--math-generated {math_generated}: must be >= 0")


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    """Swap the finished build into place: at no moment is `out_dir` a partial build."""
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)
