"""Data build benchmark on generated JSONL corpora: throughput against a bare tokenizer loop, worker speed-up, and
peak memory as the corpus grows.

1. Throughput: `data build` (1 worker) over a corpus, against two bare loops over the same documents (read the
   JSONL, json.loads, tokenize in batches of 512, nothing written): the issue's `tokenizer(batch)` (the transformers
   fast tokenizer's __call__, what a user's own script runs) and, stricter, the raw `tokenizers` encode_batch under
   it (no conversion to Python lists of ids). Ratio = bare time / build time, target >= 0.8 against
   `tokenizer(batch)`. The build does more (clean, dedup, split, decontaminate, spill, write shards): the ratios say
   what that costs. All use the same pretrained tokenizer (trained once on a sample, not timed). A build's fixed cost
   (imports, the n-gram index of tasks/, ~5 CPU-s) is measured on 200 documents and reported apart: at GB scale it
   vanishes, at 25 MB it is a fifth of the build (hence the 100 MB default).
2. Speed-up of `--num-proc 2` over `--num-proc 1` on the same corpus.
Every process (bare loops, builds, their workers) gets `--threads` tokenizer threads, 1 by default: a worker is then
one core, which is what "1 worker" and "2 workers" compare (with the tokenizer's default, encode_batch already uses
every core in each process and a second worker has none left to add).
3. Peak RSS of a build (one child process per size, 1 worker) over corpora of --sizes MB; target: under 1.5 GiB and
   no more than 20% growth from the smallest to the largest (bounded memory: streaming).
All builds use the CLI's decontamination against tasks/ and GSM8k test (when ../shared is there). Sizes are flags:
the issue's 256 MB and 1 GB runs take minutes per build.
    python bench/data_bench.py [--mb 100] [--sizes 25,100] [--threads 1] [--work /tmp/nexus-data-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

WORDS_SEED = 0
DOC_WORDS = (150, 600)  # ~1-4 KB documents, like web text


def generate_corpus(path: Path, megabytes: float, seed: int = WORDS_SEED) -> Path:
    """A JSONL file of ~`megabytes` MB of distinct documents over a Zipf-like vocabulary (deterministic)."""
    if path.is_file() and path.stat().st_size >= megabytes * 1e6 * 0.98:
        return path
    rng = random.Random(seed)
    vocabulary = [_word(rng) for _ in range(20_000)]
    weights = [1 / (rank + 1) for rank in range(len(vocabulary))]
    path.parent.mkdir(parents=True, exist_ok=True)
    written, index = 0, 0
    with path.open("w", encoding="utf-8") as out:
        while written < megabytes * 1e6:
            words = rng.choices(vocabulary, weights, k=rng.randint(*DOC_WORDS))
            text = f"Document {index}. " + " ".join(words) + "."
            line = json.dumps({"text": text}) + "\n"
            out.write(line)
            written += len(line.encode())
            index += 1
    return path


def _word(rng: random.Random) -> str:
    return "".join(rng.choices("etaoinshrdlcumwfgypbvkjxqz", k=rng.randint(2, 9)))


def make_tokenizer(corpus: Path, out: Path) -> Path:
    """A byte-level BPE of 8192 tokens trained on the first 2,000 documents, saved as a tokenizer directory."""
    if (out / "tokenizer.json").is_file():
        return out
    from nexus_eval.data.tokenizer import train_tokenizer

    docs = [json.loads(line)["text"] for _, line in zip(range(2000), corpus.open(encoding="utf-8"), strict=False)]
    train_tokenizer(iter(docs), 8192, len(docs)).save_pretrained(out)
    return out


def bare_loop(corpus: Path, tokenizer_dir: Path, raw: bool) -> tuple[float, int]:
    """Seconds and tokens of: read the JSONL, tokenize every 512 documents (no cleaning, nothing written), with the
    transformers tokenizer's __call__ (`tokenizer(batch)`) or, raw, its `tokenizers` backend's encode_batch."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    if raw:
        backend = tokenizer.backend_tokenizer

        def count(batch: list[str]) -> int:
            return sum(len(e.ids) for e in backend.encode_batch(batch, add_special_tokens=False))
    else:

        def count(batch: list[str]) -> int:
            return sum(map(len, tokenizer(batch, add_special_tokens=False)["input_ids"]))

    started, tokens, batch = time.perf_counter(), 0, []
    with corpus.open(encoding="utf-8") as lines:
        for line in lines:
            batch.append(json.loads(line)["text"])
            if len(batch) == 512:
                tokens += count(batch)
                batch = []
    if batch:
        tokens += count(batch)
    return time.perf_counter() - started, tokens


