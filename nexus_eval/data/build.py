"""`nexus-eval data build`: sources → dedupe → hash split → tokenizer → token shards + manifest, streaming.

Phases, each resumable: (1) read every source once, streaming its documents through cleaning, exact dedup (across
sources) and decontamination, into a train spill file and the final val/ood .jsonl files; (2) train the BPE
tokenizer on the spilled train documents; (3) encode every split into fixed-size shards (`num_proc` workers). A
pretrained tokenizer is saved first instead, and the documents are encoded while they are read (token spills, so
the encoder works while the reader screens); phase 3 then only cuts the spilled tokens into shards. Memory holds a
few batches of documents and the dedup table, never a corpus.

Everything is written into `.<out>.building` beside `out` and renamed into place at the end, so a data dir is either
the old complete build or the new complete build. A build killed mid-way leaves that directory with its journal
(completed sources, tokenizer, completed shards); the same command run again resumes from it. Bad input (a
NexusError) removes it. Same inputs and parameters give the same bytes and manifest hash, for any `num_proc`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict
from itertools import islice
from pathlib import Path
from typing import Any

from nexus_eval.data.collect import Collected, SeenHashes, collect, in_val
from nexus_eval.data.contamination import NGRAM, Documents, NgramIndex, TaskNgrams
from nexus_eval.data.shards import (
    DEFAULT_SHARD_TOKENS,
    Encoder,
    ShardRecord,
    TokenSpill,
    as_dicts,
    from_dicts,
    has_token_spill,
    read_jsonl_docs,
    spilled,
    spilled_chars,
    write_shards,
)
from nexus_eval.data.sources import Source, default_ood, default_sources, gsm8k_test_questions
from nexus_eval.data.spec import SourceSpec
from nexus_eval.data.tokenizer import MAX_VOCAB, MIN_VOCAB, load_pretrained_tokenizer, token_dtype, train_tokenizer
from nexus_eval.display import progress_display
from nexus_eval.errors import DataError, NexusError
from nexus_eval.io import dump_json, sha256_file, write_json_atomic

MANIFEST_VERSION = 1
DEFAULT_GSM8K_DIR = Path("../shared/data/gsm8k")
DEFAULT_VOCAB_SIZE = 4096
DEFAULT_MAX_CHARS_PER_SOURCE = 12_000_000  # ≈ 3-4M tokens per training source at vocab 4096
DEFAULT_MAX_CHARS_PER_OOD = 1_200_000  # ≈ 300-400K tokens per OOD domain
DEFAULT_VAL_FRACTION = 0.08  # ≈ 200-300K validation tokens per default source
DEFAULT_MATH_GENERATED = 40_000  # with GSM8k train (3.7M chars) fills math to ≈ 3M tokens
CHARS_PER_TOKEN_BOUND = 8  # more characters per token than any subword tokenizer averages on text
WORK_FILES = ("journal.json", "spill")  # in the building dir only: removed before the build is hashed


# What a build records of its parameters (manifest "params", below): numbers and a flag, no path. `leaderboard
# reproduce` builds again from these alone and refuses any other key.
RECORDED_PARAMS: dict[str, type] = {
    "vocab_size": int,
    "max_chars_per_source": int,
    "max_chars_per_ood": int,
    "val_fraction": float,
    "math_generated": int,
    "seed": int,
    "builtin": bool,
    "shard_tokens": int,
}


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
    tasks_dir: Path | None = None,
    max_chars_per_source: int = DEFAULT_MAX_CHARS_PER_SOURCE,
    max_chars_per_ood: int = DEFAULT_MAX_CHARS_PER_OOD,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    math_generated: int = DEFAULT_MATH_GENERATED,
    seed: int = 0,
    num_proc: int = 1,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    progress: bool = True,
) -> dict:
    """Build the data dir at `out_dir` and return its manifest (also written as out_dir/manifest.json).

    `sources` (SourceSpecs from --source/--ood or a TOML spec) and `extra_sources`/`extra_ood` (NAME → directory of
    text files) add user corpora. `builtin` reads the built-in offline sources too; None means: unless `sources` is
    given. `tokenizer` is a pretrained tokenizer's location (see load_pretrained_tokenizer); None trains a
    byte-level BPE of `vocab_size`. `tasks_dir` (the CLI passes tasks/): every evaluation item under it is looked
    for in every source (13-gram overlap, counted per task); overlapping documents of user sources are dropped."""
    _check_params(vocab_size, max_chars_per_source, max_chars_per_ood, val_fraction, math_generated, num_proc)
    if shard_tokens < 1:
        raise DataError(f"--shard-tokens {shard_tokens}: must be positive")
    out_dir = Path(out_dir)
    _check_out(out_dir)
    user_specs = _dir_specs("--source", extra_sources, "train") + _dir_specs("--ood", extra_ood, "ood")
    user_specs += sources or []
    with_builtin = builtin if builtin is not None else not sources
    # The user's sources and tokenizer first: a typo is reported before the built-in sources are looked for.
    user = [(spec, Source(spec.name, [spec.part()])) for spec in user_specs]
    pretrained = load_pretrained_tokenizer(tokenizer) if tokenizer is not None else None
    plan = [(None, s, "train") for s in (default_sources(gsm8k_dir, math_generated, seed) if with_builtin else [])]
    plan += [(spec, s, "train") for spec, s in user if spec.role == "train"]
    plan += [(None, s, "ood") for s in (default_ood() if with_builtin else [])]
    plan += [(spec, s, "ood") for spec, s in user if spec.role == "ood"]
    if not any(role == "train" for _, _, role in plan):
        raise DataError("no training source: give --source/--spec sources with role train, or keep the built-in ones")
    _check_unique_names([s.name for _, s, _ in plan])
    test = gsm8k_test_questions(gsm8k_dir)
    gsm8k_index = NgramIndex(test[1]) if test else None
    task_index = TaskNgrams(Path(tasks_dir)) if tasks_dir is not None and Path(tasks_dir).is_dir() else None
    user_names = {spec.name for spec, _, _ in plan if spec is not None}
    params = {
        "vocab_size": vocab_size,
        "max_chars_per_source": max_chars_per_source,
        "max_chars_per_ood": max_chars_per_ood,
        "val_fraction": val_fraction,
        "math_generated": math_generated,
        "seed": seed,
    }
    if not with_builtin:  # a default build's params (and so its hash) stay as they were before this key
        params["builtin"] = False
    if shard_tokens != DEFAULT_SHARD_TOKENS:
        params["shard_tokens"] = shard_tokens

    def checker(name: str, role: str) -> Callable[[list[str]], list[list[str]]]:
        """What a source's documents are checked against: for each document of a batch, the references it
        overlaps."""
        drop_gsm8k = gsm8k_index is not None and role == "train" and (name == "math" or name in user_names)

        def check(texts: list[str]) -> list[list[str]]:
            if not drop_gsm8k and task_index is None:
                return [[] for _ in texts]
            documents = Documents(texts)  # words and n-gram hashes once, for both indexes
            flagged = gsm8k_index.flags(documents) if drop_gsm8k else [False] * len(texts)  # type: ignore[union-attr]
            tasks = task_index.found(documents) if task_index is not None else [[] for _ in texts]
            return [(["gsm8k_test"] if flag else []) + found for flag, found in zip(flagged, tasks, strict=True)]

        return check

    key = _build_key(params, plan, tokenizer, gsm8k_dir, tasks_dir, test is not None)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.building"
    journal = _Journal.open(tmp, key)
    budgets = {spec.name: spec.max_tokens for spec, _, _ in plan if spec is not None and spec.max_tokens}
    try:
        with progress_display(enabled=progress) as bar, ExitStack() as stack:
            encoder = None
            if pretrained is not None:  # known before reading: documents are encoded as they are read
                tok = _tokenizer(tmp, journal, pretrained, vocab_size, plan, {}, bar)
                encoder = stack.enter_context(_encoder(tmp, tok, num_proc))
            collected = _read_all(
                tmp,
                journal,
                plan,
                caps(plan, max_chars_per_source, max_chars_per_ood),
                val_fraction,
                checker,
                user_names,
                encoder,
                bar,
            )
            if encoder is None:  # the BPE is trained on what was read
                tok = _tokenizer(tmp, journal, None, vocab_size, plan, collected, bar)
                encoder = stack.enter_context(_encoder(tmp, tok, num_proc))
            entries = _write_all(tmp, journal, plan, collected, encoder, budgets, shard_tokens, bar)
        dtype = encoder.dtype
        manifest = _manifest(tmp, params, tok, dtype, tokenizer, user_specs, plan, collected, entries, test, task_index)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _replace_dir(tmp, out_dir)
    except NexusError:  # bad input: nothing to resume, nothing left behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def caps(plan: list, max_chars_per_source: int, max_chars_per_ood: int) -> dict[str, int]:
    """Characters read per source: its spec's max_chars, else enough for its max_tokens, else the build's cap for
    its role (--max-chars-per-source / --max-chars-per-ood)."""
    default = {"train": max_chars_per_source, "ood": max_chars_per_ood}
    read: dict[str, int] = {}
    for spec, source, role in plan:
        if spec is not None and spec.max_chars:
            read[source.name] = spec.max_chars
        elif spec is not None and spec.max_tokens:  # read enough text for the budget, whatever the tokenizer
            read[source.name] = spec.max_tokens * CHARS_PER_TOKEN_BOUND
        else:
            read[source.name] = default[role]
    return read


def content_hash(manifest: dict) -> str:
    """sha256 over the build parameters and every written file's sha256: the same content gives the same hash,
    wherever the inputs were read from (absolute paths in the origins do not enter it)."""
    body = {"version": manifest["version"], "params": manifest["params"], "files": manifest["files"]}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


# ---- the journal of a build in progress ----------------------------------------------------------------------------


class _Journal:
    """tmp/journal.json: what the build in tmp has completed, under the key of its inputs. Rewritten atomically
    after each completed unit (a source read, the tokenizer, a shard), so a kill at any moment leaves a journal
    that describes only files completely written."""

    def __init__(self, path: Path, state: dict[str, Any]) -> None:
        self.path, self.state = path, state

    @classmethod
    def open(cls, tmp: Path, key: str) -> _Journal:
        path = tmp / "journal.json"
        state: dict[str, Any] = {}
        if path.is_file():
            try:
                state = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                state = {}
            owner = state.get("pid")
            if isinstance(owner, int) and owner != os.getpid() and _alive(owner):
                raise DataError(f"{tmp}: another data build (pid {owner}) is writing there; wait for it to end")
        if state.get("key") != key:  # other inputs: what is there cannot be reused
            shutil.rmtree(tmp, ignore_errors=True)
            state = {"key": key, "read": {}, "tokenizer": False, "written": {}}
        tmp.mkdir(parents=True, exist_ok=True)
        journal = cls(path, state | {"pid": os.getpid()})
        journal.save()
        return journal

    def save(self) -> None:
        write_json_atomic(self.path, self.state)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _build_key(params: dict, plan: list, tokenizer: str | None, gsm8k: Path, tasks: Path | None, has_test: bool) -> str:
    """What must be equal for a building dir to be resumed: parameters, sources (as specified and where they were
    found), tokenizer and contamination references."""
    body = {
        "params": params,
        "sources": [
            [role, s.name, s.parts and [p.origin for p in s.parts], spec and asdict(spec)] for spec, s, role in plan
        ],
        "tokenizer": str(Path(tokenizer).resolve()) if tokenizer else None,
        "gsm8k": str(Path(gsm8k).resolve()) if has_test else None,
        "tasks": str(Path(tasks).resolve()) if tasks else None,
    }
    return hashlib.sha256(dump_json(body).encode()).hexdigest()


# ---- phase 1: read ---------------------------------------------------------------------------------------------------


def _read_all(
    tmp: Path,
    journal: _Journal,
    plan: list,
    cap: dict[str, int],
    val_fraction: float,
    checker: Callable[[str, str], Callable[[list[str]], list[list[str]]]],
    drops_task_overlap: set[str],
    encoder: Encoder | None,
    bar: Any,
) -> dict[str, dict[str, Any]]:
    """Read every source not read yet; returns name → what was read (Collected fields + per-split docs/chars).
    With an `encoder`, each split's documents are encoded as they are kept (TokenSpill)."""
    seen_path = tmp / "spill" / "seen.npy"
    seen = SeenHashes.load(seen_path) if journal.state["read"] and seen_path.is_file() else SeenHashes()
    for _, source, role in plan:
        if source.name in journal.state["read"]:
            continue
        sink = _SourceSink(tmp, source.name, role, val_fraction, encoder)
        sink.find = checker(source.name, role)
        sink.drops_tasks = source.name in drops_task_overlap and role == "train"
        task = bar.add_task(f"read {'ood ' if role == 'ood' else ''}{source.name}", total=cap[source.name], info="")
        try:
            result = collect(source, cap[source.name], seen, sink.keep, sink, sink.progress(bar, task))
            sink.finish()
        finally:
            sink.close()
        bar.update(task, completed=cap[source.name])
        _check_read(result, sink.counts, role)
        journal.state["read"][source.name] = asdict(result) | {
            "splits": sink.counts,
            "role": role,
            "overlaps": sink.overlaps,
        }
        seen.save(seen_path.with_suffix(".tmp.npy"))
        os.replace(seen_path.with_suffix(".tmp.npy"), seen_path)
        journal.save()
    return journal.state["read"]


