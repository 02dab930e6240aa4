"""SIGTERM and Ctrl-C (SIGINT) to a real `nexus-eval` process mid-work: exit 143 / 130 with one `error:` line, no child
process left, no temp file left, and the same command run again resumes; and what a log receives has no carriage
return or ANSI code (progress bars) from us or the libraries."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from nexus_eval.display import LineProgress
from tests.conftest import TINY_RECIPE
from tests.evaluation.eval_fixtures import tiny_checkpoint
from tests.evaluation.test_eval_concurrency import sources
from tests.processes import cli_process, entries

TIMEOUT_S = 300
BAR_OR_COLOUR = re.compile(r"\r|\x1b\[")


def signal_when(proc: subprocess.Popen[str], ready: Callable[[], bool], sig: int) -> list[psutil.Process]:
    """Send `sig` to `proc` once ready() holds; returns its descendants at that moment (to check none is left)."""
    deadline = time.monotonic() + TIMEOUT_S
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            out, err = proc.communicate()
            raise AssertionError(f"ended before the moment (exit {proc.returncode}): {err[-3000:]}")
        time.sleep(0.01)
    family = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(sig)
    return family


def assert_stopped_cleanly(proc: subprocess.Popen[str], family: list[psutil.Process], sig: int, root: Path) -> None:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, f"exit {proc.returncode}: {err[-3000:]}"
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: interrupted by {signal.Signals(sig).name}; finished work is kept, run the same command again to resume"
    ], err[-3000:]
    assert "Traceback" not in err
    time.sleep(0.5)  # multiprocessing's resource tracker ends when its parent does
    assert not [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not [p for p in root.rglob("*") if ".tmp" in p.name], "a temp file was left"


def test_the_log_display_prints_one_line_per_stage_with_its_time(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    with log.open("w") as stream:
        lines = LineProgress(stream)
        task = lines.add_task("eval", total=2)
        lines.update(task, description="ckpt: loading (hf)")
        lines.update(task, description="ckpt: task_a")
        lines.advance(task)
        lines.update(task, description="ckpt: task_b")
        lines.advance(task)
        characters = lines.add_task("read text", total=1.2e7)  # counts of the data stage: whole, with separators
        lines.update(characters, completed=12_083_800.0)
        other = lines.add_task("train", total=10)
        lines.update(other, completed=3)
        lines.close()
    shown = log.read_text().splitlines()
    assert [re.sub(r"[\d.]+ s$", "T s", line) for line in shown] == [
        "ckpt: loading (hf): T s",
        "ckpt: task_a: T s",
        "ckpt: task_b: T s",
        "eval: 2/2 done in T s",
        "read text: 12,083,800/12,000,000 done in T s",
        "train: stopped at 3/10 after T s",
    ]


# A command whose library turns the Interrupted raised inside it into an error of its own, as safetensors' get_tensor
# did to a SIGTERM in an eval ("ValueError: could not determine the shape of object type ...": exit 1, a traceback).
SWALLOWING_COMMAND = """
import os, signal, sys, time
from nexus_eval.cli.options import one_line_errors

@one_line_errors
def command():
    try:
        os.kill(os.getpid(), signal.SIG{name})
        time.sleep(5)
    except KeyboardInterrupt:
        raise ValueError("could not determine the shape of object type") from None

try:
    command()
except SystemExit as e:
    sys.exit(e.code)
except BaseException as e:  # typer.Exit outside a typer app
    sys.exit(getattr(e, "exit_code", 99))
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_a_library_turned_into_its_own_error_still_exits_as_the_signal(sig: int) -> None:
    name = signal.Signals(sig).name.removeprefix("SIG")
    done = subprocess.run(
        [sys.executable, "-c", SWALLOWING_COMMAND.format(name=name)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 128 + sig, done.stderr[-3000:]
    assert done.stderr.strip().splitlines() == [
        f"error: interrupted by {signal.Signals(sig).name}; finished work is kept, run the same command again to resume"
    ]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_train_stops_on_a_signal_and_resumes(sig: int, tiny_data_dir: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "long.toml"  # the tiny recipe, long enough to be signalled mid-run
    recipe.write_text(
        TINY_RECIPE.format(data=tiny_data_dir, lr=3e-3)
        .replace("steps = 6", "steps = 40")
        .replace("= 3\ntarget", "= 5\ntarget")
    )
    runs = tmp_path / "runs"
    args = ["train", str(recipe), "--optimizer", "adamw", "--out", str(runs), "--quiet"]
    proc = cli_process(*args, cwd=tmp_path)
    run = runs / "t-adamw-s0"
    family = signal_when(proc, lambda: any(name.startswith("ckpt-") for name in entries(run)), sig)
    assert_stopped_cleanly(proc, family, sig, tmp_path)
    again = cli_process(*args, "--resume", cwd=tmp_path)
    _, err = again.communicate(timeout=TIMEOUT_S)
    assert again.returncode == 0, err[-3000:]
    assert "ckpt-000040" in entries(run)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_eval_stops_on_a_signal_and_resumes_with_a_clean_log(sig: int, tiny_data_dir: Path, tmp_path: Path) -> None:
    from nexus_eval.data import load_tokenizer

    # A run of two checkpoints: a checkpoint's tasks go through one lm-eval call, so the stop comes between them.
    tokenizer = load_tokenizer(tiny_data_dir)
    run = tmp_path / "r"
    for seed in (1, 2):
        tiny_checkpoint(run / f"ckpt-{seed:06d}", tokenizer, seed=seed)
    cache = tmp_path / "cache"
    tasks = ["arith_steps1_mc", "arith_steps2_mc"]
    args = ["eval", str(run), "--tasks", ",".join(tasks), "--limit", "2", "--cache", str(cache)]
    proc = cli_process(*args, cwd=tmp_path)  # stdout and stderr are pipes: the display is the log one
    family = signal_when(proc, lambda: bool(list(cache.rglob("*.hf.*.json"))), sig)
    assert_stopped_cleanly(proc, family, sig, tmp_path)
    kept = list(cache.rglob("*.hf.*.json"))
    assert 0 < len(kept) < 2 * len(tasks)  # stopped mid-way
    again = cli_process(*args, cwd=tmp_path)
    out, err = again.communicate(timeout=TIMEOUT_S)
    assert again.returncode == 0, err[-3000:]
    found = sources(out)  # what was finished is kept, only the rest is computed
    assert len(found) == 2 * len(tasks) and found.count("cache") == len(kept), out
    assert not BAR_OR_COLOUR.search(out + err), [
        line for line in (out + err).splitlines() if BAR_OR_COLOUR.search(line)
    ]
    assert "Custom kwargs" not in err
    assert f"{tasks[1]}: " in err and "eval: 4/4 done in" in err  # one line per stage, with its time
