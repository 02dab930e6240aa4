"""Stream a source's documents under a size cap: clean, deduplicate, drop contaminated documents, split by hash."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

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


def collect(
    source: Source,
    max_chars: int,
    seen: SeenHashes,
    keep: Callable[[str, str], None],
    is_contaminated: Callable[[str], str | None] | None = None,
    advance: Callable[[int], None] = lambda n: None,
) -> Collected:
    """Stream a source's parts round-robin until `max_chars`, handing each kept document to `keep(hash, text)`;
    documents whose hash was seen before (in any source) and contaminated ones (`is_contaminated` names what they
    overlap) are dropped and counted."""
    origins = [dict(part.origin, docs=0, chars=0) for part in source.parts]
    result = Collected(source.name, origins)
    iterators = [(origin, part.docs()) for origin, part in zip(origins, source.parts, strict=True)]
    while iterators and result.chars < max_chars:
        for entry in list(iterators):
            origin, iterator = entry
            text = next(iterator, None)
            if text is None:
                iterators.remove(entry)
                continue
            text = normalize(text)
            if not HAS_MIN_CHARS.match(text):
                continue
            digest = doc_hash(text)
            if not seen.add(digest):
                result.duplicates += 1
                continue
            if is_contaminated is not None and (reference := is_contaminated(text)) is not None:
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
