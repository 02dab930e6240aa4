"""A run's checkpoints: write one (weights, tokenizer, nexus.json, trainer state), keep optimizer state where the
recipe says, and resume exactly from the newest checkpoint that has it."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path
from typing import Any, cast

import torch

from nexus_eval.checkpoints import (
    CKPT_PREFIX,
    STATE_FILE,
    check_weight_files,
    checkpoint_name,
    list_checkpoints,
    save_checkpoint,
)
from nexus_eval.errors import CheckpointError
from nexus_eval.schema import CheckpointMeta, HeldOutLoss, RunIdentity
from nexus_eval.training.components import Components
from nexus_eval.training.grad_cosine import CosineWindow
from nexus_eval.training.state import RunState, TrainerState


class Checkpointer:
    def __init__(self, run_dir: Path, keep_state: str = "latest"):
        self.run_dir = run_dir
        self.keep_state = keep_state  # train.keep_state: optimizer state beside the newest checkpoint only, or "all"

    def checkpoints(self) -> list[Path]:
        return list_checkpoints(self.run_dir)

    def remove_partial(self) -> list[Path]:
        """Remove the temp dirs of checkpoint writes that a kill interrupted (save_checkpoint's .ckpt-*.tmp); they
        are never read, only take space. Call before training writes: the write in flight is this process's own."""
        partial = sorted(p for p in self.run_dir.glob(f".{CKPT_PREFIX}*.tmp") if p.is_dir())
        for path in partial:
            shutil.rmtree(path, ignore_errors=True)
        return partial

    def save(self, model: Any, tokenizer: Any, meta: CheckpointMeta, state: TrainerState) -> Path:
        ckpt = save_checkpoint(self.run_dir / checkpoint_name(meta["step"]), model, tokenizer, meta, state)
        # Optimizer state only beside the newest checkpoint: resuming needs no more, and it is 2-3x the weights.
        for older in self.checkpoints() if self.keep_state == "latest" else []:
            if older != ckpt and (older / STATE_FILE).exists():
                shutil.rmtree((older / STATE_FILE).parent)
        return ckpt

    def latest_state(self) -> tuple[Path, TrainerState]:
        """The newest checkpoint with optimizer state, and that state."""
        with_state = [c for c in self.checkpoints() if (c / STATE_FILE).exists()]
        if not with_state:
            raise CheckpointError(f"--resume: {self.run_dir} has no checkpoint with optimizer state to resume from")
        ckpt = with_state[-1]
        return ckpt, load_trainer_state(ckpt / STATE_FILE)


def load_trainer_state(path: Path) -> TrainerState:
    """optimizer/state.pt, or CheckpointError naming it when it is truncated, corrupt or not a trainer state."""
    try:
        state = torch.load(path, weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as e:
        reason = str(e).split(". ")[0].strip() or type(e).__name__  # torch's first sentence; the rest is advice
        raise CheckpointError(f"{path}: unreadable optimizer state ({reason}): truncated or corrupt") from None
    if not isinstance(state, dict) or (missing := set(TrainerState.__required_keys__) - set(state)):
        what = f"lacks {sorted(missing)[0]!r}" if isinstance(state, dict) else "is not a dict"
        raise CheckpointError(f"{path}: not a trainer state (it {what})")
    return cast(TrainerState, state)


def checkpoint_meta(
    identity: RunIdentity, state: RunState, losses: HeldOutLoss, target: float | None
) -> CheckpointMeta:
    """nexus.json of the checkpoint at state.step; `target` is the recipe target whose crossing wrote it."""
    return {
        **identity,
        "step": state.step,
        "tokens_seen": state.tokens,
        "heldout_loss": losses["val_loss"],
        "heldout_loss_per_source": losses["val_loss_per_source"],
        "ood_loss": losses["ood_loss"],
        "target_loss": target,
    }


def trainer_state(c: Components, state: RunState, cosine: CosineWindow) -> TrainerState:
    return {
        "optimizer": c.opt.state_dict(),
        "step": state.step,
        "tokens": state.tokens,
        "targets_left": state.targets_left,
        "last_val": state.last_val,
        "recipe_hash": c.recipe.hash(),
        "optimizer_name": c.optimizer,
        "total_steps": state.total_steps,
        "torch_rng": torch.get_rng_state(),
        "cosine_grads": cosine.grads,
    }


def resume_run(checkpointer: Checkpointer, c: Components, cosine: CosineWindow) -> RunState:
    """Load the newest checkpoint with optimizer state into the model, optimizer, torch RNG and gradient-cosine
    window; returns the run state to continue from (the uninterrupted run's, exactly)."""
    from transformers import LlamaForCausalLM

    ckpt, saved = checkpointer.latest_state()
    if saved["recipe_hash"] != c.recipe.hash() or saved["optimizer_name"] != c.optimizer:
        raise CheckpointError(f"--resume: {ckpt} was trained with another recipe or optimizer than {c.recipe.path}")
    check_weight_files(ckpt)
    loaded = LlamaForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    c.model.load_state_dict(loaded.state_dict())
    c.opt.load_state_dict(saved["optimizer"])
    state = RunState(
        total_steps=saved["total_steps"],
        step=saved["step"],
        tokens=saved["tokens"],
        targets_left=list(saved["targets_left"]),
        last_val=saved["last_val"],
    )
    torch.set_rng_state(saved["torch_rng"])
    cosine.grads = saved["cosine_grads"]
    return state
