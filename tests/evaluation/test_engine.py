"""The engine lifecycle: the watchdog notices a dead engine process or a task past --timeout and interrupts the main
thread, even while it waits without a timeout (vLLM's client on a queue); an engine that ends leaves no process.

Fast tests use real child processes standing in for the engine; the slow ones run `nexus-eval eval --backend vllm`
in subprocesses on a tiny checkpoint, three in a row, and kill the engine core mid-evaluation.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from nexus_eval.errors import EngineError
from nexus_eval.evaluation.backends import BackendSpec
from nexus_eval.evaluation.engine import Engine, EngineProcess, EngineStopped, Watchdog, child_pids, how_ended
from tests.evaluation.eval_fixtures import tiny_checkpoint
from tests.evaluation.test_backends import needs_vllm
from tests.processes import cli_process

POLL_S = 0.1


def _sleep_forever() -> None:
    time.sleep(3600)


def start_child() -> multiprocessing.process.BaseProcess:
    proc = multiprocessing.get_context("fork").Process(target=_sleep_forever, daemon=True)
    proc.start()
    return proc


def test_closing_waits_for_vllms_client_threads() -> None:
    """The exit-134 race: vLLM's output thread must have ended before the interpreter may finalize."""
    from nexus_eval.evaluation.backends import VLLM_CLIENT_THREADS, join_threads

    woken = threading.Event()
    thread = threading.Thread(target=lambda: woken.wait(0.3), name=VLLM_CLIENT_THREADS[0], daemon=True)
    other = threading.Thread(target=lambda: woken.wait(30), name="someone-elses", daemon=True)
    thread.start()
    other.start()
    join_threads(VLLM_CLIENT_THREADS, timeout=10)
    assert not thread.is_alive() and other.is_alive()  # only vLLM's client threads are waited for
    woken.set()


def test_how_an_engine_process_ended_is_said_in_words() -> None:
    assert how_ended(-signal.SIGKILL) == "killed by SIGKILL"
    assert how_ended(1) == "exited with code 1"
    assert how_ended(None) == "ended (exit status unknown)"


def test_a_killed_engine_process_interrupts_a_wait_that_has_no_timeout() -> None:
    child = start_child()
    watched = EngineProcess("EngineCore_DP0", child.pid, exitcode=lambda: child.exitcode)
    watchdog = Watchdog([watched], timeout=None, poll=POLL_S)
    with pytest.raises(EngineStopped) as stopped, watchdog.running():
        os.kill(child.pid, signal.SIGKILL)
        # what vLLM's client does while the engine computes: blocks forever once it is dead (here: raises Empty after
        # a minute, which fails the test, instead of hanging it)
        queue.Queue().get(timeout=60)
    assert str(stopped.value) == f"engine process EngineCore_DP0 (pid {child.pid}) killed by SIGKILL"


def test_a_task_past_its_timeout_is_interrupted() -> None:
    watchdog = Watchdog([], timeout=0.3, poll=POLL_S)
    reached_the_end = []
    with pytest.raises(EngineStopped, match="--timeout 0.3 s"), watchdog.running():
        threading.Event().wait(60)
        reached_the_end.append(True)  # only when the watchdog did not interrupt the wait
    assert not reached_the_end


@pytest.mark.parametrize("thread", ["main", "other"])
def test_a_result_that_comes_after_the_timeout_counts_as_late_even_between_polls(thread: str) -> None:
    """The watchdog looks once a minute here, so it never interrupts: the block's end, past the timeout, is caught."""
    watchdog = Watchdog([], timeout=0.01, poll=60)
    outcome: list[BaseException | None] = []

    def late_task() -> None:
        try:
            with watchdog.running():
                threading.Event().wait(0.05)
            outcome.append(None)
        except EngineStopped as stopped:
            outcome.append(stopped)

    if thread == "main":
        late_task()
    else:
        worker = threading.Thread(target=late_task)
        worker.start()
        worker.join()
    assert len(outcome) == 1 and isinstance(outcome[0], EngineStopped), outcome
    assert str(outcome[0]) == "no result within --timeout 0.01 s (engine hung?)" == watchdog.reason


def test_a_task_that_finishes_in_time_is_left_alone() -> None:
    child = start_child()
    try:
        watchdog = Watchdog([EngineProcess("c", child.pid, exitcode=lambda: child.exitcode)], timeout=5, poll=POLL_S)
        with watchdog.running():
            time.sleep(0.3)
        assert watchdog.reason is None
        assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # the handler is put back
    finally:
        child.kill()
        child.join()


def test_a_dead_grandchild_worker_counts_as_a_dead_engine() -> None:
    child = start_child()
    handle = psutil.Process(child.pid)
    worker = EngineProcess("worker of EngineCore_DP0", child.pid, handle=handle)
    assert worker.ended() is None
    child.kill()
    child.join()
    assert worker.ended() == "ended"


