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
import re
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
from nexus_eval.optim import Nexus, OptimizerSplit
from nexus_eval.schema import CheckpointMeta, HeldOutLoss, RunIdentity
from nexus_eval.training.components import Components
from nexus_eval.training.grad_cosine import CosineWindow
from nexus_eval.training.optimizer import Optimizer
from nexus_eval.training.parallel import Execution, barrier, single_process
from nexus_eval.training.state import RunState, TrainerState

SHARDED_STATE = "optimizer/sharded"  # torch.distributed.checkpoint directory of a torchrun run's optimizer state
# How torch's weights-only unpickler names a global it does not allow ("Unsupported global: GLOBAL io.open was not
# an allowed global", "unsupported GLOBAL posix.system whose module posix is blocked"): what a full unpickle would
# import and call.
REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+)")


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
    """optimizer/state.pt, or CheckpointError naming it when it is truncated, corrupt, not a trainer state, or holds
    anything but plain data.

    weights_only: a trainer state is tensors, numbers, strings, lists, tuples and dicts (TrainerState), so nothing
    else is unpickled. A run directory may come from elsewhere (a copy, the leaderboard workflow's cache), and a full
    unpickle would import and call whatever the file names, before any check of ours."""
    try:
        with warnings.catch_warnings():  # a pickle of another protocol than torch.save's: refused below, no warning
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, weights_only=True)
    except pickle.UnpicklingError as e:
        if found := REFUSED_GLOBAL.search(str(e)):
            raise CheckpointError(
                f"{path}: refused: it names {found.group(1)}, which loading would import and call; a trainer state "
                "is plain data (tensors, numbers, strings, lists, dicts)"
            ) from None
        raise CheckpointError(f"{path}: unreadable optimizer state ({load_error(e)}): truncated or corrupt") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as e:  # KeyError: bytes that are no pickle at all
        raise CheckpointError(f"{path}: unreadable optimizer state ({load_error(e)}): truncated or corrupt") from None
    if not isinstance(state, dict) or (missing := set(TrainerState.__required_keys__) - set(state)):
        what = f"lacks {sorted(missing)[0]!r}" if isinstance(state, dict) else "is not a dict"
        raise CheckpointError(f"{path}: not a trainer state (it {what})")
    return cast(TrainerState, state)


def load_error(e: Exception) -> str:
    """What torch.load's error says went wrong, on one line: the weights-only unpickler's own reason when it gave
    one, else torch's first sentence (the rest is advice)."""
    if isinstance(e, KeyError):  # the weights-only unpickler met a byte that is no pickle opcode
        return f"not a pickle: invalid load key {e}"
    text = str(e)
    reason = text.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in text else text
    first = reason.strip().split("\n\n")[0].split(". ")[0]
    return " ".join(first.split()) or type(e).__name__


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


def torch_optimizers(opt: Optimizer) -> list[torch.optim.Optimizer]:
    """The torch optimizers whose state `opt` keeps: Nexus' outer one, each part of a split (Muon and AdamW)."""
    outer = opt.outer if isinstance(opt, Nexus) else opt
    return list(outer.parts) if isinstance(outer, OptimizerSplit) else [outer]


