"""Training benchmark on the tiny recipe: tokens/s, step time and peak memory of a bare PyTorch loop and of the
study's optimizers, each as a ratio to AdamW measured in the same run.

Every variant runs in its own child process (VARIANTS: one command each), so that its peak RSS is its own: the
child reports VmHWM (training.metrics_log.peak_rss_bytes), not getrusage, which in a child also counts the parent's
RSS at fork. The children run one at a time, in rounds of alternating order (bare adamw nexus, nexus adamw bare, ...)
so that load from other processes hits every variant alike; step time is the median over all rounds' steps.
The DDP variants run the trainer's step under `torchrun --standalone --nproc-per-node=2` (gloo on CPU: on a 2-core
machine each rank gets one core, so the ratio to one process shows what data parallelism costs or gains there); a
child reports from rank 0 only (RANK), its peak RSS that rank's.
Targets: Nexus/AdamW step time <= 1.05, peak memory <= 1.3, harness (AdamW through the trainer's step) >= 0.9x bare.
--optimizers adds any optimizer the trainer takes (default STUDY_OPTIMIZERS: adamw, nexus, muon, nexus:muon; `all`:
every registered one and Nexus around each registered one without inner steps), each a variant of its own in the same
rounds, and prints its step-time, peak-memory and state ratios to AdamW. Only Nexus has targets: Muon's ratio is
reported, not judged (its Newton–Schulz orthogonalization, 5 bf16 matmul iterations per hidden matrix per step, is
the price of the method, not of the harness; docs/benchmarks.md).
On a GPU (`--device cuda`, or auto with one visible) the children train as `nexus-eval train` does there (bf16
autocast, torch.compile, fused AdamW): step times are taken after a CUDA synchronize, peak memory is
torch.cuda.max_memory_allocated of the child, and the table adds MFU over the GPU's peak (training/flops.py). The
default variants there are adamw and nexus, with muon and nexus:muon beside them (the bare loop has no autocast or
compile, so it is no baseline on a GPU; DDP needs two GPUs). Not yet run on a GPU with Muon.
    python bench/train_bench.py [--recipe train/tiny.toml] [--steps 15] [--rounds 2] [--data data]
    python bench/train_bench.py --optimizers all --steps 5 --rounds 2   # every optimizer against AdamW, no DDP
    python bench/train_bench.py --recipe train/130m.toml --device cuda --steps 20 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

# The checkout this file is in, first on the path: the parent and every child (each runs this file) benchmark this
# code, not whatever nexus_eval an installed package points at.
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nexus_eval.optimizer_registry import BASELINE, CANDIDATE, REGISTRY, OptimizerRegistry  # noqa: E402 - torch-free

WARMUP_STEPS = 2  # not timed: the first steps allocate (Nexus' θ0, AdamW's moments, autograd buffers)
CUDA_WARMUP_STEPS = 4  # and on a GPU, torch.compile compiles (forward, backward) in them
MIB = 1 << 20


@dataclass(frozen=True)
class Variant:
    name: str
    optimizer: str  # "bare" (a plain PyTorch loop), or the trainer's optimizer
    launcher: tuple[str, ...] = (sys.executable,)  # what runs this file in the child
    strategy: str = "none"  # the trainer's [parallel] strategy in the child
    inner_loop: str | None = None  # Nexus' optim.inner_loop (None: the recipe's; optim/nexus.py "Numerics")

    def command(self, recipe: Path, data: Path, steps: int, device: str) -> list[str]:
        script = str(Path(__file__).resolve())
        return [*self.launcher, script, "--child", self.name, "--recipe", str(recipe), "--data", str(data),
                "--steps", str(steps), "--device", device]  # fmt: skip


TORCHRUN_2 = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2")
VARIANTS: list[Variant] = [
    Variant("bare", "bare"),
    Variant("adamw", "adamw"),
    Variant("nexus", "nexus"),
    Variant("nexus-linear", "nexus", inner_loop="linear"),  # its double backward: the cost of bf16 fidelity
    Variant("adamw-ddp2", "adamw", TORCHRUN_2, "ddp"),
    Variant("nexus-ddp2", "nexus", TORCHRUN_2, "ddp"),
]
# The optimizers the study compares, benchmarked by default beside the variants above: the pair the harness was built
# for and Muon, alone and as Nexus' outer optimizer.
STUDY_OPTIMIZERS = (BASELINE, CANDIDATE, "muon", f"{CANDIDATE}:muon")
# What a ratio line says beside an optimizer's step time and peak memory: the targets of issue 27 (Nexus only).
TARGETS = {CANDIDATE: ("<= 1.05", "<= 1.3")}


def all_optimizers(registry: OptimizerRegistry = REGISTRY) -> list[str]:
    """`--optimizers all`: every registered optimizer, then Nexus around each registered one without inner steps
    other than AdamW (nexus:adamw is nexus), all read from the registry."""
    wrapped = [f"{CANDIDATE}:{e.name}" for e in registry if not e.update.has_inner_steps and e.name != BASELINE]
    return [*registry.names(), *(name for name in wrapped if registry.resolve(name) is not None)]


def variant_named(name: str) -> Variant | None:
    """A variant of VARIANTS by name, or any optimizer the trainer takes (registry.resolve) as a variant of its own:
    one process, the trainer's step; None for any other name."""
    for v in VARIANTS:
        if v.name == name:
            return v
    return Variant(name, name) if REGISTRY.resolve(name) is not None else None


