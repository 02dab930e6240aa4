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
from nexus_eval.data.sources import Source, default_ood, default_sources, gsm8k_test_questions, text_dir_part
from nexus_eval.data.store import sha256_file
from nexus_eval.data.tokenizer import EOS_TOKEN, MAX_VOCAB, MIN_VOCAB, PAD_TOKEN, encode_stream, train_tokenizer
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
    gsm8k_dir: Path = DEFAULT_GSM8K_DIR,
    max_chars_per_source: int = DEFAULT_MAX_CHARS_PER_SOURCE,
    max_chars_per_ood: int = DEFAULT_MAX_CHARS_PER_OOD,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    math_generated: int = DEFAULT_MATH_GENERATED,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Build the data dir at `out_dir` and return its manifest (also written as out_dir/manifest.json)."""
    _check_params(vocab_size, max_chars_per_source, max_chars_per_ood, val_fraction, math_generated)
    out_dir = Path(out_dir)
    _check_out(out_dir)
    # The user's sources first: a typo in a flag is reported before the default sources are looked for.
    user_sources, user_ood = _user_sources("--source", extra_sources), _user_sources("--ood", extra_ood)
    train_sources = default_sources(gsm8k_dir, math_generated, seed) + user_sources
    ood_sources = default_ood() + user_ood
    _check_unique_names(train_sources, ood_sources)
    test = gsm8k_test_questions(gsm8k_dir)
    is_contaminated = NgramIndex(test[1]) if test else None
    user_names = set(extra_sources or {})

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with progress_display(enabled=progress) as bar:
            seen: set[str] = set()
            collected, ood = [], []
            for source in train_sources:
                task = bar.add_task(f"read {source.name}", total=max_chars_per_source, info="")
                check = is_contaminated if source.name == "math" or source.name in user_names else None
                collected.append(
                    collect(source, max_chars_per_source, seen, check, lambda n, t=task: bar.advance(t, n))
                )
                bar.update(task, completed=max_chars_per_source)
            for source in ood_sources:
                task = bar.add_task(f"read ood {source.name}", total=max_chars_per_ood, info="")
                ood.append(collect(source, max_chars_per_ood, seen, None, lambda n, t=task: bar.advance(t, n)))
                bar.update(task, completed=max_chars_per_ood)
            for entry in collected + ood:
                if not entry.docs:
                    raise DataError(f"source {entry.name}: no documents read from {entry.origin}")

            splits = {c.name: _split(c, val_fraction) for c in collected}
            train_docs = [text for c in collected for text in splits[c.name]["train"]]
            task = bar.add_task("train tokenizer", total=1, info="")
            tokenizer = train_tokenizer(iter(train_docs), vocab_size, len(train_docs))
            tokenizer.save_pretrained(tmp / "tokenizer")
            bar.update(task, completed=1)

            sources_entry, ood_entry = {}, {}
            for c in collected:
                sources_entry[c.name] = _write_splits(tmp, tokenizer, c, splits[c.name], bar)
            for c in ood:
                ood_entry[c.name] = _write_splits(tmp, tokenizer, c, {"ood": [text for _, text in c.docs]}, bar)

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
            "vocab_size": len(tokenizer),
            "eos_token": EOS_TOKEN,
            "eos_id": tokenizer.eos_token_id,
            "pad_token": PAD_TOKEN,
            "pad_id": tokenizer.pad_token_id,
            "token_dtype": "uint16",
            "tokenizer_dir": "tokenizer",
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
    tmp: Path, tokenizer: PreTrainedTokenizerFast, collected: Collected, splits: dict[str, list[str]], bar: Progress
) -> dict:
    entry: dict = {"origin": collected.origin, "docs": {}, "chars": {}, "tokens": {}, "files": {}}
    for split, docs in splits.items():
        (tmp / split).mkdir(parents=True, exist_ok=True)
        task = bar.add_task(f"tokenize {split}/{collected.name}", total=1, info="")
        bin_path = tmp / split / f"{collected.name}.bin"
        entry["tokens"][split] = encode_stream(tokenizer, docs, bin_path)
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


def _user_sources(flag: str, specs: dict[str, Path] | None) -> list[Source]:
    return [Source(name, [text_dir_part(f"{flag} {name}={path}", Path(path))]) for name, path in (specs or {}).items()]


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
