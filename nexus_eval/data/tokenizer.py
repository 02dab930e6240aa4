"""Byte-level BPE trained on the training split, wrapped as a transformers PreTrainedTokenizerFast."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from nexus_eval.errors import DataError

if TYPE_CHECKING:  # transformers takes a second to import: only the functions that need it import it
    from transformers import PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"  # also bos: documents in the token streams are separated by it
PAD_TOKEN = "<|pad|>"  # a separate id, so padding never hides a real end-of-document token
MIN_VOCAB, MAX_VOCAB = 300, 65536  # 256 bytes + specials + some merges; ids must fit uint16


def train_tokenizer(docs: Iterator[str], vocab_size: int, n_docs: int) -> PreTrainedTokenizerFast:
    if not MIN_VOCAB <= vocab_size <= MAX_VOCAB:
        raise DataError(f"--vocab-size {vocab_size}: must be between {MIN_VOCAB} and {MAX_VOCAB} (uint16 token ids)")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(docs, trainer=trainer, length=n_docs)
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN, unk_token=None, pad_token=PAD_TOKEN
    )


def encode_stream(tokenizer: PreTrainedTokenizerFast, docs: list[str], path: Path, batch: int = 512) -> int:
    """Write docs as one uint16 stream, each document followed by eos; returns the number of tokens written."""
    backend: Tokenizer = tokenizer.backend_tokenizer
    eos = np.array([tokenizer.eos_token_id], dtype=np.uint16)
    written = 0
    with path.open("wb") as f:
        for start in range(0, len(docs), batch):
            for encoding in backend.encode_batch(docs[start : start + batch], add_special_tokens=False):
                ids = np.asarray(encoding.ids, dtype=np.uint16)
                f.write(ids.tobytes())
                f.write(eos.tobytes())
                written += len(ids) + 1
    return written
