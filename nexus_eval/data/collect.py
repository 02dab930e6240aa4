"""Gather a source's documents under a size cap: clean, deduplicate, drop contaminated documents, split by hash."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from nexus_eval.data.sources import Source

MIN_DOC_CHARS = 20  # shorter fragments (empty alias pages, stray headings) carry no signal


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


@dataclass
class Collected:
    name: str
    origin: list[dict]
    docs: list[tuple[str, str]] = field(default_factory=list)  # (hash, text)
    duplicates: int = 0
    contaminated: int = 0

    @property
    def chars(self) -> int:
        return sum(len(text) for _, text in self.docs)


def collect(
    source: Source,
    max_chars: int,
    seen: set[str],
    is_contaminated: Callable[[str], bool] | None = None,
    advance: Callable[[int], None] = lambda n: None,
) -> Collected:
    """Read a source's parts round-robin until `max_chars`, skipping documents whose hash is already in `seen`."""
    origins = [dict(part.origin, docs=0, chars=0) for part in source.parts]
    result = Collected(source.name, origins)
    iterators = [(origin, part.docs()) for origin, part in zip(origins, source.parts, strict=True)]
    chars = 0
    while iterators and chars < max_chars:
        for entry in list(iterators):
            origin, iterator = entry
            text = next(iterator, None)
            if text is None:
                iterators.remove(entry)
                continue
            text = normalize(text)
            if len(re.sub(r"\s", "", text)) < MIN_DOC_CHARS:
                continue
            digest = doc_hash(text)
            if digest in seen:
                result.duplicates += 1
                continue
            seen.add(digest)
            if is_contaminated is not None and is_contaminated(text):
                result.contaminated += 1
                continue
            result.docs.append((digest, text))
            origin["docs"] += 1
            origin["chars"] += len(text)
            chars += len(text)
            advance(len(text))
            if chars >= max_chars:
                break
    return result
