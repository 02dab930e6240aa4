"""Evaluation throughput, hf vs vLLM: the same GSM8k prompts (lm-eval's gsm8k config, zero-shot, greedy) through
nexus_eval's lm-eval wrapper on each backend. Figures exclude model load: prompts/s and generated tokens/s of the
`simple_evaluate` call alone, and the vLLM/hf ratio. Target: vLLM ≥ 3× hf.

Each backend runs in its own child process (vLLM starts engine processes; neither inherits the other's threads or
memory). The model is a random-init checkpoint of a model preset (greedy decoding then runs to max_gen_toks or a stop
sequence; both backends decode the same tokens), or --checkpoint.
    python bench/eval_bench.py [--prompts 200] [--preset tiny] [--checkpoint DIR] [--hf-batch-size 8] [--data data]
                               [--max-gen-toks 256] [--vllm-compile]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CONTEXT = 1024  # zero-shot GSM8k prompts (≤ ~300 tokens) plus lm-eval's 256 generated tokens fit untruncated


def make_checkpoint(out: Path, preset: str, data_dir: Path) -> Path:
    from nexus_eval.checkpoints import save_checkpoint
    from nexus_eval.data import build_data, load_tokenizer
    from nexus_eval.training.model import build_model, llama_config

    if not (data_dir / "manifest.json").exists():  # no data build: a small one for its tokenizer
        from tests.conftest import TINY_DATA_PARAMS

        data_dir = out / "data"
        build_data(data_dir, **TINY_DATA_PARAMS)
    tokenizer = load_tokenizer(data_dir)
    config = llama_config(preset, len(tokenizer), CONTEXT, tokenizer.bos_token_id, tokenizer.eos_token_id)
    meta = {"run_id": "eval-bench", "optimizer": "adamw", "seed": 0, "step": 0}
    return save_checkpoint(out / "ckpt-000000", build_model(config, seed=0), tokenizer, meta, None)


def gsm8k_task() -> tuple[object, object]:
    """(spec, task_manager) of our gsm8k task (lm-eval's gsm8k config over the local test set)."""
    from lm_eval.tasks import TaskManager

    from nexus_eval.evaluation.runner import resolve_task_specs

    (spec,) = resolve_task_specs(["gsm8k"], None)
    return spec, TaskManager(include_path=str(spec.include_dir), include_defaults=False)


def time_gsm8k(lm: object, ckpt: Path, prompts: int, max_gen_toks: int) -> dict:
    """Greedy generation over the first `prompts` GSM8k test questions (zero-shot) on a loaded lm-eval model: eval
    seconds, prompts/s, generated tokens (counted with the checkpoint's tokenizer) and tokens/s, the responses."""
    from transformers import AutoTokenizer

    from nexus_eval.evaluation.runner import DEFAULT_SEED, run_tasks

    spec, task_manager = gsm8k_task()
    started = time.perf_counter()
    gen_kwargs = {"max_gen_toks": max_gen_toks}
    output = run_tasks(lm, [spec], task_manager, num_fewshot=0, limit=prompts, seed=DEFAULT_SEED, gen_kwargs=gen_kwargs)
    eval_s = time.perf_counter() - started
    samples = [s for s in output["samples"]["gsm8k"] if s["filter"] == "strict-match"]
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    generated = sum(len(tokenizer(s["resps"][0][0], add_special_tokens=False)["input_ids"]) for s in samples)
    return {
        "prompts": len(samples),
        "eval_s": eval_s,
        "prompts_per_s": len(samples) / eval_s,
        "generated_tokens": generated,
        "tokens_per_s": generated / eval_s,
        "responses": [s["resps"][0][0] for s in samples],
    }


def bench_backend(backend: str, hf_batch_size: int) -> object:
    """The backend as the benchmarks run it: hf in batches of `hf_batch_size`, vLLM given every request at once."""
    from nexus_eval.evaluation.backends import DEFAULT_SEED, BackendSpec

    return BackendSpec(backend, hf_batch_size if backend == "hf" else None, seed=DEFAULT_SEED)


def run_backend(backend: str, ckpt: Path, prompts: int, batch_size: int, max_gen_toks: int, compile_: bool) -> dict:
    """One backend: load, then time lm-eval's gsm8k over the first `prompts` test questions."""
    from nexus_eval.evaluation import backends

    gsm8k_task()  # task data resolved before the load clock starts
    started = time.perf_counter()
    extra = {"enforce_eager": False} if backend == "vllm" and compile_ else {}
    lm = backends.load_lm(bench_backend(backend, batch_size), ckpt, **extra)
    load_s = time.perf_counter() - started
    timed = time_gsm8k(lm, ckpt, prompts, max_gen_toks)
    backends.close_lm(lm)
    return {"backend": backend, "load_s": load_s, **timed}


def run_child(command: list[str], what: str, extra_env: dict[str, str] | None = None) -> dict:
    """Run a benchmark child process (`python SCRIPT --child ...`); its last stdout line is its JSON result."""
    # No TQDM_DISABLE: vLLM divides by its progress bar's elapsed time.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(extra_env or {})}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{what} run failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child(backend: str, ckpt: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", backend, "--checkpoint", str(ckpt), "--prompts", str(args.prompts)]
    command += ["--hf-batch-size", str(args.hf_batch_size), "--max-gen-toks", str(args.max_gen_toks)]
    command += ["--vllm-compile"] if args.vllm_compile else []
    return run_child(command, backend)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--preset", default="tiny", help="Model preset of the random-init checkpoint")
    parser.add_argument("--checkpoint", type=Path, help="Benchmark this checkpoint instead")
    parser.add_argument("--hf-batch-size", type=int, default=8, help="hf batch size (vLLM batches continuously)")
    parser.add_argument("--data", type=Path, default=REPO / "data", help="Data dir whose tokenizer the model uses")
    parser.add_argument("--max-gen-toks", type=int, default=256, help="Generated tokens at most (lm-eval: 256)")
    parser.add_argument("--vllm-compile", action="store_true", help="Let vLLM torch.compile (default: eager)")
    parser.add_argument("--child", choices=["hf", "vllm"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run = run_backend(
            args.child, args.checkpoint, args.prompts, args.hf_batch_size, args.max_gen_toks, args.vllm_compile
        )
        print(json.dumps(run))
        return
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint or make_checkpoint(Path(tmp), args.preset, args.data)
        runs = {backend: child(backend, ckpt, args) for backend in ("hf", "vllm")}
    same = sum(a == b for a, b in zip(runs["hf"]["responses"], runs["vllm"]["responses"], strict=True))
    model = args.checkpoint or f"random-init {args.preset} preset"
    print(f"model: {model}; {args.prompts} GSM8k prompts, zero-shot, max_gen_toks {args.max_gen_toks}")
    print(f"hf batch size {args.hf_batch_size}; vLLM {'torch.compile' if args.vllm_compile else 'eager'}")
    for run in runs.values():
        print(
            f"{run['backend']:>5}: load {run['load_s']:6.1f} s   eval {run['eval_s']:7.1f} s   "
            f"{run['prompts_per_s']:7.2f} prompts/s   {run['tokens_per_s']:8.1f} generated tokens/s "
            f"({run['generated_tokens']} tokens)"
        )
    ratio = runs["vllm"]["prompts_per_s"] / runs["hf"]["prompts_per_s"]
    print(f"vllm/hf prompts/s: {ratio:.2f}x (target ≥ 3x: {'met' if ratio >= 3 else 'NOT met'})")
    print(f"identical responses: {same}/{len(runs['hf']['responses'])}")


if __name__ == "__main__":  # vLLM spawns processes: keep the guard
    main()
