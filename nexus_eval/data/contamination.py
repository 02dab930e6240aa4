"""Keep evaluation items out of training data: word n-gram overlap with the GSM8k test questions and with every
evaluation task's items under tasks/."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

NGRAM = 13  # the usual contamination n-gram length (GPT-3 paper); every GSM8k test question has >= 15 words


WORD = re.compile(r"[a-z0-9]+")
_MULTIPLIER = np.uint64(0x100000001B3)  # FNV prime: mixes the word hashes of an n-gram in order


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def ngram_hashes(tokens: list[str], n: int = NGRAM) -> np.ndarray:
    """64-bit hashes of every n-word window, vectorized: each word hashed once (Python's str hash, fixed within a
    process), windows combined polynomially. Different n-grams collide with probability ~2⁻⁶⁴ per pair."""
    if len(tokens) < n:
        return np.zeros(0, dtype=np.uint64)
    word_hashes = np.fromiter(map(hash, tokens), dtype=np.int64, count=len(tokens)).view(np.uint64)
    windows = len(tokens) - n + 1
    combined = np.zeros(windows, dtype=np.uint64)
    for offset in range(n):
        combined = combined * _MULTIPLIER + word_hashes[offset : offset + windows]
    return combined


class Document:
    """A document's words and n-gram hashes, computed once for every index that checks it."""

    def __init__(self, text: str, n: int = NGRAM) -> None:
        self.words = words(text)
        self.ngrams = ngram_hashes(self.words, n)


class _SortedHashes:
    """Sorted n-gram hashes with an owner (a reference's index) each: 12 bytes per n-gram, searched in O(log n)."""

    def __init__(self, hashes: list[np.ndarray], owners: list[int]) -> None:
        keys = np.concatenate(hashes) if hashes else np.zeros(0, dtype=np.uint64)
        owner = np.concatenate([np.full(len(h), o, dtype=np.int32) for h, o in zip(hashes, owners, strict=True)])
        order = np.argsort(keys, kind="stable") if len(keys) else np.zeros(0, dtype=np.int64)
        self.keys, self.owners = keys[order], (owner[order] if len(keys) else np.zeros(0, dtype=np.int32))

    def owners_of(self, query: np.ndarray) -> set[int]:
        if not len(query) or not len(self.keys):
            return set()
        left = np.searchsorted(self.keys, query, side="left")
        hit = self.keys[np.minimum(left, len(self.keys) - 1)] == query
        if not hit.any():  # the common case: a clean document costs one search
            return set()
        right = np.searchsorted(self.keys, query[hit], side="right")
        found: set[int] = set()
        for lo, hi in zip(left[hit].tolist(), right.tolist(), strict=True):
            found.update(self.owners[lo:hi].tolist())  # an n-gram shared by several references: a run of keys
        return found


class NgramIndex:
    """Flags a document that shares any NGRAM-word sequence with one of the reference texts."""

    def __init__(self, references: list[str], n: int = NGRAM) -> None:
        self.n = n
        self.whole: list[str] = []  # references shorter than n words must appear whole
        hashes = []
        for reference in references:
            tokens = words(reference)
            if len(tokens) < n:
                self.whole.append(" " + " ".join(tokens) + " ")
            hashes.append(ngram_hashes(tokens, n))
        self.index = _SortedHashes(hashes, [0] * len(hashes))

    def __call__(self, text: str | Document) -> bool:
        document = text if isinstance(text, Document) else Document(text, self.n)
        if self.index.owners_of(document.ngrams):
            return True
        if self.whole:
            joined = " " + " ".join(document.words) + " "
            return any(reference in joined for reference in self.whole)
        return False


EVAL_FILE_SKIP = ("train",)  # few-shot/training splits of a task may be trained on; every other split is evaluated


class TaskNgrams:
    """13-gram index of every evaluation item of every task under a tasks dir (tasks/data/<task>/*.jsonl and
    tasks/synthetic/<task>/*.jsonl, train splits excluded): each text field, and the item's fields joined, contribute
    their n-grams. Held as sorted 64-bit hashes with the task of each (~12 bytes per n-gram, against ~150 for a set
    of strings: HellaSwag alone has over a million). Hashes are Python's, per process: the index lives in the build."""

    def __init__(self, tasks_dir: Path, n: int = NGRAM) -> None:
        self.n = n
        self.files: dict[str, list[str]] = {}  # task → eval files read
        hashes: list[np.ndarray] = []
        owners: list[int] = []
        for task, files in _task_eval_files(tasks_dir).items():
            self.files[task] = [str(f) for f in files]
            for file in files:
                hashes.append(_texts_ngram_hashes(_jsonl_texts(file), n))
                owners.append(len(self.files) - 1)
        self.index = _SortedHashes(hashes, owners)
        self.tasks = list(self.files)

    def __call__(self, text: str | Document) -> list[str]:
        """The tasks sharing an n-gram with `text` (empty when clean)."""
        document = text if isinstance(text, Document) else Document(text, self.n)
        return [self.tasks[i] for i in sorted(self.index.owners_of(document.ngrams))]


def _texts_ngram_hashes(texts: Iterator[str], n: int, chunk_words: int = 200_000) -> np.ndarray:
    """The n-gram hashes of many texts, vectorized over chunks of ~`chunk_words` words (bounded memory): windows
    crossing from one text into the next are left out."""
    chunks: list[np.ndarray] = []
    all_words: list[str] = []
    text_of_word: list[int] = []
    for index, text in enumerate(texts):
        tokens = words(text)
        all_words.extend(tokens)
        text_of_word.extend([index] * len(tokens))
        if len(all_words) >= chunk_words:
            chunks.append(_chunk_hashes(all_words, text_of_word, n))
            all_words, text_of_word = [], []
    chunks.append(_chunk_hashes(all_words, text_of_word, n))
    return np.unique(np.concatenate(chunks))


def _chunk_hashes(all_words: list[str], text_of_word: list[int], n: int) -> np.ndarray:
    hashes = ngram_hashes(all_words, n)
    owner = np.asarray(text_of_word, dtype=np.int64)
    within_one_text = owner[: len(hashes)] == owner[n - 1 : n - 1 + len(hashes)]
    return np.unique(hashes[within_one_text])


def _task_eval_files(tasks_dir: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for group in ("data", "synthetic"):
        for task_dir in sorted(p for p in (tasks_dir / group).glob("*") if p.is_dir()):
            files = sorted(f for f in task_dir.glob("*.jsonl") if not f.stem.startswith(EVAL_FILE_SKIP))
            if files:
                found[task_dir.name] = files
    return found


def _jsonl_texts(file: Path) -> Iterator[str]:
    with file.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                texts = list(_strings(json.loads(line)))
                yield from texts
                yield " ".join(texts)  # the whole item: a question with its answer, a context with its endings


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
