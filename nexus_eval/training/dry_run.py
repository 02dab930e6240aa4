"""`nexus-eval train RECIPE --dry-run`: what a run will cost, in seconds and without allocating a weight.

The model is built on the meta device (shapes only), so a 1B-parameter recipe is counted on a laptop. Printed:
parameters, per-rank memory under the planned strategy (memory.rank_memory), FLOPs and tokens per step, total
tokens, epochs over the built data (budget.py; a warning when the data is not built yet) and the time at ASSUMED_MFU
of a device's peak (flops.py). Nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nexus_eval.data import load_manifest
from nexus_eval.data.build import DEFAULT_VOCAB_SIZE
from nexus_eval.errors import RecipeError
from nexus_eval.training.budget import MAX_EPOCHS, SourceEpochs, source_epochs, total_tokens
from nexus_eval.training.flops import PEAK_TFLOPS, TERA, gpu_key, model_flops_per_token, parse_peak
from nexus_eval.training.memory import GIB, STRATEGIES, RankMemory, rank_memory
from nexus_eval.training.model import llama_config
from nexus_eval.training.recipe import Recipe

ASSUMED_MFU = 0.40  # the time estimate's utilization: what a well-tuned bf16 + compile run reaches (nanoGPT ~33-40%)
DEFAULT_GPU = "h100-sxm"  # the time estimate's device when neither --peak-tflops nor a local CUDA device names one


@dataclass(frozen=True)
class ParamCounts:
    total: int  # distinct parameters (the tied output head counted once, as sum(p.numel()) counts them)
    embedding: int  # the token embedding (tied to the output head)

    @property
    def non_embedding(self) -> int:
        return self.total - self.embedding


@dataclass(frozen=True)
class DryRun:
    recipe: Recipe
    optimizer: str
    nproc: int
    params: ParamCounts
    memory: RankMemory
    flops_per_token: int
    epochs: list[SourceEpochs] | None  # None: the data is not built yet
    data_dir: Path
    vocab: int
    peak_flops: float  # one device's peak FLOP/s
    peak_name: str  # where that peak comes from

    @property
    def tokens_per_step(self) -> int:
        return self.recipe.tokens_per_step()

    @property
    def total_tokens(self) -> int:
        return total_tokens(self.recipe)

    @property
    def flops_per_step(self) -> int:
        return self.flops_per_token * self.tokens_per_step

    def seconds(self, utilization: float = ASSUMED_MFU) -> float:
        """Training time (steps only, held-out evals aside) at `utilization` of nproc devices' peak."""
        return self.flops_per_token * self.total_tokens / (self.peak_flops * self.nproc * utilization)


def meta_model(config: Any) -> Any:
    """LlamaForCausalLM with every tensor on the meta device: shapes, no storage, built in well under a second."""
    import torch
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        return LlamaForCausalLM(config)


def count_parameters(model: Any) -> ParamCounts:
    total = sum(p.numel() for p in model.parameters())
    return ParamCounts(total=total, embedding=model.get_input_embeddings().weight.numel())


def check_plan(recipe: Recipe, nproc: int, strategy: str) -> None:
    """Bad --nproc / --strategy: one line naming the flag."""
    if nproc < 1:
        raise RecipeError(f"--nproc {nproc}: must be at least 1")
    if strategy not in STRATEGIES:
        raise RecipeError(f"--strategy {strategy!r}: must be one of {', '.join(STRATEGIES)}")
    if strategy == "fsdp" and nproc < 2:
        raise RecipeError("--strategy fsdp: shards over ranks, give --nproc 2 or more")
    if strategy == "none" and nproc > 1:
        raise RecipeError(f"--strategy none: one process, but --nproc {nproc}; choose ddp or fsdp")
    if recipe.optim.micro_batch % nproc:
        raise RecipeError(
            f"--nproc {nproc}: does not divide optim.micro_batch {recipe.optim.micro_batch} of {recipe.path} "
            "(each rank takes an equal slice of every micro-batch)"
        )


def local_peak() -> tuple[float, str] | None:
    """The peak of this machine's CUDA device when it is in the table."""
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    key = gpu_key(name)
    return (PEAK_TFLOPS[key] * TERA, f"{name} ({PEAK_TFLOPS[key]:g} TFLOP/s bf16 dense)") if key else None


