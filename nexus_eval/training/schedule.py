"""The micro-batch schedule: which source and which token windows every (seed, step, micro-batch) trains on.

It is a pure function of (seed, step): AdamW and Nexus runs (and every ablation variant) with one seed consume the
identical sequence of (source, micro-batch) — only the optimizer differs — and a resumed run needs no sampler state to
continue exactly. nexus-mixed regroups each step's rows (mixed_micro_batches): the same sequences, other groups.
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


MIXED = "mixed"  # the source label of a regrouped micro-batch (mixed_micro_batches)


def mixed_micro_batches(batches: list[MicroBatch]) -> list[MicroBatch]:
    """The same rows (sequences) as `batches`, regrouped into as many micro-batches of the same size so that each
    holds every source of the step: row r of the step (micro-batch r // B, row r % B) is dealt to micro-batch r % K,
    like cards. With B ≥ K rows per micro-batch each new one holds ⌊B/K⌋ or ⌈B/K⌉ rows of every original one, hence
    of every source drawn for the step; with B < K each source is spread over as many as its rows reach. The
    multiset of sequences of the step is unchanged (nexus-mixed consumes what adamw and nexus consume), only the
    grouping into inner steps differs."""
    k = len(batches)
    if k <= 1:
        return list(batches)
    inputs = torch.cat([mb.inputs for mb in batches])
    labels = torch.cat([mb.labels for mb in batches])
    return [MicroBatch(MIXED, inputs[m::k].contiguous(), labels[m::k].contiguous()) for m in range(k)]
