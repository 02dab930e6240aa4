"""Token files of a build: documents encoded in batches (in `num_proc` worker processes when asked) and written as
fixed-size shards, each document followed by eos.

Shard 0 of a split is `<split>/<name>.bin` and shard i > 0 `<split>/<name>.<i:05d>.bin`: a build small enough for one
shard keeps the single-file layout (and bytes) of earlier builds. Encodings come back in the order of their batches,
so the bytes do not depend on `num_proc`. A shard is complete once it is renamed into place and recorded by the
caller (`on_shard`): a resumed build starts after the last one recorded.

Documents reach the shards encoded, either by the Encoder from text, or from a TokenSpill: with a pretrained tokenizer
the build encodes documents while it reads them (the reader screens the next batch while the encoder works), and
cutting the spilled token stream into shards is then a copy.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np

BATCH_DOCS = 512  # documents per encode_batch call (and per task handed to a worker)
DEFAULT_SHARD_TOKENS = 1 << 28  # 256M tokens: 512 MB as uint16; the demo's streams are far below one shard


@dataclass
class ShardRecord:
    """A completed shard: its file (relative to the build), token count, and where the next shard starts in the
    split's document stream (document index, and tokens of that document already written)."""

    file: str
    tokens: int
    next_doc: int
    next_offset: int


class Encoded(NamedTuple):
    """A batch of documents encoded: characters per document, the token stream (each document followed by eos) and
    tokens per document (its eos included)."""

    chars: np.ndarray
    stream: np.ndarray
    lengths: np.ndarray


@dataclass
class WriteResult:
    shards: list[ShardRecord]
    tokens: int
    docs: int  # documents written (a token budget stops at the one that reaches it)


def shard_file(split: str, name: str, index: int) -> str:
    return f"{split}/{name}.bin" if index == 0 else f"{split}/{name}.{index:05d}.bin"


def read_jsonl_docs(path: Path, start: int = 0) -> Iterator[str]:
    """The "text" of each line of a spill/val/ood .jsonl, from document `start` on, one line at a time."""
    with path.open(encoding="utf-8") as lines:
        for index, line in enumerate(lines):
            if index >= start:
                yield json.loads(line)["text"]


def write_shards(
    root: Path,
    split: str,
    name: str,
    batches: Iterator[Encoded],
    dtype: str,
    *,
    shard_tokens: int,
    max_tokens: int | None = None,
    done: list[ShardRecord] | None = None,
    on_shard: Callable[[ShardRecord], None] = lambda record: None,
    advance: Callable[[int, int], None] = lambda chars, tokens: None,
) -> WriteResult:
    """Write encoded `batches` (starting at the document after the shards in `done`) as shards under root; returns
    all shards."""
    shards = list(done or [])
    doc_index = shards[-1].next_doc if shards else 0
    skip = shards[-1].next_offset if shards else 0  # tokens of the current document already in an earlier shard
    written = sum(s.tokens for s in shards)
    buffer = _ShardBuffer(root, split, name, len(shards), shard_tokens, dtype)

    def close_shard(next_doc: int, next_offset: int) -> None:
        record = buffer.close(next_doc, next_offset)
        shards.append(record)
        on_shard(record)

    for chars, stream, lengths in batches:
        # A batch at a time: `stream` holds its documents' tokens each followed by eos, `ends` where each ends in it.
        ends = np.cumsum(lengths)
        last = len(ends)  # documents of this batch written
        if max_tokens is not None:  # stop after the document that reaches the budget
            last = min(last, int(np.searchsorted(ends - skip, max_tokens - written, side="left")) + 1)
        position, end = skip, int(ends[last - 1])
        while position < end:
            position += buffer.add(stream[position:end])
            if buffer.full:  # the next shard starts at `position`: a document's first token or one inside it
                inside = int(np.searchsorted(ends, position, side="right"))
                offset = position - (int(ends[inside - 1]) if inside else 0)
                close_shard(doc_index + inside, offset if inside < last else 0)
        written += end - skip
        doc_index, skip = doc_index + last, 0
        advance(int(chars[:last].sum()), end)
        if max_tokens is not None and written >= max_tokens:
            break
    return _finish(buffer, shards, close_shard, doc_index)


def _finish(
    buffer: _ShardBuffer, shards: list[ShardRecord], close_shard: Callable[[int, int], None], docs: int
) -> WriteResult:
    if buffer.size or not shards:
        close_shard(docs, 0)
    buffer.discard()
    return WriteResult(shards, sum(s.tokens for s in shards), docs)