def resolve_peak(peak_text: str | None) -> tuple[float, str]:
    if peak_text is not None:
        return parse_peak(peak_text)
    found = local_peak()
    if found is not None:
        return found
    peak, name = parse_peak(DEFAULT_GPU)
    return peak, f"{name[:-1]}; assumed, --peak-tflops to change)"


def dry_run(
    recipe: Recipe,
    optimizer: str,
    data_dir: Path,
    nproc: int = 1,
    strategy: str | None = None,
    peak_text: str | None = None,
) -> DryRun:
    """The cost of training `recipe` with `optimizer` on `nproc` ranks under `strategy` (default: none for one
    process, ddp for several). Reads the data build's manifest when there is one; allocates no weights."""
    strategy = strategy or ("ddp" if nproc > 1 else "none")
    check_plan(recipe, nproc, strategy)
    peak_flops, peak_name = resolve_peak(peak_text)
    built = (data_dir / "manifest.json").is_file()
    manifest = load_manifest(data_dir) if built else None
    vocab = int(manifest["vocab_size"]) if manifest else DEFAULT_VOCAB_SIZE
    config = llama_config(recipe.model.preset, vocab_size=vocab, context=recipe.model.context, bos_id=0, eos_id=0)
    model = meta_model(config)
    params = count_parameters(model)
    return DryRun(
        recipe=recipe,
        optimizer=optimizer,
        nproc=nproc,
        params=params,
        memory=rank_memory(recipe, optimizer, vocab, params.total, strategy, nproc),
        flops_per_token=model_flops_per_token(model, recipe.model.context),
        epochs=source_epochs(recipe, manifest) if manifest else None,
        data_dir=data_dir,
        vocab=vocab,
        peak_flops=peak_flops,
        peak_name=peak_name,
    )


def gib(n_bytes: float) -> str:
    return f"{n_bytes / GIB:8.2f} GiB"


def duration(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours / 24:.1f} days" if hours >= 48 else f"{hours:.1f} h" if hours >= 1 else f"{seconds / 60:.1f} min"


def describe(plan: DryRun) -> list[str]:
    """The dry run's report, line by line."""
    r, p, m = plan.recipe, plan.params, plan.memory
    lines = [
        f"dry run: {r.path} ({r.model.preset}, context {r.model.context}), {plan.optimizer}, "
        f"{plan.nproc} rank(s), strategy {m.strategy}; nothing allocated, nothing written",
        f"parameters      {p.total:,} total = {p.embedding:,} embedding (vocab {plan.vocab:,}, tied to the output) "
        f"+ {p.non_embedding:,} non-embedding",
        "memory per rank (fp32 master weights and optimizer state, bf16 compute):",
        *(f"  {name:38} {gib(size)}" for name, size in m.rows()),
        f"  {'total':38} {gib(m.total)}",
        f"FLOPs per token {plan.flops_per_token:,} (6·N_matmul + 12·L·H·Q·T, forward + backward)",
        f"per step        {plan.tokens_per_step:,} tokens ({r.optim.accum} micro-batches of {r.optim.micro_batch} × "
        f"{r.model.context}), {plan.flops_per_step:.3e} FLOPs",
        f"total           {plan.total_tokens:,} tokens over {r.train.steps:,} steps",
    ]
    lines += epoch_lines(plan)
    lines.append(
        f"time            {duration(plan.seconds())} of training steps (held-out evals aside) at {ASSUMED_MFU:.0%} MFU "
        f"on {plan.nproc} × {plan.peak_name}"
    )
    return lines


def epoch_lines(plan: DryRun) -> list[str]:
    manifest = plan.data_dir / "manifest.json"
    if plan.epochs is None:
        return [
            f"warning: {manifest} not found: the data is not built yet, epochs unknown (vocab {plan.vocab} assumed)"
        ]
    lines = [
        f"epochs          {e.source}: {e.epochs:.2f} ({e.tokens_read:,} of {e.tokens_built:,} built tokens)"
        for e in plan.epochs
    ]
    if any(e.epochs > MAX_EPOCHS for e in plan.epochs):
        lines.append(f"warning: more than {MAX_EPOCHS:g} epoch of {manifest}: train refuses it without --allow-repeat")
    return lines
