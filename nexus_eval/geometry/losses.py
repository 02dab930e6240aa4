"""What the geometry measurements differentiate: a loss of one (inputs, targets) micro-batch, and gradient helpers."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]
BatchesBySource = dict[str, list[Batch]]
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
Advance = Callable[[], None]


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.nn.utils.parameters_to_vector(trainable(model)).detach().clone()


def set_flat_params(model: nn.Module, flat: torch.Tensor) -> None:
    """Copy values in (torch's vector_to_parameters would make the parameters views of `flat`, so a later in-place
    update of the model would silently change the saved vector too)."""
    offset = 0
    with torch.no_grad():
        for param in trainable(model):
            param.copy_(flat[offset : offset + param.numel()].view_as(param))
            offset += param.numel()


def mean_gradient(
    model: nn.Module, batches: list[Batch], loss_fn: LossFn, advance: Advance | None = None
) -> torch.Tensor:
    """Flattened gradient of the mean loss over the micro-batches (one backward per micro-batch)."""
    params = trainable(model)
    dtype = torch.promote_types(params[0].dtype, torch.float32)  # never accumulate in half precision
    total = torch.zeros(sum(p.numel() for p in params), dtype=dtype, device=params[0].device)
    for inputs, targets in batches:
        grads = torch.autograd.grad(loss_fn(model, inputs, targets), params, allow_unused=True)
        total += torch.cat(
            [
                (g if g is not None else torch.zeros_like(p)).reshape(-1).to(dtype)
                for g, p in zip(grads, params, strict=True)
            ]
        )
        if advance is not None:
            advance()
    return total / len(batches)


@torch.no_grad()
def mean_loss(model: nn.Module, batches: list[Batch], loss_fn: LossFn, advance: Advance | None = None) -> float:
    total = 0.0
    for inputs, targets in batches:
        total += float(loss_fn(model, inputs, targets))
        if advance is not None:
            advance()
    return total / len(batches)
