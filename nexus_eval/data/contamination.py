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
# The bytes of WORD's characters kept, every other byte a space: after lower() and UTF-8 encoding, splitting the
# translated bytes on spaces gives exactly WORD.findall's words (any non-ASCII character encodes as bytes >= 0x80,
# never a word byte), at several times the speed of the regex on str.
_WORD_BYTES = bytes(c if chr(c).isascii() and (chr(c).isdigit() or chr(c).islower()) else 32 for c in range(256))


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def _word_bytes(text: str) -> list[bytes]:
    """words(text) as ASCII bytes (surrogatepass: a lone surrogate from JSON is a non-word, as for the regex)."""
    return text.lower().encode("utf-8", "surrogatepass").translate(_WORD_BYTES).split()


def ngram_hashes(tokens: list[str] | list[bytes], n: int = NGRAM) -> np.ndarray:
    """64-bit hashes of every n-word window, vectorized: each word hashed once (Python's str hash, fixed within a
    process; an ASCII word hashes the same as str or bytes), windows combined polynomially. Different n-grams
    collide with probability ~2⁻⁶⁴ per pair."""
    if len(tokens) < n:
        return np.zeros(0, dtype=np.uint64)
    return _window_hashes(np.fromiter(map(hash, tokens), dtype=np.int64, count=len(tokens)).view(np.uint64), n)


def _window_hashes(word_hashes: np.ndarray, n: int) -> np.ndarray:
    """For every window i: sum over j < n of word_hashes[i + j] * M^(n-1-j) (mod 2^64), in O(log n) array operations
    instead of n (13-grams: 10, not 26; each is a numpy call, and a document's are short arrays): the hash of a+b
    words is the hash of the first a times M^b plus the hash of the last b. Bit-identical to the word-by-word sum."""
    result, covered = word_hashes, 0  # the hash of the first `covered` words of each window
    block, size = word_hashes, 1  # the hash of `size` words starting at each position (size a power of two)
    remaining = n
    while remaining:
        if remaining & 1:
            if covered == 0:
                result = block
            else:
                length = len(word_hashes) - covered - size + 1
                result = result[:length] * _power(size) + block[covered : covered + length]
            covered += size
        remaining >>= 1
        if remaining:
            block = block[: len(block) - size] * _power(size) + block[size:]
            size *= 2
    return result.copy() if result is word_hashes else result


def _power(exponent: int) -> np.uint64:
    return np.uint64(pow(int(_MULTIPLIER), exponent, 1 << 64))


class Documents:
    """The n-gram hashes of a batch of documents, computed together (one hashing pass and one lookup per index for
    the whole batch: per document, numpy's fixed cost per call outweighed the work), with the document of each."""

    def __init__(self, texts: list[str], n: int = NGRAM) -> None:
        self.texts = texts
        tokens = [_word_bytes(text) for text in texts]
        flat = [word for words in tokens for word in words]
        self.ngrams, self.owner = _windows_within_texts(flat, list(map(len, tokens)), n)

    def __len__(self) -> int:
        return len(self.texts)

    def words(self, index: int) -> list[str]:
        return words(self.texts[index])


