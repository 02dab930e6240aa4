"""How a run executes: device, precision, process group, the rank's share of each micro-batch, DDP / FSDP2 wrapping.

Nothing here changes WHAT is trained. The schedule yields the same K source-pure global micro-batches for
(seed, step) whatever the world size; each rank takes its contiguous slice of every one of them, and DDP / FSDP
average the gradients over ranks, so the gradient of every micro-batch is the single-process one (up to float
rounding). `device_batch` splits a rank's slice further into physical batches whose gradients accumulate before the
micro-batch's one optimizer (or Nexus inner) step.

Under torchrun (RANK / WORLD_SIZE / LOCAL_RANK in the environment): gloo on CPU, nccl on CUDA. One process without
torchrun runs the single-process path, the one the CPU results of this harness were made with, unchanged.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from nexus_eval.errors import RecipeError
from nexus_eval.schema import ExecutionRecord
from nexus_eval.training.recipe import ParallelSpec


@dataclass(frozen=True)
class Execution:
    """The resolved [parallel] table of one process."""

    device: torch.device
    strategy: str  # "none" | "ddp" | "fsdp"
    rank: int
    world: int
    local_rank: int
    compile: bool
    device_batch: int  # rows per forward/backward on this rank (≤ its share of a micro-batch)
    activation_checkpointing: bool
    bf16: bool | None = None  # bf16 autocast over fp32 master weights; None: on CUDA only (train's rule)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prints, logs and writes files (besides its own checkpoint shards)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.strategy != "none"

    @property
    def mixed_precision(self) -> bool:
        """bf16 compute with fp32 master weights and optimizer state: training uses it on CUDA only (CPU runs stay
        fp32, exact); `nexus-eval optim check --dtype bf16` on the CPU too (CPU autocast stands in for CUDA's)."""
        return self.device.type == "cuda" if self.bf16 is None else self.bf16

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast around forward passes (FSDP casts its parameters itself: see wrap_model)."""
        if self.mixed_precision and self.strategy != "fsdp":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def record(self) -> ExecutionRecord:
        return {
            "strategy": self.strategy,
            "device": self.device.type,
            "world_size": self.world,
            "compile": self.compile,
            "device_batch": self.device_batch,
            "activation_checkpointing": self.activation_checkpointing,
            "precision": "bf16-autocast/fp32-master" if self.mixed_precision else "fp32",
        }


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise RecipeError(f"environment variable {name}={os.environ[name]!r} is not an integer") from None


def resolve_device(requested: str, local_rank: int) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise RecipeError("--device cuda: no CUDA GPU is visible to torch here (use --device cpu or auto)")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if requested == "mps" and not torch.backends.mps.is_available():
        raise RecipeError("--device mps: the MPS backend is not available here (use --device cpu or auto)")
    return torch.device(requested)


def resolve_execution(spec: ParallelSpec, micro_batch: int, where: str) -> Execution:
    """The [parallel] table (with --strategy / --device applied) for this process; RecipeError naming the setting
    when it cannot run here. Reads torchrun's environment; starts nothing."""
    under_torchrun = launched_by_torchrun()
    rank, world = (_env_int("RANK", 0), _env_int("WORLD_SIZE", 1)) if under_torchrun else (0, 1)
    local_rank = _env_int("LOCAL_RANK", 0) if under_torchrun else 0
    strategy = spec.strategy
    if strategy in ("ddp", "fsdp") and not under_torchrun:
        raise RecipeError(
            f"--strategy {strategy} (parallel.strategy in {where}) needs several processes: launch with "
            f"`torchrun --nproc_per_node N -m nexus_eval.cli train ...`, or use --strategy none"
        )
    if strategy == "auto":
        strategy = "ddp" if world > 1 else "none"
    if strategy == "none" and world > 1:
        raise RecipeError(f"--strategy none: torchrun started {world} processes; use --strategy ddp or fsdp")
    if micro_batch % world:
        raise RecipeError(
            f"{where}: optim.micro_batch {micro_batch} is not divisible by the world size {world}: every rank "
            f"takes an equal slice of each micro-batch"
        )
    device = resolve_device(spec.device, local_rank)
    share = micro_batch // world
    compile_ = device.type == "cuda" if spec.compile == "auto" else bool(spec.compile)
    return Execution(
        device=device,
        strategy=strategy,
        rank=rank,
        world=world,
        local_rank=local_rank,
        compile=compile_,
        device_batch=min(spec.device_batch or share, share),
        activation_checkpointing=spec.activation_checkpointing,
    )


def start(ex: Execution) -> bool:
    """Join the process group (when distributed and not joined yet) and set the device's math modes. Returns
    whether this call started the group, so that the caller also ends it."""
    if ex.device.type == "cuda":
        torch.cuda.set_device(ex.device)
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: the fp32 parts (optimizer, loss) stay fp32
        torch.backends.cudnn.allow_tf32 = True
    if not ex.distributed or dist.is_initialized():
        return False
    backend = "nccl" if ex.device.type == "cuda" else "gloo"
    dist.init_process_group(backend, device_id=ex.device if ex.device.type == "cuda" else None)
    return True


def end(started: bool) -> None:
    if started and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ex: Execution) -> None:
    if ex.distributed:
        dist.barrier()


