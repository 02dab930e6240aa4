"""Setting up a run: the data, micro-batch schedule, held-out windows, model and optimizer that one recipe, optimizer
name and seed define. The trainer's loop uses them; so do tests and the benchmark, to drive single steps."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nexus_eval import __version__
from nexus_eval.data import load_manifest, load_tokenizer, open_tokens
from nexus_eval.errors import RecipeError
from nexus_eval.schema import RunIdentity
from nexus_eval.training.heldout import HeldOut
from nexus_eval.training.memory import check_training_memory
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
            "code_version": code_version(),
            "model_params": count_params(self.model),
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


def code_version() -> str:
    """<package version>+<git short sha> of the code that trains (just the version outside a git checkout)."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__
