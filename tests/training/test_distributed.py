"""Training under torchrun (gloo, 2 processes on the CPU, real torch.distributed): one process, DDP world 2 and FSDP2
world 2 train the same run; a checkpoint written by one world size resumes under another; the rank-0 export of an
FSDP run is a plain Hugging Face checkpoint; execution settings stay out of the recipe's identity; bad input is one
line and exit 2.

What "the same run" means here: the loss at every step agrees within 1e-5 (fp32 on CPU; ranks sum their shares of a
micro-batch in another order than one process does). The weights agree within 1e-5 too, except a few elements
(well under 0.1%) whose gradient is ~0: AdamW's first steps move a weight by ~lr·g/|g|, so there the rounding of
g's sign decides a step of ~lr. Both the loss and the held-out loss of the exported weights show that this is noise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nexus_eval.errors import RecipeError
from nexus_eval.optimizer_registry import run_label
from nexus_eval.training import train
from nexus_eval.training.parallel import resolve_execution
from nexus_eval.training.recipe import ParallelSpec, load_recipe
from tests.conftest import REPO_ROOT, TINY_RECIPE

TIMEOUT_S = 600
LR = 3e-3
STEPS = 5
# TINY_RECIPE for 5 steps, measured at every step, checkpoints at steps 3 (interval) and 5 (end)
DIST_RECIPE = (
    TINY_RECIPE.replace("steps = 6", f"steps = {STEPS}")
    .replace("eval_interval = 2", "eval_interval = 1")
    .replace("target_losses = [100.0, 0.5]", "target_losses = []")
)
LOSS_KEYS = ("train_loss", "val_loss")


def environment() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }


def train_cli(recipe: Path, optimizer: str, out: Path, *extra: str, world: int = 1) -> subprocess.CompletedProcess:
    """`nexus-eval train` in one process, or under torchrun with `world` processes (--standalone: a free port)."""
    launch = [sys.executable, "-m", "nexus_eval.cli"]
    if world > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}"]
        launch += ["-m", "nexus_eval.cli"]
    args = ["train", str(recipe), "--optimizer", optimizer, "--out", str(out), "--quiet", *extra]
    return subprocess.run(
        launch + args, cwd=out.parent, env=environment(), capture_output=True, text=True, timeout=TIMEOUT_S
    )


def trained(recipe: Path, optimizer: str, out: Path, *extra: str, world: int = 1) -> Path:
    done = train_cli(recipe, optimizer, out, *extra, world=world)
    assert done.returncode == 0, done.stderr[-4000:]
    return out / f"t-{run_label(optimizer)}-s0"


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_losses(got: Path, want: Path, atol: float = 1e-5) -> None:
    got_rows, want_rows = rows(got), rows(want)
    assert [r["step"] for r in got_rows] == [r["step"] for r in want_rows] == list(range(1, STEPS + 1))
    for g, w in zip(got_rows, want_rows, strict=True):
        for key in LOSS_KEYS:
            assert abs(g[key] - w[key]) <= atol, (g["step"], key, g[key], w[key])
        for key in ("val_loss_per_source", "ood_loss"):
            assert g[key].keys() == w[key].keys()
            assert all(abs(g[key][k] - w[key][k]) <= atol for k in g[key]), (g["step"], key)


def assert_same_weights(got: Path, want: Path, share: float = 1e-3) -> None:
    """Within 1e-5, but for the few near-zero-gradient elements AdamW's sign-like first steps move by ~lr (at most
    `share` of all)."""
    a, b = load_file(got / "model.safetensors"), load_file(want / "model.safetensors")
    assert a.keys() == b.keys()
    off = sum(int(((a[k] - b[k]).abs() > 1e-5).sum()) for k in a)
    assert off <= share * sum(t.numel() for t in a.values()), off
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 2 * LR * STEPS


@pytest.fixture(scope="module")
def dist_recipe(tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dist_recipe") / "recipe.toml"
    path.write_text(DIST_RECIPE.format(data=tiny_data_dir, lr=LR))
    return path


@pytest.fixture(scope="module")
def dist_runs(dist_recipe: Path, tmp_path_factory: pytest.TempPathFactory):
    """(optimizer, "single" | "ddp" | "fsdp") → the run directory, trained on first use."""
    root = tmp_path_factory.mktemp("dist_runs")
    made: dict[tuple[str, str], Path] = {}

    def run(optimizer: str, mode: str) -> Path:
        if (optimizer, mode) not in made:
            out = root / f"{mode}-{optimizer}"
            extra = () if mode == "single" else ("--strategy", mode)
            made[optimizer, mode] = trained(dist_recipe, optimizer, out, *extra, world=1 if mode == "single" else 2)
        return made[optimizer, mode]

    return run


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adamw", "nexus"])
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_world_2_trains_the_one_process_run(optimizer: str, strategy: str, dist_runs) -> None:
    single, distributed = dist_runs(optimizer, "single"), dist_runs(optimizer, strategy)
    assert_same_losses(distributed, single)
    for ckpt in ("ckpt-000003", "ckpt-000005"):
        assert_same_weights(distributed / ckpt, single / ckpt)
    info = json.loads((distributed / "run.json").read_text())
    assert info["execution"]["strategy"] == strategy and info["execution"]["world_size"] == 2
    assert info["recipe_hash"] == json.loads((single / "run.json").read_text())["recipe_hash"]
    assert (distributed / "ckpt-000005" / "optimizer" / "sharded" / ".metadata").is_file()  # DCP, not state.pt
    assert not [p for p in distributed.iterdir() if p.name.endswith(".tmp")]


def max_difference(got: Path, want: Path) -> float:
    a, b = load_file(got / "model.safetensors"), load_file(want / "model.safetensors")
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_nexus_under_world_2_is_as_close_to_one_process_as_adamw(strategy: str, dist_runs) -> None:
    """Ranks reduce in another order than one process: AdamW's weights differ by that rounding (~4e-6 after 5
    steps). Nexus used to amplify it a hundredfold (2.4e-4 DDP, 4.1e-4 FSDP), its pseudo-gradient being θ0 − θK, a
    difference of nearly equal float32 weights; with the inner steps summed apart it stays within 3× AdamW's."""
    ckpt = "ckpt-000005"
    adamw = max_difference(dist_runs("adamw", strategy) / ckpt, dist_runs("adamw", "single") / ckpt)
    nexus = max_difference(dist_runs("nexus", strategy) / ckpt, dist_runs("nexus", "single") / ckpt)
    assert 0 < nexus <= 3 * adamw, (nexus, adamw)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("optimizer", "strategy"),
    [("fish", "fsdp"), ("nexus-mixed", "ddp"), ("nexus-k1", "fsdp")],
)
def test_ablation_variants_under_world_2_train_the_one_process_run(optimizer: str, strategy: str, dist_runs) -> None:
    """Fish's own param groups and SGD outer step, the regrouped micro-batches (each rank takes its slice of every
    mixed one) and K = 1's single synchronized accumulation: each world-2 run is the one-process run, to AdamW's
    tolerance (their pseudo-gradient is the inner steps' sum, not a difference of nearly equal weights). A missing or
    doubled reduction would move every weight by ~lr."""
    single, distributed = dist_runs(optimizer, "single"), dist_runs(optimizer, strategy)
    assert_same_losses(distributed, single)
    for ckpt in ("ckpt-000003", "ckpt-000005"):
        assert_same_weights(distributed / ckpt, single / ckpt)
    assert json.loads((distributed / "run.json").read_text())["optimizer"] == optimizer


