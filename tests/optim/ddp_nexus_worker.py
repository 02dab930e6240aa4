"""Run by test_nexus_ddp.py under `torchrun --nproc_per_node 2` (gloo): Nexus on DDP, each rank half a micro-batch.

Rank 0 saves the final parameters; the test compares them with one process on the whole micro-batches.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from nexus_eval.optim import Nexus
from tests.optim.test_nexus_optimizer import micro_batches, param_groups, tiny_mlp

STEPS, K = 5, 4


def train(model: nn.Module, rank: int, world: int) -> None:
    opt = Nexus(torch.optim.AdamW(param_groups(model, 0.1), lr=3e-3), inner_lr_ratio=5.0)
    for step in micro_batches(0, steps=STEPS, k=K):
        for x, y in step:
            shard = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
            # No no_sync(): every inner step needs the all-reduced (global micro-batch) gradient.
            nn.functional.mse_loss(model(x[shard]), y[shard]).backward()
            opt.inner_step()
        opt.step()


def main(out: str) -> None:
    if out.endswith("single.pt"):
        model = tiny_mlp(1)
        train(model, 0, 1)
        torch.save(model.state_dict(), out)
        return
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = DistributedDataParallel(tiny_mlp(1))
    train(model, rank, world)
    states = [None] * world
    dist.all_gather_object(states, model.module.state_dict())
    if rank == 0:
        torch.save(states, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