@dataclass
class Result:
    """What a child prints (one JSON line) and the parent gathers over rounds."""

    variant: str
    step_s: list[float]
    peak_mib: float  # peak RSS on CPU (VmHWM), torch.cuda.max_memory_allocated on a GPU
    state_mib: float  # parameters + optimizer state (Nexus adds θ0)
    tokens_per_step: int
    flops_per_token: int
    device: str  # "cpu", or the GPU's name as torch reports it
    peak_flops: float | None  # one device's peak FLOP/s (training/flops.py), None on CPU or an unknown GPU


# ---- in the child ----------------------------------------------------------------------------------------------------


def state_bytes(model, optimizer) -> int:  # noqa: ANN001 - torch objects
    """Bytes of parameters + optimizer state (incl. Nexus' θ0): the memory the optimizer choice changes."""
    import torch

    from nexus_eval.optim import Nexus

    tensors = list(model.parameters()) + [v for v in json_leaves(optimizer.state_dict()) if isinstance(v, torch.Tensor)]
    if isinstance(optimizer, Nexus):  # θ0 and u buffers, kept between outer steps
        for buffers in (optimizer._theta0, optimizer._direction):
            tensors += [t for group in buffers or [] for t in group]
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


def make_stepper(variant: Variant, recipe_path: Path, data_dir: Path, device: str):  # noqa: ANN201
    """(one outer step at index i, the model, its optimizer, the execution): same recipe, data and micro-batches for
    every variant."""
    import dataclasses

    import torch

    from nexus_eval.training import RunState, load_recipe, parallel, set_up, train_step

    recipe = load_recipe(recipe_path).with_execution(strategy=variant.strategy, device=device)
    if variant.inner_loop is not None:
        recipe = dataclasses.replace(recipe, optim=dataclasses.replace(recipe.optim, inner_loop=variant.inner_loop))
    ex = parallel.resolve_execution(recipe.parallel, recipe.optim.micro_batch, str(recipe_path))
    parallel.start(ex)  # the process group under torchrun; nothing for one process
    c = set_up(recipe, "adamw" if variant.optimizer == "bare" else variant.optimizer, 0, data_dir, ex)
    if variant.optimizer != "bare":
        state = RunState.start(recipe)

        def trainer_step(i: int) -> None:
            train_step(c, state)  # the loop's step at state.step, which is i

        return trainer_step, c.model, c.opt, ex

    model, schedule, k = c.model, c.schedule, recipe.optim.accum
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.optim.lr)

    def bare_step(i: int) -> None:
        for mb in schedule.step_batches(i, k):
            logits = model(mb.inputs).logits
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), mb.labels.flatten()) / k
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return bare_step, model, opt, ex


def run_child(variant: Variant, recipe_path: Path, data_dir: Path, steps: int, device: str) -> Result:
    import torch

    from nexus_eval.training.flops import device_peak_flops, model_flops_per_token
    from nexus_eval.training.loop import training_threads
    from nexus_eval.training.metrics_log import peak_memory_bytes
    from nexus_eval.training.recipe import load_recipe

    torch.set_num_threads(training_threads())
    recipe = load_recipe(recipe_path)
    step, model, opt, ex = make_stepper(variant, recipe_path, data_dir, device)
    on_cuda = ex.device.type == "cuda"
    sync = torch.cuda.synchronize if on_cuda else (lambda: None)  # a GPU step has ended when its kernels have
    warmup = CUDA_WARMUP_STEPS if on_cuda else WARMUP_STEPS
    times = []
    for i in range(warmup + steps):
        sync()
        start = time.perf_counter()
        step(i)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return Result(
        variant=variant.name,
        step_s=times,
        peak_mib=peak_memory_bytes(ex.device) / MIB,
        state_mib=state_bytes(model, opt) / MIB,
        tokens_per_step=recipe.tokens_per_step(),
        flops_per_token=model_flops_per_token(model, recipe.model.context),
        device=torch.cuda.get_device_name(ex.device) if on_cuda else "cpu",
        peak_flops=device_peak_flops(ex.device),
    )


