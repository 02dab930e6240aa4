"""bench/train_bench.py: one child process per variant, in alternating rounds, each reporting its own peak RSS."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, write_recipe


def load_bench():  # noqa: ANN201 - the module
    spec = importlib.util.spec_from_file_location("train_bench", REPO_ROOT / "bench" / "train_bench.py")
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
