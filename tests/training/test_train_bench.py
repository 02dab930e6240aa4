"""bench/train_bench.py: one child process per variant, in alternating rounds, each reporting its own peak RSS."""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from nexus_eval.optimizer_registry import REGISTRY, OptimizerRegistry
from tests.conftest import REPO_ROOT, write_recipe

BENCH = REPO_ROOT / "bench" / "train_bench.py"


def load_bench():  # noqa: ANN201 - the module
    spec = importlib.util.spec_from_file_location("train_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_bench"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_rounds_alternate_and_gather_keeps_every_step_and_the_largest_peak() -> None:
    bench = load_bench()
    a, b, c = (bench.Variant(n, n) for n in ("bare", "adamw", "nexus"))
    assert [v.name for v in bench.rounds_of([a, b, c], 3)] == ["bare", "adamw", "nexus", "nexus", "adamw", "bare",
                                                               "bare", "adamw", "nexus"]  # fmt: skip
    peaks = iter([100.0, 200.0, 300.0, 350.0, 250.0, 150.0])

    def run(v):  # noqa: ANN001, ANN202 - a child's result, made up
        return bench.Result(v.name, [1.0], next(peaks), 1.0, 10, 100, "cpu", None)

    results = bench.gather([a, b, c], run, 2)
    assert {v: r.peak_mib for v, r in results.items()} == {"bare": 150.0, "adamw": 250.0, "nexus": 350.0}
    assert all(r.step_s == [1.0, 1.0] for r in results.values())
    command = b.command(Path("r.toml"), Path("d"), 3, "cpu")
    assert command[0] == sys.executable and "--child" in command and command[-2:] == ["--device", "cpu"]


def test_a_cpu_runs_every_variant_and_the_table_has_no_mfu_without_a_gpu(capsys: pytest.CaptureFixture) -> None:
    bench = load_bench()
    assert bench.default_variants("cpu") == [v.name for v in bench.VARIANTS]
    results = {n: bench.Result(n, [2.0 if n == "nexus" else 1.0], 100.0, 1.0, 10, 100, "cpu", None)
               for n in ("adamw", "nexus")}  # fmt: skip
    bench.print_table(results, Path("r.toml"), 1, 1)
    table = capsys.readouterr().out
    assert "MFU" not in table and "peak RSS MiB" in table and "nexus/adamw  step time 2.000" in table
    gpu = {n: bench.Result(n, [1.0], 100.0, 1.0, 10, 1e11, "NVIDIA H100 80GB HBM3", 1e12) for n in ("adamw", "nexus")}
    bench.print_table(gpu, Path("r.toml"), 1, 1)
    table = capsys.readouterr().out
    assert "peak CUDA MiB" in table and " 100.0% " in table  # 10 tokens/s x 1e11 FLOP/token = the 1e12 peak


def test_the_default_adds_the_study_optimizers_and_naming_optimizers_runs_them_beside_adamw() -> None:
    bench = load_bench()
    names = [v.name for v in bench.chosen_variants(None, None, "cpu")]
    assert names == [v.name for v in bench.VARIANTS] + ["muon", "nexus:muon"]  # adamw, nexus: variants already
    assert [v.name for v in bench.chosen_variants(None, "muon", "cpu")] == ["adamw", "muon"]  # the baseline added
    assert [v.name for v in bench.chosen_variants("bare", None, "cpu")] == ["bare"]
    both = bench.chosen_variants("nexus-linear", "nexus:muon,adamw", "cpu")
    assert [(v.name, v.optimizer, v.strategy) for v in both] == [
        ("nexus-linear", "nexus", "none"),
        ("adamw", "adamw", "none"),
        ("nexus:muon", "nexus:muon", "none"),
    ]
    bad = [(None, "muon,lion", "--optimizers"), (None, "nexus:fish", "--optimizers"), (None, "adamw,", "--optimizers"),
           ("bare,ddp", None, "--variants")]  # fmt: skip
    for variants, optimizers, option in bad:
        with pytest.raises(ValueError, match=f"^{option}: "):
            bench.chosen_variants(variants, optimizers, "cpu")


def test_all_is_every_registered_optimizer_and_nexus_around_each_without_inner_steps() -> None:
    bench = load_bench()
    assert bench.all_optimizers() == [*REGISTRY.names(), "nexus:muon"]
    registry = OptimizerRegistry(tuple(REGISTRY))
    registry.register(dataclasses.replace(REGISTRY["muon"], name="lion", display_name="Lion"))
    assert bench.all_optimizers(registry) == [*REGISTRY.names(), "lion", "nexus:muon", "nexus:lion"]
    assert [v.name for v in bench.chosen_variants(None, "all", "cpu")] == bench.all_optimizers()


def test_every_optimizer_gets_its_ratios_to_adamw_and_only_nexus_a_target(capsys: pytest.CaptureFixture) -> None:
    bench = load_bench()
    seconds = {"adamw": 1.0, "nexus": 1.25, "muon": 1.5, "nexus:muon": 2.0, "nexus-linear": 3.0}
    results = {n: bench.Result(n, [s], 100.0 * s, 10.0 * s, 10, 100, "cpu", None) for n, s in seconds.items()}
    bench.print_table(results, Path("r.toml"), 1, 1)
    table = capsys.readouterr().out
    assert "nexus/adamw  step time 1.250 (target <= 1.05)   peak memory 1.250 (target <= 1.3)" in table
    assert "muon/adamw  step time 1.500   peak memory 1.500   params+opt state 1.500\n" in table
    assert "nexus:muon/adamw  step time 2.000   peak memory 2.000   params+opt state 2.000 (θ0 and u)" in table
    assert "nexus-linear/adamw  step time 3.000 (its double backward)" in table
    del results["adamw"]
    bench.print_table(results, Path("r.toml"), 1, 1)
    assert "/adamw" not in capsys.readouterr().out  # no ratio without AdamW measured in the same run


def test_a_bad_option_value_is_one_line_naming_the_option_and_exit_2() -> None:
    for args, option in [(["--optimizers", "nope"], "--optimizers"), (["--rounds", "0"], "--rounds")]:
        done = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True)
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.count("\n") == 1 and f"error: {option}" in done.stderr


@pytest.mark.slow
def test_optimizers_run_side_by_side_with_adamw(tiny_data_dir: Path, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, tiny_data_dir)
    command = [sys.executable, str(BENCH), "--recipe", str(recipe), "--data", str(tiny_data_dir), "--device", "cpu",
               "--optimizers", "muon", "--steps", "1", "--rounds", "1"]  # fmt: skip
    table = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    rows = [line.split()[0] for line in table.splitlines()[2:]]
    assert rows[:2] == ["adamw", "muon"] and "median of 1 x 1 steps" in table
    assert "muon/adamw  step time " in table and "nexus/adamw" not in table


@pytest.mark.slow
def test_a_child_reports_its_own_peak_and_step_times(tiny_data_dir: Path, tmp_path: Path) -> None:
    bench = load_bench()
    recipe = write_recipe(tmp_path, tiny_data_dir)
    held = bytearray(1 << 30)  # the parent's memory must not show in the child's peak
    held[:: 1 << 12] = b"\1" * len(held[:: 1 << 12])
    result = bench.run_variant(bench.Variant("nexus", "nexus"), recipe, tiny_data_dir, 2, "cpu")
    assert len(result.step_s) == 2 and all(t > 0 for t in result.step_s)
    assert 100 < result.peak_mib < 1024 and result.device == "cpu" and result.peak_flops is None
    assert result.tokens_per_step == 3 * 4 * 32 and result.flops_per_token > 0
    del held
