"""Setting up a run: the data, micro-batch schedule, held-out windows, model and optimizer that one recipe, optimizer
name and seed define. The trainer's loop uses them; so do tests and the benchmark, to drive single steps."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nexus_eval.data import load_manifest, load_tokenizer, open_tokens
from nexus_eval.errors import RecipeError
from nexus_eval.optimizer_registry import REGISTRY, OptimizerEntry
from nexus_eval.provenance import code_version_label, environment
from nexus_eval.schema import DataBuild, RunIdentity
from nexus_eval.training.heldout import HeldOut
from nexus_eval.training.memory import check_training_memory
from nexus_eval.training.model import build_model, count_params, llama_config
from nexus_eval.training.optimizer import (
    Optimizer,
    build_optimizer,
    check_optimizer,
    optimizer_hparams,
    optimizer_source,
    resolve_inner_loop,
)
from nexus_eval.training.parallel import Execution, single_process, wrap_model
from nexus_eval.training.recipe import Recipe
from nexus_eval.training.schedule import MicroBatchSchedule


@dataclass
class Components:
    recipe: Recipe
    optimizer: str  # a registered optimizer's name (optimizer_registry.py): "adamw", "nexus" or an ablation
    seed: int
    data_dir: Path
    manifest: dict[str, Any]  # the data build's manifest.json
    tokenizer: Any  # the data build's PreTrainedTokenizerFast, saved into every checkpoint
    schedule: MicroBatchSchedule
    heldout: HeldOut
    model: Any  # LlamaForCausalLM, in train mode (under FSDP sharded in place: its parameters are DTensors)
    opt: Optimizer
    execution: Execution = field(default_factory=single_process)
    train_model: Any = None  # what forward/backward runs through: `model`, or its DDP wrapper

    def __post_init__(self) -> None:
        if self.train_model is None:
            self.train_model = self.model

    @functools.cached_property
    def entry(self) -> OptimizerEntry:
        """The optimizer `opt` was built for: how it updates on a step's micro-batches (step.outer_step). Resolved
        once: nexus:OUTER and plug-in entries are made from their name, which every step would otherwise redo."""
        return REGISTRY.chosen(self.optimizer)

    def identity(self, run_id: str) -> RunIdentity:
        """What run.json and every nexus.json of this run say about how it was trained."""
        build = data_build(self.manifest)
        identity: RunIdentity = {
            "run_id": run_id,
            "optimizer": self.optimizer,
            "optimizer_hparams": optimizer_hparams(
                self.recipe.optim, self.optimizer, resolve_inner_loop(self.recipe.optim, self.execution)
            ),
            "optimizer_source": optimizer_source(self.optimizer),
            "seed": self.seed,
            "recipe": self.recipe.to_dict(),
            "recipe_hash": self.recipe.hash(),
            "data_hash": self.manifest["hash"],
            "code_version": code_version_label(),
            "model_params": count_params(self.model),
            "data_build": build,
            "environment": environment(self.execution.device.type),
        }
        if build["tokenizer_hash"] is not None:
            identity["tokenizer_hash"] = build["tokenizer_hash"]
        if (heldout := heldout_hash(self.manifest, self.recipe)) is not None:
            identity["heldout_hash"] = heldout
        return identity


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def tokenizer_hash(manifest: dict[str, Any]) -> str | None:
    """sha256 over the sha256 of the build's tokenizer files (manifest "files"); None for a build without them."""
    files = {name: h for name, h in (manifest.get("files") or {}).items() if name.startswith("tokenizer/")}
    return _digest(files) if files else None


def heldout_hash(manifest: dict[str, Any], recipe: Recipe) -> str | None:
    """sha256 of what the held-out loss (the loss compare matches on) is measured on, as HeldOut reads it: the val
    token files of the sources the recipe trains on, every OOD file, the window length and count, and the mixture
    weights that average the sources. None when the manifest lacks the hash of one of those files."""
    weights = {s: w for s, w in recipe.data.mixture.items() if w > 0}
    names = [f"val/{s}.bin" for s in sorted(weights)] + [f"ood/{d}.bin" for d in sorted(manifest.get("ood") or {})]
    hashes = manifest.get("files") or {}
    if any(name not in hashes for name in names):
        return None
    total = sum(weights.values())
    return _digest(
        {
            "files": {name: hashes[name] for name in names},
            "context": recipe.model.context,
            "eval_windows": recipe.train.eval_windows,
            "weights": {s: w / total for s, w in sorted(weights.items())},
        }
    )


