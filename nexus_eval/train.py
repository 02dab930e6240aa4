"""Training: one recipe, one optimizer (adamw | nexus), one seed → a run directory of loss-labelled HF checkpoints.

Both optimizers consume the identical micro-batch sequence (nexus_eval.batches) from identical initial weights;
only the update differs. AdamW accumulates the K micro-batch gradients into one step; Nexus takes K normalized inner
steps on them and hands the displacement to the same AdamW. Checkpoints are written at an interval and when the
held-out loss first drops below each recipe target, so that loss matching later pairs near-equal losses.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nexus_eval import __version__
from nexus_eval.batches import MicroBatchSchedule
from nexus_eval.checkpoints import (
    STATE_FILE,
    checkpoint_name,
    list_checkpoints,
    save_checkpoint,
    write_json_atomic,
)
from nexus_eval.errors import NexusError
from nexus_eval.heldout import HeldOut
from nexus_eval.model import build_model, causal_lm_loss, count_params, llama_config
from nexus_eval.optim import Nexus
from nexus_eval.recipe import OPTIMIZERS, Recipe, load_recipe, lr_at


def code_version() -> str:
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


def build_optimizer(model: torch.nn.Module, recipe: Recipe, name: str) -> torch.optim.Optimizer | Nexus:
    """AdamW with no weight decay on norms (1-D params); Nexus wraps exactly that AdamW."""
    o = recipe.optim
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    adamw = torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2))
    if name == "adamw":
        return adamw
    return Nexus(adamw, inner_lr_ratio=o.inner_lr_ratio, normalize=o.normalize)


def optimizer_hparams(recipe: Recipe, name: str) -> dict[str, Any]:
    o = recipe.optim
    hp: dict[str, Any] = {
        "outer": "AdamW",
        "lr": o.lr,
        "betas": [o.beta1, o.beta2],
        "weight_decay": o.weight_decay,
        "accum": o.accum,
        "micro_batch": o.micro_batch,
        "schedule": o.schedule,
    }
    if name == "nexus":
        hp.update(inner_lr_ratio=o.inner_lr_ratio, normalize=o.normalize, inner_steps=o.accum)
    else:
        hp.update(grad_clip=o.grad_clip)
    return hp


@dataclass
class RunState:
    step: int = 0  # outer steps completed
    tokens: int = 0
    targets_left: list[float] = field(default_factory=list)
    last_val: float = math.inf


COSINE_WINDOW_STEPS = 4


class Trainer:
    def __init__(
        self,
        recipe: Recipe,
        optimizer: str,
        seed: int,
        run_dir: Path,
        data_dir: Path,
        steps: int | None = None,
    ):
        from nexus_eval.data import load_manifest, load_tokenizer, open_tokens

        if optimizer not in OPTIMIZERS:
            raise NexusError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
        self.recipe, self.optimizer_name, self.seed, self.run_dir = recipe, optimizer, seed, run_dir
        self.data_dir = data_dir
        self.total_steps = steps or recipe.train.steps
        self.manifest = load_manifest(data_dir)
        missing = sorted(set(recipe.data.mixture) - set(self.manifest["sources"]))
        if missing:
            raise NexusError(
                f"{recipe.path}: data.mixture names source {missing[0]!r} that {data_dir}/manifest.json lacks "
                f"(has: {', '.join(sorted(self.manifest['sources']))})"
            )
        self.tokenizer = load_tokenizer(data_dir)
        mixture = {s: w for s, w in recipe.data.mixture.items() if w > 0}
        self.schedule = MicroBatchSchedule(
            {s: open_tokens(data_dir, "train", s) for s in mixture},
            mixture,
            recipe.optim.micro_batch,
            recipe.model.context,
            seed,
        )
        self.heldout = HeldOut(data_dir, mixture, recipe.model.context, recipe.train.eval_windows)
        config = llama_config(
            recipe.model.preset,
            vocab_size=int(self.manifest["vocab_size"]),
            context=recipe.model.context,
            bos_id=self.tokenizer.bos_token_id,
            eos_id=self.tokenizer.eos_token_id,
        )
        self.model = build_model(config, seed)
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = build_optimizer(self.model, recipe, optimizer)
        self.state = RunState(targets_left=list(recipe.train.target_losses))
        self.cosine_grads: dict[str, torch.Tensor] = {}
        self.run_id = run_dir.name
        self.meta_common = {
            "run_id": self.run_id,
            "optimizer": optimizer,
            "optimizer_hparams": optimizer_hparams(recipe, optimizer),
            "seed": seed,
            "recipe": recipe.to_dict(),
            "recipe_hash": recipe.hash(),
            "data_hash": self.manifest["hash"],
            "code_version": code_version(),
            "model_params": count_params(self.model),
        }

    # ---- the optimizer step ---------------------------------------------------------------------------------

    def flat_grad(self) -> torch.Tensor:
        return torch.cat(
            [p.grad.flatten() if p.grad is not None else torch.zeros_like(p).flatten() for p in self.params]
        )

    def train_step(self, record_grads: bool) -> tuple[float, dict[str, torch.Tensor]]:
        """One outer step on K micro-batches. With record_grads, also the summed micro-batch gradient per source
        (already computed by backward: no extra passes), for the gradient-cosine log."""
        step = self.state.step
        lr = lr_at(self.recipe.optim, step, self.total_steps)
        for group in self.opt.param_groups:
            group["lr"] = lr
        batches = self.schedule.step_batches(step, self.recipe.optim.accum)
        per_source: dict[str, torch.Tensor] = {}
        losses = []
        accumulated = None
        for mb in batches:
            loss = causal_lm_loss(self.model, mb.inputs, mb.labels)
            if not torch.isfinite(loss):
                raise NexusError(
                    f"step {step}: training loss is {loss.item()} on a {mb.source} micro-batch; stopped, last good "
                    f"checkpoint kept in {self.run_dir} (lower optim.lr in {self.recipe.path}?)"
                )
            losses.append(loss.item())
            if isinstance(self.opt, Nexus):
                loss.backward()
                if record_grads:
                    per_source[mb.source] = per_source.get(mb.source, 0) + self.flat_grad()
                self.opt.inner_step()
            else:
                (loss / len(batches)).backward()
                if record_grads:
                    total = self.flat_grad()
                    micro = total if accumulated is None else total - accumulated
                    per_source[mb.source] = per_source.get(mb.source, 0) + micro
                    accumulated = total
        if isinstance(self.opt, Nexus):
            self.opt.step()
        else:
            if self.recipe.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.params, self.recipe.optim.grad_clip)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        self.state.step += 1
        self.state.tokens += self.recipe.tokens_per_step()
        return sum(losses) / len(losses), per_source

    # ---- checkpoints and resume -----------------------------------------------------------------------------

    def trainer_state(self) -> dict[str, Any]:
        return {
            "optimizer": self.opt.state_dict(),
            "step": self.state.step,
            "tokens": self.state.tokens,
            "targets_left": self.state.targets_left,
            "last_val": self.state.last_val,
            "recipe_hash": self.recipe.hash(),
            "optimizer_name": self.optimizer_name,
            "total_steps": self.total_steps,
            "torch_rng": torch.get_rng_state(),
            "cosine_grads": self.cosine_grads,
        }

    def save(self, measured: dict[str, Any], target: float | None) -> Path:
        meta = {
            **self.meta_common,
            "step": self.state.step,
            "tokens_seen": self.state.tokens,
            "heldout_loss": measured["val_loss"],
            "heldout_loss_per_source": measured["val_loss_per_source"],
            "ood_loss": measured["ood_loss"],
            "target_loss": target,
        }
        ckpt = save_checkpoint(
            self.run_dir / checkpoint_name(self.state.step), self.model, self.tokenizer, meta, self.trainer_state()
        )
        # Optimizer state only beside the newest checkpoint: resuming needs no more, and it is 2-3x the weights.
        for older in list_checkpoints(self.run_dir) if self.recipe.train.keep_state == "latest" else []:
            if older != ckpt and (older / STATE_FILE).exists():
                shutil.rmtree((older / STATE_FILE).parent)
        return ckpt

    def resume(self) -> None:
        from transformers import LlamaForCausalLM

        with_state = [c for c in list_checkpoints(self.run_dir) if (c / STATE_FILE).exists()]
        if not with_state:
            raise NexusError(f"--resume: {self.run_dir} has no checkpoint with optimizer state to resume from")
        ckpt = with_state[-1]
        state = torch.load(ckpt / STATE_FILE, weights_only=False)
        if state["recipe_hash"] != self.recipe.hash() or state["optimizer_name"] != self.optimizer_name:
            raise NexusError(f"--resume: {ckpt} was trained with another recipe or optimizer than {self.recipe.path}")
        loaded = LlamaForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
        self.model.load_state_dict(loaded.state_dict())
        self.opt.load_state_dict(state["optimizer"])
        self.state = RunState(state["step"], state["tokens"], list(state["targets_left"]), state["last_val"])
        self.total_steps = state["total_steps"]
        torch.set_rng_state(state["torch_rng"])
        self.cosine_grads = state["cosine_grads"]
        self.truncate_metrics(self.state.step)

    def truncate_metrics(self, step: int) -> None:
        """Drop log lines after the resumed step (and a line half-written by a kill), atomically."""
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("step", math.inf) <= step:
                kept.append(line)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept))
        os.replace(tmp, path)

    def log(self, row: dict[str, Any]) -> None:
        with (self.run_dir / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps(row, sort_keys=True) + "\n")

    # ---- the loop -------------------------------------------------------------------------------------------

    def measure_heldout(self, full: bool) -> tuple[dict[str, Any] | None, list[float]]:
        """Held-out measurement after a step: everything when `full`, else the mixture loss alone while the loss is
        within target_watch of the next target (to catch the crossing step). Returns (measured or None, targets
        crossed now)."""
        t = self.recipe.train
        watching = self.state.targets_left and self.state.last_val - self.state.targets_left[0] < t.target_watch
        measured: dict[str, Any] | None = None
        if full:
            measured = self.heldout.measure(self.model)
            self.state.last_val = measured["val_loss"]
        elif watching:
            self.state.last_val, per_source = self.heldout.mixture_loss(self.model)
        else:
            return None, []
        crossed = [x for x in self.state.targets_left if self.state.last_val <= x]
        self.state.targets_left = [x for x in self.state.targets_left if x not in crossed]
        if crossed and measured is None:
            measured = {
                "val_loss": self.state.last_val,
                "val_loss_per_source": per_source,
                "ood_loss": self.heldout.ood_loss(self.model),
            }
        return measured, crossed

    def run(self, progress: bool = True) -> Path:
        from nexus_eval.progress import training_progress

        t = self.recipe.train
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(
            self.run_dir / "run.json",
            {**self.meta_common, "total_steps": self.total_steps, "data_dir": str(self.data_dir)},
        )
        window_start, window_tokens = time.perf_counter(), 0
        with training_progress(self.run_id, self.total_steps, self.state.step, enabled=progress) as bar:
            while self.state.step < self.total_steps:
                step = self.state.step + 1  # the step about to finish, 1-based
                is_eval = step % t.eval_interval == 0 or step == self.total_steps
                # The gradient-cosine log sums each source's micro-batch gradients over the last few steps before an
                # eval, so that every source is represented even when one step's K draws miss a source.
                until_eval = min(-step % t.eval_interval, self.total_steps - step)
                train_loss, grads = self.train_step(record_grads=until_eval < COSINE_WINDOW_STEPS)
                for source, grad in grads.items():
                    self.cosine_grads[source] = self.cosine_grads.get(source, 0) + grad
                window_tokens += self.recipe.tokens_per_step()
                measured, crossed = self.measure_heldout(full=is_eval or step % t.checkpoint_interval == 0)
                if is_eval and measured is not None:
                    elapsed = time.perf_counter() - window_start
                    row = {
                        "step": step,
                        "tokens": self.state.tokens,
                        "lr": self.opt.param_groups[0]["lr"],
                        "train_loss": train_loss,
                        "tokens_per_s": window_tokens / elapsed,
                        **measured,
                    }
                    if len(self.cosine_grads) > 1:
                        from nexus_eval.geometry import cosine_matrix

                        row["grad_cosine"] = cosine_matrix(self.cosine_grads)
                    self.cosine_grads = {}
                    self.log(row)
                    window_start, window_tokens = time.perf_counter(), 0
                if measured is not None and (crossed or step % t.checkpoint_interval == 0 or step == self.total_steps):
                    self.save(measured, min(crossed) if crossed else None)
                bar.update(step, train_loss, self.state.last_val, self.recipe.tokens_per_step())
        return self.run_dir


def run_dir_for(out: Path, recipe: Recipe, optimizer: str, seed: int) -> Path:
    return out / f"{recipe.name}-{optimizer}-s{seed}"


def train(
    recipe_path: Path,
    optimizer: str,
    seed: int = 0,
    out: Path = Path("runs"),
    data_dir: Path | None = None,
    resume: bool = False,
    steps: int | None = None,
    progress: bool = True,
) -> Path:
    """`nexus-eval train`: returns the run directory."""
    recipe = load_recipe(recipe_path)
    if steps is not None and steps <= 0:
        raise NexusError(f"--steps must be positive, got {steps}")
    run_dir = run_dir_for(out, recipe, optimizer, seed)
    trainer = Trainer(recipe, optimizer, seed, run_dir, data_dir or Path(recipe.data.dir), steps)
    if list_checkpoints(run_dir):
        if not resume:
            raise NexusError(f"{run_dir} already has checkpoints: pass --resume to continue it, or remove it")
        trainer.resume()
    else:  # nothing to resume from (or a run killed before its first checkpoint): start clean
        shutil.rmtree(run_dir, ignore_errors=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    return trainer.run(progress=progress)
