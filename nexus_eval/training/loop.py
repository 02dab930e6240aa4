"""Training: one recipe, one registered optimizer (adamw | nexus, or an ablation of Nexus: optimizer_registry.py), one
seed → a run directory of loss-labelled HF checkpoints.

All optimizers consume the identical micro-batch sequence (schedule.py) from identical initial weights; only the
update differs (step.py). AdamW accumulates the K micro-batch gradients into one step; Nexus takes K normalized inner
steps on them and hands the displacement to the same AdamW. Checkpoints are written at an interval and when the
held-out loss first drops below each recipe target, so that loss matching later pairs near-equal losses.

`train` reads in order: recipe → how this process executes (parallel.py) → set up (components.py) → resume
(checkpointer.py) or start clean → the loop, whose every step is: the outer step → the held-out hook (monitor.py) →
at eval steps a metrics row (metrics_log.py) with the gradient cosines (grad_cosine.py), also to TensorBoard / W&B
(trackers.py) → at checkpoint steps and target crossings a checkpoint → the progress bar.

Under torchrun every rank runs this same loop on its slice of every micro-batch; only rank 0 prints, logs and
writes (checkpoints: every rank writes its shard of the optimizer state, rank 0 the rest).
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from nexus_eval.checkpoints import list_checkpoints
from nexus_eval.display import console, progress_bar
from nexus_eval.errors import RecipeError
from nexus_eval.io import write_json_atomic
from nexus_eval.optim import Nexus
from nexus_eval.optimizer_registry import run_label
from nexus_eval.schema import MetricsRow, RunInfo
from nexus_eval.training import parallel
from nexus_eval.training.checkpointer import Checkpointer, checkpoint_meta, resume_run, trainer_state
from nexus_eval.training.components import Components, set_up
from nexus_eval.training.fidelity import start_of_run_check
from nexus_eval.training.grad_cosine import CosineWindow
from nexus_eval.training.metrics_log import CostMeter, MetricsLog, Throughput
from nexus_eval.training.monitor import HeldOutMonitor
from nexus_eval.training.optimizer import (
    check_optimizer,
    enter_train_mode,
    resolve_inner_loop,
    set_lr,
    weights_to_evaluate,
)
from nexus_eval.training.parallel import Execution, resolve_execution
from nexus_eval.training.recipe import Recipe, load_recipe, lr_at
from nexus_eval.training.resume import resumed_recipe
from nexus_eval.training.state import RunState
from nexus_eval.training.step import NonFiniteLoss, StepResult, outer_step
from nexus_eval.training.trackers import ReportTo, Trackers


def run_dir_for(out: Path, recipe: Recipe, optimizer: str, seed: int) -> Path:
    return out / f"{recipe.name}-{run_label(optimizer)}-s{seed}"


def train(
    recipe_path: Path | Recipe,
    optimizer: str,
    seed: int = 0,
    out: Path = Path("runs"),
    data_dir: Path | None = None,
    resume: bool = False,
    steps: int | None = None,
    progress: bool = True,
    device: str | None = None,
    strategy: str | None = None,
    peak_flops: float | None = None,
    on_checkpoint: Callable[[Path], object] | None = None,
    report_to: ReportTo | None = None,
) -> Path:
    """`nexus-eval train`: returns the run directory. recipe_path: a recipe file, or a Recipe already read (e.g. the
    one a leaderboard recorded, which `leaderboard reproduce` trains again). device / strategy: --device and
    --strategy, over the recipe's [parallel] table (None: the recipe's). peak_flops: one device's peak FLOP/s for
    the MFU (None: the CUDA device's from training.flops' table; none on CPU). on_checkpoint: called with each
    checkpoint's path once it is written (the main process only; e.g. in-training evaluation). report_to: where the
    curves go besides metrics.jsonl (trackers.resolve_report_to; None: nowhere else)."""
    recipe = recipe_path if isinstance(recipe_path, Recipe) else load_recipe(recipe_path)
    recipe = recipe.with_execution(strategy=strategy, device=device)
    if steps is not None and steps <= 0:
        raise RecipeError(f"--steps must be positive, got {steps}")
    run_dir = run_dir_for(out, recipe, optimizer, seed)
    data_dir = data_dir or Path(recipe.data.dir)
    ex = resolve_execution(recipe.parallel, recipe.optim.micro_batch, recipe.path or recipe.name)
    if check_optimizer(recipe.optim, optimizer, ex.strategy).update.has_inner_steps:
        resolve_inner_loop(recipe.optim, ex)  # a loop this execution cannot run: refused before anything starts
    if resume and list_checkpoints(run_dir):  # checked before the costly set-up: the same data, recipe and steps
        recipe = resumed_recipe(run_dir, recipe, steps, data_dir)
    elif steps is not None:  # recorded as part of the recipe: run.json's recipe and hash say how long it trained
        recipe = recipe.with_steps(steps)
    started = parallel.start(ex)  # the process group, under torchrun
    try:
        show = progress and ex.is_main
        return train_run(
            recipe, optimizer, seed, run_dir, data_dir, resume, show, ex, peak_flops, on_checkpoint, report_to
        )
    finally:
        parallel.end(started)


def train_run(
    recipe: Recipe,
    optimizer: str,
    seed: int,
    run_dir: Path,
    data_dir: Path,
    resume: bool,
    progress: bool,
    ex: Execution,
    peak_flops: float | None = None,
    on_checkpoint: Callable[[Path], object] | None = None,
    report_to: ReportTo | None = None,
) -> Path:
    """train() once the recipe and this process's execution are settled."""
    # Set up: data, micro-batch schedule, held-out windows, model, optimizer; then the loop's hooks. The thread count
    # first: the identity records the environment, threads included.
    torch.set_num_threads(training_threads())
    c = set_up(recipe, optimizer, seed, data_dir, ex)
    identity = c.identity(run_dir.name)
    t = recipe.train
    monitor = HeldOutMonitor(c.heldout, t.target_watch)
    cosine = CosineWindow(t.eval_interval)
    metrics = MetricsLog(run_dir)
    checkpointer = Checkpointer(run_dir, t.keep_state, ex)

    # Resume exactly where the newest checkpoint with optimizer state left off, or start clean.
    if ex.is_main:
        checkpointer.remove_partial()  # checkpoint writes a kill interrupted
    parallel.barrier(ex)  # every rank sees the same checkpoints
    if checkpointer.checkpoints():
        if not resume:
            raise RecipeError(f"{run_dir} already has checkpoints: pass --resume to continue it, or remove it")
        state = resume_run(checkpointer, c, cosine)
        enter_train_mode(c.opt)  # a Schedule-Free state is saved in eval mode, with the weights it evaluates
        if ex.is_main:
            metrics.truncate(state.step)
    else:  # nothing to resume from (or a run killed before its first checkpoint)
        state = RunState.start(recipe)
        if ex.is_main:
            shutil.rmtree(run_dir, ignore_errors=True)
            check_nexus_at_start(c, progress)
    if ex.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        info: RunInfo = {**identity, "total_steps": state.total_steps, "data_dir": str(data_dir)}
        info["execution"] = ex.record()
        write_json_atomic(run_dir / "run.json", info)
    parallel.barrier(ex)

    # The loop.
    tokens_per_step = recipe.tokens_per_step()
    since_row, since_start = Throughput(), Throughput()  # tokens/s for the metrics row and for the progress bar
    # MFU (tokens/s counts every rank's tokens: the peak is the world's) and this rank's peak memory.
    cost = CostMeter.for_model(c.model, recipe.model.context, peak_flops, devices=ex.world)
    # TensorBoard / W&B: rank 0's, and only when there are steps left (a finished run's resume adds no empty segment)
    report = report_to if ex.is_main and state.step < state.total_steps else None
    trackers = Trackers(report, run_dir, resumed_from=state.step)
    with trackers, progress_bar(run_dir.name, state.total_steps, state.step, enabled=progress) as bar:
        while state.step < state.total_steps:
            step = state.step + 1  # the step about to finish, 1-based
            is_eval = step % t.eval_interval == 0 or step == state.total_steps
            is_checkpoint = step % t.checkpoint_interval == 0 or step == state.total_steps
            try:
                result = train_step(c, state, record_grads=cosine.records(step, state.total_steps))
            except NonFiniteLoss as e:
                raise RecipeError(f"step {step}: {e}; {stopped(checkpointer, recipe)}") from None
            cosine.add(result.grads)
            since_row.add(tokens_per_step)
            since_start.add(tokens_per_step)

            with weights_to_evaluate(c.opt):  # Schedule-Free: the loss of the weights it evaluates and checkpoints
                measured = monitor.after_step(c.model, state, full=is_eval or is_checkpoint)
            if measured is not None and not measured.finite:  # diverged: log nothing, write no checkpoint
                loss = measured.losses["val_loss"]
                raise RecipeError(
                    f"step {step}: held-out loss is {loss}, the weights diverged; {stopped(checkpointer, recipe)}"
                )
            if is_eval and measured is not None:
                row: MetricsRow = {
                    "step": step,
                    "tokens": state.tokens,
                    "lr": c.opt.param_groups[0]["lr"],
                    "train_loss": result.loss,
                    "tokens_per_s": (rate := since_row.rate()),
                    **cost.measure(rate),
                    **measured.losses,
                }
                if (grad_cosine := cosine.take()) is not None:
                    row["grad_cosine"] = grad_cosine
                if ex.is_main:
                    metrics.append(row)
                    trackers.log(row)
                since_row.reset()
            if measured is not None and (measured.crossed or is_checkpoint):
                target = min(measured.crossed) if measured.crossed else None
                meta = checkpoint_meta(identity, state, measured.losses, target)
                trackers.flush()  # before the checkpoint: a resume from it finds every curve point up to its step
                with weights_to_evaluate(c.opt):  # the weights whose loss the checkpoint is labelled with
                    ckpt = checkpointer.save(c, meta, trainer_state(c, state, cosine))
                if on_checkpoint is not None and ex.is_main:  # other ranks go on and wait at the next collective
                    on_checkpoint(ckpt)
            bar.update(step, info=progress_info(result.loss, state.last_val, since_start.rate(), cost))
    return run_dir