def set_up(recipe: Recipe, optimizer: str, seed: int, data_dir: Path, ex: Execution | None = None) -> Components:
    """Every optimizer gets the identical micro-batch sequence and initial weights for a seed; only `opt` differs.
    `ex`: how this process executes (default: one process on the CPU); under DDP/FSDP the process group must be
    started (parallel.start) before."""
    ex = ex or single_process()
    check_optimizer(recipe.optim, optimizer, ex.strategy)  # one line, before anything is read
    manifest = load_manifest(data_dir)
    check_sources(recipe, manifest, data_dir)
    check_training_memory(recipe, optimizer, manifest)  # before anything large is allocated
    tokenizer = load_tokenizer(data_dir)
    mixture = {s: w for s, w in recipe.data.mixture.items() if w > 0}
    streams = {s: open_tokens(data_dir, "train", s) for s in mixture}
    check_stream_lengths(recipe, data_dir, streams, sorted(manifest["ood"]))
    schedule = MicroBatchSchedule(
        streams,
        mixture,
        recipe.optim.micro_batch,
        recipe.model.context,
        seed,
    )
    heldout = HeldOut(data_dir, mixture, recipe.model.context, recipe.train.eval_windows, ex)
    on_cuda = ex.device.type == "cuda"
    model = recipe_model(recipe, manifest, tokenizer, seed, on_cuda)
    train_model = wrap_model(model, ex)  # before the optimizer: FSDP replaces the parameters by shards
    inner_loop = resolve_inner_loop(recipe.optim, ex)
    opt = build_optimizer(
        model, recipe.optim, optimizer, fused=on_cuda, inner_loop=inner_loop, total_steps=recipe.train.steps
    )
    return Components(
        recipe, optimizer, seed, data_dir, manifest, tokenizer, schedule, heldout, model, opt, ex, train_model
    )


def check_sources(recipe: Recipe, manifest: dict[str, Any], data_dir: Path) -> None:
    """Every source the recipe's mixture names is in the data build: a RecipeError naming the first missing one."""
    missing = sorted(set(recipe.data.mixture) - set(manifest["sources"]))
    if missing:
        raise RecipeError(
            f"{recipe.path}: data.mixture names source {missing[0]!r} that {data_dir}/manifest.json lacks "
            f"(has: {', '.join(sorted(manifest['sources']))})"
        )


def recipe_model(recipe: Recipe, manifest: dict[str, Any], tokenizer: Any, seed: int, on_cuda: bool) -> Any:
    """The recipe's LlamaForCausalLM for a data build's vocabulary and special tokens, in train mode. Seeds torch:
    same seed, same initial weights (on every rank)."""
    config = llama_config(
        recipe.model.preset,
        vocab_size=int(manifest["vocab_size"]),
        context=recipe.model.context,
        bos_id=tokenizer.bos_token_id,
        eos_id=tokenizer.eos_token_id,
        **({"attn_implementation": "sdpa"} if on_cuda else {}),  # CPU runs keep the attention they were made with
    )
    model = build_model(config, seed)
    model.train()
    return model


def data_build(manifest: dict[str, Any]) -> DataBuild:
    """The data build as a run records it: its hash, the parameters that made it and its tokenizer's hash."""
    params = dict(manifest.get("params") or {})
    return {"hash": manifest["hash"], "params": params, "tokenizer_hash": tokenizer_hash(manifest)}


def check_stream_lengths(recipe: Recipe, data_dir: Path, train: dict[str, np.memmap], ood: list[str]) -> None:
    """Every token stream the run reads must hold a window of model.context + 1 tokens (+1 for the random start of
    a training window); a shorter one is a RecipeError naming the file, not an error deep inside numpy."""
    context = recipe.model.context
    streams = [(stream, context + 2) for stream in train.values()]
    streams += [(open_tokens(data_dir, "val", s), context + 1) for s in sorted(train)]
    streams += [(open_tokens(data_dir, "ood", d), context + 1) for d in ood]
    for stream, need in streams:
        if len(stream) < need:
            raise RecipeError(
                f"{recipe.path}: model.context {context} needs at least {need} tokens per stream, but "
                f"{stream.filename} holds {len(stream)}; lower model.context or build more data"
            )