# ---- the data: a rank's share of a micro-batch ---------------------------------------------------------------------


def rank_rows(rows: int, ex: Execution) -> slice:
    """This rank's contiguous slice of a global micro-batch of `rows` rows (resolve_execution checked divisibility)."""
    share = rows // ex.world
    return slice(ex.rank * share, (ex.rank + 1) * share)


def physical_batches(inputs: torch.Tensor, labels: torch.Tensor, ex: Execution) -> list[tuple[torch.Tensor, ...]]:
    """This rank's rows of one micro-batch, in device_batch chunks, on the device (pinned, non-blocking on CUDA)."""
    mine = rank_rows(len(inputs), ex)
    inputs, labels = inputs[mine], labels[mine]
    size = ex.device_batch or len(inputs)  # 0: all of them at once
    chunks = list(zip(inputs.split(size), labels.split(size), strict=True))
    return [(to_device(x, ex), to_device(y, ex)) for x, y in chunks]


def to_device(t: torch.Tensor, ex: Execution) -> torch.Tensor:
    if ex.device.type == "cuda":
        return t.pin_memory().to(ex.device, non_blocking=True)
    return t.to(ex.device)


# ---- the model -----------------------------------------------------------------------------------------------------


def decoder_layers(model: Any) -> list[torch.nn.Module]:
    return list(model.model.layers)  # LlamaForCausalLM


def wrap_model(model: Any, ex: Execution) -> Any:
    """The module the training step runs forward/backward through: `model` itself (single process; FSDP2 shards
    it in place, per decoder layer, then the root) or a DDP wrapper around it. Call before building the optimizer:
    FSDP replaces the parameters by sharded DTensors."""
    model.to(ex.device)  # fp32 master weights on every device
    if ex.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if ex.compile:  # per layer, in place (state_dict keys unchanged); as torchtitan, before FSDP wraps them
        for layer in decoder_layers(model):
            layer.compile()
    if ex.strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        kwargs = {"mp_policy": policy} if ex.mixed_precision else {}
        for layer in decoder_layers(model):
            fully_shard(layer, **kwargs)
        fully_shard(model, **kwargs)
        return model
    if ex.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[ex.device.index] if ex.device.type == "cuda" else None)
    return model


@contextlib.contextmanager
def gradient_sync(train_model: Any, ex: Execution, sync: bool) -> Iterator[None]:
    """Around a backward: when `sync` is False the gradients accumulate locally and are averaged over ranks at the
    next backward that syncs (the last physical batch of an AdamW step, or of each Nexus micro-batch)."""
    if sync or not ex.distributed:
        yield
    elif ex.strategy == "ddp":
        with train_model.no_sync():
            yield
    else:  # FSDP2
        train_model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            train_model.set_requires_gradient_sync(True)


# ---- reductions over ranks -----------------------------------------------------------------------------------------


def mean_over_ranks(values: list[float], ex: Execution) -> list[float]:
    """Each value averaged over ranks (equal-size shares: the mean of rank means is the global mean)."""
    if not ex.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=ex.device)
    dist.all_reduce(t)
    return [v / ex.world for v in t.tolist()]


def sum_over_ranks(values: list[float], ex: Execution) -> list[float]:
    if not ex.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=ex.device)
    dist.all_reduce(t)
    return t.tolist()


def rank_windows(windows: torch.Tensor, ex: Execution, batch_size: int) -> tuple[torch.Tensor, int]:
    """This rank's contiguous share of held-out windows, and how many forward passes every rank makes over its
    share (the same number on all ranks: under FSDP each forward is a collective)."""
    parts = windows.tensor_split(ex.world)
    longest = max(len(p) for p in parts)
    return parts[ex.rank], math.ceil(longest / batch_size)


def single_process() -> Execution:
    """The execution of code that drives steps without a recipe's [parallel] table (tests, benchmarks)."""
    return Execution(torch.device("cpu"), "none", 0, 1, 0, False, 0, False)
