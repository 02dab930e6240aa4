"""Training benchmark on the tiny recipe: tokens/s and peak memory of AdamW, Nexus and a bare PyTorch loop.

All three train in one process on the same recipe, data and micro-batches, one step each in turn (so load from
other processes hits them alike); the median step time gives tokens/s. Peak RSS comes from one short child process
per variant (RSS cannot be told apart inside one process). The ratios are of this one run.
Targets: Nexus/AdamW step time ≤ 1.05, memory ≤ 1.3, harness (AdamW through the trainer's step) ≥ 0.9× the bare loop.
    python bench/train_bench.py [--recipe train/tiny.toml] [--steps 15] [--data data]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

WARMUP_STEPS = 3
VARIANTS = ("bare", "adamw", "nexus")


def state_bytes(model, optimizer) -> int:  # noqa: ANN001 - torch objects
    """Bytes of parameters + optimizer state (incl. Nexus' θ0): the memory the optimizer choice changes."""
    import torch

    from nexus_eval.optim import Nexus

    tensors = list(model.parameters()) + [v for v in json_leaves(optimizer.state_dict()) if isinstance(v, torch.Tensor)]
    if isinstance(optimizer, Nexus) and optimizer._theta0 is not None:  # θ0 buffers, kept between outer steps
        tensors += [t for group in optimizer._theta0 for t in group]
    return sum(t.numel() * t.element_size() for t in tensors)


def json_leaves(obj):  # noqa: ANN001, ANN201
    if isinstance(obj, dict):
        for v in obj.values():
            yield from json_leaves(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from json_leaves(v)
    else:
        yield obj


def make_steppers(recipe_path: Path, data_dir: Path) -> dict[str, tuple[Callable[[int], None], int]]:
    """Per variant: (one outer step at index i, bytes of params + optimizer state). Same recipe, data and batches."""
    import torch

    from nexus_eval.training import RunState, load_recipe, set_up, train_step

    recipe = load_recipe(recipe_path)
    steppers = {}
    for variant in VARIANTS:
        c = set_up(recipe, "adamw" if variant == "bare" else variant, 0, data_dir)
        if variant == "bare":
            model, schedule, k = c.model, c.schedule, recipe.optim.accum
            opt = torch.optim.AdamW(model.parameters(), lr=recipe.optim.lr)

            def step(i: int, model=model, schedule=schedule, k=k, opt=opt) -> None:  # noqa: ANN001
                for mb in schedule.step_batches(i, k):
                    logits = model(mb.inputs).logits
                    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), mb.labels.flatten()) / k
                    loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

        else:
            opt, state = c.opt, RunState.start(recipe)

            def step(i: int, c=c, state=state) -> None:  # noqa: ANN001
                train_step(c, state)  # the loop's step at state.step, which is i (after the warm-up step 0)

        step(0)  # warm-up, and allocates Nexus' θ0
        steppers[variant] = (step, state_bytes(c.model, opt))
    return steppers


def child_peak_rss(variant: str, recipe: Path, data_dir: Path) -> float:
    """Peak RSS (MiB) of a process that builds and trains only `variant` for a few steps."""
    cmd = [sys.executable, __file__, "--rss-of", variant, "--recipe", str(recipe), "--data", str(data_dir)]
    return float(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])


def rss_child(variant: str, recipe_path: Path, data_dir: Path) -> None:
    import torch

    from nexus_eval.training import RunState, load_recipe, set_up, train_step

    torch.set_num_threads(2)
    recipe = load_recipe(recipe_path)
    c = set_up(recipe, "adamw" if variant == "bare" else variant, 0, data_dir)
    state = RunState.start(recipe)
    for _ in range(WARMUP_STEPS):
        train_step(c, state)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--recipe", type=Path, default=Path("train/tiny.toml"))
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--rss-of", choices=VARIANTS)
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.rss_of:
        rss_child(args.rss_of, args.recipe, args.data)
        return
    if not (args.data / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "nexus_eval.cli", "data", "build", "--out", str(args.data)], check=True)
    from nexus_eval.training import load_recipe

    tokens_per_step = load_recipe(args.recipe).tokens_per_step()
    steppers = make_steppers(args.recipe, args.data)
    # Round-robin over the variants, step by step: load from other processes hits all of them alike.
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for i in range(1, args.steps + 1):
        for variant, (step, _) in steppers.items():
            start = time.perf_counter()
            step(i)
            times[variant].append(time.perf_counter() - start)
    step_s = {v: statistics.median(t) for v, t in times.items()}
    rss = {v: child_peak_rss(v, args.recipe, args.data) for v in VARIANTS}
    print(
        f"train bench: {args.recipe}, {tokens_per_step} tokens/step, median of {args.steps} interleaved steps, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'variant':8} {'tokens/s':>10} {'step s':>8} {'peak RSS MiB':>13} {'params+opt state MiB':>21}")
    for v in VARIANTS:
        print(
            f"{v:8} {tokens_per_step / step_s[v]:10.0f} {step_s[v]:8.3f} {rss[v]:13.0f} {steppers[v][1] / 2**20:21.1f}"
        )
    print(f"nexus/adamw step time  {step_s['nexus'] / step_s['adamw']:.3f}  (target <= 1.05)")
    print(f"nexus/adamw peak RSS   {rss['nexus'] / rss['adamw']:.3f}  (target <= 1.3)")
    print(
        f"nexus/adamw state      {steppers['nexus'][1] / steppers['adamw'][1]:.3f}  (params + optimizer state; "
        "Nexus adds θ0)"
    )
    print(f"harness/bare tokens/s  {step_s['bare'] / step_s['adamw']:.3f}  (target >= 0.9)")


if __name__ == "__main__":
    main()
