"""`nexus-eval train --dry-run` (training.dry_run), per-rank memory (training.memory.rank_memory), the token
budget against the built data (training.budget: refused beyond one epoch unless --allow-repeat) and the cost fields
of metrics.jsonl (training.metrics_log.CostMeter)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from typer.testing import CliRunner

from nexus_eval.cli import app
from nexus_eval.errors import RecipeError
from nexus_eval.training import load_recipe, set_up, train
from nexus_eval.training.budget import check_epochs, source_epochs
from nexus_eval.training.dry_run import describe, dry_run
from nexus_eval.training.flops import model_flops_per_token
from nexus_eval.training.memory import rank_memory
from nexus_eval.training.model import count_params
from tests.conftest import REPO_ROOT, write_recipe

runner = CliRunner()


def cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


class LargestTensor(TorchDispatchMode):
    """Every aten op run while active: the most elements of any tensor it returned on a real (non-meta) device."""

    def __init__(self) -> None:
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor) and leaf.device.type != "meta":
                self.numel = max(self.numel, leaf.numel())
        return out


def test_dry_run_of_the_1b_recipe_allocates_no_weights_and_writes_nothing(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.chdir(tmp_path)
    recipe = REPO_ROOT / "train" / "1b.toml"
    with LargestTensor() as largest:
        plan = dry_run(load_recipe(recipe), "nexus", tmp_path / "not-built", nproc=8, strategy="fsdp")
    # the model is built on the meta device: no real tensor comes near one weight matrix (2048 × 2048 = 4.2M)
    assert largest.numel < 1_000_000, f"a {largest.numel:,}-element tensor: the model must not be allocated"
    assert 1.0e9 < plan.params.total < 1.3e9 and plan.memory.strategy == "fsdp"

    code, out = cli("train", str(recipe), "--optimizer", "nexus", "--dry-run", "--nproc", "8", "--strategy",
                    "fsdp", "--data", str(tmp_path / "not-built"), "--peak-tflops", "h100-sxm")  # fmt: skip
    assert code == 0, out
    assert f"parameters      {plan.params.total:,} total" in out
    assert "strategy fsdp" in out and "Nexus θ0" in out and "FLOPs per token" in out and "8 × h100-sxm" in out
    assert "not built yet" in out  # the data dir named does not exist: a warning, not an error
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_dry_run_counts_the_parameters_of_the_model_set_up_trains(tiny_data_dir: Path, tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path, tiny_data_dir))
    plan = dry_run(recipe, "nexus", tiny_data_dir)
    model = set_up(recipe, "nexus", 0, tiny_data_dir).model
    assert plan.params.total == count_params(model) == sum(p.numel() for p in model.parameters())
    assert plan.params.embedding == model.get_input_embeddings().weight.numel()
    assert plan.flops_per_token == model_flops_per_token(model, recipe.model.context)
    assert plan.tokens_per_step == 3 * 4 * 32 and plan.total_tokens == 6 * 3 * 4 * 32
    assert [e.source for e in plan.epochs] == ["code", "math", "text"] and all(e.epochs < 1 for e in plan.epochs)
    report = "\n".join(describe(plan))
    assert f"{plan.params.total:,} total" in report and "epochs          text:" in report


def test_per_rank_memory_shards_under_fsdp_and_replicates_under_ddp() -> None:
    recipe = load_recipe(REPO_ROOT / "train" / "130m.toml")
    params = 100_000_000
    one = rank_memory(recipe, "nexus", 4096, params)
    ddp = rank_memory(recipe, "nexus", 4096, params, "ddp", 4)
    fsdp = rank_memory(recipe, "nexus", 4096, params, "fsdp", 4)
    adamw = rank_memory(recipe, "adamw", 4096, params)
    assert one.params == one.grads == 4 * params and one.optimizer_state == one.theta0 == 8 * params  # θ0 and u
    assert adamw.theta0 == 0 and adamw.state == one.state - 8 * params
    assert ddp.state == one.state and ddp.comm_buffers == 4 * params  # every rank holds everything, plus buckets
    assert fsdp.state == one.state // 4 and fsdp.comm_buffers == 0
    assert fsdp.compute_copy < one.compute_copy  # a couple of layers gathered, not the whole model
    assert ddp.activations == fsdp.activations == one.activations // 4  # each rank: a quarter of each micro-batch


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--nproc", "0"], "--nproc"),
        (["--nproc", "3"], "--nproc"),  # micro_batch 4 is not divisible by 3
        (["--peak-tflops", "h900"], "--peak-tflops"),
        (["--nproc", "1", "--strategy", "fsdp"], "--strategy"),
        (["--nproc", "2", "--strategy", "zero"], "--strategy"),
    ],
)
def test_bad_plans_are_one_line_naming_the_flag(
    tiny_data_dir: Path, tmp_path: Path, args: list[str], flag: str
) -> None:
    recipe = write_recipe(tmp_path, tiny_data_dir)
    code, out = cli("train", str(recipe), "--optimizer", "adamw", "--dry-run", *args)
    assert code == 2 and out.startswith(f"error: {flag}") and len(out.strip().splitlines()) == 1, out


def test_plan_flags_without_dry_run_are_refused(tiny_data_dir: Path, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, tiny_data_dir)
    code, out = cli("train", str(recipe), "--optimizer", "adamw", "--out", str(tmp_path / "runs"), "--nproc", "2")
    assert code == 2 and out.startswith("error: --nproc: plans a --dry-run only"), out
    assert not (tmp_path / "runs").exists()


def over_budget_recipe(tmp_path: Path, data_dir: Path) -> Path:
    """The tiny test recipe asking 3 × 64 × 256 tokens a step for 40 steps: more than the tiny data holds."""
    path = write_recipe(tmp_path, data_dir)
    text = path.read_text().replace("context = 32", "context = 256").replace("micro_batch = 4", "micro_batch = 64")
    path.write_text(text.replace("steps = 6", "steps = 40"))
    return path


def test_a_budget_beyond_one_epoch_is_refused_unless_allowed(tiny_data_dir: Path, tmp_path: Path) -> None:
    path = over_budget_recipe(tmp_path, tiny_data_dir)
    manifest = json.loads((tiny_data_dir / "manifest.json").read_text())
    worst = max(source_epochs(load_recipe(path), manifest), key=lambda e: e.epochs)
    assert worst.epochs > 1
    out_dir = tmp_path / "runs"
    code, out = cli("train", str(path), "--optimizer", "nexus", "--out", str(out_dir), "--quiet")
    assert code == 2 and len(out.strip().splitlines()) == 1, out
    assert str(path) in out and f"{worst.epochs:.1f} epochs of source {worst.source!r}" in out
    assert "manifest.json" in out and "--allow-repeat" in out
    assert not out_dir.exists()  # refused before anything is written
    check_epochs(load_recipe(path), manifest, tiny_data_dir, allow_repeat=True)  # allowed: no error
    with pytest.raises(RecipeError):
        check_epochs(load_recipe(path), manifest, tiny_data_dir)
    # --steps lowers the budget that is checked: 1 step fits
    code, out = cli("train", str(path), "--optimizer", "nexus", "--dry-run", "--steps", "1")
    assert code == 0 and "warning: more than" not in out


def test_the_shipped_cpu_recipes_fit_the_built_data_and_130m_says_what_it_needs() -> None:
    """On the default data build (`make data`): the tiny and study budgets stay within one epoch, 130m's does not."""
    if not (REPO_ROOT / "data" / "manifest.json").is_file():
        pytest.skip("the default data build (data/) is not built in this checkout")
    manifest = json.loads((REPO_ROOT / "data" / "manifest.json").read_text())
    for name in ("tiny", "study"):
        path = REPO_ROOT / "train" / f"{name}.toml"
        check_epochs(load_recipe(path), manifest, REPO_ROOT / "data")
    big = load_recipe(REPO_ROOT / "train" / "130m.toml")
    with pytest.raises(RecipeError, match="epochs of source"):
        check_epochs(big, manifest, REPO_ROOT / "data")
    tokens_per_source = big.tokens_per_step() * big.train.steps // 3
    assert f"{round(tokens_per_source / 1e6)}M from each" in (REPO_ROOT / "train" / "130m.toml").read_text()


