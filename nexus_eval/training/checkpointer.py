"""A run's checkpoints: write one (weights, tokenizer, nexus.json, trainer state), keep optimizer state where the
recipe says, and resume exactly from the newest checkpoint that has it.

One process writes optimizer/state.pt holding the whole optimizer state, as it always has. Under torchrun the
optimizer state is written through torch.distributed.checkpoint instead (optimizer/sharded/: every rank its shard,
keyed by parameter name), and state.pt holds the rest with a pointer there; the Hugging Face export (weights,
tokenizer, nexus.json) is gathered to rank 0 and written by it alone, into a temp dir renamed into place. Either
kind resumes under any world size and strategy: DCP re-shards on load, and a one-process state is loaded by name.
"""

from __future__ import annotations

import os
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Any, cast

import torch

from nexus_eval.checkpoints import (
    CKPT_PREFIX,
    META_FILE,
    STATE_FILE,
    check_weight_files,
    checkpoint_name,
    list_checkpoints,
    save_checkpoint,
)
from nexus_eval.errors import CheckpointError
from nexus_eval.io import dump_json
from nexus_eval.optim import Nexus
from nexus_eval.schema import CheckpointMeta, HeldOutLoss, RunIdentity
from nexus_eval.training.components import Components
from nexus_eval.training.grad_cosine import CosineWindow
from nexus_eval.training.optimizer import Optimizer
from nexus_eval.training.parallel import Execution, barrier, single_process
from nexus_eval.training.state import RunState, TrainerState

SHARDED_STATE = "optimizer/sharded"  # torch.distributed.checkpoint directory of a torchrun run's optimizer state


class Checkpointer:
    def __init__(self, run_dir: Path, keep_state: str = "latest", ex: Execution | None = None):
        self.run_dir = run_dir
        self.keep_state = keep_state  # train.keep_state: optimizer state beside the newest checkpoint only, or "all"
        self.ex = ex or single_process()

    def checkpoints(self) -> list[Path]:
        return list_checkpoints(self.run_dir)

    def remove_partial(self) -> list[Path]:
        """Remove the temp dirs of checkpoint writes that a kill interrupted (save_checkpoint's .ckpt-*.tmp); they
        are never read, only take space. Call before training writes: the write in flight is this process's own."""
        partial = sorted(p for p in self.run_dir.glob(f".{CKPT_PREFIX}*.tmp") if p.is_dir())
        for path in partial:
            shutil.rmtree(path, ignore_errors=True)
        return partial

    def save(self, c: Components, meta: CheckpointMeta, state: TrainerState) -> Path:
        """Every rank calls it (under torchrun the optimizer state is written by all of them)."""
        ckpt = self.run_dir / checkpoint_name(meta["step"])
        if self.ex.distributed:
            save_distributed(ckpt, c, meta, state)
        else:
            save_checkpoint(ckpt, c.model, c.tokenizer, meta, state)
        # Optimizer state only beside the newest checkpoint: resuming needs no more, and it is 2-3x the weights.
        for older in self.checkpoints() if self.keep_state == "latest" and self.ex.is_main else []:
            if older != ckpt and (older / STATE_FILE).exists():
                shutil.rmtree((older / STATE_FILE).parent)
        barrier(self.ex)
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


