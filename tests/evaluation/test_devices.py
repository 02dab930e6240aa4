"""`nexus-eval eval --devices`: a checkpoint series spread over one worker process per device (issue 14, item 3).
Two `cpu` workers stand in for two GPUs: the same code path (spawned workers, shared cache, results read back),
only the device string differs."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import psutil
import pytest
import torch
from typer.testing import CliRunner

from nexus_eval.checkpoints import content_hash
from nexus_eval.cli import app
from nexus_eval.evaluation.devices import deal
from nexus_eval.evaluation.runner import EvalSettings, cached_results
from tests.evaluation.eval_fixtures import tiny_checkpoint
from tests.processes import cli_process
from tests.test_signals import assert_stopped_cleanly

TASKS = ["arith_steps1_mc", "arith_gold_bpb"]  # multiple choice and bits per byte, committed synthetic data
LIMIT = 4
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def run(tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of four checkpoints (same config and tokenizer, different weights)."""
    from nexus_eval.data import load_tokenizer

    tokenizer = load_tokenizer(tiny_data_dir)
    run = tmp_path_factory.mktemp("devices") / "run"
    for i in (1, 2, 3, 4):
        tiny_checkpoint(run / f"ckpt-{i:06d}", tokenizer, seed=i)
    return run


def eval_args(run: Path, cache: Path, *more: str) -> list[str]:
    return ["eval", str(run), "--tasks", ",".join(TASKS), "--limit", str(LIMIT), "--cache", str(cache), *more]


def table_rows(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if "ckpt-" in line]


def cache_files(cache: Path) -> dict[str, bytes]:
    """Relative path → bytes of every result and samples file in the cache."""
    return {str(p.relative_to(cache)): p.read_bytes() for p in sorted(cache.rglob("*")) if p.is_file()}


def test_checkpoints_are_dealt_in_contiguous_shares_in_series_order() -> None:
    ckpts = [Path(f"r/ckpt-{i}") for i in range(5)]
    shares = deal(ckpts, ("cuda:0", "cuda:1"))
    assert [(s.label, s.device, [c.name for c in s.checkpoints]) for s in shares] == [
        ("cuda:0", "cuda:0", ["ckpt-0", "ckpt-1", "ckpt-2"]),
        ("cuda:1", "cuda:1", ["ckpt-3", "ckpt-4"]),
    ]
    assert [s.label for s in deal(ckpts, ("cpu", "cpu", "cpu"))] == ["cpu#1", "cpu#2", "cpu#3"]
    assert [len(s.checkpoints) for s in deal(ckpts[:1], ("cpu", "cpu"))] == [1]  # no idle worker
    assert deal([], ("cpu", "cpu")) == []