def test_metrics_rows_carry_peak_memory_and_mfu_when_a_peak_is_given(
    tiny_runs: dict[str, Path], tiny_data_dir: Path, tmp_path: Path
) -> None:
    for run_dir in tiny_runs.values():  # CPU, no peak given: peak RSS but no MFU
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert rows and all(r["peak_memory_mib"] > 100 and "mfu" not in r for r in rows)
    recipe = write_recipe(tmp_path, tiny_data_dir)
    run_dir = train(recipe, "adamw", out=tmp_path / "runs", steps=2, progress=False, peak_flops=1e9)
    row = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    model = set_up(load_recipe(recipe), "adamw", 0, tiny_data_dir).model
    want = row["tokens_per_s"] * model_flops_per_token(model, 32) / 1e9
    assert row["mfu"] == pytest.approx(want, rel=1e-3, abs=1e-4)


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="VmHWM is Linux's")
def test_a_child_process_reports_its_own_peak_rss_not_its_parents() -> None:
    """getrusage's ru_maxrss in a child counts the parent's RSS at fork: the old benchmark's children all reported
    the parent's 851 MiB. peak_rss_bytes, run in a child of a process holding 1 GiB, reports the child's own."""
    import inspect
    import subprocess
    import sys

    from nexus_eval.training import metrics_log

    held = bytearray(1 << 30)
    held[:: 1 << 12] = b"\1" * len(held[:: 1 << 12])  # touch every page: resident
    code = "\n".join(
        [
            "import resource, sys",
            "from pathlib import Path",
            "PROC_STATUS = Path('/proc/self/status')",
            inspect.getsource(metrics_log.peak_rss_bytes),
            "print(peak_rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)",
        ]
    )
    own, rusage = map(int, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split())
    assert rusage > len(held)  # the inherited figure this replaces
    assert own < 200 << 20  # a bare interpreter
    del held
