"""Nexus' numerics where the claim lives (optim/nexus.py "Numerics", training/fidelity.py): the part of the update
that carries the method, S = P − N = O(γ), computed against the float64 exact algorithm on real micro-batches of a
real (tiny) data build, in regimes where the old arithmetic loses it:

- float32 with an inner step of 1e-5 (9e-9 per weight, the 1b recipe's per-element step is 1.8e-8): recovering Δ as
  θ0 − θ_K from float32 weights gives cos(S, S_fp64) ≈ 0.02; the accumulated u gives > 0.99;
- bf16 autocast with γ = 1e-3: the forwards see bf16(θ0 − γu) = bf16(θ0), so the exact loop cannot compute S
  (cos ≈ 0.2), the linear loop's Hessian-vector products can (> 0.99).

Then `nexus-eval optim check` on the tiny recipe, its bad input, and the warnings `train` prints at start.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from nexus_eval.cli import app
from nexus_eval.data import load_manifest, load_tokenizer, open_tokens
from nexus_eval.optim import Nexus
from nexus_eval.training.fidelity import (
    NEGLIGIBLE_GAMMA,
    TARGET_SHARE,
    measure,
    pseudo_gradient,
    second_order_part,
    start_of_run_check,
    warm_up,
)
from nexus_eval.training.model import build_model, causal_lm_loss, llama_config
from nexus_eval.training.parallel import Execution
from nexus_eval.training.recipe import load_recipe
from nexus_eval.training.schedule import MicroBatch, MicroBatchSchedule
from tests.conftest import write_recipe

CPU = torch.device("cpu")
FLOOR = 0.99  # the fidelity target


def execution(bf16: bool) -> Execution:
    return Execution(CPU, "none", 0, 1, 0, False, 0, False, bf16=bf16)


@pytest.fixture(scope="module")
def warmed(tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, list[MicroBatch]]:
    """The tiny preset after 5 AdamW steps on the build's stream, and one step's 3 micro-batches of 4×64 tokens."""
    recipe = load_recipe(write_recipe(tmp_path_factory.mktemp("fidelity"), tiny_data_dir))
    manifest, tokenizer = load_manifest(tiny_data_dir), load_tokenizer(tiny_data_dir)
    streams = {s: open_tokens(tiny_data_dir, "train", s) for s in ("text", "math", "code")}
    schedule = MicroBatchSchedule(streams, dict.fromkeys(streams, 1.0), 4, 64, seed=0)
    config = llama_config("tiny", int(manifest["vocab_size"]), 64, tokenizer.bos_token_id, tokenizer.eos_token_id)
    model = build_model(config, seed=0)
    warm_up(model, schedule, recipe, 5, CPU)
    return model, schedule.step_batches(10, 3)


def legacy_pseudo_gradient(model: torch.nn.Module, batches: list[MicroBatch], gamma: float) -> torch.Tensor:
    """The arithmetic Nexus had before: the inner steps applied to the float32 weights one after another, and
    P = (θ0 − θ_K)/γ recovered from them."""
    params = list(model.parameters())
    start = [p.detach().clone() for p in params]
    for mb in batches:
        grads = torch.autograd.grad(causal_lm_loss(model, mb.inputs, mb.labels), params)
        norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p -= gamma * g / norm
    with torch.no_grad():
        out = torch.cat([((s - p) / gamma).double().flatten() for s, p in zip(start, params, strict=True)])
        for p, s in zip(params, start, strict=True):
            p.copy_(s)
    return out


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def test_float32_keeps_an_inner_step_below_the_weights_spacing(warmed) -> None:
    model, batches = warmed
    gamma = 1e-5
    share, fidelity, _ = measure(model, batches, gamma, "fp32", "exact", CPU)
    assert 0 < share < 1e-4 and fidelity >= FLOOR, (share, fidelity)
    # The regime is one where the old arithmetic fails: S from θ0 − θ_K is mostly rounding.
    s64, _ = second_order_part(model.double(), batches, gamma, "exact", execution(bf16=False))
    model.float()
    first = pseudo_gradient(model, batches, NEGLIGIBLE_GAMMA, "exact", execution(bf16=False))
    assert cos(legacy_pseudo_gradient(model, batches, gamma) - first, s64) < 0.5


def test_bf16_autocast_needs_the_linear_inner_loop(warmed) -> None:
    model, batches = warmed
    before = [p.detach().clone() for p in model.parameters()]
    _, linear, _ = measure(model, batches, 1e-3, "bf16", "linear", CPU)
    _, exact, _ = measure(model, batches, 1e-3, "bf16", "exact", CPU)
    assert linear >= FLOOR and exact < 0.9, (linear, exact)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))  # measuring moved nothing


runner = CliRunner()


def cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


SMALL = ("--rows", "2", "--context", "32", "--warmup-steps", "2")


def test_optim_check_on_the_tiny_recipe(tiny_data_dir: Path, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, tiny_data_dir)
    code, out = cli("optim", "check", str(recipe), *SMALL, "--json")
    assert code == 0, out
    report = json.loads(out)
    assert 0 < report["second_order_share"] < 1 and report["fidelity"] >= FLOOR
    assert report["inner_loop"] == "exact" and report["dtype"] == "fp32" and report["micro_batches"] == 3
    assert report["gamma"] == pytest.approx(20.0 * 3e-3)  # TINY_RECIPE's inner_lr_ratio × lr
    # The suggestion is the ratio whose share is the target, to first order in γ
    share = report["second_order_share"]
    assert report["suggested_inner_lr_ratio"] == pytest.approx(20.0 * TARGET_SHARE / share)
    code, out = cli("optim", "check", str(recipe), *SMALL, "--dtype", "bf16")
    assert code == 0, out
    lines = out.strip().splitlines()
    assert "bf16, linear inner loop" in lines[0]
    assert lines[1].startswith("second-order share") and lines[2].startswith("fidelity cos(S, S_fp64)")


def test_optim_check_bad_input_is_one_line(tiny_data_dir: Path, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, tiny_data_dir)
    no_build = tmp_path / "no_build.toml"
    no_build.write_text(recipe.read_text().replace(str(tiny_data_dir), str(tmp_path / "nowhere")))
    cases = [
        ([str(recipe), "--dtype", "fp16"], "--dtype must be one of fp32, bf16"),
        ([str(recipe), "--device", "cuda"], "--device cuda"),
        ([str(recipe), "--device", "tpu"], "tpu"),
        ([str(recipe), "--inner-loop", "fast"], "--inner-loop"),
        ([str(no_build)], "no data build"),
        ([str(tmp_path / "nope.toml")], "recipe not found"),
    ]
    if torch.cuda.is_available():
        cases = [c for c in cases if c[0][-1] != "cuda"]
    for args, message in cases:
        code, out = cli("optim", "check", *args, *SMALL)
        assert code == 2 and message in out and len(out.strip().splitlines()) == 1, (args, out)


def test_train_warns_before_a_nexus_run_that_is_not_nexus(warmed, tiny_data_dir: Path, tmp_path: Path) -> None:
    model, batches = warmed
    recipe = load_recipe(write_recipe(tmp_path, tiny_data_dir))

    def lines(ratio: float, inner_loop: str, bf16: bool) -> list[str]:
        opt = Nexus(torch.optim.AdamW(model.parameters(), lr=3e-3), inner_lr_ratio=ratio, inner_loop=inner_loop)
        return start_of_run_check(model, recipe, batches, opt, execution(bf16))

    fine = lines(20.0, "exact", bf16=False)
    assert len(fine) == 1 and "second-order share" in fine[0] and "nexus-eval optim check" in fine[0]
    tiny_step = lines(1e-3, "exact", bf16=False)  # γ = 3e-6: Nexus is normalized gradient accumulation
    assert any(w.startswith("warning:") and "optim.inner_lr_ratio" in w for w in tiny_step), tiny_step
    unfaithful = lines(0.3, "exact", bf16=True)  # bf16 forwards cannot see the inner steps
    assert any(w.startswith("warning:") and "optim.inner_loop linear" in w for w in unfaithful), unfaithful
    assert not any("fidelity" in w for w in lines(0.3, "linear", bf16=True) if w.startswith("warning:"))