# ---- in the parent ---------------------------------------------------------------------------------------------------


def run_variant(variant: Variant, recipe: Path, data: Path, steps: int, device: str) -> Result:
    done = subprocess.run(variant.command(recipe, data, steps, device), capture_output=True, text=True)
    if done.returncode != 0:  # the child's own error (an optimizer that does not build, say), not a bare exit status
        sys.stderr.write(done.stderr)
        raise SystemExit(f"train bench: variant {variant.name} failed (exit {done.returncode}); its stderr is above")
    return Result(**json.loads(done.stdout.strip().splitlines()[-1]))


def rounds_of(variants: list[Variant], rounds: int) -> list[Variant]:
    """The children in order: each round alternates direction, so no variant always runs first or last."""
    return [v for r in range(rounds) for v in (variants if r % 2 == 0 else variants[::-1])]


def gather(variants: list[Variant], run: Callable[[Variant], Result], rounds: int) -> dict[str, Result]:
    """One Result per variant: every round's step times, the largest peak."""
    merged: dict[str, Result] = {}
    for variant in rounds_of(variants, rounds):
        result = run(variant)
        if variant.name not in merged:
            merged[variant.name] = result
        else:
            kept = merged[variant.name]
            kept.step_s += result.step_s
            kept.peak_mib = max(kept.peak_mib, result.peak_mib)
    return merged


def print_table(results: dict[str, Result], recipe: Path, steps: int, rounds: int) -> None:
    step_s = {v: statistics.median(r.step_s) for v, r in results.items()}
    any_result = next(iter(results.values()))
    tokens, flops, peak = any_result.tokens_per_step, any_result.flops_per_token, any_result.peak_flops
    on_gpu = any_result.device != "cpu"
    where = any_result.device if on_gpu else f"CPU, {os.environ.get('OMP_NUM_THREADS', 'all cores')} thread(s)"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())  # other processes' load skews the step times
    print(
        f"train bench: {recipe}, {tokens} tokens/step, median of {rounds} x {steps} steps per variant, one process "
        f"per variant, {where}, load average {load} at the end"
    )
    memory = "peak CUDA MiB" if on_gpu else "peak RSS MiB"
    mfu_head = f" {'MFU':>6}" if peak else ""
    width = max(12, *(len(v) for v in results))  # a plug-in's package.module:factory is longer than the built-ins
    head = f"{'tokens/s':>10} {'step s':>8} {'TFLOP/s':>8}{mfu_head} {memory:>13} {'params+opt MiB':>15}"
    print(f"{'variant':{width}} {head}")
    for v, r in results.items():
        rate = tokens / step_s[v]
        tflops = rate * flops / 1e12  # the model's arithmetic at this rate (MFU's numerator)
        mfu_cell = f" {tflops * 1e12 / peak:6.1%}" if peak else ""
        print(
            f"{v:{width}} {rate:10.0f} {step_s[v]:8.3f} {tflops:8.3f}{mfu_cell} {r.peak_mib:13.0f} {r.state_mib:15.1f}"
        )
    if peak:
        print(f"MFU over {peak / 1e12:g} TFLOP/s, the bf16 dense peak of one {any_result.device} (training/flops.py)")
    print_optimizer_ratios(results, step_s)
    if {"adamw", "nexus-linear"} <= set(results):
        linear = results["nexus-linear"]
        print(
            f"nexus-linear/adamw  step time {step_s['nexus-linear'] / step_s['adamw']:.3f} (its double backward)   "
            f"peak memory {linear.peak_mib / results['adamw'].peak_mib:.3f}"
        )
    if {"adamw", "bare"} <= set(results):
        print(f"harness/bare tokens/s {step_s['bare'] / step_s['adamw']:.3f}  (target >= 0.9)")
    if {"adamw-ddp2", "nexus-ddp2"} <= set(results):
        print(
            f"DDP world 2 / one process  step time adamw {step_s['adamw-ddp2'] / step_s['adamw']:.3f}, nexus "
            f"{step_s['nexus-ddp2'] / step_s['nexus']:.3f};  nexus/adamw under DDP "
            f"{step_s['nexus-ddp2'] / step_s['adamw-ddp2']:.3f} (target <= 1.05)"
        )