def save_distributed(ckpt: Path, c: Components, meta: CheckpointMeta, state: TrainerState) -> None:
    """The optimizer state in shards (every rank), then the export gathered to and written by rank 0; all in a temp
    dir that rank 0 renames into place once complete (a killed job leaves no half checkpoint)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Writing model shards" bar inside our own progress display
    ex = c.execution
    tmp = ckpt.with_name(f".{ckpt.name}.dist.tmp")  # Checkpointer.remove_partial's pattern: removed if left behind
    if ex.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / SHARDED_STATE).mkdir(parents=True)
    barrier(ex)
    dcp.save({"optimizer": named_optimizer_state(c)}, checkpoint_id=tmp / SHARDED_STATE)
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)  # the whole weights, on rank 0's CPU only
    weights = get_model_state_dict(c.model, options=options)
    if ex.is_main:
        export_model(c.model.config, weights).save_pretrained(tmp, safe_serialization=True)
        c.tokenizer.save_pretrained(tmp)
        torch.save(state, tmp / STATE_FILE)
        (tmp / META_FILE).write_text(dump_json(meta))
        if ckpt.exists():
            shutil.rmtree(ckpt)
        os.replace(tmp, ckpt)


def export_model(config: Any, weights: dict[str, torch.Tensor]) -> Any:
    """A plain LlamaForCausalLM holding `weights` (no copy): what save_pretrained writes is then exactly what a
    one-process run writes, loadable untouched by transformers and vLLM (an FSDP-wrapped model's class is not)."""
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.load_state_dict(weights, assign=True, strict=False)  # strict=False: a tied lm_head may be absent
    model.tie_weights()
    return model


def outer_optimizer(opt: Optimizer) -> torch.optim.Optimizer:
    return opt.outer if isinstance(opt, Nexus) else opt


def named_optimizer_state(c: Components) -> dict[str, Any]:
    """The (outer) optimizer's state keyed by parameter name, as DTensor shards under FSDP."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(c.model, outer_optimizer(c.opt))


def optimizer_state(c: Components) -> dict[str, Any]:
    """What state.pt's "optimizer" holds: the state itself (one process) or where its shards are (torchrun)."""
    if not c.execution.distributed:
        return c.opt.state_dict()
    pointer: dict[str, Any] = {"sharded": SHARDED_STATE}
    if isinstance(c.opt, Nexus):  # saved between outer steps: θ0 is stale then, only the settings matter
        pointer["nexus"] = {"inner_lr_ratio": c.opt.inner_lr_ratio, "normalize": c.opt.normalize}
    return pointer


def load_optimizer_state(c: Components, ckpt: Path, saved: dict[str, Any]) -> None:
    """The optimizer state of `ckpt` into c.opt, whatever world size and strategy wrote it and runs now."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    ex, outer = c.execution, outer_optimizer(c.opt)
    if "sharded" in saved:  # written under torchrun: DCP reads this rank's part, re-sharded for this world size
        import torch.distributed.checkpoint as dcp

        named = named_optimizer_state(c)  # the template: this run's keys and shards
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load({"optimizer": named}, checkpoint_id=ckpt / saved["sharded"], no_dist=not ex.distributed)
        set_optimizer_state_dict(c.model, outer, named)
        if isinstance(c.opt, Nexus) and "nexus" in saved:
            c.opt.inner_lr_ratio = saved["nexus"]["inner_lr_ratio"]
            c.opt.normalize = saved["nexus"]["normalize"]
            c.opt.inner_steps = 0
    elif ex.strategy != "fsdp":  # one process's whole state into whole (possibly replicated) parameters
        c.opt.load_state_dict(saved)
    else:  # one process's whole state, by parameter name, sharded as this run's parameters are
        whole = saved["outer"] if isinstance(c.opt, Nexus) else saved
        named = by_parameter_name(c.model, outer, whole)
        set_optimizer_state_dict(c.model, outer, named, options=StateDictOptions(full_state_dict=True))


def by_parameter_name(model: Any, opt: torch.optim.Optimizer, state: dict[str, Any]) -> dict[str, Any]:
    """torch's optimizer state_dict (parameters numbered in group order) keyed by parameter name instead."""
    names = {id(p): name for name, p in model.named_parameters()}
    order = [names[id(p)] for group in opt.param_groups for p in group["params"]]
    return {
        "state": {order[i]: value for i, value in state["state"].items()},
        "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in state["param_groups"]],
    }


def load_weights(c: Components, weights: dict[str, torch.Tensor]) -> None:
    if c.execution.strategy == "fsdp":  # each rank keeps its shard of the whole weights
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(c.model, weights, options=StateDictOptions(full_state_dict=True))
    else:
        c.model.load_state_dict(weights)


def trainer_state(c: Components, state: RunState, cosine: CosineWindow) -> TrainerState:
    return {
        "optimizer": optimizer_state(c),
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
    load_weights(c, loaded.state_dict())
    load_optimizer_state(c, ckpt, saved["optimizer"])
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
