"""AdamW and Nexus training steps alternated in ONE process (tiny recipe, median over steps): the Nexus/AdamW step-time
ratio without process-to-process effects, beside train_bench.py's one-process-per-variant figure.

    python bench/step_interleaved.py [--recipe train/tiny.toml] [--data data] [--steps 15]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from nexus_eval.training import RunState, load_recipe, set_up, train_step
from nexus_eval.training.loop import training_threads

WARMUP_STEPS = 2


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipe", type=Path, default=Path("train/tiny.toml"))
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--steps", type=int, default=15, help="timed steps per optimizer and round")
    args = parser.parse_args()
    torch.set_num_threads(training_threads())
    recipe = load_recipe(args.recipe)
    times: dict[str, list[float]] = {}
    for optimizer in ("adamw", "nexus", "adamw", "nexus"):  # two rounds, alternating
        c = set_up(recipe, optimizer, 0, args.data)
        state = RunState.start(recipe)
        for i in range(WARMUP_STEPS + args.steps):
            start = time.perf_counter()
            train_step(c, state)
            if i >= WARMUP_STEPS:
                times.setdefault(optimizer, []).append(time.perf_counter() - start)
    adamw, nexus = statistics.median(times["adamw"]), statistics.median(times["nexus"])
    print(
        f"one process, alternating: adamw {adamw:.3f} s/step, nexus {nexus:.3f} s/step, nexus/adamw {nexus / adamw:.3f}"
    )


if __name__ == "__main__":
    main()
