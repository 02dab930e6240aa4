"""`nexus-eval eval` run twice at once on the same checkpoint and task computes it once (the second waits on the
checkpoint's cache lock, then reuses the result), and an eval killed mid-way resumes without redoing finished tasks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nexus_eval.cli import app
from nexus_eval.evaluation.runner import EvalSettings, cached_results
from nexus_eval.io import file_lock
from tests.evaluation.eval_fixtures import tiny_checkpoint
from tests.processes import cli_process, kill_when

TASKS = ["arith_gold_bpb", "arith_steps1_mc"]  # committed synthetic data: no `tasks prepare` needed
LIMIT = 2
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def ckpt(tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nexus_eval.data import load_tokenizer

    return tiny_checkpoint(tmp_path_factory.mktemp("runs") / "r" / "ckpt-000001", load_tokenizer(tiny_data_dir))


def eval_args(ckpt: Path, tasks: list[str], cache: Path) -> list[str]:
    return ["eval", str(ckpt), "--tasks", ",".join(tasks), "--limit", str(LIMIT), "--cache", str(cache), "--quiet"]


def sources(table: str) -> list[str]:
    """The "source" column of the summary table: computed or cache, one per result row."""
    return [word for line in table.splitlines() for word in ("computed", "cache") if line.rstrip(" │|").endswith(word)]


def result_files(cache: Path) -> list[Path]:
    return sorted(cache.rglob("*.json"))


def test_file_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    import fcntl

    lock = tmp_path / "a" / "x.lock"
    with file_lock(lock):
        with lock.open("a") as other:  # a second open file description: what another process would hold
            with pytest.raises(BlockingIOError):
                fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    with lock.open("a") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again


@pytest.mark.slow
def test_two_concurrent_evals_compute_once_and_both_succeed(ckpt: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    procs = [cli_process(*eval_args(ckpt, TASKS[:1], cache), cwd=tmp_path) for _ in range(2)]
    outputs = [proc.communicate(timeout=TIMEOUT_S) for proc in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    assert sorted(source for out, _ in outputs for source in sources(out)) == ["cache", "computed"], outputs
    files = result_files(cache)
    assert len(files) == 1 and json.loads(files[0].read_text())["n"] == LIMIT
    settings = EvalSettings(tasks=tuple(TASKS[:1]), limit=LIMIT, cache_dir=cache)
    assert len(cached_results([ckpt], settings)) == 1  # valid for its key
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]


@pytest.mark.slow
def test_an_eval_killed_midway_resumes_without_redoing_finished_tasks(
    ckpt: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    """A run of two checkpoints (a checkpoint's tasks go through one lm-eval call, their results written together)
    killed once the first result is on disk: every result written before the kill is reused as it is, the rest is
    computed."""
    from nexus_eval.data import load_tokenizer

    second = ckpt.parent / "ckpt-000002"
    if not second.exists():
        tiny_checkpoint(second, load_tokenizer(tiny_data_dir), seed=2)
    cache = tmp_path / "cache"
    proc = cli_process(*eval_args(ckpt.parent, TASKS, cache), cwd=tmp_path)
    kill_when(proc, cache, lambda _: bool(result_files(cache)), TIMEOUT_S)
    finished = {path: (path.read_bytes(), path.stat().st_mtime_ns, path.stat().st_ino) for path in result_files(cache)}

    result = CliRunner().invoke(app, eval_args(ckpt.parent, TASKS, cache))
    assert result.exit_code == 0, result.output
    found = sources(result.stdout)
    assert len(found) == 2 * len(TASKS) and found.count("cache") == len(finished), (result.stdout, finished)
    for path, before in finished.items():
        assert (path.read_bytes(), path.stat().st_mtime_ns, path.stat().st_ino) == before
    assert len(result_files(cache)) == 2 * len(TASKS)
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