def named_optimizer_state(c: Components) -> dict[str, Any]:
    """The (outer) optimizer's state keyed by parameter name, as DTensor shards under FSDP."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(c.model, torch_optimizers(c.opt))


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

    ex, outer = c.execution, torch_optimizers(c.opt)
    if "sharded" in saved:  # written under torchrun: DCP reads this rank's part, re-sharded for this world size
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.api import CheckpointException

        if saved["sharded"] != SHARDED_STATE:  # the pointer names a directory to read: only the checkpoint's own
            raise CheckpointError(f"{ckpt / STATE_FILE}: sharded state {saved['sharded']!r} is not {SHARDED_STATE}")
        sharded = ckpt / SHARDED_STATE
        check_sharded_metadata(sharded)
        named = named_optimizer_state(c)  # the template: this run's keys and shards
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            try:
                dcp.load(
                    {"optimizer": named},
                    checkpoint_id=sharded,
                    planner=plain_data_planner(sharded),
                    no_dist=not ex.distributed,
                )
            except CheckpointException as e:  # a BaseException: our refusal inside it, one line, if it is one
                raise next((f[0] for f in e.failures.values() if isinstance(f[0], CheckpointError)), e) from None
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


# What the .metadata of an optimizer state written by torch.distributed.checkpoint names: DCP's own metadata records,
# the storage index, and the torch and pathlib values inside them (torch.float32 and the other dtypes besides).
DCP_METADATA_MODULES = ("torch.distributed.checkpoint.metadata",)
DCP_METADATA_GLOBALS = {
    "torch.distributed.checkpoint.filesystem._StorageInfo",
    "torch.Size",
    "torch.serialization._get_layout",
    "pathlib.Path",
    "pathlib.PosixPath",
    "pathlib.WindowsPath",
    "collections.OrderedDict",
}


class NotMetadata(pickle.UnpicklingError):
    """A global that DCP metadata does not hold."""


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles only what DCP metadata holds; any other global is refused before it is imported."""

    def find_class(self, module: str, name: str) -> Any:
        dotted = f"{module}.{name}"
        if "." not in name and dotted in DCP_METADATA_GLOBALS:
            return super().find_class(module, name)
        if "." not in name and (module in DCP_METADATA_MODULES or module == "torch"):  # no attribute chains
            found = super().find_class(module, name)
            # the metadata module's dataclasses and enums (not its functions); of torch, its dtypes only
            if isinstance(found, torch.dtype) or (module != "torch" and isinstance(found, type)):
                return found
        raise NotMetadata(f"GLOBAL {dotted} is not DCP metadata")


def check_sharded_metadata(directory: Path) -> None:
    """CheckpointError naming <directory>/.metadata unless it holds only DCP metadata. torch.distributed.checkpoint
    reads that file with a plain pickle.load, which would import and call whatever it names: read first here with an
    unpickler that allows the metadata's own classes only."""
    path = directory / ".metadata"
    try:
        with path.open("rb") as fh:
            _MetadataUnpickler(fh).load()
    except NotMetadata as e:
        raise CheckpointError(
            f"{path}: refused: {e}; a sharded optimizer state's metadata names nothing else"
        ) from None
    except (
        pickle.UnpicklingError,
        OSError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        KeyError,
        IndexError,
    ) as e:
        raise CheckpointError(f"{path}: unreadable sharded optimizer state ({type(e).__name__}: {e})") from None


def plain_data_planner(directory: Path) -> Any:
    """DCP's default load planner, but the values it stores as bytes (the optimizer's numbers and settings, not its
    tensors) are first loaded as plain data: DCP itself unpickles them with weights_only=False."""
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    class PlainDataLoadPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: Any) -> None:
            try:
                torch.load(value, weights_only=True)
            except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError) as e:
                where = f"{directory}: value {read_item.dest_index.fqn}"
                raise CheckpointError(f"{where}: refused, not plain data ({load_error(e)})") from None
            value.seek(0)
            super().load_bytes(read_item, value)

    return PlainDataLoadPlanner()


def by_parameter_name(model: Any, opts: list[torch.optim.Optimizer], state: dict[str, Any]) -> dict[str, Any]:
    """torch's optimizer state_dict (parameters numbered in group order) keyed by parameter name instead; of a split
    (OptimizerSplit's {"parts": [...]}) every part's, merged as torch.distributed.checkpoint merges them."""
    names = {id(p): name for name, p in model.named_parameters()}
    parts = state["parts"] if "parts" in state else [state]
    merged: dict[str, Any] = {"state": {}, "param_groups": []}
    for opt, part in zip(opts, parts, strict=True):
        order = [names[id(p)] for group in opt.param_groups for p in group["params"]]
        merged["state"].update({order[i]: value for i, value in part["state"].items()})
        merged["param_groups"] += [{**g, "params": [order[i] for i in g["params"]]} for g in part["param_groups"]]
    return merged


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
