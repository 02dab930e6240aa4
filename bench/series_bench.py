"""A checkpoint series through one engine vs a fresh engine per checkpoint, per backend (issue 14's target: the series
costs no more than one load plus 1.1x the summed evaluation time).

Both ways run the same tasks on the same N checkpoints of one run through nexus_eval's engine (evaluation/engine.py)
and lm-eval, nothing cached: "fresh" opens an engine per checkpoint (load, evaluate, close), "series" opens one,
loads the first checkpoint and swaps the weights of each next one in. Each backend runs in its own child process.
The checkpoints are the run's when --run is given (e.g. the demo's runs/tiny-adamw-s0), else N random-init tiny
models saved as one run's checkpoints.
    python bench/series_bench.py [--run runs/tiny-adamw-s0] [--checkpoints 8] [--tasks arith_steps1_mc,arith_gold_bpb]
                                 [--limit 50] [--backends hf,vllm]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.eval_bench import run_child  # noqa: E402 (after the path insert)


def make_run(out: Path, count: int, data_dir: Path) -> list[Path]:
    from nexus_eval.data import build_data, load_tokenizer
    from tests.evaluation.eval_fixtures import tiny_checkpoint

    if not (data_dir / "manifest.json").exists():  # no data build: a small one for its tokenizer
        from tests.conftest import TINY_DATA_PARAMS

        data_dir = out / "data"
        build_data(data_dir, **TINY_DATA_PARAMS)
    tokenizer = load_tokenizer(data_dir)
    return [tiny_checkpoint(out / "run" / f"ckpt-{i:06d}", tokenizer, seed=i) for i in range(1, count + 1)]


def timed_series(backend: str, ckpts: list[Path], tasks: list[str], limit: int, fresh: bool) -> dict:
    """Load and evaluation seconds over the checkpoints, one engine per checkpoint (fresh) or one for all."""
    from nexus_eval.checkpoints import content_hash
    from nexus_eval.evaluation.engine import Engine
    from nexus_eval.evaluation.runner import EvalSettings, cache_slots, make_task_manager, quiet_libraries, run_slots

    settings = EvalSettings(tasks=tuple(tasks), backend=backend, limit=limit, cache_dir=Path(tempfile.mkdtemp()))
    specs = settings.task_specs()
    task_manager = make_task_manager(specs)
    loads: list[float] = []
    evals: list[float] = []
    swaps = 0
    with quiet_libraries():
        # fresh: an engine per checkpoint (load, evaluate, close); series: one engine for all of them
        engines = [[ckpt] for ckpt in ckpts] if fresh else [ckpts]
        for group in engines:
            with Engine(settings.backend_spec()) as engine:
                for ckpt in group:
                    started = time.perf_counter()
                    engine.load(ckpt)
                    loads.append(time.perf_counter() - started)
                    started = time.perf_counter()
                    run_slots(engine, ckpt, cache_slots(content_hash(ckpt), specs, settings), settings, task_manager)
                    evals.append(time.perf_counter() - started)
                swaps += engine.weight_swaps
    return {"load_s": loads, "eval_s": evals, "weight_swaps": swaps}


def child(backend: str, ckpts: list[Path], args: argparse.Namespace, fresh: bool) -> dict:
    command = [sys.executable, __file__, "--child", backend, "--tasks", args.tasks, "--limit", str(args.limit)]
    command += ["--fresh"] if fresh else []
    return run_child([*command, "--paths", *map(str, ckpts)], f"{backend} {'fresh' if fresh else 'series'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="A run dir whose checkpoints to evaluate (default: random-init ones)")
    parser.add_argument("--checkpoints", type=int, default=8)
    parser.add_argument("--tasks", default="arith_steps1_mc,arith_gold_bpb")
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--backends", default="hf,vllm")
    parser.add_argument("--rounds", type=int, default=2, help="Both ways this many times, in alternating order")
    parser.add_argument("--data", type=Path, default=REPO / "data")
    parser.add_argument("--json", type=Path, help="Also write the figures here")
    parser.add_argument("--child", choices=["hf", "vllm"], help=argparse.SUPPRESS)
    parser.add_argument("--fresh", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--paths", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    tasks = args.tasks.split(",")
    if args.child:
        print(json.dumps(timed_series(args.child, args.paths, tasks, args.limit, args.fresh)))
        return
    from nexus_eval.checkpoints import list_checkpoints
    from nexus_eval.provenance import environment

    with tempfile.TemporaryDirectory() as tmp:
        if args.run:
            ckpts = list_checkpoints(args.run)[-args.checkpoints :]
        else:
            ckpts = make_run(Path(tmp), args.checkpoints, args.data)
        source = args.run or "a random-init tiny run"
        print(f"{len(ckpts)} checkpoints of {source}; tasks {args.tasks}, limit {args.limit}")
        figures: dict[str, list[dict]] = {}
        for backend in args.backends.split(","):
            figures[backend] = []
            for round_ in range(args.rounds):  # the order alternates: drift in the machine's load hits both alike
                ways = (True, False) if round_ % 2 == 0 else (False, True)
                timed = {fresh: child(backend, ckpts, args, fresh) for fresh in ways}
                fresh, series = timed[True], timed[False]
                bound = series["load_s"][0] + 1.1 * sum(fresh["eval_s"])
                total_series = sum(series["load_s"]) + sum(series["eval_s"])
                total_fresh = sum(fresh["load_s"]) + sum(fresh["eval_s"])
                figures[backend].append({"fresh": fresh, "series": series, "bound_s": bound})
                verdict = "met" if total_series <= bound else "NOT met"
                print(
                    f"{backend:>5} round {round_ + 1}: fresh {total_fresh:7.1f} s (loads {sum(fresh['load_s']):6.1f} s,"
                    f" evals {sum(fresh['eval_s']):6.1f} s)   series {total_series:7.1f} s (first load "
                    f"{series['load_s'][0]:5.1f} s, {series['weight_swaps']} swaps {sum(series['load_s'][1:]):5.2f} s,"
                    f" evals {sum(series['eval_s']):6.1f} s)   bound {bound:7.1f} s: {verdict}"
                )
    if args.json:
        from nexus_eval.io import write_json_atomic

        record = {"figures": figures, "checkpoints": [str(c) for c in ckpts], "environment": environment("cpu")}
        write_json_atomic(args.json, record)


if __name__ == "__main__":  # vLLM spawns processes: keep the guard
    main()
