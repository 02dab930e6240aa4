"""make stress: N consecutive `nexus-eval eval` runs per backend on one checkpoint, then a 4-checkpoint series per
backend, each a fresh process with a fresh cache (so each one loads the engine, evaluates and shuts it down); prints
every exit code and time and a summary line per backend. Exit 0 only when every run exited 0.

    python scripts/stress.py --checkpoint runs/tiny-adamw-s0/ckpt-000300 --n 20 --backends hf,vllm
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERIES_SIZE = 4


@dataclass(frozen=True)
class Run:
    label: str
    backend: str
    exit_code: int
    seconds: float
    last_line: str  # of stderr: the one-line error when it failed


def eval_once(label: str, backend: str, checkpoints: list[Path], args: argparse.Namespace, scratch: Path) -> Run:
    cache = scratch / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    command = [sys.executable, "-m", "nexus_eval.cli", "eval", *map(str, checkpoints), "--tasks", args.tasks]
    command += ["--limit", str(args.limit), "--backend", backend, "--cache", str(cache), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    started = time.monotonic()
    done = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    lines = done.stderr.strip().splitlines()
    run = Run(label, backend, done.returncode, seconds, lines[-1] if lines else "")
    if done.returncode != 0:  # keep the whole log of a failure
        (scratch / f"{label}.{backend}.stderr.txt").write_text(done.stderr)
    note = "" if run.exit_code == 0 else f"  ({run.last_line[:150]})"
    print(f"{backend:5} {label:10} exit {run.exit_code:3} in {seconds:6.1f} s{note}", flush=True)
    return run


def series_checkpoints(checkpoint: Path) -> list[Path]:
    """The checkpoint and up to 3 others of its run directory (the run's first ones): a 4-checkpoint series."""
    others = sorted(p for p in checkpoint.parent.glob("ckpt-*") if p.is_dir() and p != checkpoint)
    return [*others[: SERIES_SIZE - 1], checkpoint]


def summary(runs: list[Run], backend: str) -> str:
    mine = [r for r in runs if r.backend == backend]
    ok = sum(r.exit_code == 0 for r in mine)
    codes = sorted({r.exit_code for r in mine})
    times = [r.seconds for r in mine]
    spread = f"min {min(times):.1f} s, median {statistics.median(times):.1f} s, max {max(times):.1f} s"
    return f"{backend}: {ok} of {len(mine)} exited 0 (exit codes seen: {codes}; {spread})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--n", type=int, default=20, help="consecutive single-checkpoint evals per backend")
    parser.add_argument("--series", type=int, default=1, help="4-checkpoint series evals per backend")
    parser.add_argument("--backends", default="hf,vllm")
    parser.add_argument("--tasks", default="arith_steps1_mc")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--keep", type=Path, default=None, help="scratch dir to keep (default: a temp dir)")
    args = parser.parse_args()
    if not (args.checkpoint / "config.json").is_file():
        print(f"error: --checkpoint {args.checkpoint}: not a checkpoint (run `make demo` first)", file=sys.stderr)
        return 2
    checkpoint = args.checkpoint.resolve()
    series = series_checkpoints(checkpoint)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="nexus-stress-") as tmp:
        scratch = args.keep or Path(tmp)
        scratch.mkdir(parents=True, exist_ok=True)
        for backend in args.backends.split(","):
            for i in range(args.n):
                runs.append(eval_once(f"run {i + 1}/{args.n}", backend, [checkpoint], args, scratch))
            for i in range(args.series):
                runs.append(eval_once(f"series {i + 1}×{len(series)}", backend, series, args, scratch))
    print(
        f"stress: {args.n} evals + {args.series} series of {len(series)} checkpoints per backend, {args.tasks} "
        f"--limit {args.limit}, {checkpoint}"
    )
    for backend in args.backends.split(","):
        print(summary(runs, backend))
    return 0 if all(r.exit_code == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
