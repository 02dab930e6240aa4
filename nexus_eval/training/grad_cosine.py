"""Cosine similarity between per-source gradients: the cheap function the trainer calls at every eval interval, and
the window of steps whose per-source gradients it is computed on."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from nexus_eval.schema import GradCosine

GradientLike = torch.Tensor | Sequence[torch.Tensor]


CHUNK = 1 << 22  # elements cast to float64 at a time: bounded extra memory even for one flat 1B-element gradient


def _chunks(grad: GradientLike) -> list[torch.Tensor]:
    parts = [grad] if isinstance(grad, torch.Tensor) else list(grad)
    return [chunk for part in parts for chunk in part.reshape(-1).split(CHUNK)]


def _dot(a: GradientLike, b: GradientLike) -> float:
    """Inner product of two gradients of the same layout (one tensor, or lists of per-parameter tensors)."""
    chunks_a, chunks_b = _chunks(a), _chunks(b)
    if [c.numel() for c in chunks_a] != [c.numel() for c in chunks_b]:
        raise ValueError("gradients differ in layout (shapes of their tensors)")
    # float64 accumulation: float32 sums over millions of terms lose the digits that cosines near 1 need.
    total = torch.zeros((), dtype=torch.float64, device=chunks_a[0].device if chunks_a else "cpu")
    for x, y in zip(chunks_a, chunks_b, strict=True):
        total += torch.dot(x.double(), y.double())
    return float(total)


def cosine_matrix(grads: dict[str, GradientLike]) -> GradCosine:
    """S×S cosine similarity of per-source gradients.

    grads: source name → that source's gradient (e.g. the sum over its micro-batches in one step), either one tensor
    of any shape or a list of per-parameter tensors (same layout for every source); any device.
    Returns {"sources": names in sorted order, "matrix": rows of floats (symmetric, diagonal exactly 1),
    "mean_offdiag": mean over i≠j}. A source with a zero gradient has NaN cosines; with fewer than two sources
    mean_offdiag is NaN (no pairs). Cost: S(S+1)/2 dot products, no gradient copies beyond a float64 cast per tensor.
    """
    sources = sorted(grads)
    with torch.no_grad():
        gram = {(a, b): _dot(grads[a], grads[b]) for i, a in enumerate(sources) for b in sources[i:]}
    norms = {s: math.sqrt(max(gram[(s, s)], 0.0)) for s in sources}
    matrix: list[list[float]] = []
    for i, a in enumerate(sources):
        row = []
        for j, b in enumerate(sources):
            if norms[a] == 0.0 or norms[b] == 0.0:
                row.append(math.nan)
            elif i == j:
                row.append(1.0)
            else:
                dot = gram[(a, b)] if i < j else gram[(b, a)]
                row.append(min(1.0, max(-1.0, dot / (norms[a] * norms[b]))))
        matrix.append(row)
    offdiag = [matrix[i][j] for i in range(len(sources)) for j in range(len(sources)) if i != j]
    mean_offdiag = sum(offdiag) / len(offdiag) if offdiag else math.nan
    return {"sources": sources, "matrix": matrix, "mean_offdiag": mean_offdiag}


COSINE_WINDOW_STEPS = 4


class CosineWindow:
    """The trainer's gradient-cosine log: each source's micro-batch gradients summed over the last few steps before
    an eval, so that every source is represented even when one step's K draws miss a source."""

    def __init__(self, eval_interval: int, steps: int = COSINE_WINDOW_STEPS):
        self.eval_interval, self.steps = eval_interval, steps
        self.grads: dict[str, torch.Tensor] = {}  # source → summed gradient; part of the trainer state

    def records(self, step: int, total_steps: int) -> bool:
        """Whether the 1-based `step` lies in the window before an eval (every eval_interval steps, and the end)."""
        until_eval = min(-step % self.eval_interval, total_steps - step)
        return until_eval < self.steps

    def add(self, grads: dict[str, torch.Tensor]) -> None:
        for source, grad in grads.items():
            self.grads[source] = self.grads.get(source, 0) + grad

    def take(self) -> GradCosine | None:
        """The cosines of the window's gradients (None with fewer than two sources), and a new empty window."""
        grads, self.grads = self.grads, {}
        return cosine_matrix(grads) if len(grads) > 1 else None
