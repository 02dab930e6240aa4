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


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


class NgramIndex:
    """Flags a document that shares any NGRAM-word sequence with one of the reference texts."""

    def __init__(self, references: list[str], n: int = NGRAM) -> None:
        self.n = n
        self.ngrams: set[str] = set()
        self.whole: list[str] = []  # references shorter than n words must appear whole
        for reference in references:
            tokens = words(reference)
            if len(tokens) < n:
                self.whole.append(" " + " ".join(tokens) + " ")
            for i in range(len(tokens) - n + 1):
                self.ngrams.add(" ".join(tokens[i : i + n]))

    def __call__(self, text: str) -> bool:
        tokens = words(text)
        if any(" ".join(tokens[i : i + self.n]) in self.ngrams for i in range(len(tokens) - self.n + 1)):
            return True
        if self.whole:
            joined = " " + " ".join(tokens) + " "
            return any(reference in joined for reference in self.whole)
        return False


EVAL_FILE_SKIP = ("train",)  # few-shot/training splits of a task may be trained on; every other split is evaluated


class TaskNgrams:
    """13-gram index of every evaluation item of every task under a tasks dir (tasks/data/<task>/*.jsonl and
    tasks/synthetic/<task>/*.jsonl, train splits excluded): each text field, and the item's fields joined, contribute
    their n-grams.
    Stored as sorted 64-bit hashes (numpy) with the task of each: ~16 bytes per n-gram, against ~150 for a set of
    strings (HellaSwag alone has ~1M). Hashes are Python's (per process): the index lives only in the build."""

    def __init__(self, tasks_dir: Path, n: int = NGRAM) -> None:
        self.n = n
        self.files: dict[str, list[str]] = {}  # task → eval files read
        keys: list[int] = []
        owners: list[int] = []
        for task, files in _task_eval_files(tasks_dir).items():
            self.files[task] = [str(f) for f in files]
            owner = len(self.files) - 1
            for file in files:
                for text in _jsonl_texts(file):
                    tokens = words(text)
                    found = {hash(" ".join(tokens[i : i + n])) for i in range(len(tokens) - n + 1)}
                    keys.extend(found)
                    owners.extend([owner] * len(found))
        order = np.argsort(np.array(keys, dtype=np.int64), kind="stable")
        self.keys = np.array(keys, dtype=np.int64)[order]
        self.owners = np.array(owners, dtype=np.int32)[order]
        self.tasks = list(self.files)

    def __call__(self, text: str) -> list[str]:
        """The tasks sharing an n-gram with `text` (empty when clean)."""
        tokens = words(text)
        if len(tokens) < self.n or not len(self.keys):
            return []
        query = np.fromiter(
            (hash(" ".join(tokens[i : i + self.n])) for i in range(len(tokens) - self.n + 1)), dtype=np.int64
        )
        at = np.minimum(np.searchsorted(self.keys, query), len(self.keys) - 1)
        hits = at[self.keys[at] == query]
        if not len(hits):
            return []
        found: set[int] = set()
        for index in hits.tolist():  # an n-gram shared by several tasks sits in a run of equal keys
            key = self.keys[index]
            while index > 0 and self.keys[index - 1] == key:
                index -= 1
            while index < len(self.keys) and self.keys[index] == key:
                found.add(int(self.owners[index]))
                index += 1
        return [self.tasks[i] for i in sorted(found)]


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