def check_nexus_at_start(c: Components, progress: bool) -> None:
    """Before a fresh Nexus run's first step: how faithfully its precision computes the inner loop, and whether the
    loop changes the update at all (fidelity.start_of_run_check); warnings always, the figures with progress on."""
    update = c.entry.update
    if not (update.inner == "each" and update.normalize is not False and isinstance(c.opt, Nexus)):
        return  # the check measures normalized inner loops: reptile's, fish's and K = 1 have another second order
    batches = c.schedule.step_batches(0, c.recipe.optim.accum)
    lines = start_of_run_check(c.model, c.recipe, batches, c.opt, c.execution)
    err = console(stderr=True)
    for line in lines:
        if progress or line.startswith("warning:"):
            err.print(line, markup=False, highlight=False, soft_wrap=True)


def training_threads() -> int:
    """OMP_NUM_THREADS when set, else every core. On a machine shared with other jobs, more threads than free cores
    make every step wait on the slowest (tiny recipe: 7 s with one thread, 45 s with two on two busy cores)."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return max(1, os.cpu_count() or 1)


def train_step(c: Components, state: RunState, record_grads: bool = False) -> StepResult:
    """Outer step number state.step (0-based), as the loop takes it: the scheduled lr, the step's K micro-batches,
    the update; then counts the step and its tokens."""
    optim = c.recipe.optim
    set_lr(c.opt, lr_at(optim, state.step, state.total_steps), optim.lr)
    batches = c.schedule.step_batches(state.step, optim.accum)  # the global micro-batches, the same on every rank
    result = outer_step(c.train_model, c.opt, batches, c.entry, optim.grad_clip, record_grads, c.execution)
    state.step += 1
    state.tokens += c.recipe.tokens_per_step()
    return result


def stopped(checkpointer: Checkpointer, recipe: Recipe) -> str:
    """How a diverged run ends: what is kept to resume from, and the usual remedy."""
    ckpts = checkpointer.checkpoints()
    kept = f"last good checkpoint {ckpts[-1]} kept" if ckpts else "no checkpoint was written"
    return f"stopped, {kept} (lower optim.lr in {recipe.path}?)"


def progress_info(train_loss: float, val_loss: float, tokens_per_s: float, cost: CostMeter | None = None) -> str:
    val = f"{val_loss:.3f}" if val_loss != math.inf else "-"
    spent = f" {cost.describe(tokens_per_s)}" if cost is not None else ""
    return f"loss {train_loss:.3f} val {val} {tokens_per_s:,.0f} tok/s{spent}"