class _ShardBuffer:
    """The shard being written: appended to a hidden temp file, renamed into place when closed."""

    def __init__(self, root: Path, split: str, name: str, index: int, capacity: int, dtype: str) -> None:
        self.root, self.split, self.name, self.index = root, split, name, index
        self.capacity, self.dtype = capacity, dtype
        (root / split).mkdir(parents=True, exist_ok=True)
        self._open()

    def _open(self) -> None:
        self.file = shard_file(self.split, self.name, self.index)
        self.partial = self.root / f"{self.file}.partial"
        self.handle = self.partial.open("wb")
        self.size = 0

    @property
    def full(self) -> bool:
        return self.size >= self.capacity

    def add(self, tokens: np.ndarray) -> int:
        taken = tokens[: self.capacity - self.size]
        self.handle.write(taken.tobytes())
        self.size += len(taken)
        return len(taken)

    def close(self, next_doc: int, next_offset: int) -> ShardRecord:
        self.handle.close()
        os.replace(self.partial, self.root / self.file)
        record = ShardRecord(self.file, self.size, next_doc, next_offset)
        self.index += 1
        self._open()
        return record

    def discard(self) -> None:
        """Drop the empty shard opened after the last one closed."""
        self.handle.close()
        self.partial.unlink(missing_ok=True)


