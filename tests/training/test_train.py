"""The trainer on a tiny real data build: checkpoints, fairness, each optimizer's update against a hand-written
reference, exact resume, NaN stop, bad input."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from nexus_eval.checkpoints import (
    STATE_FILE,
    checkpoint_name,
    list_checkpoints,
    load_model,
    non_finite_weights,
    read_meta,
)
from nexus_eval.cli import app
from nexus_eval.optim import Nexus
from nexus_eval.training import Recipe, RunState, load_recipe, run_dir_for, set_up, train, train_step
from nexus_eval.training.metrics_log import MEASURED_KEYS
from nexus_eval.training.recipe import OptimSpec, lr_at
from nexus_eval.training.schedule import MicroBatch
from tests.conftest import write_recipe


@pytest.mark.slow
def test_run_writes_loss_labelled_hf_checkpoints(tiny_runs: dict[str, Path]) -> None:
    for optimizer, run_dir in tiny_runs.items():
        ckpts = list_checkpoints(run_dir)
        # step 2: the first held-out eval finds the 100.0 target crossed; steps 3 and 6: the interval and the end.
        assert [read_meta(c)["step"] for c in ckpts] == [2, 3, 6]
        meta = read_meta(ckpts[-1])
        assert meta["optimizer"] == optimizer and meta["tokens_seen"] == 6 * 3 * 4 * 32
        assert set(meta["heldout_loss_per_source"]) == {"text", "math", "code"}
        assert len(meta["ood_loss"]) >= 2 and meta["data_hash"] and meta["recipe_hash"]
        assert read_meta(ckpts[0])["target_loss"] == 100.0
        model, tokenizer = load_model(ckpts[-1])
        assert model.config.model_type == "llama" and len(tokenizer) <= model.config.vocab_size
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [2, 4, 6]
        assert rows[-1]["val_loss"] == pytest.approx(meta["heldout_loss"])
        cos = rows[-1]["grad_cosine"]
        assert len(cos["matrix"]) == len(cos["sources"]) >= 2
        # Training reduced the held-out loss from the first eval to the last.
        assert rows[-1]["val_loss"] < rows[0]["val_loss"]


def test_optimizers_see_identical_micro_batches_and_start_point(tiny_data_dir: Path, tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path, tiny_data_dir))
    a = set_up(recipe, "adamw", 0, tiny_data_dir)
    b = set_up(recipe, "nexus", 0, tiny_data_dir)
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q)
    for step in range(4):
        for x, y in zip(a.schedule.step_batches(step, 3), b.schedule.step_batches(step, 3), strict=True):
            assert x.source == y.source and torch.equal(x.inputs, y.inputs)
    c = set_up(recipe, "nexus", 1, tiny_data_dir)  # another seed: other batches
    assert not torch.equal(c.schedule.step_batches(0, 3)[0].inputs, a.schedule.step_batches(0, 3)[0].inputs)


def reference_loss(model: Any, mb: MicroBatch) -> torch.Tensor:
    """The training loss, written out: mean next-token cross-entropy over the micro-batch."""
    logits = model(input_ids=mb.inputs).logits
    return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), mb.labels.flatten())


def global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum((t.double() ** 2).sum() for t in tensors))


def adamw_reference_grad(model: Any, batches: list[MicroBatch], grad_clip: float) -> list[torch.Tensor]:
    """AdamW's input: the mean of the K micro-batch gradients, scaled to norm grad_clip if longer (as torch clips)."""
    params = list(model.parameters())
    grads = [torch.autograd.grad(reference_loss(model, mb), params) for mb in batches]
    mean = [sum(per_mb) / len(batches) for per_mb in zip(*grads, strict=True)]
    norm = float(global_norm(mean))
    assert norm > grad_clip  # the tiny recipe's gradients are long enough for clipping to matter
    return [g * min(1.0, grad_clip / (norm + 1e-6)) for g in mean]


def nexus_reference_grad(model: Any, batches: list[MicroBatch], gamma: float) -> list[torch.Tensor]:
    """Nexus' input to AdamW: K steps θ ← θ − γ g/‖g‖ (global L2 norm), one per micro-batch, then (θ0 − θK)/γ."""
    params = list(model.parameters())
    theta0 = [p.detach().clone() for p in params]
    for mb in batches:
        grads = torch.autograd.grad(reference_loss(model, mb), params)
        norm = global_norm(list(grads)).float()
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p -= gamma * g / norm
    return [(p0 - p.detach()) / gamma for p0, p in zip(theta0, params, strict=True)]


