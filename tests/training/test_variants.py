"""The ablation variants of Nexus (nexus_eval/optimizer_registry.py) on the tiny real data build: every variant
consumes the identical micro-batch tokens for a seed (nexus-mixed: the identical multiset per outer step), each
trains, each update is its algorithm (checked against hand-written references), and a mistyped name is one line."""

from __future__ import annotations

import copy
import json
import math
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from nexus_eval.checkpoints import load_model
from nexus_eval.cli import app
from nexus_eval.optim import Fish, Nexus, OptimizerSplit
from nexus_eval.optimizer_registry import REGISTRY
from nexus_eval.training import RunState, load_recipe, set_up, train, train_step
from nexus_eval.training.recipe import flat_recipe, parse_recipe
from nexus_eval.training.schedule import MIXED, MicroBatch, mixed_micro_batches
from tests.conftest import write_recipe
from tests.training.test_train import adamw_reference_grad, global_norm, reference_loss, relative_error

OPTIMIZERS = REGISTRY.names()
VARIANTS = ("reptile", "nexus-k1", "nexus-mixed", "fish")
STEPS = 3


def consumed_rows(name: str, recipe_path: Path, data_dir: Path, seed: int = 0) -> list[list[tuple[int, ...]]]:
    """Per outer step, the token rows of every forward the training step ran, in order (a forward pre-hook on the
    model: what the variant really consumed, not what the schedule offered)."""
    c = set_up(load_recipe(recipe_path), name, seed, data_dir)
    seen: list[tuple[int, ...]] = []
    c.model.register_forward_pre_hook(
        lambda _m, _args, kwargs: seen.extend(tuple(row.tolist()) for row in kwargs["input_ids"]), with_kwargs=True
    )
    state, steps = RunState.start(c.recipe), []
    for _ in range(STEPS):
        train_step(c, state)
        steps.append(list(seen))
        seen.clear()
    return steps


@pytest.mark.slow  # ~15 s: seven set-ups, three steps each
def test_every_variant_consumes_the_identical_micro_batch_tokens(tiny_data_dir: Path, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, tiny_data_dir)
    rows = {name: consumed_rows(name, recipe, tiny_data_dir) for name in OPTIMIZERS}
    rows_per_step = 3 * 4  # accum × micro_batch of the tiny recipe
    assert all(len(step) == rows_per_step for step in rows["adamw"])
    for name in OPTIMIZERS:
        if name == "nexus-mixed":  # the same sequences per outer step, grouped otherwise
            for mixed, pure in zip(rows[name], rows["adamw"], strict=True):
                assert Counter(mixed) == Counter(pure) and mixed != pure
        else:  # the same rows in the same order
            assert rows[name] == rows["adamw"], name
    assert consumed_rows("fish", recipe, tiny_data_dir, seed=1)[0] != rows["fish"][0]  # another seed: other tokens


def test_mixed_micro_batches_hold_every_source() -> None:
    def pure(source: str, first: int) -> MicroBatch:
        inputs = torch.arange(first, first + 8).reshape(4, 2)
        return MicroBatch(source, inputs, inputs + 100)

    batches = [pure("text", 0), pure("text", 8), pure("code", 16), pure("math", 24)]  # K = 4, B = 4
    mixed = mixed_micro_batches(batches)
    assert [len(mb.inputs) for mb in mixed] == [4, 4, 4, 4] and {mb.source for mb in mixed} == {MIXED}
    source_of = {row: mb.source for mb in batches for row in map(tuple, mb.inputs.tolist())}
    for mb in mixed:
        assert {source_of[tuple(row)] for row in mb.inputs.tolist()} == {"text", "code", "math"}
        assert torch.equal(mb.labels, mb.inputs + 100)  # each row keeps its own labels
    before = sorted(map(tuple, torch.cat([mb.inputs for mb in batches]).tolist()))
    assert sorted(map(tuple, torch.cat([mb.inputs for mb in mixed]).tolist())) == before
    three = mixed_micro_batches(batches[1:])  # K = 3, B = 4: B is no multiple of K, every source still in each
    for mb in three:
        assert {source_of[tuple(row)] for row in mb.inputs.tolist()} == {"text", "code", "math"}


@pytest.mark.parametrize("name", VARIANTS)
def test_each_variant_trains_the_tiny_recipe(name: str, tiny_data_dir: Path, tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path, tiny_data_dir))
    c = set_up(recipe, name, 0, tiny_data_dir)
    state = RunState.start(recipe)
    first = c.heldout.mixture_loss(c.model)[0]
    losses = [train_step(c, state).loss for _ in range(6)]
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 0.05, losses  # decreasing-ish: 6 steps of the tiny recipe
    assert c.heldout.mixture_loss(c.model)[0] < first