def test_engine_close_stops_processes_started_while_it_was_open() -> None:
    with Engine(BackendSpec("hf", 1, seed=0)) as engine:
        child = start_child()  # a process the backend started and did not stop
        assert child.pid in child_pids()
    assert not psutil.pid_exists(child.pid)  # stopped and reaped (multiprocessing's own handle cannot tell)
    assert engine.lm is None


def test_an_engine_failure_names_the_checkpoint_the_task_and_how(tmp_path: Path) -> None:
    engine = Engine(BackendSpec("vllm", seed=0))
    engine.checkpoint = tmp_path / "run" / "ckpt-000010"
    error = engine.failure("task arith_steps1_mc", "engine process EngineCore_DP0 (pid 7) killed by SIGKILL")
    assert isinstance(error, EngineError) and error.exit_code == 3
    assert str(error) == (
        "run/ckpt-000010: task arith_steps1_mc: vllm engine failed: engine process EngineCore_DP0 (pid 7) killed by "
        "SIGKILL; nothing cached for task arith_steps1_mc"
    )


# ---- vLLM for real, in subprocesses ----------------------------------------------------------------------------------
VLLM_TASKS = ["arith_steps1_mc", "arith_steps2_mc"]  # committed synthetic data: no `tasks prepare` needed
VLLM_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def vllm_ckpt(tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nexus_eval.data import load_tokenizer

    return tiny_checkpoint(tmp_path_factory.mktemp("runs") / "r" / "ckpt-000001", load_tokenizer(tiny_data_dir))


def vllm_eval(ckpt: Path, cache: Path, tasks: list[str], *extra: str) -> list[str]:
    return [
        "eval",
        str(ckpt),
        "--tasks",
        ",".join(tasks),
        "--limit",
        "4",
        "--backend",
        "vllm",
        "--cache",
        str(cache),
        *extra,
    ]


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@needs_vllm
@pytest.mark.slow
def test_three_vllm_evals_in_a_row_all_exit_0(vllm_ckpt: Path, tmp_path: Path) -> None:
    """The exit 134 ("terminate called without an active exception") came at random after a successful eval."""
    for run in range(3):
        proc = cli_process(*vllm_eval(vllm_ckpt, tmp_path / f"cache{run}", VLLM_TASKS[:1]), cwd=tmp_path)
        out, err = proc.communicate(timeout=VLLM_TIMEOUT_S)
        assert proc.returncode == 0, f"run {run}: exit {proc.returncode}\n{err[-3000:]}"
        assert "computed" in out
        assert "terminate called" not in err


@needs_vllm
@pytest.mark.slow
def test_killing_the_vllm_engine_ends_the_eval_with_one_line_and_no_orphan(
    vllm_ckpt: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    """A run of two checkpoints through one engine: the engine is killed once the first one's results are cached,
    while the second one (its weights swapped in) is evaluated."""
    from nexus_eval.data import load_tokenizer

    second = vllm_ckpt.parent / "ckpt-000002"
    if not second.exists():
        tiny_checkpoint(second, load_tokenizer(tiny_data_dir), seed=2)
    cache = tmp_path / "cache"
    proc = cli_process(*vllm_eval(vllm_ckpt.parent, cache, VLLM_TASKS), cwd=tmp_path)
    deadline = time.monotonic() + VLLM_TIMEOUT_S
    while len(list(cache.rglob("*.vllm.*.json"))) < len(VLLM_TASKS):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    engines = [p for p in descendants(proc.pid) if "EngineCor" in p.name()]
    assert engines, [p.name() for p in descendants(proc.pid)]
    family = descendants(proc.pid)
    engines[0].kill()
    out, err = proc.communicate(timeout=90)  # the watchdog polls each second: 90 s means it never noticed
    assert proc.returncode == 3, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "r/ckpt-000002" in errors[0] and "nothing cached" in errors[0], err[-3000:]
    assert "killed by SIGKILL" in errors[0] or "ended" in errors[0]
    assert len(list(cache.rglob("*.vllm.*.json"))) == len(VLLM_TASKS)  # the first checkpoint's stay cached
    time.sleep(1)
    assert not [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.slow
def test_a_task_past_timeout_ends_the_eval_with_exit_3_and_caches_nothing(vllm_ckpt: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from nexus_eval.cli import app

    cache = tmp_path / "cache"
    args = ["eval", str(vllm_ckpt), "--tasks", "arith_steps1_mc", "--limit", "20", "--cache", str(cache), "--quiet"]
    result = CliRunner().invoke(app, [*args, "--timeout", "0.01"])
    assert result.exit_code == 3, result.output
    assert "r/ckpt-000001: task arith_steps1_mc: hf engine failed: no result within --timeout 0.01 s" in result.stderr
    assert not list(cache.rglob("arith_steps1_mc.*"))
    bad = CliRunner().invoke(app, [*args, "--timeout", "0"])
    assert bad.exit_code == 2 and "--timeout must be a positive number" in bad.stderr
