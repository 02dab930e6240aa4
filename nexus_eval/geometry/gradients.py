"""Gradient similarity across sources at one point, and the curvature estimate for the Theorem 3.1 proxy.

The paper's Theorem 3.1 bounds how far apart per-source minima are by Σ_{i≠j}(1 − cos(∇L_i, ∇L_j)) · G² / (K · λ²).
We estimate its pieces at the checkpoint:
- cos_ij: cosine between source i's and source j's gradient, each averaged over N held-out micro-batches;
  Σ_{i≠j} runs over ordered pairs (each unordered pair counts twice), K = S, the number of sources.
- G: the largest per-source gradient norm (the theorem assumes ‖∇L_i‖ ≤ G for every source).
- λ: the dominant eigenvalue of the Hessian of the mixture loss (mean over sources of each source's loss on its first
  micro-batch), by power iteration on Hessian-vector products. The theorem's λ is a curvature (strong convexity)
  constant; an LLM Hessian's smallest eigenvalue is ~0 or negative, so we use the dominant one as the curvature
  scale. That makes the RHS a proxy to compare checkpoints by, not a bound. With hessian_iters=0 (or λ ≤ 0) the RHS
  is None and only the cosine term is reported.
Hessian-vector products are central finite differences of gradients, Hv ≈ (∇L(θ+εv) − ∇L(θ−εv)) / 2ε with
‖v‖ = 1 and ε = 1e-3·max(‖θ‖, 1): first-order autograd only, so they work with fused attention kernels (CPU SDPA has
no double backward) and cost 2·S backward passes each. The error is O(ε²) in the third derivative; exact for
quadratics.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nexus_eval.geometry.losses import (
    Advance,
    BatchesBySource,
    LossFn,
    flat_params,
    mean_gradient,
    set_flat_params,
)
from nexus_eval.training.grad_cosine import cosine_matrix
from nexus_eval.training.model import causal_lm_loss

FD_RELATIVE_STEP = 1e-3


def _mixture_gradient(
    model: nn.Module, batches_by_source: BatchesBySource, loss_fn: LossFn, advance: Advance | None
) -> torch.Tensor:
    grads = [mean_gradient(model, batches[:1], loss_fn, advance) for batches in batches_by_source.values()]
    return torch.stack(grads).mean(dim=0)


def top_hessian_eigenvalue(
    model: nn.Module,
    batches_by_source: BatchesBySource,
    iters: int,
    seed: int = 0,
    loss_fn: LossFn = causal_lm_loss,
    advance: Advance | None = None,
) -> float:
    """Dominant eigenvalue (largest |λ|, signed) of the mixture-loss Hessian by `iters` power-iteration steps."""
    theta = flat_params(model)
    step = FD_RELATIVE_STEP * max(float(theta.norm()), 1.0)
    generator = torch.Generator().manual_seed(seed)
    vector = torch.randn(theta.numel(), generator=generator, dtype=torch.float64).to(theta.device, theta.dtype)
    vector /= vector.norm()
    eigenvalue = math.nan
    try:
        for _ in range(iters):
            set_flat_params(model, theta + step * vector)
            grad_plus = _mixture_gradient(model, batches_by_source, loss_fn, advance)
            set_flat_params(model, theta - step * vector)
            grad_minus = _mixture_gradient(model, batches_by_source, loss_fn, advance)
            hessian_vector = (grad_plus - grad_minus) / (2 * step)
            eigenvalue = float(torch.dot(vector.double(), hessian_vector.double()))  # Rayleigh quotient, ‖v‖ = 1
            norm = hessian_vector.norm()
            if norm == 0:
                return 0.0
            vector = hessian_vector / norm
    finally:
        set_flat_params(model, theta)
    return eigenvalue


def gradient_cosines(
    model: nn.Module,
    batches_by_source: BatchesBySource,
    hessian_iters: int = 10,
    seed: int = 0,
    loss_fn: LossFn = causal_lm_loss,
    advance: Advance | None = None,
) -> dict:
    """Per-source gradients (each averaged over its micro-batches), their cosine matrix and the Theorem 3.1 proxy.

    Returns {"sources", "grad_cos_matrix", "grad_cos_mean_offdiag", "grad_norms": {source: ‖g‖}, "grad_G",
    "hessian_lambda" (None when hessian_iters=0), "hessian_iters", "theorem_cos_term": Σ_{i≠j}(1 − cos_ij),
    "theorem_rhs": cos term · G² / (K·λ²), or None without a positive λ}. The model's parameters are left unchanged.
    """
    if len(batches_by_source) < 2 or any(not b for b in batches_by_source.values()):
        raise ValueError("gradient_cosines needs at least two sources, each with at least one micro-batch")
    grads = {source: mean_gradient(model, batches, loss_fn, advance) for source, batches in batches_by_source.items()}
    cosines = cosine_matrix(grads)
    norms = {source: float(grad.norm()) for source, grad in grads.items()}
    del grads
    n_sources = len(cosines["sources"])
    cos_term = sum(1.0 - cosines["matrix"][i][j] for i in range(n_sources) for j in range(n_sources) if i != j)
    bound_g = max(norms.values())
    eigenvalue = (
        top_hessian_eigenvalue(model, batches_by_source, hessian_iters, seed, loss_fn, advance)
        if hessian_iters
        else None
    )
    rhs = cos_term * bound_g**2 / (n_sources * eigenvalue**2) if eigenvalue is not None and eigenvalue > 0 else None
    return {
        "sources": cosines["sources"],
        "grad_cos_matrix": cosines["matrix"],
        "grad_cos_mean_offdiag": cosines["mean_offdiag"],
        "grad_norms": norms,
        "grad_G": bound_g,
        "hessian_lambda": eigenvalue,
        "hessian_iters": hessian_iters,
        "theorem_cos_term": cos_term,
        "theorem_rhs": rhs,
    }