def capture_outer_steps(c: Any) -> list[dict[str, Any]]:
    """What the trainer's outer optimizer sees when it steps: the point it steps from and the gradient it gets."""
    params = list(c.model.parameters())
    seen: list[dict[str, Any]] = []

    def capture(_optimizer: Any, _args: Any, _kwargs: Any) -> None:
        seen.append({"from": [p.detach().clone() for p in params], "grad": [p.grad.detach().clone() for p in params]})

    outer = c.opt.outer if isinstance(c.opt, Nexus) else c.opt
    (outer.parts[0] if isinstance(outer, OptimizerSplit) else outer).register_step_pre_hook(capture)
    return seen


def test_nexus_k1_hands_adamw_the_unit_normalized_mean_gradient(tiny_data_dir: Path, tmp_path: Path) -> None:
    """K = 1: one normalized inner step on the accumulated gradient g, so AdamW gets (θ0 − θ1)/γ = g/‖g‖. Checked
    against g from autograd; and since the tiny recipe's ‖g‖ exceeds grad_clip = 1, that is the very gradient AdamW
    gets after clipping (g/(‖g‖ + 1e-6)): while ‖g‖ > grad_clip, nexus-k1 is adamw up to rounding; it differs once
    ‖g‖ < grad_clip (AdamW then gets g unscaled, nexus-k1 still g/‖g‖)."""
    recipe = load_recipe(write_recipe(tmp_path, tiny_data_dir))
    k1, adamw = set_up(recipe, "nexus-k1", 0, tiny_data_dir), set_up(recipe, "adamw", 0, tiny_data_dir)
    seen_k1, seen_adamw = capture_outer_steps(k1), capture_outer_steps(adamw)
    state_k1, state_adamw = RunState.start(recipe), RunState.start(recipe)
    for step in range(2):
        batches = k1.schedule.step_batches(step, recipe.optim.accum)
        clipped = adamw_reference_grad(copy.deepcopy(k1.model), batches, recipe.optim.grad_clip)  # asserts ‖g‖ > 1
        reference = copy.deepcopy(k1.model)
        params = list(reference.parameters())
        grads = [torch.autograd.grad(reference_loss(reference, mb), params) for mb in batches]
        mean = [sum(per_mb) / len(batches) for per_mb in zip(*grads, strict=True)]
        unit = [g / global_norm(mean).float() for g in mean]
        train_step(k1, state_k1)
        train_step(adamw, state_adamw)
        got = seen_k1[-1]["grad"]
        assert abs(float(global_norm(got)) - 1.0) < 1e-5
        assert relative_error(got, unit) < 1e-4
        assert relative_error(got, clipped) < 1e-4
        if step == 0:  # from the same start the trainer's AdamW gets that gradient in both runs (later the runs part
            # by Adam's division by sqrt(v), which turns rounding in near-zero coordinates into lr-sized differences)
            assert relative_error(got, seen_adamw[-1]["grad"]) < 1e-4  # (θ0 − θ1)/γ: rounding of the difference


def inner_walk_reference(model: Any, batches: list[MicroBatch], gamma: float, normalize: bool) -> list[torch.Tensor]:
    """K inner steps by hand, θ ← θ − γ g (/‖g‖ when normalized), one per micro-batch; returns θ0 − θK."""
    params = list(model.parameters())
    theta0 = [p.detach().clone() for p in params]
    for mb in batches:
        grads = torch.autograd.grad(reference_loss(model, mb), params)
        scale = gamma / global_norm(list(grads)).float() if normalize else gamma
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p -= scale * g
    return [p0 - p.detach() for p0, p in zip(theta0, params, strict=True)]


@pytest.mark.parametrize("name", ["reptile", "fish", "nexus-mixed"])
def test_inner_loop_variants_step_as_their_algorithm(name: str, tiny_data_dir: Path, tmp_path: Path) -> None:
    """reptile: AdamW gets Δ/γ of un-normalized inner steps; fish: the weights become θ0 − ε Δ of the same walk;
    nexus-mixed: AdamW gets Δ/γ of normalized steps on the regrouped micro-batches (and not on the pure ones)."""
    recipe = load_recipe(write_recipe(tmp_path, tiny_data_dir))
    o = recipe.optim
    c = set_up(recipe, name, 0, tiny_data_dir)
    seen = capture_outer_steps(c)
    state = RunState.start(recipe)
    for step in range(2):
        batches = c.schedule.step_batches(step, o.accum)
        theta0 = [p.detach().clone() for p in c.model.parameters()]
        train_step(c, state)
        gamma = o.inner_lr_ratio * c.opt.param_groups[0]["lr"]  # the lr this step ran with
        walked = batches if name != "nexus-mixed" else mixed_micro_batches(batches)
        delta = inner_walk_reference(copy.deepcopy(_at(c.model, theta0)), walked, gamma, name == "nexus-mixed")
        if name == "fish":
            assert isinstance(c.opt, Fish) and c.opt.meta_lr == o.fish_meta_lr
            want = [p0 - o.fish_meta_lr * d for p0, d in zip(theta0, delta, strict=True)]
            assert relative_error(list(c.model.parameters()), want) < 1e-6
            assert relative_error(seen[-1]["grad"], delta) < 1e-4  # SGD's gradient is Δ itself
            continue
        got = seen[-1]["grad"]
        assert all(torch.equal(a, b) for a, b in zip(seen[-1]["from"], theta0, strict=True))
        assert relative_error(got, [d / gamma for d in delta]) < 1e-4
        if name == "nexus-mixed":  # the check tells the groupings apart
            pure = inner_walk_reference(copy.deepcopy(_at(c.model, theta0)), batches, gamma, True)
            assert relative_error(got, [d / gamma for d in pure]) > 1e-3


