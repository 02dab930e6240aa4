"""Geometry diagnostics: how similar are the per-source gradients, and how close are the per-source minima?

- cosine_matrix(grads): the cheap S×S cosine of per-source gradients (nexus_eval.training.grad_cosine, re-exported
  here; the trainer logs it at every eval interval).
- gradient_cosines(model, batches_by_source): per-source gradients over held-out micro-batches, their cosines and
  the paper's Theorem 3.1 proxy Σ_{i≠j}(1 − cos_ij) · G² / (K·λ²) (how G and λ are estimated: gradients.py).
- minima_closeness(model, batches_by_source, steps, lr): a fixed short fine-tune on each source alone, then
  ‖θ − θ_k*‖², pairwise endpoint distances and the cross-loss matrix (minima.py).
- geometry(ckpt, data_dir): both for one checkpoint, on the data build's token streams, cached as JSON (measure.py).
"""

from nexus_eval.geometry.gradients import gradient_cosines, top_hessian_eigenvalue
from nexus_eval.geometry.measure import GeometrySettings, geometry
from nexus_eval.geometry.minima import minima_closeness
from nexus_eval.training.grad_cosine import cosine_matrix

__all__ = [
    "GeometrySettings",
    "cosine_matrix",
    "geometry",
    "gradient_cosines",
    "minima_closeness",
    "top_hessian_eigenvalue",
]