@pytest.mark.slow
def test_two_workers_give_the_results_and_table_of_one_engine(run: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "one-engine", tmp_path / "two-workers"
    alone = CliRunner().invoke(app, eval_args(run, one, "--quiet"))
    assert alone.exit_code == 0, alone.output
    spread = CliRunner().invoke(app, eval_args(run, two, "--devices", "cpu,cpu"))  # not a terminal: the log lines
    assert spread.exit_code == 0, spread.output
    rows = table_rows(spread.stdout)
    assert rows == table_rows(alone.stdout) and len(rows) == 4 * len(TASKS)
    assert all(row.rstrip(" │").endswith("computed") for row in rows)
    # each worker's lines carry its device, and each evaluated its half of the series
    assert "eval cpu#1: 4/4 done in" in spread.stderr and "eval cpu#2: 4/4 done in" in spread.stderr, spread.stderr
    assert "cpu#1 run/ckpt-000001: " in spread.stderr and "cpu#2 run/ckpt-000003: " in spread.stderr

    expected, got = cache_files(one), cache_files(two)
    assert sorted(got) == sorted(expected) and len([n for n in got if n.endswith(".samples.jsonl.gz")]) == 8
    for name, data in expected.items():
        if name.endswith(".json"):
            a, b = json.loads(data), json.loads(got[name])
            assert a.pop("created") and b.pop("created")
            assert a == b, name  # metrics, stderr, per-item scores, key, provenance (device cpu)
        elif name.endswith(".gz"):
            assert got[name] == data, name  # the per-item samples, byte for byte
    settings = EvalSettings(tasks=tuple(TASKS), limit=LIMIT, cache_dir=two)
    assert len(cached_results([run], settings)) == 4 * len(TASKS)

    again = CliRunner().invoke(app, eval_args(run, two, "--devices", "cpu,cpu", "--json"))
    assert again.exit_code == 0, again.output
    listed = json.loads(again.stdout)
    assert [r["source"] for r in listed] == ["cache"] * 4 * len(TASKS)  # nothing missing: no worker started
    assert "eval cpu#" not in again.stderr


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--devices", "cuda:7"], "--devices cuda:7"),
        (["--devices", ""], "--devices ''"),
        (["--devices", " , "], "--devices ' , '"),
        (["--devices", "auto"], "--devices auto"),
        (["--devices", "cpu,tpu"], "--devices cpu,tpu"),
        (["--devices", "tpu"], "--devices tpu"),
        (["--devices", "cpu,cuda:0"], "--devices cpu,cuda:0"),
        (["--devices", "cpu,cpu", "--device", "cpu"], "--devices cpu,cpu"),
        (
            ["--devices", "cpu,cpu", "--model-args", "tensor_parallel_size=2", "--backend", "vllm"],
            "--devices cpu,cpu with --model-args tensor_parallel_size=2",
        ),
        (["--devices", "cpu,cpu", "--check-batch-invariance"], "--devices cpu,cpu"),
    ],
)
def test_bad_devices_are_one_line_exit_2_and_cache_nothing(
    run: Path, tmp_path: Path, flags: list[str], named: str
) -> None:
    if "auto" in flags and torch.cuda.is_available():
        pytest.skip("CUDA is here: auto is valid")
    cache = tmp_path / "cache"
    result = CliRunner().invoke(app, eval_args(run, cache, "--quiet", *flags))
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], result.output
    assert not cache.exists() or not any(cache.rglob("*.json"))


def workers_of(proc: psutil.Process) -> list[psutil.Process]:
    """The eval's worker processes (spawned multiprocessing children), in the order they were started."""
    found = [p for p in proc.children() if "--multiprocessing-fork" in p.cmdline() and "resource_tracker" not in
             " ".join(p.cmdline())]  # fmt: skip
    return sorted(found, key=lambda p: (p.create_time(), p.pid))


def results_of(cache: Path, ckpt: Path) -> list[Path]:
    return list((cache / content_hash(ckpt)[:16]).glob("*.json"))


