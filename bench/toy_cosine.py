"""Toy two-source problem: at the same total loss, is the inter-source gradient cosine higher after Nexus than AdamW?

Two regression sources share an input distribution but have different (correlated) teacher networks; a small MLP
is trained on both with K=2 micro-batches per step (one per source), AdamW on the accumulated gradient vs Nexus on
the same micro-batches. At each target total loss we report the cosine between the two full-batch source gradients
at the first step each optimizer reaches it.
    python bench/toy_cosine.py [--seeds 5] [--inner-lr-ratio 30]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from nexus_eval.optim import Nexus

DIM, HIDDEN, N = 8, 32, 512


def make_problem(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(DIM, 1, generator=gen)
    data = []
    for _ in range(2):
        teacher = base + 0.7 * torch.randn(DIM, 1, generator=gen)
        x = torch.randn(N, DIM, generator=gen)
        data.append((x, torch.tanh(x @ teacher) + 0.1 * torch.randn(N, 1, generator=gen)))
    return data


def model_for(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(DIM, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, 1))


def source_grads(model: nn.Module, data) -> list[torch.Tensor]:  # noqa: ANN001
    out = []
    for x, y in data:
        grads = torch.autograd.grad(nn.functional.mse_loss(model(x), y), list(model.parameters()))
        out.append(torch.cat([g.flatten() for g in grads]))
    return out


def run(optimizer: str, seed: int, steps: int, lr: float, ratio: float, targets: list[float]) -> dict[float, float]:
    data = make_problem(seed)
    model = model_for(seed)
    outer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    opt = Nexus(outer, inner_lr_ratio=ratio) if optimizer == "nexus" else outer
    gen = torch.Generator().manual_seed(seed + 1000)
    found: dict[float, float] = {}
    for _ in range(steps):
        for x, y in data:
            idx = torch.randint(0, N, (64,), generator=gen)
            loss = nn.functional.mse_loss(model(x[idx]), y[idx])
            if optimizer == "nexus":
                loss.backward()
                opt.inner_step()
            else:
                (loss / len(data)).backward()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            total = sum(nn.functional.mse_loss(model(x), y).item() for x, y in data) / len(data)
        for target in targets:
            if target not in found and total <= target:
                g1, g2 = source_grads(model, data)
                found[target] = nn.functional.cosine_similarity(g1, g2, dim=0).item()
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--inner-lr-ratio", type=float, default=10.0)
    parser.add_argument("--targets", default="0.3,0.2,0.15")
    args = parser.parse_args()
    targets = [float(t) for t in args.targets.split(",")]
    print(f"toy two-source problem, {args.seeds} seeds, lr {args.lr}, Nexus inner_lr_ratio {args.inner_lr_ratio}")
    print(f"{'target loss':>11} {'cos AdamW':>10} {'cos Nexus':>10} {'Nexus higher':>13}")
    for target in targets:
        pairs = []
        for seed in range(args.seeds):
            a = run("adamw", seed, args.steps, args.lr, args.inner_lr_ratio, [target]).get(target)
            n = run("nexus", seed, args.steps, args.lr, args.inner_lr_ratio, [target]).get(target)
            if a is not None and n is not None:
                pairs.append((a, n))
        if not pairs:
            print(f"{target:11.3f} {'not reached':>10}")
            continue
        mean_a = sum(a for a, _ in pairs) / len(pairs)
        mean_n = sum(n for _, n in pairs) / len(pairs)
        wins = sum(n > a for a, n in pairs)
        print(f"{target:11.3f} {mean_a:10.3f} {mean_n:10.3f} {wins:>8}/{len(pairs)}")


if __name__ == "__main__":
    main()
