"""Training: a recipe (train/*.toml), a registered optimizer (adamw | nexus | an ablation of Nexus: the registry,
nexus_eval/optimizer_registry.py) and a seed → a run directory of loss-labelled Hugging Face checkpoints,
metrics.jsonl and run.json. Depends on data (and optim); never on evaluation or later.

Modules, in the order a run uses them:
    recipe       the TOML recipe, its checks and the lr schedule; [parallel]: how it executes, outside its hash
    parallel     device, precision, torchrun process group, each rank's slice of a micro-batch, DDP / FSDP2
    schedule     which source and token windows each (seed, step, micro-batch) trains on
    model        LLaMA presets, the initial weights of a seed, the training loss
    optimizer    the registered optimizers' builders and recorded hyperparameters, from [optim]
    memory       the run's peak memory, estimated before set-up allocates: a recipe that cannot fit is refused
    components   set_up: the data, schedule, held-out windows, model and optimizer of one run
    step         one outer step on K micro-batches: where AdamW, Nexus and its ablations differ
    heldout      held-out and OOD loss on fixed windows of the data build
    monitor      the held-out hook after each step: full evals, target watching and crossings
    grad_cosine  per-source gradient cosines and the window of steps they are summed over
    metrics_log  metrics.jsonl, and what a step costs: tokens/s, MFU, peak memory
    trackers     the same rows as TensorBoard event files and offline W&B runs (`train --report-to`)
    flops        model FLOPs per token and the peak FLOP/s of common GPUs
    budget       the token budget against the built data: epochs per source, refused beyond one
    dry_run      `train --dry-run`: parameters, per-rank memory, FLOPs, tokens, epochs and time, nothing allocated
    checkpointer checkpoints with trainer state, pruning of old optimizer state, exact resume
    resume       what --resume checks first: the run's data build, recipe and total steps
    state        RunState (the loop's counters) and TrainerState (optimizer/state.pt)
    loop         train(): the phases above, in order
"""

from nexus_eval.training.components import Components, set_up
from nexus_eval.training.grad_cosine import cosine_matrix
from nexus_eval.training.heldout import HeldOut
from nexus_eval.training.loop import run_dir_for, train, train_step
from nexus_eval.training.model import build_model, causal_lm_loss, llama_config
from nexus_eval.training.recipe import Recipe, load_recipe, parse_recipe
from nexus_eval.training.state import RunState
from nexus_eval.training.step import StepResult

__all__ = [
    # a run
    "train",
    "run_dir_for",
    "load_recipe",
    "parse_recipe",
    "Recipe",
    # single steps (tests, benchmarks)
    "set_up",
    "Components",
    "train_step",
    "RunState",
    "StepResult",
    # what evaluation and geometry use
    "HeldOut",
    "build_model",
    "llama_config",
    "causal_lm_loss",
    "cosine_matrix",
]
