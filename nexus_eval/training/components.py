"""Setting up a run: the data, micro-batch schedule, held-out windows, model and optimizer that one recipe, optimizer
name and seed define. The trainer's loop uses them; so do tests and the benchmark, to drive single steps."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nexus_eval.data import load_manifest, load_tokenizer, open_tokens
from nexus_eval.errors import RecipeError
from nexus_eval.provenance import code_version_label, environment
from nexus_eval.schema import DataBuild, RunIdentity
from nexus_eval.training.heldout import HeldOut
from nexus_eval.training.model import build_model, count_params, llama_config
from nexus_eval.training.optimizer import Optimizer, build_optimizer, check_optimizer_name, optimizer_hparams
from nexus_eval.training.recipe import Recipe
from nexus_eval.training.schedule import MicroBatchSchedule


@dataclass
class Components:
    recipe: Recipe
    optimizer: str  # "adamw" | "nexus"
    seed: int
    data_dir: Path
    manifest: dict[str, Any]  # the data build's manifest.json
    tokenizer: Any  # the data build's PreTrainedTokenizerFast, saved into every checkpoint
    schedule: MicroBatchSchedule
    heldout: HeldOut
    model: Any  # LlamaForCausalLM, in train mode
    opt: Optimizer

    def identity(self, run_id: str) -> RunIdentity:
        """What run.json and every nexus.json of this run say about how it was trained."""
        return {
            "run_id": run_id,
            "optimizer": self.optimizer,
            "optimizer_hparams": optimizer_hparams(self.recipe.optim, self.optimizer),
            "seed": self.seed,
            "recipe": self.recipe.to_dict(),
            "recipe_hash": self.recipe.hash(),
            "data_hash": self.manifest["hash"],
            "code_version": code_version_label(),
            "model_params": count_params(self.model),
            "data_build": data_build(self.manifest),
            "environment": environment("cpu"),
        }


def set_up(recipe: Recipe, optimizer: str, seed: int, data_dir: Path) -> Components:
    """Both optimizers get the identical micro-batch sequence and initial weights for a seed; only `opt` differs."""
    check_optimizer_name(optimizer)
    manifest = load_manifest(data_dir)
    missing = sorted(set(recipe.data.mixture) - set(manifest["sources"]))
    if missing:
        raise RecipeError(
            f"{recipe.path}: data.mixture names source {missing[0]!r} that {data_dir}/manifest.json lacks "
            f"(has: {', '.join(sorted(manifest['sources']))})"
        )
    tokenizer = load_tokenizer(data_dir)
    mixture = {s: w for s, w in recipe.data.mixture.items() if w > 0}
    schedule = MicroBatchSchedule(
        {s: open_tokens(data_dir, "train", s) for s in mixture},
        mixture,
        recipe.optim.micro_batch,
        recipe.model.context,
        seed,
    )
    heldout = HeldOut(data_dir, mixture, recipe.model.context, recipe.train.eval_windows)
    config = llama_config(
        recipe.model.preset,
        vocab_size=int(manifest["vocab_size"]),
        context=recipe.model.context,
        bos_id=tokenizer.bos_token_id,
        eos_id=tokenizer.eos_token_id,
    )
    model = build_model(config, seed)  # seeds torch: same seed, same initial weights
    model.train()
    opt = build_optimizer(model, recipe.optim, optimizer)
    return Components(recipe, optimizer, seed, data_dir, manifest, tokenizer, schedule, heldout, model, opt)


def data_build(manifest: dict[str, Any]) -> DataBuild:
    """The data build as a run records it: its hash, the parameters that made it and its tokenizer's hash."""
    tokenizer_dir = str(manifest.get("tokenizer_dir", "tokenizer"))
    files = manifest.get("files") or {}
    tokenizer = {name: entry for name, entry in sorted(files.items()) if name.startswith(f"{tokenizer_dir}/")}
    digest = hashlib.sha256(json.dumps(tokenizer, sort_keys=True).encode()).hexdigest()[:16] if tokenizer else None
    return {"hash": manifest["hash"], "params": dict(manifest.get("params") or {}), "tokenizer_hash": digest}
