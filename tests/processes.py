"""The CLI in a subprocess, as a user runs it, for the tests that kill it or run two at once; and a poller that kills
it at a chosen moment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import REPO_ROOT

POLL_S = 0.001  # fine enough to catch a tiny model's checkpoint write (tens of milliseconds) in progress


def cli_process(*args: str, cwd: Path) -> subprocess.Popen[str]:
    """`python -m nexus_eval.cli ARGS` running this checkout's code; stdout and stderr piped (text)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "nexus_eval.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def entries(directory: Path) -> dict[str, tuple[int, int]]:
    """name → (size, mtime_ns) of what `directory` holds now (empty while it does not exist)."""
    found = {}
    try:
        with os.scandir(directory) as it:
            for entry in it:
                try:
                    stat = entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # renamed or removed while we looked
                    continue
                found[entry.name] = (stat.st_size, stat.st_mtime_ns)
    except FileNotFoundError:
        pass
    return found


def kill_when(
    proc: subprocess.Popen[str], directory: Path, moment: Callable[[dict[str, tuple[int, int]]], bool], timeout: float
) -> dict[str, tuple[int, int]]:
    """SIGKILL `proc` as soon as `moment(entries(directory))` holds; returns the entries it saw then. Fails (with
    the process's output) when the process ends first or the timeout passes."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        seen = entries(directory)
        if moment(seen):
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            return seen
        time.sleep(POLL_S)
    if proc.poll() is None:
        proc.kill()
    out, err = proc.communicate()
    raise AssertionError(f"the moment never came (exit {proc.returncode}): {out[-2000:]} {err[-2000:]}")
