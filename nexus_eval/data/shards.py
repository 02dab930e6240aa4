"""Token files of a build: documents encoded in batches (in `num_proc` worker processes when asked) and written as
fixed-size shards, each document followed by eos.

Shard 0 of a split is `<split>/<name>.bin` and shard i > 0 `<split>/<name>.<i:05d>.bin`: a build small enough for one
shard keeps the single-file layout (and bytes) of earlier builds. Workers return the encodings of their batch in
order (Pool.imap), so the bytes do not depend on `num_proc`. A shard is complete once it is renamed into place and
recorded by the caller (`on_shard`): a resumed build starts after the last one recorded.
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
from typing import Any

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
    docs: Iterator[str],
    encoder: Encoder,
    *,
    shard_tokens: int,
    max_tokens: int | None = None,
    done: list[ShardRecord] | None = None,
    on_shard: Callable[[ShardRecord], None] = lambda record: None,
    advance: Callable[[int, int], None] = lambda chars, tokens: None,
) -> WriteResult:
    """Encode `docs` (already advanced past the shards in `done`) into shards under root; returns all shards."""
    shards = list(done or [])
    doc_index = shards[-1].next_doc if shards else 0
    skip = shards[-1].next_offset if shards else 0  # tokens of the current document already in an earlier shard
    written = sum(s.tokens for s in shards)
    buffer = _ShardBuffer(root, split, name, len(shards), shard_tokens, encoder.dtype)

    def close_shard(next_doc: int, next_offset: int) -> None:
        record = buffer.close(next_doc, next_offset)
        shards.append(record)
        on_shard(record)

    for batch_docs, stream, lengths in encoder.encode(_batches(docs)):
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
        advance(sum(len(text) for text in batch_docs[:last]), end)
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

    def _submit(self, batch: list[str]) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
        """Start encoding a batch; the returned call waits for its result."""
        if self.pool is not None:
            return self.pool.apply_async(_encode_in_worker, (batch,)).get
        if self.thread is not None:
            return self.thread.submit(_encode, self.backend, batch, self.dtype, self.eos_id).result
        result = _encode(self.backend, batch, self.dtype, self.eos_id)  # used outside a `with`: no look-ahead
        return lambda: result

    def encode(self, batches: Iterator[list[str]]) -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
        """(documents, their token stream with eos after each, tokens per document with its eos) per batch."""
        # A window of batches in flight (Pool.imap would read the whole input ahead: the corpus in memory).
        in_flight: deque[tuple[list[str], Callable[[], tuple[np.ndarray, np.ndarray]]]] = deque()
        for batch in batches:
            in_flight.append((batch, self._submit(batch)))
            if len(in_flight) >= 2 * self.num_proc:
                done, result = in_flight.popleft()
                yield done, *result()
        while in_flight:
            done, result = in_flight.popleft()
            yield done, *result()


def _encode(backend: Any, batch: list[str], dtype: str, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """One flat array for the batch (one conversion and, from a worker, one pickled array, not one per document).
    encode_batch_fast: the same ids as encode_batch, without the character offsets nothing here reads."""
    flat: list[int] = []
    lengths: list[int] = []
    for encoding in backend.encode_batch_fast(batch, add_special_tokens=False):
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


def as_dicts(records: list[ShardRecord]) -> list[dict[str, Any]]:
    return [asdict(r) for r in records]


def from_dicts(records: list[dict[str, Any]]) -> list[ShardRecord]:
    return [ShardRecord(**r) for r in records]
