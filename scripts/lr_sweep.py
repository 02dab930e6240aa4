"""The learning-rate sweep of `make optimizers` (scripts/optimizers.sh): each optimizer's lr of the lowest mean
held-out mixture loss at the end of its sweep runs, over the sweep's seeds.

    python scripts/lr_sweep.py --runs runs/optimizers/sweep --optimizers adamw nexus --lrs 0.0015 0.003 --seeds 0 1 \
        --out runs/optimizers/sweep.json

Reads <runs>/lr<LR>/<prefix>-<optimizer, ":" as "+">-s<SEED>/metrics.jsonl (its last row's val_loss and step); writes
{"optimizers", "lrs", "seeds", "steps", "losses": {optimizer: {lr: [loss per seed]}}, "mean": {...}, "chosen":
{optimizer: lr}} atomically. A missing or diverged run is one line naming it, exit 2: a sweep with a hole chooses
nothing. Ties go to the smaller lr (the safer of two equal choices).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, NoReturn


def fail(message: str) -> NoReturn:
    """One line on stderr, exit 2: what the harness does with bad input."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def final_loss(run: Path) -> tuple[int | None, float]:
    """(step, held-out mixture loss) of a run's last metrics row; (None, inf) for a run that stopped on its own
    (optimizers.sh leaves <run>.failed: too large an lr diverges, and loses the sweep); exit 2 naming the run when it
    has no result at all."""
    if run.with_name(run.name + ".failed").is_file():
        return None, math.inf
    path = run / "metrics.jsonl"
    if not path.is_file():
        fail(f"{path}: no such file (the sweep run did not finish)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows or not isinstance(rows[-1].get("val_loss"), int | float):
        fail(f"{path}: no held-out loss recorded")
    loss = float(rows[-1]["val_loss"])
    if not math.isfinite(loss):
        fail(f"{path}: held-out loss {loss} (diverged)")
    return int(rows[-1]["step"]), loss


def choose(losses: dict[str, dict[str, list[float]]]) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """(mean loss per optimizer and lr, the chosen lr per optimizer): the lowest mean, the smaller lr on a tie; exit 2
    when every lr of an optimizer diverged."""
    means = {opt: {lr: sum(xs) / len(xs) for lr, xs in by_lr.items()} for opt, by_lr in losses.items()}
    chosen = {}
    for opt, by_lr in means.items():
        best = min(by_lr, key=lambda lr: (by_lr[lr], float(lr)))
        if not math.isfinite(by_lr[best]):
            fail(f"every lr of the sweep diverged for {opt}: sweep smaller ones (LRS=...)")
        chosen[opt] = float(best)
    return means, chosen


def sweep(runs: Path, optimizers: list[str], lrs: list[str], seeds: list[int], prefix: str = "study") -> dict[str, Any]:
    losses: dict[str, dict[str, list[float]]] = {opt: {lr: [] for lr in lrs} for opt in optimizers}
    steps = set()
    for opt in optimizers:
        for lr in lrs:
            for seed in seeds:
                step, loss = final_loss(runs / f"lr{lr}" / f"{prefix}-{opt.replace(':', '+')}-s{seed}")
                if step is not None:
                    steps.add(step)
                losses[opt][lr].append(loss)
    if len(steps) != 1:
        fail(f"{runs}: sweep runs end at different steps {sorted(steps)}")
    means, chosen = choose(losses)
    finite = lambda x: x if math.isfinite(x) else None  # noqa: E731  (JSON has no inf: a diverged run is null)
    return {
        "optimizers": optimizers,
        "lrs": [float(lr) for lr in lrs],
        "seeds": seeds,
        "steps": steps.pop(),
        "metric": "held-out mixture loss (nats/token) at the sweep runs' last step",
        "losses": {o: {lr: [finite(x) for x in xs] for lr, xs in by_lr.items()} for o, by_lr in losses.items()},
        "mean": {o: {lr: finite(x) for lr, x in by_lr.items()} for o, by_lr in means.items()},
        "chosen": chosen,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--prefix", default="study", help="the recipe's name, which begins every run's")
    parser.add_argument("--optimizers", nargs="+", required=True)
    parser.add_argument("--lrs", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    result = sweep(args.runs, args.optimizers, args.lrs, args.seeds, args.prefix)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, args.out)
    for opt in args.optimizers:
        row = "  ".join(f"lr {lr}: {result['mean'][opt][lr] or math.inf:.4f}" for lr in args.lrs)
        print(f"{opt:>12}  {row}  → {result['chosen'][opt]:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
