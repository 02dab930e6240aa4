"""Stream a source's documents under a size cap: clean, deduplicate, drop contaminated documents, split by hash."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from nexus_eval.data.sources import Source

MIN_DOC_CHARS = 20  # shorter fragments (empty alias pages, stray headings) carry no signal
# At least MIN_DOC_CHARS non-whitespace characters: stops at the 20th instead of copying the document without spaces.
HAS_MIN_CHARS = re.compile(rf"\s*(?:\S\s*){{{MIN_DOC_CHARS}}}")


def normalize(doc: str) -> str:
    """The document as stored: Unix newlines, no trailing spaces, no surrounding blank lines."""
    doc = doc.replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(line.rstrip() for line in doc.split("\n")).strip("\n")


def doc_hash(doc: str) -> str:
    """Hash of the document with all whitespace runs collapsed: the dedupe key and the split key."""
    return hashlib.sha256(" ".join(doc.split()).encode("utf-8")).hexdigest()


def in_val(digest: str, val_fraction: float) -> bool:
    """Deterministic split: a document is validation when its hash falls in the first `val_fraction` of the range."""
    return int(digest[:12], 16) < val_fraction * 16**12


class SeenHashes:
    """Exact dedup across all sources with bounded memory: an open-addressing table of 64-bit hash prefixes in one
    numpy array (16 bytes per document at most, against ~170 for a set of hex strings). Two different documents
    share a prefix with probability ~n²/2⁶⁵ (3e-6 for 10M documents): the cost of an exact set is 10× the memory."""

    EMPTY = 0  # a key of 0 is stored as 1: a 1-in-2⁶⁴ merge, same order as a prefix collision

    def __init__(self, capacity: int = 1 << 16) -> None:
        self.table = np.zeros(capacity, dtype=np.uint64)
        self.count = 0

    def add(self, digest: str) -> bool:
        """Record a document's hash; False when it was already seen (a duplicate)."""
        key = int(digest[:16], 16) or 1
        if 2 * (self.count + 1) > len(self.table):
            self._grow()
        if not self._insert(self.table, key):
            return False
        self.count += 1
        return True

    @staticmethod
    def _insert(table: np.ndarray, key: int) -> bool:
        mask = len(table) - 1
        slot = key & mask
        while (current := int(table[slot])) != SeenHashes.EMPTY:
            if current == key:
                return False
            slot = (slot + 1) & mask
        table[slot] = key
        return True

    def _grow(self) -> None:
        bigger = np.zeros(2 * len(self.table), dtype=np.uint64)
        for key in self.table[self.table != SeenHashes.EMPTY].tolist():
            self._insert(bigger, key)
        self.table = bigger

    def save(self, path: Path) -> None:
        np.save(path, self.table)

    @classmethod
    def load(cls, path: Path) -> SeenHashes:
        seen = cls(1)
        seen.table = np.load(path)
        seen.count = int(np.count_nonzero(seen.table))
        return seen


@dataclass
class Collected:
    """What reading one source kept and dropped (the documents themselves went to `keep` as they came)."""

    name: str
    origin: list[dict]
    docs: int = 0
    chars: int = 0
    duplicates: int = 0
    contaminated: dict[str, int] = field(default_factory=dict)  # reference (a task) → documents dropped


class Screen(Protocol):
    """What collect checks documents against: `find` the references each document of a batch overlaps (all at once:
    the work is vectorized per batch), then, for each document that got past dedup, the `verdict`: the reference
    that drops it, or None to keep it (where overlaps are counted)."""

    def find(self, texts: list[str]) -> list[list[str]]: ...

    def verdict(self, found: list[str]) -> str | None: ...


READ_BATCH_DOCS = 256  # documents screened together
READ_BATCH_CHARS = 4_000_000  # and at most this much text held


def collect(
    source: Source,
    max_chars: int,
    seen: SeenHashes,
    keep: Callable[[str, str], None],
    screen: Screen | None = None,
    advance: Callable[[int], None] = lambda n: None,
) -> Collected:
    """Stream a source's parts round-robin until `max_chars`, handing each kept document to `keep(hash, text)`;
    documents whose hash was seen before (in any source) and contaminated ones (the `screen` names what they
    overlap) are dropped and counted. Documents are read in batches that stop at the one that could fill
    `max_chars`, so no document past it is read (a bad row there is not reported)."""
    origins = [dict(part.origin, docs=0, chars=0) for part in source.parts]
    result = Collected(source.name, origins)
    stream = _interleaved(origins, source)
    while result.chars < max_chars:
        batch = _read_batch(stream, max_chars - result.chars)
        if not batch:
            break
        found = screen.find([text for _, text, _ in batch]) if screen is not None else [[] for _ in batch]
        for (origin, text, digest), overlaps in zip(batch, found, strict=True):
            if not seen.add(digest):
                result.duplicates += 1
                continue
            if screen is not None and (reference := screen.verdict(overlaps)) is not None:
                result.contaminated[reference] = result.contaminated.get(reference, 0) + 1
                continue
            keep(digest, text)
            origin["docs"] += 1
            origin["chars"] += len(text)
            result.docs += 1
            result.chars += len(text)
            advance(len(text))
            if result.chars >= max_chars:
                break
    return result


def _interleaved(origins: list[dict], source: Source) -> Iterator[tuple[dict, str]]:
    """(origin, document) from the source's parts in turn, one each, until every part is exhausted."""
    iterators = [(origin, part.docs()) for origin, part in zip(origins, source.parts, strict=True)]
    while iterators:
        for entry in list(iterators):
            text = next(entry[1], None)
            if text is None:
                iterators.remove(entry)
                continue
            yield entry[0], text


def _read_batch(stream: Iterator[tuple[dict, str]], room: int) -> list[tuple[dict, str, str]]:
    """The next documents worth keeping (normalized, long enough) with their hashes, up to the one whose text
    reaches `room` characters."""
    batch: list[tuple[dict, str, str]] = []
    chars = 0
    for origin, raw in stream:
        text = normalize(raw)
        if not HAS_MIN_CHARS.match(text):
            continue
        batch.append((origin, text, doc_hash(text)))
        chars += len(text)
        if len(batch) == READ_BATCH_DOCS or chars >= min(room, READ_BATCH_CHARS):
            break
    return batch