def print_optimizer_ratios(results: dict[str, Result], step_s: dict[str, float]) -> None:
    """One line per optimizer benchmarked beside AdamW in this run (one process, the trainer's step): its median step
    time, peak memory and parameter + optimizer state over AdamW's, with the targets of those that have one."""
    if BASELINE not in results:
        return
    adamw = results[BASELINE]
    for name, r in results.items():
        entry = REGISTRY.resolve(name)
        if name == BASELINE or entry is None:  # bare, nexus-linear and the DDP variants have lines of their own
            continue
        targets = TARGETS.get(name)
        step_target = f" (target {targets[0]})" if targets else ""
        memory_target = f" (target {targets[1]})" if targets else ""
        extra = " (θ0 and u)" if entry.inner_state_copies else ""  # what its state adds to its outer optimizer's
        print(
            f"{name}/adamw  step time {step_s[name] / step_s[BASELINE]:.3f}{step_target}   "
            f"peak memory {r.peak_mib / adamw.peak_mib:.3f}{memory_target}   "
            f"params+opt state {r.state_mib / adamw.state_mib:.3f}{extra}"
        )


def default_variants(device: str) -> list[str]:
    """All variants on CPU; on a GPU the trainer's optimizers, and DDP only where two GPUs are visible."""
    import torch

    on_gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if not on_gpu:
        return [v.name for v in VARIANTS]
    two_gpus = torch.cuda.device_count() >= 2
    return [v.name for v in VARIANTS if v.optimizer != "bare" and (v.strategy == "none" or two_gpus)]


def chosen_variants(variants: str | None, optimizers: str | None, device: str) -> list[Variant]:
    """What the run benchmarks, in order: with neither option, the device's default variants and the study's
    optimizers; else the variants and optimizers named, and AdamW whenever an optimizer is named (the ratios' baseline,
    measured in the same rounds). A ValueError naming the option for a name it does not know."""
    if variants is None and optimizers is None:
        names = [*default_variants(device), *STUDY_OPTIMIZERS]
    else:
        names = split_names("--variants", variants) if variants is not None else []
        known = [v.name for v in VARIANTS]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"--variants: unknown variant {unknown[0]!r} (known: {', '.join(known)})")
        if optimizers is not None:
            wanted = all_optimizers() if optimizers == "all" else split_names("--optimizers", optimizers)
            unknown = [n for n in wanted if REGISTRY.resolve(n) is None]
            if unknown:
                raise ValueError(
                    f"--optimizers: unknown optimizer {unknown[0]!r} (known: {', '.join(REGISTRY.names())}, "
                    f"nexus:OUTER, package.module:factory, or all)"
                )
            names += [BASELINE, *wanted]
    chosen: list[Variant] = []
    for name in dict.fromkeys(names):  # in order, each once: adamw named twice runs once
        variant = variant_named(name)
        assert variant is not None  # checked above, or a default
        chosen.append(variant)
    return chosen


def split_names(option: str, value: str) -> list[str]:
    names = [n.strip() for n in value.split(",")]
    if not all(names):
        raise ValueError(f"{option}: an empty name in {value!r} (comma-separated names, no empty ones)")
    return names


def main() -> None:
    names = [v.name for v in VARIANTS]
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipe", type=Path, default=Path("train/tiny.toml"))
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--steps", type=int, default=15, help="timed steps per child")
    parser.add_argument("--rounds", type=int, default=2, help="children per variant, in alternating order")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: cuda if any")
    parser.add_argument("--variants", help=f"comma-separated, of {', '.join(names)} (default: all the device runs)")
    parser.add_argument(
        "--optimizers",
        help=f"comma-separated optimizer names (any --optimizer of `nexus-eval train`), each against AdamW in the same "
        f"rounds, or all (every registered one, and nexus:OUTER for each without inner steps); default "
        f"{','.join(STUDY_OPTIMIZERS)} beside the default variants; naming --variants or --optimizers runs only those",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    def bad(message: str) -> NoReturn:  # one line, usage error's exit status, as argparse's own but without the usage
        parser.exit(2, f"{parser.prog}: error: {message}\n")

    for option in ("steps", "rounds"):
        if getattr(args, option) < 1:
            bad(f"--{option} must be at least 1, got {getattr(args, option)}")
    if args.child:
        variant = variant_named(args.child)
        if variant is None:
            bad(f"--child: unknown variant {args.child!r}")
        result = run_child(variant, args.recipe, args.data, args.steps, args.device)
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(result.__dict__))
        return
    try:
        variants = chosen_variants(args.variants, args.optimizers, args.device)
    except ValueError as e:
        bad(str(e))
    if not (args.data / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "nexus_eval.cli", "data", "build", "--out", str(args.data)], check=True)
    results = gather(variants, lambda v: run_variant(v, args.recipe, args.data, args.steps, args.device), args.rounds)
    print_table(results, args.recipe, args.steps, args.rounds)


if __name__ == "__main__":
    main()