def _at(model: Any, weights: list[torch.Tensor]) -> Any:
    """A copy of `model` with `weights`."""
    copied = copy.deepcopy(model)
    with torch.no_grad():
        for p, w in zip(copied.parameters(), weights, strict=True):
            p.copy_(w)
    return copied


def test_variants_record_their_name_and_settings(tiny_data_dir: Path, tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path, tiny_data_dir))
    hparams = {n: set_up(recipe, n, 0, tiny_data_dir).identity(f"t-{n}-s0")["optimizer_hparams"] for n in OPTIMIZERS}
    assert hparams["reptile"]["normalize"] is False and hparams["nexus"]["normalize"] is True
    assert hparams["nexus-k1"]["inner_steps"] == 1 and hparams["nexus"]["inner_steps"] == recipe.optim.accum
    assert hparams["fish"]["outer"] == "SGD" and hparams["fish"]["meta_lr"] == 0.5
    assert hparams["nexus-mixed"]["micro_batches"] == "mixed sources"
    assert "grad_clip" in hparams["adamw"] and all("grad_clip" not in hparams[n] for n in VARIANTS)


def test_variant_only_keys_at_their_default_leave_the_recipe_hash_alone() -> None:
    """fish_meta_lr came after runs were recorded: at its default it is not part of the recipe dict or hash (so every
    recorded run keeps its hash and stays resumable); set otherwise, it is."""
    plain = parse_recipe({"name": "r"}, "r.toml")
    explicit = parse_recipe({"name": "r", "optim": {"fish_meta_lr": 0.5}}, "r.toml")
    other = parse_recipe({"name": "r", "optim": {"fish_meta_lr": 0.2}}, "r.toml")
    assert "optim.fish_meta_lr" not in flat_recipe(plain.to_dict())
    assert plain.hash() == explicit.hash() != other.hash()
    assert flat_recipe(other.to_dict())["optim.fish_meta_lr"] == 0.2
    stored = json.loads(json.dumps(other.to_dict()))  # as run.json and leaderboards record it
    assert parse_recipe(stored, "stored").optim.fish_meta_lr == 0.2
    assert load_recipe(Path(__file__).resolve().parents[2] / "train" / "tiny.toml").hash() == TINY_HASH_RECORDED


TINY_HASH_RECORDED = "fdf5793c363aeb46"  # train/tiny.toml's hash as leaderboards/demo.json recorded it


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_a_mistyped_variant_is_one_line_naming_the_flag(tiny_data_dir: Path, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, tiny_data_dir)
    code, out = cli("train", str(recipe), "--optimizer", "nexus_k1", "--out", str(tmp_path / "runs"), "--quiet")
    assert code == 2 and len(out.strip().splitlines()) == 1, out
    assert "--optimizer must be one of" in out and "nexus-k1" in out and "'nexus_k1'" in out


@pytest.mark.slow
def test_variant_run_through_the_cli_and_resumes_exactly(tiny_data_dir: Path, tmp_path: Path) -> None:
    """`nexus-eval train --optimizer fish`: the run dir and every nexus.json name the variant; resuming from the
    step-3 checkpoint reproduces the uninterrupted run's final weights (Fish's own param groups survive a resume)."""
    recipe = write_recipe(tmp_path, tiny_data_dir)
    code, out = cli("train", str(recipe), "--optimizer", "fish", "--out", str(tmp_path / "runs"), "--quiet")
    assert code == 0, out
    run = tmp_path / "runs" / "t-fish-s0"
    info = json.loads((run / "run.json").read_text())
    assert info["optimizer"] == "fish" and info["optimizer_hparams"]["outer"] == "SGD"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]
    killed = tmp_path / "killed" / run.name
    shutil.copytree(run, killed)
    shutil.rmtree(killed / "ckpt-000006")  # as if killed after step 3's checkpoint
    train(recipe, "fish", seed=0, out=tmp_path / "killed", resume=True, progress=False)
    want, _ = load_model(run / "ckpt-000006")
    got, _ = load_model(killed / "ckpt-000006")
    for p, q in zip(want.parameters(), got.parameters(), strict=True):
        assert torch.equal(p, q)