def wait_for(proc: object, ready: object, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not ready():  # type: ignore[operator]
        assert proc.poll() is None, f"ended before {what}: {proc.communicate()[1][-3000:]}"  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, f"no {what} within {TIMEOUT_S} s"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_killed_worker_ends_the_command_with_one_line_and_no_process_left(run: Path, tmp_path: Path) -> None:
    """SIGKILL the second worker (checkpoints 3 and 4) once the first worker has cached its first checkpoint: exit 3,
    one line naming the worker's checkpoint and how it ended, the first worker stopped, what was cached kept, and the
    same command run again computes only the rest.

    The second worker is paused (SIGSTOP) as soon as it is seen, so that it is mid-share when it is killed however
    fast either worker runs on the machine at hand."""
    cache = tmp_path / "cache"
    ckpts = sorted(run.glob("ckpt-*"))
    proc = cli_process(*eval_args(run, cache, "--devices", "cpu,cpu"), cwd=tmp_path)
    parent = psutil.Process(proc.pid)
    wait_for(proc, lambda: len(workers_of(parent)) == 2, "two workers")
    killed = workers_of(parent)[1]
    killed.suspend()
    wait_for(proc, lambda: len(results_of(cache, ckpts[0])) == len(TASKS), "the first checkpoint's results")
    assert len(results_of(cache, ckpts[3])) < len(TASKS), "the second worker finished before it was paused"
    family = parent.children(recursive=True)
    killed.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 3, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    assert f"hf worker on cpu#2 (pid {killed.pid}) killed by SIGKILL" in errors[0], errors
    assert "run/ckpt-000003" in errors[0] or "run/ckpt-000004" in errors[0], errors
    time.sleep(0.5)
    assert not [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    kept = {p: p.read_bytes() for p in cache.rglob("*.json")}
    assert set(results_of(cache, ckpts[0])) <= set(kept)  # the first worker's finished checkpoint stays cached
    again = CliRunner().invoke(app, eval_args(run, cache, "--devices", "cpu,cpu", "--quiet"))
    assert again.exit_code == 0, again.output
    sources = [row.rstrip(" │").rsplit(" ", 1)[-1] for row in table_rows(again.stdout)]
    assert len(sources) == 4 * len(TASKS) and sources.count("cache") == len(kept), again.stdout
    assert all(path.read_bytes() == data for path, data in kept.items())  # reused, not rewritten
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]


@pytest.mark.slow
def test_sigterm_stops_every_worker_and_exits_143(run: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    proc = cli_process(*eval_args(run, cache, "--devices", "cpu,cpu"), cwd=tmp_path)
    parent = psutil.Process(proc.pid)
    wait_for(proc, lambda: len(workers_of(parent)) == 2 and any(cache.rglob("*.json")), "a first result")
    family = parent.children(recursive=True)
    proc.send_signal(signal.SIGTERM)
    assert_stopped_cleanly(proc, family, signal.SIGTERM, tmp_path)


def compare_args(runs: dict[str, Path], data: Path, tmp_path: Path, *more: str) -> list[str]:
    return [
        "compare", str(runs["adamw"]), str(runs["nexus"]), "--match-loss", "--targets", "6", "--tolerance", "50",
        "--tasks", TASKS[0], "--limit", "2",
        "--data", str(data), "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "eval"),
        "--loss-cache", str(tmp_path / "loss"), "--resamples", "200", "--quiet", *more,
    ]  # fmt: skip


def test_compare_hands_devices_to_the_evaluation(
    tiny_runs: dict[str, Path], tiny_data_dir: Path, tmp_path: Path
) -> None:
    """compare checks --devices before it evaluates anything: a device that is not there is one line."""
    if torch.cuda.device_count() > 7:
        pytest.skip("cuda:7 is here")
    result = CliRunner().invoke(app, compare_args(tiny_runs, tiny_data_dir, tmp_path, "--devices", "cuda:7"))
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--devices cuda:7: not available here" in lines[0], result.output
    assert not any((tmp_path / "eval").rglob("*.json"))


@pytest.mark.slow
def test_compare_over_two_workers_reports_what_one_engine_reports(
    tiny_runs: dict[str, Path], tiny_data_dir: Path, tmp_path: Path
) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    for where, more in ((one, []), (two, ["--devices", "cpu,cpu"])):
        result = CliRunner().invoke(app, compare_args(tiny_runs, tiny_data_dir, where, *more))
        assert result.exit_code == 0, result.output
    expected = json.loads((one / "out" / "results.json").read_text())
    got = json.loads((two / "out" / "results.json").read_text())
    assert got["pairs"] == expected["pairs"] and len(got["pairs"]) == 1
    assert got["tasks"] == expected["tasks"]  # the paired differences and their CIs
    assert sorted(cache_files(two / "eval")) == sorted(cache_files(one / "eval"))  # both sides, same keys
    if torch.cuda.device_count() <= 7:  # with every result cached, a device that is not there is still refused
        result = CliRunner().invoke(app, compare_args(tiny_runs, tiny_data_dir, two, "--devices", "cuda:7"))
        assert result.exit_code == 2 and "--devices cuda:7: not available here" in result.output, result.output