@pytest.mark.slow
def test_the_linear_inner_loop_under_ddp_trains_the_one_process_run(dist_recipe: Path, tmp_path: Path) -> None:
    """optim.inner_loop linear: each inner step after the first takes g and H·w by double backward on the unwrapped
    module and averages both over ranks itself (DDP's hooks sync a plain backward only)."""
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(dist_recipe.read_text().replace("[optim]", '[optim]\ninner_loop = "linear"'))
    single = trained(recipe, "nexus", tmp_path / "single")
    ddp = trained(recipe, "nexus", tmp_path / "ddp", "--strategy", "ddp", world=2)
    assert_same_losses(ddp, single)
    assert_same_weights(ddp / "ckpt-000005", single / "ckpt-000005")
    info = json.loads((ddp / "run.json").read_text())
    assert info["optimizer_hparams"]["inner_loop"] == "linear" and info["recipe"]["optim"]["inner_loop"] == "linear"
    # FSDP2 reduces gradients in its hooks on a plain backward: refused, as one rank of such a job sees it
    env = {**environment(), "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}
    args = ["train", str(recipe), "--optimizer", "nexus", "--out", str(tmp_path / "fsdp"), "--strategy", "fsdp"]
    done = subprocess.run([sys.executable, "-m", "nexus_eval.cli", *args], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert 'optim.inner_loop = "linear" needs whole parameters' in done.stderr and not (tmp_path / "fsdp").exists()


@pytest.mark.slow
@pytest.mark.parametrize(("optimizer", "strategy"), [("nexus", "ddp"), ("adamw", "fsdp")])
def test_world_2_with_physical_batches_trains_the_one_process_run(
    optimizer: str, strategy: str, dist_runs, dist_recipe: Path, tmp_path: Path
) -> None:
    """device_batch 1: each rank's 2 rows of a micro-batch in 2 backward passes, gradients synced at the last one."""
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(dist_recipe.read_text() + "\n[parallel]\ndevice_batch = 1\n")
    run = trained(recipe, optimizer, tmp_path / "runs", "--strategy", strategy, world=2)
    assert_same_losses(run, dist_runs(optimizer, "single"))
    assert_same_weights(run / "ckpt-000005", dist_runs(optimizer, "single") / "ckpt-000005")
    assert json.loads((run / "run.json").read_text())["execution"]["device_batch"] == 1


def loss_gaps(got: Path, want: Path) -> float:
    """The largest difference of any held-out or training loss between two runs, over all steps."""
    gaps = []
    for g, w in zip(rows(got), rows(want), strict=True):
        gaps += [abs(g[key] - w[key]) for key in LOSS_KEYS]
        gaps += [abs(g[key][k] - w[key][k]) for key in ("val_loss_per_source", "ood_loss") for k in g[key]]
    return max(gaps)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["muon", "nexus:muon"])
def test_muon_under_ddp_world_2_is_one_process_up_to_its_bf16_rounding(
    optimizer: str, dist_runs, dist_recipe: Path, tmp_path: Path
) -> None:
    """torch.optim.Muon orthogonalizes in bf16: the float rounding of another summation order (ranks reduce their
    halves of a micro-batch) becomes bf16-sized differences of the update (~1e-4 of loss after 5 steps, ~1e-3 of a
    weight), where AdamW stays at 1e-7. One process summing in another order (device_batch 2: two backward passes
    per micro-batch) shows the same size, so the measure of "the same run" for Muon is that: world 2 is no farther
    from world 1 than a reordered sum is. A missing or doubled reduction is a whole step apart."""
    reordered = tmp_path / "recipe.toml"
    reordered.write_text(dist_recipe.read_text() + "\n[parallel]\ndevice_batch = 2\n")
    single = dist_runs(optimizer, "single")
    resummed = trained(reordered, optimizer, tmp_path / "runs")
    distributed = dist_runs(optimizer, "ddp")
    rounding_loss, rounding_weights = (
        loss_gaps(resummed, single),
        max_difference(resummed / "ckpt-000005", single / "ckpt-000005"),
    )
    assert 0 < rounding_loss < 1e-2 and 0 < rounding_weights
    assert loss_gaps(distributed, single) <= 3 * rounding_loss
    assert max_difference(distributed / "ckpt-000005", single / "ckpt-000005") <= 3 * rounding_weights
    assert json.loads((distributed / "run.json").read_text())["optimizer"] == optimizer


def interrupted_copy(run: Path, out: Path) -> Path:
    """The run as a kill after step 3's checkpoint leaves it: the later checkpoint gone (metrics.jsonl rows past
    step 3 stay: resume cuts them back)."""
    copy = Path(shutil.copytree(run, out / run.name))
    shutil.rmtree(copy / "ckpt-000005")
    return copy


@pytest.mark.slow
@pytest.mark.parametrize(
    ("optimizer", "written_by", "resumed_by"),
    [("nexus", "fsdp", "single"), ("nexus", "single", "fsdp"), ("adamw", "single", "ddp")],
)
def test_resume_under_another_world_size_continues_the_run(
    optimizer: str, written_by: str, resumed_by: str, dist_runs, dist_recipe: Path, tmp_path: Path
) -> None:
    uninterrupted = dist_runs(optimizer, written_by)
    out = tmp_path / "runs"
    interrupted_copy(uninterrupted, out)
    extra = () if resumed_by == "single" else ("--strategy", resumed_by)
    resumed = trained(dist_recipe, optimizer, out, "--resume", *extra, world=1 if resumed_by == "single" else 2)
    assert_same_losses(resumed, uninterrupted)
    assert_same_losses(resumed, dist_runs(optimizer, "single"))
    assert_same_weights(resumed / "ckpt-000005", uninterrupted / "ckpt-000005")


@pytest.mark.slow
def test_the_rank_0_export_of_an_fsdp_run_is_a_plain_hf_checkpoint(dist_runs, tiny_data_dir: Path) -> None:
    from nexus_eval.checkpoints import load_model
    from nexus_eval.training.heldout import HeldOut

    single, fsdp = dist_runs("nexus", "single") / "ckpt-000005", dist_runs("nexus", "fsdp") / "ckpt-000005"
    assert json.loads((fsdp / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    heldout = HeldOut(tiny_data_dir, {"text": 1.0, "math": 1.0, "code": 1.0}, context=32, windows=4)
    losses = [heldout.measure(load_model(ckpt)[0]) for ckpt in (single, fsdp)]
    assert abs(losses[0]["val_loss"] - losses[1]["val_loss"]) <= 1e-5
    assert json.loads((fsdp / "nexus.json").read_text())["heldout_loss"] == pytest.approx(
        losses[1]["val_loss"], abs=1e-5
    )


# ---- bad input -----------------------------------------------------------------------------------------------------


def test_ddp_or_fsdp_without_torchrun_is_one_line_and_writes_nothing(dist_recipe: Path, tmp_path: Path) -> None:
    recipe = load_recipe(dist_recipe)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("WORLD_SIZE", raising=False)
        with pytest.raises(RecipeError, match=r"--strategy ddp .*needs several processes.*torchrun"):
            resolve_execution(recipe.with_execution(strategy="ddp").parallel, 4, str(dist_recipe))
    out = tmp_path / "runs"
    done = train_cli(dist_recipe, "nexus", out, "--strategy", "fsdp")
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.count("\n") == 1 and "--strategy fsdp" in done.stderr and "torchrun" in done.stderr
    assert not out.exists()


def test_a_world_size_that_does_not_divide_the_micro_batch_names_both(dist_recipe: Path, tmp_path: Path) -> None:
    recipe = load_recipe(dist_recipe)  # micro_batch 4
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "3"}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        with pytest.raises(RecipeError, match=r"micro_batch 4 is not divisible by the world size 3"):
            resolve_execution(recipe.parallel, recipe.optim.micro_batch, str(dist_recipe))
    # and from the command line, as one rank of such a job sees it: one line, exit 2, nothing written
    out = tmp_path / "runs"
    done = subprocess.run(
        [sys.executable, "-m", "nexus_eval.cli", "train", str(dist_recipe), "--optimizer", "adamw", "--out", str(out)],
        env={**environment(), **env},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "world size 3" in done.stderr, done.stderr
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")
def test_device_cuda_without_a_gpu_is_one_line(dist_recipe: Path, tmp_path: Path) -> None:
    done = train_cli(dist_recipe, "adamw", tmp_path / "runs", "--device", "cuda")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "--device cuda" in done.stderr, done.stderr
    assert not (tmp_path / "runs").exists()


def test_unknown_strategy_or_device_is_refused(dist_recipe: Path, tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="--strategy must be one of"):
        train(dist_recipe, "adamw", out=tmp_path / "runs", strategy="zero3", progress=False)
    assert not (tmp_path / "runs").exists()
    bad = tmp_path / "bad.toml"
    bad.write_text(dist_recipe.read_text() + '\n[parallel]\ndevice = "tpu"\n')
    with pytest.raises(RecipeError, match="parallel.device must be one of"):
        load_recipe(bad)
    bad.write_text(dist_recipe.read_text() + '\n[parallel]\ncompile = "yes"\n')
    with pytest.raises(RecipeError, match=r"\[parallel\].compile"):
        load_recipe(bad)


# ---- execution is not identity -------------------------------------------------------------------------------------


def test_the_parallel_table_is_not_part_of_the_recipe_identity(dist_recipe: Path, tmp_path: Path) -> None:
    plain = load_recipe(dist_recipe)
    with_table = tmp_path / "parallel.toml"
    with_table.write_text(
        dist_recipe.read_text()
        + '\n[parallel]\nstrategy = "fsdp"\ndevice = "cpu"\ncompile = false\ndevice_batch = 2\n'
        + "activation_checkpointing = true\n"
    )
    executed = load_recipe(with_table)
    assert executed.parallel == ParallelSpec("fsdp", "cpu", False, 2, True)
    assert executed.hash() == plain.hash() and executed.to_dict() == plain.to_dict()
    assert "parallel" not in plain.to_dict()


# A recipe hash the harness computed before the [parallel] table existed (train/tiny.toml at 967c21f): it names runs,
# leaderboards and resume checks, so it must not move.
TINY_TOML_HASH = "fdf5793c363aeb46"


def test_existing_recipe_hashes_are_unchanged() -> None:
    assert load_recipe(REPO_ROOT / "train" / "tiny.toml").hash() == TINY_TOML_HASH


@pytest.mark.slow
def test_a_users_optimizer_under_fsdp_world_2_trains_the_one_process_run(dist_recipe: Path, tmp_path: Path) -> None:
    """A plug-in optimizer (README's Lion) works on FSDP2's shards as any torch optimizer does: world 2 trains the
    one-process run, and its state goes through torch.distributed.checkpoint."""
    from tests.training.test_optimizers import readme_plugin

    (tmp_path / "my_optimizers.py").write_text(readme_plugin())
    single = trained(dist_recipe, "my_optimizers:lion", tmp_path / "single")
    sharded = trained(dist_recipe, "my_optimizers:lion", tmp_path / "fsdp", "--strategy", "fsdp", world=2)
    assert_same_losses(sharded, single)
    for ckpt in ("ckpt-000003", "ckpt-000005"):
        assert_same_weights(sharded / ckpt, single / ckpt)
    assert (sharded / "ckpt-000005" / "optimizer" / "sharded" / ".metadata").is_file()
