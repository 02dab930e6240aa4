"""The micro-batch schedule: which source and which token windows every (seed, step, micro-batch) trains on.

It is a pure function of (seed, step): AdamW and Nexus runs with one seed consume the identical sequence of
(source, micro-batch) — only the optimizer differs — and a resumed run needs no sampler state to continue exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class MicroBatch:
    source: str
    inputs: torch.Tensor  # (micro_batch, context) token ids
    labels: torch.Tensor  # inputs shifted by one token


class MicroBatchSchedule:
    def __init__(
        self, streams: dict[str, np.ndarray], mixture: dict[str, float], micro_batch: int, context: int, seed: int
    ):
        self.sources = sorted(mixture)
        weights = np.array([mixture[s] for s in self.sources], dtype=np.float64)
        self.weights = weights / weights.sum()
        self.streams = streams
        self.micro_batch = micro_batch
        self.context = context
        self.seed = seed

    def step_sources(self, step: int, accum: int) -> list[str]:
        """Sources of the K micro-batches of one outer step, drawn by mixture weight."""
        rng = np.random.default_rng([self.seed, step, 0])
        return [self.sources[i] for i in rng.choice(len(self.sources), size=accum, p=self.weights)]

    def step_batches(self, step: int, accum: int) -> list[MicroBatch]:
        batches = []
        for m, source in enumerate(self.step_sources(step, accum)):
            stream = self.streams[source]
            rng = np.random.default_rng([self.seed, step, m + 1])
            starts = rng.integers(0, len(stream) - self.context - 1, size=self.micro_batch)
            windows = np.stack([stream[s : s + self.context + 1] for s in starts]).astype(np.int64)
            tokens = torch.from_numpy(windows)
            batches.append(MicroBatch(source, tokens[:, :-1], tokens[:, 1:]))
        return batches
