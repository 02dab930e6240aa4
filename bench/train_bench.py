"""Training benchmark on the tiny recipe: tokens/s and peak memory of AdamW, Nexus and a bare PyTorch loop.

Each variant runs in its own child process (so peak RSS is its own) on the same recipe, data and micro-batches;
the parent prints the figures and the ratios of this one run. Targets: Nexus/AdamW step time ≤ 1.05, memory ≤ 1.3,
harness (AdamW through nexus_eval's Trainer) ≥ 0.9× the bare loop.
    python bench/train_bench.py [--recipe train/tiny.toml] [--steps 30] [--data data]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

WARMUP_STEPS = 3


def state_bytes(model, optimizer) -> int:  # noqa: ANN001 - torch objects
    """Bytes of parameters + optimizer state (incl. Nexus' θ0): the memory the optimizer choice changes."""
    import torch

    total = sum(p.numel() * p.element_size() for p in model.parameters())
    opt_state = optimizer.state_dict()
    for value in json_leaves(opt_state):
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
    return total


def json_leaves(obj):  # noqa: ANN001, ANN201
    if isinstance(obj, dict):
        for v in obj.values():
            yield from json_leaves(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from json_leaves(v)
    else:
        yield obj


def run_variant(variant: str, recipe_path: Path, data_dir: Path, steps: int) -> dict:
    import torch

    from nexus_eval.recipe import load_recipe
    from nexus_eval.train import Trainer

    torch.set_num_threads(2)
    recipe = load_recipe(recipe_path)
    trainer = Trainer(recipe, "adamw" if variant == "bare" else variant, 0, Path("/tmp/nexus-bench"), data_dir)
    if variant == "bare":
        model, schedule, k = trainer.model, trainer.schedule, recipe.optim.accum
        opt = torch.optim.AdamW(model.parameters(), lr=recipe.optim.lr)

        def step(i: int) -> None:
            for mb in schedule.step_batches(i, k):
                logits = model(mb.inputs).logits
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), mb.labels.flatten()) / k
                loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    else:

        def step(i: int) -> None:
            trainer.train_step(record_grads=False)

        opt = trainer.opt
    for i in range(WARMUP_STEPS):
        step(i)
    start = time.perf_counter()
    for i in range(WARMUP_STEPS, WARMUP_STEPS + steps):
        step(i)
    elapsed = time.perf_counter() - start
    return {
        "variant": variant,
        "tokens_per_s": steps * recipe.tokens_per_step() / elapsed,
        "step_s": elapsed / steps,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "state_mib": state_bytes(trainer.model, opt) / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipe", type=Path, default=Path("train/tiny.toml"))
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--variant", choices=["adamw", "nexus", "bare"])
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.recipe, args.data, args.steps)))
        return
    if not (args.data / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "nexus_eval.cli", "data", "build", "--out", str(args.data)], check=True)
    results = {}
    for variant in ("bare", "adamw", "nexus"):
        cmd = [
            sys.executable,
            __file__,
            "--variant",
            variant,
            "--recipe",
            str(args.recipe),
            "--data",
            str(args.data),
            "--steps",
            str(args.steps),
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
    print(f"train bench: {args.recipe}, {args.steps} timed steps after {WARMUP_STEPS} warm-up, 2 threads")
    print(f"{'variant':8} {'tokens/s':>10} {'step s':>8} {'peak RSS MiB':>13} {'params+opt state MiB':>21}")
    for r in results.values():
        print(
            f"{r['variant']:8} {r['tokens_per_s']:10.0f} {r['step_s']:8.3f} {r['peak_rss_mib']:13.0f} "
            f"{r['state_mib']:21.1f}"
        )
    a, n, b = results["adamw"], results["nexus"], results["bare"]
    print(f"nexus/adamw step time  {n['step_s'] / a['step_s']:.3f}  (target <= 1.05)")
    print(f"nexus/adamw peak RSS   {n['peak_rss_mib'] / a['peak_rss_mib']:.3f}  (target <= 1.3)")
    print(f"nexus/adamw state      {n['state_mib'] / a['state_mib']:.3f}  (params + optimizer state: +1 copy for θ0)")
    print(f"harness/bare tokens/s  {a['tokens_per_s'] / b['tokens_per_s']:.3f}  (target >= 0.9)")


if __name__ == "__main__":
    main()