def reference_adamw(model: Any, o: OptimSpec) -> torch.optim.AdamW:
    """torch AdamW as the recipe specifies it: weight decay on matrices, none on norms (1-D)."""
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": o.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2))


def relative_error(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    return float(global_norm([a - b for a, b in zip(got, want, strict=True)]) / global_norm(want))


@pytest.mark.parametrize("name", ["adamw", "nexus"])
def test_each_optimizer_step_is_its_algorithm_on_the_same_batches(
    name: str, tiny_data_dir: Path, tmp_path: Path
) -> None:
    """Two trainer steps against a hand-written reference, from the same start weights on the same K micro-batches
    of the schedule. Checked in two parts, because Adam's division by sqrt(v) turns float rounding in near-zero
    gradient coordinates into lr-sized weight differences: (1) the gradient the trainer hands its outer AdamW
    (AdamW: the clipped mean micro-batch gradient; Nexus: the displacement of K normalized inner steps over
    γ = inner_lr_ratio × lr), and the point it steps from (the step's start θ0), match the reference up to rounding;
    (2) the weights after the step are torch AdamW's from that point on that gradient, with the recipe's lr
    schedule, betas and weight-decay groups, Adam's state carried from step to step."""
    recipe = load_recipe(write_recipe(tmp_path, tiny_data_dir))
    o = recipe.optim
    c = set_up(recipe, name, 0, tiny_data_dir)
    params = list(c.model.parameters())
    seen: list[dict[str, Any]] = []  # what the trainer's outer AdamW sees as it steps

    def capture(optimizer: Any, args: Any, kwargs: Any) -> None:
        seen.append(
            {
                "lr": [g["lr"] for g in optimizer.param_groups],
                "from": [p.detach().clone() for p in params],
                "grad": [p.grad.detach().clone() for p in params],
            }
        )

    (c.opt.outer if isinstance(c.opt, Nexus) else c.opt).register_step_pre_hook(capture)
    shadow = copy.deepcopy(c.model)  # steps with the reference AdamW on the gradients the trainer produced
    shadow_opt = reference_adamw(shadow, o)
    state = RunState.start(recipe)
    for step in range(2):
        lr = lr_at(o, step, state.total_steps)
        batches = c.schedule.step_batches(step, o.accum)
        theta0 = [p.detach().clone() for p in params]
        mean_grad = adamw_reference_grad(copy.deepcopy(c.model), batches, o.grad_clip)
        if name == "nexus":
            want = nexus_reference_grad(copy.deepcopy(c.model), batches, o.inner_lr_ratio * lr)
        else:
            want = mean_grad
        train_step(c, state)
        assert state.step == step + 1 and state.tokens == (step + 1) * recipe.tokens_per_step()
        assert len(seen) == step + 1  # one outer step per trainer step (Nexus' inner steps are not AdamW's)
        got = seen[-1]
        assert got["lr"] == [lr, lr]
        assert all(torch.equal(a, b) for a, b in zip(got["from"], theta0, strict=True))
        assert relative_error(got["grad"], want) < 1e-4
        if name == "nexus":  # the check tells the two updates apart: Nexus' input is far from the mean gradient
            assert relative_error(got["grad"], mean_grad) > 0.1
        with torch.no_grad():
            for p, start, grad in zip(shadow.parameters(), got["from"], got["grad"], strict=True):
                p.copy_(start)
                p.grad = grad
        for group in shadow_opt.param_groups:
            group["lr"] = lr
        shadow_opt.step()
        for p, q in zip(params, shadow.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-7)


@pytest.mark.slow
def test_resume_reproduces_uninterrupted_run(tiny_runs: dict[str, Path], tmp_path: Path, tiny_data_dir: Path) -> None:
    for optimizer, run_dir in tiny_runs.items():
        killed = tmp_path / optimizer / run_dir.name
        shutil.copytree(run_dir, killed)
        shutil.rmtree(killed / "ckpt-000006")  # as if killed after step 3's checkpoint
        with (killed / "metrics.jsonl").open("a") as fh:
            fh.write('{"step": 7, "half-written')
        recipe = write_recipe(tmp_path, tiny_data_dir)
        assert run_dir_for(tmp_path / optimizer, load_recipe(recipe), optimizer, 0) == killed
        train(recipe, optimizer, seed=0, out=tmp_path / optimizer, resume=True, progress=False)
        want, _ = load_model(run_dir / "ckpt-000006")
        got, _ = load_model(killed / "ckpt-000006")
        for p, q in zip(want.parameters(), got.parameters(), strict=True):
            assert torch.equal(p, q)
        strip = [
            {k: v for k, v in json.loads(r).items() if k not in MEASURED_KEYS}
            for r in (run_dir / "metrics.jsonl").read_text().splitlines()
        ]
        again = [
            {k: v for k, v in json.loads(r).items() if k not in MEASURED_KEYS}
            for r in (killed / "metrics.jsonl").read_text().splitlines()
        ]
        assert strip == again


runner = CliRunner()


def cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_nan_loss_stops_with_clear_error(tiny_data_dir: Path, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, tiny_data_dir, lr=1e30)
    code, out = cli("train", str(recipe), "--optimizer", "adamw", "--out", str(tmp_path / "runs"), "--quiet")
    # The held-out check after step 2 sees it first (before, a NaN metrics row was logged and step 3 stopped).
    assert code == 2 and "loss is nan" in out and "stopped, " in out and len(out.strip().splitlines()) == 1


def test_bad_input_one_line_errors(tiny_data_dir: Path, tmp_path: Path) -> None:
    good = write_recipe(tmp_path, tiny_data_dir)
    bad_key = tmp_path / "bad_key.toml"
    bad_key.write_text(good.read_text().replace("micro_batch", "microbatch"))
    bad_source = tmp_path / "bad_source.toml"
    bad_source.write_text(good.read_text().replace("code = 1.0", "poetry = 1.0"))
    cases = [
        (["train", str(bad_key), "--optimizer", "adamw"], "unknown key 'microbatch'"),
        (["train", str(good), "--optimizer", "sgd"], "--optimizer must be one of"),
        (["train", str(tmp_path / "nope.toml"), "--optimizer", "adamw"], "recipe not found"),
        (["train", str(good), "--optimizer", "adamw", "--data", str(tmp_path)], "manifest.json"),
        (["train", str(bad_source), "--optimizer", "adamw"], "'poetry'"),
    ]
    for args, message in cases:
        code, out = cli(*args, "--out", str(tmp_path / "runs"), "--quiet")
        assert code == 2, (args, out)
        assert message in out and len(out.strip().splitlines()) == 1, (args, out)


@pytest.mark.parametrize("name", ["../victim", "/abs/run", "a/b", ".hidden", "ok\n"])
def test_recipe_name_cannot_leave_the_runs_directory(name: str, tiny_data_dir: Path, tmp_path: Path) -> None:
    """The recipe's name becomes runs/<name>-<optimizer>-s<seed>: a name that climbs out is refused before anything
    is written or removed (a directory of that name without checkpoints would otherwise be deleted)."""
    victim = tmp_path / "victim-adamw-s0"
    victim.mkdir()
    (victim / "keep.txt").write_text("not a run")
    recipe = write_recipe(tmp_path, tiny_data_dir)
    recipe.write_text(f"name = {json.dumps(name)}\n" + recipe.read_text().replace('name = "t"\n', ""))
    code, out = cli("train", str(recipe), "--optimizer", "adamw", "--out", str(tmp_path / "runs"), "--quiet")
    assert code == 2 and "it names the run directory" in out and len(out.strip().splitlines()) == 1, out
    assert (victim / "keep.txt").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("optimizer", ["adamw", "nexus"])
def test_a_diverging_run_keeps_its_last_good_checkpoint(optimizer: str, tiny_data_dir: Path, tmp_path: Path) -> None:
    """lr 1000 turns the weights NaN within two steps. No checkpoint or metrics row is written from non-finite
    weights, the last good checkpoint keeps its optimizer state (keep_state = "latest" prunes the others), and the
    message names it, or says that there is none."""
    recipe = write_recipe(tmp_path, tiny_data_dir, lr=1000.0)
    text = recipe.read_text().replace("checkpoint_interval = 3", "checkpoint_interval = 1")
    recipe.write_text(text.replace('keep_state = "all"', 'keep_state = "latest"'))
    code, out = cli("train", str(recipe), "--optimizer", optimizer, "--out", str(tmp_path / "runs"), "--quiet")
    assert code == 2 and len(out.strip().splitlines()) == 1 and "stopped, " in out, out
    run = tmp_path / "runs" / f"t-{optimizer}-s0"
    ckpts = list_checkpoints(run)
    for ckpt in ckpts:
        assert math.isfinite(read_meta(ckpt)["heldout_loss"]) and non_finite_weights(ckpt) == []
    if ckpts:
        assert f"last good checkpoint {ckpts[-1]} kept" in out and (ckpts[-1] / STATE_FILE).exists()
    else:
        assert "no checkpoint was written" in out
    for line in (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []:
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-finite {c} in metrics.jsonl"))


def recorded_run(run: Path, recipe: Recipe, data_hash: str, total_steps: int) -> Path:
    """A run directory as training leaves it for --resume's checks: run.json and a checkpoint's nexus.json."""
    info = {"recipe": recipe.to_dict(), "recipe_hash": recipe.hash(), "data_hash": data_hash, "data_dir": "data0"}
    info["total_steps"] = total_steps
    (run / checkpoint_name(total_steps)).mkdir(parents=True)
    (run / checkpoint_name(total_steps) / "nexus.json").write_text(json.dumps({**info, "step": total_steps}))
    (run / "run.json").write_text(json.dumps(info))
    return run


def test_resume_refuses_another_data_build_recipe_or_total_steps(tiny_data_dir: Path, tmp_path: Path) -> None:
    """--resume checks the run's recorded data build, recipe and total steps before anything is set up: a
    continuation must be the recorded run, and the lr schedule depends on the total steps."""
    recipe_path = write_recipe(tmp_path, tiny_data_dir)
    recipe = load_recipe(recipe_path)
    data_hash = json.loads((tiny_data_dir / "manifest.json").read_text())["hash"]
    out = tmp_path / "runs"
    run = recorded_run(out / "t-adamw-s0", recipe.with_steps(4), data_hash, 4)
    other = recorded_run(out / "t-nexus-s0", recipe, "f" * 64, 6)
    lr = tmp_path / "lr"
    lr.mkdir()
    lr_path = write_recipe(lr, tiny_data_dir, lr=1e-3)
    cases = [
        (recipe_path, "adamw", ["--steps", "6"], f"--resume --steps 6: {run} was started for 4 steps"),
        (recipe_path, "adamw", ["--steps", "5"], "start a new run"),
        (recipe_path, "nexus", [], f"{other} was trained on data build ffffffffffff but --data {tiny_data_dir} is"),
        (recipe_path, "nexus", [], f"build {data_hash[:12]}; resume it on its own data build (it was trained with"),
        (lr_path, "adamw", [], f"differs from the recipe {run} was trained with in optim.lr (0.001 vs recorded"),
    ]
    for path, optimizer, extra, message in cases:
        code, output = cli("train", str(path), "--optimizer", optimizer, "--out", str(out), "--resume", *extra)
        assert code == 2 and len(output.strip().splitlines()) == 1, output
        assert message in output, (extra, output)


@pytest.mark.slow
def test_steps_override_is_part_of_the_recorded_recipe(tiny_data_dir: Path, tmp_path: Path) -> None:
    """`--steps 2` records a 2-step recipe (another recipe_hash than the recipe's own 6 steps); the run resumes
    with its own total, given or not, and refuses another."""
    recipe_path = write_recipe(tmp_path, tiny_data_dir)
    args = ["train", str(recipe_path), "--optimizer", "nexus", "--out", str(tmp_path / "runs"), "--quiet"]
    code, output = cli(*args, "--steps", "2")
    assert code == 0, output
    run = tmp_path / "runs" / "t-nexus-s0"
    info = json.loads((run / "run.json").read_text())
    recipe = load_recipe(recipe_path)
    assert info["total_steps"] == 2 and info["recipe"]["train"]["steps"] == 2
    assert info["recipe_hash"] == recipe.with_steps(2).hash() != recipe.hash()
    assert read_meta(list_checkpoints(run)[-1])["recipe_hash"] == info["recipe_hash"]
    assert len(info["tokenizer_hash"]) == len(info["heldout_hash"]) == 64
    for extra in ([], ["--steps", "2"]):  # nothing left to train: no error, the same recorded recipe
        code, output = cli(*args, "--resume", *extra)
        assert code == 0, (extra, output)
    assert json.loads((run / "run.json").read_text())["recipe_hash"] == info["recipe_hash"]
    code, output = cli(*args, "--resume", "--steps", "3")
    assert code == 2 and "was started for 2 steps" in output, output