BUILD_CHILD = """
import json, resource, sys, time
from pathlib import Path
from nexus_eval.data import build_data
from nexus_eval.data.spec import parse_cli_source
corpus, tokenizer, out, num_proc = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
started = time.perf_counter()
manifest = build_data(out, sources=[parse_cli_source("--source", f"corpus={corpus}")], tokenizer=tokenizer,
                      tasks_dir=Path("tasks"), num_proc=num_proc, max_chars_per_source=10**15, progress=False)
seconds = time.perf_counter() - started
tokens = sum(manifest["sources"]["corpus"]["tokens"].values())
# VmHWM, not ru_maxrss: after fork + exec ru_maxrss still counts this bench's own RSS at the fork (see
# training.metrics_log.peak_rss_bytes, not imported here: it would import torch into the measured process)
status = Path("/proc/self/status")
hwm = [line for line in status.read_text().splitlines() if line.startswith("VmHWM:")] if status.is_file() else []
peak = int(hwm[0].split()[1]) / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "tokens": tokens, "peak_rss_mb": peak}))
"""


def timed_build(corpus: Path, tokenizer_dir: Path, out: Path, num_proc: int) -> dict:
    """One build in a child process: its wall time, tokens and peak RSS (workers not included)."""
    shutil.rmtree(out, ignore_errors=True)
    result = subprocess.run(
        [sys.executable, "-c", BUILD_CHILD, str(corpus), str(tokenizer_dir), str(out), str(num_proc)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"build failed:\n{result.stderr[-2000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=100, help="Corpus size (MB) of the throughput runs")
    parser.add_argument("--sizes", default="25,100", help="Corpus sizes (MB) of the peak-RSS runs, comma-separated")
    parser.add_argument("--work", type=Path, default=Path("/tmp/nexus-data-bench"), help="Corpora and builds")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="Tokenizer threads per process (RAYON_NUM_THREADS) for the bare loops and every build: 1 (default) makes "
        "a worker one core, as the 1-worker ratio and the 2-worker speed-up mean; 0 leaves the tokenizer's default "
        "(every core in each process)",
    )
    args = parser.parse_args()
    if args.threads:  # before the first encode here; the build children inherit it
        os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    sizes = [float(s) for s in args.sizes.split(",")]

    corpus = generate_corpus(args.work / f"corpus-{args.mb:g}mb.jsonl", args.mb)
    tokenizer_dir = make_tokenizer(corpus, args.work / "tokenizer")
    bare_seconds, bare_tokens = bare_loop(corpus, tokenizer_dir, raw=False)
    raw_seconds, raw_tokens = bare_loop(corpus, tokenizer_dir, raw=True)
    if raw_tokens != bare_tokens:
        raise SystemExit(f"the two bare loops disagree: {bare_tokens:,} vs {raw_tokens:,} tokens")
    tiny = args.work / "corpus-tiny.jsonl"  # the fixed cost: imports, the tasks/ n-gram index, the tokenizer
    tiny.write_text("".join(line for _, line in zip(range(200), corpus.open(encoding="utf-8"), strict=False)))
    fixed = timed_build(tiny, tokenizer_dir, args.work / "out", 1)
    one = timed_build(corpus, tokenizer_dir, args.work / "out", 1)
    two = timed_build(corpus, tokenizer_dir, args.work / "out", 2)
    ratio = bare_seconds / one["seconds"]
    threads = f"{args.threads} tokenizer thread(s) per process" if args.threads else "the tokenizer's default threads"
    print(f"corpus {args.mb:g} MB, {bare_tokens:,} tokens (bare loop); {threads}")
    print(f"bare tokenizer(batch)   : {bare_seconds:7.1f} s  {bare_tokens / bare_seconds:12,.0f} tokens/s")
    print(f"bare raw encode_batch   : {raw_seconds:7.1f} s  {raw_tokens / raw_seconds:12,.0f} tokens/s")
    print(f"build, 1 worker         : {one['seconds']:7.1f} s  {one['tokens'] / one['seconds']:12,.0f} tokens/s")
    print(f"build, 2 workers        : {two['seconds']:7.1f} s  {two['tokens'] / two['seconds']:12,.0f} tokens/s")
    print(
        f"throughput ratio (tokenizer(batch) / build, 1 worker): {ratio:.2f}  "
        f"(target >= 0.8: {'ok' if ratio >= 0.8 else 'MISSED'}); against raw encode_batch: "
        f"{raw_seconds / one['seconds']:.2f}"
    )
    marginal = bare_seconds / max(one["seconds"] - fixed["seconds"], 1e-9)
    print(f"  fixed cost of a build (200 documents): {fixed['seconds']:.1f} s; ratio without it: {marginal:.2f}")
    print(f"2-worker speed-up: {one['seconds'] / two['seconds']:.2f}x")

    peaks = []
    for size in sizes:
        sized = generate_corpus(args.work / f"corpus-{size:g}mb.jsonl", size)
        run = timed_build(sized, tokenizer_dir, args.work / "out", 1)
        peaks.append(run["peak_rss_mb"])
        print(f"peak RSS, {size:g} MB corpus: {run['peak_rss_mb']:,.0f} MB  ({run['seconds']:.1f} s)")
    growth = peaks[-1] / peaks[0] - 1
    ok = max(peaks) < 1.5 * 1024 and growth <= 0.2
    print(
        f"peak RSS growth {sizes[0]:g} → {sizes[-1]:g} MB: {growth:+.0%}  "
        f"(target < 1.5 GiB, <= +20%: {'ok' if ok else 'MISSED'})"
    )


if __name__ == "__main__":
    main()