class _SourceSink:
    """Where one source's kept documents go while it is read: its split files, counts and overlap tallies."""

    def __init__(self, tmp: Path, name: str, role: str, val_fraction: float, encoder: Encoder | None) -> None:
        self.role, self.val_fraction = role, val_fraction
        splits = ("train", "val") if role == "train" else ("ood",)
        self.counts = {split: {"docs": 0, "chars": 0} for split in splits}
        self.spills = (
            {split: TokenSpill(_token_spill(tmp, split, name), encoder) for split in splits} if encoder else {}
        )
        self.handles = {}
        for split in splits:
            if split == "train" and encoder is not None:  # its text was only kept to train the BPE on
                continue
            path = _doc_file(tmp, split, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.handles[split] = path.open("w", encoding="utf-8")
        self.find: Callable[[list[str]], list[list[str]]] = lambda texts: [[] for _ in texts]
        self.drops_tasks = False
        self.overlaps: dict[str, int] = {}
        self.started = time.monotonic()

    def verdict(self, found: list[str]) -> str | None:
        """Count every reference the document overlaps; name the one that drops it (None: kept)."""
        for reference in found:
            self.overlaps[reference] = self.overlaps.get(reference, 0) + 1
        dropping = [r for r in found if r == "gsm8k_test" or self.drops_tasks]
        return dropping[0] if dropping else None

    def keep(self, digest: str, text: str) -> None:
        split = "ood" if self.role == "ood" else ("val" if in_val(digest, self.val_fraction) else "train")
        if split in self.handles:
            self.handles[split].write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
        if split in self.spills:
            self.spills[split].add(text)
        self.counts[split]["docs"] += 1
        self.counts[split]["chars"] += len(text)

    def progress(self, bar: Any, task: Any) -> Callable[[int], None]:
        def advance(chars: int) -> None:
            docs = sum(c["docs"] for c in self.counts.values())
            seconds = max(time.monotonic() - self.started, 1e-9)
            info = f"{docs:,} docs, {docs / seconds:,.0f} docs/s"
            if self.spills:
                info += f", {sum(s.tokens_written for s in self.spills.values()) / seconds:,.0f} tokens/s"
            bar.update(task, advance=chars, info=info)

        return advance

    def finish(self) -> None:
        """Wait for the documents still being encoded (a read that ends by an exception does not)."""
        for spill in self.spills.values():
            spill.finish()

    def close(self) -> None:
        for handle in [*self.handles.values(), *self.spills.values()]:
            handle.close()


def _doc_file(tmp: Path, split: str, name: str) -> Path:
    """Where phase 1 writes a split's documents: val/ood ones are kept in the build, train ones are spilled."""
    return tmp / "spill" / "train" / f"{name}.jsonl" if split == "train" else tmp / split / f"{name}.jsonl"


def _token_spill(tmp: Path, split: str, name: str) -> Path:
    """The stem of a split's TokenSpill (removed with the rest of spill/ when the build is done)."""
    return tmp / "spill" / "tokens" / split / name


def _check_read(result: Collected, counts: dict[str, dict[str, int]], role: str) -> None:
    if not result.docs:
        dropped = sum(result.contaminated.values())
        why = (
            f" ({result.duplicates} duplicates of earlier documents, {dropped} contaminated)"
            if dropped or result.duplicates
            else ""
        )
        raise DataError(f"source {result.name}: no documents read from {_origin_label(result.origin)}{why}")
    if role == "train" and (not counts["train"]["docs"] or not counts["val"]["docs"]):
        raise DataError(
            f"source {result.name}: {result.docs} documents give an empty train or val split; "
            "raise --max-chars-per-source or --val-fraction"
        )


# ---- phase 2: tokenizer ----------------------------------------------------------------------------------------------


def _tokenizer(tmp: Path, journal: _Journal, pretrained: Any, vocab_size: int, plan: list, read: dict, bar: Any) -> Any:
    from transformers import PreTrainedTokenizerFast

    if journal.state["tokenizer"]:
        return PreTrainedTokenizerFast.from_pretrained(str(tmp / "tokenizer"))
    if pretrained is None:
        train_names = [s.name for _, s, role in plan if role == "train"]
        n_docs = sum(read[name]["splits"]["train"]["docs"] for name in train_names)
        docs = (doc for name in train_names for doc in read_jsonl_docs(_doc_file(tmp, "train", name)))
        task = bar.add_task("train tokenizer", total=1, info=f"{n_docs:,} docs")
        tokenizer = train_tokenizer(docs, vocab_size, n_docs)
        bar.update(task, completed=1)
    else:
        tokenizer = pretrained
    tokenizer.save_pretrained(tmp / "tokenizer")
    journal.state["tokenizer"] = True
    journal.save()
    return tokenizer


# ---- phase 3: token shards -------------------------------------------------------------------------------------------


def _encoder(tmp: Path, tokenizer: Any, num_proc: int) -> Encoder:
    """The build's Encoder (its workers load the tokenizer saved in the build)."""
    dtype = token_dtype(len(tokenizer))
    return Encoder(
        tmp / "tokenizer" / "tokenizer.json", tokenizer.backend_tokenizer, tokenizer.eos_token_id, dtype, num_proc
    )


def _write_all(
    tmp: Path,
    journal: _Journal,
    plan: list,
    read: dict,
    encoder: Encoder,
    budgets: dict[str, int],
    shard_tokens: int,
    bar: Any,
) -> dict[str, dict[str, Any]]:
    """Cut every split of every source into shards, from its TokenSpill or encoding its text; returns
    "split/name" → {shards, tokens, docs}."""
    written = journal.state["written"]
    for _, source, role in plan:
        for split in ("train", "val") if role == "train" else ("ood",):
            unit = f"{split}/{source.name}"
            state = written.setdefault(unit, {"shards": [], "done": False})
            if state["done"]:
                continue
            done = from_dicts(state["shards"])
            start = done[-1].next_doc if done else 0
            chars = read[source.name]["splits"][split]["chars"]
            spill, text = _token_spill(tmp, split, source.name), _doc_file(tmp, split, source.name)
            from_spill = has_token_spill(spill)  # encoded while read: only cut into shards here
            task = bar.add_task(f"{'shard' if from_spill else 'tokenize'} {unit}", total=chars, info="")
            started, tokens_seen = time.monotonic(), [0]

            def advance(
                n_chars: int,
                n_tokens: int,
                task: Any = task,
                started: float = started,
                tokens_seen: list[int] = tokens_seen,
            ) -> None:
                tokens_seen[0] += n_tokens
                rate = tokens_seen[0] / max(time.monotonic() - started, 1e-9)
                bar.update(task, advance=n_chars, info=f"{rate:,.0f} tokens/s")

            def on_shard(record: ShardRecord, state: dict = state) -> None:
                state["shards"].append(asdict(record))
                journal.save()

            result = write_shards(
                tmp,
                split,
                source.name,
                spilled(spill, encoder.dtype, start) if from_spill else encoder.encode(read_jsonl_docs(text, start)),
                encoder.dtype,
                shard_tokens=shard_tokens,
                max_tokens=budgets.get(source.name) if split == "train" else None,
                done=done,
                on_shard=on_shard,
                advance=advance,
            )
            stopped_early = result.docs < read[source.name]["splits"][split]["docs"]  # by a token budget
            if stopped_early and from_spill:
                chars = spilled_chars(spill, result.docs)
            elif stopped_early:
                chars = sum(len(d) for d in islice(read_jsonl_docs(text), result.docs))
            state.update(shards=as_dicts(result.shards), tokens=result.tokens, docs=result.docs, chars=chars, done=True)
            journal.save()
            bar.update(task, completed=chars)
    return written


# ---- the manifest ----------------------------------------------------------------------------------------------------


def _manifest(
    tmp: Path,
    params: dict,
    tokenizer: Any,
    dtype: str,
    location: str | None,
    user_specs: list[SourceSpec],
    plan: list,
    read: dict,
    written: dict,
    test: tuple[Path, list[str]] | None,
    task_index: TaskNgrams | None,
) -> dict:
    for name in WORK_FILES:
        target = tmp / name
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    groups: dict[str, dict[str, Any]] = {"train": {}, "ood": {}}
    for _, source, role in plan:
        groups[role][source.name] = _entry(tmp, source.name, role, read[source.name], written)
    checked = [name for name, r in read.items() if "gsm8k_test" in r["overlaps"] or name == "math"]
    manifest = {
        "version": MANIFEST_VERSION,
        "params": params,
        "vocab_size": len(tokenizer),
        "eos_token": tokenizer.eos_token,
        "eos_id": tokenizer.eos_token_id,
        "pad_token": tokenizer.pad_token,
        "pad_id": tokenizer.pad_token_id,
        "token_dtype": dtype,
        "tokenizer_dir": "tokenizer",
        "tokenizer": {"kind": "pretrained", "location": str(Path(location).resolve())}
        if location is not None
        else {"kind": "bpe", "trained_on": "the train split of the training sources"},
        "user_sources": {spec.name: spec.params() | {"label": spec.label} for spec in user_specs},
        "sources": groups["train"],
        "ood": groups["ood"],
        "contamination": {
            "reference": str(test[0].resolve()) if test else None,
            "reference_sha256": hashlib.sha256(test[0].read_bytes()).hexdigest() if test else None,
            "method": f"{NGRAM}-word n-gram overlap with GSM8k test questions (math and user training sources: "
            "matching documents dropped) and with every evaluation item under tasks/ (counted for every source; "
            "dropped from user sources)",
            "checked_sources": checked if test else [],
            "dropped_docs": {name: sum(r["contaminated"].values()) for name, r in read.items() if r["role"] == "train"},
            "tasks": {task: files for task, files in task_index.files.items()} if task_index else {},
            "overlaps": {name: r["overlaps"] for name, r in read.items()},
        },
        "duplicates_dropped": {name: r["duplicates"] for name, r in read.items()},
        "files": {str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()},
    }
    manifest["hash"] = content_hash(manifest)
    return manifest


def _entry(tmp: Path, name: str, role: str, read: dict, written: dict) -> dict:
    entry: dict = {"origin": read["origin"], "docs": {}, "chars": {}, "tokens": {}, "files": {}, "shards": {}}
    for split in ("train", "val") if role == "train" else ("ood",):
        unit = written[f"{split}/{name}"]
        entry["docs"][split] = unit["docs"]
        entry["chars"][split] = unit["chars"]
        entry["tokens"][split] = unit["tokens"]
        entry["files"][split] = unit["shards"][0]["file"]
        entry["shards"][split] = [{"file": s["file"], "tokens": s["tokens"]} for s in unit["shards"]]
        if split != "train":  # raw text for bits-per-byte and lm-eval loglikelihood_rolling
            entry["files"][f"{split}_jsonl"] = f"{split}/{name}.jsonl"
    return entry


def _origin_label(origins: list[dict]) -> str:
    return ", ".join(str(o.get("path") or o.get("dataset") or o.get("package") or o.get("kind")) for o in origins)


def _dir_specs(flag: str, directories: dict[str, Path] | None, role: str) -> list[SourceSpec]:
    """NAME → directory of text files (the older keyword form of --source/--ood) as SourceSpecs."""
    return [
        SourceSpec(name, role, path=str(path), label=f"{flag} {name}={path}")  # type: ignore[arg-type]
        for name, path in (directories or {}).items()
    ]


def _check_unique_names(names: list[str]) -> None:
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


def _check_params(
    vocab: int, max_source: int, max_ood: int, val_fraction: float, math_generated: int, num_proc: int
) -> None:
    if not 1 <= num_proc <= 256:
        raise DataError(f"--num-proc {num_proc}: must be between 1 and 256")
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