def _batches(docs: Iterator[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == BATCH_DOCS:
            yield batch
            batch = []
    if batch:
        yield batch


# ---- encoding ------------------------------------------------------------------------------------------------------


class Encoder:
    """Encodes batches of documents with the fast tokenizer's batch encode, in `num_proc` worker processes or, for
    one, a thread of this process (the encode releases the GIL: the next batch is encoded while this one is written);
    results come back in input order."""

    def __init__(self, tokenizer_json: Path, backend: Any, eos_id: int, dtype: str, num_proc: int = 1) -> None:
        self.tokenizer_json, self.backend, self.eos_id, self.dtype = tokenizer_json, backend, eos_id, dtype
        self.num_proc = num_proc
        self.pool: Any = None
        self.thread: ThreadPoolExecutor | None = None

    def __enter__(self) -> Encoder:
        if self.num_proc > 1:  # spawn: the parent's tokenizer threads must not be forked mid-use
            context = get_context("spawn")
            self.pool = context.Pool(self.num_proc, _init_worker, (str(self.tokenizer_json), self.dtype, self.eos_id))
        else:
            self.thread = ThreadPoolExecutor(1, thread_name_prefix="encode")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
        if self.thread is not None:
            self.thread.shutdown(cancel_futures=True)

    @property
    def window(self) -> int:
        """Batches in flight: enough to keep every worker busy, few enough to bound memory (Pool.imap would read the
        whole input ahead: the corpus in memory)."""
        return 2 * self.num_proc

    def submit(self, batch: list[str]) -> Callable[[], Encoded]:
        """Start encoding a batch; the returned call waits for its result."""
        chars = np.fromiter(map(len, batch), dtype=np.int64, count=len(batch))
        pending = self._submit(batch)
        return lambda: Encoded(chars, *pending())

    def _submit(self, batch: list[str]) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
        if self.pool is not None:
            return self.pool.apply_async(_encode_in_worker, (batch,)).get
        if self.thread is None:
            raise RuntimeError("Encoder used outside its `with` block")
        return self.thread.submit(_encode, self.backend, batch, self.dtype, self.eos_id).result

    def encode(self, docs: Iterator[str]) -> Iterator[Encoded]:
        """The documents encoded, a batch at a time, in order."""
        in_flight = InFlight(self.window)
        for batch in _batches(docs):
            yield from in_flight.push(self.submit(batch))
        yield from in_flight.drain()


class InFlight:
    """Encodings submitted and not yet taken: handed back in submission order, at most `window` left waiting."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.pending: deque[Callable[[], Encoded]] = deque()

    def push(self, pending: Callable[[], Encoded]) -> Iterator[Encoded]:
        """Add one; the oldest ones, waited for, while more than `window` wait."""
        self.pending.append(pending)
        while len(self.pending) > self.window:
            yield self.pending.popleft()()

    def drain(self) -> Iterator[Encoded]:
        while self.pending:
            yield self.pending.popleft()()


def _encode(backend: Any, batch: list[str], dtype: str, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """One flat array for the batch (one conversion and, from a worker, one pickled array, not one per document).
    encode_batch_fast where the tokenizers release has it: the same ids as encode_batch, without the character
    offsets nothing here reads."""
    flat: list[int] = []
    lengths: list[int] = []
    for encoding in getattr(backend, "encode_batch_fast", backend.encode_batch)(batch, add_special_tokens=False):
        ids = encoding.ids
        flat += ids
        flat.append(eos_id)
        lengths.append(len(ids) + 1)
    return np.array(flat, dtype=dtype), np.array(lengths, dtype=np.int64)


_WORKER: dict[str, Any] = {}


def _init_worker(tokenizer_json: str, dtype: str, eos_id: int) -> None:
    from tokenizers import Tokenizer

    _WORKER.update(backend=Tokenizer.from_file(tokenizer_json), dtype=dtype, eos_id=eos_id)


def _encode_in_worker(batch: list[str]) -> tuple[np.ndarray, np.ndarray]:
    return _encode(_WORKER["backend"], batch, _WORKER["dtype"], _WORKER["eos_id"])


class TokenSpill:
    """A split's documents encoded as they are read: the token stream appended to `<stem>.bin`, (tokens, characters)
    per document as int64 pairs to `<stem>.lens`. Batches are encoded while the reader goes on; `finish` waits for
    the last ones. Written from scratch each time a source is read (a killed read starts the source over)."""

    def __init__(self, stem: Path, encoder: Encoder) -> None:
        stem.parent.mkdir(parents=True, exist_ok=True)
        self.tokens, self.lens = _spill_file(stem, ".bin").open("wb"), _spill_file(stem, ".lens").open("wb")
        self.encoder = encoder
        self.batch: list[str] = []
        self.in_flight = InFlight(encoder.window)
        self.tokens_written = 0

    def add(self, text: str) -> None:
        self.batch.append(text)
        if len(self.batch) == BATCH_DOCS:
            self._submit()

    def finish(self) -> None:
        if self.batch:
            self._submit()
        for encoded in self.in_flight.drain():
            self._write(encoded)

    def _submit(self) -> None:
        for encoded in self.in_flight.push(self.encoder.submit(self.batch)):
            self._write(encoded)
        self.batch = []

    def _write(self, encoded: Encoded) -> None:
        self.tokens.write(encoded.stream.tobytes())
        self.tokens_written += len(encoded.stream)
        self.lens.write(np.stack([encoded.lengths, encoded.chars], axis=1).astype(np.int64).tobytes())

    def close(self) -> None:
        self.tokens.close()
        self.lens.close()


def _spill_file(stem: Path, suffix: str) -> Path:
    return stem.parent / f"{stem.name}{suffix}"  # not with_suffix: a source's name may hold a dot


def has_token_spill(stem: Path) -> bool:
    return _spill_file(stem, ".lens").is_file()


def spilled(stem: Path, dtype: str, start: int = 0) -> Iterator[Encoded]:
    """A TokenSpill's documents from document `start` on, in batches, reading a batch at a time."""
    with _spill_file(stem, ".lens").open("rb") as lens, _spill_file(stem, ".bin").open("rb") as tokens:
        tokens.seek(_spilled_totals(lens, start)[0] * np.dtype(dtype).itemsize)
        while len(pairs := np.fromfile(lens, dtype=np.int64, count=2 * BATCH_DOCS).reshape(-1, 2)):
            stream = np.fromfile(tokens, dtype=dtype, count=int(pairs[:, 0].sum()))
            yield Encoded(pairs[:, 1], stream, pairs[:, 0])


def spilled_chars(stem: Path, docs: int) -> int:
    """Characters of a TokenSpill's first `docs` documents."""
    with _spill_file(stem, ".lens").open("rb") as lens:
        return _spilled_totals(lens, docs)[1]


def _spilled_totals(lens: BinaryIO, docs: int) -> tuple[int, int]:
    """(tokens, characters) of the next `docs` documents of a .lens file, read in bounded chunks."""
    tokens = chars = 0
    while docs > 0:
        pairs = np.fromfile(lens, dtype=np.int64, count=2 * min(docs, 1 << 16)).reshape(-1, 2)
        if not len(pairs):
            break
        tokens, chars, docs = tokens + int(pairs[:, 0].sum()), chars + int(pairs[:, 1].sum()), docs - len(pairs)
    return tokens, chars


def as_dicts(records: list[ShardRecord]) -> list[dict[str, Any]]:
    return [asdict(r) for r in records]


def from_dicts(records: list[dict[str, Any]]) -> list[ShardRecord]:
    return [ShardRecord(**r) for r in records]
