"""Deterministic micro-batches of each training source, cut from the data build's uint16 token streams."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import torch

from nexus_eval.errors import DataError
from nexus_eval.geometry.losses import Batch

SPLIT_CODES = {"train": 1, "val": 2}


def training_sources(data_dir: Path) -> list[str]:
    """Names of the data build's training sources (the manifest's, in build order)."""
    from nexus_eval.data import load_manifest, train_source_names

    return train_source_names(load_manifest(data_dir))


def source_batches(
    data_dir: Path, split: str, source: str, n_batches: int, batch_size: int, context: int, seed: int, vocab_size: int
) -> list[Batch]:
    """n_batches micro-batches of batch_size windows of context+1 tokens at seeded random offsets.

    The offsets depend only on (seed, source name, split), so every checkpoint is measured on the same tokens.
    """
    from nexus_eval.data import open_tokens

    tokens = open_tokens(data_dir, split, source)
    path = Path(tokens.filename) if tokens.filename else data_dir / split / source
    if len(tokens) < context + 1:
        raise DataError(
            f"{path}: {len(tokens)} tokens, fewer than one window of --context + 1 = {context + 1}; lower --context"
        )
    rng = np.random.default_rng([seed, zlib.crc32(source.encode()), SPLIT_CODES[split]])
    offsets = rng.integers(0, len(tokens) - context, size=(n_batches, batch_size))
    batches = []
    for row in offsets:
        windows = torch.from_numpy(np.stack([np.asarray(tokens[o : o + context + 1], dtype=np.int64) for o in row]))
        if int(windows.max()) >= vocab_size:
            raise DataError(
                f"{path}: token id {int(windows.max())} >= the model's vocabulary {vocab_size} (data built with "
                "another tokenizer?)"
            )
        batches.append((windows[:, :-1], windows[:, 1:]))
    return batches
