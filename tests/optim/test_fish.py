"""Fish (optim/fish.py) on a toy model: plain-SGD inner steps at the scheduled lr, then the meta step θ0 + ε(θK − θ0)
taken by torch's SGD, exactly; and a save/load round trip that continues identically."""

from __future__ import annotations

import copy

import torch

from nexus_eval.optim import Fish


def toy_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))


def toy_batches(k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(5, 4, generator=g), torch.randn(5, 1, generator=g)) for _ in range(k)]


def loss_of(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return torch.nn.functional.mse_loss(model(x), y)


def test_fish_outer_update_is_meta_lr_times_the_displacement() -> None:
    model = toy_model()
    lr, ratio, meta_lr = 0.05, 2.0, 0.3
    opt = Fish(model.parameters(), lr=lr, meta_lr=meta_lr, inner_lr_ratio=ratio)
    reference = copy.deepcopy(model)  # plain SGD by hand: θ ← θ − γ g at the moving point, γ = ratio × lr
    theta0 = [p.detach().clone() for p in model.parameters()]
    for batch in toy_batches(3):
        loss_of(model, batch).backward()
        opt.inner_step()
        grads = torch.autograd.grad(loss_of(reference, batch), list(reference.parameters()))
        with torch.no_grad():
            for p, g in zip(reference.parameters(), grads, strict=True):
                p -= ratio * lr * g
    theta_k = [p.detach().clone() for p in model.parameters()]
    for got, want in zip(theta_k, reference.parameters(), strict=True):  # the inner walk is un-normalized SGD
        torch.testing.assert_close(got, want, rtol=0, atol=1e-7)
    assert any(not torch.equal(a, b) for a, b in zip(theta_k, theta0, strict=True))
    opt.step()
    for p, start, end in zip(model.parameters(), theta0, theta_k, strict=True):
        # Δ comes from the summed inner steps (not θ0 − θK, which rounding would blur): equal to float32 precision
        torch.testing.assert_close(p, start + meta_lr * (end - start), rtol=0, atol=1e-7)  # the paper's form
        assert p.grad is None  # the displacement does not leak into the next step
    assert opt.inner_steps == 0


def test_the_schedule_sets_the_inner_lr_and_leaves_the_meta_step_alone() -> None:
    model = toy_model()
    opt = Fish(model.parameters(), lr=0.1, meta_lr=0.5, inner_lr_ratio=1.0)
    for group in opt.param_groups:  # what the trainer's set_lr and torch lr schedulers write
        group["lr"] = 0.01
    assert opt.meta_lr == 0.5 and opt.outer.param_groups[0]["lr"] == 0.5
    start = [p.detach().clone() for p in model.parameters()]
    batch = toy_batches(1)[0]
    loss_of(model, batch).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.inner_step()
    for p, p0, g in zip(model.parameters(), start, grads, strict=True):
        torch.testing.assert_close(p.detach(), p0 - 0.01 * g, rtol=0, atol=1e-8)
    assert opt.outer.state_dict()["state"] == {}  # plain SGD: no momentum buffers


def test_fish_state_round_trip_continues_identically() -> None:
    a = toy_model()
    opt_a = Fish(a.parameters(), lr=0.05, meta_lr=0.4, inner_lr_ratio=1.5)
    batches = toy_batches(4)
    for batch in batches[:2]:
        loss_of(a, batch).backward()
        opt_a.inner_step()
    opt_a.step()
    b = copy.deepcopy(a)
    opt_b = Fish(b.parameters(), lr=0.05, meta_lr=0.9, inner_lr_ratio=1.0)  # settings replaced by the loaded ones
    opt_b.load_state_dict(opt_a.state_dict())
    assert opt_b.meta_lr == 0.4 and opt_b.inner_lr_ratio == 1.5 and not opt_b.normalize
    for model, opt in ((a, opt_a), (b, opt_b)):
        for batch in batches[2:]:
            loss_of(model, batch).backward()
            opt.inner_step()
        opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