class _SortedHashes:
    """Sorted n-gram hashes with an owner (a reference's index) each: 12 bytes per n-gram, searched in O(log n).

    A bitmap over the hashes' top bits (~4 bytes per n-gram) answers first: nearly every n-gram of a training
    document is in no reference, and a binary search of a multi-million-key array costs a cache miss per level, the
    bitmap one in all. Only the n-grams whose bit is set (a reference's, or ~2-3% false positives) are searched."""

    BITS_PER_KEY = 32  # bitmap size: a false-positive rate of ~1/32 at most, ~4 bytes per key

    def __init__(self, hashes: list[np.ndarray], owners: list[int]) -> None:
        keys = np.concatenate(hashes) if hashes else np.zeros(0, dtype=np.uint64)
        owner = np.concatenate([np.full(len(h), o, dtype=np.int32) for h, o in zip(hashes, owners, strict=True)])
        order = np.argsort(keys, kind="stable") if len(keys) else np.zeros(0, dtype=np.int64)
        self.keys, self.owners = keys[order], (owner[order] if len(keys) else np.zeros(0, dtype=np.int32))
        bits = min(max(int(len(self.keys) * self.BITS_PER_KEY).bit_length(), 6), 30)  # 128 MB at most
        self.shift = np.uint64(64 - bits)
        self.bitmap = np.zeros(1 << (bits - 3), dtype=np.uint8)
        slots = self.keys >> self.shift  # sorted, as the keys are: the bits of one byte are a contiguous run
        cells = slots >> np.uint64(3)
        first = np.flatnonzero(np.concatenate(([True], cells[1:] != cells[:-1]))) if len(cells) else cells
        if len(cells):
            bits = np.left_shift(1, slots & np.uint64(7)).astype(np.uint8)
            self.bitmap[cells[first]] = np.bitwise_or.reduceat(bits, first)

    def _maybe(self, query: np.ndarray) -> np.ndarray:
        """False where a query hash is surely absent (no false negatives)."""
        slots = query >> self.shift
        cells = np.take(self.bitmap, slots >> np.uint64(3))  # take: faster than fancy indexing
        return ((cells >> (slots & np.uint64(7)).astype(np.uint8)) & 1).astype(bool)

    def owners_per_document(self, documents: Documents) -> list[set[int]]:
        """For each document of the batch, the owners (references) sharing an n-gram with it."""
        found: list[set[int]] = [set() for _ in range(len(documents))]
        if not len(documents.ngrams) or not len(self.keys):
            return found
        maybe = self._maybe(documents.ngrams)
        query, owner = documents.ngrams[maybe], documents.owner[maybe]
        if not len(query):  # the common case: clean documents cost one bitmap lookup per n-gram
            return found
        left = np.searchsorted(self.keys, query, side="left")
        hit = self.keys[np.minimum(left, len(self.keys) - 1)] == query
        if not hit.any():
            return found
        right = np.searchsorted(self.keys, query[hit], side="right")
        for document, lo, hi in zip(owner[hit].tolist(), left[hit].tolist(), right.tolist(), strict=True):
            found[document].update(self.owners[lo:hi].tolist())  # an n-gram shared by several references: a run
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

    def __call__(self, text: str) -> bool:
        return self.flags(Documents([text], self.n))[0]

    def flags(self, documents: Documents) -> list[bool]:
        """For each document of the batch: does it share an n-gram (or hold a short reference whole)?"""
        flagged = [bool(owners) for owners in self.index.owners_per_document(documents)]
        if self.whole:
            for index, flag in enumerate(flagged):
                if not flag:
                    joined = " " + " ".join(documents.words(index)) + " "
                    flagged[index] = any(reference in joined for reference in self.whole)
        return flagged


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

    def __call__(self, text: str) -> list[str]:
        """The tasks sharing an n-gram with `text` (empty when clean)."""
        return self.found(Documents([text], self.n))[0]

    def found(self, documents: Documents) -> list[list[str]]:
        """For each document of the batch, the tasks sharing an n-gram with it."""
        return [[self.tasks[i] for i in sorted(owners)] for owners in self.index.owners_per_document(documents)]


def _texts_ngram_hashes(texts: Iterator[str], n: int, chunk_words: int = 200_000) -> np.ndarray:
    """The distinct n-gram hashes of many texts, sorted, vectorized over chunks of ~`chunk_words` words (bounded
    memory): windows crossing from one text into the next are left out."""
    chunks: list[np.ndarray] = []
    all_words: list[bytes] = []
    counts: list[int] = []
    for text in texts:
        tokens = _word_bytes(text)
        all_words.extend(tokens)
        counts.append(len(tokens))
        if len(all_words) >= chunk_words:
            chunks.append(_chunk_hashes(all_words, counts, n))
            all_words, counts = [], []
    chunks.append(_chunk_hashes(all_words, counts, n))
    return _sorted_unique(np.concatenate(chunks))


def _chunk_hashes(all_words: list[bytes], counts: list[int], n: int) -> np.ndarray:
    return _sorted_unique(_windows_within_texts(all_words, counts, n)[0])  # per chunk: repeats are not all held


def _windows_within_texts(all_words: list[bytes], counts: list[int], n: int) -> tuple[np.ndarray, np.ndarray]:
    """The n-gram hashes of consecutive texts' words (`counts` words each), leaving out windows that cross from one
    text into the next, and the text of each."""
    hashes = ngram_hashes(all_words, n)
    owner = np.repeat(np.arange(len(counts)), counts)  # the text of each word
    within_one_text = owner[: len(hashes)] == owner[n - 1 : n - 1 + len(hashes)]
    return hashes[within_one_text], owner[: len(hashes)][within_one_text]


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique for a flat array (sort, then drop repeats): numpy 2's np.unique hashes first, several times slower."""
    values = np.sort(values)
    return values[np.concatenate(([True], values[1:] != values[:-1]))] if len(values) else values


def _task_eval_files(tasks_dir: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for group in ("data", "synthetic"):
        for task_dir in sorted(p for p in (tasks_dir / group).glob("*") if p.is_dir()):
            files = sorted(f for f in task_dir.glob("*.jsonl") if not f.stem.startswith(EVAL_FILE_SKIP))
            if files:
                found[task_dir.name] = files
    return found


def _jsonl_texts(file: Path) -> Iterator[str]:
    """Each item's text fields joined: a question with its answer, a context with its endings. The n-grams of each
    field alone are among the joined text's (its words are the fields' words in order), so the join is all the
    index needs."""
    with file.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield " ".join(_strings(json.loads(line)))


def _strings(value: Any) -> list[str]:
    """Every string in a JSON value, in order (a loop over lists and dicts: the recursive generator it replaces cost
    more than parsing the items)."""
    found: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, dict):
            stack.extend(reversed(item.values()))
    return found
